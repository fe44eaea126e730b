"""The one sweep configuration: every default, parsing, validation (CLI > YAML file > defaults).

``SweepConfig`` holds every setting of a sweep. It is built once at the edge (``from_cli`` /
``from_yaml`` / ``SweepConfig(...)``) and validated there, so a bad option fails before any work starts,
never halfway through a sweep. Strings become canonical values here (``"linf"`` -> ``"Linf"``,
``"8/255"`` -> ``0.0313...``, ``"0.7:0.99:0.01"`` -> a list of betas).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from ctrobust import attacks as _attacks
from ctrobust import executors as _executors
from ctrobust._registry import UnknownNameError, did_you_mean
from ctrobust.curves import parse_curve_eps
from ctrobust.data import parse_dataset, parse_source, parse_subset
from ctrobust.engines import get_engine_spec, list_engines
from ctrobust.protocols import get_protocol, reference_batch_size
from ctrobust.errors import ConfigError, InputWarning
from ctrobust.threat import CORRUPTIONS, DEFAULT_EPS, Threat, parse_threat
from ctrobust.threat import format_eps as _format_eps

__all__ = ["ConfigError", "SweepConfig", "parse_eps", "parse_betas", "parse_seeds", "parse_attacks",
           "PAPER_BETAS", "DETERMINING_FIELDS", "EXECUTORS", "option", "RunConfig"]

# The CT paper's grid: 0.70, 0.71, ..., 0.99 (beta = 1, the baseline, is always added).
PAPER_BETAS = "0.70:0.99:0.01"
#: executor names, owned by :mod:`ctrobust.executors`
EXECUTORS = tuple(_executors.EXECUTORS)


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
    return _format_eps(eps, sep="_")


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
    dup = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if dup is not None:
        raise ConfigError(f"bad seeds {spec!r}: seed {dup} is given twice (each seed is one repetition); "
                          "drop the duplicate")
    return seeds


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


EXPERIMENT = "experiment (these determine results)"
WHERE = "where and how (never change results of the fast engine)"
SCALE = "scale out"


def option(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, help: str, group: str = WHERE,
           determining: bool = False, study: bool = False, study_help: str | None = None, **argparse_kw):
    """A :class:`SweepConfig` field and everything the edges derive from it.

    The CLI builds ``--<name-with-dashes>`` from it (``help``, ``group`` and any ``argparse_kw`` such as
    ``nargs``, ``type`` or ``action``), the YAML reader accepts its name, ``determining`` puts it into every
    experiment and unit key, and ``study`` lets ``ctrobust reproduce`` set it (``study_help`` there).
    """
    meta = {"help": help, "group": group, "determining": determining, "study": study,
            "study_help": study_help, "argparse": argparse_kw}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SweepConfig:
    """Every setting of a sweep, with its default and its help (``ctrobust sweep --help`` is built from the
    fields' metadata, see :func:`option`).

    ``validate()`` turns the fields into canonical values once, at the edge (``"linf"`` -> ``"Linf"``,
    ``"8/255"`` -> ``0.0313...``, ``"0.7:0.99:0.01"`` -> a list of betas, the attack option -> the typed
    :class:`~ctrobust.attacks.AttackSuite` in ``suite``); downstream code receives the validated object and
    neither re-parses nor edits it (a worker on another device gets a copy, :meth:`replace`).

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
        attacks: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``rand``, or a comma list; validated into
            ``suite``.
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
        suite: the attack suite ``attacks`` names, set by ``validate()`` (not an option).
    """

    model: str = option("Standard", group=EXPERIMENT, determining=True, help=(
        "RobustBench name (e.g. Standard), bundled/resnet18-cifar10, ct-paper/resnet18 (34, 50, 101, 152; CIFAR), "
        "torchvision/<name> or timm/<name> (ImageNet), py:package.module:factory or path/to/file.py:factory; "
        "`ctrobust models` lists them [Standard]"))
    checkpoint: str | None = option(None, group=EXPERIMENT, determining=True, metavar="FILE", help=(
        "state_dict for ct-paper/, torchvision/, timm/ and factory models (weights_only=True; keys must match) "
        "[the family's own weights]"))
    dataset: str = option("cifar10", group=EXPERIMENT, determining=True, help="cifar10 | cifar100 | imagenet [cifar10]")
    threat: str = option("Linf", group=EXPERIMENT, determining=True, help=(
        "Linf | L2 | corruptions (accuracy on CIFAR-10-C / CIFAR-100-C / ImageNet-C, no attack: --eps does not "
        "apply) [Linf]"))
    eps: float | None = option(None, group=EXPERIMENT, determining=True,
                               help="budget in [0,1] pixel scale, e.g. 8/255 [8/255 for Linf, 0.5 for L2]")
    betas: list = option(factory=lambda: parse_betas(PAPER_BETAS), group=EXPERIMENT, determining=True, study=True,
                         nargs="+", study_help="override the paper's grid 0.70:0.99:0.01 (shrink)", help=(
                             "start:stop:step or a list, e.g. 0.70:0.99:0.01 or 0.9,0.95; beta = 1 is always added "
                             "[0.70:0.99:0.01]"))
    coeff: float = option(0.5, group=EXPERIMENT, determining=True, type=float,
                          help="CT mixing coefficient c in [0, 1] [0.5]")
    ct_scope: str | None = option(None, group=EXPERIMENT, determining=True, help=(
        "all (every ReLU the forward computes) | modules (only nn.ReLU/nn.LeakyReLU submodules, as the CT "
        "reference code) [all]"))
    seeds: list = option(factory=lambda: [0], group=EXPERIMENT, determining=True, study=True, nargs="+",
                         study_help="override the paper's seeds 42 43 44 (shrink)",
                         help="attack seed(s), e.g. 0 or 42,43,44 or 42 43 44 [0]")
    n_examples: int | None = option(1000, group=EXPERIMENT, determining=True, study=True,
                                    study_help="examples per dataset (shrink for a quick look) [1000]",
                                    help="number of test examples, or all [1000]")
    subset: str = option("balanced", group=EXPERIMENT, determining=True,
                         help="balanced (n/classes per class, the paper's protocol) | first [balanced]")
    data: str = option("full", group=EXPERIMENT, determining=True, study=True, study_help="full | bundled [full]",
                       help=("full (dataset files) | bundled (images shipped in packages) | timing (--n-examples "
                             "rows repeating the bundled images: a timing workload, not a measurement) [full]"))
    data_dir: str | None = option(None, study=True, help="dataset folder [$CTROBUST_DATA_DIR or user cache]")
    model_dir: str | None = option(None, study=True, help=(
        "checkpoint folder: <dir>/<dataset>/<threat>/<name>.pt (RobustBench), <dir>/ct-paper/ "
        "[$CTROBUST_MODEL_DIR or user cache]"))
    attacks: str = option("standard", group=EXPERIMENT, determining=True, study=True, nargs="+",
                          study_help="shrink the attacks (default: standard AutoAttack)", help=(
                              "standard | rand (APGD-CE + APGD-DLR, EOT 20) | a list such as "
                              "apgd-ce,apgd-t,fab-t,square | min-norm (FMN + FAB: every point's minimal "
                              "perturbation, robust accuracy at every eps) | both: standard,min-norm [standard]"))
    corruptions: Any = option("all", group=EXPERIMENT, help=(
        "--threat corruptions: which corruptions, all or a list such as gaussian_noise,fog (RobustBench's 15) "
        "[all]"))
    severities: Any = option("all", group=EXPERIMENT, help="--threat corruptions: severities, all or e.g. 1,3,5 [all]")
    min_norm_params: Any = option(None, group=EXPERIMENT, help=(
        "parameters of the minimum-norm attacks of --attacks min-norm: N (steps of all), attack=N (its steps) or "
        "attack.param=N, e.g. fmn=20,fab-mn=5 or fab-mn.restarts=3,fab-mn.candidates=2 [steps 100 each, FAB on "
        "all classes]; part of the attack suite, so of the key"))
    curve_eps: Any = option(None, nargs="+", help=(
        "eps grid of curves.csv for a min-norm run: start:stop:step or a list, e.g. 0:16/255:1/255 "
        "[0:16/255:1/255 for Linf, 0:1.5:0.1 for L2]; read from the stored distances, never recomputed"))
    save_adv: bool = option(False, action="store_true", help=(
        "also write each unit's minimum-norm points (units/<key>.adv.npz, float32) so anyone can check a "
        "distance [off]"))
    engine: str | None = option(None, group=EXPERIMENT, determining=True, study=True,
                                study_help="engine of the valid-protocol cells [fast]", help=(
                                    "fast (ctrobust's early-exit, beta-batched AutoAttack) | reference "
                                    "(pyautoattack as released) [fast]"))
    batch_size: Any = option("auto", study=True, help="N | auto (largest that fits; backs off on OOM) [auto]")
    device: str = option("auto", study=True, help="auto | cuda | cuda:N | mps | cpu [auto = cuda > mps > cpu]")
    chunk_size: int | None = option(None, group=EXPERIMENT, determining=True, help="examples per work unit [500]")
    protocol: str = option("valid", group=EXPERIMENT, determining=True, help=(
        "valid (the stated threat model, pixel space) | reference (the CT reference code's measurement: "
        "normalized-space attack with a [0, 1] clamp there, CT on nn.ReLU modules, pyautoattack; NOT the "
        "stated eps-ball) [valid]"))
    out: str | None = option(None, help="run directory [runs/<model>_<dataset>_<threat>_<eps>]")
    executor: str = option("local", group=SCALE, study=True, help=(
        "local (in-process) | gpus (one worker per GPU / --workers on CPU) | slurm (submitit job array) [local]"))
    workers: int | None = option(None, group=SCALE, study=True, type=int,
                                 help="worker processes for --executor gpus (jobs for slurm)")
    max_retries: int = option(2, group=SCALE, study=True, type=int, help="re-queue a failed unit this often [2]")
    slurm_partition: str | None = option(None, group=SCALE, study=True, help="Slurm partition [the cluster's default]")
    slurm_time: int = option(240, group=SCALE, study=True, type=int, help="minutes per job [240]")
    slurm_gpus_per_task: int = option(1, group=SCALE, study=True, type=int, help="GPUs per Slurm job [1]")
    slurm_array_parallelism: int = option(16, group=SCALE, study=True, type=int,
                                          help="Slurm jobs running at once [16]")
    slurm_extra: list = option(factory=list, group=SCALE, study=True, action="append",
                               help="extra sbatch parameter KEY=VALUE (repeatable)")
    slurm_cluster: str | None = option(None, group=SCALE, study=True, help=(
        "submitit cluster: slurm | local | debug (local/debug: try the Slurm path on this machine) [detected]"))
    quiet: bool = option(False, study=True, action="store_true", help="no progress bars or summaries")
    suite: "_attacks.AttackSuite | None" = field(default=None, init=False, repr=False, compare=False)

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> "SweepConfig":
        """Canonicalize and check every field, in the named steps of :data:`_VALIDATION_STEPS`.

        Each step reads the fields as given (and the canonical values of the steps before it) and returns
        canonical values; they are set together at the end, so a config that fails is left as it was.
        Validating a validated config changes nothing. Raises ``ConfigError``; returns self.
        """
        canon: dict = {}
        for step in _VALIDATION_STEPS:
            canon.update(step(self, canon))
        for k, v in canon.items():
            object.__setattr__(self, k, v)
        return self

    def replace(self, **changes) -> "SweepConfig":
        """A validated copy with ``changes`` (e.g. a worker's ``device``); this config stays as it is."""
        return dataclasses.replace(self, **changes).validate()

    @property
    def attack_list(self) -> list[str]:
        return list(self.suite.attacks)

    @property
    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        # file-name safe: py:pkg.mod:make and ../nets.py:make become plain folder names
        name = re.sub(r"[^A-Za-z0-9._+-]", "-", self.model).lstrip(".-") or "model"
        if self.threat == CORRUPTIONS:
            return Path("runs") / f"{name}_{self.dataset}_{self.threat}"
        return Path("runs") / f"{name}_{self.dataset}_{self.threat}_{format_eps(self.eps)}"

    @classmethod
    def determining_fields(cls) -> tuple[str, ...]:
        """Names of the options that determine results (``option(..., determining=True)``)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("determining"))

    def determining(self) -> dict:
        """The settings that determine results (compared when a run dir is reused; hashed into every key).

        ``attacks`` enters as the suite's parameters (``AttackSuite.params``); the batch size only for an engine
        whose outcomes depend on it. Options that are not determining say where and how the work runs
        (folders, device, executor, output), which never changes a result of a batch-invariant engine.
        """
        d = {k: getattr(self, k) for k in self.determining_fields()}
        if self.threat == CORRUPTIONS:  # no attack: the pairs evaluated instead of the attack suite
            d.pop("attacks")
            d["corruptions"], d["severities"] = list(self.corruptions), list(self.severities)
            return d
        d["attacks"] = self.suite.params()
        if not get_engine_spec(self.engine).batch_invariant:
            # pyautoattack reseeds every batch: its results depend on the batch size
            d["batch_size"] = self.batch_size
        return d

    def to_dict(self) -> dict:
        """Every option (not the derived ``suite``) as plain values, as ``config.yaml`` holds them."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.init}

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        """The option names (the fields a mapping, a YAML file or the command line may set)."""
        return [f.name for f in fields(cls) if f.init]

    @classmethod
    def study_fields(cls) -> tuple[str, ...]:
        """Options a study (``ctrobust reproduce``) lets the user set; the rest are the paper's."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("study"))

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
    def from_cli(cls, cli: dict, config_path=None, *, base: dict | None = None) -> "SweepConfig":
        """CLI > YAML file (or ``base``, a mapping such as a run dir's config as written) > defaults.

        ``cli`` holds only options the user gave (None = not given).
        """
        data = dict(base or {})
        if config_path:
            data.update(cls.load_yaml(config_path))
        data.pop("_experiment", None)
        data.update({k: v for k, v in cli.items() if v is not None})
        return cls.from_dict(data, source=str(config_path) if config_path else "options").validate()


# -------------------------------------------------------------------------------------------------
# Validation steps: each takes the config as given and the canonical values so far, returns canonical values
# -------------------------------------------------------------------------------------------------


def _check_model(c: SweepConfig, canon: dict) -> dict:
    from ctrobust.models import check_model_options

    if not isinstance(c.model, str) or not c.model.strip():
        raise ConfigError("model must be a non-empty name, e.g. Standard")
    checkpoint = c.checkpoint
    if checkpoint is not None:
        if not str(checkpoint).strip():
            raise ConfigError("checkpoint must be a file path")
        # absolute, so that workers started elsewhere (Slurm) read the same file
        checkpoint = str(Path(str(checkpoint)).expanduser().absolute())
    check_model_options(c.model, checkpoint)
    return {"checkpoint": checkpoint}


def _check_threat(c: SweepConfig, canon: dict) -> dict:
    dataset = _owned(parse_dataset, c.dataset)
    threat = _owned(parse_threat, c.threat)
    if threat == CORRUPTIONS:
        from ctrobust import corruptions as _corr

        if c.eps is not None:
            raise ConfigError("--eps does not apply to --threat corruptions (accuracy on corrupted images, no "
                              "attack): drop --eps")
        return {"dataset": dataset, "threat": threat, "eps": None,
                "corruptions": list(_owned(lambda v: _corr.parse_corruptions(v, dataset), c.corruptions)),
                "severities": list(_owned(_corr.parse_severities, c.severities))}
    eps = DEFAULT_EPS[Threat(threat)] if c.eps is None else parse_eps(c.eps)
    if threat == "Linf" and eps > 1:
        raise ConfigError(f"eps {eps:g} exceeds the [0, 1] pixel range: did you mean {eps:g}/255?")
    k = round(eps * 255)
    if threat == "Linf" and k >= 1 and abs(eps * 255 - k) > 1e-6 and abs(eps * 255 - k) <= 0.02 * k:
        import warnings  # a near miss of k/255 (8/256, 0.031) is most likely a typo, but a valid eps

        warnings.warn(f"--eps {c.eps} = {eps:.6g} is within 2 % of {k}/255 = {k / 255:.6g} but not equal: "
                      f"did you mean {k}/255?", InputWarning, stacklevel=2)
    return {"dataset": dataset, "threat": threat, "eps": eps}


def _check_ct(c: SweepConfig, canon: dict) -> dict:
    from ctrobust.ct import SCOPES

    try:
        coeff = float(c.coeff)
    except (TypeError, ValueError):
        raise ConfigError(f"bad coeff {c.coeff!r}: expected a number in [0, 1]") from None
    if not 0.0 <= coeff <= 1.0:
        raise ConfigError(f"coeff {coeff:g} is outside [0, 1]")
    proto = _owned(get_protocol, c.protocol)
    ct_scope = _fixed_by(proto, "ct_scope", "--ct-scope", c.ct_scope, "all", SCOPES, "CT scope")
    return {"betas": parse_betas(c.betas), "coeff": coeff, "protocol": proto.name, "ct_scope": ct_scope}


def _check_examples(c: SweepConfig, canon: dict) -> dict:
    n = c.n_examples
    if n is not None:
        n = None if str(n).lower() in ("all", "none") else _positive_int(n, "n_examples", "a positive integer or all")
    return {"seeds": parse_seeds(c.seeds), "n_examples": n, "subset": _owned(parse_subset, c.subset),
            "data": _owned(parse_source, c.data)}


def _check_attacks(c: SweepConfig, canon: dict) -> dict:
    proto = get_protocol(canon["protocol"])
    suite = _parse_suite(c.attacks)
    if canon["threat"] == CORRUPTIONS:
        return _check_no_attack(c, canon, proto, suite)
    engine = _fixed_by(proto, "engine", "--engine", c.engine, "fast", list_engines(), "engine")
    batch_size = _batch_size(c.batch_size)
    if batch_size == "auto" and proto.name == "reference":
        # the reference protocol batches as the CT reference code (pyautoattack reseeds every batch)
        batch_size = reference_batch_size(canon["dataset"])
    chunk = c.chunk_size
    if chunk is None:
        # the reference protocol: one chunk, so pyautoattack's batches are the reference's
        chunk = (canon["n_examples"] or 10 ** 9) if proto.name == "reference" else DEFAULT_CHUNK
    chunk = _positive_int(chunk, "chunk size", "a positive integer")
    mn_params = _parse_min_norm_params(c.min_norm_params)
    try:
        suite = suite.with_min_norm_params(mn_params)
    except ValueError as exc:
        raise ConfigError(f"--min-norm-params: {exc}") from None
    if mn_params:  # canonical text, as it is written to config.yaml
        mn_params = ",".join(f"{a}.{k}={v}" for a, kv in sorted(mn_params.items()) for k, v in sorted(kv.items()))
    if suite.min_norm:
        if proto.name != "valid":
            raise ConfigError("minimum-norm attacks measure distances in pixel space: drop min-norm from --attacks "
                              "or use --protocol valid")
        if "min-norm" not in get_engine_spec(engine).measures:
            raise ConfigError(f"the {engine} engine runs no minimum-norm attack: use --engine fast for "
                              "--attacks ...,min-norm")
    try:
        curve_eps = None if c.curve_eps is None else parse_curve_eps(c.curve_eps, canon["threat"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {"attacks": suite.label, "suite": suite, "engine": engine, "batch_size": batch_size,
            "chunk_size": chunk, "min_norm_params": mn_params or None, "curve_eps": curve_eps}


def _positive_int(value, what: str, hint: str) -> int:
    """``value`` as a positive int, else a one-line ``ConfigError`` naming ``what`` and what to give (``hint``)."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"bad {what} {value!r}: give {hint}") from None
    if n <= 0 or n != float(value):
        raise ConfigError(f"{what} must be positive, got {value}")
    return n


def _batch_size(value):
    """``auto`` or a positive int."""
    return "auto" if str(value).lower() == "auto" else _positive_int(value, "batch size", "a positive integer or auto")


def _check_no_attack(c: SweepConfig, canon: dict, proto, suite) -> dict:
    """``--threat corruptions``: no attack, the ``forward`` engine, RobustBench's first n images of each pair,
    one work unit per (corruption, severity) pair (the images of a pair are read together)."""
    if proto.name != "valid":
        raise ConfigError("--threat corruptions runs no attack, so there is no normalized-space protocol: use "
                          "--protocol valid (the CT reference code's scope is --ct-scope modules)")
    if c.engine not in (None, "forward"):
        raise ConfigError(f"--threat corruptions runs no attack: drop --engine {c.engine}")
    if suite.min_norm:
        raise ConfigError("--threat corruptions runs no attack: drop min-norm from --attacks")
    if canon["data"] != "full":
        raise ConfigError("--threat corruptions reads RobustBench's corruption files (CIFAR-10-C, ...): use --data "
                          "full with --data-dir")
    batch = _batch_size(c.batch_size)
    n = canon["n_examples"]
    if n is None:
        from ctrobust.corruptions import _n_total
        n = _n_total(canon["dataset"])
    return {"attacks": suite.label, "suite": suite, "engine": "forward", "batch_size": batch, "chunk_size": n,
            "subset": "first", "min_norm_params": None, "curve_eps": None}


def _parse_min_norm_params(spec) -> dict:
    """``--min-norm-params``: ``N`` (steps of every minimum-norm attack), ``attack=N`` (its steps) or
    ``attack.param=N``, comma/space separated -> ``{attack: {param: N}}`` ({} when not given). Which attacks
    and parameters exist is checked against the suite (:meth:`AttackSuite.with_min_norm_params`)."""
    if spec is None:
        return {}
    toks = [str(spec)] if isinstance(spec, int) else _attacks.split_list(spec)
    bad = ConfigError(f"bad --min-norm-params {spec!r}: give N, attack=N or attack.param=N, "
                      "e.g. fmn=20,fab-mn=5 or fab-mn.candidates=2")
    out: dict = {}
    for t in toks:
        name, eq, value = t.partition("=")
        attack, _, param = name.partition(".")
        try:
            v = int(value if eq else name)
        except ValueError:
            raise bad from None
        if not eq:  # a bare N: the steps of every minimum-norm attack
            for a in _attacks.MIN_NORM_ATTACKS:
                out.setdefault(a, {})["steps"] = v
            continue
        try:
            spec_ = _attacks.get_attack(attack)
        except UnknownNameError as exc:
            raise ConfigError(f"--min-norm-params: {exc}") from None
        out.setdefault(spec_.name, {})[param or "steps"] = v
    return out


def _check_execution(c: SweepConfig, canon: dict) -> dict:
    dev = str(c.device).lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", dev):
        raise ConfigError(f"bad device {c.device!r}: use auto, cuda, cuda:N, mps or cpu")
    cluster = c.slurm_cluster
    if cluster is not None:
        cluster = _canon(cluster, ("slurm", "local", "debug"), "slurm cluster")
    if c.workers is not None and int(c.workers) <= 0:
        raise ConfigError("workers must be positive")
    return {"device": dev, "executor": _canon(c.executor, EXECUTORS, "executor"), "slurm_cluster": cluster}


#: the steps of :meth:`SweepConfig.validate`, in order (later steps read earlier steps' canonical values).
_VALIDATION_STEPS = (_check_model, _check_threat, _check_ct, _check_examples, _check_attacks, _check_execution)


# -------------------------------------------------------------------------------------------------
# A run's configuration as written
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """The settings of a run as its ``config.yaml`` holds them (read-only, never validated).

    Everything a report, a figure or ``ctrobust status`` needs is here, typed; ``options`` keeps every option
    as written. ``attack_names`` is the canonical attack list the run's experiment recorded
    (``_experiment.attacks.attacks``), so readers never parse an attack option again.
    """

    model: str | None = None
    dataset: str | None = None
    threat: str | None = None
    eps: float | None = None
    betas: tuple | None = None
    seeds: tuple | None = None
    n_examples: int | None = None
    subset: str | None = None
    data: str | None = None
    coeff: float | None = None
    attacks: str | None = None
    attack_names: tuple | None = None
    engine: str | None = None
    protocol: str | None = None
    ct_scope: str | None = None
    max_retries: int = 2
    options: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_doc(cls, doc: dict) -> "RunConfig":
        """From ``config.yaml``'s mapping (or any mapping of options, ``_experiment`` optional)."""
        doc = dict(doc or {})
        exp = doc.pop("_experiment", None) or {}
        attacks = doc.get("attacks")
        if attacks is not None and not isinstance(attacks, str):  # a list: its comma label
            attacks = ",".join(str(a) for a in attacks)
        names = (exp.get("attacks") or {}).get("attacks") if isinstance(exp.get("attacks"), dict) else None
        if names is None and attacks is not None:
            names = _attacks.suite_attack_names(attacks)
        tup = (lambda v: None if v is None else tuple(v if isinstance(v, (list, tuple)) else [v]))
        known = {f for f in cls.__dataclass_fields__} - {"options", "attack_names", "attacks", "betas", "seeds"}
        kw = {k: doc[k] for k in known if doc.get(k) is not None}
        return cls(**kw, attacks=attacks, attack_names=None if names is None else tuple(names),
                   betas=tup(doc.get("betas")), seeds=tup(doc.get("seeds")), options=doc)

    @classmethod
    def of(cls, config) -> "RunConfig":
        """A :class:`RunConfig` from a run's config in any form: None, a mapping, a ``SweepConfig``."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, SweepConfig):
            doc = config.to_dict()
            if config.suite is not None:
                doc["_experiment"] = {"attacks": config.suite.params()}
            return cls.from_doc(doc)
        return cls.from_doc(dict(config))


#: names of the options that determine results, derived from the fields' metadata.
DETERMINING_FIELDS = SweepConfig.determining_fields()
