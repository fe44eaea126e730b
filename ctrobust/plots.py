"""Figures from stored results only (``results.json`` / ``outcomes.npz`` of one or more run dirs).

``plot_runs`` draws, per run: clean and robust accuracy against beta with 95 % Wilson intervals and the
beta = 1 baseline marked (left), and which attack broke the examples at each beta (right; a point broken
only by the gradient-free Square attack is a gradient-masking warning sign). Several runs overlay. When the
(first) run holds minimum-norm distances it also draws ``plot_curves``: robust accuracy against eps for
every beta (left) and the median minimal perturbation against beta (right), one row per run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctrobust import stats
from ctrobust.attacks import ATTACKS, attack_order
from ctrobust.curves import default_curve_eps, has_distances, parse_curve_eps, robust_at
from ctrobust.store import atomic_write_bytes
from ctrobust.threat import CORRUPTIONS, format_eps

__all__ = ["plot_runs", "plot_curves", "curve_table", "plot_study"]

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
    import io

    import matplotlib.pyplot as plt

    paths = []
    try:
        for fmt in formats:
            p = out_dir / f"{name}.{fmt}"
            buf = io.BytesIO()
            fig.savefig(buf, dpi=150, format=fmt)
            atomic_write_bytes(p, buf.getvalue())  # an interrupted redraw never leaves half a figure
            paths.append(p)
    finally:
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
    if runs[0][1] and runs[0][1][0].get("threat") == CORRUPTIONS:  # accuracy per severity, no attack to show
        return plot_corruptions(run_dirs, out_dir, name="corruptions" if name == "sweep" else name, formats=formats)

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
            # one slot per beta that was run (a numeric axis leaves empty slots between unevenly spaced betas)
            slots, width = np.arange(len(betas)), 0.8
            bottom = np.zeros(len(betas))
            clean_err = np.array([np.mean([1 - r["clean_acc"] for r in rows if r["beta"] == bt])
                                  for bt in betas]) * 100
            axb.bar(slots, clean_err, width=width, bottom=bottom, label="misclassified clean", color="#bbbbbb")
            bottom += clean_err
            for a in attacks:
                vals = np.array([np.mean([r[f"broken_{a}"] / r["n"] for r in rows if r["beta"] == bt])
                                 for bt in betas]) * 100
                axb.bar(slots, vals, width=width, bottom=bottom, label=a, color=_ATTACK_COLORS.get(a))
                bottom += vals
            axb.set_xticks(slots, [f"{bt:g}" for bt in betas], rotation=90 if len(betas) > 12 else 0,
                           fontsize=7 if len(betas) > 12 else 8)
            axb.set_xlim(-0.6, len(betas) - 0.4)
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
    # below the axes: inside, it covers the accuracy bands it explains
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    axb.set_xlabel(r"CT $\beta$")
    axb.set_ylabel("examples (%)")
    axb.set_ylim(0, 102)
    axb.grid(alpha=0.3, axis="y")
    axb.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="first broken by", title_fontsize=7)
    fig.tight_layout()
    paths = _save(fig, out_dir, name, formats)
    if _has_distances(run_dirs[0]):
        paths += plot_curves(run_dirs, out_dir, name="curves" if name == "sweep" else f"{name}_curves",
                             formats=formats)
    return paths


def _has_distances(run_dir) -> bool:
    """The run's stored outcomes hold minimum-norm distances (False when it has no outcomes to read)."""
    from ctrobust.store import load_outcomes

    try:
        outcomes = load_outcomes(run_dir)
    except (OSError, ValueError, KeyError):  # no outcomes: the sweep figure is all there is to draw
        return False
    return has_distances(outcomes)


# ==================================================================================================
# robustness curves from minimum-norm distances
#: bootstrap replicates of the median band in the curve figure (the report's intervals use its own n_boot).
CURVE_N_BOOT = 1000


def _seed_beta_groups(outcomes):
    """``{(seed, beta): row indices}`` with betas keyed as the report keys them (6 decimals)."""
    seeds = np.asarray(outcomes["seed"]).astype(np.int64)
    betas = np.round(np.asarray(outcomes["beta"], dtype=np.float64), 6)
    groups: dict = {}
    for key in sorted(set(zip(seeds.tolist(), betas.tolist()))):
        groups[key] = np.flatnonzero((seeds == key[0]) & (betas == key[1]))
    return groups


