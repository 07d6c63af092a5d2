"""The artifact directory: model files stored by name and version, checked before each load.

Files are copied in under ``<dir>/<name>/<version>/<filename>`` and never modified; the
registry records their sha256, and :meth:`ArtifactStore.verify` re-hashes a file before it is
loaded, so a file changed on a shared mount (or unpickling something unexpected) is refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from hybridserve.errors import ArtifactIntegrityError, InvalidInput

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """A directory of artifacts, local or on a shared mount."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def put(self, name: str, version: int, src_path: str | Path) -> tuple[str, str]:
        """Copy ``src_path`` in; return its path relative to the root and its sha256.

        The copy goes to a temporary file in the target directory and is renamed into place,
        so a reader never sees half a file.
        """
        src = Path(src_path)
        if not src.is_file():
            raise InvalidInput(f"artifact {src} does not exist or is not a file")
        relative = PurePosixPath(name, str(version), src.name)
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=src.suffix)
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
                shutil.copyfileobj(inp, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(relative), sha256_of(target)

    def path(self, relative: str) -> Path:
        """Absolute path of a stored artifact."""
        return self.root / relative

    def verify(self, relative: str, sha256: str, *, label: str = "") -> Path:
        """The artifact's path once its sha256 matches ``sha256``; ArtifactIntegrityError if not.

        ``label`` (e.g. ``fraud/3``) names the version in the error.
        """
        path = self.path(relative)
        who = f"artifact of {label}" if label else f"artifact {relative}"
        if not path.is_file():
            raise ArtifactIntegrityError(
                f"{who} is missing: expected {path}", artifact=str(path), model=label
            )
        actual = sha256_of(path)
        if actual != sha256:
            raise ArtifactIntegrityError(
                f"{who} failed its integrity check: sha256 is {actual}, registry recorded "
                f"{sha256} ({path}); refusing to load it",
                artifact=str(path),
                model=label,
                expected=sha256,
                actual=actual,
            )
        return path
