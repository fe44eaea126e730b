"""The ``fast`` attack engine: AutoAttack's attacks, reimplemented with early exit, beta-batching and
batch-invariant randomness.

Runs the given attacks in order (standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square with AutoAttack's
hyper-parameters; see :mod:`.apgd`, :mod:`.fab`, :mod:`.square`) on the rows still robust, for the Linf and
L2 threat models. Compared with pyautoattack (the ``reference`` engine):

- **early exit**: a row leaves the working batch at its first misclassified point in the ball, and the
  batch is refilled from pending rows, so every model call works on rows that are still robust;
- **beta-batching**: rows carry their own CT beta (``ctrobust.ct.set_beta`` with one beta per row before
  every model call), so all betas of an example are attacked in the same batches;
- **batch-invariant outcomes**: every random draw is a function of (seed, example id, beta, attack,
  restart/target, iteration) (:mod:`.rng`), all state is per row, and the model is evaluated on
  fixed-shape blocks (see ``block_size``), so a row's flags -- and its adversarial image, bit for bit --
  do not depend on chunking, beta-batching, the order of rows or (with a fixed block) the batch size.

Verified against pyautoattack: from the same start point APGD (CE, DLR, targeted DLR) and FAB (targeted
and untargeted) break exactly the rows pyautoattack's ``attack_single_run`` breaks (tests); on the digits
CNN and the bundled CIFAR-10 ResNet-18 both engines give the same robust flags (``benchmarks/parity.py``).

Counting: ``forward_passes``/``backward_passes`` of the outcome are example-forwards/-backwards (padding
excluded); :attr:`FastEngine.last_stats` also has batched calls, padding rows, steps and seconds per attack.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ctrobust import progress
from ctrobust.attacks import AttackSuite, get_attack, parse_suite
from ctrobust.engines.base import (AttackOutcome, PeakMemory, is_oom, largest_fitting_batch,
                                   restoring_model_state)
from ctrobust.engines.fast._caller import ModelCaller, invariant_grain
from ctrobust.engines.fast._context import AttackContext
from ctrobust.engines.fast._driver import run_attack
from ctrobust.engines.fast.apgd import APGD
from ctrobust.engines.fast.fab import FAB
from ctrobust.engines.fast.square import Square
from ctrobust.threat import Threat, check_ball

__all__ = ["FastEngine", "AUTO_BATCH", "CPU_BLOCK"]

#: ``batch_size="auto"``: a fixed size per device type (not derived from N, so that chunking does not
#: change the block shape); halved on CUDA out-of-memory. On CUDA the memory probe replaces it
#: (:data:`CUDA_PROBE_SIZES`).
AUTO_BATCH = {"cuda": 512, "cpu": 128}
#: ``batch_size="auto"`` on CUDA: the largest of these whose forward + input gradient fits in 80 % of the
#: GPU's memory, probed once per model and input shape (``largest_fitting_batch``). The cap: every block is
#: computed whole, so a larger block costs more in the tail of each attack, and a GPU's throughput stops
#: growing long before its memory runs out (a time-based choice would make the block, and so the last bits
#: of the results, vary from run to run).
CUDA_PROBE_SIZES = (64, 128, 256, 512, 1024, 2048)
#: default rows per model call on CPU. CPU cost per row stops falling at about 8-16 rows (measured with 2
#: threads, CT forward+backward: ResNet-18 24-25 ms/row at 16 and 32 rows, 28 at 8; WRN-28-10 flat from 8),
#: and a smaller block wastes less padding when few rows are left (a block is always computed whole); on
#: accelerators the default block is the batch size.
CPU_BLOCK = 16


#: the probed grain, shared by all engines of the process, per architecture (module types, their CT kernel
#: pins, parameter and buffer shapes), input shape, block, CT kernel path and thread count: what a kernel
#: library's choice of algorithm can depend on (not the weights' values)
_GRAIN_CACHE: dict = {}


def _architecture(model: torch.nn.Module) -> tuple:
    return (tuple((type(m).__module__, type(m).__qualname__, getattr(m, "kernel", None)) for m in model.modules()),
            tuple(tuple(p.shape) for p in model.parameters()), tuple(tuple(b.shape) for b in model.buffers()))


def _grain(model: torch.nn.Module, x: torch.Tensor, betas: torch.Tensor, block: int) -> int:
    from ctrobust.ct import get_kernel_path

    key = (_architecture(model), tuple(x.shape[1:]), str(x.device), x.dtype, block, get_kernel_path(),
           torch.get_num_threads())
    if key not in _GRAIN_CACHE:
        _GRAIN_CACHE[key] = invariant_grain(model, x, betas, block)
    return _GRAIN_CACHE[key]


# The factories of AutoAttack's attacks (``AttackSpec.factory``): the per-row state machine of ``spec`` with the
# suite's parameters (the AutoAttack block) and the number of target classes the model allows.


def build_apgd(spec, suite: AttackSuite, n_target_classes: int) -> APGD:
    """APGD-CE, APGD-DLR (``n_restarts`` restarts) or APGD-T (one restart per target class)."""
    if spec.targeted:
        return APGD(loss="dlr-targeted", n_iter=suite.n_iter, n_restarts=1, n_target_classes=n_target_classes,
                    rho=suite.rho, eot_iter=suite.eot_iter)
    return APGD(loss=spec.name.split("-", 1)[1], n_iter=suite.n_iter, n_restarts=suite.n_restarts, rho=suite.rho,
                eot_iter=suite.eot_iter)


def build_fab(spec, suite: AttackSuite, n_target_classes: int) -> FAB:
    """FAB-T (one restart per target class) or untargeted FAB (``n_restarts`` restarts), stopping at eps."""
    return FAB(targeted=spec.targeted, n_iter=suite.n_iter, n_restarts=1 if spec.targeted else suite.n_restarts,
               n_target_classes=n_target_classes)


def build_square(spec, suite: AttackSuite, n_target_classes: int) -> Square:
    """Square Attack with the suite's query budget."""
    return Square(n_queries=suite.n_queries, p_init=suite.p_init)


