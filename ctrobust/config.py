"""The one sweep configuration: every default, parsing, validation (CLI > YAML file > defaults).

``SweepConfig`` holds every setting of a sweep. It is built once at the edge (``from_cli`` /
``from_yaml`` / ``SweepConfig(...)``) and validated there, so a bad option fails before any work starts,
never halfway through a sweep. Strings become canonical values here (``"linf"`` -> ``"Linf"``,
``"8/255"`` -> ``0.0313...``, ``"0.7:0.99:0.01"`` -> a list of betas).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from ctrobust import attacks as _attacks
from ctrobust._registry import UnknownNameError, did_you_mean
from ctrobust.data import parse_dataset, parse_source, parse_subset
from ctrobust.engines import get_engine, list_engines
from ctrobust.protocols import get_protocol, reference_batch_size
from ctrobust.errors import ConfigError
from ctrobust.threat import DEFAULT_EPS, Threat

__all__ = ["ConfigError", "SweepConfig", "parse_eps", "parse_betas", "parse_seeds", "parse_attacks",
           "PAPER_BETAS", "DETERMINING_FIELDS", "EXECUTORS"]

# The CT paper's grid: 0.70, 0.71, ..., 0.99 (beta = 1, the baseline, is always added).
PAPER_BETAS = "0.70:0.99:0.01"
EXECUTORS = ("local", "gpus", "slurm")

# Settings that determine a result (part of every unit key and checked when a run dir is reused);
# ``attacks`` enters the key as the attack suite's full parameters (``AttackSuite.params``).
# A model given as code or checkpoint also enters the experiment with a hash of its weights (``model_weights``,
# added by ``runner.prepare`` once the model is loaded), so two different models never share units.
DETERMINING_FIELDS = ("model", "checkpoint", "dataset", "threat", "eps", "betas", "coeff", "ct_scope", "seeds",
                      "n_examples", "subset", "data", "attacks", "engine", "chunk_size", "protocol")


#: examples per work unit unless the protocol or the user says otherwise.
DEFAULT_CHUNK = 500


def _fixed_by(proto, attr: str, flag: str, value, default, choices, kind: str):
    """A setting the protocol may fix: ``value`` canonical, the protocol's if it fixes one (a conflicting
    explicit ``value`` is an error), else ``default``."""
    fixed = getattr(proto, attr)
    if value is not None:
        value = _canon(value, choices, kind)
    if fixed is not None:
        if value is not None and value != fixed:
            raise ConfigError(f"--protocol {proto.name} fixes {flag} {fixed} (the CT reference code's setting); "
                              f"drop {flag} {value}")
        return fixed
    return default if value is None else value


def _owned(parse, value):
    """Canonicalize ``value`` with the parser of the module that owns the name; bad input -> ConfigError."""
    try:
        return parse(value)
    except (UnknownNameError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def parse_eps(text) -> float:
    """Parse a perturbation budget: ``"8/255"``, ``"0.03137"``, ``"0.5"``, or a number.

    Returns:
        eps as a float > 0 (pixel scale [0, 1]).

    Raises:
        ConfigError: junk (``"abc"``), division by zero (``"8/0"``), zero, negative or non-finite values.
    """
    if isinstance(text, bool):
        raise ConfigError(f"bad eps {text!r}: give a number like 8/255 or 0.5")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?", s)
        if not m:
            raise ConfigError(f"bad eps {text!r}: give a positive number or fraction, e.g. 8/255 or 0.5")
        num = float(m.group(1))
        if m.group(2) is not None:
            den = float(m.group(2))
            if den == 0:
                raise ConfigError(f"bad eps {text!r}: division by zero; e.g. 8/255")
            value = num / den
        else:
            value = num
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"bad eps {text!r}: eps must be a positive finite number, e.g. 8/255 or 0.5")
    return value


def format_eps(eps: float) -> str:
    """``8/255`` -> ``"8_255"`` (file-name safe); other values -> ``"0.5"``."""
    k = eps * 255
    if abs(k - round(k)) < 1e-9 and round(k) > 0:
        return f"{round(k)}_255"
    return f"{eps:g}"


def _to_float(tok: str, what: str) -> float:
    try:
        return float(tok)
    except ValueError:
        raise ConfigError(f"bad {what} {tok!r}: expected a number") from None


def parse_betas(spec) -> list[float]:
    """Parse a beta grid: ``"0.70:0.99:0.01"`` (start:stop:step, stop included), ``"0.9,0.95"``, a number
    or a list. beta = 1 (the baseline) is always added. Returns sorted unique betas, descending from 1.

    Raises:
        ConfigError: a beta outside (0, 1], a bad range, or junk.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        betas = [float(spec)]
    elif isinstance(spec, (list, tuple)) and len(spec) != 1:
        betas = [_to_float(t, "beta") for t in _attacks.split_list(spec)]
    else:
        s = str(spec[0] if isinstance(spec, (list, tuple)) else spec).strip()
        if ":" in s:
            parts = s.split(":")
            if len(parts) != 3:
                raise ConfigError(f"bad beta range {spec!r}: use start:stop:step, e.g. 0.70:0.99:0.01")
            start, stop, step = (_to_float(p, "beta") for p in parts)
            if step <= 0 or stop < start:
                raise ConfigError(f"bad beta range {spec!r}: need start <= stop and step > 0")
            # exact decimal arithmetic, so 0.70:0.99:0.01 gives exactly 30 values, 0.99 included
            fs, fe, fp = (Fraction(p).limit_denominator(10**9) for p in parts)
            n = int((fe - fs) / fp + Fraction(1, 10**6))
            betas = [round(float(fs + i * fp), 10) for i in range(n + 1)]
        else:
            betas = [_to_float(t, "beta") for t in _attacks.split_list(s)]
    if not betas:
        raise ConfigError(f"no betas in {spec!r}")
    for b in betas:
        if not (0.0 < b <= 1.0) or math.isnan(b):
            raise ConfigError(f"beta {b:g} is outside (0, 1]: CT needs 0 < beta <= 1 (1 = the original model)")
    return sorted(set(betas) | {1.0}, reverse=True)


