"""Figures from stored results only (``results.json`` / ``outcomes.npz`` of one or more run dirs).

``plot_runs`` draws, per run: clean and robust accuracy against beta with 95 % Wilson intervals and the
beta = 1 baseline marked (left), and which attack broke the examples at each beta (right; a point broken
only by the gradient-free Square attack is a gradient-masking warning sign). Several runs overlay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctrobust.attacks import ATTACKS, attack_order
from ctrobust.threat import format_eps

__all__ = ["plot_runs", "plot_study"]

#: plot colour per attack, from the registry (:attr:`ctrobust.attacks.AttackSpec.color`).
_ATTACK_COLORS = {name: spec.color for name, spec in ATTACKS.items()}


def _per_beta(rows: list[dict], key: str):
    """Mean over seeds per beta of ``key`` and of its interval bounds."""
    betas = sorted({r["beta"] for r in rows})
    mean, lo, hi = [], [], []
    for b in betas:
        rs = [r for r in rows if r["beta"] == b]
        mean.append(np.mean([r[f"{key}_acc"] for r in rs]))
        lo.append(np.mean([r[f"{key}_lo"] for r in rs]))
        hi.append(np.mean([r[f"{key}_hi"] for r in rs]))
    return np.array(betas), np.array(mean), np.array(lo), np.array(hi)


def _save(fig, out_dir: Path, name: str, formats) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<name>.<fmt>`` for each format and close it."""
    import matplotlib.pyplot as plt

    paths = []
    for fmt in formats:
        p = out_dir / f"{name}.{fmt}"
        tmp = p.with_name(f".{p.name}.tmp.{fmt}")
        fig.savefig(tmp, dpi=150, format=fmt)
        tmp.replace(p)  # atomic: an interrupted redraw never leaves half a figure
        paths.append(p)
    plt.close(fig)
    return paths


