"""Shared file helpers: atomic writes (a reader never sees a half-written file) and the cache root."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """A folder under BENCH_CACHE (default ~/.cache/lowbit-bench) for derived data that is safe to delete."""
    root = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "lowbit-bench"))
    return root.joinpath(*parts)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same directory and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
