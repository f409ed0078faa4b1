"""Suites: TOML files naming upstreams x quantization configs x tasks x data x seeds, expanded into runs."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from downstream.tasks import DEFAULT_TASK, TASKS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SUITES_DIR = Path(__file__).parent / "suites"
PROTOCOLS = ("retrain", "reuse")


class SuiteError(ValueError):
    """A suite file that cannot be run; the message names the file and field."""


@dataclass(frozen=True)
class QuantSpec:
    """A run's quantization, from a suite token: ``fp``, ``packed:FILE``, or a registered method's
    ``NAME:BITS[:OPTION...]`` (``NAME:...`` for methods without one width), e.g. ``uniform:4:mse``,
    ``gptq:3:g128``, ``binary:1``, ``mixed:4.5:calib=F``; each method's grammar is in
    `upstream_quant.methods` (``bench quantize --help`` lists them). ``SPEC@BACKEND`` evaluates the
    model deployed on a low-bit backend. The fields are the union of what the methods read; their
    values (defaults included) are the run's hash, so they keep their names and defaults."""

    method: str = "fp"
    bits: int = 16
    group_size: int | None = None
    clip: str = "minmax"
    act_bits: int | None = None
    # mixed precision (myQASR): budget, calibration group (F, M, a speaker id, a data table, "all"; QAT too), order
    budget_mb: float | None = None
    budget_bits: float | None = None  # or an average width over the allocated weights
    calib: str = "all"
    order: str = "descending"
    # quantization-aware distillation: optimizer steps
    qat_steps: int | None = None
    # an existing model: ``packed:FILE`` (a packed file from bench quantize/mixed/qat), evaluated
    # as it is; ``file_sha256`` (the manifest's) identifies it in hashes wherever the file lives
    file: str | None = None
    file_sha256: str | None = None
    # ``SPEC@BACKEND``: evaluate the model deployed on a low-bit backend (upstream_quant.deploy),
    # with its latency and resident weight memory measured against the fp32 upstream
    deploy: str | None = None
    # GPTQ as first published (``plain``), zero-points (``asym``: symmetric False), recon's steps
    plain: bool | None = None
    symmetric: bool | None = None
    steps: int | None = None
    # ``rot``: each linear's weight rounded in a rotated input basis (upstream_quant.rotation)
    rotate: bool | None = None
    # QAT's start: ``gptq`` (GPTQ's model at the same width), ``recon`` (block reconstruction's, ``steps``
    # a block), ``mixed`` (mixed precision's, ``budget_bits``), or None (round-to-nearest of the weights)
    init: str | None = None
    # QAT's target: ``dec`` = "decoder" (the model's own text decoder's outputs), None: hidden states
    loss: str | None = None
    # QAT's learned parameters: ``scales`` or ``scalesfloat`` = "scales+float" (codes kept), None: all
    learn: str | None = None
    # QAT: several utterances in a row per training item, up to this many seconds (``pN``)
    pack_seconds: float | None = None
    batch_size: int | None = None  # QAT: items a step (``bN``)
    lr_schedule: str | None = None  # QAT: ``cos`` = "cosine" (learning rates decayed to zero), None: constant
    fixed_items: bool | None = None  # QAT: ``fixed`` = True (each item the same every epoch), None: drawn afresh
    # ``:layers=all``: every layer that computes features (CNN, feature projection, positional
    # convolution and transformer; `upstream_quant.select.FEATURE_GROUPS`), not the transformer's alone
    layers: str | None = None

    @classmethod
    def parse(cls, text: str) -> "QuantSpec":
        from upstream_quant.deploy import CHOICES

        text = text.strip()
        if "@" in text:
            head, backend = text.rsplit("@", 1)
            if backend not in CHOICES:
                raise ValueError(f"quantization {text!r}: unknown deploy backend {backend!r}; known: {', '.join(CHOICES)}")
            spec = cls._parse(head)
            if spec.method == "fp":
                raise ValueError(f"quantization {text!r}: a full-precision model has nothing to deploy")
            return dataclasses.replace(spec, deploy=backend)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> "QuantSpec":
        from upstream_quant.methods import METHODS

        parts = text.strip().split(":")
        layers = [p for p in parts if p.startswith("layers=")]
        if layers:
            value = layers[-1].removeprefix("layers=")
            if len(layers) > 1 or value not in ("all", "transformer") or parts[0] in ("fp", "packed"):
                raise ValueError(f"quantization {text!r}: layers= takes 'all' or 'transformer', once, after a method")
            parts = [p for p in parts if not p.startswith("layers=")]
            spec = cls._parse(":".join(parts))
            if spec.registered.config is None:
                raise ValueError(f"quantization {text!r}: {spec.method} chooses its own layers; layers= is for "
                                 f"methods with a quantize() config")
            return spec if value == "transformer" else dataclasses.replace(spec, layers=value)
        if parts == ["fp"]:
            return cls()
        if parts[0] == "packed":
            return cls._parse_packed(text.strip().removeprefix("packed:"))
        if parts[0] not in METHODS:
            raise ValueError(f"quantization {text!r}: unknown method {parts[0]!r}; expected 'fp', 'packed:FILE' or one of "
                             + "; ".join(m.grammar for m in METHODS.values()))
        method = METHODS[parts[0]]
        if method.bits:
            if len(parts) < 2 or not parts[1].isdigit():
                raise ValueError(f"quantization {text!r}: expected {method.grammar}")
            bits, (lo, hi) = int(parts[1]), method.bit_range
            if not lo <= bits <= hi:
                widths = f"{lo} bit{'s' if lo > 1 else ''}" if lo == hi else f"{lo}..{hi} bits"
                raise ValueError(f"quantization {text!r}: {method.name} takes {widths} ({method.grammar})")
            fields = {"method": method.name, "bits": bits} | method.parse(text, bits, parts[2:])
        else:
            fields = {"method": method.name, "bits": 0} | method.parse(text, None, parts[1:])
        quant = cls(**fields)
        quant.config()  # the method's own checks
        return quant

    @classmethod
    def _parse_packed(cls, file: str) -> "QuantSpec":
        from upstream_quant.packed import read_manifest

        if not file:
            raise ValueError("quantization 'packed:': expected packed:FILE, a file from bench quantize/mixed/qat")
        if not Path(file).is_file():
            raise ValueError(f"quantization 'packed:{file}': no such file")
        manifest = read_manifest(file)
        return cls(method="packed", bits=0, file=file, file_sha256=manifest["sha256"])

    def as_dict(self) -> dict:
        """Its fields for hashes and rows; the packed-file fields only where set (hashes of the
        other runs stay as they were), the file by content, not by where it lies."""
        out = asdict(self)
        if self.file is None:
            del out["file"], out["file_sha256"]
        else:
            out["file"] = Path(self.file).name
        for name in ("deploy", "plain", "symmetric", "steps", "layers", "budget_bits", "rotate", "init", "loss", "learn",
                     "pack_seconds", "batch_size", "lr_schedule", "fixed_items"):
            if out[name] is None:
                del out[name]
        return out

    @property
    def model(self) -> "QuantSpec":
        """The spec of the model itself (a deployed run evaluates the same model as its reference)."""
        return dataclasses.replace(self, deploy=None)

    @property
    def registered(self):
        """The method's `MethodSpec`; None for ``fp`` and ``packed:FILE``, which are no method."""
        from upstream_quant.methods import get_method

        return None if self.method in ("fp", "packed") else get_method(self.method)

    @property
    def label(self) -> str:
        if self.deploy is not None:
            return f"{self.model.label}@{self.deploy}"
        if self.method == "fp":
            return "fp"
        if self.method == "packed":
            return f"packed-{Path(self.file).stem}"
        return self.registered.label(self) + ("-all" if self.layers == "all" else "")

    def config(self, targets: tuple[str, ...] | None = None):
        """The method's `quantize()` config (None for full precision, a packed file, and methods
        with their own build step: mixed precision allocates per run from calibration audio), on
        `targets` (default: the transformer's layers, or every feature layer with ``layers=all``)."""
        from upstream_quant.select import FEATURE_GROUPS

        method = self.registered
        if method is None or method.config is None:
            return None
        return method.config(self, targets or (FEATURE_GROUPS if self.layers == "all" else ("transformer",)))

    @property
    def calibrates(self) -> bool:
        """Whether the model is made from unlabelled calibration audio."""
        return self.registered is not None and self.registered.uses_calibration(self)

    @property
    def trains(self) -> bool:
        """Whether the model is trained on the data's audio (QAT)."""
        return self.registered is not None and self.registered.trains


