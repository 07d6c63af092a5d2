"""Backend URLs in messages, with their secrets masked.

A store, registry or stream URL may carry a password (``redis://:PW@host/0``,
``postgresql://user:PW@host/db``, ``?password=PW``). Every error, log line and response that
names a backend names it through :func:`masked_url`, so the password reaches none of them:
``redis://:***@host/0``, the form SQLAlchemy prints for the registry.
"""

from __future__ import annotations

import re

# scheme://user:secret@ — the secret runs to the netloc's last "@" (an unescaped "@" in a
# password is still masked whole); the user part is kept, as it says who connects.
# Quotes end a URL too: a log line is JSON, and a mask must not run across its fields.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s\"']*):[^/?#\s\"']*@")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pass|pwd|secret|token)=)[^&#\s\"']*")


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (also every URL inside a longer text)."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1:***@", url))
