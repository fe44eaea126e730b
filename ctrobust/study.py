"""Studies: several sweeps with one purpose, in one study dir, resumable like a sweep.

``ctrobust reproduce ct-paper --model resnet50`` plans one run per (threat, dataset, cell) with the paper's
settings (:data:`CT_PAPER`), checks that every weight file and dataset is there before any work (all
missing inputs are listed at once), runs each cell with :func:`ctrobust.sweep.run_sweep` (any executor),
and writes the study report (:mod:`ctrobust.report.study`) and figure.

Threats (the paper's three, ``compare_robustness_results.py``'s ``threat_list``):

* ``Linf`` (eps 8/255) and ``L2`` (eps 0.5), AutoAttack standard, the same eps on every dataset: cells
  ``reference`` (normalized-space attack with the [0, 1] clamp there, CT on ``nn.ReLU`` modules),
  ``pixel`` (the valid threat model, the same CT scope) and ``valid`` (full CT scope);
* ``corruptions``: accuracy on CIFAR-10-C / CIFAR-100-C / ImageNet-C, 15 corruptions x severities 1-5,
  ``n_examples`` per pair, no attack (RobustBench's ``corruptions_evaluation``): cells ``reference`` (CT on
  ``nn.ReLU`` modules only, as the reference code) and ``valid`` (full CT scope). There is no normalized-space
  cell: nothing is attacked.

Study dir::

    study.yaml                          what was asked (checked on re-runs: another study is refused)
    runs/<threat>-<dataset>-<cell>/     one ordinary run dir per cell (resumable, inspectable with every command)
    report.md, report.json              the study report
    figures/study.png, .pdf             clean and robust accuracy against beta, one panel per threat and dataset

A study of one adversarial threat alone (``--threats Linf`` or ``--threats L2``) keeps the layout studies had
before there were several threats, ``runs/<dataset>-<cell>/`` and ``threat: <name>`` in ``study.yaml``, so
that a study dir made then resumes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ctrobust._registry import did_you_mean
from ctrobust.config import PAPER_BETAS, SweepConfig
from ctrobust.errors import ConfigError

__all__ = ["StudyInputError", "StudySpec", "StudyCell", "CT_PAPER", "plan_study", "preflight", "run_study",
           "STUDIES", "THREATS", "parse_threats", "legacy_layout"]


class StudyInputError(ConfigError):
    """Inputs of a study are missing (weights, data): every one is listed, nothing was written."""

    all_lines = True  # the CLI prints every line of the message


@dataclass(frozen=True)
class PaperSettings:
    """The settings of the CT paper's robustness experiment (reference code: ``robustness.py``,
    ``submit_robustness.py``, ``compare_robustness_results.py``)."""

    models: tuple = ("resnet18", "resnet50", "resnet152")
    datasets: tuple = ("cifar10", "cifar100", "imagenet")
    betas: str = PAPER_BETAS                 # np.arange(0.7, 1 - 1e-6, 0.01): 0.70 .. 0.99 (+ beta = 1)
    seeds: tuple = (42, 43, 44)
    n_examples: int = 1000                   # CIFAR: n / classes of each class; ImageNet: the first 1000
    coeff: float = 0.5                       # sigmoid(raw_coeff = 0)
    # THREAT_TO_EPS in robustness.py: the same eps on every dataset (ImageNet included), in normalized units;
    # corruptions: None (no attack)
    eps: dict = field(default_factory=lambda: {"Linf": "8/255", "L2": "0.5", "corruptions": None})
    threats: tuple = ("Linf", "L2", "corruptions")   # compare_robustness_results.py's threat_list


CT_PAPER = PaperSettings()
STUDIES = {"ct-paper": CT_PAPER}


def paper_model(model: str, dataset: str) -> str:
    """ctrobust's name of the paper's model: its CIFAR ResNets, torchvision's on ImageNet."""
    return f"torchvision/{model}" if dataset == "imagenet" else f"ct-paper/{model}"


#: the threats a study knows, canonical spelling; ``corruptions`` has no eps and no attack
THREATS = ("Linf", "L2", "corruptions")
#: the threats whose cells are attacked (AutoAttack at the paper's eps)
ADVERSARIAL = ("Linf", "L2")


def parse_threats(spec) -> list[str]:
    """Canonical threat names from ``"Linf,L2,corruptions"`` (a string or a list; case-insensitive), in the
    paper's order. Raises ``UnknownNameError`` ("did you mean") or ``ConfigError`` (none, or twice)."""
    from ctrobust.attacks import split_list

    names = split_list(spec)
    if not names:
        raise ConfigError("a study needs at least one threat: Linf, L2 or corruptions")
    lower = {t.lower(): t for t in THREATS}
    out = []
    for n in names:
        if n.lower() not in lower:
            raise did_you_mean("threat", n, THREATS)
        canon = lower[n.lower()]
        if canon in out:
            raise ConfigError(f"threat {canon} given more than once")
        out.append(canon)
    return [t for t in THREATS if t in out]


