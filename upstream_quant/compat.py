"""torchaudio compatibility for s3prl 0.4.18, handled once, here.

Why this exists: s3prl pins no torchaudio, and pip resolves it to a build that may not
match the installed torch (on our CPU machines `import torchaudio` raises OSError). s3prl's
hub and upstream utilities import torchaudio at module import time and call
`torchaudio.set_audio_backend`, which torchaudio removed in 2.9; transformers also imports
torchaudio whenever it is installed. Nothing in this project needs torchaudio itself (audio
is read with soundfile, features are computed with torch ops), so:

- a working torchaudio is used as is, with a no-op `set_audio_backend` added if missing;
- a broken or absent torchaudio is replaced in `sys.modules` by a stand-in whose every
  attribute imports fine and raises a clear error only when actually used.

Site-packages are never modified. Call `ensure_torchaudio()` before importing s3prl modules.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

_STATE: str | None = None

_HINT = (
    "torchaudio is not usable in this environment (it does not match the installed torch), "
    "so this s3prl code path is unavailable. This project reads audio with soundfile and "
    "does not need it; if you call s3prl code that does, install a torchaudio build that "
    "matches your torch."
)


class TorchaudioUnavailable(RuntimeError):
    """Raised when code actually uses the torchaudio stand-in."""


class _Missing:
    """Any attribute of the stand-in: importable, fails loudly when called."""

    def __init__(self, qualname: str):
        self._qualname = qualname

    def __getattr__(self, name: str) -> "_Missing":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(f"{self._qualname}.{name}")

    def __call__(self, *args, **kwargs):
        raise TorchaudioUnavailable(f"{self._qualname}() was called. {_HINT}")

    def __repr__(self) -> str:
        return f"<unavailable {self._qualname}>"


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(f"{self.__name__}.{name}")


def _set_audio_backend(backend=None) -> None:
    """No-op stand-in for the function torchaudio 2.9 removed (s3prl calls it at import)."""


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `torchaudio` and every `torchaudio.*` submodule as a stand-in."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchaudio" or fullname.startswith("torchaudio."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # a package, so submodule imports resolve through this finder
        module.__version__ = "0.0.0+unavailable"
        module.set_audio_backend = _set_audio_backend
        return module

    def exec_module(self, module):
        return None


def _install_stub() -> None:
    for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
        del sys.modules[name]
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())


def ensure_torchaudio() -> str:
    """Make `import torchaudio` safe for s3prl/transformers; returns 'real' or 'stub'."""
    global _STATE
    if _STATE is not None:
        return _STATE
    try:
        import torchaudio  # noqa: F401
    except Exception:  # OSError for a mismatched native build, ImportError when absent
        _install_stub()
        _STATE = "stub"
    else:
        if not hasattr(torchaudio, "set_audio_backend"):
            torchaudio.set_audio_backend = _set_audio_backend
        _STATE = "real"
    return _STATE
