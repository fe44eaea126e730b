"""How close the attack engines come to the machine's limit on rows that stay robust.

Where points stay robust, early exit saves nothing and what counts is throughput per pass. This script
measures, for one model on one device:

(a) the **limit**: the CT model's (beta < 1) pure forward and forward + input-gradient throughput at its
    best batch size (examples per second; ``t_f`` and ``t_b`` = seconds per example-forward and per
    example-backward at that size);
(b) the **fast engine** on a robust-row workload: every row survives (a tiny eps), so APGD-T, FAB-T and
    Square run their whole budgets; its example passes ``F`` forwards and ``B`` backwards (padding
    excluded: padding is waste) give the time the limit would need, ``F * t_f + B * t_b``, and
    ``efficiency = that / wall time``;
(c) the **reference engine** (pyautoattack) on the same rows, passes counted by a wrapper, same formula.

Every measurement is repeated (``--repeats``, default 3) and reported as median [min, max]; both engines
run in the same process, alternating, so machine noise hits them alike.

Examples:
    # CPU, bundled ResNet-18 (small budgets so that a repeat takes about a minute)
    python benchmarks/throughput.py --device cpu --out benchmarks/results/throughput_cpu_resnet18.json
    # GPU, full AutoAttack budgets, both models
    python benchmarks/throughput.py --device cuda --model bundled --n-iter 100 --targets 9 --queries 5000 \
        --n-examples 512 --out benchmarks/results/throughput_<gpu>_resnet18.json
    python benchmarks/throughput.py --device cuda --model standard-random --n-iter 100 --targets 9 \
        --queries 5000 --n-examples 256 --out benchmarks/results/throughput_<gpu>_wrn.json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_speed import PassCounter, load  # noqa: E402

from ctrobust.attacks import AttackSuite  # noqa: E402
from ctrobust.ct import apply_ct, set_beta  # noqa: E402
from ctrobust.data import load_eval_set  # noqa: E402
from ctrobust.engines import get_engine  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, min_seconds: float) -> float:
    """Seconds per call of ``fn`` (warm-up, then as many calls as fit in ``min_seconds``, at least 2)."""
    fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        _sync(device)
        t = time.perf_counter() - t0
        if n >= 2 and t >= min_seconds:
            return t / n


def measure_limit(ct_model, x, device, batch_sizes, min_seconds: float) -> dict:
    """Best forward-only and forward + input-gradient throughput over ``batch_sizes``."""
    rows = []
    for bs in batch_sizes:
        xb = x[torch.arange(bs) % x.shape[0]].to(device)

        def fwd():
            with torch.no_grad():
                ct_model(xb)

        def fwd_bwd():
            xr = xb.detach().clone().requires_grad_(True)
            out = ct_model(xr)
            (g,) = torch.autograd.grad(out.logsumexp(1).sum(), [xr])

        t_f = _time(fwd, device, min_seconds) / bs
        t_fb = _time(fwd_bwd, device, min_seconds) / bs
        rows.append({"batch": bs, "fwd_per_s": 1 / t_f, "fwd_bwd_per_s": 1 / t_fb, "t_f": t_f,
                     "t_b": max(t_fb - t_f, 0.0)})
    best = max(rows, key=lambda r: r["fwd_bwd_per_s"])
    best_f = max(rows, key=lambda r: r["fwd_per_s"])
    return {"per_batch": rows, "best_batch": best["batch"], "fwd_bwd_per_s": best["fwd_bwd_per_s"],
            "fwd_per_s": best_f["fwd_per_s"], "t_f": best_f["t_f"],
            # backward cost per example at the batch size where forward + backward is fastest
            "t_b": best["t_b"] if best["t_b"] > 0 else 1 / best["fwd_bwd_per_s"] - best_f["t_f"]}


def run_engine(name: str, model, x, y, ids, args, device) -> dict:
    counter = PassCounter(apply_ct(model, 1.0)).to(device).eval()
    engine = get_engine(name)
    betas = torch.full((len(y),), args.beta, dtype=torch.float64)
    suite = AttackSuite("custom", ("apgd-t", "fab-t", "square"), n_iter=args.n_iter,
                        n_target_classes=args.targets, n_queries=args.queries)
    _sync(device)
    t0 = time.perf_counter()
    out = engine.run(counter, x, y, ids=ids, betas=betas, seed=0, threat="Linf", eps=args.eps, suite=suite,
                     batch_size=args.batch_size, device=device)
    _sync(device)
    wall = time.perf_counter() - t0
    if name == "fast":  # the engine's own counters exclude padding (computed, but wasted)
        f, b = out.forward_passes, out.backward_passes
    else:
        f, b = counter.forward_rows, counter.backward_rows
    return {"wall_s": wall, "forward_passes": int(f), "backward_passes": int(b),
            "wrapper_forward_rows": counter.forward_rows, "wrapper_backward_rows": counter.backward_rows,
            "robust_frac": float(out.robust.mean()), "clean_frac": float(out.clean_correct.mean()),
            "padded_rows": (getattr(engine, "last_stats", {}) or {}).get("padded_rows")}


def _stat(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": list(values)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="bundled", choices=("bundled", "standard-random"))
    p.add_argument("--n-examples", type=int, default=16, help="rows (bundled images repeated as distinct rows)")
    p.add_argument("--beta", type=float, default=0.9)
    p.add_argument("--eps", type=float, default=1e-4, help="tiny: every correctly classified row stays robust")
    p.add_argument("--n-iter", type=int, default=10)
    p.add_argument("--targets", type=int, default=3)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--limit-batches", default=None, help="comma list [cpu: 1,2,4,8,16,32,64; cuda: 32..2048]")
    p.add_argument("--min-seconds", type=float, default=2.0, help="per limit measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--engines", default="fast,reference")
    p.add_argument("--out")
    args = p.parse_args(argv)
    args.batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    device = torch.device(args.device)
    model, label = load(args.model, device)
    ev = load_eval_set("cifar10", 20, subset="first", data="bundled")
    # only rows the model classifies correctly can stay robust; repeat them up to n rows (distinct ids)
    with torch.no_grad():
        ok = (model(ev.x.to(device)).argmax(1).cpu() == ev.y).numpy()
    keep = np.flatnonzero(ok)
    pick = keep[np.arange(args.n_examples) % len(keep)]
    x, y = ev.x[pick], ev.y[pick]
    ids = torch.arange(args.n_examples)
    ct = apply_ct(model, args.beta).to(device).eval()
    set_beta(ct, args.beta)
    batches = [int(b) for b in (args.limit_batches or ("1,2,4,8,16,32,64" if device.type == "cpu" else
                                                       "32,64,128,256,512,1024,2048")).split(",")]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        (platform.processor() or platform.machine()) + f" ({torch.get_num_threads()} threads)"
    engines = args.engines.split(",")
    reps = {"limit": [], **{e: [] for e in engines}}
    for r in range(args.repeats):
        print(f"repeat {r + 1}/{args.repeats}: limit", file=sys.stderr, flush=True)
        reps["limit"].append(measure_limit(ct, x, device, batches, args.min_seconds))
        for e in engines:
            print(f"repeat {r + 1}/{args.repeats}: {e}", file=sys.stderr, flush=True)
            reps[e].append(run_engine(e, model, x, y, ids, args, device))
    # per repeat: the limit's time for each engine's passes over the engine's wall time
    eff = {e: [(run["forward_passes"] * lim["t_f"] + run["backward_passes"] * lim["t_b"]) / run["wall_s"]
               for run, lim in zip(reps[e], reps["limit"])] for e in engines}
    res = {"model": label, "device": str(device), "device_name": dev_name, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "rows": args.n_examples, "beta": args.beta, "eps": args.eps,
           "suite": {"attacks": ["apgd-t", "fab-t", "square"], "n_iter": args.n_iter, "n_target_classes": args.targets,
                     "n_queries": args.queries},
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
           "repeats": reps,
           "limit_fwd_bwd_per_s": _stat([lim["fwd_bwd_per_s"] for lim in reps["limit"]]),
           "limit_fwd_per_s": _stat([lim["fwd_per_s"] for lim in reps["limit"]]),
           "efficiency": {e: _stat(v) for e, v in eff.items()},
           "wall_s": {e: _stat([run["wall_s"] for run in reps[e]]) for e in engines}}
    if "fast" in engines and "reference" in engines:
        res["fast_over_reference_speed"] = _stat([rr["wall_s"] / rf["wall_s"] for rf, rr in
                                                  zip(reps["fast"], reps["reference"])])

    def fmt(s, scale=1.0, nd=2, unit=""):
        return f"{s['median'] * scale:.{nd}f}{unit} [{s['min'] * scale:.{nd}f}, {s['max'] * scale:.{nd}f}]"

    lines = [f"{label} on {dev_name}, torch {torch.__version__}: {args.n_examples} robust rows at beta {args.beta}, "
             f"eps {args.eps:g}, APGD-T + FAB-T ({args.n_iter} iterations, {args.targets} targets) + Square "
             f"({args.queries} queries); median [min, max] of {args.repeats} repeats, engines alternating",
             f"limit (CT model, best batch {reps['limit'][0]['best_batch']}): forward+backward "
             f"{fmt(res['limit_fwd_bwd_per_s'], nd=1)} ex/s, forward only {fmt(res['limit_fwd_per_s'], nd=1)} ex/s"]
    for e in engines:
        runs = reps[e]
        lines.append(f"{e:<10} wall {fmt(res['wall_s'][e], nd=1, unit=' s')}, passes fwd {runs[0]['forward_passes']} "
                     f"bwd {runs[0]['backward_passes']}, robust {runs[0]['robust_frac']:.2f}: "
                     f"engine / limit {fmt(res['efficiency'][e], 100, 1, ' %')}")
    if "fast_over_reference_speed" in res:
        lines.append(f"fast / reference speed on the same rows: {fmt(res['fast_over_reference_speed'], unit='x')}")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return res


if __name__ == "__main__":
    main()
