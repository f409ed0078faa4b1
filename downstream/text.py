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


_ONES = ("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN FOURTEEN FIFTEEN SIXTEEN "
         "SEVENTEEN EIGHTEEN NINETEEN").split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_NUMBER = re.compile(r"\d+")


def number_words(n: int) -> str:
    """A whole number as the transcripts spell it (42 -> FORTY TWO, 1905 -> ONE THOUSAND NINE
    HUNDRED FIVE); beyond a million, digit by digit."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " HUNDRED" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    if n < 1_000_000:
        return number_words(n // 1000) + " THOUSAND" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))
    return " ".join(_ONES[int(d)] for d in str(n))


def spoken(text: str) -> str:
    """A decoder's written output in the transcripts' form, for scoring: numerals spelled out,
    then `normalize`, then what the vocabulary cannot spell dropped. Whisper's own English
    normaliser (transformers) goes the other way (words to numerals) and standardises
    spellings; here the references are spelled words in SUPERB's alphabet, so the hypothesis is
    brought to them instead (and transformers stays out of the install)."""
    text = normalize(_NUMBER.sub(lambda m: f" {number_words(int(m.group()))} ", text.replace(",", "")))
    text = "".join(c for c in text if c == " " or c in _CHAR_INDEX)
    return _SPACES.sub(" ", text).strip()