def legacy_layout(threats) -> bool:
    """True for a study of one adversarial threat alone: ``runs/<dataset>-<cell>`` and ``threat:`` in
    ``study.yaml``, as studies were written before a study held several threats (so they resume)."""
    threats = list(threats)
    return len(threats) == 1 and threats[0] in ADVERSARIAL


@dataclass
class StudyCell:
    """One run of a study: a threat, a dataset, a cell (``reference`` / ``pixel`` / ``valid``) and its config."""

    dataset: str
    cell: str
    cfg: SweepConfig
    threat: str = "Linf"
    legacy: bool = False

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.cell}" if self.legacy else f"{self.threat}-{self.dataset}-{self.cell}"


@dataclass
class StudySpec:
    """What a user asked for (``study.yaml``); ``options`` are sweep options applied to every cell.

    ``threats`` is a list (``["Linf", "L2", "corruptions"]``); a string is read as a comma list.
    """

    study: str
    model: str
    datasets: list
    threats: list
    protocols: list
    out: str
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.threats, str):
            from ctrobust.attacks import split_list

            self.threats = split_list(self.threats)

    @property
    def threat(self) -> str:
        """The threats as one label (``Linf`` or ``Linf,L2,corruptions``)."""
        return ",".join(self.threats)

    def asked(self) -> dict:
        threats = list(self.threats)
        which = {"threat": threats[0]} if legacy_layout(threats) else {"threats": threats}
        return {"study": self.study, "model": self.model, "datasets": list(self.datasets), **which,
                "protocols": list(self.protocols),
                "options": {k: v for k, v in sorted(self.options.items()) if v is not None}}


#: sweep options a user may set for a study (they shrink it or say where to run); the rest is the paper's.
STUDY_OPTIONS = SweepConfig.study_fields()


def _cells_for(protocols, threat: str = "Linf") -> list[str]:
    cells = []
    if "reference" in protocols:
        cells.append("reference")
    if "valid" in protocols:
        if "reference" in protocols and threat in ADVERSARIAL:
            cells.append("pixel")  # the decomposition's middle step: valid threat, the reference's CT scope
        cells.append("valid")
    return cells


#: study options of the corruptions cells only (``--corruptions``, ``--severities``; default all, as the paper)
CORRUPTION_OPTIONS = ("corruptions", "severities")
#: study options that mean nothing without an attack: not passed to a corruptions cell
_ATTACK_OPTIONS = ("attacks", "engine", "data", "subset")


def _cell_config(paper, model: str, threat: str, d: str, cell: str, opts: dict, run_dir: Path) -> SweepConfig:
    """The validated config of one cell: the paper's settings, the user's options, the cell's protocol."""
    if threat == "corruptions":
        # RobustBench's corruptions_evaluation: the first n_examples of each (corruption, severity) block,
        # no attack, so the protocol is always valid and the cells differ by CT scope alone
        base = {"model": paper_model(model, d), "dataset": d, "threat": "corruptions", "corruptions": "all",
                "severities": "all", "betas": paper.betas, "coeff": paper.coeff, "seeds": list(paper.seeds),
                "n_examples": paper.n_examples, "out": str(run_dir)}
        base.update({k: v for k, v in opts.items() if k not in _ATTACK_OPTIONS})
        base.update(protocol="valid", ct_scope="modules" if cell == "reference" else "all")
    else:
        data = str(opts.get("data", "full")).lower()
        # the bundled images (foolbox's first 20) do not hold every class: they cannot be class-balanced
        subset = "balanced" if d != "imagenet" and data == "full" else "first"
        base = {"model": paper_model(model, d), "dataset": d, "threat": threat,
                "eps": paper.eps[threat], "betas": paper.betas, "coeff": paper.coeff,
                "seeds": list(paper.seeds), "n_examples": paper.n_examples, "subset": subset,
                "attacks": "standard", "out": str(run_dir)}
        base.update(opts)
        if cell == "reference":
            # the protocol fixes the engine, the CT scope, the reference's batch size (for "auto") and
            # the single chunk (SweepConfig.validate): the study only names it
            base["protocol"] = "reference"
            for fixed in ("engine", "ct_scope", "chunk_size"):
                base.pop(fixed, None)
        else:
            base.update(protocol="valid", ct_scope="modules" if cell == "pixel" else "all")
    return SweepConfig.from_dict(base, source=f"study cell {threat}-{d}-{cell}").validate()


