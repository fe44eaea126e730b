"""``ctrobust`` command line: argument parsing only; every command calls into the library.

Exit codes: 0 success, 1 runtime failure, 2 bad input (one-line error, no traceback; set
``CTROBUST_DEBUG=1`` to see tracebacks). A condition the user can fix -- a read-only, full or unwritable
output folder, a path through a file -- is bad input: one line naming the path and the fix. A closed
output pipe (``ctrobust report RUN | head``) is not an error: the command stops silently with 141, the
status a shell gives a command killed by SIGPIPE (as ``cat``/``yes`` would).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "add_config_options", "DEMO_CONFIG"]

# The offline default (configs/demo.yaml, shipped as package data): the naturally trained ResNet-18 shipped
# with pyautoattack on the 20 CIFAR-10 test images shipped with foolbox, a coarse beta grid, standard
# AutoAttack, CPU.
DEMO_CONFIG = Path(__file__).resolve().parent / "resources" / "demo.yaml"

SWEEP_EXAMPLES = """\
examples:
  # the paper's grid (beta 0.70..0.99 + baseline 1) for RobustBench's Standard WRN-28-10, 1000 balanced points
  ctrobust sweep --model Standard --eps 8/255
  # a quick look: 100 points, 4 betas, on the first GPU
  ctrobust sweep --model Standard --eps 8/255 --n-examples 100 --subset first --betas 0.8,0.9,0.95 --device cuda:0
  # the paper protocol from a file, overriding the output folder
  ctrobust sweep --config configs/standard_linf.yaml --out runs/std_paper
  # the CT paper's CIFAR ResNet-18, its reference checkpoint, CT on nn.ReLU modules only (as the reference)
  ctrobust sweep --model ct-paper/resnet18 --checkpoint ckpts/resnet18_cifar10_epoch200.pth --ct-scope modules
  # your own model: a factory returning an nn.Module on [0, 1] input
  ctrobust sweep --model my_nets.py:make_model --dataset cifar10 --out runs/mine
  # offline, with images shipped in packages and the exact pyautoattack path
  ctrobust sweep --model bundled/resnet18-cifar10 --data bundled --n-examples 20 --subset first \\
      --betas 0.9 --eps 1/255 --engine reference --device cpu
  # robustness curves: every point's minimal perturbation (FMN + FAB) at every beta, robust accuracy at every eps
  ctrobust sweep --model Standard --attacks min-norm --n-examples 200 --betas 0.8,0.9,0.95
  # both in one run dir: AutoAttack at --eps and the curves (one results.csv, the AutoAttack points on the curves)
  ctrobust sweep --model Standard --eps 8/255 --attacks standard,min-norm --curve-eps 0:16/255:1/255
  # interrupted? run the same command again: finished units are skipped
"""

REPRODUCE_EXAMPLES = """\
examples:
  # the paper's ResNet-50 row on a GPU machine (weights and data placed as the error message says)
  ctrobust reproduce ct-paper --model resnet50 --out runs/paper-r50
  # CIFAR-10 only, Linf only, the reference protocol only
  ctrobust reproduce ct-paper --model resnet18 --datasets cifar10 --threats Linf --protocols reference
  # the three threats of the paper (the default): Linf, L2 and common corruptions (CIFAR-10-C)
  ctrobust reproduce ct-paper --model resnet18 --datasets cifar10 --threats Linf,L2,corruptions
  # a tiny offline version (bundled images; a checkpoint in <model-dir>/ct-paper/)
  ctrobust reproduce ct-paper --model resnet18 --datasets cifar10 --data bundled --n-examples 20 \\
      --seeds 42 --betas 0.9 --attacks apgd-ce --model-dir ckpts --out runs/tiny-study
"""

MAIN_EXAMPLES = """\
examples:
  ctrobust demo                                   # offline: bundled model + images, AutoAttack + curves, CPU
  ctrobust sweep --model Standard --eps 8/255     # the main job (needs the checkpoint or network)
  ctrobust plot runs/demo runs/other --out figs   # overlay runs
  ctrobust report runs/demo                       # oracle vs held-out beta, intervals, masking flags
  ctrobust check runs/new --against runs/demo     # exit 1 if a result changed
  ctrobust models --dataset cifar10 --threat Linf --coverage
  ctrobust models --coverage --only ct-paper/resnet18   # CT coverage per scope (all / modules)
