"""Cost of Curvature Tuning in an attack step: forward + backward w.r.t. the input, CT vs ReLU.

An attack (APGD, FAB, ...) repeatedly computes ``d loss / d x`` of a model in eval mode whose parameters
need no gradient. This script times exactly that step,

    x.requires_grad_(); loss = cross_entropy(model(x), y); grad = autograd.grad(loss, x)

for four variants of the same network:

``relu``        the original model;
``ct``          ``apply_ct(model, 0.9)`` (ctrobust's CT: module swap + function mode, analytic backward);
``ct_per_sample`` the same CT model with a per-example beta tensor (cycling 1.0, 0.9, 0.8, 0.7), as the
                fast engine evaluates several betas in one batch;
``naive``       an unfused reference: every ReLU replaced by the plain formula
                ``c*sigmoid(beta*x/d)*x + (1-c)*d*softplus(x/d)`` differentiated by autograd;
``ct_no_mode``  (models whose ReLUs are all modules) the CT network without ``CTModel``'s torch function
                mode, i.e. what the mode costs;
``ct_unfused``  (cuda) ctrobust's CT pinned to the ``aten`` kernel path (``apply_ct(..., kernel="aten")``).

Repetitions are interleaved (the order of the variants rotates every round) so that slow drifts of the
machine (turbo, other processes) hit every variant alike; the table reports medians and minima of the
wall time and the median process CPU time, each with its ratio to ``relu``. On a shared machine the
minimum is the best estimate of the undisturbed cost: other processes inflate the medians, and CT's
(memory-bound, many-kernel) activation more than the convolutions. The JSON written by ``--out`` (and a ``.txt`` copy of the table next to it) records the device,
torch version, batch size and all raw timings.

Usage:
    python benchmarks/ct_overhead.py --device cpu --model resnet18 --batch-size 32 \
        --out benchmarks/results/ct_overhead_cpu.json
    python benchmarks/ct_overhead.py --device cuda --model both --batch-size 128 \
        --out benchmarks/results/ct_overhead_cuda.json

Models: ``resnet18`` is the CIFAR-10 ResNet-18 shipped with pyautoattack (``examples/resnet.py``; its
``model_test.pt`` weights are loaded when present; 17 functional ``F.relu`` calls); ``wrn-28-10`` is
RobustBench's ``Standard`` WideResNet-28-10 (random weights, no download; 25 ``nn.ReLU(inplace=True)``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ctrobust.ct import EPS, apply_ct, ct_coverage, set_beta

BETA = 0.9
COEFF = 0.5
PER_SAMPLE_CYCLE = (1.0, 0.9, 0.8, 0.7)


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------


def build_resnet18() -> tuple[nn.Module, str]:
    from ctrobust.models import load_model

    return load_model("bundled/resnet18-cifar10"), "pyautoattack examples/model_test.pt"


def build_wrn28_10() -> tuple[nn.Module, str]:
    from ctrobust._compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import cifar10

    torch.manual_seed(0)
    return cifar10.linf["Standard"]["model"]().eval(), "random weights (robustbench linf 'Standard' architecture)"


MODELS = {"resnet18": build_resnet18, "wrn-28-10": build_wrn28_10}


# ---------------------------------------------------------------------------------------------------
# The naive, unfused CT used as a reference point
# ---------------------------------------------------------------------------------------------------


def naive_phi(x: torch.Tensor, beta: float = BETA, coeff: float = COEFF) -> torch.Tensor:
    d = 1.0 - beta + EPS
    return coeff * torch.sigmoid(beta * x / d) * x + (1.0 - coeff) * d * F.softplus(x / d)


class NaiveCT(nn.Module):
    def forward(self, x):
        return naive_phi(x)


class _NaiveMode(TorchFunctionMode):
    _RELU = {F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_, F.relu_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._RELU:
            return naive_phi(args[0])
        return func(*args, **(kwargs or {}))


class NaiveCTModel(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = copy.deepcopy(net)

        def swap(parent):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.ReLU):
                    setattr(parent, name, NaiveCT())
                else:
                    swap(child)

        swap(self.net)

    def forward(self, x):
        with _NaiveMode():
            return self.net(x)


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attack_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def time_variants(variants: dict, x, y, device, repeats: int, warmup: int):
    """Wall-clock and process-CPU seconds of ``attack_step`` per variant, rounds interleaved."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            attack_step(variants[name], x, y)
    _sync(device)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            attack_step(variants[name], x, y)
            _sync(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def bench_model(model_name: str, device: torch.device, batch_size: int, repeats: int, warmup: int) -> dict:
    net, note = MODELS[model_name]()
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)

    ct = apply_ct(net, BETA, COEFF)
    ct_ps = apply_ct(net, BETA, COEFF)
    betas = torch.tensor([PER_SAMPLE_CYCLE[i % len(PER_SAMPLE_CYCLE)] for i in range(batch_size)])
    set_beta(ct_ps, betas.to(device))
    naive = NaiveCTModel(net).to(device).eval()
    variants = {"relu": net, "ct": ct, "ct_per_sample": ct_ps, "naive": naive}
    cov = ct_coverage(net, x[:1])
    if cov.relu_functional == 0 and cov.leaky_relu == 0:
        # only nn.ReLU modules: the swapped network alone is the whole CT model; timing it without
        # CTModel's torch-function mode measures what the mode costs
        variants["ct_no_mode"] = ct.net
    if device.type == "cuda":
        # the unfused (aten) kernels on the GPU, to show what the fused jiterator kernels save
        variants["ct_unfused"] = apply_ct(net, BETA, COEFF, kernel="aten")

    # sanity: CT really changes the logits, and the naive reference agrees with ctrobust's CT
    with torch.no_grad():
        ref, out_ct, out_naive = net(x), ct(x), naive(x)
    if torch.equal(ref, out_ct):
        raise RuntimeError("CT at beta=0.9 did not change the logits: the benchmark would time a no-op")
    max_diff = (out_ct - out_naive).abs().max().item()

    times, cpu_times = time_variants(variants, x, y, device, repeats, warmup)
    med = {n: statistics.median(t) for n, t in times.items()}
    cpu_med = {n: statistics.median(t) for n, t in cpu_times.items()}
    return {
        "model": model_name,
        "weights": note,
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "ct_vs_naive_max_abs_logit_diff": max_diff,
        "median_ms": {n: 1e3 * v for n, v in med.items()},
        "ratio_vs_relu": {n: v / med["relu"] for n, v in med.items()},
        "min_ms": {n: 1e3 * min(t) for n, t in times.items()},
        # the fastest round approximates the cost without interference from other processes
        "min_ratio_vs_relu": {n: min(t) / min(times["relu"]) for n, t in times.items()},
        # process CPU time (all threads): less sensitive than wall time to other processes on the machine
        "cpu_median_ms": {n: 1e3 * v for n, v in cpu_med.items()},
        "cpu_ratio_vs_relu": {n: v / cpu_med["relu"] for n, v in cpu_med.items()},
        "times_ms": {n: [1e3 * v for v in t] for n, t in times.items()},
        "cpu_times_ms": {n: [1e3 * v for v in t] for n, t in cpu_times.items()},
    }


