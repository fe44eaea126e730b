"""Reference engine: standard AutoAttack exactly as pyautoattack (PyPI, 0.2.0) runs it.

pyautoattack's ``run_standard_evaluation`` returns only the final adversarial images. To record *which*
attack broke each example without re-implementing its loop, the attacks are run one at a time through
``run_standard_evaluation`` on the examples still robust, with the same batch size and seed: this
reproduces the batches of a single all-attacks call exactly (pyautoattack reseeds every batch with the
fixed seed), so robust flags equal a direct pyautoattack run. Rows are grouped by beta; each group is one
pyautoattack evaluation of the CT model at that beta.

Note: because pyautoattack reseeds per batch, its results depend on batch size and chunking. The fast
engine does not have this property (its randomness is per example).
"""

from __future__ import annotations

import numpy as np
import torch

from ctrobust.ct import set_beta
from ctrobust.engines.base import AttackOutcome, capture_warnings, is_oom
from ctrobust.threat import check_ball

__all__ = ["ReferenceEngine"]

_CPU_DEFAULT_BATCH = 250  # AutoAttack's own default


class ReferenceEngine:
    """Standard AutoAttack through pyautoattack, with per-example outcomes and captured warnings."""

    name = "reference"

    @staticmethod
    def _make(model, threat, eps, seed, device, rand):
        from pyautoattack import AutoAttack

        # custom subsets keep the standard hyper-parameters (1 restart, 9 target classes, 5000 queries);
        # "rand" is AutoAttack's version for randomized defenses (APGD-CE/DLR with EOT over 20 draws)
        return AutoAttack(model, norm=threat, eps=eps, seed=seed, device=device,
                          version="rand" if rand else "standard")

    def run(self, model, x, y, *, ids, betas, seed, threat, eps, attacks, batch_size, device,
            rand: bool = False) -> AttackOutcome:
        n = x.shape[0]
        clean_correct = np.zeros(n, bool)
        robust = np.zeros(n, bool)
        broken_by = np.full(n, "", dtype=object)
        x_adv = x.detach().clone().cpu()
        warns: list = []
        used_bs = 0
        betas_np = np.asarray(betas, dtype=np.float64)
        for beta in sorted(set(betas_np.tolist()), reverse=True):
            rows = np.flatnonzero(betas_np == beta)
            set_beta(model, float(beta))
            bs = batch_size
            if bs == "auto":
                bs = len(rows) if torch.device(device).type == "cuda" else min(len(rows), _CPU_DEFAULT_BATCH)
            while True:
                try:
                    res = self._run_group(model, x[rows], y[rows], seed, threat, eps, attacks, int(bs), device, rand)
                    break
                except RuntimeError as exc:  # back off on out-of-memory, as timm's validate does
                    if batch_size == "auto" and is_oom(exc) and bs > 1:
                        torch.cuda.empty_cache()
                        bs = max(1, int(bs) // 2)
                        continue
                    raise
            cc, rb, bb, xa, w = res
            clean_correct[rows], robust[rows], broken_by[rows] = cc, rb, bb
            x_adv[torch.as_tensor(rows)] = xa
            warns += [f"beta={beta:g}: {m}" for m in w]
            used_bs = max(used_bs, int(bs))
        check_ball(x.cpu(), x_adv, threat, eps)
        return AttackOutcome(clean_correct, robust, broken_by.astype(str), x_adv,
                             forward_passes=0, backward_passes=0, batch_size=used_bs, warnings=warns)

    def _run_group(self, model, x, y, seed, threat, eps, attacks, bs, device, rand):
        from pyautoattack import checks

        n = x.shape[0]
        dev = torch.device(device)
        warns: list = []
        aa = self._make(model, threat, eps, seed, dev, rand)
        aa.verbose = False
        x_cpu, y_cpu = x.detach().cpu(), y.detach().cpu()
        with torch.no_grad():
            preds = torch.cat([model(x_cpu[i:i + bs].to(dev)).argmax(1).cpu() for i in range(0, n, bs)])
        clean_correct = (preds == y_cpu).numpy()
        robust = clean_correct.copy()
        broken_by = np.where(clean_correct, "", "clean").astype(object)
        x_adv = x_cpu.clone()
        acc = {"clean": robust.mean() if n else 0.0}
        with capture_warnings(warns):
            for attack in attacks:
                idx = np.flatnonzero(robust)
                if idx.size == 0:
                    break
                aa.attacks_to_run = [attack]
                xa, ya = aa.run_standard_evaluation(x_cpu[idx], y_cpu[idx], batch_size=bs)
                broke = (ya.cpu() != y_cpu[idx]).numpy()
                robust[idx[broke]] = False
                broken_by[idx[broke]] = attack
                x_adv[torch.as_tensor(idx[broke])] = xa.cpu()[torch.as_tensor(np.flatnonzero(broke))]
                acc[attack] = robust.mean()
            checks.check_square_sr(acc, logger=aa.logger)
        return clean_correct, robust, broken_by, x_adv, list(dict.fromkeys(warns))