"""


_RUN_DIR_HELP = "a run dir, or a study dir of `ctrobust reproduce` (each of its cells' run dirs)"
_CELL_HELP = "of a study dir, only this cell: cifar10-valid, or valid (that cell of every dataset)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"ctrobust: error: {message} (see `{self.prog} --help`)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_options(p: argparse.ArgumentParser, config_cls=None, *, study: bool = False) -> None:
    """Add one ``--option`` per field of ``config_cls`` (default :class:`~ctrobust.config.SweepConfig`), from
    the fields' metadata (:func:`ctrobust.config.option`): help, group and argparse settings. Every option
    defaults to None, so the caller can tell what was given (CLI > YAML file > defaults).

    With ``study``, only the fields a study lets the user set, with their study help, in one group.
    """
    from dataclasses import fields

    from ctrobust.config import SweepConfig

    config_cls = config_cls or SweepConfig
    groups: dict = {}
    for f in fields(config_cls):
        meta = f.metadata
        if not f.init or "help" not in meta or (study and not meta.get("study")):
            continue
        group = "sweep options (shrink the study or say where it runs)" if study else meta["group"]
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        help_text = (meta.get("study_help") or meta["help"]) if study else meta["help"]
        groups[group].add_argument(_flag(f.name), dest=f.name, default=None, help=help_text,
                                   **dict(meta.get("argparse") or {}))
    if study:
        return
    # options of the command itself, not settings of the sweep
    where = next((g for name, g in groups.items() if name.startswith("where")), p)
    where.add_argument("--config", help="YAML file setting any option; the command line overrides it")
    groups.get("scale out", p).add_argument(
        "--resume", action="store_true", help="continue a run dir: only missing units run (re-running the same "
                                              "command does the same)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ctrobust", description="What does Curvature Tuning really do to adversarial robustness? "
                "RobustBench models x CT beta grid x AutoAttack, with per-example results.",
                epilog=MAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("sweep", help="clean and robust accuracy per CT beta (resumable)",
                       epilog=SWEEP_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(s)

    d = sub.add_parser("demo", help="offline demo: bundled ResNet-18 on 20 bundled CIFAR-10 images (CPU)",
                       epilog="example:\n  ctrobust demo --out runs/demo && ctrobust report runs/demo\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", default="runs/demo", help="run directory [runs/demo]")
    d.add_argument("--engine", help="fast | reference [fast]")
    d.add_argument("--device", help="[cpu]")
    d.add_argument("--quiet", action="store_true", default=None,
                   help="print only the summary and result paths (no progress bar, no per-beta lines)")

    pl = sub.add_parser("plot", help="redraw figures from stored results; several runs overlay",
                        epilog="example:\n  ctrobust plot runs/a runs/b --out figures\n",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    pl.add_argument("--cell", help=_CELL_HELP)
    pl.add_argument("--out", help="output folder [<first RUN_DIR>/figures]")
    pl.add_argument("--name", default="sweep", help="file stem [sweep]")

    c = sub.add_parser("check", help="regression check of a run against a golden run or JSON (exit 1 on change)",
                       epilog="examples:\n  ctrobust check runs/new --against runs/golden\n"
                              "  ctrobust check runs/new --write-golden golden.json\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("run_dir", metavar="RUN_DIR", help="the run dir to check")
    c.add_argument("--against", metavar="GOLDEN_RUN_OR_JSON",
                   help="a run dir or a golden JSON file (--write-golden) to compare with")
    c.add_argument("--tolerance", type=float, default=0.0,
                   help="allowed absolute change of an accuracy and fraction of changed examples [0]")
    c.add_argument("--write-golden", dest="write_golden", metavar="JSON",
                   help="write RUN_DIR's outcomes as a golden JSON file")

    r = sub.add_parser("report", help="reproduction report: held-out beta, intervals, McNemar, masking",
                       epilog="example:\n  ctrobust report runs/demo --format md > report.md\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    r.add_argument("--cell", help=_CELL_HELP)
    r.add_argument("--format", choices=("md", "json"), default="md", help="md (Markdown) | json [md]")
    r.add_argument("--select-on", dest="select_on", choices=("half", "same"), default="half",
                   help="choose beta on a held-out half (default) or on the reported points (the paper)")
    r.add_argument("--split-seed", dest="split_seed", type=int, default=0,
                   help="seed of the stratified split into selection and held-out halves (--select-on half) [0]")
    r.add_argument("--out", help="write the report to this file instead of stdout")

    m = sub.add_parser("models", help="list RobustBench models and the other model families (and CT coverage)",
                       epilog="examples:\n  ctrobust models --dataset cifar10 --threat Linf --coverage\n"
                              "  ctrobust models --coverage --only ct-paper/resnet18 --dataset cifar10\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagenet [cifar10]")
    m.add_argument("--threat", default="Linf", help="Linf | L2 (RobustBench's leaderboards) [Linf]")
    m.add_argument("--model-dir", dest="model_dir", help="checkpoint folder shown in the families list")
    m.add_argument("--coverage", action="store_true",
                   help="build each architecture without weights and count the ReLUs CT reaches, per CT scope "
                        "(all / modules)")
    m.add_argument("--only", nargs="+", metavar="NAME", help="only these models, of any family (with --coverage)")

    st = sub.add_parser("status", help="done / running / pending / failed / damaged units of a run dir (or of each "
                                       "cell of a study dir), ETA")
    st.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR_HELP)
    st.add_argument("--cell", help=_CELL_HELP)

    rp = sub.add_parser("reproduce", help="a study: the paper's robustness table under the reference protocol "
                                          "and the valid one, with a decomposition (resumable)",
                        epilog=REPRODUCE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("study", metavar="STUDY", help="ct-paper")
    rp.add_argument("--model", default="resnet50", help="resnet18 | resnet50 | resnet152 [resnet50]")
    rp.add_argument("--datasets", nargs="+", default=["cifar10,cifar100,imagenet"],
                    help="comma/space list [cifar10,cifar100,imagenet]")
    rp.add_argument("--threats", "--threat", dest="threats", nargs="+", default=["Linf,L2,corruptions"],
                    help="comma/space list of Linf | L2 | corruptions [all three, as the paper]; --threat is the "
                         "same option (one threat)")
    rp.add_argument("--protocols", nargs="+", default=["reference,valid"],
                    help="reference | valid, comma/space list [reference,valid: three cells per dataset and attack "
                         "threat, the reference, pixel (valid threat, the reference's CT scope) and valid]")
    rp.add_argument("--corruptions", help="corruptions cells: all or a list such as fog,snow [all, as the paper]")
    rp.add_argument("--severities", help="corruptions cells: all or e.g. 1,3,5 [all, as the paper]")
    rp.add_argument("--out", help="study directory [runs/reproduce-<study>-<model>-<threats joined by ->]")
    add_config_options(rp, study=True)
    for action in sub._choices_actions:  # `ctrobust COMMAND --help` opens with what the command does
        sub.choices[action.dest].description = sub.choices[action.dest].description or action.help
    return p


def _bad_input_types() -> tuple:
    from ctrobust._registry import UnknownNameError
    from ctrobust.config import ConfigError
    from ctrobust.ct import CTCoverageError

    types = [ConfigError, UnknownNameError, CTCoverageError]
    for mod, names in (("ctrobust.models", ("ModelUnavailableError", "ModelLoadError")),
                       ("ctrobust.data", ("DataUnavailableError",))):
        try:
            m = __import__(mod, fromlist=list(names))
        except ImportError:
            continue
        types += [getattr(m, n) for n in names if hasattr(m, n)]
    return tuple(types)


#: errno -> (what it means, what to do): the OS errors a user causes and can fix
_OS_FIXES = {
    errno.EROFS: ("is on a read-only file system", "write somewhere writable (--out DIR)"),
    errno.EACCES: ("is not writable (permission denied)", "use a folder you may write to (--out DIR) or change its "
                                                          "permissions"),
    errno.EPERM: ("is not writable (operation not permitted)", "use a folder you may write to (--out DIR)"),
    errno.ENOSPC: ("is on a full disk (no space left)", "free some space or write elsewhere (--out DIR); finished "
                                                        "units are kept, re-run the command to resume"),
    errno.EDQUOT: ("is over the disk quota", "free some space or write elsewhere (--out DIR); finished units are "
                                             "kept, re-run the command to resume"),
    errno.ENOTDIR: ("", "choose another path (--out DIR)"),
}


def _os_error_line(exc: OSError) -> str | None:
    """One line for an OS error the user can fix (see :data:`_OS_FIXES`), naming the path; None otherwise."""
    if exc.errno not in _OS_FIXES:
        return None
    what, fix = _OS_FIXES[exc.errno]
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    path = os.fsdecode(path) if path is not None else "the output"
    if exc.errno == errno.ENOTDIR:  # name the file that stands where a folder is needed
        blocker = next((q for q in [Path(path), *Path(path).parents] if q.is_file()), None)
        if blocker is not None:
            return f"{str(blocker)!r} is a file, not a folder, so {path!r} cannot be created: {fix}"
        return f"{path!r}: a part of the path is not a folder: {fix}"
    return f"{path!r} {what}: {fix}"


def _stdout_closed() -> int:
    """The reader of stdout went away (``| head``): stop quietly, and keep Python's exit flush quiet too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 141


