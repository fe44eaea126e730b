"""Regression checks: compare a run's per-example outcomes and accuracies with a golden run or JSON.

A golden JSON (``write_golden``) stores, per (beta, seed), the accuracies and the per-example flags
(clean correct, robust, first attack to break it). ``check_run`` returns one line per difference beyond
the tolerance, naming the beta, seed and example ids that changed; the CLI exits 1 when there are any.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctrobust.config import ConfigError
from ctrobust.store import atomic_write_text, load_outcomes

__all__ = ["golden_from_run", "write_golden", "load_golden", "check_run"]

GOLDEN_VERSION = 1


def golden_from_run(run_dir) -> dict:
    """The golden document of a finished run dir (JSON-serialisable)."""
    o = load_outcomes(run_dir)
    groups = {}
    for seed in sorted(set(o["seed"].tolist())):
        for beta in sorted(set(o["beta"].tolist()), reverse=True):
            m = (o["seed"] == seed) & (o["beta"] == beta)
            if not m.any():
                continue
            groups[f"{beta:.6g}/{seed}"] = {
                "beta": beta, "seed": seed, "n": int(m.sum()),
                "clean_acc": float(o["clean_correct"][m].mean()), "robust_acc": float(o["robust"][m].mean()),
                "id": o["id"][m].tolist(), "clean_correct": o["clean_correct"][m].astype(int).tolist(),
                "robust": o["robust"][m].astype(int).tolist(), "broken_by": o["broken_by"][m].tolist()}
    return {"ctrobust_golden": GOLDEN_VERSION, "source": str(run_dir), "groups": groups}


def write_golden(run_dir, path) -> None:
    atomic_write_text(path, json.dumps(golden_from_run(run_dir), indent=1) + "\n")


def load_golden(src) -> dict:
    """A golden document from a run dir or a golden JSON file."""
    p = Path(src)
    if p.is_dir():
        return golden_from_run(p)
    if not p.is_file():
        raise ConfigError(f"--against {str(src)!r}: no such run dir or golden JSON file")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--against {str(src)!r} is not valid JSON ({exc.msg})") from None
    if doc.get("ctrobust_golden") != GOLDEN_VERSION:
        raise ConfigError(f"--against {str(src)!r} is not a ctrobust golden file "
                          "(make one with `ctrobust check RUN_DIR --write-golden FILE`)")
    return doc


def check_run(run_dir, against, tolerance: float = 0.0) -> list[str]:
    """Differences between ``run_dir`` and a golden run/JSON beyond ``tolerance``.

    Args:
        run_dir: the run to check.
        against: golden run dir or golden JSON.
        tolerance: allowed absolute change of clean/robust accuracy, and allowed fraction of examples
            whose outcome changed, per (beta, seed). 0 = exact.

    Returns:
        One line per problem (empty when the run matches).
    """
    if tolerance < 0:
        raise ConfigError("--tolerance must be >= 0")
    new = golden_from_run(run_dir)["groups"]
    old = load_golden(against)["groups"]
    problems = []
    for key in sorted(set(old) - set(new)):
        problems.append(f"beta={old[key]['beta']:g} seed={old[key]['seed']}: missing from {run_dir}")
    for key in sorted(set(new) - set(old)):
        problems.append(f"beta={new[key]['beta']:g} seed={new[key]['seed']}: not in the golden results")
    for key in sorted(set(old) & set(new)):
        g, r = old[key], new[key]
        tag = f"beta={g['beta']:g} seed={g['seed']}"
        for acc in ("clean_acc", "robust_acc"):
            if abs(g[acc] - r[acc]) > tolerance + 1e-12:
                problems.append(f"{tag}: {acc} {g[acc]:.4f} -> {r[acc]:.4f}")
        gi = dict(zip(g["id"], zip(g["clean_correct"], g["robust"], g["broken_by"])))
        ri = dict(zip(r["id"], zip(r["clean_correct"], r["robust"], r["broken_by"])))
        if set(gi) != set(ri):
            problems.append(f"{tag}: evaluated examples differ ({len(set(gi) ^ set(ri))} ids)")
            continue
        changed = sorted(i for i in gi if gi[i] != ri[i])
        if changed and len(changed) / max(1, len(gi)) > tolerance + 1e-12:
            detail = ", ".join(f"{i} ({_desc(gi[i])} -> {_desc(ri[i])})" for i in changed[:10])
            more = f" and {len(changed) - 10} more" if len(changed) > 10 else ""
            problems.append(f"{tag}: {len(changed)} example(s) changed: {detail}{more}")
    return problems


def _desc(t) -> str:
    clean, robust, by = t
    if not clean:
        return "misclassified"
    return "robust" if robust else f"broken by {by}"