def format_table(meta: dict, results: list[dict]) -> str:
    lines = [
        f"CT overhead: forward+backward w.r.t. input (eval mode, params frozen), beta={BETA}, c={COEFF}",
        f"device: {meta['device']} ({meta['device_name']}), torch {meta['torch']}, python {meta['python']}",
        f"load average (1 min) before/after: {meta.get('loadavg_1min_before_after')}",
        "",
        f"{'model':<10} {'batch':>5} {'variant':<14} {'median ms':>10} {'x relu':>7} {'min ms':>10} {'x relu':>7} "
        f"{'cpu ms':>10} {'x relu':>7}",
    ]
    for r in results:
        for n in r["median_ms"]:
            lines.append(f"{r['model']:<10} {r['batch_size']:>5} {n:<14} {r['median_ms'][n]:>10.2f} "
                         f"{r['ratio_vs_relu'][n]:>7.3f} {r['min_ms'][n]:>10.2f} {r['min_ratio_vs_relu'][n]:>7.3f} "
                         f"{r['cpu_median_ms'][n]:>10.2f} {r['cpu_ratio_vs_relu'][n]:>7.3f}")
        lines.append(f"{'':<10} {'':>5} (repeats={r['repeats']}, weights: {r['weights']}, "
                     f"max |logit ct - naive| = {r['ct_vs_naive_max_abs_logit_diff']:.2e})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--model", choices=["resnet18", "wrn-28-10", "both"], default="resnet18")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 on cpu, 128 on cuda")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 15 cpu, 50 cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds per variant (default 2 cpu, 10 cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (cpu)")
    p.add_argument("--out", type=Path, default=None, help="JSON path; the table also goes to <stem>.txt")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    gpu = device.type == "cuda"
    batch_size = args.batch_size or (128 if gpu else 32)
    repeats = args.repeats or (50 if gpu else 15)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    models = ["resnet18", "wrn-28-10"] if args.model == "both" else [args.model]

    meta = {
        "device": args.device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if gpu else None,
        "beta": BETA,
        "coeff": COEFF,
        "per_sample_betas": list(PER_SAMPLE_CYCLE),
        "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
    }
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = [bench_model(m, device, batch_size, repeats, warmup) for m in models]
    # other processes on the machine inflate wall times (and the memory-bound CT kernels more than the
    # convolutions): the 1-minute load averages show how busy it was
    meta["loadavg_1min_before_after"] = (None if load_before is None
                                         else [round(load_before[0], 2), round(os.getloadavg()[0], 2)])
    table = format_table(meta, results)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
        args.out.with_suffix(".txt").write_text(table + "\n")
        print(f"wrote {args.out} and {args.out.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
