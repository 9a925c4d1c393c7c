"""Outputs that appear whole or not at all.

``atomic_dir(target)`` yields a temporary folder beside ``target``; when the block finishes it is
renamed to ``target`` (replacing an old one only with ``force``), and when the block raises it is
deleted. ``atomic_write_text`` does the same for one file. Both rely on ``os.rename`` within one
folder being atomic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from training.exporting.errors import ExportError


def check_target(target: Path, force: bool) -> None:
    """Refuse to overwrite ``target`` unless ``force``; called before any work starts."""
    if target.exists() and not force:
        raise ExportError(f"{target} already exists; pass --force to replace it")
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    target = Path(target)
    check_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the export from a server's own user
    try:
        yield tmp
        if target.exists():  # --force: move the old one aside first, so a crash leaves one of them
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, stale / "old")
            os.rename(tmp, target)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temp file in ``path``'s folder, then rename it over ``path`` (keeping
    the old file's permissions)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
