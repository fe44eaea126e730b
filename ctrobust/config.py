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

from ctrobust._registry import did_you_mean

__all__ = ["ConfigError", "SweepConfig", "parse_eps", "parse_betas", "parse_seeds", "parse_attacks",
           "PAPER_BETAS", "ATTACK_SETS", "ALL_ATTACKS", "DETERMINING_FIELDS"]


class ConfigError(ValueError):
    """Bad user input (option, YAML key, value): the CLI prints it on one line and exits with code 2."""


# The CT paper's grid: 0.70, 0.71, ..., 0.99 (beta = 1, the baseline, is always added).
PAPER_BETAS = "0.70:0.99:0.01"
ALL_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
ATTACK_SETS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "rand": ("apgd-ce", "apgd-dlr"),  # with EOT (20 iterations): for randomized defenses
}
DATASETS = ("cifar10", "cifar100", "imagenet")
THREATS = ("Linf", "L2")
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}
ENGINES = ("fast", "reference")
EXECUTORS = ("local", "gpus", "slurm")

# Settings that determine a result (part of every unit key and checked when a run dir is reused).
DETERMINING_FIELDS = ("model", "dataset", "threat", "eps", "betas", "coeff", "seeds", "n_examples", "subset",
                      "data", "attacks", "engine", "chunk_size")


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
    if isinstance(spec, (list, tuple)):
        betas = [_to_float(str(b), "beta") for b in spec]
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
        betas = [float(spec)]
    else:
        s = str(spec).strip()
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
            betas = [_to_float(t, "beta") for t in s.replace(" ", ",").split(",") if t]
    if not betas:
        raise ConfigError(f"no betas in {spec!r}")
    for b in betas:
        if not (0.0 < b <= 1.0) or math.isnan(b):
            raise ConfigError(f"beta {b:g} is outside (0, 1]: CT needs 0 < beta <= 1 (1 = the original model)")
    return sorted(set(betas) | {1.0}, reverse=True)


def parse_seeds(spec) -> list[int]:
    """``"0"``, ``"42 43 44"``, ``"42,43"``, an int or a list -> list of non-negative ints."""
    if isinstance(spec, (list, tuple)):
        toks = [str(s) for s in spec]
    elif isinstance(spec, int) and not isinstance(spec, bool):
        toks = [str(spec)]
    else:
        toks = [t for t in re.split(r"[,\s]+", str(spec).strip()) if t]
    try:
        seeds = [int(t) for t in toks]
    except ValueError:
        raise ConfigError(f"bad seeds {spec!r}: expected integers, e.g. 0 or 42,43,44") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"bad seeds {spec!r}: expected non-negative integers")
    return list(dict.fromkeys(seeds))


def parse_attacks(spec) -> list[str]:
    """``"standard"``, ``"rand"`` or a comma list of ``apgd-ce, apgd-t, fab-t, square, apgd-dlr, fab``."""
    if isinstance(spec, (list, tuple)):
        names = [str(s).strip().lower() for s in spec]
    else:
        s = str(spec).strip().lower()
        if s in ATTACK_SETS:
            return list(ATTACK_SETS[s])
        names = [t.strip() for t in s.split(",") if t.strip()]
    if not names:
        raise ConfigError("no attacks given: use standard, rand, or e.g. apgd-ce,square")
    for n in names:
        if n not in ALL_ATTACKS:
            raise ConfigError(str(did_you_mean("attack", n, list(ALL_ATTACKS) + list(ATTACK_SETS))))
    return list(dict.fromkeys(names))


def _canon(value: str, choices, kind: str) -> str:
    for c in choices:
        if str(value).lower() == c.lower():
            return c
    raise ConfigError(str(did_you_mean(kind, str(value), choices)))


