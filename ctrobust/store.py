"""Run directories: unit keys, atomic writes, and loading results as tables.

A run dir holds::

    config.yaml          the resolved SweepConfig + an ``_experiment`` block (data hash, versions, key)
    units/<key>.npz      one finished work unit (beta, seed, example chunk): per-example arrays + meta
    outcomes.npz         all units merged: one row per (example, beta, seed)
    results.csv/.json    one row per (beta, seed)
    figures/             plots regenerated from the stored results

Every write goes to a temporary file in the same folder and is renamed into place (``os.replace``), so a
killed process leaves either the previous file or the new one, never half of one. A unit's key hashes
everything that determines it (model, data subset hash, threat, eps, beta, coeff, attacks, seed, engine,
chunk, package versions); a run dir whose determining settings differ from the requested ones is refused
with the list of differences instead of being resumed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from ctrobust.config import ConfigError, SweepConfig

__all__ = ["RunMismatchError", "RunDir", "package_versions", "stable_hash", "atomic_write_bytes",
           "atomic_write_text", "load_outcomes", "load_results", "load_config", "OUTCOME_FIELDS",
           "RESULT_FIELDS"]

OUTCOME_FIELDS = ("id", "label", "beta", "seed", "clean_correct", "robust", "broken_by", "grad_zero",
                  "grad_nonfinite", "transfer_broken")

RESULT_FIELDS = ["model", "dataset", "threat", "eps", "beta", "coeff", "seed", "n", "clean_acc", "clean_lo",
                 "clean_hi", "robust_acc", "robust_lo", "robust_hi"]


class RunMismatchError(ConfigError):
    """The run dir was created with different settings (bad input: exit code 2, run dir untouched)."""


def package_versions() -> dict:
    """Versions of the packages that determine attack results."""
    out = {}
    for pkg in ("ctrobust", "torch", "pyautoattack", "robustbench"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
            out[pkg] = "unknown"
    return out


def stable_hash(obj, n: int = 16) -> str:
    """Hex digest of a JSON-serialisable object, independent of dict order and float repr noise."""
    def canon(o):
        if isinstance(o, float):
            return float(f"{o:.12g}")
        if isinstance(o, dict):
            return {str(k): canon(v) for k, v in sorted(o.items())}
        if isinstance(o, (list, tuple)):
            return [canon(v) for v in o]
        if isinstance(o, np.generic):
            return canon(o.item())
        return o
    blob = json.dumps(canon(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _diff(old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if stable_hash(a) != stable_hash(b):
            def show(v):
                s = json.dumps(v) if not isinstance(v, str) else v
                return s if len(s) <= 60 else s[:57] + "..."
            out.append(f"{k}: {show(a)} (run) vs {show(b)} (now)")
    return out


class RunDir:
    """A run directory bound to one experiment (its determining settings).

    Args:
        path: the run directory.
        cfg: the validated config.
        data_hash: content hash of the evaluated examples (``EvalSet.content_hash``).
    """

    def __init__(self, path, cfg: SweepConfig, data_hash: str):
        self.path = Path(path)
        self.cfg = cfg
        self.experiment = {**cfg.determining(), "data_hash": data_hash, "versions": package_versions()}
        self.key = stable_hash(self.experiment)

    @property
    def units_dir(self) -> Path:
        return self.path / "units"

    # -- creation / reuse ------------------------------------------------------------------------
    def check(self, settings_only: bool = False) -> None:
        """Refuse (``RunMismatchError``) if the dir holds another experiment; touches nothing.

        Args:
            settings_only: compare only the configured settings (before data and versions are known).
        """
        cfg_file = self.path / "config.yaml"
        if self.path.exists() and not self.path.is_dir():
            raise RunMismatchError(f"--out {str(self.path)!r} exists and is not a directory")
        if not cfg_file.exists():
            if self.path.is_dir() and any(p for p in self.path.iterdir() if not p.name.startswith(".")):
                raise RunMismatchError(
                    f"--out {str(self.path)!r} is a non-empty folder that is not a ctrobust run dir "
                    "(no config.yaml): choose another --out")
            return
        try:
            old = yaml.safe_load(cfg_file.read_text()) or {}
        except yaml.YAMLError:
            raise RunMismatchError(f"{cfg_file} is not readable YAML: not resuming this run dir") from None
        old_exp = old.get("_experiment", {})
        if old_exp.get("key") == self.key:
            return
        new = self.experiment
        old_cmp = {k: v for k, v in old_exp.items() if k != "key"}
        if settings_only:
            new = {k: v for k, v in new.items() if k not in ("data_hash", "versions")}
            old_cmp = {k: v for k, v in old_cmp.items() if k in new}
            if stable_hash(old_cmp) == stable_hash(new):
                return
        diffs = _diff(old_cmp, new)
        raise RunMismatchError(
            f"run dir {str(self.path)!r} was created with different settings: " + "; ".join(diffs or ["(unknown)"])
            + ". Use another --out, or the original settings to resume.")

    def create(self) -> None:
        """Check, then write ``config.yaml`` (atomically) if the run dir is new."""
        self.check()
        cfg_file = self.path / "config.yaml"
        if cfg_file.exists():
            return
        self.units_dir.mkdir(parents=True, exist_ok=True)
        doc = self.cfg.to_dict()
        doc["out"] = str(self.path)
        doc["_experiment"] = {**self.experiment, "key": self.key}
        atomic_write_text(cfg_file, yaml.safe_dump(doc, sort_keys=False))

    def clean_stale_tmp(self) -> int:
        """Remove temp files left by writers that died (their pid is gone); returns how many."""
        n = 0
        for p in list(self.path.glob(".*.tmp")) + list(self.units_dir.glob(".*.tmp")):
            try:
                pid = int(p.name.rsplit(".tmp", 1)[0].split(".")[-2])
            except (ValueError, IndexError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                p.unlink(missing_ok=True)
                n += 1
        return n

    # -- units -----------------------------------------------------------------------------------
    def unit_key(self, beta: float, seed: int, chunk_ids) -> str:
        ids = np.asarray(chunk_ids, dtype=np.int64)
        return stable_hash({"experiment": self.key, "beta": float(beta), "seed": int(seed),
                            "chunk": hashlib.sha256(ids.tobytes()).hexdigest()})

    def unit_path(self, key: str) -> Path:
        return self.units_dir / f"{key}.npz"

    def has_unit(self, key: str) -> bool:
        """True if this experiment's unit ``key`` is finished (reads only its metadata)."""
        p = self.unit_path(key)
        if not p.exists():
            return False
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError):
            return False  # unreadable: treated as missing and rewritten atomically
        return meta.get("key") == key and meta.get("experiment") == self.key

    def write_unit(self, key: str, arrays: dict, meta: dict) -> None:
        """Atomically write one finished unit (arrays: per-example; meta: JSON-serialisable)."""
        payload = dict(arrays)
        payload["meta"] = np.array(json.dumps({**meta, "key": key, "experiment": self.key}))
        atomic_write_bytes(self.unit_path(key), _npz_bytes(payload))

    def read_unit(self, key: str):
        """Return ``(arrays, meta)`` of a finished unit, or None if absent or not this experiment's."""
        p = self.unit_path(key)
        if not p.exists():
            return None
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "meta"}
            meta = json.loads(str(z["meta"]))
        if meta.get("key") != key or meta.get("experiment") != self.key:
            return None
        return arrays, meta


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_all_units(run_dir: Path, experiment_key: str | None):
    units = []
    for p in sorted((run_dir / "units").glob("*.npz")):
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if experiment_key is not None and meta.get("experiment") != experiment_key:
                continue
            units.append(({k: z[k] for k in z.files if k != "meta"}, meta))
    return units


