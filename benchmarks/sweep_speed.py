"""Speed of a CT sweep: the fast engine vs the reference (pyautoattack) engine, in one run.

Both engines attack the same rows (every example at every beta, baseline included) with the same attacks,
the way `ctrobust sweep` calls them: the reference engine one beta at a time, the fast engine all betas in
one beta-batched call. Forward and backward passes are counted by a wrapper around the model, in example
units (one image through the network once = 1), for both engines alike. Prints wall time, passes and the
ratios, and writes JSON.

Examples:
    # the demo sweep on CPU (bundled ResNet-18, 20 bundled CIFAR-10 images, 8/255, betas 1,.95,.9,.8,.7),
    # fast engine vs the plain per-beta pyautoattack loop, median of 3
    python benchmarks/sweep_speed.py --device cpu --engines fast,plain --repeats 3 \
        --out benchmarks/results/sweep_speed_cpu_demo.json
    # the mixed workload: 8 images at 1/255, APGD-CE + APGD-T, betas 1 and 0.9
    python benchmarks/sweep_speed.py --device cpu --engines fast,plain --repeats 3 --n-examples 8 --eps 1/255 \
        --attacks apgd-ce,apgd-t --betas 0.9 --out benchmarks/results/sweep_speed_cpu_mixed.json
    # on a GPU: RobustBench's Standard architecture (WRN-28-10, random weights) and the bundled ResNet-18
    python benchmarks/sweep_speed.py --device cuda --model standard-random \
        --out benchmarks/results/sweep_speed_<gpu>_wrn.json
    python benchmarks/sweep_speed.py --device cuda --model bundled --out benchmarks/results/sweep_speed_<gpu>_resnet18.json
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctrobust.attacks import parse_suite  # noqa: E402
from ctrobust.config import parse_betas, parse_eps  # noqa: E402
from ctrobust.ct import apply_ct  # noqa: E402
from ctrobust.data import load_eval_set  # noqa: E402
from ctrobust.engines import get_engine  # noqa: E402


class PassCounter(nn.Module):
    """Counts example-forwards, and example-backwards through the output (any attack, any engine)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.forward_rows = 0
        self.backward_rows = 0
        self.calls = 0

    def forward(self, x):
        out = self.net(x)
        n = x.shape[0]
        self.forward_rows += n
        self.calls += 1
        if out.requires_grad:
            def hook(grad, n=n):
                self.backward_rows += n
                return grad
            out.register_hook(hook)
        return out


def load(model: str, device: torch.device):
    if model == "bundled":
        from ctrobust.models import load_model
        return load_model("bundled/resnet18-cifar10", device=str(device)), "bundled/resnet18-cifar10"
    if model == "standard-random":
        from ctrobust._compat import import_robustbench
        import_robustbench()
        from robustbench.model_zoo.cifar10 import linf
        torch.manual_seed(0)
        return linf["Standard"]["model"]().eval().to(device), "Standard (WRN-28-10, random weights)"
    raise SystemExit(f"unknown --model {model}")


ENGINE_VARIANTS = {
    "fast": {},
    "fast-nospec": {"speculate": False},  # later restarts/targets not run in the padding of the last block
    "fast-nochain": {"chain": False},  # consecutive APGD attacks run one after the other, not chained
    "fast-noprobe": {"probe_shapes": False},  # CPU: short blocks padded to the full block, not to the probed grain
    "reference": None,
    # what a user without ctrobust writes: pyautoattack's run_standard_evaluation on the CT model, one beta
    # at a time (no per-example outcomes, no per-attack bookkeeping)
    "plain": "plain",
}


def make_engine(name: str, args):
    """``fast`` (optionally with ``--block-size``), ``fast-nospec`` or ``reference``."""
    if name not in ENGINE_VARIANTS:
        raise SystemExit(f"unknown engine {name!r}: choose from {', '.join(ENGINE_VARIANTS)}")
    if ENGINE_VARIANTS[name] is None:
        return get_engine(name)
    if ENGINE_VARIANTS[name] == "plain":
        return None
    from ctrobust.engines.fast.engine import FastEngine

    return FastEngine(block_size=args.block_size, **ENGINE_VARIANTS[name])