@dataclass
class _CallState:
    """What one engine call builds up, row by row, while its attacks run (all arrays length N, on CPU)."""

    x_cpu: torch.Tensor
    clean_correct: np.ndarray
    robust: np.ndarray
    broken_by: np.ndarray
    x_adv: torch.Tensor
    stats: dict
    warns: list
    min_norm: np.ndarray | None = None
    min_norm_by: np.ndarray | None = None
    x_min_norm: torch.Tensor | None = None

    @classmethod
    def empty(cls, x: torch.Tensor, min_norm: bool = False) -> "_CallState":
        n = int(x.shape[0])
        x_cpu = x.detach().to("cpu", torch.float32)
        st = cls(x_cpu, np.zeros(n, bool), np.zeros(n, bool), np.full(n, "", dtype=object), x_cpu.clone(),
                 {"attacks": {}, "forward_calls": 0, "backward_calls": 0, "padded_rows": 0}, [])
        if min_norm:
            st.min_norm = np.full(n, np.nan, np.float32)
            st.min_norm_by = np.full(n, "", dtype=object)
            st.x_min_norm = x_cpu.clone()
        return st

    def outcome(self, batch_size: int, row_fwd: np.ndarray | None = None, row_bwd: np.ndarray | None = None,
                peak_mem_mb: float | None = None) -> AttackOutcome:
        n = len(self.robust)
        row_fwd = np.zeros(n, np.int64) if row_fwd is None else row_fwd
        row_bwd = np.zeros(n, np.int64) if row_bwd is None else row_bwd
        return AttackOutcome(self.clean_correct, self.robust, self.broken_by.astype(str), self.x_adv,
                             forward_passes=int(row_fwd.sum()), backward_passes=int(row_bwd.sum()),
                             batch_size=int(batch_size), warnings=list(dict.fromkeys(self.warns)),
                             row_forward_passes=row_fwd, row_backward_passes=row_bwd, peak_mem_mb=peak_mem_mb,
                             accounting="row", min_norm=self.min_norm,
                             min_norm_by=None if self.min_norm_by is None else self.min_norm_by.astype(str),
                             x_min_norm=self.x_min_norm)