def _cmd_sweep(a) -> int:
    from ctrobust.config import ConfigError, SweepConfig
    from ctrobust.store import RunReader

    given = {k: getattr(a, k, None) for k in SweepConfig.field_names()}
    config_path = a.config
    base = None
    if a.resume:
        # resume a run dir from its own configuration; options given now must agree with it
        out = given.get("out") or (SweepConfig.from_cli(given, config_path=a.config).run_dir
                                   if (a.config or given.get("model")) else None)
        if out is None:
            raise ConfigError("--resume needs --out RUN_DIR (or the options that name it)")
        run = RunReader(out)
        if not run.is_run_dir():
            raise ConfigError(f"--resume: {out} has no config.yaml; nothing to resume")
        if a.config:
            raise ConfigError("--resume reads the run dir's own config.yaml; drop --config")
        base, config_path = run.options(), None
        given["out"] = str(out)
    cfg = SweepConfig.from_cli(given, config_path=config_path, base=base)
    return _run(cfg)


def _run(cfg) -> int:
    from ctrobust.sweep import run_sweep

    res = run_sweep(cfg)
    print(f"ran {res.units_run} unit(s), {res.units_skipped} already done")
    if not cfg.quiet:
        print(f"results: {res.run_dir / 'results.csv'}\nfigure:  {res.run_dir / 'figures' / 'sweep.png'}")
        if cfg.suite.min_norm:
            print(f"curves:  {res.run_dir / 'curves.csv'}\nfigure:  {res.run_dir / 'figures' / 'curves.png'}")
    return 0