# Where data lives on this machine does not change a result: left out of the config hash.
LOCATION_FIELDS = ("root", "test_root")


@dataclass(frozen=True)
class RunSpec:
    """One run: everything that determines its result (hence its hash).

    ``checkpoint``: a local weights file for the upstream (``--checkpoint``; hashed by file name,
    not folder); ``options``: method settings from ``--set qat.*`` / ``--set calibration.*``;
    ``devices``: DDP processes (hashed when above 1: the batches differ)."""

    suite: str
    upstream: str
    quant: QuantSpec
    task: str
    data: str
    protocol: str
    seed: int
    schedule: dict = field(default_factory=dict, hash=False, compare=False)
    data_config: dict = field(default_factory=dict, hash=False, compare=False)
    checkpoint: str | None = field(default=None, hash=False, compare=False)
    options: dict = field(default_factory=dict, hash=False, compare=False)
    devices: int = field(default=1, hash=False, compare=False)

    @property
    def name(self) -> str:
        return f"{self.upstream}/{self.quant.label}/{self.protocol}/{self.task}-{self.data}/seed{self.seed}"

    @property
    def head_data(self) -> str:
        """The data a reuse head is trained on (``head_data`` in the data table, else the run's own)."""
        return self.data_config.get("head_data", self.data)

    @property
    def model_data(self) -> str:
        """The data whose training audio calibrates or trains the run's quantized model
        (``model_audio`` in the data table, else the head's data): the tasks of a suite then
        evaluate one model per method instead of one per task's corpus."""
        return self.data_config.get("model_audio", self.head_data)

    @property
    def needs_fp_upstream(self) -> bool:
        """Whether the run loads the full-precision upstream: all do but a ``packed:FILE`` run
        retrained on (its model is the file; a reuse head or a deploy measurement needs fp)."""
        return not (self.quant.method == "packed" and self.protocol == "retrain" and not self.quant.deploy)

    @property
    def config_name(self) -> str:
        """The table's row name: upstream/method+bits/protocol."""
        return f"{self.upstream}/{self.quant.label}/{self.protocol}"

    def as_dict(self) -> dict:
        return {"suite": self.suite, "upstream": self.upstream, "quant": self.quant.as_dict(), "task": self.task,
                "data": self.data, "protocol": self.protocol, "seed": self.seed, "schedule": self.schedule,
                "data_config": self.data_config, "checkpoint": self.checkpoint, "options": self.options,
                "devices": self.devices}

    @property
    def config_hash(self) -> str:
        """Stable over dict ordering. Left out: the suite name (identical runs match across
        suites), data locations, the checkpoint's folder; absent when unset: checkpoint, options,
        devices (so hashes of runs without overrides stay as they were)."""
        body = {k: v for k, v in self.as_dict().items() if k not in ("suite", "checkpoint", "options", "devices")}
        body["data_config"] = {k: v for k, v in self.data_config.items() if k not in LOCATION_FIELDS}
        if self.checkpoint:
            body["checkpoint"] = Path(self.checkpoint).name
        if self.options:
            body["options"] = self.options
        if self.devices > 1:
            body["devices"] = self.devices
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    data: dict[str, dict]
    schedules: dict[str, dict]
    runs: list[RunSpec]
    synth: dict[str, dict]
    data_tables: dict[str, dict] = field(default_factory=dict)  # data name -> its table, without synth
    # the distilled model the low-bit rows are compared with in tables (DistilHuBERT's role), if any
    student: str | None = None


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    candidate = SUITES_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = sorted(x.stem for x in SUITES_DIR.glob("*.toml"))
        raise SuiteError(f"unknown suite {name_or_path!r}; known: {', '.join(known)} (or a path to a .toml file)")
    return candidate


