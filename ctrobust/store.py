"""Run directories: unit keys, atomic writes, and loading results as tables.

The store owns the whole layout of a run dir; no other module opens its files by name::

    config.yaml              the resolved SweepConfig + an ``_experiment`` block (data hash, versions, key)
    plan.json                every planned unit (:class:`PlanEntry`), written before units run
    units/<key>.npz          one finished work unit (beta, seed, example chunk): per-example arrays + meta
    units/<item>.lock        a work item's claim (exclusive ``flock``; released by the kernel on death)
    units/<item>.failed      a work item's failed attempts (:class:`Failure`)
    units/damaged/           unit files found damaged (unreadable, a field missing), set aside by the next sweep
    units/<key>.adv.npz      a unit's minimum-norm points (``--save-adv``)
    outcomes.npz             all units merged: one row per (example, beta, seed)
    results.csv/.json        one row per (beta, seed) (rows built by :mod:`ctrobust.results`)
    curves.csv               robustness curves of a run with distances: one row per (beta, seed, eps)
    corruptions.csv          a --threat corruptions run: accuracy per (beta, seed, corruption, severity)
    figures/                 plots regenerated from the stored results

:func:`read_status` reads all of it into a typed :class:`RunStatus` (done / running / pending / failed /
damaged).

Every write goes to a temporary file in the same folder and is renamed into place (``os.replace``), so a
killed process leaves either the previous file or the new one, never half of one. A unit's key hashes
everything that determines it (model -- and the hash of its weights for a model given as code or
checkpoint --, CT scope, data subset hash, threat, eps, beta, coeff, attacks, seed, engine,
chunk, package versions); a run dir whose determining settings differ from the requested ones is refused
with the list of differences instead of being resumed.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from ctrobust.config import RunConfig, SweepConfig
from ctrobust.errors import ConfigError

__all__ = ["RunMismatchError", "RunDir", "PlanEntry", "Failure", "RunStatus", "package_versions", "stable_hash",
           "atomic_write_bytes", "atomic_write_text", "load_outcomes", "load_results", "load_config",
           "merge_units", "read_plan", "read_status", "claim", "is_claimed", "OUTCOME_FIELDS", "UNIT_STATES",
           "RunReader", "RunConfig", "load_sweep_config", "diff_settings", "expand_run_dirs"]

OUTCOME_FIELDS = ("id", "label", "beta", "seed", "clean_correct", "robust", "broken_by", "grad_zero",
                  "grad_nonfinite", "transfer_broken", "pixel_linf", "in_ball", "min_norm", "min_norm_by",
                  "corruption", "severity", "pixel_l2")

#: what a unit without a measurement holds in its column (minimum-norm distances not measured: NaN; not a
#: corruption run: no corruption, severity 0; pixel-space L2 perturbation not recorded (older units): NaN)
_MISSING = {"min_norm": (np.float32, np.nan), "min_norm_by": ("<U1", ""), "corruption": ("<U1", ""),
            "severity": (np.int64, 0), "pixel_l2": (np.float32, np.nan)}

#: the arrays without which a unit file means nothing (beta and seed are in its metadata)
_UNIT_ARRAYS = ("id", "label", "clean_correct", "robust", "broken_by")


def _arrays_problem(arrays: dict) -> str | None:
    """Why a unit's arrays cannot be merged (a field missing, lengths that differ), or None."""
    missing = [k for k in _UNIT_ARRAYS if k not in arrays]
    if missing:
        return "missing field " + ", ".join(repr(k) for k in missing)
    lengths = {k: np.shape(arrays[k])[:1] for k in _UNIT_ARRAYS + tuple(k for k in _MISSING if k in arrays)}
    if len(set(lengths.values())) > 1 or () in lengths.values():
        return "fields of different lengths"
    return None


def _unit_problem(p: Path, key: str, experiment: str | None) -> str | None:
    """Why the file ``p`` of unit ``key`` is damaged, or None if it is absent or a whole unit of ``key``
    (of ``experiment`` when given)."""
    if not p.exists():
        return None
    got = _read_npz(p)
    if got is None:
        return "not a readable unit file"
    arrays, meta = got
    if meta.get("key") != key:
        return f"holds unit {meta.get('key')!r}, not {key!r}"
    if experiment is not None and meta.get("experiment") != experiment:
        return "holds another experiment's unit"
    return _arrays_problem(arrays)


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


