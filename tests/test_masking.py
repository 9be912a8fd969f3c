"""``wal.masking``: no password survives ``mask_url``, ``mask_text`` or ``describe_error``.

The table is the contract: every way a password is written into a URL or a libpq DSN
(an unencoded ``@``, ``/``, ``?``, ``#`` or blank in it; a secret query parameter whose name
only contains "password"; ``password = 'se cret'``), and what must be kept as it is.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import exc as sa_exc

from wal import masking
from wal.db.classify import describe_error
from wal.masking import mask_text, mask_url, remember_url, url_secrets


@pytest.fixture(autouse=True)
def forget() -> Iterator[None]:
    """Each test starts with no remembered secret (the registry is process-wide)."""
    saved = masking._remembered
    masking._remembered = frozenset()
    try:
        yield
    finally:
        masking._remembered = saved


# (url, masked, the secrets that must not appear in the masked form)
MASK_TABLE = [
    # nothing to hide: kept exactly
    ("sqlite:///data/atb.db", "sqlite:///data/atb.db", []),
    ("sqlite://", "sqlite://", []),
    ("sqlite:///srv/a@b/atb.db", "sqlite:///srv/a@b/atb.db", []),  # a path, not a userinfo
    ("postgresql://trader@db/atb", "postgresql://trader@db/atb", []),
    ("postgresql://db/atb?sslmode=require", "postgresql://db/atb?sslmode=require", []),
    ("http://127.0.0.1:8787", "http://127.0.0.1:8787", []),
    ("host=db user=trader dbname=atb", "host=db user=trader dbname=atb", []),
    # user:password@
    (
        "postgresql+psycopg://trader:s3cret@db.internal:5432/atb",
        "postgresql+psycopg://trader:***@db.internal:5432/atb",
        ["s3cret"],
    ),
    ("postgresql://u:@host/db", "postgresql://u:***@host/db", []),
    ("postgresql://:hunter2@host/db", "postgresql://:***@host/db", ["hunter2"]),
    ("postgresql://u:p%40ss@host:1/db", "postgresql://u:***@host:1/db", ["p%40ss"]),
    ("postgresql://u:sec%2Fret@host/db", "postgresql://u:***@host/db", ["sec%2Fret"]),
    # an unencoded "@" in the password: the userinfo ends at the LAST "@"
    ("postgresql://u:h@nter2@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db", ["nter2"]),
    ("postgresql://u:p@ss@w@rd@host/db", "postgresql://u:***@host/db", ["ss", "w@rd"]),
    # other unencoded characters in it
    ("postgresql://u:pa/ss@host:1/db", "postgresql://u:***@host:1/db", ["pa/ss"]),
    ("postgresql://u:pa:ss@host:1/db", "postgresql://u:***@host:1/db", ["pa:ss"]),
    ("postgresql://u:pa ss@host:1/db", "postgresql://u:***@host:1/db", ["pa ss"]),
    ("postgresql+psycopg://u:s3cr#t@host/db", "postgresql+psycopg://u:***@host/db", ["s3cr#t"]),
    ("postgresql://u:s3cr?t@host/db", "postgresql://u:***@host/db", ["s3cr?t"]),
    ("postgresql://u:secret\n@host/db", "postgresql://u:***@host/db", ["secret"]),
    ("postgresql://u:se\tcret@host/db", "postgresql://u:***@host/db", ["se\tcret"]),
    # several hosts, IPv6, a port that is not one, any scheme
    ("postgresql://u:secret@h1:1,h2:2/db", "postgresql://u:***@h1:1,h2:2/db", ["secret"]),
    ("mysql://u:secret@[::1]:3306/db", "mysql://u:***@[::1]:3306/db", ["secret"]),
    ("weird://u:secret@h:notaport/x", "weird://u:***@h:notaport/x", ["secret"]),
    ("http://trader:hunter2@127.0.0.1:1", "http://trader:***@127.0.0.1:1", ["hunter2"]),
    ("http://user:tok@broker/v2", "http://user:***@broker/v2", ["tok"]),
    # secret query parameters, any case, any name that contains a secret word
    ("postgresql://u@h/db?password=secret", "postgresql://u@h/db?password=***", ["secret"]),
    ("postgresql://u@h/db?PassWord=secret", "postgresql://u@h/db?PassWord=***", ["secret"]),
    (
        "postgresql://u@127.0.0.1:1/db?sslpassword=hunter2",
        "postgresql://u@127.0.0.1:1/db?sslpassword=***",
        ["hunter2"],
    ),
    # sslkey is the path of a key file, not a secret: kept (a recorded URL stays usable)
    (
        "postgresql://u@h/db?sslmode=verify-full&sslkey=/k/client.key&sslcert=/k/c.crt",
        "postgresql://u@h/db?sslmode=verify-full&sslkey=/k/client.key&sslcert=/k/c.crt",
        [],
    ),
    ("http://h/?ssl_key=abc&sslkeypass=def", "http://h/?ssl_key=***&sslkeypass=***", ["abc"]),
    (
        "http://h/v2?api_key=AK123&access_token=tk456&x=1",
        "http://h/v2?api_key=***&access_token=***&x=1",
        ["AK123", "tk456"],
    ),
    ("http://h/?client_secret=s1&pwd=s2", "http://h/?client_secret=***&pwd=***", ["s1", "s2"]),
    ("http://h/?passwd=se;cret#x", "http://h/?passwd=***", ["se;cret", "cret"]),
    (
        "postgresql://u:p%40ss@h/db?password=x",
        "postgresql://u:***@h/db?password=***",
        ["p%40ss"],
    ),
    # libpq keyword/value DSNs
    (
        "host=db user=trader password=secret dbname=atb",
        "host=db user=trader password=*** dbname=atb",
        ["secret"],
    ),
    ("host=db user=u password = hunter2", "host=db user=u password = ***", ["hunter2"]),
    ("host=db password='se cret' dbname=x", "host=db password=*** dbname=x", ["se cret", "cret"]),
    ("host=db password='it\\'s x' port=1", "host=db password=*** port=1", ["it\\'s", "s x"]),
    ("host=db password='unterminated x", "host=db password=***", ["unterminated"]),
    ("host=db PASSWORD=Hunter2 sslpassword=k3y", "host=db PASSWORD=*** sslpassword=***", ["k3y"]),
    ("host=db password=ab\\ cd port=1", "host=db password=*** port=1", ["ab", "cd"]),
]


@pytest.mark.parametrize(("url", "masked", "secrets"), MASK_TABLE, ids=repr)
def test_mask_url(url: str, masked: str, secrets: list[str]) -> None:
    assert mask_url(url) == masked
    for s in secrets:
        assert s not in mask_url(url)
    assert mask_url(masked) == masked  # masking twice changes nothing


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:hunter2@h/db", ["hunter2"]),
        ("postgresql://u:h@nter2@h/db", ["h@nter2", "h", "nter2"]),
        ("postgresql://u:p%40ss@h/db", ["p%40ss", "p@ss"]),
        ("postgresql://u@h/db?sslpassword=k3y&x=1", ["k3y"]),
        ("host=h password='se cret'", ["'se cret'", "se cret"]),
        ("host=h password = hunter2", ["hunter2"]),
        ("sqlite:///data/atb.db", []),
        ("postgresql://u@h/db", []),
        ("postgresql://u:***@h/db", []),  # already masked: nothing to look for
    ],
)
def test_url_secrets(url: str, expected: list[str]) -> None:
    assert url_secrets(url) == expected


@pytest.mark.parametrize(
    ("text", "urls", "masked"),
    [
        # psycopg's own words for a password with an "@": libpq took "nter2@..." for the host
        (
            "failed to resolve host 'nter2@127.0.0.1': [Errno -2] Name or service not known",
            ["postgresql://u:h@nter2@127.0.0.1:1/db"],
            "failed to resolve host '***@127.0.0.1': [Errno -2] Name or service not known",
        ),
        (
            'connection to server at "ss@host" failed',
            ["postgresql://u:p@ss@host/db"],
            'connection to server at "ss@host" failed',  # "ss": too short to look for
        ),
        # a URL in the text is masked whether or not it is known
        (
            "cannot reach postgresql://u:hunter2@db/atb (refused)",
            [],
            "cannot reach postgresql://u:***@db/atb (refused)",
        ),
        (
            "GET http://h/v2?token=abc&x=1 failed",
            [],
            "GET http://h/v2?token=***&x=1 failed",
        ),
        # keywords in free text; "key" alone names too much there
        (
            "bad DSN: host=h password = 'se cret' port=1",
            [],
            "bad DSN: host=h password = *** port=1",
        ),
        ("api_key=AK1, sslkey=/k", [], "api_key=***, sslkey=/k"),
        (
            "Key (id)=(5) exists; idempotency_key=abc",
            [],
            "Key (id)=(5) exists; idempotency_key=abc",
        ),
        # a short known secret only where it stands alone
        ("abcd and abc", ["postgresql://u:abc@h/db"], "abcd and ***"),
        # a long one wherever it appears
        ("xhunter2x", ["http://u:hunter2@h"], "x***x"),
        ("nothing to hide", [None, ""], "nothing to hide"),
    ],
)
def test_mask_text(text: str, urls: list[str | None], masked: str) -> None:
    assert mask_text(text, *urls) == masked


def test_a_remembered_url_is_masked_in_any_text_after() -> None:
    text = "could not translate host name 'nter2@127.0.0.1'"
    assert mask_text(text) == text  # unknown: nothing recognizes a bare piece of a password
    remember_url("postgresql://u:h@nter2@127.0.0.1:1/db")
    assert mask_text(text) == "could not translate host name '***@127.0.0.1'"


def test_describe_error_masks_the_password_a_driver_quotes() -> None:
    url = "postgresql://trader:h@nter2@127.0.0.1:1/atb"
    orig = psycopg.OperationalError(
        "connection is bad: failed to resolve host 'nter2@127.0.0.1': Name or service not known"
    )
    exc = sa_exc.OperationalError("SELECT 1", {}, orig)
    assert "nter2" in str(exc)
    line = describe_error(exc, url)
    assert "nter2" not in line and "***@127.0.0.1" in line
    assert line.startswith("OperationalError")
    # without the URL at hand: the URL this process connected to (make_engine remembers it)
    assert "nter2" in describe_error(exc)
    remember_url(url)
    assert "nter2" not in describe_error(exc)


def test_describe_error_masks_before_it_cuts_a_long_message() -> None:
    url = "postgresql://u:longpassword123@h/db"
    exc = RuntimeError("x" * 490 + " longpassword123 " + "y" * 50)
    line = describe_error(exc, url)
    assert "longpass" not in line and len(line) <= 500


def test_make_engine_remembers_the_url(tmp_path: object) -> None:
    from wal.db.engine import make_engine

    engine, _ = make_engine("postgresql://u:rememberme@127.0.0.1:1/db")
    engine.dispose()
    assert mask_text("host 'rememberme'") == "host '***'"
