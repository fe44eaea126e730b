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

from ctrobust.attacks import ATTACKS, AttackSuite, parse_suite
from ctrobust.ct import set_beta
from ctrobust.engines.base import (AttackOutcome, PassCounter, PeakMemory, capture_warnings, is_oom,
                                   restoring_model_state)
from ctrobust.threat import check_constraint

__all__ = ["ReferenceEngine"]

_AUTO_BATCH = 250  # AutoAttack's own default


def _make_autoattack(model, threat: str, eps: float, seed: int, device, suite: AttackSuite):
    """pyautoattack's ``AutoAttack`` with the suite's hyper-parameters.

    For the named suites these are exactly pyautoattack's own (``standard``: 1 restart, 9 target classes,
    5000 queries; ``rand``: EOT over 20 draws), so the run is pyautoattack's arithmetic; a custom suite
    sets the same attributes to its values.
    """
    from pyautoattack import AutoAttack

    # "rand" also tells pyautoattack not to warn that the model is randomized
    aa = AutoAttack(model, norm=threat, eps=eps, seed=seed, device=device,
                    version="rand" if suite.eot_iter > 1 else "standard")
    for att in (aa.apgd, aa.apgd_targeted):
        att.n_iter, att.eot_iter, att.rho = suite.n_iter, suite.eot_iter, suite.rho
    aa.apgd.n_restarts = suite.n_restarts
    aa.apgd_targeted.n_target_classes = suite.n_target_classes
    aa.fab.n_iter, aa.fab.n_restarts, aa.fab.n_target_classes = suite.n_iter, suite.n_restarts, suite.n_target_classes
    aa.square.n_queries, aa.square.p_init = suite.n_queries, suite.p_init
    aa.verbose = False
    return aa


class ReferenceEngine:
    """Standard AutoAttack through pyautoattack, with per-example outcomes and captured warnings."""

    name = "reference"
    #: pyautoattack evaluates one model at a time: the sweep calls it once per beta
    batches_betas = False
    #: pyautoattack reseeds every batch, so outcomes depend on the batch size (part of the experiment key)
    batch_invariant = False
    #: pyautoattack clamps to [0, 1] in whatever space it is given: the threat ball on images, the clamped
    #: ball on the reference protocol's normalized inputs
    constraints = ("ball", "clamped-ball")
    #: pyautoattack's attacks only: robust-at-eps
    measures = ("bounded",)

    def run(self, model, x, y, *, ids, betas, seed, threat, eps, suite, batch_size, device,
            constraint: str = "ball") -> AttackOutcome:
        """Attack every row with pyautoattack, one beta group at a time; see ``AttackEngine.run``.

        ``constraint="clamped-ball"`` checks the results against what AutoAttack computes on inputs
        outside [0, 1] (the CT reference protocol's normalized inputs) instead of the threat ball.

        The model is put in eval mode for the run, as pyautoattack expects (a train-mode model would update
        BatchNorm statistics while it is attacked); each module's flag and the CT beta are restored after.
        """
        suite = parse_suite(suite)
        n = x.shape[0]
        clean_correct = np.zeros(n, bool)
        robust = np.zeros(n, bool)
        broken_by = np.full(n, "", dtype=object)
        x_adv = x.detach().clone().cpu()
        warns: list = []
        if model.training:
            warns.append("the model was in train mode: evaluated in eval mode")
        used_bs = 0
        betas_np = np.asarray(betas, dtype=np.float64)
        # pyautoattack attacks the counting wrapper: its forwards and backwards are counted as the fast engine
        # counts its own (example passes), so the results' cost columns mean the same for both engines
        counted = PassCounter(model)
        with restoring_model_state(model), PeakMemory(device) as peak:
            model.eval()
            for beta in sorted(set(betas_np.tolist()), reverse=True):
                rows = np.flatnonzero(betas_np == beta)
                set_beta(model, float(beta))
                bs = batch_size
                if bs == "auto":  # AutoAttack's default on every device: the batches, hence results, do not
                    bs = min(len(rows), _AUTO_BATCH)  # depend on the device

                while True:
                    try:
                        res = self._run_group(counted, x[rows], y[rows], seed, threat, eps, suite, int(bs), device)
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
        check_constraint(x.cpu(), x_adv, threat, eps, constraint)
        return AttackOutcome(clean_correct, robust, broken_by.astype(str), x_adv,
                             forward_passes=counted.forward_passes, backward_passes=counted.backward_passes,
                             batch_size=used_bs, warnings=warns, peak_mem_mb=peak.mb, accounting="call")

    def _run_group(self, model, x, y, seed, threat, eps, suite: AttackSuite, bs, device):
        from pyautoattack import checks

        n = x.shape[0]
        dev = torch.device(device)
        warns: list = []
        aa = _make_autoattack(model, threat, eps, seed, dev, suite)
        x_cpu, y_cpu = x.detach().cpu(), y.detach().cpu()
        with torch.no_grad():
            preds = torch.cat([model(x_cpu[i:i + bs].to(dev)).argmax(1).cpu() for i in range(0, n, bs)])
        clean_correct = (preds == y_cpu).numpy()
        robust = clean_correct.copy()
        broken_by = np.where(clean_correct, "", "clean").astype(object)
        x_adv = x_cpu.clone()
        acc = {"clean": robust.mean() if n else 0.0}
        with capture_warnings(warns):
            for attack in suite.attacks:
                idx = np.flatnonzero(robust)
                if idx.size == 0:
                    break
                aa.attacks_to_run = [ATTACKS[attack].pyautoattack]
                xa, ya = aa.run_standard_evaluation(x_cpu[idx], y_cpu[idx], batch_size=bs)
                broke = (ya.cpu() != y_cpu[idx]).numpy()
                robust[idx[broke]] = False
                broken_by[idx[broke]] = attack
                x_adv[torch.as_tensor(idx[broke])] = xa.cpu()[torch.as_tensor(np.flatnonzero(broke))]
                acc[attack] = robust.mean()
            checks.check_square_sr(acc, logger=aa.logger)
        return clean_correct, robust, broken_by, x_adv, list(dict.fromkeys(warns))
