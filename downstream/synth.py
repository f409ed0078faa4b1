"""Synthetic labelled speech from Debian's TTS engines, written in LibriSpeech and Speech Commands layouts.

The offline default corpus: every machine here can build it (``scripts/setup.sh`` installs the
engines), and the real readers load it unchanged. Each voice is a "speaker" with a gender.
Kinds: ``sentences`` (read sentences), ``digits`` (TIDIGITS-like digit strings), ``commands``
(short command phrases), ``passages`` (the read sentences six to an utterance, a test set for a
decoder that reads 30 s windows) and ``unseen`` (the same from sentences no other kind reads),
all in LibriSpeech layout, ``keywords`` (Speech Commands layout),
``intents`` (Fluent Speech Commands layout: spoken commands labelled with action, object and
location slots), ``speakers`` (VoxCeleb1 layout: every voice at several pitch and speed
settings, each setting a speaker, for speaker identification and verification), ``slots``
(audio SNIPS layout: requests whose words are tagged with slot types, for slot filling) and
``mixtures`` (Kaldi data dirs of two-voice overlapping mixtures with who-speaks-when, for
diarization) and ``terms`` (QUESST 2014 layout: spoken words as queries, read sentences to
search, for query-by-example spoken term detection).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from upstream_quant.io import write_atomic

from . import text
from .speech_commands import COMMANDS, NOISE_DIR

KINDS = ("sentences", "digits", "commands", "passages", "unseen", "keywords", "intents", "speakers", "slots", "mixtures",
         "terms")
ASR_KINDS = KINDS[:5]
# passages: the read sentences in groups, each read as one utterance of about 20 s, all of them
# test prompts: a test set for a decoder that reads 30 s windows (Whisper's), nothing to train on.
# unseen: the same from sentences that no other kind reads (UNSEEN_FILE), so that no audio a
# model is calibrated or trained on holds the test set's text
PASSAGE_SENTENCES = 6
ASR_SPLITS = ("train", "dev", "test", "test-voice")
SPLIT_SHARE = {"train": 0.8, "dev": 0.1, "test": 0.1}
CHAPTER = {"train": 1, "dev": 2, "test": 3, "test-voice": 4}
# Split folder names: ours, or LibriSpeech's (a corpus the committed `paper` suite reads as is).
SPLIT_NAMES = {
    "plain": {s: s for s in ASR_SPLITS},
    "librispeech": {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean", "test-voice": "test-voice"},
}
SENTENCES_FILE = Path(__file__).parent / "data" / "sentences.txt"
UNSEEN_FILE = Path(__file__).parent / "data" / "unseen_sentences.txt"
PASSAGE_TEXT = {"passages": SENTENCES_FILE, "unseen": UNSEEN_FILE}  # the passage kinds -> the sentences they read
# Words of Speech Commands v0.01 outside the 10 commands (its "unknown" class).
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Voice:
    name: str
    speaker_id: int  # LibriSpeech-style numeric speaker id, fixed per voice
    gender: str
    engine: str
    voice: str


VOICES = {
    v.name: v
    for v in (
        Voice("flite_slt", 9001, "F", "flite", "slt"),
        Voice("festival_slt_hts", 9002, "F", "festival", "voice_cmu_us_slt_arctic_hts"),
        Voice("espeak_f3", 9003, "F", "espeak-ng", "en-us+f3"),
        Voice("espeak_f4", 9004, "F", "espeak-ng", "en-us+f4"),
        Voice("flite_rms", 9011, "M", "flite", "rms"),
        Voice("flite_awb", 9012, "M", "flite", "awb"),
        Voice("flite_kal16", 9013, "M", "flite", "kal16"),
        Voice("festival_kal", 9014, "M", "festival", "voice_kal_diphone"),
        Voice("espeak_m3", 9015, "M", "espeak-ng", "en-us+m3"),
    )
}
DEFAULT_VOICES = ("flite_slt", "festival_slt_hts", "espeak_f3", "flite_rms", "flite_kal16", "festival_kal", "espeak_m3", "flite_awb")
DEFAULT_HELDOUT = "flite_awb"
DEBIAN_PACKAGES = {
    "flite": "flite",
    "festival": "festival festvox-kallpc16k festvox-us-slt-hts",
    "espeak-ng": "espeak-ng",
    "sox": "sox",
}
FESTIVAL_VOICE_DIRS = {
    "voice_cmu_us_slt_arctic_hts": "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts",
    "voice_kal_diphone": "/usr/share/festival/voices/english/kal_diphone",
}


class SynthError(RuntimeError):
    """Missing engine, bad arguments or a corpus folder built with other arguments."""


# ---------------------------------------------------------------- prompts

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh")


def read_sentences(path: Path = SENTENCES_FILE) -> list[str]:
    """The curated sentence list; every line must normalise into SUPERB's vocabulary."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    out = [ln for ln in lines if ln and not ln.startswith("#")]
    for ln in out:
        bad = text.out_of_vocabulary(text.normalize(ln))
        if bad:
            raise SynthError(f"{path}: sentence {ln!r} has characters outside the vocabulary {sorted(bad)}")
    return out


def _digit_prompts(rng: random.Random, n: int) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen[" ".join(rng.choice(_DIGITS) for _ in range(rng.randint(1, 7)))] = None
    return list(seen)


def _command_prompts() -> list[str]:
    rooms = ("kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hall", "garden")
    out = [f"{verb} the {room} {thing}" for verb in ("turn on", "turn off", "switch on", "switch off")
           for room in rooms for thing in ("light", "lamp", "fan", "heater", "radio")]
    out += [f"{verb} the {room} {thing}" for verb in ("open", "close", "lock", "unlock")
            for room in rooms for thing in ("door", "window", "blinds")]
    levels = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    out += [f"set the {thing} to {lv}" for thing in ("volume", "brightness", "temperature", "fan speed") for lv in levels]
    out += [f"{verb} {what}" for verb in ("play", "pause", "stop", "skip")
            for what in ("the music", "the news", "the radio", "the next song", "the podcast", "the alarm")]
    out += [f"call {name} {when}" for name in ("mom", "dad", "anna", "peter", "the office", "the doctor")
            for when in ("now", "later", "tonight", "tomorrow")]
    return out