def _read_umask() -> int:
    """The process umask, read without changing it where the kernel tells it (``/proc/self/status``,
    Linux >= 4.7); else set and restored once, here at import, before any thread of ours writes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


#: the mode a plain ``open(path, "w")`` gives a new file: what every atomic write gives its file too
#: (``mkstemp`` creates 0600, which would hide results from the group that shares a run dir)
FILE_MODE = 0o666 & ~_read_umask()


def _mkstemp_for(path: Path):
    """A temp file beside ``path``, with the mode a plain write would give ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def _named(exc: OSError, path: Path) -> OSError:
    """The same error (same errno, so the same ``OSError`` subclass) naming the file the caller asked for,
    not the temp file beside it: what the CLI shows the user."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


def _written_temp(path: Path, data: bytes) -> str:
    """``data`` written whole and synced to a temp file beside ``path`` (the mode a plain write would give);
    returns its name. An ``OSError`` names ``path``; a failed write leaves no temp file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _mkstemp_for(path)
    except OSError as exc:
        raise _named(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        _unlink(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, path) from exc
        raise
    return tmp


def _unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename), with the mode a
    plain write would give it (``0o666 & ~umask``). An ``OSError`` names ``path``, never the temp file."""
    path = Path(path)
    tmp = _written_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, path) from exc
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_create_text(path, text: str) -> bool:
    """Create ``path`` with ``text`` atomically and exclusively: written whole under a temp name, then
    hard-linked into place, which fails if ``path`` exists. Returns False (writing nothing) if it did,
    so two processes creating the same file never see it half-written and never overwrite each other."""
    path = Path(path)
    tmp = _written_temp(path, text.encode())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise _named(exc, path) from exc
    finally:
        _unlink(tmp)


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def diff_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``setting: old (run) vs new (now)`` for every differing setting; nested settings by dotted name
    (``attacks.eot_iter: 1 (run) vs 20 (now)``)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_settings(a, b, f"{prefix}{k}.")
            continue
        k = f"{prefix}{k}"
        if stable_hash(a) != stable_hash(b):
            def show(v):
                s = json.dumps(v) if not isinstance(v, str) else v
                return s if len(s) <= 60 else s[:57] + "..."
            out.append(f"{k}: {show(a)} (run) vs {show(b)} (now)")
    return out


class RunReader:
    """A run directory opened for reading, from its path alone.

    Reading needs no config and no validation, so a run dir written by another install (a model family or an
    option this install does not know) still shows its status, outcomes, results and configuration as
    written. :class:`RunDir` adds the experiment (creating, checking, writing).
    """

    def __init__(self, path):
        self.path = Path(path)

    # -- layout ----------------------------------------------------------------------------------
    @property
    def units_dir(self) -> Path:
        return self.path / "units"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def unit_path(self, key: str) -> Path:
        return self.units_dir / f"{key}.npz"

    def lock_path(self, item: str) -> Path:
        return self.units_dir / f"{item}.lock"

    def failure_path(self, item: str) -> Path:
        return self.units_dir / f"{item}.failed"

    def is_run_dir(self) -> bool:
        return self.config_path.is_file()

    # -- reading ---------------------------------------------------------------------------------
    def config_doc(self) -> dict:
        """``config.yaml`` as written: the options plus the ``_experiment`` block (``ConfigError`` if absent)."""
        if not self.config_path.exists():
            raise ConfigError(f"{str(self.path)!r} is not a ctrobust run dir (no config.yaml)")
        try:
            doc = yaml.safe_load(self.config_path.read_text()) or {}
        except yaml.YAMLError:
            raise ConfigError(f"{self.config_path} is not readable YAML") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{self.config_path} does not hold a ctrobust configuration")
        return doc

    def options(self) -> dict:
        """The options of ``config.yaml`` as written (what ``--resume`` starts from), without ``_experiment``."""
        doc = dict(self.config_doc())
        doc.pop("_experiment", None)
        return doc

    def config(self) -> "RunConfig":
        """The run's configuration as written, typed (:class:`RunConfig`); no validation."""
        return RunConfig.from_doc(self.config_doc())

    def experiment_key(self) -> str | None:
        return (self.config_doc().get("_experiment") or {}).get("key")

    def failure(self, item: str) -> "Failure":
        """The failed attempts recorded for work item ``item`` (attempts 0 if none)."""
        return _read_failure(self.failure_path(item))

    def plan(self) -> "list[PlanEntry]":
        """The planned units (``ConfigError`` if the sweep has not planned yet)."""
        p = self.path / "plan.json"
        if not p.exists():
            raise ConfigError(f"{self.path}: no plan.json yet (the sweep has not started its units)")
        return [PlanEntry(**u) for u in json.loads(p.read_text())["units"]]

    def status(self) -> "RunStatus":
        """Where the run stands: plan, state per unit, failures, unit seconds (reads only)."""
        max_retries = int(self.config().max_retries)
        plan = self.plan()
        experiment = self.experiment_key()
        state, secs, damaged = {}, [], {}
        for u in plan:
            p = self.unit_path(u.key)
            problem = _unit_problem(p, u.key, experiment)
            meta = _unit_meta(p) if problem is None else None
            if meta is not None:
                state[u.key] = "done"
                if isinstance(meta.get("seconds"), (int, float)):
                    secs.append(float(meta["seconds"]))
            elif is_claimed(self.lock_path(u.item)):
                state[u.key] = "running"
            elif problem is not None:
                state[u.key] = "damaged"
                damaged[u.key] = problem
            elif self.failure(u.item).attempts > max_retries:
                state[u.key] = "failed"
            else:
                state[u.key] = "pending"
        failures = {f.stem: _read_failure(f) for f in sorted(self.units_dir.glob("*.failed"))}
        return RunStatus(self.path, plan, state, failures, secs, damaged)

    def damaged_units(self, experiment_key: str | None = None) -> dict:
        """``{unit file: why}`` for every unit file that is not a whole unit: unreadable, a field missing, or
        named for another unit (of ``experiment_key`` when given)."""
        out = {}
        for p in sorted(self.units_dir.glob("*.npz")):
            if p.name.endswith(".adv.npz"):
                continue
            problem = _unit_problem(p, p.stem, experiment_key)
            if problem is not None:
                out[p] = problem
        return out

    def read_units(self, experiment_key: str | None = None) -> list[tuple[dict, dict]]:
        """``(arrays, meta)`` of every finished unit of the experiment (``experiment_key``, default the one
        ``config.yaml`` names); unreadable files are skipped."""
        key = self.experiment_key() if experiment_key is None else experiment_key
        units = []
        for p in sorted(self.units_dir.glob("*.npz")):
            if p.name.endswith(".adv.npz"):  # a unit's saved points, not a unit
                continue
            got = _read_npz(p)
            if got is None or (key is not None and got[1].get("experiment") != key) or _arrays_problem(got[0]):
                continue  # damaged units are listed by status and set aside by the next sweep
            units.append(got)
        return units

    def outcomes(self) -> dict:
        """Per-example outcomes: ``outcomes.npz`` if written, else the finished units merged."""
        p = self.path / "outcomes.npz"
        if p.exists():
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return merge_units(self.read_units())[0]

    def curves(self) -> list[dict]:
        """Rows of ``curves.csv`` (one per (beta, seed, eps); ``[]`` for a run without distances)."""
        return _read_csv(self.path / "curves.csv", floats=("beta", "eps", "robust_acc", "robust_lo", "robust_hi"),
                         ints=("seed", "n"))

    def corruptions(self) -> list[dict]:
        """Rows of ``corruptions.csv`` (``[]`` for a run that is not ``--threat corruptions``)."""
        return _read_csv(self.path / "corruptions.csv", floats=("beta", "acc", "acc_lo", "acc_hi"),
                         ints=("seed", "severity", "n"))

    def results(self) -> list[dict]:
        """Rows of ``results.json`` (one per (beta, seed))."""
        p = self.path / "results.json"
        if not p.exists():
            raise ConfigError(f"{str(self.path)!r} has no results.json yet: run `ctrobust sweep` to finish it")
        return json.loads(p.read_text())["rows"]