def curve_table(outcomes, grid) -> dict[float, np.ndarray]:
    """Robust accuracy at every eps of ``grid`` per beta, from minimum-norm distances, mean over seeds.

    An example is robust at eps when ``curves.robust_at(min_norm, eps)``; rows whose distance was not
    measured (NaN) are left out of their seed's accuracy.

    Args:
        outcomes: the store's outcome columns with ``seed``, ``beta`` and ``min_norm``.
        grid: ``(E,)`` eps values in the threat's norm ([0, 1] pixel units).

    Returns:
        ``{beta: (E,) float64 fractions in [0, 1]}``, betas ascending (rounded to 6 decimals); a beta with no
        measured distance in any seed is left out.

    Example:
        >>> curve_table({"seed": [0, 0], "beta": [1.0, 1.0], "min_norm": [0.01, np.inf]}, [0.0, 0.02])
        {1.0: array([1. , 0.5])}
    """
    grid = np.asarray(grid, dtype=np.float64)
    dist = np.asarray(outcomes["min_norm"], dtype=np.float64)
    per_beta: dict = {}
    for (_, beta), rows in _seed_beta_groups(outcomes).items():
        d = dist[rows]
        d = d[~np.isnan(d)]
        if d.size:
            per_beta.setdefault(beta, []).append([robust_at(d, e).mean() for e in grid])
    return {b: np.mean(np.asarray(v, dtype=np.float64), axis=0) for b, v in sorted(per_beta.items())}


def _median_by_beta(outcomes, n_boot: int, seed: int = 0):
    """Per beta (ascending): median distance and its bootstrap interval, each the mean over seeds of the
    seed's value (``inf`` when a seed's is: never ``nan``)."""
    dist = np.asarray(outcomes["min_norm"], dtype=np.float64)
    by_beta: dict = {}
    for (s, beta), rows in _seed_beta_groups(outcomes).items():
        d = dist[rows]
        if np.isnan(d).all():
            continue
        # per (seed, beta) generator: the band does not depend on which other runs or betas are drawn
        m = stats.median_interval(d, n_boot, [seed, int(s), int(round(beta * 1e6))])
        by_beta.setdefault(beta, []).append((m.median, m.lo, m.hi))
    betas = np.array(sorted(by_beta))
    vals = np.array([np.mean(by_beta[b], axis=0) for b in betas]).reshape(-1, 3)
    return betas, vals[:, 0], vals[:, 1], vals[:, 2]


def _bounded_by_beta(outcomes, conf: float = 0.95):
    """Per beta (ascending): robust accuracy of the bounded suite's flags and its Wilson interval (fractions),
    each the mean over seeds (as ``plot_runs`` averages results rows)."""
    robust = np.asarray(outcomes["robust"]).astype(bool)
    by_beta: dict = {}
    for (_, beta), rows in _seed_beta_groups(outcomes).items():
        k, n = int(robust[rows].sum()), int(rows.size)
        lo, hi = stats.wilson_interval(k, n, conf)
        by_beta.setdefault(beta, []).append((k / n, lo, hi))
    betas = np.array(sorted(by_beta))
    vals = np.array([np.mean(by_beta[b], axis=0) for b in betas]).reshape(-1, 3)
    return betas, vals[:, 0], vals[:, 1], vals[:, 2]


def _curve_grid(rc) -> list[float]:
    """The run's curve eps grid: its ``curve_eps`` option when set, else the threat's default grid."""
    threat = rc.threat or "Linf"
    spec = (rc.options or {}).get("curve_eps")
    return parse_curve_eps(spec, threat) if spec is not None else default_curve_eps(threat)


def _beta_colors(betas):
    """Colour per beta: a sequential map over beta < 1 (dark = small beta), black for beta = 1; and the
    ``ScalarMappable`` of the map (for the colour bar), ``None`` without beta < 1."""
    import matplotlib as mpl

    below = [b for b in betas if b < 1.0]
    cmap = mpl.colormaps["viridis"]
    colors = {1.0: "black"}
    if not below:
        return colors, None
    lo, hi = min(below), max(below)
    norm = mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
    for b in below:
        colors[b] = cmap(0.92 * norm(b))  # the palest yellow end of viridis is hard to see on white
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=mpl.colors.ListedColormap(cmap(np.linspace(0, 0.92, 256))))
    return colors, sm


