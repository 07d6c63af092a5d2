"""Model references as users write them: ``fraud@production``, ``fraud/3``, ``fraud``.

One parser for the project file, the CLI and the API, so a reference means the same thing
everywhere: an alias, a version, or (bare name) the latest version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hybridserve.errors import InvalidInput

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"
NAME_PATTERN = rf"^{_NAME}$"
"""A model or alias name, as a regular expression both Python and JSON Schema read alike."""
NAME_RE = re.compile(NAME_PATTERN)
_REF_RE = re.compile(rf"^(?P<name>{_NAME})(?:@(?P<alias>{_NAME})|/(?P<version>[0-9]+))?$")


def check_name(value: str, what: str = "model name") -> str:
    """``value`` if it is a valid model or alias name, else InvalidInput saying what is allowed."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidInput(
            f"invalid {what} {value!r}: use letters, digits, '_', '-' and '.' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return value


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed reference; at most one of ``alias`` and ``version`` is set."""

    name: str
    alias: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.alias is not None:
            check_name(self.alias, "alias")
        if self.alias is not None and self.version is not None:
            raise InvalidInput(f"a model reference has an alias or a version, not both: {self}")
        if self.version is not None and self.version < 1:
            raise InvalidInput(f"model versions start at 1, got {self.version}")

    @classmethod
    def parse(cls, ref: str | ModelRef) -> ModelRef:
        """Parse ``name``, ``name@alias`` or ``name/version``."""
        if isinstance(ref, ModelRef):
            return ref
        match = _REF_RE.match(ref.strip()) if isinstance(ref, str) else None
        if match is None:
            raise InvalidInput(
                f"invalid model reference {ref!r}: expected NAME (latest version), "
                "NAME/VERSION (e.g. fraud/3) or NAME@ALIAS (e.g. fraud@production)"
            )
        version = match["version"]
        return cls(match["name"], match["alias"], int(version) if version else None)

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return self.name