def run_engine(name, model, x, y, ids, betas, args, device):
    counter = PassCounter(apply_ct(model, 1.0)).to(device).eval()
    engine = make_engine(name, args)
    rows_b = torch.tensor(np.repeat(betas, len(y)), dtype=torch.float64)
    X, Y, I = x.repeat(len(betas), 1, 1, 1), y.repeat(len(betas)), ids.repeat(len(betas))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if engine is None:  # the plain per-beta pyautoattack loop
        outs = [_plain_loop(counter, X, Y, rows_b, betas, len(y), args, device)]
    elif engine.batches_betas:
        out = engine.run(counter, X, Y, ids=I, betas=rows_b, seed=args.seed, threat=args.threat, eps=args.eps,
                         suite=args.suite, batch_size=args.batch_size, device=device)
        outs = [out]
    else:  # as the sweep does: one beta per call
        outs = []
        for j, b in enumerate(betas):
            sl = slice(j * len(y), (j + 1) * len(y))
            outs.append(engine.run(counter, X[sl], Y[sl], ids=I[sl], betas=rows_b[sl], seed=args.seed,
                                   threat=args.threat, eps=args.eps, suite=args.suite,
                                   batch_size=args.batch_size, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    robust = np.concatenate([o.robust for o in outs])
    per_beta = {float(b): float(robust[j * len(y):(j + 1) * len(y)].mean()) for j, b in enumerate(betas)}
    return {"wall_s": wall, "forward_passes": counter.forward_rows, "backward_passes": counter.backward_rows,
            "model_calls": counter.calls, "robust_acc_per_beta": per_beta,
            "engine_reported_forward": sum(o.forward_passes for o in outs),
            "engine_reported_backward": sum(o.backward_passes for o in outs),
            # fast engine: batched steps per attack and rows of padding (rows computed but not used)
            "fast_stats": _fast_stats(engine)}


def _plain_loop(counter, X, Y, rows_b, betas, n, args, device):
    """One ``AutoAttack.run_standard_evaluation`` per beta on the CT model (pyautoattack as a user runs it)."""
    from types import SimpleNamespace

    from pyautoattack import AutoAttack

    from ctrobust.ct import set_beta

    robust = []
    for j, b in enumerate(betas):
        set_beta(counter, float(b))
        sl = slice(j * n, (j + 1) * n)
        bs = 250 if args.batch_size == "auto" else int(args.batch_size)
        # standard AutoAttack's parameters; a subset of its attacks as pyautoattack users restrict it
        aa = AutoAttack(counter, norm=args.threat, eps=args.eps, seed=args.seed, device=device, version="standard")
        aa.attacks_to_run = list(args.suite.attacks)
        aa.verbose = False
        _, y_adv = aa.run_standard_evaluation(X[sl], Y[sl], batch_size=bs)
        robust.append((y_adv.cpu() == Y[sl]).numpy())
    return SimpleNamespace(robust=np.concatenate(robust), forward_passes=0, backward_passes=0)


def _fast_stats(engine):
    st = getattr(engine, "last_stats", None) if engine is not None else None
    if not st:
        return None
    return {"padded_rows": st.get("padded_rows"), "steps": {k: v["steps"] for k, v in st["attacks"].items()},
            "block": st.get("block")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="bundled", choices=("bundled", "standard-random"))
    p.add_argument("--n-examples", type=int, default=20)
    p.add_argument("--betas", default="0.7,0.8,0.9,0.95")
    p.add_argument("--eps", default="8/255")
    p.add_argument("--threat", default="Linf")
    p.add_argument("--attacks", default="standard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--engines", default="fast,reference", help=f"comma list of {', '.join(ENGINE_VARIANTS)}")
    p.add_argument("--block-size", type=int, default=None,
                   help="fast engine: rows per model call (default: the batch size on GPUs, 16 on CPU)")
    p.add_argument("--repeats", type=int, default=1, help="repeat every engine; report median [min, max]")
    p.add_argument("--out", help="JSON file to write; the table also goes to <stem>.txt")
    args = p.parse_args(argv)
    args.eps = parse_eps(args.eps)
    args.suite = parse_suite(args.attacks)
    args.attacks = list(args.suite.attacks)
    args.batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    device = torch.device(args.device)
    betas = parse_betas(args.betas)
    model, label = load(args.model, device)
    x, y, ids = load_eval_set("cifar10", args.n_examples, subset="first", data="bundled")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        (platform.processor() or platform.machine()) + f" ({torch.get_num_threads()} threads)"
    res = {"model": label, "device": str(device), "device_name": dev_name, "torch": torch.__version__,
           "n_examples": len(y), "betas": betas, "eps": args.eps, "attacks": args.attacks, "engines": {}}
    names = args.engines.split(",")
    runs = {name: [] for name in names}
    for rep in range(args.repeats):  # engines alternate, so machine noise hits them alike
        for name in names:
            print(f"repeat {rep + 1}/{args.repeats}: {name} ...", file=sys.stderr, flush=True)
            runs[name].append(run_engine(name, model, x, y, ids, betas, args, device))
    res["repeats"] = args.repeats
    res["engines"] = {name: {**rs[0], "wall_s": statistics.median(r["wall_s"] for r in rs),
                             "wall_s_all": [r["wall_s"] for r in rs]} for name, rs in runs.items()}
    e = res["engines"]

    def spread(values, unit=""):
        return f"{statistics.median(values):.1f}{unit} [{min(values):.1f}, {max(values):.1f}]"

    lines = [f"{label} on {dev_name}: {len(y)} images x {len(betas)} betas {betas}, eps={args.eps:.4g}, "
             f"attacks={','.join(args.attacks)}; median [min, max] of {args.repeats} repeat(s), engines alternating",
             f"{'engine':<12} {'wall s':>22} {'fwd passes':>11} {'bwd passes':>11} {'steps':>7}  robust acc per beta"]
    for name, r in e.items():
        accs = " ".join(f"{b:g}:{a:.2f}" for b, a in r["robust_acc_per_beta"].items())
        steps = sum(r["fast_stats"]["steps"].values()) if r.get("fast_stats") else "-"
        fwd = r["forward_passes"] if name != "plain" else "-"
        bwd = r["backward_passes"] if name != "plain" else "-"
        lines.append(f"{name:<12} {spread(r['wall_s_all']):>22} {fwd:>11} {bwd:>11} {steps:>7}  {accs}")
    if "fast" in e:
        f = e["fast"]
        res["ratios"] = {}
        for other in (n for n in e if n != "fast"):
            ratio = [ro["wall_s"] / rf["wall_s"] for ro, rf in zip(runs[other], runs["fast"])]
            res["ratios"][other] = {"median": statistics.median(ratio), "min": min(ratio), "max": max(ratio)}
            lines.append(f"{other} / fast wall time: {spread(ratio, 'x')} (per repeat)")
            same = all(e[other]["robust_acc_per_beta"][b] == f["robust_acc_per_beta"][b] for b in f["robust_acc_per_beta"])
            lines.append(f"  robust accuracy per beta {'identical' if same else 'DIFFERS'} ({other} vs fast)")
        if "reference" in e:
            r = e["reference"]
            res["ratio_passes"] = (r["forward_passes"] + r["backward_passes"]) / max(1, f["forward_passes"] +
                                                                                  f["backward_passes"])
            lines.append(f"reference / fast passes (forward + backward): {res['ratio_passes']:.1f}x")
    lines.append(f"(torch {torch.__version__}" + ("; all engines measured in the same run)" if len(e) > 1 else ")"))
    print("\n" + "\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        out.with_suffix(".txt").write_text("\n".join(lines) + "\n")  # the table, for humans and reports
    return res


if __name__ == "__main__":
    main()