def _field(table: dict, key: str, where: str, kind=None, default=...):
    if key not in table:
        if default is ...:
            raise SuiteError(f"{where}: missing field {key!r}")
        return default
    value = table[key]
    if kind is not None and not isinstance(value, kind):
        raise SuiteError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


# Sections of ``--set SECTION.FIELD=VALUE`` beyond the suite's tasks (whose fields are TaskConfig's).
def option_sections() -> dict[str, tuple[str, ...]]:
    """``calibration`` (for every method that calibrates: ``count`` utterances) and the schedule
    fields of each method that trains (its ``option_fields``, e.g. ``qat.steps``)."""
    from upstream_quant.methods import METHODS

    return {"calibration": ("count",)} | {m.name: m.option_fields for m in METHODS.values() if m.trains}


@dataclass(frozen=True)
class Overrides:
    """What ``bench run`` changes in a committed suite so that it serves this machine.

    ``data``: data table -> root folder (``NAME.test_root``: its separate test set); ``checkpoints``: upstream -> local weights file;
    ``settings``: section -> field -> value, sections being the suite's tasks (TaskConfig fields,
    e.g. ``asr.max_steps``) or `option_sections()`; ``devices``: DDP processes per training run."""

    data: dict = field(default_factory=dict)
    checkpoints: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    devices: int = 1

    @classmethod
    def parse(cls, data: list[str] = (), checkpoints: list[str] = (), settings: list[str] = (), devices: int = 1) -> "Overrides":
        """From ``NAME=VALUE`` strings; values of ``--set`` are TOML literals (``3``, ``1e-4``, ``true``,
        ``"x"``), a bare word being a string. Errors name the flag and the value."""
        def pairs(flag, items):
            out = {}
            for item in items:
                key, sep, value = item.partition("=")
                if not sep or not key or not value:
                    raise SuiteError(f"{flag} {item!r}: expected NAME=VALUE")
                out[key.strip()] = value.strip()
            return out

        parsed: dict[str, dict] = {}
        for key, value in pairs("--set", settings).items():
            section, dot, name = key.partition(".")
            if not dot or not name:
                raise SuiteError(f"--set {key}={value}: expected SECTION.FIELD=VALUE, e.g. asr.max_steps=200")
            try:
                literal = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                literal = value
            parsed.setdefault(section, {})[name] = literal
        if not isinstance(devices, int) or devices < 1:
            raise SuiteError(f"--devices {devices!r}: expected a whole number >= 1")
        return cls(pairs("--data", data), pairs("--checkpoint", checkpoints), parsed, devices)

    def check(self, suite: "Suite") -> None:
        """Every name must exist in the suite, every path on disk, every field and type in its config."""
        import typing

        from downstream.tasks import TaskConfig

        for key, root in self.data.items():
            name, field_name = _location(key)
            if name not in suite.data:
                raise SuiteError(f"--data {key}={root}: the suite has no data table {name!r}; defined: {sorted(suite.data)}")
            table = suite.data[name]
            folder = Path(root)
            if not folder.is_dir():
                raise SuiteError(f"--data {key}={root}: no such folder")
            if field_name == "root" and table.get("layout", "librispeech") == "librispeech":
                missing = [s for k in ("train", "dev", "test") for s in table.get(k, []) if not (folder / s).is_dir()]
                if missing:
                    present = sorted(p.name for p in folder.iterdir() if p.is_dir())
                    raise SuiteError(f"--data {key}={root}: split folder(s) {missing} not found; it holds {present}")
        upstreams = {r.upstream for r in suite.runs}
        for name, path in self.checkpoints.items():
            if name not in upstreams:
                raise SuiteError(f"--checkpoint {name}={path}: the suite runs no upstream {name!r}; it runs {sorted(upstreams)}")
            if not Path(path).exists():
                raise SuiteError(f"--checkpoint {name}={path}: no such file or folder")
        hints = typing.get_type_hints(TaskConfig)
        fields = {f.name for f in dataclasses.fields(TaskConfig)} - {"labels"}  # labels come from the data
        sections = option_sections()
        for section, values in self.settings.items():
            if section in sections:
                allowed = sections[section]
                for key, value in values.items():
                    if key not in allowed:
                        raise SuiteError(f"--set {section}.{key}: unknown field; {section} has {', '.join(allowed)}")
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                        raise SuiteError(f"--set {section}.{key}={value!r}: expected a positive number")
                continue
            if section not in suite.schedules:
                raise SuiteError(f"--set {section}.*: the suite has no task {section!r} "
                                 f"(tasks: {sorted(suite.schedules)}; also {sorted(sections)})")
            for key, value in values.items():
                if key not in fields or key in ("task", "seed"):
                    raise SuiteError(f"--set {section}.{key}: unknown field; TaskConfig fields: "
                                     f"{', '.join(sorted(fields - {'task', 'seed'}))}")
                if not _fits(value, hints[key]):
                    raise SuiteError(f"--set {section}.{key}={value!r}: expected {hints[key]}, got {type(value).__name__}")


