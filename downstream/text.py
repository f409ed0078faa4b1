"""SUPERB's ASR character set: A-Z, apostrophe and a word separator, upper-cased text.

s3prl's ``character.txt`` dictionary for LibriSpeech has exactly these symbols; keeping
the same vocabulary makes our heads and WERs comparable with SUPERB's.
"""

from __future__ import annotations

import re
import unicodedata

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"
WORD_SEP = "|"
BLANK = "<blank>"
# Index 0 is the CTC blank, as in s3prl's dictionary-based CTC heads.
VOCAB: tuple[str, ...] = (BLANK, WORD_SEP, *LETTERS)

_PUNCT = re.compile(r"[.,;:!?\"()\[\]{}]")
_SPACES = re.compile(r"\s+")
_CHAR_INDEX = {c: i for i, c in enumerate(VOCAB)}


def normalize(text: str) -> str:
    """Upper-case, turn hyphens to spaces, drop punctuation and accents, collapse spaces.

    Anything left outside the vocabulary (digits, symbols) is kept, so that
    ``out_of_vocabulary`` can report it instead of silently changing the words.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.upper().replace("-", " ").replace("\u2019", "'")
    text = _PUNCT.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def out_of_vocabulary(text: str) -> set[str]:
    """Characters of a normalised transcript that the vocabulary cannot spell."""
    return {c for c in text if c != " " and c not in _CHAR_INDEX}


def encode(text: str) -> list[int]:
    """Token ids of a normalised transcript; spaces become the word separator."""
    bad = out_of_vocabulary(text)
    if bad:
        raise ValueError(f"transcript {text!r} has characters outside the vocabulary: {''.join(sorted(bad))!r}")
    return [_CHAR_INDEX[WORD_SEP if c == " " else c] for c in text]


def decode(ids: list[int]) -> str:
    """Text of token ids (blanks already removed)."""
    chars = [VOCAB[i] for i in ids if i != 0]
    return _SPACES.sub(" ", "".join(chars).replace(WORD_SEP, " ")).strip()