class RunDir(RunReader):
    """A run directory bound to one experiment (its determining settings): creating, checking, writing.

    Args:
        path: the run directory.
        cfg: the validated config.
        data_hash: content hash of the evaluated examples (``EvalSet.content_hash``).
        model_weights: hash of the model's weights (``ctrobust.models.weights_fingerprint``) for a model given
            as code or checkpoint; ``None`` for named releases (keyed by name). Part of the experiment when set.
    """

    def __init__(self, path, cfg: SweepConfig, data_hash: str, model_weights: str | None = None):
        super().__init__(path)
        self.cfg = cfg
        weights = {"model_weights": model_weights} if model_weights is not None else {}
        self.experiment = {**cfg.determining(), **weights, "data_hash": data_hash, "versions": package_versions()}
        self.key = stable_hash(self.experiment)
        self._whole: dict[str, tuple] = {}  # unit key -> (size, mtime, inode) of the file found whole

    # -- creation / reuse ------------------------------------------------------------------------
    def check(self, settings_only: bool = False) -> None:
        """Refuse (``RunMismatchError``) if the dir holds another experiment; touches nothing.

        Args:
            settings_only: compare only the configured settings (before data, model weights and versions
                are known).
        """
        cfg_file = self.config_path
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
            new = {k: v for k, v in new.items() if k not in ("data_hash", "versions", "model_weights")}
            old_cmp = {k: v for k, v in old_cmp.items() if k in new}
            if stable_hash(old_cmp) == stable_hash(new):
                return
        diffs = diff_settings(old_cmp, new)
        raise RunMismatchError(
            f"run dir {str(self.path)!r} was created with different settings: " + "; ".join(diffs or ["(unknown)"])
            + ". Use another --out, or the original settings to resume.")

    def create(self) -> None:
        """Check, then write ``config.yaml`` if the run dir is new.

        ``config.yaml`` is created before anything else in the folder, atomically and exclusively, so a
        concurrent sweep into the same ``--out`` sees either an empty folder or a whole run dir; if another
        process created it first, its experiment is checked against this one instead.
        """
        self.check()
        cfg_file = self.config_path
        created = False
        if not cfg_file.exists():
            doc = self.cfg.to_dict()
            doc["out"] = str(self.path)
            doc["_experiment"] = {**self.experiment, "key": self.key}
            created = atomic_create_text(cfg_file, yaml.safe_dump(doc, sort_keys=False))
        if not created:
            self.check()  # another process may have created it since: its experiment must be this one
        self.units_dir.mkdir(parents=True, exist_ok=True)

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

    def has_unit(self, key: str) -> bool:
        """True if this experiment's unit ``key`` is finished: its file is whole (every array readable,
        zip checksums included) and its metadata names this unit of this experiment.

        Workers poll this for every unit, so a file found whole is remembered by its size and mtime and
        read again only when it changes.
        """
        p = self.unit_path(key)
        try:
            st = p.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._whole.get(key) == stamp:
            return True
        got = _read_npz(p)
        ok = (got is not None and got[1].get("key") == key and got[1].get("experiment") == self.key
              and _arrays_problem(got[0]) is None)
        if ok:
            self._whole[key] = stamp
        return ok

    def write_unit(self, key: str, arrays: dict, meta: dict) -> None:
        """Atomically write one finished unit (arrays: per-example; meta: JSON-serialisable)."""
        payload = dict(arrays)
        payload["meta"] = np.array(json.dumps({**meta, "key": key, "experiment": self.key}))
        atomic_write_bytes(self.unit_path(key), _npz_bytes(payload))

    def adv_path(self, key: str) -> Path:
        return self.units_dir / f"{key}.adv.npz"

    def write_adv(self, key: str, arrays: dict) -> None:
        """``units/<key>.adv.npz``: a unit's minimum-norm points (``--save-adv``), so anyone can check a distance."""
        atomic_write_bytes(self.adv_path(key), _npz_bytes(arrays))

    def read_unit(self, key: str):
        """Return ``(arrays, meta)`` of a finished unit, or None if absent or not this experiment's."""
        got = _read_npz(self.unit_path(key))
        if got is None:
            return None
        arrays, meta = got
        if meta.get("key") != key or meta.get("experiment") != self.key or _arrays_problem(arrays):
            return None
        return arrays, meta

    def set_aside_damaged(self) -> dict:
        """Move every damaged unit file (:meth:`damaged_units`) to ``units/damaged/`` (kept for a look, never
        deleted), so its unit runs again; returns ``{moved-to path: why}``."""
        moved = {}
        for p, why in self.damaged_units().items():
            dest_dir = self.units_dir / "damaged"
            dest_dir.mkdir(exist_ok=True)
            dest = dest_dir / p.name
            n = 1
            while dest.exists():
                dest, n = dest_dir / f"{p.stem}.{n}.npz", n + 1
            try:
                os.replace(p, dest)
            except FileNotFoundError:  # another sweep moved or rewrote it
                continue
            moved[dest] = why
        return moved

    # -- plan, claims, failures ------------------------------------------------------------------
    def write_plan(self, entries: "list[PlanEntry]") -> None:
        """``plan.json``: every planned unit (read by :func:`read_status`)."""
        atomic_write_text(self.path / "plan.json", json.dumps({"units": [asdict(e) for e in entries]}))

    def claim(self, item: str):
        """Context manager: try to claim work item ``item``; yields True if this process holds it."""
        return claim(self.lock_path(item))

    def record_failure(self, item: str, exc: BaseException) -> "Failure":
        """Count one more failed attempt of ``item`` (atomically) and return the record."""
        old = self.failure(item)
        f = Failure(attempts=old.attempts + 1, error=f"{type(exc).__name__}: {exc}".splitlines()[0],
                    host=socket.gethostname(), pid=os.getpid(), time=time.time())
        atomic_write_text(self.failure_path(item), json.dumps(asdict(f)))
        return f

    # -- merged results --------------------------------------------------------------------------
    def read_units(self, experiment_key: str | None = None) -> list[tuple[dict, dict]]:
        """``(arrays, meta)`` of every finished unit of this experiment (unreadable files skipped)."""
        return super().read_units(self.key if experiment_key is None else experiment_key)

    def write_outcomes(self, outcomes: dict) -> None:
        atomic_write_bytes(self.path / "outcomes.npz", _npz_bytes(outcomes))

    def write_results(self, rows: list[dict], doc: dict) -> None:
        """``results.json`` (``doc`` plus the rows) and ``results.csv`` (one line per row; floats as %.6g)."""
        atomic_write_text(self.path / "results.json", json.dumps({**doc, "rows": rows}, indent=1, default=float))
        atomic_write_text(self.path / "results.csv",
                          _csv_text(rows, [k for k in rows[0] if k != "warnings"]) if rows else "")

    def write_curves(self, rows: list[dict], fields) -> None:
        """``curves.csv``: the robustness curves, one row per (beta, seed, eps)."""
        atomic_write_text(self.path / "curves.csv", _csv_text(rows, fields))

    def write_corruptions(self, rows: list[dict], fields) -> None:
        """``corruptions.csv``: accuracy per (beta, seed, corruption, severity)."""
        atomic_write_text(self.path / "corruptions.csv", _csv_text(rows, fields))


