"""Phone transcripts from word transcripts through a lexicon, as SUPERB's PR task makes them
(it maps LibriSpeech words through ``librispeech-lexicon.txt``).

Two lexicons: a file of ``WORD PH1 PH2 ...`` lines (SUPERB's, on a GPU box), or ``"espeak"``:
espeak-ng's own phonemizer, offline, for the synthetic corpora. espeak-ng is called directly,
once per set of words, because the `phonemizer` package would add a wrapper around the same
program and a dependency for one subprocess call."""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

ESPEAK = "espeak"
# espeak-ng's phones of every word looked up in this process: a task's `prepare` and its module
# phonemize the same transcripts, and one subprocess call per word set is enough.
_ESPEAK_WORDS: dict[str, tuple[str, ...]] = {}
ESPEAK_VOICE = "en-us"


class LexiconError(ValueError):
    """A lexicon that cannot give a word's phones; the message names the word and the lexicon."""


@lru_cache(maxsize=4)
def read_lexicon(path: str) -> dict[str, tuple[str, ...]]:
    """``WORD PH1 PH2 ...`` per line (upper-cased words; the first pronunciation of a word is kept)."""
    file = Path(path)
    if not file.is_file():
        raise LexiconError(f"lexicon {path}: no such file (give a 'WORD PH1 PH2 ...' file, e.g. SUPERB's "
                           "librispeech-lexicon.txt, or lexicon = \"espeak\")")
    out: dict[str, tuple[str, ...]] = {}
    for n, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise LexiconError(f"{path}:{n}: expected 'WORD PH1 PH2 ...', got {line!r}")
        out.setdefault(parts[0].upper(), tuple(parts[1:]))
    return out


def _espeak_phones(line: str) -> tuple[str, ...]:
    """espeak-ng's ``-x`` mnemonics of one word without stress marks and pauses."""
    phones = (p.replace("'", "").replace(",", "") for p in line.split())
    return tuple(p for p in phones if p and not p.startswith("_"))


def espeak_lexicon(words: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Phones of each word from espeak-ng (American English), one call for all the words."""
    if shutil.which("espeak-ng") is None:
        raise LexiconError("lexicon 'espeak' needs espeak-ng: run scripts/setup.sh or `apt-get install -y espeak-ng`, "
                           "or give a lexicon file")
    words = tuple(dict.fromkeys(words))
    res = subprocess.run(["espeak-ng", "-q", "-x", "--sep= ", "-v", ESPEAK_VOICE], input="\n".join(w.lower() for w in words) + "\n",
                         capture_output=True, text=True, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if res.returncode != 0 or len(lines) != len(words):
        raise LexiconError(f"espeak-ng gave {len(lines)} lines for {len(words)} words ({res.stderr.strip()[:200]})")
    return {w: _espeak_phones(ln) for w, ln in zip(words, lines)}


class Phonemizer:
    """Word transcripts -> phone sequences through one lexicon, caching each word."""

    def __init__(self, lexicon: str):
        self.lexicon = lexicon
        self._words = _ESPEAK_WORDS if lexicon == ESPEAK else read_lexicon(lexicon)

    def add(self, transcripts) -> None:
        """Look up every word of ``transcripts`` at once (espeak: one call, not one per word)."""
        if self.lexicon == ESPEAK:
            new = tuple(w for t in transcripts for w in t.split() if w not in self._words)
            if new:
                self._words.update(espeak_lexicon(new))

    def phones(self, transcript: str) -> tuple[str, ...]:
        out: list[str] = []
        for word in transcript.split():
            if word not in self._words:
                if self.lexicon != ESPEAK:
                    raise LexiconError(f"word {word!r} is not in the lexicon {self.lexicon}")
                self.add([word])
            out.extend(self._words[word])
        return tuple(out)
