"""The installed package's version (pyproject.toml's), recorded in every results row and packed
manifest beside the git commit, and printed by ``bench --version``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "lowbit-speech-bench"


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = package_version()