def plan_study(spec: StudySpec) -> list[StudyCell]:
    """Validated configs of every cell (raises ``ConfigError`` on bad options; touches nothing)."""
    if spec.study not in STUDIES:
        raise did_you_mean("study", spec.study, STUDIES)
    paper = STUDIES[spec.study]
    if spec.model not in paper.models:
        raise did_you_mean(f"{spec.study} model", spec.model, paper.models)
    from ctrobust.data import parse_dataset
    from ctrobust.protocols import get_protocol

    datasets = [parse_dataset(d) for d in spec.datasets]
    threats = parse_threats(spec.threats)
    protocols = [get_protocol(p).name for p in spec.protocols]
    if not datasets or not protocols:
        raise ConfigError("a study needs at least one dataset and one protocol")
    opts = {k: v for k, v in spec.options.items() if v is not None}
    # which corruptions and severities (shrinks the corruptions cells; the paper's: all 15 x 1-5)
    corr_opts = {k: opts.pop(k) for k in CORRUPTION_OPTIONS if k in opts}
    unknown = set(opts) - set(STUDY_OPTIONS)
    if unknown:
        raise ConfigError(str(did_you_mean("study option", sorted(unknown)[0], STUDY_OPTIONS)))
    out = Path(spec.out)
    legacy = legacy_layout(threats)
    cells = []
    for threat in threats:
        for d in datasets:
            for cell in _cells_for(protocols, threat):
                c = StudyCell(d, cell, None, threat, legacy)
                cell_opts = {**opts, **corr_opts} if threat == "corruptions" else opts
                c.cfg = _cell_config(paper, spec.model, threat, d, cell, cell_opts, out / "runs" / c.name)
                cells.append(c)
    return cells


def preflight(cells: list[StudyCell]) -> list[str]:
    """Every missing weight file or dataset of the study, one line each (empty: all there). Reads only."""
    from ctrobust.inputs import preflight as missing_inputs

    return missing_inputs(cells)


@dataclass
class StudyResult:
    out: Path
    cells: list
    report_md: Path
    units_run: int = 0
    units_skipped: int = 0


def _check_study_dir(spec: StudySpec) -> None:
    p = Path(spec.out) / "study.yaml"
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    if p.exists():
        old = yaml.safe_load(p.read_text()) or {}
        if old != spec.asked():
            from ctrobust.store import diff_settings

            diffs = diff_settings(old, spec.asked())
            raise ConfigError(f"study dir {str(out)!r} holds another study: " + "; ".join(diffs)
                              + ". Use another --out, or the original options to resume.")
    elif out.is_dir() and any(not q.name.startswith(".") for q in out.iterdir()):
        raise ConfigError(f"--out {str(out)!r} is a non-empty folder that is not a ctrobust study dir")


def run_study(spec: StudySpec, *, progress: bool = True) -> StudyResult:
    """Plan, check every input, run every cell, write the report and the figure.

    Raises:
        StudyInputError: weights or data missing for some cell (all listed; nothing written).
        ConfigError: bad options, or ``out`` holds another study.
    """
    from ctrobust.store import atomic_write_text
    from ctrobust.sweep import run_sweep

    cells = plan_study(spec)
    _check_study_dir(spec)
    problems = preflight(cells)
    if problems:
        raise StudyInputError(f"{len(problems)} input(s) of this study are missing (nothing was written):\n"
                              + "\n".join(f"  - {p}" for p in problems))
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.yaml", yaml.safe_dump(spec.asked(), sort_keys=False))
    run, skipped = 0, 0
    for c in cells:
        res = run_sweep(c.cfg, progress=progress)
        run += res.units_run
        skipped += res.units_skipped
    md = write_study_report(spec, cells)
    return StudyResult(out, cells, md, run, skipped)


def write_study_report(spec: StudySpec, cells: list[StudyCell]) -> Path:
    """Summarize every cell's stored results into ``report.md`` / ``report.json`` and draw the figure."""
    from ctrobust.plots import plot_study
    from ctrobust.report.run import summarize_run
    from ctrobust.report.study import (build_study_report, corruption_heldout, is_corruption_outcomes,
                                       render_study_json, render_study_markdown, summarize_cell)
    from ctrobust.store import atomic_write_text, load_outcomes, load_config

    out = Path(spec.out)
    results = []
    for c in cells:
        run_dir = Path(c.cfg.run_dir)
        outcomes = load_outcomes(run_dir)
        config = load_config(run_dir)
        if is_corruption_outcomes(outcomes):  # one row per (image, corruption, severity): its own held-out split
            heldout = corruption_heldout(outcomes)
        else:
            heldout = summarize_run(outcomes, config, select_on="half").heldout
        results.append(summarize_cell(c.dataset, c.cell, str(run_dir.relative_to(out)), outcomes, config,
                                      heldout=heldout, threat=c.threat))
    rep = build_study_report(spec.study, spec.model, parse_threats(spec.threats), results)
    atomic_write_text(out / "report.md", render_study_markdown(rep))
    atomic_write_text(out / "report.json", render_study_json(rep) + "\n")
    plot_study(rep, out / "figures")
    return out / "report.md"


def spec_from_options(study: str, *, model: str, datasets, threats, protocols, out, **options) -> StudySpec:
    """A :class:`StudySpec` from CLI-style values (lists as comma/space strings or lists; threats
    canonicalized: ``linf,l2`` -> ``["Linf", "L2"]``)."""
    from ctrobust.attacks import split_list

    return StudySpec(study=study, model=str(model).lower(), datasets=split_list(datasets),
                     threats=parse_threats(threats), protocols=[p.lower() for p in split_list(protocols)],
                     out=str(out), options={k: v for k, v in options.items() if v is not None})
