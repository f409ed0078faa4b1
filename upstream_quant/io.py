"""Shared file helpers: atomic writes (a reader never sees a half-written file) and the cache root."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """A folder under BENCH_CACHE (default ~/.cache/lowbit-bench) for derived data that is safe to delete."""
    root = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "lowbit-bench"))
    return root.joinpath(*parts)


def umask_mode(mode: int = 0o666) -> int:
    """`mode` as the process umask leaves it (what open() would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same directory and os.replace. The
    file gets the mode a plain open() would (mkstemp's 0600 would hide shared results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output(path: str | Path, flag: str = "--out") -> Path:
    """Fail before any work if `path` cannot be written: a directory, a parent that is a file,
    or a folder we may not write in (probed by creating a file: permission bits say nothing for
    root or on read-only mounts). Creates nothing that stays."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory; give a file path, e.g. {path / 'model.safetensors'}")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {path}: {ancestor} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=ancestor, prefix=".bench-write-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write in {ancestor} ({exc.strerror or exc})") from exc
    return path