def load_config(run_dir) -> SweepConfig:
    """The validated ``SweepConfig`` a run dir was created with."""
    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        raise ConfigError(f"{str(run_dir)!r} is not a ctrobust run dir (no config.yaml)")
    data = SweepConfig.load_yaml(p)
    return SweepConfig.from_dict(data, source=str(p)).validate()


def _experiment_key(run_dir) -> str | None:
    doc = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    return doc.get("_experiment", {}).get("key")


def load_outcomes(run_dir) -> dict:
    """Per-example outcomes of a run: dict of equal-length numpy arrays (see ``OUTCOME_FIELDS``).

    Reads ``outcomes.npz`` if present, else merges the finished units.
    """
    run_dir = Path(run_dir)
    p = run_dir / "outcomes.npz"
    if p.exists():
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return merge_units(_read_all_units(run_dir, _experiment_key(run_dir)))[0]


def load_results(run_dir) -> list[dict]:
    """Rows of ``results.json`` (one per (beta, seed))."""
    p = Path(run_dir) / "results.json"
    if not p.exists():
        raise ConfigError(f"{str(run_dir)!r} has no results.json yet: run `ctrobust sweep` to finish it")
    return json.loads(p.read_text())["rows"]


def merge_units(units) -> tuple[dict, list[dict]]:
    """Concatenate unit arrays into outcomes (sorted by seed, beta desc, id) and collect their metas."""
    if not units:
        return {k: np.zeros(0) for k in OUTCOME_FIELDS}, []
    cols: dict[str, list] = {k: [] for k in OUTCOME_FIELDS}
    for arrays, meta in units:
        n = len(arrays["id"])
        for k in OUTCOME_FIELDS:
            if k == "beta":
                cols[k].append(np.full(n, float(meta["beta"])))
            elif k == "seed":
                cols[k].append(np.full(n, int(meta["seed"]), dtype=np.int64))
            else:
                cols[k].append(arrays[k])
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["broken_by"] = out["broken_by"].astype(str)
    order = np.lexsort((out["id"], -out["beta"], out["seed"]))
    return {k: v[order] for k, v in out.items()}, [m for _, m in units]


