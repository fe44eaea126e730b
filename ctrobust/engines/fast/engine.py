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

import numpy as np
import torch

from ctrobust._registry import did_you_mean
from ctrobust.engines.base import AttackOutcome, is_oom
from ctrobust.engines.fast._common import AttackContext, ModelCaller, run_attack
from ctrobust.engines.fast.apgd import APGD
from ctrobust.engines.fast.fab import FAB
from ctrobust.engines.fast.square import Square
from ctrobust.threat import Threat, check_ball

__all__ = ["FastEngine", "ATTACKS", "RAND_EOT_ITER", "AUTO_BATCH", "CPU_BLOCK"]

#: canonical attack names the fast engine runs.
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
#: AutoAttack's ``rand`` version: APGD-CE and APGD-DLR with gradients averaged over 20 draws.
RAND_ATTACKS = ("apgd-ce", "apgd-dlr")
RAND_EOT_ITER = 20
#: ``batch_size="auto"``: a fixed size per device type (not derived from N, so that chunking does not
#: change the block shape); halved on CUDA out-of-memory.
AUTO_BATCH = {"cuda": 512, "cpu": 128}
#: default rows per model call on CPU. CPU cost per row stops falling at about 8-16 rows (measured with 2
#: threads, CT forward+backward: ResNet-18 24-25 ms/row at 16 and 32 rows, 28 at 8; WRN-28-10 flat from 8),
#: and a smaller block wastes less padding when few rows are left (a block is always computed whole); on
#: accelerators the default block is the batch size.
CPU_BLOCK = 16


