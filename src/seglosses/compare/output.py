"""The comparison's output folder: it never deletes or overwrites a file it did not write.

Everything the comparison keeps between starts lives in ``OUT/runs/``, a folder it creates and marks with
``OUT/runs/manifest.json``; the report files in ``OUT`` itself (``report.md``, ``results.json``, the
plots) are recorded in that manifest with their SHA-256 when written. Before anything is trained, every
report file about to be written must be absent or unchanged since this tool wrote it; a ``runs/`` folder
without the manifest is someone else's. Every write goes through a temporary file in ``OUT/runs/`` (a
name only this tool uses: ``.NAME.RANDOM.seglosses-tmp``) renamed into place, so a kill never leaves a
half-written file, and the next start deletes only such temporaries under ``OUT/runs/``. (An empty
``runs/``, or one holding only such temporaries, is what a start killed before its manifest leaves.)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

from .._core.errors import SegLossError

TEMPORARY_SUFFIX = ".seglosses-tmp"
MANIFEST = "manifest.json"
TOOL = "seglosses compare"


def write_atomically(path: Path, data: bytes, scratch: Path) -> None:
    """Write ``data`` to ``path`` through a temporary file in ``scratch`` (on the same file system) that
    is renamed into place: never a half-written file."""
    scratch.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=scratch, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would give
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OutputFolder:
    """``OUT`` of one comparison (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"

    def _manifest(self) -> Dict[str, List[str]]:
        path = self.runs / MANIFEST
        if not path.exists():
            return {}
        try:
            content = json.loads(path.read_text())
            return dict(content["written"]) if content.get("tool") == TOOL else {}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def claim(self, names: Sequence[str]) -> None:
        """Fail, before any work, when ``OUT/runs`` or one of the report files ``names`` is not ours."""
        foreign = [path for path in self.runs.iterdir() if not path.name.endswith(TEMPORARY_SUFFIX)] if (
            self.runs.is_dir()) else []  # fmt: skip
        if (self.runs.exists() and not self.runs.is_dir()) or (
            foreign and not (self.runs / MANIFEST).is_file()
        ):
            raise SegLossError(
                f"expected --out {str(self.root)!r} to be a new folder or one that {TOOL} wrote, got "
                f"{str(self.runs)!r} without its manifest (another tool's folder, or an older version's "
                "output): choose another --out"
            )
        written = self._manifest()
        for name in names:
            path = self.root / name
            if path.exists() and _digest(path.read_bytes()) not in written.get(name, []):
                raise SegLossError(
                    f"expected to write {str(path)!r}, got a file there that {TOOL} did not write (or that "
                    "was changed since): move it or choose another --out"
                )
        self.runs.mkdir(parents=True, exist_ok=True)
        if not (self.runs / MANIFEST).is_file():
            self._save_manifest(written)

    def _save_manifest(self, written: Dict[str, List[str]]) -> None:
        payload = json.dumps({"tool": TOOL, "written": written}, indent=1, sort_keys=True).encode()
        write_atomically(self.runs / MANIFEST, payload, self.runs)

    def write_report_file(self, name: str, data: bytes) -> Path:
        """Write ``OUT/name`` (a file :meth:`claim` checked) and record it in the manifest."""
        path = self.root / name
        written = self._manifest()
        # recorded before the rename, so that a kill between the two leaves a file the manifest knows
        written[name] = [*written.get(name, [])[-2:], _digest(data)]
        self._save_manifest(written)
        write_atomically(path, data, self.runs)
        return path

    def write_run_file(self, path: Path, data: bytes) -> None:
        """Write a file inside ``OUT/runs`` (checkpoints, results), its temporary beside it."""
        write_atomically(path, data, path.parent)

    def remove_stale_temporaries(self) -> None:
        """Delete the temporaries a killed start left: only ``.*.seglosses-tmp`` files under ``OUT/runs``."""
        if self.runs.is_dir():
            for stale in self.runs.rglob(f".*{TEMPORARY_SUFFIX}"):
                if stale.is_file():
                    stale.unlink(missing_ok=True)