def prompts(kind: str, seed: int) -> dict[str, list[str]]:
    """Disjoint train/dev/test prompt lists for an ASR kind (shuffled by seed)."""
    rng = random.Random(f"{kind}-{seed}")
    if kind in PASSAGE_TEXT:
        pool = read_sentences(PASSAGE_TEXT[kind])
        rng.shuffle(pool)
        groups = [" ".join(pool[i : i + PASSAGE_SENTENCES]) for i in range(0, len(pool), PASSAGE_SENTENCES)]
        return {"dev": [], "test": groups, "train": []}
    if kind == "sentences":
        pool = read_sentences()
    elif kind == "digits":
        pool = _digit_prompts(rng, 6000)
    elif kind == "commands":
        pool = _command_prompts()
    else:
        raise SynthError(f"unknown ASR kind {kind!r}; choose from {ASR_KINDS}")
    rng.shuffle(pool)
    n_dev = n_test = max(1, round(len(pool) * SPLIT_SHARE["dev"]))
    return {"dev": pool[:n_dev], "test": pool[n_dev : n_dev + n_test], "train": pool[n_dev + n_test :]}


def estimate_seconds(prompt: str) -> float:
    """Rough TTS duration, used only to size a corpus to --minutes (the manifest has the real figure)."""
    return 0.3 + 0.06 * len(prompt)


# ---------------------------------------------------------------- engines

def check_engines(voices: Sequence[Voice]) -> None:
    """Fail before any work if an engine or festival voice is missing, naming the Debian package."""
    needed = {v.engine for v in voices} | {"sox"}
    exe = {"flite": "flite", "festival": "text2wave", "espeak-ng": "espeak-ng", "sox": "sox"}
    missing = sorted(e for e in needed if shutil.which(exe[e]) is None)
    for v in voices:
        if v.engine == "festival" and not Path(FESTIVAL_VOICE_DIRS[v.voice]).is_dir() and "festival" not in missing:
            missing.append("festival")
    if missing:
        pkgs = " ".join(DEBIAN_PACKAGES[e] for e in missing)
        raise SynthError(
            f"TTS engine(s) {missing} not installed; run scripts/setup.sh, or "
            f"`apt-get update && apt-get install -y {pkgs}`, or choose other --voices"
        )


def _engine_wav(voice: Voice, prompt: str, out: Path) -> None:
    if voice.engine == "flite":
        cmd, stdin = ["flite", "-voice", voice.voice, "-t", prompt, "-o", str(out)], None
    elif voice.engine == "festival":
        cmd, stdin = ["text2wave", "-eval", f"({voice.voice})", "-o", str(out)], prompt
    else:
        cmd, stdin = ["espeak-ng", "-v", voice.voice, "-w", str(out), prompt], None
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if res.returncode != 0 or not out.is_file() or out.stat().st_size < 100:
        raise SynthError(f"{voice.engine} failed for voice {voice.name} on {prompt!r}: {res.stderr.strip()[:300]}")


def render(voice: Voice, prompt: str, speed: float, pitch: int = 0) -> np.ndarray:
    """16 kHz mono float32 speech: engine output, sox speed perturbation (and a pitch shift in
    cents, tempo kept) and resampling (no dither)."""
    with tempfile.TemporaryDirectory(prefix="bench-tts-") as tmp:
        raw = Path(tmp) / "raw.wav"
        _engine_wav(voice, prompt, raw)
        res = subprocess.run(
            ["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", "-t", "wav", "-", "speed", f"{speed:.4f}",
             *(["pitch", str(pitch)] if pitch else [])],
            capture_output=True,
        )
        if res.returncode != 0:
            raise SynthError(f"sox failed on {voice.name} output for {prompt!r}: {res.stderr.decode()[:300]}")
    wav, sr = sf.read(io.BytesIO(res.stdout), dtype="float32")
    assert sr == 16000
    return wav


# ---------------------------------------------------------------- jobs

@dataclass(frozen=True)
class Job:
    out: str
    voice: str
    prompt: str
    speed: float
    fixed_seconds: float = 0.0  # keywords: pad or cut to exactly this length
    pitch: int = 0  # speakers: a pitch shift in cents
    trim: bool = False  # terms' queries: cut to the spoken word (`trim_silence`)


def _write_audio(path: Path, wav: np.ndarray) -> None:
    buf = io.BytesIO()
    fmt = "FLAC" if path.suffix == ".flac" else "WAV"
    sf.write(buf, wav, 16000, format=fmt, subtype="PCM_16")
    write_atomic(path, buf.getvalue())