def _cmd_demo(a) -> int:
    from ctrobust.config import SweepConfig

    opts = {"out": a.out, **{k: getattr(a, k) for k in ("engine", "device", "quiet")}}
    return _run(SweepConfig.from_yaml(DEMO_CONFIG, **opts))


def _cmd_plot(a) -> int:
    from ctrobust.plots import plot_runs
    from ctrobust.store import expand_run_dirs

    out = a.out or Path(a.run_dirs[0]) / "figures"
    for p in plot_runs(expand_run_dirs(a.run_dirs, a.cell), out_dir=out, name=a.name):
        print(p)
    return 0


def _cmd_check(a) -> int:
    from ctrobust.check import check_run, write_golden

    if a.write_golden:
        write_golden(a.run_dir, a.write_golden)
        print(f"wrote {a.write_golden}")
        if not a.against:
            return 0
    if not a.against:
        from ctrobust.config import ConfigError
        raise ConfigError("check needs --against GOLDEN_RUN_OR_JSON (or --write-golden JSON)")
    problems = check_run(a.run_dir, a.against, tolerance=a.tolerance)
    if problems:
        print(f"ctrobust check: {len(problems)} difference(s) beyond tolerance {a.tolerance:g}:")
        for line in problems:
            print("  " + line)
        return 1
    print(f"ctrobust check: {a.run_dir} matches {a.against} (tolerance {a.tolerance:g})")
    return 0


