"""The paper's claims (``configs/paper_claims.yaml``, packaged as ``ctrobust/resources/paper_claims.yaml``)
next to our numbers on the runs that have the claim's setting."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from ctrobust.report._util import attack_list, bkey, freeze, norm_name, opt_float
from ctrobust.report.aggregate import paper_aggregate
from ctrobust.report.summary import ClaimComparison, ClaimDataset, RunSettings, RunSummary, SettingDiff

__all__ = ["default_claims_path", "load_claims", "compare_claims", "setting_diffs"]


def default_claims_path() -> Path:
    """``$CTROBUST_CLAIMS`` if set, else the packaged copy of ``configs/paper_claims.yaml``."""
    env = os.environ.get("CTROBUST_CLAIMS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "resources" / "paper_claims.yaml"


def load_claims(path=None) -> list[dict]:
    """Read the paper's claims (``configs/paper_claims.yaml``); ``[]`` if the default file does not exist.

    Args:
        path: claims file; default :func:`default_claims_path`.

    Returns:
        The list under the file's ``claims`` key, each a mapping (see the file for the fields).

    Raises:
        FileNotFoundError: ``path`` was given and does not exist.
        ValueError: ``claims`` is not a list.
    """
    import yaml

    p = Path(path) if path is not None else default_claims_path()
    if not p.is_file():
        if path is not None:
            raise FileNotFoundError(f"claims file {str(p)!r} not found")
        return []
    data = yaml.safe_load(p.read_text()) or {}
    claims = data.get("claims", []) if isinstance(data, Mapping) else []
    if not isinstance(claims, list):
        raise ValueError(f"{p}: 'claims' must be a list")
    return claims


def _claim_eps(claim: Mapping, dataset: str) -> float | None:
    from ctrobust.config import parse_eps

    eps = claim.get("eps")
    if isinstance(eps, Mapping):
        for k, v in eps.items():
            if norm_name(k) == norm_name(dataset):
                return parse_eps(v)
        return None
    return None if eps is None else parse_eps(eps)


def _claim_betas(claim: Mapping) -> list[float] | None:
    from ctrobust.config import parse_betas

    b = claim.get("betas")
    return None if b is None else parse_betas(b)


def _grid(betas) -> set:
    return {bkey(b) for b in betas if bkey(b) != 1.0}


def setting_diffs(claim: Mapping, settings: RunSettings) -> list[SettingDiff]:
    """Which of the run's settings differ from the claim's (``[]``: the run has the paper's setting).

    A claim field that is absent (or ``null``) is not compared.
    """
    diffs = []
    ds = settings.dataset

    def differ(what, ours, paper):
        diffs.append(SettingDiff(setting=what, ours=freeze(ours), paper=freeze(paper)))

    models = [claim.get("model")] + list(claim.get("model_aliases") or [])
    if settings.model is None or norm_name(settings.model) not in {norm_name(m) for m in models if m}:
        differ("model", settings.model, claim.get("model"))
    if settings.threat is None or norm_name(settings.threat) != norm_name(claim.get("threat")):
        differ("threat", settings.threat, claim.get("threat"))
    ce = _claim_eps(claim, ds) if ds is not None else None
    if ce is not None and (settings.eps is None or abs(float(settings.eps) - ce) > 1e-6):
        differ("eps", settings.eps, ce)
    if claim.get("n_examples") is not None and settings.n_examples != int(claim["n_examples"]):
        differ("n_examples", settings.n_examples, claim["n_examples"])
    if claim.get("subset") is not None and norm_name(settings.subset) != norm_name(claim["subset"]):
        differ("subset", settings.subset, claim["subset"])
    if claim.get("seeds") is not None and sorted(settings.seeds or []) != sorted(claim["seeds"]):
        differ("seeds", settings.seeds, claim["seeds"])
    cb = _claim_betas(claim)
    if cb is not None and _grid(settings.betas or []) != _grid(cb):
        differ("betas", tuple(sorted(_grid(settings.betas or []))), claim.get("betas"))
    if claim.get("coeff") is not None and (settings.coeff is None or
                                           abs(float(settings.coeff) - float(claim["coeff"])) > 1e-9):
        differ("coeff", settings.coeff, claim["coeff"])
    if claim.get("attacks") is not None and attack_list(settings.attacks) != attack_list(claim["attacks"]):
        differ("attacks", settings.attacks, claim["attacks"])
    return diffs


def compare_claims(summaries: Sequence[RunSummary], claims: Sequence[Mapping],
                   conf: float = 0.95) -> list[ClaimComparison]:
    """Put each paper claim next to our number on the runs that match its setting.

    A claim is *matched* when, for every dataset it averages over, a run has exactly the claim's setting
    (model, threat, eps for that dataset, n_examples, subset, seeds, betas, coeff, attacks). Then ``ours``
    is the paper's aggregate on those runs with its bootstrap interval, and ``paper_in_our_ci`` says
    whether the paper's value lies in it. Otherwise, for each dataset the closest run and its differing
    settings are listed, and ``ours_closest`` gives the aggregate on the closest runs (not comparable).

    Args:
        summaries: outputs of :func:`ctrobust.report.summarize_run`.
        claims: entries of ``configs/paper_claims.yaml`` (:func:`load_claims`).
        conf: confidence level.

    Returns:
        One :class:`~ctrobust.report.summary.ClaimComparison` per claim.
    """
    out = []
    for claim in claims:
        datasets = tuple(claim.get("datasets") or [])
        per_dataset, matched_runs, closest_runs = [], [], []
        for ds in datasets:
            cands = [s for s in summaries if s.settings.dataset is not None
                     and norm_name(s.settings.dataset) == norm_name(ds)]
            scored = sorted(((len(setting_diffs(claim, s.settings)), i, s) for i, s in enumerate(cands)),
                            key=lambda t: (t[0], t[1]))
            if not scored:
                per_dataset.append(ClaimDataset(dataset=ds, run=None, diffs=()))
                continue
            _, _, best = scored[0]
            diffs = setting_diffs(claim, best.settings)
            per_dataset.append(ClaimDataset(dataset=ds, run=best.name, diffs=tuple(diffs)))
            closest_runs.append(best)
            if not diffs:
                matched_runs.append(best)
        matched = bool(datasets) and len(matched_runs) == len(datasets)
        value = opt_float(claim.get("value"))
        ours = ours_ci = in_ci = ours_heldout = closest = closest_ds = None
        dropped: tuple = ()
        if matched:
            oracle = paper_aggregate(matched_runs, "oracle", conf)
            heldout = paper_aggregate(matched_runs, "heldout", conf)
            ours, ours_ci, dropped = oracle.value_pct, oracle.ci_pct, oracle.dropped
            if heldout is not None:
                ours_heldout = heldout.value_pct
            if value is not None and ours_ci is not None and math.isfinite(ours_ci.lo):
                in_ci = bool(ours_ci.lo <= value <= ours_ci.hi)
        else:
            same_model = [r for r in closest_runs
                          if not any(d.setting == "model" for d in setting_diffs(claim, r.settings))]
            if same_model:
                closest = paper_aggregate(same_model, "oracle", conf).value_pct
                closest_ds = tuple(r.settings.dataset for r in same_model)
        out.append(ClaimComparison(
            id=claim.get("id"), source=claim.get("source"), model=claim.get("model"), datasets=datasets,
            metric=claim.get("metric"), paper_value_pct=value, matched=matched, per_dataset=tuple(per_dataset),
            ours_pct=ours, ours_ci_pct=ours_ci, paper_in_our_ci=in_ci, ours_heldout_pct=ours_heldout,
            dropped=dropped, ours_closest_pct=closest, ours_closest_datasets=closest_ds))
    return out