def _eps_axis(ax, threat: str, grid) -> None:
    """x axis in eps: ``k/255`` ticks for Linf (at most ~9 of them), plain numbers for L2."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    if threat == "Linf":
        step = max(1, round(max(grid) * 255 / 8)) / 255
        ax.xaxis.set_major_locator(MultipleLocator(step))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_eps(x) if x > 1e-12 else "0"))
    ax.set_xlabel(f"eps ({threat} norm, [0, 1] pixel units)")


def _draw_curves(ax, outcomes, rc, grid, colors) -> None:
    """Left panel: robust accuracy against eps per beta, and the bounded suite's points at the run's eps."""
    table = curve_table(outcomes, grid)
    for b, acc in table.items():
        base = b == 1.0
        ax.plot(grid, 100 * acc, color=colors[b], lw=2.4 if base else 1.1, zorder=4 if base else 2,
                alpha=1.0 if base else 0.85, label="β = 1 (original model)" if base else None)
    if rc.attack_names and rc.eps is not None:
        eps = float(rc.eps)
        betas, acc, lo, hi = _bounded_by_beta(outcomes)
        # betas side by side around eps (ascending left to right), so the error bars do not hide each other
        step = np.min(np.diff(grid)) if len(grid) > 1 else eps / 10
        offsets = (np.linspace(-0.45, 0.45, betas.size) if betas.size > 1 else np.zeros(1)) * step
        for i, b in enumerate(betas):
            ax.errorbar([eps + offsets[i]], [100 * acc[i]], yerr=[[100 * (acc[i] - lo[i])], [100 * (hi[i] - acc[i])]],
                        fmt="D" if b == 1.0 else "o", ms=4 if b == 1.0 else 3, color=colors.get(b, "grey"),
                        mec="k" if b == 1.0 else colors.get(b, "grey"), elinewidth=0.8, capsize=1.5, zorder=5,
                        label=(f"AutoAttack at eps={format_eps(eps)} ({', '.join(rc.attack_names)}; 95 % Wilson)"
                               if i == 0 else None))
        ax.axvline(eps, color="grey", lw=0.7, ls=":", zorder=1)
    _eps_axis(ax, rc.threat or "Linf", grid)
    ax.set_xlim(min(grid), max(grid) * 1.03 if max(grid) > 0 else 1)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title("robust accuracy against eps, from the minimal perturbations found (mean over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def _draw_medians(ax, outcomes, threat: str, colors) -> None:
    """Right panel: median minimal perturbation against beta with its bootstrap band; inf medians (more than
    half never broken) are drawn as arrows at the top."""
    betas, med, lo, hi = _median_by_beta(outcomes, CURVE_N_BOOT)
    scale, unit = (255.0, " (k/255)") if threat == "Linf" else (1.0, "")
    finite = np.concatenate([v[np.isfinite(v)] for v in (med, lo, hi)]) * scale
    top = 1.15 * finite.max() if finite.size and finite.max() > 0 else 1.0
    clip = lambda v: np.where(np.isfinite(v), v * scale, top)  # noqa: E731 - inf drawn at the top edge
    ax.fill_between(betas, clip(lo), clip(hi), color="C0", alpha=0.2, lw=0,
                    label=f"95 % bootstrap interval ({CURVE_N_BOOT} replicates)")
    fin = np.isfinite(med)
    ax.plot(betas[fin], med[fin] * scale, "-o", ms=3, color="C0", label="median over examples (mean over seeds)")
    if (~fin).any():
        ax.plot(betas[~fin], np.full((~fin).sum(), top), "^", ms=6, color="C0", clip_on=False,
                label="median inf (over half never broken)")
    k1 = np.flatnonzero(betas == 1.0)
    if k1.size:
        y1 = clip(med[k1])[0]
        ax.plot([1.0], [y1], marker="*", ms=12, color="C0", mec="k", zorder=5, label="beta = 1 (original model)")
        if fin[k1[0]]:
            ax.axhline(y1, color="C0", lw=0.7, ls=":", alpha=0.8)
    ax.set_ylim(0, top * 1.04)
    ax.set_xlabel(r"CT $\beta$ (1 = original ReLU network)")
    ax.set_ylabel(f"median minimal perturbation, {threat}{unit}")
    ax.set_title("median minimal perturbation found (larger = more robust)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_curves(run_dirs, out_dir=None, name: str = "curves", formats=("png", "pdf")) -> list[Path]:
    """Draw the robustness-curve figure of the run dirs that hold minimum-norm distances (one row each).

    Left: robust accuracy (%) against eps, one line per beta (a sequential colour map over beta < 1, with a
    colour bar; beta = 1 black and thicker), from ``curves.robust_at`` on the run's ``curve_eps`` grid (else
    ``curves.default_curve_eps``), averaged over seeds; where a bounded suite also ran, its robust accuracy
    per beta at the run's eps as markers in the beta's colour with 95 % Wilson error bars (betas side by side
    around eps). Right: the median minimal perturbation against beta with its percentile bootstrap band
    (:func:`ctrobust.stats.median_interval`, :data:`CURVE_N_BOOT` replicates; mean over seeds), beta = 1
    starred as in the sweep figure. Linf distances in k/255.

    Args:
        run_dirs: run directories (``outcomes.npz`` and ``config.yaml``); runs without distances are skipped.
        out_dir: where to write; default ``<first run>/figures``.
        name: file stem.
        formats: file formats to write.

    Returns:
        The written file paths.

    Raises:
        ValueError: no run holds distances.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ctrobust.config import RunConfig
    from ctrobust.store import load_config, load_outcomes

    run_dirs = [Path(r) for r in run_dirs]
    runs = []
    for rd in run_dirs:
        outcomes = load_outcomes(rd)
        if has_distances(outcomes):
            runs.append((rd, outcomes, RunConfig.of(load_config(rd))))
    if not runs:
        raise ValueError(f"no run has minimum-norm distances ({', '.join(map(str, run_dirs))})")
    out_dir = Path(out_dir) if out_dir else run_dirs[0] / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)

    fig, axes = plt.subplots(len(runs), 2, figsize=(12.5, 4.9 * len(runs)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.45, 1]})
    notes = set()
    for (rd, outcomes, rc), (ax, axm) in zip(runs, axes):
        threat = rc.threat or "Linf"
        grid = _curve_grid(rc)
        betas = sorted({float(b) for b in np.round(np.asarray(outcomes["beta"], np.float64), 6)})
        colors, sm = _beta_colors(betas)
        _draw_curves(ax, outcomes, rc, grid, colors)
        if sm is not None:
            fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.04).set_label(r"CT $\beta$ (< 1)", fontsize=8)
        _draw_medians(axm, outcomes, threat, colors)
        n = len(np.unique(np.asarray(outcomes["id"])))
        seeds = ",".join(str(s) for s in sorted({int(s) for s in np.asarray(outcomes["seed"])}))
        what = f"{rc.model or '?'} on {rc.dataset or '?'}, {threat}"
        detail = f"n={n} per beta, seed(s) {seeds}, c={rc.coeff if rc.coeff is not None else '?'}"
        if len(runs) > 1:
            ax.set_title(f"{rd.name}: {what}, {detail}", fontsize=9)
        if rc.protocol == "reference":
            notes.add("reference protocol: normalized-space attack with a [0, 1] clamp, NOT the stated eps-ball")
        if rc.data == "timing":
            from ctrobust.data import TIMING_NOTE

            head, rest = TIMING_NOTE.split(":", 1)
            notes.add(f"{head.upper()}:{rest}")
    if len(runs) == 1:
        title = (f"Curvature Tuning robustness curves: {what}\n"
                 f"minimal perturbations found by the minimum-norm attack, {detail}")
    else:
        title = "Curvature Tuning robustness curves"
    for note in sorted(notes):
        title += f"\n{note}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, name, formats)