def _cmd_report(a) -> int:
    from ctrobust.report import build_report

    from ctrobust.store import expand_run_dirs

    text = build_report(expand_run_dirs(a.run_dirs, a.cell), fmt=a.format, select_on=a.select_on, split_seed=a.split_seed)
    if a.out:
        from ctrobust.store import atomic_write_text
        atomic_write_text(a.out, text if text.endswith("\n") else text + "\n")
        print(a.out)
    else:
        print(text)
    return 0


def _cmd_models(a) -> int:
    from ctrobust import models
    from ctrobust.ct import SCOPES

    if not a.coverage:
        for name in models.list_models(a.dataset, a.threat):
            print(name)
        print("\nmodel families (--model NAME; weights):")
        for fam in models.model_families():
            names = fam.names(a.dataset) if fam.names is not None else []
            datasets = ", ".join(fam.datasets) or "any dataset"
            print(f"  {fam.pattern}  [{datasets}]  {fam.about}")
            if names and fam.name != "bundled":
                print(f"      names: {', '.join(names)}")
            print(f"      weights: {fam.weights(a.dataset, a.model_dir)}")
        return 0
    scopes = list(SCOPES)
    head = "".join(f"  {s + ':':<9}{'tuned':>6} {'untouched':>9} {'missed':>6} {'CT':<8}" for s in scopes)
    print(f"{'model':<48} {'relu mod':>8} {'relu fn':>7} {'leaky':>5}{head}  other activations")

    names = list(a.only) if a.only else models.list_models(a.dataset, a.threat)
    done = [0]
    live = sys.stderr.isatty()  # a progress line on a terminal only; the table on stdout stays as it is

    def progress():
        if live and done[0] < len(names):
            print(f"\r\033[K[{done[0] + 1}/{len(names)}] building {names[done[0]]} ...", end="", file=sys.stderr,
                  flush=True)

    def show(r):
        if live:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        done[0] += 1
        try:
            _show(r)
        finally:
            progress()

    def _show(r):
        if not r["by_scope"]:  # the architecture could not be built/run
            cells = "".join(f"  {'':<9}{'-':>6} {'-':>9} {'-':>6} {r['status']:<8}" for _ in scopes)
            print(f"{r['name']:<48} {'-':>8} {'-':>7} {'-':>5}{cells}  ({r['error']})", flush=True)
            return
        cov = r["coverage"]  # a ctrobust.ct.Coverage (first scope); counts are the same under every scope
        cells = "".join(f"  {'':<9}{c.tuned:>6} {c.untouched:>9} {c.missed:>6} {r['status_by_scope'][s]:<8}"
                        for s, c in r["by_scope"].items())
        print(f"{r['name']:<48} {cov.relu_modules:>8} {cov.relu_functional:>7} {cov.leaky_relu:>5}{cells}  "
              f"{r['unsupported']}", flush=True)

    progress()
    rows = models.coverage_table(a.dataset, a.threat, names=names, on_row=show, scopes=scopes)
    counts = {}
    for r in rows:
        counts[r.get("status")] = counts.get(r.get("status"), 0) + 1
    print("CT status: full = every activation is a ReLU CT tunes; partial = ReLUs tuned but other "
          "activations remain, or the scope leaves some ReLUs untouched; none = no ReLU tuned (CT does nothing); "
          "scope all = every ReLU the forward computes, modules = nn.ReLU submodules only (the CT reference); "
          "under scope all: " +
          ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))))
    return 0


