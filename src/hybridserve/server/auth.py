"""API keys with scopes (``predict``, ``ingest``, ``read``, ``admin``), stored hashed.

``read`` lets a key see how the service is doing (the dashboard's data) and nothing else;
``admin`` includes it (:data:`IMPLIED`), so an operator's key opens the dashboard too.

Keys come from the project file (``server.api_keys``, preferably as sha256 hashes) and from
``HYBRIDSERVE_API_KEYS`` (``name:key:scope+scope,...``). Auth is on whenever any key is
configured. A presented key is hashed and compared with every stored hash in constant time,
so neither the comparison nor the lookup leaks which key or how much of one matched.

A presented key is the header's bytes, never decoded: every endpoint (the raw predict path
and the Starlette ones, which would decode headers as latin-1) reads it with
:func:`presented_key` from the ASGI scope, so a key matches on all of them or on none, and a
header that is not UTF-8 is just a key that does not match (401). Configured keys are
visible ASCII (:func:`hybridserve.config.api_key_problem`), whose bytes are the same in every
encoding a client might use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from hybridserve.config import Project, api_key_problem
from hybridserve.errors import ConfigError, Forbidden, Unauthorized
from hybridserve.server.http import Scope, header

SCOPES = ("predict", "ingest", "read", "admin")
IMPLIED = {"admin": frozenset({"read"})}
"""Scopes a scope grants as well."""


def granted(scopes: frozenset[str]) -> frozenset[str]:
    """``scopes`` with the ones they imply."""
    return scopes.union(*(IMPLIED.get(s, frozenset()) for s in scopes))


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes
    scopes: frozenset[str]


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def parse_env_keys(text: str) -> list[ApiKey]:
    keys = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or not parts[1]:
            raise ConfigError(
                "HYBRIDSERVE_API_KEYS: expected 'name:key:scope+scope,...', got an entry "
                f"with {len(parts)} part(s) ({parts[0]!r})"
            )
        problem = api_key_problem(parts[1])
        if problem:
            raise ConfigError(f"HYBRIDSERVE_API_KEYS: {parts[0]}: {problem}")
        scopes = frozenset(parts[2].split("+"))
        bad = scopes - set(SCOPES)
        if bad:
            raise ConfigError(f"HYBRIDSERVE_API_KEYS: {parts[0]}: unknown scope(s) {sorted(bad)}")
        keys.append(ApiKey(parts[0], _digest(parts[1].encode("ascii")), granted(scopes)))
    return keys


class Authenticator:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @classmethod
    def from_project(cls, project: Project) -> Authenticator:
        keys = []
        for k in project.server.api_keys:
            # Both validated when the project loaded: 64 hex digits, or a visible-ASCII key.
            digest = bytes.fromhex(k.sha256) if k.sha256 else _digest((k.key or "").encode())
            keys.append(ApiKey(k.name, digest, granted(frozenset(k.scopes))))
        keys += parse_env_keys(os.environ.get("HYBRIDSERVE_API_KEYS", ""))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, presented: bytes | None, scope: str) -> str | None:
        """The key's name when ``presented`` may use ``scope``; raise 401/403 otherwise."""
        if not self.keys:
            return None
        if not presented:
            raise Unauthorized("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key'")
        digest = _digest(presented)
        found: ApiKey | None = None
        for key in self.keys:  # no early exit: the time taken does not depend on the match
            if hmac.compare_digest(key.digest, digest):
                found = key
        if found is None:
            raise Unauthorized("invalid API key")
        if scope not in found.scopes:
            raise Forbidden(f"API key {found.name!r} lacks the {scope!r} scope")
        return found.name


def presented_key(scope: Scope) -> bytes | None:
    """The key an HTTP request presents: ``X-API-Key``, else ``Authorization: Bearer KEY``,
    as the bytes sent (surrounding spaces and tabs dropped)."""
    return key_from(header(scope, b"x-api-key"), header(scope, b"authorization"))


def key_from(api_key: bytes | None, authorization: bytes | None) -> bytes | None:
    """The key in an ``X-API-Key`` value, else in an ``Authorization: Bearer KEY`` value (the
    one rule for HTTP headers and gRPC metadata)."""
    if api_key and api_key.strip(b" \t"):
        return api_key.strip(b" \t")
    if authorization:
        scheme, _, token = authorization.strip(b" \t").partition(b" ")
        if scheme.lower() == b"bearer" and token.strip(b" \t"):
            return token.strip(b" \t")
    return None