_CELL_STYLE = {"reference": "#c44e52", "pixel": "#dd8452", "valid": "#4c72b0"}


def corruption_table(rows: list[dict]) -> dict:
    """From ``corruptions.csv`` rows: ``{"betas": (B,) descending, "severity": {s: (B,) accuracy}, "mean": (B,)}``,
    accuracies as fractions averaged over corruptions and seeds (each pair has the same number of images)."""
    betas = sorted({float(r["beta"]) for r in rows}, reverse=True)
    sevs = sorted({int(r["severity"]) for r in rows})
    by = {s: np.array([np.mean([r["acc"] for r in rows if int(r["severity"]) == s and float(r["beta"]) == b])
                       for b in betas]) for s in sevs}
    mean = np.array([np.mean([r["acc"] for r in rows if float(r["beta"]) == b]) for b in betas])
    return {"betas": np.array(betas), "severity": by, "mean": mean}


def plot_corruptions(run_dirs, out_dir=None, name: str = "corruptions", formats=("png", "pdf")) -> list[Path]:
    """Accuracy under common corruptions against beta: one line per severity (mean over the corruptions and
    seeds) and their mean in bold, beta = 1 marked; one panel per run dir (``corruptions.csv``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ctrobust.store import RunReader

    run_dirs = [Path(r) for r in run_dirs]
    out_dir = Path(out_dir) if out_dir else run_dirs[0] / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(run_dirs), figsize=(6.4 * len(run_dirs), 4.4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, rd in zip(axes[0], run_dirs):
        reader = RunReader(rd)
        rows, rc = reader.corruptions(), reader.config()
        if not rows:
            ax.set_axis_off()
            ax.set_title(f"{rd.name}: no corruptions.csv")
            continue
        t = corruption_table(rows)
        sevs = list(t["severity"])
        for i, s in enumerate(sevs):
            ax.plot(t["betas"], 100 * t["severity"][s], "-o", ms=3, lw=1.2,
                    color=cmap(i / max(1, len(sevs) - 1) * 0.9), label=f"severity {s}")
        ax.plot(t["betas"], 100 * t["mean"], "-", lw=3, color="black", label="mean over the pairs")
        if 1.0 in set(t["betas"].tolist()):
            j = int(np.flatnonzero(t["betas"] == 1.0)[0])
            ax.plot([1.0], [100 * t["mean"][j]], marker="*", ms=14, color="black", mec="white", zorder=5,
                    label="beta = 1 (original model)")
            ax.axhline(100 * t["mean"][j], color="black", lw=0.8, ls=":")
        n_c = len({r["corruption"] for r in rows})
        ax.set_title(f"{rc.model} on {rc.dataset}-C: {n_c} corruption(s), n={rows[0]['n']} per pair", fontsize=9)
        ax.set_xlabel(r"CT $\beta$ (1 = original ReLU network)")
        ax.set_ylabel("accuracy on corrupted images (%)")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Curvature Tuning under common corruptions (no attack)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, name, formats)


def plot_study(report, out_dir, *, name: str = "study", formats=("png", "pdf")) -> list[Path]:
    """The study figure: clean (dashed) and robust (solid) accuracy against beta, one panel per threat (row)
    and dataset (column), one colour per cell (reference protocol, pixel-space threat, valid protocol).
    Corruptions panels show the accuracy on corrupted images (mean over the (corruption, severity) pairs).

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
    threats = list(getattr(report, "threats", ()) or (report.threat,))
    fig, axes = plt.subplots(len(threats), len(datasets), figsize=(max(8.0, 5.2 * len(datasets)),
                                                                     0.6 + 4.2 * len(threats)), squeeze=False)
    for row, t in zip(axes, threats):
        for ax, d in zip(row, datasets):
            cells = [c for c in report.cells if c.dataset == d and getattr(c, "threat", t) == t]
            for c in cells:
                b = np.array([p.beta for p in c.curve])
                color = _CELL_STYLE.get(c.cell, None)
                label = c.cell + (" (NOT the stated eps-ball)" if c.note else "")
                what = "corrupted" if t == "corruptions" else "robust"
                ax.plot(b, [p.robust_pct for p in c.curve], "-o", ms=3, color=color, label=f"{what}, {label}")
                if t != "corruptions":  # on corrupted images, clean and robust are the same flag
                    ax.plot(b, [p.clean_pct for p in c.curve], "--", color=color, alpha=0.7,
                            label=f"clean, {c.cell}")
            ax.set_title(f"{t}: {d}" + ("" if cells else " (not run)"), fontsize=10)
            ax.set_xlabel(r"CT $\beta$ (1 = original network)")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            if cells:
                ax.legend(fontsize=6.5, loc="best")
    title = f"Curvature Tuning, the paper's robustness table: {report.model}, {', '.join(threats)}"
    if any(c.note for c in report.cells):
        title += "\nreference = normalized-space attack with a [0, 1] clamp there: NOT the stated eps-ball"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, name, formats)
