"""``mask_url``: a database URL or DSN with its password replaced by ``***``, safe to print.

Every URL the library or ``atb`` prints, logs or puts in an error goes through it: the
``user:password@`` of a URL and the ``password=`` of a query string or a libpq keyword DSN.
"""

from __future__ import annotations

import re

__all__ = ["mask_url"]


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, errors and ``atb`` output).

    >>> mask_url("sqlite:///data/atb.db")
    'sqlite:///data/atb.db'
    >>> mask_url("host=db user=trader password=s3cret")
    'host=db user=trader password=***'
    """
    try:
        from sqlalchemy.engine import make_url  # imported here: config loads without it

        masked = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: fall back to the patterns below
        masked = url
    # user:password@ in anything URL-shaped that make_url did not parse
    masked = re.sub(r"(://[^:/@\s]*:)(?!\*\*\*@)[^@\s/]*@", r"\1***@", masked)
    # password=... in a query string or a libpq keyword DSN
    return re.sub(r"(?i)\b(password|passwd|pwd)=[^&\s]*", r"\1=***", masked)
