"""The ``forward`` engine: no attack, one forward pass per row at its beta, correct or not.

Measurements that are not attacks plug in here: accuracy under common corruptions (``--threat corruptions``)
evaluates the model at every beta on the corrupted images as they are. The outcome has the engines' shape
(:class:`~ctrobust.engines.base.AttackOutcome`): ``clean_correct`` and ``robust`` are both "the model
classifies this (corrupted) image correctly", ``broken_by`` is ``"clean"`` where it does not, ``x_adv`` is the
image itself, and every row costs one example-forward.
"""

from __future__ import annotations

import numpy as np
import torch

from ctrobust.engines.base import AttackOutcome, PeakMemory, restoring_model_state

__all__ = ["ForwardEngine"]


class ForwardEngine:
    """Per-row correctness of a CT model at per-row betas (fixed-shape blocks, so a row's logits do not depend
    on the other rows in the call)."""

    name = "forward"
    batches_betas = True
    batch_invariant = True
    constraints = ("ball",)
    #: what it measures: per-example correctness, no attack
    measures = ("accuracy",)

    def run(self, model, x, y, *, ids, betas, seed, threat, eps, suite, batch_size, device,
            constraint: str = "ball") -> AttackOutcome:
        """Classify every row ``x`` (N, C, H, W) in [0, 1] at its beta ``betas`` (N,); ``seed``, ``threat``,
        ``eps``, ``suite`` and ``constraint`` are unused (no attack). ``batch_size``: rows per model call (int or
        ``"auto"``: 256)."""
        from ctrobust.engines.fast._caller import ModelCaller

        device = torch.device(device)
        n = int(x.shape[0])
        bs = 256 if isinstance(batch_size, str) else int(batch_size)
        correct = np.zeros(n, bool)
        rows = np.zeros(n, np.int64)
        warns = []
        if model.training:
            warns.append("the model was in train mode: evaluated in eval mode")
        with restoring_model_state(model), PeakMemory(device) as peak, torch.no_grad():
            model.eval().to(device)
            caller = ModelCaller(model, torch.as_tensor(betas, dtype=torch.float64).to(device), block=bs)
            yd = torch.as_tensor(y).to(device)
            for i in range(0, n, bs):
                r = torch.arange(i, min(n, i + bs), device=device)
                pred = caller.forward(x[i:i + bs].to(device, torch.float32), r).argmax(1)
                correct[i:i + bs] = (pred == yd[r]).cpu().numpy()
            rows[:] = caller.row_forwards.cpu().numpy()
        return AttackOutcome(correct, correct.copy(), np.where(correct, "", "clean").astype(str),
                             x.detach().cpu().to(torch.float32), forward_passes=int(rows.sum()), backward_passes=0,
                             batch_size=bs, warnings=warns, row_forward_passes=rows,
                             row_backward_passes=np.zeros(n, np.int64), peak_mem_mb=peak.mb, accounting="row")
