"""The model caller of the fast attacks: per-row CT beta, fixed-shape blocks, and the count of the work.

Row model
---------
An engine call attacks ``N`` *rows* (one example at one CT beta). Attacks never see the model directly;
they call ``ctx.forward(x, rows)`` where ``rows`` (int64 ``(B,)``) are indices into the context's row
arrays. The :class:`ModelCaller` sets the per-row betas (``ctrobust.ct.set_beta``) before every model
call, because after early exit and refilling the rows in the batch change from one call to the next.

Batch invariance
----------------
Every per-row quantity is computed from that row's own state: all random numbers come from
:mod:`ctrobust.engines.fast.rng` keyed by the row, all reductions are per row, and float sums over pixels
(norms, dot products) are accumulated in float64 and rounded to float32, so a different reduction order on
another batch shape almost never changes a float32 bit. The model itself is the remaining source of
batch-shape dependence: BLAS and convolution libraries pick kernels by batch size (logits of the same image
can differ in the last bits between batch sizes). The caller therefore evaluates the model on *fixed-shape
blocks*: every call gets exactly ``block`` rows, padded with copies of the first row. A row's logits then do
not depend on the other rows, on the number of rows in flight, on chunking or on beta-batching.
:func:`invariant_grain` finds, per model, the smallest row count at whose multiples that still holds, so
short blocks need less padding.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ModelCaller", "invariant_grain"]


class ModelCaller:
    """Calls the model on rows, with per-row CT beta, in fixed-shape blocks, and counts the work.

    Args:
        model: eval-mode module mapping [0, 1] images ``(B, C, H, W)`` to logits ``(B, K)``; a ``CTModel``
            (or any module containing ``CTActivation``) gets ``set_beta`` before every call.
        betas: float ``(N,)`` CT beta of every row (on the model's device).
        block: rows per model call. Larger inputs are split into blocks.
        fixed_shape: pad every block to exactly ``block`` rows (bitwise batch invariance of the model's
            numerics, see the module docstring); ``False`` saves the padding compute.
        grain: with ``fixed_shape``, pad a short block only to the next multiple of ``grain`` rows instead of
            to ``block`` (``None``: ``block``). Only sound for a ``grain`` that :func:`invariant_grain` found:
            one where the model's numerics per row are the same at every multiple of it.

    Attributes:
        forward_rows / backward_rows: example-forwards / example-backwards spent (padding excluded).
        forward_calls / backward_calls: batched model calls / backward sweeps.
        padded_rows: rows of padding pushed through the model (compute overhead of ``fixed_shape``).
    """

    def __init__(self, model: torch.nn.Module, betas: torch.Tensor, *, block: int, fixed_shape: bool = True,
                 grain: int | None = None):
        from ctrobust.ct import CTActivation, set_beta

        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.model = model
        self.block = int(block)
        self.grain = self.block if grain is None else max(1, min(int(grain), self.block))
        self.fixed_shape = bool(fixed_shape)
        self._set_beta = set_beta
        self.has_ct = any(isinstance(m, CTActivation) for m in model.modules())
        self.betas32 = betas.to(torch.float32)
        if not self.has_ct and bool((betas != 1.0).any()):
            raise ValueError("rows have beta != 1 but the model has no CT activation: apply_ct(model, beta) first")
        self.forward_rows = 0
        self.backward_rows = 0
        # per-row example passes (on the device: counting costs no host synchronisation), so that the
        # passes of each beta of a beta-batched call are measured, not split evenly
        self.row_forwards = torch.zeros(betas.shape[0], dtype=torch.int64, device=betas.device)
        self.row_backwards = torch.zeros_like(self.row_forwards)
        self.forward_calls = 0
        self.backward_calls = 0
        self.padded_rows = 0

    def _blocks(self, n: int):
        for i in range(0, n, self.block):
            yield i, min(i + self.block, n)

    def forward(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of images ``x`` ``(B, C, H, W)`` for rows ``rows`` ``(B,)``.

        Differentiable when ``x`` requires grad (the padding is a copy of a row of ``x``, so it does not
        contribute to gradients of losses computed on the returned logits).
        """
        n = x.shape[0]
        outs = []
        for i, j in self._blocks(n):
            xb, rb = x[i:j], rows[i:j]
            m = j - i
            if self.fixed_shape and m < self.block and m % self.grain:
                pad = min(self.block, -(-m // self.grain) * self.grain) - m
                xb = torch.cat([xb, xb[:1].detach().expand(pad, *xb.shape[1:])], 0)
                rb = torch.cat([rb, rb[:1].expand(pad)], 0)
                self.padded_rows += pad
            if self.has_ct:
                self._set_beta(self.model, self.betas32[rb], validate=False)
            outs.append(self.model(xb)[:m])
            self.forward_calls += 1
        self.forward_rows += n
        self.row_forwards.index_add_(0, rows, torch.ones_like(rows))
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)

    def count_backward(self, rows: torch.Tensor, sweeps: int = 1) -> None:
        """Record ``sweeps`` backward passes over the rows ``rows`` (split in blocks like the forward)."""
        n_rows = int(rows.shape[0])
        self.row_backwards.index_add_(0, rows, torch.full_like(rows, sweeps))
        self.backward_rows += n_rows * sweeps
        self.backward_calls += sweeps * max(1, math.ceil(n_rows / self.block))


def invariant_grain(model: torch.nn.Module, x: torch.Tensor, betas: torch.Tensor, block: int) -> int:
    """The smallest ``g`` dividing ``block`` such that the model computes every row bit for bit the same in a
    call of any multiple of ``g`` rows (up to ``block``) as in a call of ``block`` rows.

    Checked on ``block`` rows cycling through ``x`` (with their ``betas``) for the three things the attacks
    use: logits without gradient, logits with gradient, and the input gradient of a random combination of
    the logits; sizes ``g, 2g, ...`` are compared with the full block and the first difference rejects
    ``g``. Kernel libraries choose their algorithm by shape, not by values, and a different algorithm
    changes the last bits of random inputs almost surely, so equality here means the same computation.
    On the CPU used for development, ResNet-18 and WRN-28-10 gave ``g = 2``; a model whose kernels depend on
    the batch size gets ``g = block`` (every call padded to the block, as without the probe).

    Args:
        model: the model as the engine calls it (CT applied; eval mode; parameters frozen).
        x: float ``(N, C, H, W)`` images (any N >= 1).
        betas: float ``(N,)`` their CT betas.
        block: the block size.

    Returns:
        ``g`` in the divisors of ``block``.
    """
    from ctrobust.ct import CTActivation, set_beta

    has_ct = any(isinstance(m, CTActivation) for m in model.modules())
    idx = torch.arange(block, device=x.device) % x.shape[0]
    xb, bb = x[idx].detach(), betas[idx].to(torch.float32)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def run(m):
        if has_ct:
            set_beta(model, bb[:m], validate=False)
        with torch.no_grad():
            z0 = model(xb[:m])
        xr = xb[:m].clone().requires_grad_(True)
        with torch.enable_grad():
            z = model(xr)
            (g,) = torch.autograd.grad((z * w[:m]).sum(), [xr])
        return z0, z.detach(), g

    with torch.no_grad():
        if has_ct:
            set_beta(model, bb[:1], validate=False)
        k = model(xb[:1]).shape[1]
    w = torch.randn(block, k, generator=gen).to(x.device)
    ref = run(block)
    for g in [d for d in range(1, block) if block % d == 0]:
        if all(all(torch.equal(a, r[:m]) for a, r in zip(run(m), ref)) for m in range(g, block, g)):
            return g
    return block