def _fit(wav: np.ndarray, seconds: float) -> np.ndarray:
    """Centre the loudest stretch in a fixed-length window (Speech Commands clips are 1 s)."""
    n = int(round(seconds * 16000))
    if len(wav) > n:
        energy = np.convolve(wav**2, np.ones(n), mode="valid")
        start = int(np.argmax(energy))
        return wav[start : start + n]
    pad = n - len(wav)
    return np.pad(wav, (pad // 2, pad - pad // 2))


def run_job(job: Job) -> float:
    """Synthesize one file unless it exists (files are written atomically, so existing ones are whole)."""
    path = Path(job.out)
    if path.is_file():
        return sf.info(str(path)).duration
    wav = render(VOICES[job.voice], job.prompt, job.speed, job.pitch)
    if job.fixed_seconds:
        wav = _fit(wav, job.fixed_seconds)
    if job.trim:
        wav = trim_silence(wav)
    _write_audio(path, wav)
    return len(wav) / 16000


def _speed(rng: random.Random, perturb: float) -> float:
    return round(1 + rng.uniform(-perturb, perturb), 4) if perturb else 1.0


def plan_asr(kind: str, root: Path, minutes: float, voices: Sequence[Voice], heldout: Voice | None,
             seed: int, perturb: float, folders: dict[str, str] = SPLIT_NAMES["plain"],
             test_minutes: float | None = None) -> tuple[list[Job], dict[tuple[str, str, str], str]]:
    """Jobs and transcripts (keyed by split, speaker, utterance id) for one LibriSpeech-layout kind.

    Each split's prompts go round-robin over the voices, so every voice reads a share of every
    split; the held-out voice reads the test prompts into ``test-voice``. ``test_minutes`` sizes
    the test split on its own (a test set large enough to separate methods costs inference only).
    """
    rng = random.Random(f"plan-{kind}-{seed}")
    pools = prompts(kind, seed)
    jobs: list[Job] = []
    trans: dict[tuple[str, str, str], str] = {}

    def add(split: str, voice: Voice, prompt: str, idx: int) -> None:
        spk, ch = voice.speaker_id, CHAPTER[split]
        utt = f"{spk}-{ch}-{idx:04d}"
        out = root / folders[split] / str(spk) / str(ch) / f"{utt}.flac"
        jobs.append(Job(str(out), voice.name, prompt, _speed(rng, perturb)))
        trans[(folders[split], str(spk), utt)] = text.normalize(prompt)

    test_used: list[str] = []
    for split in ("train", "dev", "test"):
        budget = test_minutes * 60 if split == "test" and test_minutes else minutes * 60 * SPLIT_SHARE[split]
        pool, spent = pools[split], 0.0
        counters = {v.name: 0 for v in voices}
        for round_ in itertools.count():
            for i, prompt in enumerate(pool):
                if spent >= budget:
                    break
                voice = voices[(i + round_) % len(voices)]
                add(split, voice, prompt, counters[voice.name])
                counters[voice.name] += 1
                spent += estimate_seconds(prompt)
                if split == "test" and prompt not in test_used:
                    test_used.append(prompt)
            if spent >= budget or round_ >= 50:
                break
    if heldout is not None:
        for idx, prompt in enumerate(test_used):
            add("test-voice", heldout, prompt, idx)
    return jobs, trans


def _speaker_code(voice: Voice, variant: int) -> str:
    return hashlib.sha1(f"{voice.name}-{variant}".encode()).hexdigest()[:8]


def plan_keywords(root: Path, minutes: float, voices: Sequence[Voice], seed: int, perturb: float
                  ) -> tuple[list[Job], list[str], list[str]]:
    """Jobs for Speech Commands layout, plus validation and testing lists (split by speaker, as SC does)."""
    rng = random.Random(f"keywords-{seed}")
    words = (*COMMANDS, *UNKNOWN_WORDS)
    variants = max(2, round(minutes * 60 / (len(words) * len(voices))))
    speakers = sorted((_speaker_code(v, k), v) for v in voices for k in range(variants))
    order = sorted(range(len(speakers)), key=lambda i: rng.random())
    n_held = max(1, round(0.1 * len(speakers)))
    dev_ids = {speakers[i][0] for i in order[:n_held]}
    test_ids = {speakers[i][0] for i in order[n_held : 2 * n_held]}
    jobs, dev, test = [], [], []
    for code, voice in speakers:
        for word in words:
            rel = f"{word}/{code}_nohash_0.wav"
            jobs.append(Job(str(root / rel), voice.name, word, _speed(rng, perturb), fixed_seconds=1.0))
            (dev if code in dev_ids else test if code in test_ids else []).append(rel)
    return jobs, sorted(dev), sorted(test)


# Fluent Speech Commands' slots (a subset of its values) and several phrasings per intent;
# "{where}" is " in the LOCATION" or nothing for location "none".
_LOCATIONS = ("none", "kitchen", "bedroom", "washroom")
_INTENT_PHRASES = {
    ("activate", "lights"): ("turn on the lights{where}", "switch on the lights{where}", "lights on{where}",
                             "turn the lights on{where}"),
    ("deactivate", "lights"): ("turn off the lights{where}", "switch off the lights{where}", "lights off{where}",
                               "turn the lights off{where}"),
    ("increase", "heat"): ("turn up the heat{where}", "increase the temperature{where}", "make it warmer{where}",
                           "heat up{where}"),
    ("decrease", "heat"): ("turn down the heat{where}", "decrease the temperature{where}", "make it cooler{where}",
                           "too hot{where}"),
}
_PLAIN_INTENTS = {
    ("increase", "volume"): ("turn up the volume", "increase the volume", "louder please", "make it louder"),
    ("decrease", "volume"): ("turn down the volume", "decrease the volume", "quieter please", "make it quieter"),
    ("activate", "music"): ("play the music", "start the music", "put some music on", "music on"),
    ("deactivate", "music"): ("stop the music", "pause the music", "turn the music off", "music off"),
    ("activate", "lamp"): ("turn on the lamp", "switch the lamp on", "lamp on"),
    ("deactivate", "lamp"): ("turn off the lamp", "switch the lamp off", "lamp off"),
    **{("bring", thing): (f"bring me the {thing}", f"get me the {thing}", f"fetch the {thing}")
       for thing in ("newspaper", "juice", "socks", "shoes")},
    **{("change language", lang): (f"switch to {lang}", f"change the language to {lang}", f"set the language to {lang}")
       for lang in ("english", "german", "korean", "chinese")},
}


def intent_prompts() -> list[tuple[str, str, str, str]]:
    """(phrase, action, object, location) for every phrasing of every intent."""
    out = []
    for (action, obj), phrases in _INTENT_PHRASES.items():
        for loc in _LOCATIONS:
            where = "" if loc == "none" else f" in the {loc}"
            out += [(p.format(where=where), action, obj, loc) for p in phrases]
    out += [(p, action, obj, "none") for (action, obj), phrases in _PLAIN_INTENTS.items() for p in phrases]
    return out


def plan_intents(root: Path, minutes: float, voices: Sequence[Voice], heldout: Voice | None, seed: int, perturb: float,
                 test_minutes: float | None = None) -> tuple[list[Job], dict[str, list[list[str]]]]:
    """Jobs and CSV rows in Fluent Speech Commands layout, split by speaker as FSC is: the held-out
    voice is the test speaker, the last reader the validation speaker, the others train. Each
    voice reads a seeded share of the phrasings sized to ``minutes``. ``test_minutes`` sizes the
    test speaker's share on its own: beyond one reading of every phrasing it reads them again in
    a new order, each reading with its own speed perturbation."""
    rng = random.Random(f"intents-{seed}")
    pool = intent_prompts()
    if heldout is None:
        if len(voices) < 3:
            raise SynthError("--kind intents needs three voices or more without a held-out voice (train, valid, test)")
        voices, heldout = voices[:-1], voices[-1]
    if len(voices) < 2:
        raise SynthError("--kind intents needs two reading voices or more besides the held-out one (train and valid)")
    speakers = [(v, "train") for v in voices[:-1]] + [(voices[-1], "valid"), (heldout, "test")]
    mean = sum(estimate_seconds(p[0]) for p in pool) / len(pool)
    per_voice = max(1, min(len(pool), round(minutes * 60 / (len(speakers) * mean))))
    jobs: list[Job] = []
    rows: dict[str, list[list[str]]] = {"train": [], "valid": [], "test": []}
    for voice, split in speakers:
        if split == "test" and test_minutes:
            wanted = max(1, round(test_minutes * 60 / mean))
            chosen = [p for _ in range(-(-wanted // len(pool))) for p in rng.sample(pool, len(pool))][:wanted]
        else:
            chosen = rng.sample(pool, per_voice)
        for i, (phrase, action, obj, loc) in enumerate(chosen):
            rel = f"wavs/speakers/{voice.speaker_id}/{voice.speaker_id}-{i:04d}.wav"
            jobs.append(Job(str(root / rel), voice.name, phrase, _speed(rng, perturb)))
            rows[split].append([rel, str(voice.speaker_id), phrase, action, obj, loc])
    return jobs, rows


# A synthetic speaker is a voice at one (pitch shift in cents, speed) setting; each voice gives
# as many speakers as there are settings.
SPEAKER_SETTINGS = ((-300, 0.94), (-150, 1.06), (0, 1.0), (150, 0.94), (300, 1.06))
MIN_PER_SPEAKER = 8  # utterances: at least 2 identification-test, 2 identification-dev, 4 train
TRIALS_PER_UTTERANCE = 4  # verification: this many same-speaker and as many other-speaker trials each


def plan_speakers(root: Path, minutes: float, voices: Sequence[Voice], heldout: Voice | None, seed: int
                  ) -> tuple[list[Job], list[str], list[str]]:
    """Jobs, ``iden_split.txt`` and ``veri_test.txt`` lines in VoxCeleb1 layout.

    Every voice at every `SPEAKER_SETTINGS` setting is a speaker reading its own seeded draw of
    the read sentences, split for identification 2 test / 2 dev / the rest train per speaker.
    Verification is tested on unseen voices, as VoxCeleb1's 40 test speakers are unseen people:
    the speakers of the held-out voice and of the last reading voice go under ``test/wav``, the
    others under ``dev/wav``; each test utterance has seeded same- and other-speaker trials."""
    rng = random.Random(f"speakers-{seed}")
    everyone = [*voices, *([heldout] if heldout else [])]
    if len(everyone) < 3:
        raise SynthError("--kind speakers needs three voices or more (two of them are verification's unseen test voices)")
    unseen = {everyone[-1].name, everyone[-2].name}
    pool = read_sentences()
    speakers = [(v, k) for v in everyone for k in range(len(SPEAKER_SETTINGS))]
    mean = sum(estimate_seconds(p) for p in pool) / len(pool)
    per = max(MIN_PER_SPEAKER, round(minutes * 60 / (len(speakers) * mean)))
    jobs, iden, tested = [], [], []
    for voice, k in speakers:
        spk = f"id{voice.speaker_id}{k}"
        pitch, speed = SPEAKER_SETTINGS[k]
        part = "test" if voice.name in unseen else "dev"
        for i, prompt in enumerate(rng.sample(pool, min(per, len(pool)))):
            rel = f"{spk}/session{i % 2}/{i + 1:05d}.wav"
            jobs.append(Job(str(root / part / "wav" / rel), voice.name, prompt, speed, pitch=pitch))
            iden.append(f"{3 if i < 2 else 2 if i < 4 else 1} {rel}")
            if part == "test":
                tested.append((spk, rel))
    by_speaker: dict[str, list[str]] = {}
    for spk, rel in tested:
        by_speaker.setdefault(spk, []).append(rel)
    trials = []
    for spk, rel in tested:
        same = [r for r in by_speaker[spk] if r != rel]
        others = [r for s, rs in by_speaker.items() if s != spk for r in rs]
        trials += [f"1 {rel} {r}" for r in rng.sample(same, min(TRIALS_PER_UTTERANCE, len(same)))]
        trials += [f"0 {rel} {r}" for r in rng.sample(others, min(TRIALS_PER_UTTERANCE, len(others)))]
    return jobs, iden, trials


# SNIPS-like requests: a template's {slot} is filled with one of the slot's values (each word of
# the value tagged with the slot's type); the last field is the intent.
_SLOT_VALUES = {
    "artist": ("pink floyd", "miles davis", "the beatles", "nina simone", "bob marley", "johnny cash", "ella fitzgerald",
               "david bowie", "aretha franklin", "elton john"),
    "service": ("spotify", "deezer", "youtube", "the radio", "pandora", "itunes"),
    "genre": ("jazz", "rock and roll", "classical", "blues", "reggae", "hip hop", "country"),
    "city": ("paris", "new york", "london", "tokyo", "berlin", "chicago", "madrid", "boston", "cairo", "sydney"),
    "time": ("tomorrow", "tonight", "this weekend", "next monday", "in the morning", "on friday"),
    "party_size": ("two", "three", "four", "six", "eight"),
    "restaurant": ("the blue door", "golden garden", "luigi's kitchen", "the old mill", "sunset grill"),
    "rating": ("one", "two", "three", "four", "five"),
    "object": ("this book", "the current novel", "this album", "the last movie", "this essay"),
    "movie": ("the matrix", "casablanca", "jaws", "the godfather", "star wars", "toy story"),
    "playlist": ("road trip", "sunday chill", "workout", "focus", "party mix"),
}
_SLOT_TEMPLATES = (
    ("play {artist} on {service}", "PlayMusic"), ("play some {genre} music", "PlayMusic"),
    ("i want to hear {artist}", "PlayMusic"), ("put on some {genre} on {service}", "PlayMusic"),
    ("what is the weather in {city} {time}", "GetWeather"), ("will it rain in {city}", "GetWeather"),
    ("how cold will it be {time} in {city}", "GetWeather"),
    ("book a table for {party_size} at {restaurant}", "BookRestaurant"),
    ("reserve a table at {restaurant} for {party_size} {time}", "BookRestaurant"),
    ("rate {object} {rating} stars", "RateBook"), ("give {object} a rating of {rating}", "RateBook"),
    ("find the showtimes for {movie} {time}", "SearchScreeningEvent"), ("when is {movie} playing", "SearchScreeningEvent"),
    ("add {artist} to my {playlist} playlist", "AddToPlaylist"), ("put this song on {playlist}", "AddToPlaylist"),
)
_FIELD = re.compile(r"\{(\w+)\}")


def slot_request(rng: random.Random) -> tuple[list[str], list[str], str]:
    """(words, slot tag per word, intent) of one seeded request."""
    template, intent = rng.choice(_SLOT_TEMPLATES)
    words, tags = [], []
    for part in _FIELD.split(template):
        if part in _SLOT_VALUES:
            value = rng.choice(_SLOT_VALUES[part]).split()
            words += value
            tags += [part] * len(value)
        else:
            words += part.split()
            tags += ["O"] * len(part.split())
    return words, tags, intent


def plan_slots(root: Path, minutes: float, voices: Sequence[Voice], heldout: Voice | None, seed: int, perturb: float,
               test_minutes: float | None = None) -> tuple[list[Job], list[str]]:
    """Jobs and ``all.iob.snips.txt`` lines in audio SNIPS layout, split by speaker as SUPERB's
    SNIPS is: the held-out voice reads test/, the last reader valid/, the others train/. Test
    requests are new combinations: no request is read twice, so none is a training one word for word."""
    rng = random.Random(f"slots-{seed}")
    if heldout is None:
        if len(voices) < 3:
            raise SynthError("--kind slots needs three voices or more without a held-out voice (train, valid, test)")
        voices, heldout = voices[:-1], voices[-1]
    if len(voices) < 2:
        raise SynthError("--kind slots needs two reading voices or more besides the held-out one (train and valid)")
    speakers = [(v, "train") for v in voices[:-1]] + [(voices[-1], "valid"), (heldout, "test")]
    mean = 2.5
    per_voice = max(5, round(minutes * 60 / (len(speakers) * mean)))
    jobs, lines, seen = [], [], set()
    for voice, split in speakers:
        wanted = max(5, round(test_minutes * 60 / mean)) if split == "test" and test_minutes else per_voice
        count = tries = 0
        while count < wanted and tries < 50 * wanted:
            tries += 1
            words, tags, intent = slot_request(rng)
            sentence = " ".join(words)
            if sentence in seen:
                continue  # every request is read once: a test request is never a training one
            seen.add(sentence)
            uid = f"{voice.name}-{count:04d}"
            jobs.append(Job(str(root / split / f"{uid}.wav"), voice.name, sentence, _speed(rng, perturb)))
            lines.append(f"{uid} BOS {sentence} EOS\tO {' '.join(tags)} {intent}")
            count += 1
    return jobs, lines


@dataclass(frozen=True)
class Mixture:
    split: str
    rec: str
    sources: tuple[str, str]  # the two rendered files
    voices: tuple[str, str]
    start: float  # where the second source starts, as a fraction of the first source's length


MIXTURE_SECONDS = 6.0  # a rough mixture length, to size the corpus to --minutes


def plan_mixtures(root: Path, minutes: float, voices: Sequence[Voice], heldout: Voice | None, seed: int, perturb: float
                  ) -> tuple[list[Job], list[Mixture]]:
    """Source jobs and mixtures: two different voices each reading a sentence, the second starting
    at a seeded 20-90 % of the first (overlap from most of it to none). Train and dev mix the
    reading voices but the last; test mixes the last reader with the held-out voice, voices
    diarization never trained on (Libri2Mix's test speakers are unseen too)."""
    rng = random.Random(f"mixtures-{seed}")
    if heldout is None:
        voices, heldout = voices[:-1], voices[-1]
    if len(voices) < 3:
        raise SynthError("--kind mixtures needs three reading voices or more besides the held-out one")
    pool = read_sentences()
    jobs, mixes = [], []
    for split, share in SPLIT_SHARE.items():
        cast = [voices[-1], heldout] if split == "test" else list(voices[:-1])
        for i in range(max(4, round(minutes * 60 * share / MIXTURE_SECONDS))):
            pair = tuple(rng.sample(cast, 2))
            rec = f"{split}_mix{i:04d}"
            outs = tuple(str(root / "sources" / split / f"{rec}_{k}.wav") for k in range(2))
            for out, voice in zip(outs, pair):
                jobs.append(Job(out, voice.name, rng.choice(pool), _speed(rng, perturb)))
            mixes.append(Mixture(split, rec, outs, (pair[0].name, pair[1].name), round(rng.uniform(0.2, 0.9), 3)))
    return jobs, mixes


def speech_segments(wav: np.ndarray, floor_db: float = -35.0, gap: float = 0.25, shortest: float = 0.1
                    ) -> list[tuple[float, float]]:
    """Where a clean source speaks: 10 ms frames within ``floor_db`` of its loudest frame, pauses
    under ``gap`` seconds bridged, stretches under ``shortest`` dropped (a TTS file is clean,
    so an energy floor is enough)."""
    hop = 160
    frames = len(wav) // hop
    rms = np.sqrt((wav[: frames * hop].reshape(frames, hop) ** 2).mean(1) + 1e-12)
    active = rms > rms.max() * 10 ** (floor_db / 20)
    out: list[list[float]] = []
    for t in np.flatnonzero(active):
        start, end = t * hop / 16000, (t + 1) * hop / 16000
        if out and start - out[-1][1] < gap:
            out[-1][1] = end
        else:
            out.append([start, end])
    return [(a, b) for a, b in out if b - a >= shortest]


QUERY_MARGIN = 0.05  # seconds of silence a trimmed query keeps on each side


def trim_silence(wav: np.ndarray, margin: float = QUERY_MARGIN) -> np.ndarray:
    """The stretch from the first to the last speech (`speech_segments`), ``margin`` seconds
    wider each side. A query is the spoken term: the engines' 0.2-0.3 s of leading silence
    would be 40 % of a one-word query, which subsequence DTW must then match inside running
    speech, where no such silence is (measured: Whisper tiny.en's best layer finds its terms at
    a MAP of 0.07 untrimmed, 0.26 trimmed)."""
    segments = speech_segments(wav)
    if not segments:
        return wav
    start, end = segments[0][0] - margin, segments[-1][1] + margin
    return wav[max(0, int(start * 16000)): int(end * 16000)]


def write_mixtures(root: Path, mixes: list[Mixture]) -> dict[str, dict[str, float]]:
    """Mix the rendered sources and write each split's Kaldi data dir; returns the summary."""
    summary = {}
    for split in SPLIT_SHARE:
        scp, segs, spk, durs, rttm = [], [], [], [], []
        seconds = 0.0
        for m in (m for m in mixes if m.split == split):
            a, b = (sf.read(path, dtype="float32")[0] for path in m.sources)
            offset = int(m.start * len(a))
            mix = np.zeros(max(len(a), offset + len(b)), dtype=np.float32)
            mix[: len(a)] += a
            mix[offset: offset + len(b)] += b
            mix /= max(1.0, float(np.abs(mix).max()) / 0.95)
            _write_audio(root / split / "wav" / f"{m.rec}.wav", mix)
            scp.append(f"{m.rec} wav/{m.rec}.wav")
            durs.append(f"{m.rec} {len(mix) / 16000:.3f}")
            seconds += len(mix) / 16000
            for k, (wav, shift, voice) in enumerate(((a, 0.0, m.voices[0]), (b, offset / 16000, m.voices[1]))):
                for j, (s0, s1) in enumerate(speech_segments(wav)):
                    utt = f"{m.rec}_{k}_{j:03d}"
                    segs.append(f"{utt} {m.rec} {s0 + shift:.3f} {s1 + shift:.3f}")
                    spk.append(f"{utt} {voice}")
                    rttm.append(f"SPEAKER {m.rec} 1 {s0 + shift:.3f} {s1 - s0:.3f} <NA> <NA> {voice} <NA> <NA>")
        for name, lines in (("wav.scp", scp), ("segments", segs), ("utt2spk", spk), ("reco2dur", durs), ("rttm", rttm)):
            write_atomic(root / split / name, "".join(f"{line}\n" for line in lines))
        summary[split] = {"utterances": len(scp), "minutes": round(seconds / 60, 2)}
    return summary


TERM_MIN_LETTERS, TERM_MIN_SENTENCES, TERM_MAX_SENTENCES = 6, 3, 12


def plan_terms(root: Path, minutes: float, voices: Sequence[Voice], heldout: Voice | None, seed: int, perturb: float
               ) -> tuple[list[Job], dict[str, list[str]], dict[str, list[str]]]:
    """Jobs, ``scoring/language_key_*.lst`` lines and ground-truth RTTM lines in QUESST 2014
    layout. Terms are the read sentences' words of 6 letters or more found in 3 to 12 of them,
    split seeded between dev and eval; the held-out voice (else the last) says each term alone as
    its query (cut to the word: `trim_silence`), the other voices read the sentences to search
    (those with a term first, then others up to ``minutes``)."""
    rng = random.Random(f"terms-{seed}")
    if heldout is None:
        voices, heldout = voices[:-1], voices[-1]
    pool = read_sentences()
    words = [set(re.findall(r"[a-z']+", p.lower())) for p in pool]
    counts: dict[str, int] = {}
    for ws in words:
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
    terms = sorted(w for w, n in counts.items() if len(w) >= TERM_MIN_LETTERS and TERM_MIN_SENTENCES <= n <= TERM_MAX_SENTENCES)
    if len(terms) < 4:
        raise SynthError(f"--kind terms found only {len(terms)} terms in {SENTENCES_FILE}")
    rng.shuffle(terms)
    halves = {"dev": sorted(terms[: len(terms) // 2]), "eval": sorted(terms[len(terms) // 2:])}
    with_term = [i for i, ws in enumerate(words) if ws & set(terms)]
    others = [i for i in range(len(pool)) if i not in set(with_term)]
    rng.shuffle(others)
    budget = max(len(with_term), round(minutes * 60 / 4.5))
    chosen = sorted(with_term + others[: max(0, budget - len(with_term))])
    jobs, lists, rttm = [], {"utterances": [], "dev": [], "eval": []}, {"dev": [], "eval": []}
    for k, i in enumerate(chosen):
        doc = f"quesst14_{k:05d}"
        jobs.append(Job(str(root / "Audio" / f"{doc}.wav"), voices[k % len(voices)].name, pool[i], _speed(rng, perturb)))
        lists["utterances"].append(f"quesst14Database/Audio/{doc}.wav nnenglish")
    for split, split_terms in halves.items():
        for j, term in enumerate(split_terms):
            query = f"quesst14_{split}_{j:04d}"
            jobs.append(Job(str(root / f"{split}_queries" / f"{query}.wav"), heldout.name, term, _speed(rng, perturb),
                            trim=True))
            lists[split].append(f"quesst14Database/{split}_queries/{query}.wav nnenglish")
            rttm[split] += [f"LEXEME quesst14_{k:05d} 1 0.000 0.000 {query} lex <NA> <NA>"
                            for k, i in enumerate(chosen) if term in words[i]]
    return jobs, lists, rttm


def write_noise(root: Path, seed: int, seconds: int = 20) -> None:
    """Background noise files for the _silence_ class: white, pink and brown noise at two levels."""
    rng = np.random.default_rng(seed)
    n = seconds * 16000
    for colour, exponent in (("white", 0.0), ("pink", 1.0), ("brown", 2.0)):
        for level in (0.02, 0.1):
            spectrum = np.fft.rfft(rng.standard_normal(n))
            freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
            noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
            noise = (noise / np.abs(noise).max() * level).astype(np.float32)
            path = root / NOISE_DIR / f"{colour}_noise_{int(level * 100):02d}.wav"
            if not path.is_file():
                _write_audio(path, noise)


# ---------------------------------------------------------------- corpus

@dataclass(frozen=True)
class SynthArgs:
    kind: str
    minutes: float
    voices: tuple[str, ...]
    heldout_voice: str | None
    seed: int
    perturb: float
    version: int = FORMAT_VERSION
    split_names: str = "plain"  # or "librispeech": train-clean-100, dev-clean, test-clean
    test_minutes: float | None = None  # the test split's own size (ASR kinds and intents); None: its share of minutes


def _check_args(args: SynthArgs) -> list[Voice]:
    if args.kind not in KINDS:
        raise SynthError(f"--kind {args.kind!r} unknown; choose from {KINDS}")
    unknown = [v for v in (*args.voices, *([args.heldout_voice] if args.heldout_voice else [])) if v not in VOICES]
    if unknown:
        raise SynthError(f"unknown voice(s) {unknown}; available: {sorted(VOICES)}")
    if args.minutes <= 0:
        raise SynthError(f"--minutes must be positive, got {args.minutes}")
    if args.test_minutes is not None and (args.test_minutes <= 0 or args.kind in ("keywords", "speakers", "mixtures", "terms")):
        raise SynthError(f"--test-minutes must be positive and is for the ASR kinds and intents, got {args.test_minutes} "
                         f"for {args.kind}")
    if args.split_names not in SPLIT_NAMES:
        raise SynthError(f"--split-names {args.split_names!r} unknown; choose from {sorted(SPLIT_NAMES)}")
    if not 0 <= args.perturb < 0.5:
        raise SynthError(f"--perturb must be in [0, 0.5), got {args.perturb}")
    readers = [VOICES[v] for v in args.voices if v != args.heldout_voice]
    if not readers:
        raise SynthError("no voices left besides the held-out voice")
    return readers


def build(out: str | Path, args: SynthArgs, workers: int | None = None, force: bool = False, progress: bool = True) -> dict:
    """Build (or finish, or reuse) one kind under ``out/<kind>``; returns its manifest.

    The arguments are recorded before any audio is written, so an interrupted build resumes
    with the same plan and a folder built with other arguments is refused, not mixed.
    """
    from tqdm import tqdm

    readers = _check_args(args)
    root = Path(out) / args.kind
    args_file, manifest_file = root / "args.json", root / "manifest.json"
    wanted = asdict(args) | {"voices": list(args.voices)}
    if args.split_names == "plain":
        wanted.pop("split_names")  # corpora built before the option existed keep their arguments
    if args.test_minutes is None:
        wanted.pop("test_minutes")
    if args.kind == "terms":
        wanted["queries"] = "trimmed"  # terms built before queries were trimmed are refused, not mixed
    if args_file.is_file():
        old = json.loads(args_file.read_text())
        if old != wanted and not force:
            raise SynthError(f"{root} was built with other arguments {old}; use another --out, or --force to rebuild")
        if old != wanted:
            shutil.rmtree(root)
    if manifest_file.is_file() and not force:
        return json.loads(manifest_file.read_text())
    if force and root.exists():
        shutil.rmtree(root)
    everyone = readers + ([VOICES[args.heldout_voice]] if args.heldout_voice else [])
    check_engines(everyone)
    write_atomic(args_file, json.dumps(wanted, indent=1))

    heldout = VOICES[args.heldout_voice] if args.heldout_voice and args.kind != "keywords" else None
    trans, intent_rows, iden, trials, iob, mixes, term_lists, term_rttm = {}, {}, [], [], [], [], {}, {}
    if args.kind == "terms":
        jobs, term_lists, term_rttm = plan_terms(root, args.minutes, readers, heldout, args.seed, args.perturb)
    elif args.kind == "mixtures":
        jobs, mixes = plan_mixtures(root, args.minutes, readers, heldout, args.seed, args.perturb)
    elif args.kind == "slots":
        jobs, iob = plan_slots(root, args.minutes, readers, heldout, args.seed, args.perturb, args.test_minutes)
    elif args.kind == "speakers":
        jobs, iden, trials = plan_speakers(root, args.minutes, readers, heldout, args.seed)
    elif args.kind == "keywords":
        jobs, dev, test = plan_keywords(root, args.minutes, everyone, args.seed, args.perturb)
    elif args.kind == "intents":
        jobs, intent_rows = plan_intents(root, args.minutes, readers, heldout, args.seed, args.perturb, args.test_minutes)
    else:
        jobs, trans = plan_asr(args.kind, root, args.minutes, readers, heldout, args.seed, args.perturb,
                               SPLIT_NAMES[args.split_names], args.test_minutes)
    workers = workers or os.cpu_count() or 1
    seconds: dict[str, float] = {}
    # forkserver, not fork: forking a process that already runs threads (torch's, a progress bar's)
    # can leave a worker stuck on a lock copied mid-use; a CI run hung here that way
    with get_context("forkserver").Pool(workers) as pool:
        it = pool.imap(run_job, jobs, chunksize=4)
        for job, sec in tqdm(zip(jobs, it), total=len(jobs), desc=f"synth {args.kind}", disable=not progress, unit="utt"):
            seconds[job.out] = sec

    summary: dict[str, dict[str, float]] = {}
    if args.kind == "terms":
        for name, lines in term_lists.items():
            write_atomic(root / "scoring" / f"language_key_{name}.lst", "".join(f"{line}\n" for line in lines))
        for split, lines in term_rttm.items():
            write_atomic(root / "scoring" / f"groundtruth_quesst14_{split}" / f"quesst14_{split}.rttm",
                         "".join(f"{line}\n" for line in lines))
        for part in ("Audio", "dev_queries", "eval_queries"):
            secs = [s for o, s in seconds.items() if f"/{part}/" in o]
            summary[part] = {"utterances": len(secs), "minutes": round(sum(secs) / 60, 2)}
    elif args.kind == "mixtures":
        summary = write_mixtures(root, mixes)
    elif args.kind == "slots":
        write_atomic(root / "all.iob.snips.txt", "".join(f"{line}\n" for line in iob))
        write_atomic(root / "slots.txt", "O\n" + "".join(f"{s}\n" for s in _SLOT_VALUES))
        for split in ("train", "valid", "test"):
            secs = [s for o, s in seconds.items() if f"/{split}/" in o]
            summary[split] = {"utterances": len(secs), "minutes": round(sum(secs) / 60, 2)}
    elif args.kind == "speakers":
        write_atomic(root / "iden_split.txt", "".join(f"{line}\n" for line in iden))
        write_atomic(root / "veri_test.txt", "".join(f"{line}\n" for line in trials))
        for part in ("dev", "test"):
            secs = [s for o, s in seconds.items() if f"/{part}/wav/" in o]
            summary[part] = {"utterances": len(secs), "minutes": round(sum(secs) / 60, 2)}
    elif args.kind == "keywords":
        write_noise(root, args.seed)
        write_atomic(root / "validation_list.txt", "".join(f"{r}\n" for r in dev))
        write_atomic(root / "testing_list.txt", "".join(f"{r}\n" for r in test))
        summary["all"] = {"utterances": len(jobs), "minutes": round(sum(seconds.values()) / 60, 2)}
    elif args.kind == "intents":
        for split, split_rows in intent_rows.items():
            header = ",path,speakerId,transcription,action,object,location\n"  # FSC's own header, index column first
            body = "".join(f"{i},{','.join(r)}\n" for i, r in enumerate(split_rows))
            write_atomic(root / "data" / f"{split}_data.csv", header + body)
            secs = [seconds[str(root / r[0])] for r in split_rows]
            summary[split] = {"utterances": len(secs), "minutes": round(sum(secs) / 60, 2)}
    else:
        chapters: dict[Path, list[str]] = {}
        for (split, spk, utt), words in sorted(trans.items()):
            chapters.setdefault(root / split / spk / utt.split("-")[1], []).append(f"{utt} {words}\n")
        for folder, lines in chapters.items():
            write_atomic(folder / f"{folder.parent.name}-{folder.name}.trans.txt", "".join(lines))
        lines = [";ID  |SEX| SUBSET    |MINUTES| NAME\n"]
        for v in everyone:
            mins = sum(s for o, s in seconds.items() if f"/{v.speaker_id}/" in o) / 60
            lines.append(f"{v.speaker_id} | {v.gender} | synthetic | {mins:.2f} | {v.name}\n")
        write_atomic(root / "SPEAKERS.TXT", "".join(lines))
        for split in SPLIT_NAMES[args.split_names].values():
            secs = [s for o, s in seconds.items() if f"/{split}/" in o]
            if secs:
                summary[split] = {"utterances": len(secs), "minutes": round(sum(secs) / 60, 2)}
    manifest = {
        "args": wanted,
        "splits": summary,
        "voices": {v.name: {"speaker_id": v.speaker_id, "gender": v.gender, "engine": v.engine, "voice": v.voice} for v in everyone},
        "minutes": round(sum(seconds.values()) / 60, 2),
    } | ({"trials": len(trials)} if trials else {})
    write_atomic(manifest_file, json.dumps(manifest, indent=1))
    return manifest