def _csv_text(rows: list[dict], fields) -> str:
    """CSV of ``rows`` with the columns ``fields`` (floats as %.6g)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _read_csv(p: Path, floats=(), ints=()) -> list[dict]:
    """Rows of a CSV written by :func:`_csv_text`, with the named columns as floats / ints (``[]`` if absent)."""
    if not p.exists():
        return []
    with p.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.update({k: float(r[k]) for k in floats}, **{k: int(r[k]) for k in ints})
    return rows


def _read_npz(p: Path):
    """``(arrays, meta)`` of a unit file, or None if it is missing, torn or not a unit file."""
    try:
        with np.load(p, allow_pickle=False) as z:
            if "meta" not in z.files:
                return None
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a torn or foreign file counts as missing and is rewritten atomically
        return None
    return (arrays, meta) if isinstance(meta, dict) else None


def _unit_meta(p: Path) -> dict | None:
    """A unit file's metadata only (cheap: workers poll it), or None if missing or unreadable."""
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - torn / corrupt / foreign: treated as missing
        return None
    return meta if isinstance(meta, dict) else None


# -------------------------------------------------------------------------------------------------
# Plan, claims and failures: typed records of the run dir's bookkeeping files
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanEntry:
    """One planned unit: its key, beta, seed, example chunk, number of examples and work item."""

    key: str
    beta: float
    seed: int
    chunk: int
    n: int
    item: str