class FastEngine:
    """AutoAttack's attacks with early exit, beta-batching and per-example randomness.

    Args:
        n_iter: APGD and FAB iterations per restart/target (AutoAttack: 100).
        n_restarts: restarts of APGD-CE/APGD-DLR/FAB (AutoAttack standard and rand: 1).
        n_target_classes: targets of APGD-T and FAB-T (AutoAttack: 9).
        rho: APGD's checkpoint threshold (AutoAttack: 0.75).
        n_queries: Square's queries (AutoAttack: 5000).
        p_init: Square's initial fraction of changed pixels (AutoAttack: 0.8).
        eot_iter: APGD gradient draws per step (AutoAttack: 1; ``rand`` uses 20 whatever this says).
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
            :func:`~ctrobust.engines.fast._common.run_attack`).

    Example:
        >>> from ctrobust.ct import apply_ct
        >>> out = FastEngine().run(apply_ct(model, 1.0), x, y, ids=ids, betas=torch.full((len(x),), 0.9),
        ...                        seed=0, threat="Linf", eps=8 / 255, attacks=["apgd-ce", "apgd-t", "fab-t",
        ...                        "square"], batch_size=256, device=torch.device("cuda"))
        >>> out.robust.mean()
    """

    name = "fast"

    def __init__(self, *, n_iter: int = 100, n_restarts: int = 1, n_target_classes: int = 9, rho: float = 0.75,
                 n_queries: int = 5000, p_init: float = 0.8, eot_iter: int = 1, block_size: int | None = None,
                 fixed_shape: bool = True, verify: bool = True, speculate: bool = True):
        self.n_iter = int(n_iter)
        self.n_restarts = int(n_restarts)
        self.n_target_classes = int(n_target_classes)
        self.rho = float(rho)
        self.n_queries = int(n_queries)
        self.p_init = float(p_init)
        self.eot_iter = int(eot_iter)
        self.block_size = None if block_size is None else int(block_size)
        self.fixed_shape = bool(fixed_shape)
        self.speculate = bool(speculate)
        self.verify = bool(verify)
        self.last_stats: dict = {}

    # -- attacks ----------------------------------------------------------------------------------

    def make_attack(self, name: str, *, eot_iter: int | None = None, n_classes: int | None = None):
        """The attack object for a canonical name, with this engine's hyper-parameters."""
        eot = self.eot_iter if eot_iter is None else int(eot_iter)
        n_t = self.n_target_classes if n_classes is None else min(self.n_target_classes, n_classes - 1)
        if name == "apgd-ce":
            return APGD(loss="ce", n_iter=self.n_iter, n_restarts=self.n_restarts, rho=self.rho, eot_iter=eot)
        if name == "apgd-dlr":
            return APGD(loss="dlr", n_iter=self.n_iter, n_restarts=self.n_restarts, rho=self.rho, eot_iter=eot)
        if name == "apgd-t":
            return APGD(loss="dlr-targeted", n_iter=self.n_iter, n_restarts=1, n_target_classes=n_t,
                        rho=self.rho, eot_iter=eot)
        if name == "fab-t":
            return FAB(targeted=True, n_iter=self.n_iter, n_restarts=1, n_target_classes=n_t)
        if name == "fab":
            return FAB(targeted=False, n_iter=self.n_iter, n_restarts=self.n_restarts)
        if name == "square":
            return Square(n_queries=self.n_queries, p_init=self.p_init)
        raise did_you_mean("attack", name, ATTACKS)

    @staticmethod
    def _canon_attacks(attacks, rand: bool) -> tuple[list[str], bool]:
        if isinstance(attacks, str):
            attacks = [a.strip() for a in attacks.split(",") if a.strip()]
        attacks = [str(a).strip().lower() for a in attacks]
        if attacks == ["standard"]:
            attacks = ["apgd-ce", "apgd-t", "fab-t", "square"]
        if "rand" in attacks:
            if attacks != ["rand"]:
                raise ValueError("'rand' cannot be combined with other attacks")
            attacks, rand = list(RAND_ATTACKS), True
        for a in attacks:
            if a not in ATTACKS:
                raise did_you_mean("attack", a, ATTACKS + ("standard", "rand"))
        if len(set(attacks)) != len(attacks):
            raise ValueError(f"attack listed twice: {attacks}")
        return attacks, rand

    # -- run --------------------------------------------------------------------------------------

    def run(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, ids: torch.Tensor,
            betas: torch.Tensor, seed: int, threat: str, eps: float, attacks, batch_size, device,
            rand: bool = False) -> AttackOutcome:
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
            attacks: canonical names in run order (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``,
                ``apgd-dlr``, ``fab``), or ``["rand"]``.
            batch_size: maximum rows in flight (int), or ``"auto"`` (:data:`AUTO_BATCH`, halved on CUDA OOM).
            device: where to run.
            rand: AutoAttack's ``rand`` version: gradients averaged over 20 draws (EOT) in APGD.

        Returns:
            ``AttackOutcome`` with one entry per row; ``x_adv`` on CPU, inside the ball (checked with
            ``ctrobust.threat.check_ball``).
        """
        t_start = time.perf_counter()
        threat_c = Threat.parse(threat).value
        eps = float(eps)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        attack_names, rand = self._canon_attacks(attacks, rand)
        eot = RAND_EOT_ITER if rand else self.eot_iter
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

        warns: list[str] = []
        x_cpu = x.detach().to("cpu", torch.float32)
        clean_correct = np.zeros(n, bool)
        robust = np.zeros(n, bool)
        broken_by = np.full(n, "", dtype=object)
        x_adv = x_cpu.clone()
        stats = {"attacks": {}, "forward_calls": 0, "backward_calls": 0, "padded_rows": 0}
        self.last_stats = stats
        if n == 0:
            return AttackOutcome(clean_correct, robust, broken_by.astype(str), x_adv, 0, 0, bs, warns)

        # model: eval mode, no parameter gradients, on the device (all restored afterwards)
        modes = [(m, m.training) for m in model.modules()]
        if model.training:
            warns.append("the model was in train mode: evaluated in eval mode")
        grads = [(p, p.requires_grad) for p in model.parameters()]
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        model.to(device)
        fwd = bwd = 0
        caller = None
        try:
            xd = x_cpu.to(device)
            yd = torch.as_tensor(y).to(device=device, dtype=torch.int64)
            idd = torch.as_tensor(ids).to(device=device, dtype=torch.int64)
            bd = betas64.to(device)
            while True:
                try:
                    block = self.block_size or (min(bs, CPU_BLOCK) if device.type == "cpu" else bs)
                    caller = ModelCaller(model, bd, block=block, fixed_shape=self.fixed_shape)
                    ctx = AttackContext(caller, xd, yd, idd, bd, int(seed), threat_c, eps)
                    self._run_all(ctx, attack_names, eot, bs, x_cpu, clean_correct, robust, broken_by, x_adv,
                                  stats, warns)
                    break
                except RuntimeError as exc:  # back off on out-of-memory (timm validate.py style)
                    if auto and is_oom(exc) and bs > 1:
                        torch.cuda.empty_cache()
                        if caller is not None:
                            fwd += caller.forward_rows
                            bwd += caller.backward_rows
                        bs = max(1, bs // 2)
                        warns.append(f"out of memory: batch size halved to {bs} and the call restarted")
                        continue
                    raise
            fwd += caller.forward_rows
            bwd += caller.backward_rows
            stats.update(forward_calls=caller.forward_calls, backward_calls=caller.backward_calls,
                         padded_rows=caller.padded_rows, forward_rows=fwd, backward_rows=bwd,
                         block=caller.block, batch_size=bs, seconds=time.perf_counter() - t_start)
            for key, count in ctx.notes.items():
                warns.append(f"{key}: {count}")
        finally:
            for m, mode in modes:
                m.training = mode
            for p, rg in grads:
                p.requires_grad_(rg)
        check_ball(x_cpu, x_adv, threat_c, eps)
        return AttackOutcome(clean_correct, robust, broken_by.astype(str), x_adv, forward_passes=int(fwd),
                             backward_passes=int(bwd), batch_size=int(bs), warnings=list(dict.fromkeys(warns)))

    def _run_all(self, ctx: AttackContext, attack_names, eot, bs, x_cpu, clean_correct, robust, broken_by,
                 x_adv, stats, warns) -> None:
        """Clean check, then each attack on the rows still robust; fills the output arrays in place."""
        n = ctx.x.shape[0]
        x_adv.copy_(x_cpu)  # (a retry after out-of-memory starts from scratch)
        stats["attacks"] = {}
        dev = ctx.x.device
        block = ctx.caller.block
        # clean check (its logits also give APGD-T/FAB-T their target classes)
        logits = torch.cat([ctx.forward(ctx.x[i:i + block], torch.arange(i, min(n, i + block), device=dev))
                            for i in range(0, n, block)], 0)
        ctx.clean_logits = logits
        k = logits.shape[1]
        cc = (logits.argmax(1) == ctx.y).cpu().numpy()
        clean_correct[:] = cc
        robust[:] = cc
        broken_by[:] = np.where(cc, "", "clean")
        if any(a in ("apgd-t", "fab-t") for a in attack_names) and self.n_target_classes + 1 > k:
            warns.append(f"{self.n_target_classes} target classes asked but the model has {k} classes: "
                         f"using {k - 1}")
        if any(a in ("apgd-dlr", "apgd-t") for a in attack_names) and k < (4 if "apgd-t" in attack_names else 3):
            raise ValueError(f"the DLR loss needs at least {4 if 'apgd-t' in attack_names else 3} classes, "
                             f"the model has {k}")
        betas_np = ctx.betas.cpu().numpy()
        for name in attack_names:
            idx = np.flatnonzero(robust)
            if idx.size == 0:
                break
            t0 = time.perf_counter()
            f0, b0 = ctx.caller.forward_rows, ctx.caller.backward_rows
            attack = self.make_attack(name, eot_iter=eot, n_classes=k)
            res = run_attack(attack, ctx, torch.as_tensor(idx, device=dev), bs, speculate=self.speculate)
            hit = res.broken
            if self.verify and bool(hit.any()):
                rows_hit = res.rows[hit]
                still = ctx.forward(res.x_adv[hit], rows_hit).argmax(1) != ctx.y[rows_hit]
                if not bool(still.all()):
                    warns.append(f"{name}: {int((~still).sum())} adversarial points were classified correctly "
                                 "when re-evaluated (randomized model?): not counted")
                    hit = hit.clone()
                    hit[hit.nonzero().squeeze(1)[~still]] = False
            hit_np = hit.cpu().numpy()
            rows_np = idx[hit_np]
            xa = res.x_adv[hit].cpu()
            if rows_np.size:
                check_ball(x_cpu[rows_np], xa, ctx.norm, ctx.eps)
            robust[rows_np] = False
            broken_by[rows_np] = name
            x_adv[torch.as_tensor(rows_np, dtype=torch.long)] = xa
            stats["attacks"][name] = {"rows": int(idx.size), "broken": int(hit_np.sum()), "steps": res.steps,
                                      "forward_rows": ctx.caller.forward_rows - f0,
                                      "backward_rows": ctx.caller.backward_rows - b0,
                                      "seconds": time.perf_counter() - t0}
        # AutoAttack's check_square_sr, per beta: Square (gradient-free) breaking points that the
        # gradient-based attacks before it missed is a sign of gradient masking
        if "square" in attack_names and len(attack_names) > 1:
            for beta in sorted(set(betas_np.tolist()), reverse=True):
                sel = betas_np == beta
                frac = float((broken_by[sel] == "square").mean())
                if frac > 0.002:
                    warns.append(f"beta={beta:g}: Square Attack has decreased the robust accuracy of {frac:.2%}. "
                                 "This might indicate that the robustness evaluation using AutoAttack is "
                                 "unreliable (gradient masking?).")
