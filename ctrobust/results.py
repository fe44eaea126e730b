"""Result rows: finished units -> one row per (beta, seed) with accuracies, intervals and costs.

The one place that turns per-example outcomes into the columns of ``results.csv`` / ``results.json``
(the store only reads and writes the files). Accuracies are fractions in [0, 1] with 95 % Wilson
intervals; ``broken_<attack>`` counts the rows each attack broke first.

Costs: ``forward_passes`` / ``backward_passes`` are example passes measured for this beta (engines that
count per row; the reference engine runs one beta per call, so its call totals are per beta).
``seconds`` is wall time of this beta's share: measured directly when the engine ran one beta per call;
when one beta-batched call served several betas, the call's seconds are shared out in proportion to each
beta's measured passes. ``call_seconds`` and ``call_betas`` are the raw measurement: the wall time of the
engine call(s) that computed the row and how many betas shared them.

Threat model: ``protocol`` and ``threat_note`` (empty for the stated threat model; the ``reference``
protocol says its points are not in the stated eps-ball), ``pixel_linf_max`` (largest max |x_adv - x| in
[0, 1] pixel units) and ``in_ball_frac`` (fraction of rows whose point lies in the stated ball).

Arithmetic: ``precision`` (float32; on CUDA whether TF32 was allowed for convolutions and matmuls) and
``peak_mem_mb`` (the accelerator's peak memory during the engine calls; empty on the CPU).
"""

from __future__ import annotations

from ctrobust.data import TIMING_NOTE
from ctrobust.protocols import get_protocol
from ctrobust.stats import wilson_interval
from ctrobust.store import RunDir, merge_units

__all__ = ["result_rows", "write_results"]


def result_rows(run: RunDir, outcomes: dict, metas: list[dict], coverage) -> list[dict]:
    """One row per (seed, beta) of the run's grid that has finished units.

    Args:
        run: the run dir (its config gives the grid and the constant columns).
        outcomes: merged per-example outcomes (:func:`ctrobust.store.merge_units`).
        metas: the finished units' metadata.
        coverage: the model's :class:`ctrobust.ct.Coverage` under the run's CT scope (written as ``ct_*``
            columns: the counts, ``ct_unsupported``, ``ct_untouched`` and ``ct_scope``).
    """
    cfg = run.cfg
    cov = coverage.to_dict()
    rows = []
    for seed in cfg.seeds:
        for beta in cfg.betas:
            m = (outcomes["seed"] == seed) & (outcomes["beta"] == beta)
            n = int(m.sum())
            if n == 0:
                continue
            um = [u for u in metas if u["seed"] == seed and u["beta"] == beta]
            k_clean, k_rob = int(outcomes["clean_correct"][m].sum()), int(outcomes["robust"][m].sum())
            clo, chi = wilson_interval(k_clean, n)
            rlo, rhi = wilson_interval(k_rob, n)
            row = {"model": cfg.model, "dataset": cfg.dataset, "threat": cfg.threat, "eps": cfg.eps,
                   "beta": beta, "coeff": cfg.coeff, "seed": seed, "n": n,
                   "clean_acc": k_clean / n, "clean_lo": clo, "clean_hi": chi,
                   "robust_acc": k_rob / n, "robust_lo": rlo, "robust_hi": rhi}
            for a in cfg.suite.attacks:
                row[f"broken_{a}"] = int((outcomes["broken_by"][m] == a).sum())
            row["grad_zero_frac"] = float(outcomes["grad_zero"][m].mean())
            row["grad_nonfinite_frac"] = float(outcomes["grad_nonfinite"][m].mean())
            row["transfer_only"] = int((outcomes["robust"][m] & outcomes["transfer_broken"][m]).sum())
            for k, v in cov.items():
                if k != "unsupported":
                    row[f"ct_{k}"] = v
            row["ct_unsupported"] = ";".join(f"{k} x {v}" for k, v in cov.get("unsupported", {}).items())
            row["ct_untouched"] = coverage.untouched  # ReLU calls the scope leaves as ReLUs by design
            row["ct_scope"] = coverage.scope
            row["seconds"] = round(sum(u["seconds"] for u in um), 3)
            row["forward_passes"] = sum(u["forward_passes"] for u in um)
            row["backward_passes"] = sum(u["backward_passes"] for u in um)
            row["device"] = ",".join(sorted({u["device"] for u in um}))
            row["batch_size"] = max(u["batch_size"] for u in um)
            row["engine"] = cfg.engine
            row["attacks"] = cfg.attacks
            row["complete"] = n == (cfg.n_examples or n)
            row["protocol"] = cfg.protocol
            row["threat_note"] = get_protocol(cfg.protocol).note
            row["pixel_linf_max"] = float(outcomes["pixel_linf"][m].max())
            row["in_ball_frac"] = float(outcomes["in_ball"][m].mean())
            peaks = [u["peak_mem_mb"] for u in um if u.get("peak_mem_mb") is not None]
            row["peak_mem_mb"] = round(max(peaks), 1) if peaks else ""
            row["precision"] = ";".join(sorted({u.get("precision", "fp32") for u in um}))
            row["call_seconds"] = round(sum(u.get("call_seconds", u["seconds"]) for u in um), 3)
            row["call_betas"] = max(int(u.get("call_betas", 1)) for u in um)
            row["data"] = cfg.data
            warns = {w for u in um for w in u.get("warnings", [])}
            if cfg.data == "timing":  # repeated images: the accuracies measure nothing
                warns.add(TIMING_NOTE)
            row["warnings"] = sorted(warns)
            rows.append(row)
    return rows


def write_results(run: RunDir, coverage) -> list[dict]:
    """Merge all finished units of ``run`` into ``outcomes.npz``, ``results.csv`` and ``results.json``.

    Returns:
        The rows written (see :func:`result_rows`).
    """
    outcomes, metas = merge_units(run.read_units())
    run.write_outcomes(outcomes)
    rows = result_rows(run, outcomes, metas, coverage)
    run.write_results(rows, {"experiment": run.experiment, "key": run.key, "coverage": coverage.as_record()})
    return rows
