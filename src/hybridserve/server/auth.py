"""API keys with scopes (``predict``, ``ingest``, ``admin``), stored hashed.

Keys come from the project file (``server.api_keys``, preferably as sha256 hashes) and from
``HYBRIDSERVE_API_KEYS`` (``name:key:scope+scope,...``). Auth is on whenever any key is
configured. A presented key is hashed and compared with every stored hash in constant time,
so neither the comparison nor the lookup leaks which key or how much of one matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from hybridserve.config import Project
from hybridserve.errors import ConfigError, Forbidden, Unauthorized

SCOPES = ("predict", "ingest", "admin")


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes
    scopes: frozenset[str]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_env_keys(text: str) -> list[ApiKey]:
    keys = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or not parts[1]:
            raise ConfigError(
                "HYBRIDSERVE_API_KEYS: expected 'name:key:scope+scope,...', got an entry "
                f"with {len(parts)} part(s) ({parts[0]!r})"
            )
        scopes = frozenset(parts[2].split("+"))
        bad = scopes - set(SCOPES)
        if bad:
            raise ConfigError(f"HYBRIDSERVE_API_KEYS: {parts[0]}: unknown scope(s) {sorted(bad)}")
        keys.append(ApiKey(parts[0], _digest(parts[1]), scopes))
    return keys


class Authenticator:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @classmethod
    def from_project(cls, project: Project) -> Authenticator:
        keys = []
        for k in project.server.api_keys:
            digest = bytes.fromhex(k.sha256) if k.sha256 else _digest(k.key or "")
            keys.append(ApiKey(k.name, digest, frozenset(k.scopes)))
        keys += parse_env_keys(os.environ.get("HYBRIDSERVE_API_KEYS", ""))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, presented: str | None, scope: str) -> str | None:
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


def presented_key(authorization: bytes | str | None, api_key: bytes | str | None) -> str | None:
    if api_key:
        return api_key.decode() if isinstance(api_key, bytes) else api_key
    if authorization:
        text = authorization.decode() if isinstance(authorization, bytes) else authorization
        scheme, _, token = text.partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
    return None