def parse_seeds(spec) -> list[int]:
    """``"0"``, ``"42 43 44"``, ``"42,43"``, an int or a list (of such strings) -> list of non-negative ints.

    The same list forms as ``--betas`` and ``--attacks``: commas and/or spaces.
    """
    toks = [str(spec)] if isinstance(spec, int) and not isinstance(spec, bool) else _attacks.split_list(spec)
    try:
        seeds = [int(t) for t in toks]
    except ValueError:
        raise ConfigError(f"bad seeds {spec!r}: expected integers, e.g. 0 or 42,43,44") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"bad seeds {spec!r}: expected non-negative integers")
    return list(dict.fromkeys(seeds))


def parse_attacks(spec) -> list[str]:
    """Attack names of a suite option (``"standard"``, ``"rand"`` or a comma/space list) in run order."""
    return list(_parse_suite(spec).attacks)


def _parse_suite(spec) -> "_attacks.AttackSuite":
    return _owned(_attacks.parse_suite, spec)


def _canon(value: str, choices, kind: str) -> str:
    for c in choices:
        if str(value).lower() == c.lower():
            return c
    raise ConfigError(str(did_you_mean(kind, str(value), choices)))


@dataclass
class SweepConfig:
    """Every setting of a sweep, with its default. See ``ctrobust sweep --help``.

    Attributes:
        model: a RobustBench name (e.g. ``Standard``), ``bundled/resnet18-cifar10``, ``ct-paper/resnet18`` (and
            34, 50, 101, 152; CIFAR), ``torchvision/<name>`` or ``timm/<name>`` (ImageNet), or your own model:
            ``py:package.module:factory`` / ``path/to/file.py:factory`` (see ``ctrobust models``).
        checkpoint: a state_dict file for ``ct-paper/``, ``torchvision/``, ``timm/`` and factory models
            (default: the family's own weights); the run is then keyed by the weights' hash.
        dataset: ``cifar10``, ``cifar100`` or ``imagenet``.
        threat: ``Linf`` or ``L2``.
        eps: perturbation budget in [0, 1] pixel scale; default 8/255 (Linf) or 0.5 (L2).
        betas: CT betas; beta = 1 is always included. Default: the paper's 0.70..0.99 step 0.01.
        coeff: CT mixing coefficient c in [0, 1].
        ct_scope: ``all`` (every ReLU the forward computes, ctrobust's default) or ``modules`` (only
            ``nn.ReLU``/``nn.LeakyReLU`` submodules, as the CT reference code's ``replace_module``); the
            ``reference`` protocol fixes ``modules``.
        seeds: attack seeds; each (beta, seed) pair is one result row.
        n_examples: test examples (``None`` = the whole set).
        subset: ``balanced`` (n/classes per class in test-set order; the CT paper's protocol) or ``first``.
        data: ``full`` (torchvision/RobustBench files), ``bundled`` (images shipped in packages; offline) or
            ``timing`` (``n_examples`` rows repeating the bundled images: a timing workload, flagged as such).
        attacks: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``rand``, or a comma list.
        engine: ``fast`` (ctrobust's early-exit, beta-batched AutoAttack; the default) or ``reference``
            (pyautoattack).
        batch_size: ``auto`` (largest that fits, backing off on CUDA OOM) or an int.
        device: ``auto`` (cuda > mps > cpu), ``cuda``, ``cuda:N``, ``mps``, ``cpu``.
        chunk_size: examples per work unit (resume granularity); default 500, or every example in one
            chunk under the ``reference`` protocol.
        protocol: ``valid`` (the stated threat model, pixel space) or ``reference`` (the CT reference code's
            measurement: normalized-space attack with a [0, 1] clamp there, CT scope ``modules``, the
            ``reference`` engine, batch 1000 on CIFAR / 250 on ImageNet; see :mod:`ctrobust.protocols`).
        executor: ``local`` (this process), ``gpus`` (one worker process per GPU, or ``workers`` on the
            CPU) or ``slurm`` (a submitit job array); never changes results.
        slurm_cluster: submitit's cluster (default: detected); ``local`` / ``debug`` run the Slurm path on
            this machine.
        out: run directory (default ``runs/<model>_<dataset>_<threat>_<eps>``).
    """

    model: str = "Standard"
    checkpoint: str | None = None
    dataset: str = "cifar10"
    threat: str = "Linf"
    eps: float | None = None
    betas: list = field(default_factory=lambda: parse_betas(PAPER_BETAS))
    coeff: float = 0.5
    ct_scope: str | None = None
    seeds: list = field(default_factory=lambda: [0])
    n_examples: int | None = 1000
    subset: str = "balanced"
    data: str = "full"
    data_dir: str | None = None
    model_dir: str | None = None
    attacks: str = "standard"
    engine: str | None = None
    batch_size: Any = "auto"
    device: str = "auto"
    chunk_size: int | None = None
    protocol: str = "valid"
    out: str | None = None
    # execution (issue 7): where units run; never changes results
    executor: str = "local"
    workers: int | None = None
    max_retries: int = 2
    slurm_partition: str | None = None
    slurm_time: int = 240
    slurm_gpus_per_task: int = 1
    slurm_array_parallelism: int = 16
    slurm_extra: list = field(default_factory=list)
    slurm_cluster: str | None = None
    quiet: bool = False

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> "SweepConfig":
        """Canonicalize and check every field (raises ``ConfigError``); returns self."""
        from ctrobust.ct import SCOPES
        from ctrobust.models import check_model_options

        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model must be a non-empty name, e.g. Standard")
        if self.checkpoint is not None:
            if not str(self.checkpoint).strip():
                raise ConfigError("checkpoint must be a file path")
            # absolute, so that workers started elsewhere (Slurm) read the same file
            self.checkpoint = str(Path(str(self.checkpoint)).expanduser().absolute())
        check_model_options(self.model, self.checkpoint)
        self.dataset = _owned(parse_dataset, self.dataset)
        self.threat = _owned(Threat.parse, self.threat).value
        self.eps = DEFAULT_EPS[Threat(self.threat)] if self.eps is None else parse_eps(self.eps)
        if self.threat == "Linf" and self.eps > 1:
            raise ConfigError(f"eps {self.eps:g} exceeds the [0, 1] pixel range: did you mean {self.eps:g}/255?")
        self.betas = parse_betas(self.betas)
        try:
            self.coeff = float(self.coeff)
        except (TypeError, ValueError):
            raise ConfigError(f"bad coeff {self.coeff!r}: expected a number in [0, 1]") from None
        if not 0.0 <= self.coeff <= 1.0:
            raise ConfigError(f"coeff {self.coeff:g} is outside [0, 1]")
        proto = _owned(get_protocol, self.protocol)
        self.protocol = proto.name
        self.ct_scope = _fixed_by(proto, "ct_scope", "--ct-scope", self.ct_scope, "all", SCOPES, "CT scope")
        self.seeds = parse_seeds(self.seeds)
        if self.n_examples is not None:
            if str(self.n_examples).lower() in ("all", "none"):
                self.n_examples = None
            else:
                try:
                    self.n_examples = int(self.n_examples)
                except (TypeError, ValueError):
                    raise ConfigError(f"bad n_examples {self.n_examples!r}: expected a positive integer") from None
                if self.n_examples <= 0:
                    raise ConfigError(f"n_examples must be positive, got {self.n_examples}")
        self.subset = _owned(parse_subset, self.subset)
        self.data = _owned(parse_source, self.data)
        self.attacks = _parse_suite(self.attacks).label
        self.engine = _fixed_by(proto, "engine", "--engine", self.engine, "fast", list_engines(), "engine")
        if str(self.batch_size).lower() == "auto":
            # the reference protocol batches as the CT reference code (pyautoattack reseeds every batch)
            self.batch_size = reference_batch_size(self.dataset) if proto.name == "reference" else "auto"
        else:
            try:
                self.batch_size = int(self.batch_size)
            except (TypeError, ValueError):
                raise ConfigError(f"bad batch size {self.batch_size!r}: give a positive integer or auto") from None
            if self.batch_size <= 0:
                raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        dev = str(self.device).lower()
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", dev):
            raise ConfigError(f"bad device {self.device!r}: use auto, cuda, cuda:N, mps or cpu")
        self.device = dev
        if self.chunk_size is None:
            # the reference protocol: one chunk, so pyautoattack's batches are the reference's
            self.chunk_size = (self.n_examples or 10 ** 9) if proto.name == "reference" else DEFAULT_CHUNK
        try:
            self.chunk_size = int(self.chunk_size)
        except (TypeError, ValueError):
            raise ConfigError(f"bad chunk size {self.chunk_size!r}") from None
        if self.chunk_size <= 0:
            raise ConfigError("chunk size must be positive")
        self.executor = _canon(self.executor, EXECUTORS, "executor")
        if self.slurm_cluster is not None:
            self.slurm_cluster = _canon(self.slurm_cluster, ("slurm", "local", "debug"), "slurm cluster")
        if self.workers is not None and int(self.workers) <= 0:
            raise ConfigError("workers must be positive")
        return self

    @property
    def suite(self) -> "_attacks.AttackSuite":
        """The attack suite (attacks and all their hyper-parameters) named by ``attacks``."""
        return _parse_suite(self.attacks)

    @property
    def attack_list(self) -> list[str]:
        return list(self.suite.attacks)

    @property
    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        # file-name safe: py:pkg.mod:make and ../nets.py:make become plain folder names
        name = re.sub(r"[^A-Za-z0-9._+-]", "-", self.model).lstrip(".-") or "model"
        return Path("runs") / f"{name}_{self.dataset}_{self.threat}_{format_eps(self.eps)}"

    def determining(self) -> dict:
        """The settings that determine results (compared when a run dir is reused)."""
        d = {k: getattr(self, k) for k in DETERMINING_FIELDS}
        d["attacks"] = self.suite.params()
        if not get_engine(self.engine).batch_invariant:
            # pyautoattack reseeds every batch: its results depend on the batch size
            d["batch_size"] = self.batch_size
        return d

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> "SweepConfig":
        """Build from a mapping; unknown keys are an error with a suggestion. Not yet validated."""
        names = cls.field_names()
        clean = {}
        for k, v in (data or {}).items():
            key = str(k).replace("-", "_")
            if key not in names:
                raise ConfigError(f"{source}: " + str(did_you_mean("config key", key, names)))
            clean[key] = v
        return cls(**clean)

    @classmethod
    def load_yaml(cls, path) -> dict:
        """Read a YAML config file as a mapping (keys checked later by ``from_dict``)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of option: value")
        data.pop("_experiment", None)  # written into run dirs' config.yaml; not an option
        return data

    @classmethod
    def from_yaml(cls, path, **overrides) -> "SweepConfig":
        """YAML file, then ``overrides`` on top; validated."""
        data = cls.load_yaml(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=str(path)).validate()

    @classmethod
    def from_cli(cls, cli: dict, config_path=None) -> "SweepConfig":
        """CLI > YAML file > defaults. ``cli`` holds only options the user gave (None = not given)."""
        data = cls.load_yaml(config_path) if config_path else {}
        data.update({k: v for k, v in cli.items() if v is not None})
        return cls.from_dict(data, source=str(config_path) if config_path else "options").validate()