def _location(key: str) -> tuple[str, str]:
    """``--data NAME=...`` sets NAME's root; ``--data NAME.test_root=...`` its separate test set."""
    name, _, field_name = key.partition(".")
    field_name = field_name or "root"
    if field_name not in LOCATION_FIELDS:
        raise SuiteError(f"--data {key}: expected NAME=ROOT or NAME.test_root=PATH")
    return name, field_name


def _fits(value, hint) -> bool:
    """Whether a TOML value suits a TaskConfig field's annotation (ints pass for floats)."""
    import types
    import typing

    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is str and isinstance(value, str):
            return True
    return False


def apply_overrides(suite: "Suite", overrides: Overrides) -> "Suite":
    """The suite with data roots, checkpoints, settings and devices replaced (validated first)."""
    overrides.check(suite)
    places: dict[str, dict] = {}
    for key, path in overrides.data.items():
        name, field_name = _location(key)
        places.setdefault(name, {})[field_name] = path
    data = {k: v | places.get(k, {}) for k, v in suite.data.items()}
    tables = {k: v | places.get(k, {}) for k, v in suite.data_tables.items()}
    options = {k: v for k, v in overrides.settings.items() if k in option_sections()}
    runs = []
    for run in suite.runs:
        dcfg = run.data_config | places.get(run.data, {})
        uses = {k: (run.quant.calibrates if k == "calibration" else run.quant.method == k) for k in options}
        runs.append(dataclasses.replace(
            run, schedule=run.schedule | overrides.settings.get(run.task, {}), data_config=dcfg,
            checkpoint=overrides.checkpoints.get(run.upstream, run.checkpoint),
            options={k: v for k, v in options.items() if uses[k]}, devices=overrides.devices))
    return dataclasses.replace(suite, data=data, data_tables=tables, runs=runs)