def plot_runs(run_dirs, out_dir=None, *, name: str = "sweep", formats=("png", "pdf")) -> list[Path]:
    """Draw the sweep figure for one or more run dirs.

    Args:
        run_dirs: run directories (each with ``results.json``).
        out_dir: where to write; default ``<first run>/figures``.
        name: file stem.
        formats: file formats to write.

    Returns:
        The written file paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ctrobust.store import load_results

    run_dirs = [Path(r) for r in run_dirs]
    runs = [(r, load_results(r)) for r in run_dirs]
    out_dir = Path(out_dir) if out_dir else run_dirs[0] / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)

    fig, (ax, axb) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.35, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    engines = {rows[0].get("engine") for _, rows in runs if rows}
    for i, (rd, rows) in enumerate(runs):
        if not rows:
            continue
        r0 = rows[0]
        proto = " [reference protocol]" if r0.get("protocol") == "reference" else ""
        if len(engines) > 1:  # runs that differ only by engine must still be told apart
            proto += f" [{r0.get('engine')} engine]"
        label = f"{r0['model']} ({r0['dataset']}, {r0['threat']} eps={format_eps(r0['eps'])}){proto}" \
            if len(runs) > 1 else ""
        c = colors[i % len(colors)]
        for key, style, marker in (("clean", "--", "s"), ("robust", "-", "o")):
            b, m, lo, hi = _per_beta(rows, key)
            ax.plot(b, 100 * m, style, marker=marker, ms=3.5, color=c,
                    label=f"{key} {label}".strip())
            ax.fill_between(b, 100 * lo, 100 * hi, color=c, alpha=0.15 if key == "robust" else 0.07, lw=0)
            base = m[b == 1.0]
            if base.size:
                ax.axhline(100 * base[0], color=c, lw=0.7, ls=":", alpha=0.8)
        ax.plot([1.0], [100 * _per_beta(rows, "robust")[1][-1]], marker="*", ms=12, color=c, mec="k",
                zorder=5, label="beta = 1 (original model)" if i == 0 else None)
        if i == 0:
            # stacked in run order (the registry's), whatever the column order of results.json
            attacks = attack_order([k[len("broken_"):] for k in r0 if k.startswith("broken_")])
            betas = sorted({r["beta"] for r in rows})
            width = (min(np.diff(betas)) if len(betas) > 1 else 0.01) * 0.8
            bottom = np.zeros(len(betas))
            clean_err = np.array([np.mean([1 - r["clean_acc"] for r in rows if r["beta"] == bt])
                                  for bt in betas]) * 100
            axb.bar(betas, clean_err, width=width, bottom=bottom, label="misclassified clean", color="#bbbbbb")
            bottom += clean_err
            for a in attacks:
                vals = np.array([np.mean([r[f"broken_{a}"] / r["n"] for r in rows if r["beta"] == bt])
                                 for bt in betas]) * 100
                axb.bar(betas, vals, width=width, bottom=bottom, label=a, color=_ATTACK_COLORS.get(a))
                bottom += vals
            axb.set_title(f"why points are not robust: first attack to break them"
                          f"{' (' + r0['model'] + ')' if len(runs) > 1 else ''}", fontsize=9)
    first = runs[0][1][0] if runs[0][1] else {}
    n = first.get("n", "?")
    seeds_txt = ",".join(str(s) for s in sorted({r["seed"] for r in runs[0][1]}))
    title = (f"Curvature Tuning: {first.get('model', '?')} on {first.get('dataset', '?')}, "
             f"{first.get('threat', '?')} eps={format_eps(first.get('eps', 0))}\n"
             f"{first.get('attacks', '')} AutoAttack ({first.get('engine', '')} engine), n={n} per beta, "
             f"seed(s) {seeds_txt}, c={first.get('coeff', '?')}")
    if len(runs) > 1:
        title = "Curvature Tuning: clean and robust accuracy per beta"
    if any(rows and rows[0].get("protocol") == "reference" for _, rows in runs):
        title += "\nreference protocol: normalized-space attack with a [0, 1] clamp, NOT the stated eps-ball"
    if any(rows and rows[0].get("data") == "timing" for _, rows in runs):
        title += "\nTIMING WORKLOAD: bundled images repeated as distinct rows; accuracies are not a measurement"
    fig.suptitle(title, fontsize=10)
    ax.set_xlabel(r"CT $\beta$ (1 = original ReLU network)")
    ax.set_ylabel("accuracy (%) with 95 % Wilson interval")
    ax.set_ylim(-2, 102)
    ax.set_title("clean (dashed) and robust (solid) accuracy", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    axb.set_xlabel(r"CT $\beta$")
    axb.set_ylabel("examples (%)")
    axb.set_ylim(0, 102)
    axb.grid(alpha=0.3, axis="y")
    axb.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="first broken by", title_fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, name, formats)


_CELL_STYLE = {"reference": "#c44e52", "pixel": "#dd8452", "valid": "#4c72b0"}


def plot_study(report, out_dir, *, name: str = "study", formats=("png", "pdf")) -> list[Path]:
    """The study figure: clean (dashed) and robust (solid) accuracy against beta, one panel per dataset,
    one colour per cell (reference protocol, pixel-space threat, valid protocol).

    Args:
        report: a :class:`ctrobust.report.study.StudyReport`.
        out_dir: where to write ``<name>.png`` / ``.pdf``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets = list(report.datasets)
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(8.0, 5.2 * len(datasets)), 4.8), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for c in (c for c in report.cells if c.dataset == d):
            b = np.array([p.beta for p in c.curve])
            color = _CELL_STYLE.get(c.cell, None)
            label = c.cell + (" (NOT the stated eps-ball)" if c.note else "")
            ax.plot(b, [p.robust_pct for p in c.curve], "-o", ms=3, color=color, label=f"robust, {label}")
            ax.plot(b, [p.clean_pct for p in c.curve], "--", color=color, alpha=0.7, label=f"clean, {c.cell}")
        ax.set_title(d, fontsize=10)
        ax.set_xlabel(r"CT $\beta$ (1 = original network)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    title = f"Curvature Tuning, the paper's robustness table: {report.model}, {report.threat}"
    if any(c.note for c in report.cells):
        title += "\nreference = normalized-space attack with a [0, 1] clamp there: NOT the stated eps-ball"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, name, formats)