def write_results(run: RunDir, coverage: dict) -> list[dict]:
    """Merge all finished units of ``run`` into outcomes.npz, results.csv and results.json."""
    from ctrobust.stats import wilson_interval

    outcomes, metas = merge_units(_read_all_units(run.path, run.key))
    atomic_write_bytes(run.path / "outcomes.npz", _npz_bytes(outcomes))
    cfg = run.cfg
    attacks = cfg.attack_list
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
            for a in attacks:
                row[f"broken_{a}"] = int((outcomes["broken_by"][m] == a).sum())
            row["grad_zero_frac"] = float(outcomes["grad_zero"][m].mean())
            row["grad_nonfinite_frac"] = float(outcomes["grad_nonfinite"][m].mean())
            row["transfer_only"] = int((outcomes["robust"][m] & outcomes["transfer_broken"][m]).sum())
            for k, v in coverage.items():
                if k != "unsupported":
                    row[f"ct_{k}"] = v
            row["ct_unsupported"] = ";".join(f"{k} x {v}" for k, v in coverage.get("unsupported", {}).items())
            row["seconds"] = round(sum(u["seconds"] for u in um), 3)
            row["forward_passes"] = sum(u["forward_passes"] for u in um)
            row["backward_passes"] = sum(u["backward_passes"] for u in um)
            row["device"] = ",".join(sorted({u["device"] for u in um}))
            row["batch_size"] = max(u["batch_size"] for u in um)
            row["engine"] = cfg.engine
            row["attacks"] = cfg.attacks
            row["complete"] = n == (cfg.n_examples or n)
            row["warnings"] = sorted({w for u in um for w in u.get("warnings", [])})
            rows.append(row)
    doc = {"experiment": run.experiment, "key": run.key, "coverage": coverage, "rows": rows}
    atomic_write_text(run.path / "results.json", json.dumps(doc, indent=1, default=float))
    buf = io.StringIO()
    if rows:
        fields = [k for k in rows[0] if k != "warnings"]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(run.path / "results.csv", buf.getvalue())
    return rows