def load_suite(name_or_path: str, overrides: Overrides | None = None) -> Suite:
    """Parse and expand a suite file; every error names the file and the offending field.
    ``overrides`` (from ``bench run``'s flags) are applied and validated last."""
    suite = _load_suite(name_or_path)
    return apply_overrides(suite, overrides) if overrides is not None else suite


def _load_suite(name_or_path: str) -> Suite:
    path = suite_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML ({exc})") from exc
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SuiteError(f"{path}: name {name!r}: letters, digits, '_', '.', '-' only, not starting with '.' "
                         "(it names the suite's folder in the store)")
    data = _field(raw, "data", str(path), dict)
    schedules = raw.get("schedule", {})
    synth = {k: v["synth"] for k, v in data.items() if isinstance(v, dict) and "synth" in v}
    runs: list[RunSpec] = []
    for i, group in enumerate(_field(raw, "runs", str(path), list)):
        where = f"{path}: [[runs]] #{i + 1}"
        protocol = _field(group, "protocol", where, str, "retrain")
        if protocol not in PROTOCOLS:
            raise SuiteError(f"{where}: protocol {protocol!r} unknown; choose from {PROTOCOLS}")
        try:
            quants = [QuantSpec.parse(q) for q in _field(group, "quant", where, list, ["fp"])]
        except ValueError as exc:
            raise SuiteError(f"{where}: {exc}") from exc
        for data_name in _field(group, "data", where, list):
            if data_name not in data:
                raise SuiteError(f"{where}: data {data_name!r} is not defined under [data]; defined: {sorted(data)}")
        for quant in quants:  # calib=: all, F, M, a data table, or a speaker id (digits, as LibriSpeech's)
            if not (quant.calib in ("all", "F", "M") or quant.calib in data or quant.calib.isdigit()):
                raise SuiteError(f"{where}: {quant.label}: calib={quant.calib!r} is neither all, F, M, a speaker id "
                                 f"nor a data table; tables: {sorted(data)}")
        overrides = _field(group, "schedule", where, dict, {})
        seeds = _seeds(_field(group, "seeds", where, list, [0]), where)
        for task in _field(group, "tasks", where, list, [DEFAULT_TASK]):
            if task not in TASKS:
                raise SuiteError(f"{where}: task {task!r} unknown; known: {', '.join(sorted(TASKS))}")
            if task not in schedules:
                raise SuiteError(f"{where}: task {task!r} has no [schedule.{task}] table")
            if protocol == "reuse" and not TASKS[task].trains_head:
                raise SuiteError(f"{where}: task {task!r} trains no head (it decodes with the upstream's own output "
                                 "layer), so it has no full-precision head to reuse: use protocol = \"retrain\", which "
                                 "evaluates each model as it is")
            for upstream in _field(group, "upstreams", where, list):
                for quant in quants:
                    for data_name in group["data"]:
                        for seed in seeds:
                            dcfg = _data_table(data[data_name])
                            for key in ("head_data", "model_audio"):
                                if key in dcfg and dcfg[key] not in data:
                                    raise SuiteError(f"{path}: [data.{data_name}] {key} {dcfg[key]!r} is not defined")
                            runs.append(RunSpec(name, upstream, quant, task, data_name, protocol, int(seed),
                                                dict(schedules[task]) | overrides, dcfg))
    from upstream_quant.loading import known_upstreams

    unknown = sorted({r.upstream for r in runs} - set(known_upstreams()))
    if unknown:
        raise SuiteError(f"{path}: unknown upstream(s) {unknown}; known: {', '.join(known_upstreams())}")
    for run in runs:
        if run.quant.method == "packed":
            from upstream_quant.packed import read_manifest

            held = read_manifest(run.quant.file)["upstream"]
            if held != run.upstream:
                raise SuiteError(f"{path}: quant 'packed:{run.quant.file}' holds a {held} model; list it under upstreams = [{held!r}], "
                                 f"not {run.upstream!r}")
    unique = list(dict.fromkeys(runs))  # the same run listed twice runs once
    tables = {k: _data_table(v) for k, v in data.items()}
    student = _field(raw, "student", str(path), str, None)
    if student is not None and student not in {r.upstream for r in runs}:
        raise SuiteError(f"{path}: student {student!r} is not an upstream of the suite's runs; they run "
                         f"{sorted({r.upstream for r in runs})}")
    return Suite(name, path, raw.get("description", ""), data, schedules, unique, synth, tables, student)