@dataclass(frozen=True)
class Failure:
    """Failed attempts of one work item (``units/<item>.failed``)."""

    attempts: int = 0
    error: str = ""
    host: str = ""
    pid: int = 0
    time: float = 0.0


def _read_failure(p: Path) -> Failure:
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        return Failure()
    except (OSError, ValueError):  # a torn record still counts as one attempt
        return Failure(attempts=1, error="unreadable failure record")
    return Failure(**{k: d[k] for k in ("attempts", "error", "host", "pid", "time") if k in d})


@contextmanager
def claim(path: Path):
    """Try to claim a work item; yields True if this process holds it (released on exit or death).

    An exclusive, non-blocking ``flock`` on ``path``: two processes never hold it at once, and the kernel
    releases it when the holder dies (even by SIGKILL). Works on local disks and NFSv4; on Lustre mount
    with ``flock``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                yield False
                return
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_claimed(path: Path) -> bool:
    """True if some live process holds the claim on ``path``."""
    path = Path(path)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def read_plan(run_dir) -> list[PlanEntry]:
    """The planned units of a run dir (``ConfigError`` if the sweep has not planned yet)."""
    return RunReader(run_dir).plan()


#: the states of a planned unit, in display order (damaged: a unit file that is not a whole unit).
UNIT_STATES = ("done", "running", "pending", "failed", "damaged")


@dataclass
class RunStatus:
    """Where a run dir stands.

    Attributes:
        run_dir: the run directory.
        plan: every planned unit (:class:`PlanEntry`).
        state: unit key -> one of :data:`UNIT_STATES`.
        failures: work item -> its :class:`Failure` (items with at least one failed attempt).
        unit_seconds: seconds of each finished unit (for an ETA).
        damaged: unit key -> why its file is damaged (the next sweep sets it aside and recomputes it).
    """

    run_dir: Path
    plan: list
    state: dict
    failures: dict = field(default_factory=dict)
    unit_seconds: list = field(default_factory=list)
    damaged: dict = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(1 for v in self.state.values() if v == state)

    @property
    def running_items(self) -> int:
        return len({u.item for u in self.plan if self.state[u.key] == "running"})


def read_status(run_dir) -> RunStatus:
    """Read a run dir's plan, units, claims and failures into a :class:`RunStatus` (reads only)."""
    return RunReader(run_dir).status()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_sweep_config(run_dir) -> SweepConfig:
    """The validated ``SweepConfig`` a run dir was created with, for running it again (a worker, ``--resume``).

    Reading a run dir needs no validation: :func:`load_config` gives the configuration as written.
    """
    reader = RunReader(run_dir)
    return SweepConfig.from_dict(reader.options(), source=str(reader.config_path)).validate()