@dataclass
class SweepConfig:
    """Every setting of a sweep, with its default. See ``ctrobust sweep --help``.

    Attributes:
        model: RobustBench model name (e.g. ``Standard``) or a bundled one (``bundled/resnet18-cifar10``).
        dataset: ``cifar10``, ``cifar100`` or ``imagenet``.
        threat: ``Linf`` or ``L2``.
        eps: perturbation budget in [0, 1] pixel scale; default 8/255 (Linf) or 0.5 (L2).
        betas: CT betas; beta = 1 is always included. Default: the paper's 0.70..0.99 step 0.01.
        coeff: CT mixing coefficient c in [0, 1].
        seeds: attack seeds; each (beta, seed) pair is one result row.
        n_examples: test examples (``None`` = the whole set).
        subset: ``balanced`` (n/classes per class in test-set order; the CT paper's protocol) or ``first``.
        data: ``full`` (torchvision/RobustBench files) or ``bundled`` (images shipped in packages; offline).
        attacks: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``rand``, or a comma list.
        engine: ``fast`` (ctrobust's early-exit, beta-batched AutoAttack) or ``reference`` (pyautoattack).
        batch_size: ``auto`` (largest that fits, backing off on CUDA OOM) or an int.
        device: ``auto`` (cuda > mps > cpu), ``cuda``, ``cuda:N``, ``mps``, ``cpu``.
        chunk_size: examples per work unit (resume granularity).
        out: run directory (default ``runs/<model>_<dataset>_<threat>_<eps>``).
    """

    model: str = "Standard"
    dataset: str = "cifar10"
    threat: str = "Linf"
    eps: float | None = None
    betas: list = field(default_factory=lambda: parse_betas(PAPER_BETAS))
    coeff: float = 0.5
    seeds: list = field(default_factory=lambda: [0])
    n_examples: int | None = 1000
    subset: str = "balanced"
    data: str = "full"
    data_dir: str | None = None
    model_dir: str | None = None
    attacks: str = "standard"
    engine: str = "fast"
    batch_size: Any = "auto"
    device: str = "auto"
    chunk_size: int = 500
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
    quiet: bool = False

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> "SweepConfig":
        """Canonicalize and check every field (raises ``ConfigError``); returns self."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model must be a non-empty name, e.g. Standard")
        self.dataset = _canon(self.dataset, DATASETS, "dataset")
        self.threat = _canon(self.threat, THREATS, "threat")
        self.eps = DEFAULT_EPS[self.threat] if self.eps is None else parse_eps(self.eps)
        if self.threat == "Linf" and self.eps > 1:
            raise ConfigError(f"eps {self.eps:g} exceeds the [0, 1] pixel range: did you mean {self.eps:g}/255?")
        self.betas = parse_betas(self.betas)
        try:
            self.coeff = float(self.coeff)
        except (TypeError, ValueError):
            raise ConfigError(f"bad coeff {self.coeff!r}: expected a number in [0, 1]") from None
        if not 0.0 <= self.coeff <= 1.0:
            raise ConfigError(f"coeff {self.coeff:g} is outside [0, 1]")
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
        self.subset = _canon(self.subset, ("first", "balanced"), "subset")
        self.data = _canon(self.data, ("full", "bundled"), "data source")
        attacks = parse_attacks(self.attacks)
        self.attacks = next((k for k, v in ATTACK_SETS.items() if list(v) == attacks and
                             str(self.attacks).lower() == k), ",".join(attacks))
        self.engine = _canon(self.engine, ENGINES, "engine")
        if str(self.batch_size).lower() == "auto":
            self.batch_size = "auto"
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
        try:
            self.chunk_size = int(self.chunk_size)
        except (TypeError, ValueError):
            raise ConfigError(f"bad chunk size {self.chunk_size!r}") from None
        if self.chunk_size <= 0:
            raise ConfigError("chunk size must be positive")
        self.executor = _canon(self.executor, EXECUTORS, "executor")
        if self.workers is not None and int(self.workers) <= 0:
            raise ConfigError("workers must be positive")
        if self.attacks == "rand" and self.engine == "fast":
            pass  # supported: EOT averaging in the fast APGD
        return self

    @property
    def attack_list(self) -> list[str]:
        return parse_attacks(self.attacks)

    @property
    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        name = self.model.replace("/", "-")
        return Path("runs") / f"{name}_{self.dataset}_{self.threat}_{format_eps(self.eps)}"

    def determining(self) -> dict:
        """The settings that determine results (compared when a run dir is reused)."""
        d = {k: getattr(self, k) for k in DETERMINING_FIELDS}
        d["attacks"] = self.attack_list
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
