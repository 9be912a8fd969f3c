"""Passwords out of everything the library and ``atb`` print, log or put in an error.

``mask_url``: a database URL, a libpq keyword DSN or a broker URL with its secrets replaced
by ``***``: the password of ``user:password@`` (which ends at the *last* ``@`` before the
host: ``u:p@ss@host`` hides ``p@ss``), every query parameter whose name says it holds a
secret (``password``, ``sslpassword``, ``api_key``, ``access_token``, ...: a name containing
``password``, ``passwd``, ``pwd``, ``secret``, ``token`` or ``key``, any case; not libpq's
``sslkey``, the path of a key file), and the same keywords of a libpq DSN (``password =
'se cret'``: spaces around ``=`` and a quoted value with spaces included).

``mask_text``: free text (an error message) with every URL in it masked, keyword secrets
masked, and the secret *values* of the URLs it is told about (and of every database URL this
process connected to, ``remember_url``) replaced wherever they appear: a driver's error
repeats pieces of a password it mis-parsed (``u:h@nter2@host`` is, to libpq, the password
``h`` and the host ``nter2@host``), and no pattern would recognize them there.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import unquote

__all__ = ["mask_text", "mask_url", "remember_url", "url_secrets"]

MASK = "***"

# a name that says its value is a secret (a query parameter, a libpq keyword); libpq's
# sslkey names a file (0600, its contents the secret), not a secret: shown, so that a URL
# recorded in database.json with it, and no password, stays usable as it is
_SECRET_WORDS = r"(?:password|passwd|pwd|secret|token|key)"
_NAME = rf"(?!sslkey\b)[A-Za-z0-9_.\-]*{_SECRET_WORDS}[A-Za-z0-9_.\-]*"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# in a URL: ?name=value / &name=value / ;name=value, the value up to the next "&" (a ";"
# or a "#" may be part of an unencoded password: masked with it)
_QUERY_SECRET = re.compile(rf"(?i)([?&;]{_NAME}=)[^&]*")
_QUERY_SECRET_IN_TEXT = re.compile(rf"(?i)([?&;]{_NAME}=)[^&\s\"'<>]*")
# a libpq keyword: name = value, the value quoted ('se \'cret', to its closing quote or the
# end) or a run of non-blanks (libpq skips blanks after "=": "password= x" sets "x")
_QUOTED = r"'(?:[^'\\]|\\.)*(?:'|\\?$)"
_KEYWORD_SECRET = re.compile(rf"(?i)(?<![A-Za-z0-9_.\-])({_NAME}\s*=\s*)(?:{_QUOTED}|(?:\\.|\S)+)")
# the same in free text, where "key" alone names too much (idempotency_key=...): only the
# keys that are secrets; an unquoted value also ends at a quote, a comma or a bracket
_TEXT_NAME = (
    r"(?:[A-Za-z0-9_.\-]*(?:password|passwd|pwd|secret|token)[A-Za-z0-9_.\-]*"
    r"|(?:api_?|private_?|access_?|secret_?)key)"
)
_KEYWORD_SECRET_IN_TEXT = re.compile(
    rf"(?i)(?<![A-Za-z0-9_.\-])({_TEXT_NAME}\s*=\s*)(?:{_QUOTED}|[^\s'\"&,;()<>]+)"
)
_MIN_SCRUBBED = 3  # a secret value shorter than this is not searched for in free text
# a URL inside free text: up to a blank or a quote
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]*")


def mask_url(url: str) -> str:
    """``url`` with every secret replaced by ``***`` (for logs, errors and ``atb`` output).

    A URL (``scheme://...``) or a libpq keyword DSN (``host=db password=...``); the rest of
    the text is kept as it is.

    >>> mask_url("sqlite:///data/atb.db")
    'sqlite:///data/atb.db'
    >>> mask_url("postgresql://trader:p@ss@db/atb?sslpassword=x")
    'postgresql://trader:***@db/atb?sslpassword=***'
    >>> mask_url("host=db user=trader password = 'se cret'")
    'host=db user=trader password = ***'
    """
    url = str(url)
    m = _SCHEME.match(url.lstrip())
    if m is None:  # a keyword DSN, or something else: only its keywords
        return _KEYWORD_SECRET.sub(rf"\1{MASK}", url)
    lead = len(url) - len(url.lstrip())
    return url[:lead] + _mask_one_url(url[lead:], m.end(), _QUERY_SECRET)


def _mask_one_url(url: str, after_scheme: int, query: re.Pattern[str]) -> str:
    head, rest = url[:after_scheme], url[after_scheme:]
    # the userinfo ends at the last "@": a password may hold an "@" (and a "/", a "?"); a
    # URL whose path starts at once (sqlite:///a@b) has none
    at = -1 if rest.startswith("/") else rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at:]
        colon = userinfo.find(":")
        if colon >= 0:  # user:password (a user name holds no ":")
            userinfo = userinfo[: colon + 1] + MASK
        head += userinfo
    return head + query.sub(rf"\1{MASK}", rest)


def mask_text(text: str, *urls: str | None) -> str:
    """``text`` (an error message, a log line) with its secrets replaced by ``***``: every
    URL in it masked (``mask_url``), every ``password=...``-like keyword, and every secret
    value of ``urls`` and of the URLs ``remember_url`` was told about, wherever it appears
    (a driver's error quoting a mis-parsed piece of a password)."""
    text = str(text)
    secrets: set[str] = set(_remembered)
    for u in urls:
        if u:
            secrets.update(url_secrets(u))
    for s in sorted(secrets, key=len, reverse=True):  # the longest first: no piece left over
        if len(s) >= _MIN_SCRUBBED:
            text = _replace_secret(text, s)
    text = _URL_IN_TEXT.sub(
        lambda m: _mask_one_url(m.group(0), m.group(0).index("://") + 3, _QUERY_SECRET_IN_TEXT),
        text,
    )
    return _KEYWORD_SECRET_IN_TEXT.sub(rf"\1{MASK}", text)


def _replace_secret(text: str, secret: str) -> str:
    if len(secret) >= 6:
        return text.replace(secret, MASK)
    # a short one only where it stands alone: "ab" must not mask every "ab" of a message
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", MASK, text)


def url_secrets(url: str) -> list[str]:
    """The secret values in ``url`` (its password, the values of its secret-named query
    parameters or keywords), as written and percent-decoded, and the pieces a parser that
    splits the userinfo at its *first* ``@`` would show elsewhere (``h@nter2``: ``nter2``)."""
    url = str(url).strip()
    found: list[str] = []
    m = _SCHEME.match(url)
    if m is not None:
        rest = url[m.end() :]
        at = -1 if rest.startswith("/") else rest.rfind("@")
        if at >= 0:
            userinfo = rest[:at]
            colon = userinfo.find(":")
            if colon >= 0:
                password = userinfo[colon + 1 :]
                found += [password, *password.split("@")]
                # what follows each "@" of the userinfo: a parser cutting it at its first
                # "@" (libpq, SQLAlchemy) takes that for the host, and says so in its errors
                found += userinfo.split("@")[1:]
            rest = rest[at + 1 :]
        for q in _QUERY_SECRET.finditer(rest):
            found.append(rest[q.end(1) : q.end()])
    else:
        for k in _KEYWORD_SECRET.finditer(url):
            value = url[k.end(1) : k.end()]
            found.append(value)
            if value.startswith("'"):  # the value libpq reads from a quoted one
                inner = value[1:-1] if len(value) >= 2 and value.endswith("'") else value[1:]
                found.append(re.sub(r"\\(.)", r"\1", inner))
    out: list[str] = []
    for s in found:
        for v in (s, unquote(s)):
            v = v.strip()
            if v and v != MASK and v not in out:
                out.append(v)
    return out


_remembered: frozenset[str] = frozenset()
_remember_lock = threading.Lock()
_REMEMBER_MAX = 256  # secrets; a process connects to a handful of databases


def remember_url(url: str) -> None:
    """Keep ``url``'s secret values, so that ``mask_text`` (and ``describe_error``) hides them
    in any error text from then on, even where the URL itself is not at hand."""
    global _remembered
    new = [s for s in url_secrets(url) if s not in _remembered]
    if not new:
        return
    with _remember_lock:
        if len(_remembered) + len(new) <= _REMEMBER_MAX:
            _remembered = _remembered | frozenset(new)
