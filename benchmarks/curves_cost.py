"""What a robustness curve costs: one ``min-norm`` run against standard AutoAttack at each of 5 eps values.

Before the minimum-norm attacks, a user who wanted robust accuracy at several eps ran standard AutoAttack
once per eps. This benchmark does both on the same rows in the same process, alternating, ``--repeats`` times,
and reports for each: wall time (median [min, max]) and the curve: robust accuracy at the 5 eps from the one
``min-norm`` run (:func:`ctrobust.curves.robust_at` on its distances) next to AutoAttack's at each eps, with the
largest gap between the two (percentage points; positive: the minimum-norm curve lies above AutoAttack, i.e.
the minimum-norm attacks found a larger perturbation than AutoAttack needed).

Model: the small CNN trained on scikit-learn's 8x8 digits (``ctrobust.toy.train_digits_cnn``, a few seconds)
with CT at every beta of ``--betas``, the first ``--n`` held-out images; both engines are the fast engine (the
default), so the comparison is between the measurements, not between implementations.

    python benchmarks/curves_cost.py --out benchmarks/results/curves_cost_cpu_digits
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctrobust.attacks import parse_suite
from ctrobust.ct import apply_ct
from ctrobust.curves import robust_at
from ctrobust.engines import get_engine
from ctrobust.toy import train_digits_cnn


def _rows(x, y, ids, betas):
    b = torch.tensor([float(bt) for bt in betas for _ in range(len(x))], dtype=torch.float64)
    return x.repeat(len(betas), 1, 1, 1), y.repeat(len(betas)), ids.repeat(len(betas)), b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="held-out digits [60]")
    ap.add_argument("--betas", default="1.0,0.9", help="CT betas [1.0,0.9]")
    ap.add_argument("--threat", default="Linf")
    ap.add_argument("--eps", default="0.05,0.1,0.15,0.2,0.25", help="the 5 eps of AutoAttack [0.05..0.25]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write OUT.json and OUT.txt")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    betas = [float(b) for b in a.betas.split(",")]
    eps_list = [float(e) for e in a.eps.split(",")]
    model, x, y, ids = train_digits_cnn()
    x, y, ids = x[:a.n], y[:a.n], ids[:a.n]
    ct = apply_ct(model, 1.0).eval()
    X, Y, I, B = _rows(x, y, ids, betas)
    engine = get_engine("fast")
    common = dict(ids=I, betas=B, seed=0, threat=a.threat, batch_size=256, device=a.device)

    times = {"min-norm": [], "standard x5": []}
    curve = aa = None
    for rep in range(a.repeats):
        for what in ("min-norm", "standard x5") if rep % 2 == 0 else ("standard x5", "min-norm"):
            t0 = time.perf_counter()
            if what == "min-norm":
                out = engine.run(ct, X, Y, eps=eps_list[-1], suite=parse_suite("min-norm"), **common)
                d = out.min_norm
                curve = {e: [float(robust_at(d[j * len(x):(j + 1) * len(x)], e).mean()) for j in range(len(betas))]
                         for e in eps_list}
            else:
                aa = {}
                for e in eps_list:
                    o = engine.run(ct, X, Y, eps=e, suite=parse_suite("standard"), **common)
                    aa[e] = [float(o.robust[j * len(x):(j + 1) * len(x)].mean()) for j in range(len(betas))]
            times[what].append(time.perf_counter() - t0)
            print(f"repeat {rep}: {what} {times[what][-1]:.1f} s", file=sys.stderr, flush=True)

    gaps = {e: [100 * (c - s) for c, s in zip(curve[e], aa[e])] for e in eps_list}
    worst = max((abs(g), e, betas[j], g) for e, gs in gaps.items() for j, g in enumerate(gs))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = [s / m for s, m in zip(times["standard x5"], times["min-norm"])]
    res = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "device": a.device, "model": "digits CNN (ctrobust.toy)", "n": a.n, "betas": betas, "threat": a.threat,
           "eps": eps_list, "repeats": a.repeats, "seconds": times, "median_seconds": med,
           "ratio_standard_over_min_norm": ratio, "curve_min_norm": curve, "robust_standard": aa,
           "gap_pts": gaps, "largest_gap_pts": {"eps": worst[1], "beta": worst[2], "gap": worst[3]}}
    lines = [f"curve cost: {a.n} digits x betas {betas}, {a.threat}, {a.repeats} repeats (alternating), "
             f"device {a.device}, {torch.get_num_threads()} threads",
             f"  min-norm (one run, every eps):      {med['min-norm']:.1f} s "
             f"[{min(times['min-norm']):.1f}, {max(times['min-norm']):.1f}]",
             f"  standard AutoAttack at {len(eps_list)} eps:     {med['standard x5']:.1f} s "
             f"[{min(times['standard x5']):.1f}, {max(times['standard x5']):.1f}]",
             f"  ratio standard x5 / min-norm, pair by pair: median {statistics.median(ratio):.2f} "
             f"[{min(ratio):.2f}, {max(ratio):.2f}]",
             "  robust accuracy (%) per eps, min-norm curve vs AutoAttack, per beta:"]
    for e in eps_list:
        cells = "  ".join(f"beta {b:g}: {100 * c:5.1f} vs {100 * s:5.1f}" for b, c, s in zip(betas, curve[e], aa[e]))
        lines.append(f"    eps {e:<5g} {cells}")
    lines.append(f"  largest gap: {worst[3]:+.1f} pts (eps {worst[1]:g}, beta {worst[2]:g}); positive = the curve lies "
                 "above AutoAttack (the minimum-norm attacks were weaker there)")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out + ".json").write_text(json.dumps(res, indent=1))
        Path(a.out + ".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