class FastEngine:
    """AutoAttack's attacks with early exit, beta-batching and per-example randomness.

    The attacks and all their hyper-parameters come from the :class:`~ctrobust.attacks.AttackSuite` given to
    :meth:`run`; the constructor holds only how the work is executed, which never changes outcomes
    (except ``fixed_shape=False``, see below).

    Args:
        block_size: rows per model call; ``None``: the batch size on accelerators, ``min(batch_size, 16)``
            on CPU. Together with ``fixed_shape`` it fixes the numerics of the model: a row's logits are
            bitwise independent of the other rows in the call, so outcomes are bitwise independent of
            chunking, beta-batching and row order. Outcomes are also bitwise independent of ``batch_size``
            as long as the block does not change (give a fixed value; on CPU any batch size >= 16).
        fixed_shape: pad every model call to exactly ``block_size`` rows (default). ``False`` skips the
            padding (less compute in the tail of each attack) at the price of last-bit differences between
            batch shapes, which can flip an example that sits on the edge of the attack's success.
        verify: re-evaluate every adversarial point found before counting it (AutoAttack does the same);
            only randomized models can fail it.
        speculate: when no rows are pending, run later restarts/target classes of rows in flight in the
            padding of the last fixed-shape block (free compute; outcomes identical, see
            :func:`~ctrobust.engines.fast._driver.run_attack`).
        probe_shapes: on CPU, with ``fixed_shape``, find once per model the smallest row count ``g`` at whose
            multiples the model computes every row bit for bit as in a full block
            (:func:`~ctrobust.engines.fast._caller.invariant_grain`), and pad short blocks only to a multiple
            of ``g``: outcomes are unchanged and the tail of each attack costs a fraction of a block.
            (On accelerators every call stays a full block.)
        chain: with ``speculate``, run consecutive APGD attacks of the suite (APGD-CE then APGD-T, or
            APGD-CE then APGD-DLR) as one chained attack (:meth:`APGD.chain`), so that the padding left
            by rows that APGD-CE broke runs APGD-T targets of the rows still in APGD-CE. Outcomes are
            identical either way (each attack starts from the clean point with its own keys; a row is
            broken by the first attack in order that succeeds); only the number of steps changes.

    Example:
        >>> from ctrobust.ct import apply_ct
        >>> from ctrobust.attacks import SUITES
        >>> out = FastEngine().run(apply_ct(model, 1.0), x, y, ids=ids, betas=torch.full((len(x),), 0.9),
        ...                        seed=0, threat="Linf", eps=8 / 255, suite=SUITES["standard"],
        ...                        batch_size=256, device=torch.device("cuda"))
        >>> out.robust.mean()
    """

    name = "fast"
    #: attacks the still-robust rows of all betas together (the sweep passes all betas of a work item in
    #: one call)
    batches_betas = True
    #: outcomes are bitwise independent of batch size, chunking and beta-batching (per-row randomness,
    #: fixed-shape blocks)
    batch_invariant = True
    #: attacks images in [0, 1] and checks every point against the threat ball
    constraints = ("ball",)
    #: what it measures: robust-at-eps (bounded attacks) and minimal perturbations (minimum-norm attacks)
    measures = ("bounded", "min-norm")

    def __init__(self, *, block_size: int | None = None, fixed_shape: bool = True, verify: bool = True,
                 speculate: bool = True, chain: bool = True, probe_shapes: bool = True):
        self.block_size = None if block_size is None else int(block_size)
        self.fixed_shape = bool(fixed_shape)
        self.speculate = bool(speculate)
        self.chain = bool(chain)
        self.verify = bool(verify)
        self.last_stats: dict = {}
        self.probe_shapes = bool(probe_shapes)
        # per model (dropped with it): {(what, input shape, device, ...): value} found by the probes
        self._probed = weakref.WeakKeyDictionary()

    # -- attacks ----------------------------------------------------------------------------------

    @staticmethod
    def make_attack(name: str, suite: AttackSuite, *, n_classes: int | None = None):
        """The attack object for a canonical bounded attack name, with the suite's hyper-parameters (built by
        the spec's factory, :attr:`ctrobust.attacks.AttackSpec.factory`)."""
        spec = get_attack(name)
        n_t = suite.n_target_classes if n_classes is None else min(suite.n_target_classes, n_classes - 1)
        return spec.load_factory()(spec, suite, n_t)

    # -- run --------------------------------------------------------------------------------------

    def run(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, ids: torch.Tensor,
            betas: torch.Tensor, seed: int, threat: str, eps: float, suite, batch_size,
            device, constraint: str = "ball") -> AttackOutcome:
        """Attack every row; see ``ctrobust.engines.base.AttackEngine``.

        Args:
            model: a ``CTModel`` (or any eval-mode classifier when all betas are 1), [0, 1] input.
            x: float ``(N, C, H, W)`` in [0, 1].
            y: int64 ``(N,)`` labels.
            ids: int64 ``(N,)`` example ids (key of every random draw).
            betas: float ``(N,)`` CT beta of each row, in (0, 1].
            seed: run seed (key of every random draw).
            threat: ``"Linf"`` or ``"L2"``.
            eps: ball radius (in [0, 1] pixel units).
            suite: the :class:`~ctrobust.attacks.AttackSuite` to run (attacks in order and their
                hyper-parameters), or anything :func:`~ctrobust.attacks.parse_suite` accepts.
            batch_size: maximum rows in flight (int), or ``"auto"`` (:data:`AUTO_BATCH`; on CUDA the largest
                size that fits, :meth:`auto_batch_size`; halved on CUDA OOM).
            device: where to run.

        Returns:
            ``AttackOutcome`` with one entry per row; ``x_adv`` on CPU, inside the ball (checked with
            ``ctrobust.threat.check_ball``).
        """
        t_start = time.perf_counter()
        threat_c = Threat.parse(threat).value
        eps = float(eps)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        suite = parse_suite(suite)
        if constraint not in self.constraints:
            raise ValueError(f"the fast engine attacks images in [0, 1] (constraint 'ball'), not {constraint!r}: "
                             "use the reference engine")
        device = torch.device(device)
        n = int(x.shape[0])
        if not (y.shape[0] == ids.shape[0] == betas.shape[0] == n):
            raise ValueError(f"x, y, ids and betas must have the same length, got {n}, {y.shape[0]}, "
                             f"{ids.shape[0]}, {betas.shape[0]}")
        betas64 = torch.as_tensor(betas, dtype=torch.float64)
        if n and not bool(((betas64 > 0) & (betas64 <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        auto = isinstance(batch_size, str)
        if auto:
            if batch_size != "auto":
                raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
            bs = AUTO_BATCH["cuda" if device.type == "cuda" else "cpu"]
        else:
            bs = int(batch_size)
            if bs < 1:
                raise ValueError(f"batch_size must be positive, got {batch_size}")

        out = _CallState.empty(x, min_norm=bool(suite.min_norm))
        warns, stats = out.warns, out.stats
        self.last_stats = stats
        if n == 0:
            return out.outcome(bs)

        # model: eval mode, no parameter gradients, on the device (all restored afterwards)
        if model.training:
            warns.append("the model was in train mode: evaluated in eval mode")
        fwd = bwd = 0
        row_fwd = np.zeros(n, np.int64)
        row_bwd = np.zeros(n, np.int64)
        caller = None
        # train flags, parameter gradients and beta are given back as they were: the per-row betas set
        # before every model call must not outlive the run
        with restoring_model_state(model, requires_grad=True), PeakMemory(device) as peak:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            model.to(device)
            xd = out.x_cpu.to(device)
            yd = torch.as_tensor(y).to(device=device, dtype=torch.int64)
            idd = torch.as_tensor(ids).to(device=device, dtype=torch.int64)
            bd = betas64.to(device)
            if auto and device.type == "cuda" and self.block_size is None:
                bs = self.auto_batch_size(model, xd, bd, device)
            while True:
                try:
                    block = self.block_size or (min(bs, CPU_BLOCK) if device.type == "cpu" else bs)
                    grain = None
                    if self.probe_shapes and self.fixed_shape and device.type == "cpu" and block > 1:
                        grain = _grain(model, xd, bd, block)
                    caller = ModelCaller(model, bd, block=block, fixed_shape=self.fixed_shape, grain=grain)
                    ctx = AttackContext(caller, xd, yd, idd, bd, int(seed), threat_c, eps)
                    self._run_all(ctx, suite, bs, out)
                    if suite.min_norm:
                        self._run_min_norm(ctx, suite, bs, out)
                    break
                except RuntimeError as exc:  # back off on out-of-memory (timm validate.py style)
                    if auto and is_oom(exc) and bs > 1:
                        torch.cuda.empty_cache()
                        if caller is not None:
                            fwd += caller.forward_rows
                            bwd += caller.backward_rows
                            row_fwd += caller.row_forwards.cpu().numpy()
                            row_bwd += caller.row_backwards.cpu().numpy()
                        bs = max(1, bs // 2)
                        warns.append(f"out of memory: batch size halved to {bs} and the call restarted")
                        continue
                    raise
            fwd += caller.forward_rows
            bwd += caller.backward_rows
            row_fwd += caller.row_forwards.cpu().numpy()
            row_bwd += caller.row_backwards.cpu().numpy()
            stats.update(forward_calls=caller.forward_calls, backward_calls=caller.backward_calls,
                         padded_rows=caller.padded_rows, forward_rows=fwd, backward_rows=bwd,
                         block=caller.block, grain=caller.grain, batch_size=bs,
                         seconds=time.perf_counter() - t_start)
            for key, count in ctx.notes.items():
                warns.append(f"{key}: {count}")
        check_ball(out.x_cpu, out.x_adv, threat_c, eps)
        return out.outcome(bs, row_fwd, row_bwd, peak.mb)

    def _run_all(self, ctx: AttackContext, suite: AttackSuite, bs, out: "_CallState") -> None:
        """Clean check, then each attack on the rows still robust; fills ``out`` in place."""
        n = ctx.x.shape[0]
        attack_names = suite.attacks
        out.x_adv.copy_(out.x_cpu)  # (a retry after out-of-memory starts from scratch)
        out.stats["attacks"] = {}
        robust, broken_by, warns = out.robust, out.broken_by, out.warns
        dev = ctx.x.device
        block = ctx.caller.block
        # clean check (its logits also give APGD-T/FAB-T their target classes)
        logits = torch.cat([ctx.forward(ctx.x[i:i + block], torch.arange(i, min(n, i + block), device=dev))
                            for i in range(0, n, block)], 0)
        ctx.clean_logits = logits
        progress.advance(n)
        k = logits.shape[1]
        cc = (logits.argmax(1) == ctx.y).cpu().numpy()
        out.clean_correct[:] = cc
        robust[:] = cc
        broken_by[:] = np.where(cc, "", "clean")
        if suite.needs_targets and suite.n_target_classes + 1 > k:
            warns.append(f"{suite.n_target_classes} target classes asked but the model has {k} classes: "
                         f"using {k - 1}")
        if any(a in ("apgd-dlr", "apgd-t") for a in attack_names) and k < (4 if "apgd-t" in attack_names else 3):
            raise ValueError(f"the DLR loss needs at least {4 if 'apgd-t' in attack_names else 3} classes, "
                             f"the model has {k}")
        betas_np = ctx.betas.cpu().numpy()
        for group in self._groups(suite, k):
            idx = np.flatnonzero(robust)
            if idx.size == 0:
                break
            progress.advance((n - idx.size) * sum(progress.attack_budget(a) for a in group))  # settled before
            if len(group) == 1:
                self._run_one(group[0], ctx, idx, bs, out)
            else:
                self._run_chain(group, ctx, idx, bs, out)
        # AutoAttack's check_square_sr, per beta: Square (gradient-free) breaking points that the
        # gradient-based attacks before it missed is a sign of gradient masking
        if any(not a.gradient for a in suite.specs) and any(a.gradient for a in suite.specs):
            for beta in sorted(set(betas_np.tolist()), reverse=True):
                sel = betas_np == beta
                frac = float(np.isin(broken_by[sel], [a.name for a in suite.specs if not a.gradient]).mean())
                if frac > 0.002:
                    warns.append(f"beta={beta:g}: Square Attack has decreased the robust accuracy of {frac:.2%}. "
                                 "This might indicate that the robustness evaluation using AutoAttack is "
                                 "unreliable (gradient masking?).")

    # -- minimum-norm attacks ----------------------------------------------------------------------

    def _run_min_norm(self, ctx: AttackContext, suite: AttackSuite, bs: int, out: "_CallState") -> None:
        """Every row's minimal perturbation: the suite's minimum-norm attacks on blocks of ``bs`` rows (they have
        no early exit: each minimises its distance for all its steps), the smallest verified distance kept
        (:func:`ctrobust.engines.minnorm.min_norm`). Without bounded attacks, robust-at-eps and the point kept
        for eps follow from the distance (:func:`ctrobust.curves.robust_at`)."""
        from ctrobust.curves import robust_at
        from ctrobust.engines.minnorm import min_norm

        t0 = time.perf_counter()
        caller, dev, n = ctx.caller, ctx.x.device, ctx.x.shape[0]
        attacks = [(spec.name, spec.load_factory()) for spec in suite.min_norm_specs]
        params = {spec.name: suite.min_norm_params(spec.name) for spec in suite.min_norm_specs}
        f0, b0 = caller.forward_rows, caller.backward_rows
        for start in range(0, n, bs):
            rows = torch.arange(start, min(n, start + bs), device=dev)

            def forward(xb: torch.Tensor, r: torch.Tensor, rows=rows) -> torch.Tensor:
                return caller.forward(xb, rows[r])

            clean = torch.as_tensor(out.clean_correct[start:start + rows.shape[0]])
            res = min_norm(forward, ctx.x[rows], ctx.y[rows], norm=ctx.norm, attacks=attacks, params=params,
                           seed=ctx.seed, ids=ctx.ids[rows], betas=ctx.betas[rows], clean_correct=clean)
            # the caller counted every forward; the backward sweeps are the attacks' own count
            caller.row_backwards.index_add_(0, rows, res.backward_passes.to(dev))
            caller.backward_rows += int(res.backward_passes.sum())
            sl = slice(start, start + rows.shape[0])
            out.min_norm[sl] = res.distance.cpu().numpy()
            out.min_norm_by[sl] = res.found_by
            out.x_min_norm[sl] = res.x_adv.cpu()
        out.stats["attacks"]["min-norm"] = {"rows": n, "forward_rows": caller.forward_rows - f0,
                                            "backward_rows": caller.backward_rows - b0,
                                            "seconds": time.perf_counter() - t0}
        if not suite.attacks:  # no bounded attack: "robust at eps" is the distance's
            broken = out.clean_correct & ~robust_at(out.min_norm, ctx.eps)
            out.robust[:] = out.clean_correct & ~broken
            out.broken_by[broken] = out.min_norm_by[broken]
            out.x_adv[torch.as_tensor(np.flatnonzero(broken), dtype=torch.long)] = out.x_min_norm[
                torch.as_tensor(np.flatnonzero(broken), dtype=torch.long)]

    # -- batch size ---------------------------------------------------------------------------------

    def auto_batch_size(self, model: torch.nn.Module, x: torch.Tensor, betas: torch.Tensor,
                        device: torch.device) -> int:
        """``batch_size="auto"`` on CUDA: the largest of :data:`CUDA_PROBE_SIZES` whose attack step fits.

        Probed once per model, input shape and device (cached on the engine) with a forward + input gradient
        at a beta < 1 (CT's activations cost more memory than ReLU's); the run's out-of-memory back-off
        still applies afterwards.
        """
        key = ("batch", tuple(x.shape[1:]), str(device))
        cache = self._probed.setdefault(model, {})
        if key not in cache:
            from ctrobust.ct import CTActivation, set_beta

            has_ct = any(isinstance(m, CTActivation) for m in model.modules())

            def step(n):
                xb = x[torch.arange(n, device=x.device) % x.shape[0]].detach().clone().requires_grad_(True)
                if has_ct:  # (the run sets the rows' own betas before every call)
                    set_beta(model, torch.full((n,), 0.5, dtype=torch.float32, device=x.device), validate=False)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(model(xb).sum(), [xb])
                del g, xb
                torch.cuda.synchronize(device)

            total = torch.cuda.get_device_properties(device).total_memory
            cache[key] = largest_fitting_batch(
                step, CUDA_PROBE_SIZES, total_bytes=total,
                peak_bytes=lambda: torch.cuda.max_memory_allocated(device),
                reset_peak=lambda: torch.cuda.reset_peak_memory_stats(device), empty_cache=torch.cuda.empty_cache)
        return cache[key]

    # -- attack groups ------------------------------------------------------------------------------

    def _groups(self, suite: AttackSuite, n_classes: int) -> list[list]:
        """The suite's attacks in order, consecutive APGD attacks chained into one group (``chain``)."""
        groups: list[list] = []
        chaining = self.chain and self.speculate and self.fixed_shape
        for name in suite.attacks:
            att = self.make_attack(name, suite, n_classes=n_classes)
            prev = groups[-1][-1] if groups else None
            if (chaining and isinstance(att, APGD) and isinstance(prev, APGD)
                    and (prev.n_iter, prev.rho, prev.eot_iter) == (att.n_iter, att.rho, att.eot_iter)):
                groups[-1].append(att)
            else:
                groups.append([att])
        return groups

    def _record(self, name: str, ctx: AttackContext, rows: torch.Tensor, hit: torch.Tensor, xa: torch.Tensor,
                out: "_CallState") -> np.ndarray:
        """Verify and record the rows ``rows[hit]`` broken by attack ``name`` with points ``xa[hit]``.

        Returns:
            Indices (into the engine's rows) of the points that failed verification (still robust).
        """
        failed = np.zeros(0, np.int64)
        if self.verify and bool(hit.any()):
            rows_hit = rows[hit]
            still = ctx.forward(xa[hit], rows_hit).argmax(1) != ctx.y[rows_hit]
            if not bool(still.all()):
                out.warns.append(f"{name}: {int((~still).sum())} adversarial points were classified correctly "
                             "when re-evaluated (randomized model?): not counted")
                failed = rows_hit[~still].cpu().numpy()
                hit = hit.clone()
                hit[hit.nonzero().squeeze(1)[~still]] = False
        hit_np = hit.cpu().numpy()
        rows_np = rows.cpu().numpy()[hit_np]
        pts = xa[hit].cpu()
        if rows_np.size:
            check_ball(out.x_cpu[rows_np], pts, ctx.norm, ctx.eps)
        out.robust[rows_np] = False
        out.broken_by[rows_np] = name
        out.x_adv[torch.as_tensor(rows_np, dtype=torch.long)] = pts
        return failed

    def _run_one(self, attack, ctx: AttackContext, idx: np.ndarray, bs, out: "_CallState") -> None:
        """Run one attack on the rows ``idx`` (still robust) and record it."""
        t0 = time.perf_counter()
        f0, b0 = ctx.caller.forward_rows, ctx.caller.backward_rows
        res = run_attack(attack, ctx, torch.as_tensor(idx, device=ctx.x.device), bs, speculate=self.speculate)
        n_before = int(out.robust.sum())
        self._record(attack.name, ctx, res.rows, res.broken, res.x_adv, out)
        out.stats["attacks"][attack.name] = {"rows": int(idx.size), "broken": n_before - int(out.robust.sum()),
                                         "steps": res.steps, "forward_rows": ctx.caller.forward_rows - f0,
                                         "backward_rows": ctx.caller.backward_rows - b0,
                                         "seconds": time.perf_counter() - t0}

    def _run_chain(self, group: list, ctx: AttackContext, idx: np.ndarray, bs, out: "_CallState") -> None:
        """Run consecutive APGD attacks as one chain, then record them attack by attack, in order.

        A point of attack ``j`` that fails verification (randomized models only) leaves its row robust,
        but the chain dropped that row's later attacks when ``j`` broke it: those are run again for such
        rows, attack by attack, as the sequential order would have.
        """
        dev = ctx.x.device
        robust = out.robust
        chain = APGD.chain(group)
        t0 = time.perf_counter()
        f0, b0 = ctx.caller.forward_rows, ctx.caller.backward_rows
        res = run_attack(chain, ctx, torch.as_tensor(idx, device=dev), bs, speculate=self.speculate)
        seconds = time.perf_counter() - t0
        df, db = ctx.caller.forward_rows - f0, ctx.caller.backward_rows - b0
        seg = chain.segment_of(res.phase)  # (meaningful where res.broken)
        total_rows = max(1, sum(res.segment_rows))
        stale = np.zeros(0, np.int64)  # rows whose chained results after a failed verification are void
        for j, (att, _) in enumerate(chain.segments):
            entering = int(robust.sum())
            share = res.segment_rows[j] / total_rows
            entry = {"rows": int(robust[idx].sum()), "steps": res.segment_steps[j], "chain": chain.name,
                     "forward_rows": round(df * share), "backward_rows": round(db * share),
                     "seconds": seconds * share}
            valid = torch.as_tensor(~np.isin(idx, stale), device=dev)
            hit = res.broken & (seg == j) & valid
            failed = self._record(att.name, ctx, res.rows, hit, res.x_adv, out)
            redo = stale[robust[stale]] if stale.size else stale
            if redo.size:  # rows whose attack j the chain dropped: run it now
                t1 = time.perf_counter()
                f1, b1 = ctx.caller.forward_rows, ctx.caller.backward_rows
                r2 = run_attack(att, ctx, torch.as_tensor(redo, device=dev), bs, speculate=self.speculate)
                failed = np.concatenate([failed, self._record(att.name, ctx, r2.rows, r2.broken, r2.x_adv, out)])
                entry["steps"] += r2.steps
                entry["forward_rows"] += ctx.caller.forward_rows - f1
                entry["backward_rows"] += ctx.caller.backward_rows - b1
                entry["seconds"] += time.perf_counter() - t1
            stale = np.union1d(stale, failed)
            entry["broken"] = entering - int(robust.sum())
            out.stats["attacks"][att.name] = entry