def _data_table(table: dict) -> dict:
    """A ``[data.X]`` table as runs carry it: without its synth recipe, but with the size of a
    synthetic test split sized on its own (another test set, so hashed; absent otherwise, so the
    hashes of earlier rows stay as they were)."""
    out = {k: v for k, v in table.items() if k != "synth"}
    test_minutes = table.get("synth", {}).get("test_minutes")
    if test_minutes is not None:
        out["synth_test_minutes"] = test_minutes
    return out


def _seeds(seeds: list, where: str) -> list[int]:
    """A group's ``seeds``: distinct whole numbers >= 0, at least one."""
    if not seeds:
        raise SuiteError(f"{where}: field 'seeds' is empty; give at least one seed, e.g. seeds = [0, 1, 2]")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SuiteError(f"{where}: field 'seeds' holds {seed!r}; seeds are whole numbers >= 0")
    duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
    if duplicates:
        raise SuiteError(f"{where}: field 'seeds' repeats {duplicates}; each seed once")
    return seeds


def select(runs: list[RunSpec], only: str | None = None, shard: str | None = None) -> list[RunSpec]:
    """``only``: comma-separated fnmatch patterns on run names; ``shard``: 'I/N' keeps every N-th run from I (0-based)."""
    if only:
        patterns = [p.strip() for p in only.split(",")]
        runs = [r for r in runs if any(fnmatch.fnmatch(r.name, p) or p in r.name for p in patterns)]
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise SuiteError(f"--shard {shard!r}: expected I/N with 0 <= I < N, e.g. 0/4") from None
        ordered = sorted(runs, key=lambda r: r.config_hash)
        keep = {r.config_hash for r in ordered[i::n]}
        runs = [r for r in runs if r.config_hash in keep]
    return runs