def load_config(run_dir) -> "RunConfig":
    """A run dir's configuration as written (:class:`RunConfig`), without validation: a run dir of a model
    family or an option this install does not know still reads."""
    return RunReader(run_dir).config()


def load_outcomes(run_dir) -> dict:
    """Per-example outcomes of a run: dict of equal-length numpy arrays (see ``OUTCOME_FIELDS``).

    Reads ``outcomes.npz`` if present, else merges the finished units.
    """
    return RunReader(run_dir).outcomes()


def load_results(run_dir) -> list[dict]:
    """Rows of ``results.json`` (one per (beta, seed))."""
    return RunReader(run_dir).results()


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
            elif k not in arrays and k in _MISSING:
                cols[k].append(np.full(n, _MISSING[k][1], dtype=_MISSING[k][0]))
            else:
                cols[k].append(arrays[k])
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["broken_by"] = out["broken_by"].astype(str)
    out["min_norm_by"] = out["min_norm_by"].astype(str)
    out["corruption"] = out["corruption"].astype(str)
    order = np.lexsort((out["id"], -out["beta"], out["seed"]))
    return {k: v[order] for k, v in out.items()}, [m for _, m in units]


def expand_run_dirs(paths, cell: str | None = None) -> list[Path]:
    """Run dirs named by ``paths``: a run dir is itself; a study dir (``study.yaml`` + ``runs/<cell>/``, see
    :mod:`ctrobust.study`) is each of its cells' run dirs, or only the cell ``cell`` (its full name,
    ``cifar10-valid``, or the part after the dataset, ``valid``: that cell of every dataset).

    Raises:
        ConfigError: ``cell`` names no cell of a study dir (with the cells it has).
    """
    from ctrobust._registry import did_you_mean

    out = []
    for p in map(Path, paths):
        if not ((p / "study.yaml").is_file() and (p / "runs").is_dir()):
            if cell is not None:
                raise ConfigError(f"--cell {cell}: {str(p)!r} is not a study dir (no study.yaml); drop --cell")
            out.append(p)
            continue
        cells = sorted(q for q in (p / "runs").iterdir() if (q / "config.yaml").is_file())
        if not cells:
            raise ConfigError(f"study dir {str(p)!r} has no cell run yet: run `ctrobust reproduce` first")
        if cell is not None:
            names = [q.name for q in cells]
            chosen = [q for q in cells if cell in (q.name, q.name.split("-", 1)[-1])]
            if not chosen:
                short = sorted({n.split("-", 1)[-1] for n in names})
                raise did_you_mean("cell", cell, names + short, hint=f"the cells of study dir {str(p)!r}")
            cells = chosen
        out += cells
    return out