def format_status(st) -> str:
    """Human-readable lines of a :class:`ctrobust.store.RunStatus`: counts, ETA, per beta, failures."""
    from ctrobust.store import UNIT_STATES

    shown = [s for s in UNIT_STATES if s != "damaged" or st.count(s)]
    lines = [f"{st.run_dir}: {len(st.plan)} units - " + ", ".join(f"{st.count(s)} {s}" for s in shown)]
    left = st.count("running") + st.count("pending")
    workers = max(1, st.running_items)
    if st.unit_seconds and left:
        per_unit = sum(st.unit_seconds) / len(st.unit_seconds)
        lines.append(f"ETA ~{per_unit * left / workers / 60:.1f} min at {workers} worker(s) "
                     f"({per_unit:.1f} s per unit so far)")
    for beta in sorted({u.beta for u in st.plan}, reverse=True):
        us = [u for u in st.plan if u.beta == beta]
        d = sum(st.state[u.key] == "done" for u in us)
        lines.append(f"  beta={beta:<6g} {d}/{len(us)} done" + ("" if d == len(us) else
                     f" ({sum(st.state[u.key] == 'running' for u in us)} running)"))
    for item, f in st.failures.items():
        lines.append(f"  {item}: {f.attempts} failed attempt(s), last: {f.error}")
    for key, why in st.damaged.items():
        lines.append(f"  damaged: units/{key}.npz ({why}); the next sweep moves it to units/damaged/ and "
                     "recomputes it")
    return "\n".join(lines)


def _cmd_status(a) -> int:
    from ctrobust.store import expand_run_dirs, read_status

    print("\n".join(format_status(read_status(d)) for d in expand_run_dirs([a.run_dir], a.cell)))
    return 0


def _cmd_reproduce(a) -> int:
    from ctrobust.config import SweepConfig
    from ctrobust.study import parse_threats, run_study, spec_from_options

    threats = parse_threats(a.threats)
    out = a.out or f"runs/reproduce-{a.study}-{str(a.model).lower()}-{'-'.join(threats)}"
    opts = {k: getattr(a, k, None) for k in SweepConfig.study_fields()}
    opts.update(corruptions=a.corruptions, severities=a.severities)
    spec = spec_from_options(a.study, model=a.model, datasets=a.datasets, threats=threats, protocols=a.protocols,
                             out=out, **opts)
    res = run_study(spec)
    print(f"ran {res.units_run} unit(s), {res.units_skipped} already done")
    print(f"report: {res.report_md}\nfigure: {res.out / 'figures' / 'study.png'}")
    return 0


_COMMANDS = {"sweep": _cmd_sweep, "demo": _cmd_demo, "plot": _cmd_plot, "check": _cmd_check,
             "report": _cmd_report, "models": _cmd_models, "status": _cmd_status, "reproduce": _cmd_reproduce}


def main(argv=None) -> int:
    """Entry point of the ``ctrobust`` console script. Returns the exit code."""
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if not a.command:
        parser.print_help()
        return 2
    debug = bool(os.environ.get("CTROBUST_DEBUG"))
    import warnings

    from ctrobust.errors import InputWarning

    shown = warnings.showwarning

    def one_line(message, category, *rest, **kw):  # an input warning as `ctrobust: warning: ...`, not file:line
        if issubclass(category, InputWarning):
            print(f"ctrobust: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *rest, **kw)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once", InputWarning)
            warnings.showwarning = one_line
            code = _COMMANDS[a.command](a)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
        return code
    except KeyboardInterrupt:
        print("ctrobust: interrupted; finished units are kept, re-run the command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: classify, print one line
        if debug:
            raise
        line = _os_error_line(exc) if isinstance(exc, OSError) else None
        if line is not None:
            print(f"ctrobust: error: {line}", file=sys.stderr)
            return 2
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if getattr(exc, "all_lines", False):  # a list of every missing input (one per line)
            msg = str(exc).strip()
        if isinstance(exc, _bad_input_types()):
            print(f"ctrobust: error: {msg}", file=sys.stderr)
            return 2
        print(f"ctrobust: failed: {type(exc).__name__}: {msg} (CTROBUST_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
