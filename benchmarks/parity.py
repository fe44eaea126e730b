"""Parity of the fast engine with standard AutoAttack (pyautoattack, the ``reference`` engine).

For every model and beta of a grid, both engines attack the same rows with AutoAttack's standard attacks
(APGD-CE, APGD-T, FAB-T, Square, standard hyper-parameters). Reported per beta:

- clean accuracy and the robust accuracy of each engine (reference with two seeds, fast with one);
- ``ref_only``: rows the reference (seed 0) broke and the fast engine did not; ``fast_only``: the reverse;
- ``seed_spread``: rows on which the two reference seeds disagree -- the noise floor of the comparison:
  ``ref_only`` much above it would mean the fast engine is weaker;
- wall time and example-forward/backward counts (the fast engine's counts; pyautoattack does not count).

Models:
- ``digits``: a small CNN trained here (a few seconds) on scikit-learn's 8x8 digits, attacked on its
  297 held-out images (``--n-digits``) at ``--eps-digits`` (default gives 20-80 % robust accuracy);
- ``resnet18``: the naturally trained CIFAR-10 ResNet-18 bundled with pyautoattack, on the 20 bundled
  CIFAR-10 test images (``ctrobust.models.load_model``, ``ctrobust.data.load_eval_set``) at ``--eps-cifar``
  (default 1/255: the model is not robust at 8/255).

CT is applied with ``ctrobust.ct.apply_ct``; the fast engine gets all betas in one call (beta-batching),
the reference engine one call per beta.

Usage:
    python benchmarks/parity.py                      # both models, Linf, betas 1.0,0.95,0.9,0.8
    python benchmarks/parity.py --models digits --threat L2 --eps-digits 0.5 --device cpu
Results: ``benchmarks/results/parity_<model>_<threat>.json`` and a ``.txt`` copy of the printed table
(``--out-dir`` to change the folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctrobust.ct import apply_ct
from ctrobust.attacks import SUITES
from ctrobust.engines.fast.engine import FastEngine
from ctrobust.engines.reference import ReferenceEngine
from ctrobust.toy import train_digits_cnn

STANDARD = SUITES["standard"]


def load_resnet18():
    from ctrobust.data import load_eval_set
    from ctrobust.models import load_model

    es = load_eval_set("cifar10", 20, data="bundled")
    return load_model("bundled/resnet18-cifar10").eval(), es.x, es.y, es.ids


def compare(name, model, x, y, ids, betas, threat, eps, device, batch_size, seeds=(0, 1)):
    """Run both engines on every (example, beta) row; return a dict with per-beta rows and raw flags.

    ``seeds``: reference seeds (the fast engine uses the first, or 0); none skips the reference (timing of
    the fast engine alone; the reference columns are then NaN / -1).
    """
    ct_model = apply_ct(model, 1.0).to(device)
    n = x.shape[0]
    reps = len(betas)
    X, Y, I = x.repeat(reps, 1, 1, 1), y.repeat(reps), ids.repeat(reps)
    B = torch.tensor(np.repeat(np.asarray(betas, dtype=np.float64), n))
    common = dict(ids=I, betas=B, threat=threat, eps=eps, suite=STANDARD, batch_size=batch_size, device=device)
    ref, ref_time = {}, {}
    for s in seeds:
        t0 = time.perf_counter()
        ref[s] = ReferenceEngine().run(ct_model, X, Y, seed=s, **common)
        ref_time[s] = time.perf_counter() - t0
    fast_engine = FastEngine()
    t0 = time.perf_counter()
    fast = fast_engine.run(ct_model, X, Y, seed=seeds[0] if seeds else 0, **common)
    fast_time = time.perf_counter() - t0
    rows = []
    b_np = B.numpy()
    r0, r1 = (ref[seeds[0]], ref[seeds[-1]]) if seeds else (None, None)
    for beta in betas:
        sel = b_np == beta
        row = {"model": name, "beta": float(beta), "n": int(sel.sum()),
               "clean_acc": float(fast.clean_correct[sel].mean()), "robust_fast": float(fast.robust[sel].mean()),
               "fast_broken_by": {k: int(v) for k, v in zip(*np.unique(fast.broken_by[sel], return_counts=True))},
               "robust_ref_seed0": float("nan"), "robust_ref_seed1": float("nan"),
               "ref_only": -1, "fast_only": -1, "seed_spread": -1}
        if r0 is not None:
            row.update({
                "robust_ref_seed0": float(r0.robust[sel].mean()), "robust_ref_seed1": float(r1.robust[sel].mean()),
                "ref_only": int((~r0.robust[sel] & fast.robust[sel]).sum()),
                "fast_only": int((r0.robust[sel] & ~fast.robust[sel]).sum()),
                "seed_spread": int((r0.robust[sel] != r1.robust[sel]).sum()),
                "ref_broken_by": {k: int(v) for k, v in zip(*np.unique(r0.broken_by[sel], return_counts=True))}})
        rows.append(row)
    return {
        "model": name, "threat": threat, "eps": eps, "betas": list(map(float, betas)), "n_examples": n,
        "rows": rows, "reference_seeds": list(seeds),
        "seconds": {**{f"reference_seed{s}": t for s, t in ref_time.items()}, "fast": fast_time},
        "fast_counts": {"forward_passes": fast.forward_passes, "backward_passes": fast.backward_passes,
                        **{k: v for k, v in fast_engine.last_stats.items() if k != "attacks"}},
        "fast_attacks": fast_engine.last_stats.get("attacks", {}),
        "fast_warnings": fast.warnings, "reference_warnings": r0.warnings if r0 is not None else [],
        "flags": {"fast_robust": fast.robust.tolist(), "beta": b_np.tolist(), "id": I.tolist(),
                  **({"ref0_robust": r0.robust.tolist(), "ref1_robust": r1.robust.tolist()} if r0 is not None else {})},
    }


def table(res) -> str:
    ref_t = ", ".join(f"{v:.1f}s" for k, v in res["seconds"].items() if k.startswith("reference")) or "skipped"
    head = (f"{res['model']} {res['threat']} eps={res['eps']:.5g}  n={res['n_examples']} examples  "
            f"time: reference {ref_t} (per seed), fast {res['seconds']['fast']:.1f}s  "
            f"fast passes fwd={res['fast_counts']['forward_passes']} bwd={res['fast_counts']['backward_passes']}")
    lines = [head, f"{'beta':>6} {'clean':>6} {'ref s0':>7} {'ref s1':>7} {'fast':>7} {'ref_only':>9} "
             f"{'fast_only':>10} {'seed_spread':>12}"]
    for r in res["rows"]:
        lines.append(f"{r['beta']:>6.3g} {r['clean_acc']:>6.1%} {r['robust_ref_seed0']:>7.1%} "
                     f"{r['robust_ref_seed1']:>7.1%} {r['robust_fast']:>7.1%} {r['ref_only']:>9d} "
                     f"{r['fast_only']:>10d} {r['seed_spread']:>12d}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="digits,resnet18", help="comma list of digits, resnet18")
    ap.add_argument("--threat", default="Linf", choices=["Linf", "L2"])
    ap.add_argument("--betas", default="1.0,0.95,0.9,0.8")
    ap.add_argument("--eps-digits", type=float, default=None, help="default 0.1 (Linf) / 0.5 (L2)")
    ap.add_argument("--eps-cifar", type=float, default=None, help="default 1/255 (Linf) / 0.1 (L2)")
    ap.add_argument("--n-digits", type=int, default=297)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--reference-seeds", default="0,1",
                    help="seeds of the reference runs (two give the seed spread); empty: fast engine only")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    betas = [float(b) for b in args.betas.split(",")]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "device": str(device), "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None, "platform": platform.platform()}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "digits":
            model, x, y, ids = train_digits_cnn()
            x, y, ids = x[:args.n_digits], y[:args.n_digits], ids[:args.n_digits]
            eps = args.eps_digits or (0.1 if args.threat == "Linf" else 0.5)
        elif name == "resnet18":
            model, x, y, ids = load_resnet18()
            eps = args.eps_cifar or (1 / 255 if args.threat == "Linf" else 0.1)
        else:
            raise SystemExit(f"unknown model {name!r} (digits, resnet18)")
        seeds = tuple(int(v) for v in args.reference_seeds.split(",") if v.strip())
        res = compare(name, model, x, y, ids, betas, args.threat, eps, device, args.batch_size, seeds)
        res["env"] = env
        txt = table(res)
        print(txt, flush=True)
        stem = out_dir / f"parity_{name}_{args.threat}"
        stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
        stem.with_suffix(".txt").write_text(txt + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
