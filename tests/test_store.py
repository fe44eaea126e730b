"""The run store's contract (``ctrobust.store``): unit keys, atomic writes, refusing another experiment,
and torn / corrupt / foreign unit files.

Everything goes through the public API (``RunDir``, ``stable_hash``, ``atomic_write_*``,
``RunMismatchError``) on configs built with ``SweepConfig(...).validate()``; no model or data is loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ctrobust.config import SweepConfig
from ctrobust.config import ConfigError
from ctrobust.store import (RunDir, RunMismatchError, atomic_create_text, atomic_write_bytes, atomic_write_text,
                            stable_hash)

BASE = dict(model="toy-model", dataset="cifar10", threat="Linf", eps="8/255", betas=[0.9, 0.8], coeff=0.5,
            seeds=[0], n_examples=8, subset="first", data="bundled", attacks="apgd-ce,square", engine="fast",
            chunk_size=4)
IDS = np.arange(4)
DATA_HASH = "d0d0d0d0"


def cfg(**over) -> SweepConfig:
    return SweepConfig(**{**BASE, **over}).validate()


def run_dir(path, data_hash=DATA_HASH, **over) -> RunDir:
    return RunDir(path, cfg(**over), data_hash)


def unit_arrays(n=4, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {"id": np.arange(n, dtype=np.int64), "label": rng.integers(0, 10, n),
            "clean_correct": rng.random(n) < 0.8, "robust": rng.random(n) < 0.5,
            "broken_by": np.array(["", "apgd-ce", "square", "clean"][:n] + [""] * max(0, n - 4))}


def snapshot(root: Path) -> dict:
    """Every file under ``root`` -> (bytes, mtime_ns)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def tmp_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------------
# stable_hash and unit keys
# ---------------------------------------------------------------------------------------------------


def test_stable_hash_is_sha256_of_canonical_json():
    """An independent implementation of the documented digest: sorted keys, no spaces, 16 hex chars."""
    obj = {"b": [1.5, "x", None, True], "a": {"d": 2, "c": 0.25}}
    blob = b'{"a":{"c":0.25,"d":2},"b":[1.5,"x",null,true]}'
    assert stable_hash(obj) == hashlib.sha256(blob).hexdigest()[:16]
    assert stable_hash(obj, n=40) == hashlib.sha256(blob).hexdigest()[:40]


def test_stable_hash_ignores_dict_order_float_noise_and_container_type():
    assert stable_hash({"a": 0.1 + 0.2}) == stable_hash({"a": 0.3})  # 0.30000000000000004 vs 0.3
    assert stable_hash({"a": 8 / 255}) == stable_hash({"a": 0.03137254901960784})
    assert stable_hash({"a": 1, "b": {"x": 1, "y": [2, 3]}}) == stable_hash({"b": {"y": [2, 3], "x": 1}, "a": 1})
    assert stable_hash({"a": (1, 2)}) == stable_hash({"a": [1, 2]})
    assert stable_hash({"a": np.float64(0.3), "n": np.int64(3)}) == stable_hash({"a": 0.3, "n": 3})
    # ... but real differences are seen
    assert stable_hash({"a": 0.3}) != stable_hash({"a": 0.3 + 1e-9})
    assert stable_hash({"a": [1, 2]}) != stable_hash({"a": [2, 1]})
    assert stable_hash({"a": 1}) != stable_hash({"b": 1})


def test_unit_key_equal_for_equal_inputs(tmp_path):
    a = run_dir(tmp_path / "a")
    b = run_dir(tmp_path / "b", eps=0.03137254901960784, coeff=0.1 + 0.4, betas=[0.8, 0.9, 1.0])
    assert a.key == b.key  # the path is not part of the experiment; 8/255 == its decimal; beta order
    assert a.unit_key(0.9, 0, IDS) == b.unit_key(0.9, 0, IDS)
    assert a.unit_key(0.9, 0, IDS) == a.unit_key(0.9, 0, list(IDS))
    assert a.unit_key(0.9, 0, IDS) == a.unit_key(np.float64(0.9), np.int64(0), IDS.astype(np.int32))
    assert a.unit_key(0.3, 0, IDS) == a.unit_key(0.1 + 0.2, 0, IDS)  # float repr noise


def test_unit_key_differs_for_beta_seed_and_chunk(tmp_path):
    r = run_dir(tmp_path / "r")
    keys = {
        "base": r.unit_key(0.9, 0, IDS),
        "beta": r.unit_key(0.8, 0, IDS),
        "seed": r.unit_key(0.9, 1, IDS),
        "ids": r.unit_key(0.9, 0, IDS + 4),
        "order": r.unit_key(0.9, 0, IDS[::-1]),
        "fewer": r.unit_key(0.9, 0, IDS[:3]),
    }
    assert len(set(keys.values())) == len(keys), keys


@pytest.mark.parametrize("setting,value", [
    ("model", "other-model"), ("dataset", "cifar100"), ("threat", "L2"), ("eps", "4/255"),
    ("betas", [0.9, 0.7]), ("coeff", 0.25), ("seeds", [0, 1]), ("n_examples", 16), ("subset", "balanced"),
    ("data", "full"), ("attacks", "apgd-ce"), ("attacks", "square,apgd-ce"), ("attacks", "rand"),
    ("engine", "reference"), ("chunk_size", 8),
])
def test_unit_key_differs_when_a_determining_setting_differs(tmp_path, setting, value):
    base, other = run_dir(tmp_path / "a"), run_dir(tmp_path / "b", **{setting: value})
    assert base.key != other.key
    assert base.unit_key(0.9, 0, IDS) != other.unit_key(0.9, 0, IDS)


def test_unit_key_differs_with_data_hash(tmp_path):
    a, b = run_dir(tmp_path / "a"), run_dir(tmp_path / "a", data_hash="e1e1e1e1")
    assert a.unit_key(0.9, 0, IDS) != b.unit_key(0.9, 0, IDS)


def test_suite_parameters_are_part_of_the_key(tmp_path):
    """``rand`` is APGD-CE + APGD-DLR with 20 EOT draws: not the same experiment as the plain list, while a
    list that spells out the standard suite is the standard suite."""
    rand = run_dir(tmp_path / "a", attacks="rand")
    plain = run_dir(tmp_path / "a", attacks="apgd-ce,apgd-dlr")
    assert rand.key != plain.key
    assert (run_dir(tmp_path / "a", attacks="standard").key
            == run_dir(tmp_path / "a", attacks="apgd-ce, apgd-t, fab-t, square").key)


@pytest.mark.parametrize("setting,value", [("batch_size", 7), ("device", "cpu"), ("out", "elsewhere"),
                                           ("executor", "gpus"), ("workers", 3), ("quiet", True),
                                           ("max_retries", 5)])
def test_unit_key_ignores_execution_settings(tmp_path, setting, value):
    assert (run_dir(tmp_path / "a").unit_key(0.9, 0, IDS)
            == run_dir(tmp_path / "a", **{setting: value}).unit_key(0.9, 0, IDS))


def test_reference_engine_batch_size_is_part_of_the_key(tmp_path):
    a = run_dir(tmp_path / "a", engine="reference", batch_size=8)
    b = run_dir(tmp_path / "a", engine="reference", batch_size=16)
    assert a.unit_key(0.9, 0, IDS) != b.unit_key(0.9, 0, IDS)


def test_keys_are_stable_across_processes(tmp_path):
    """Same inputs in a fresh interpreter (another hash seed, another dict/set order): same keys."""
    r = run_dir(tmp_path / "r")
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from ctrobust.config import SweepConfig
        from ctrobust.store import RunDir, stable_hash
        base = json.loads(sys.argv[1])
        r = RunDir(sys.argv[2], SweepConfig(**base).validate(), {DATA_HASH!r})
        print(json.dumps([r.key, r.unit_key(0.9, 0, np.arange(4)), r.unit_key(1.0, 0, [4, 5, 6, 7]),
                          stable_hash({{"z": 0.1 + 0.2, "a": [1, "x"]}})]))
    """)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(BASE), str(tmp_path / "elsewhere")],
                         capture_output=True, text=True, env=env, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == [r.key, r.unit_key(0.9, 0, IDS), r.unit_key(1.0, 0, [4, 5, 6, 7]),
                   stable_hash({"a": [1, "x"], "z": 0.3})]


# ---------------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------------


def test_atomic_write_roundtrip_and_creates_parent(tmp_path):
    p = tmp_path / "new" / "deeper" / "f.txt"
    atomic_write_text(p, "héllo ✓\n")
    assert p.read_bytes() == "héllo ✓\n".encode()
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert tmp_files(tmp_path) == []


def _fail_replace(*a, **k):
    raise OSError("disk gone (os.replace)")


def _fail_fsync(*a, **k):
    raise OSError("disk gone (os.fsync)")


class _HalfWriter:
    """A file object whose ``write`` writes half the data, then fails."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError("disk full (write)")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False


@pytest.mark.parametrize("how", ["replace", "fsync", "write", "interrupt"])
@pytest.mark.parametrize("existing", [True, False], ids=["overwrite", "new"])
def test_failed_write_keeps_previous_content_and_leaves_no_temp(tmp_path, monkeypatch, how, existing):
    p = tmp_path / "units" / "u.npz"
    p.parent.mkdir()
    old = b"previous complete content" * 100
    if existing:
        p.write_bytes(old)
    real_fdopen = os.fdopen
    exc_type = OSError
    if how == "replace":
        monkeypatch.setattr(os, "replace", _fail_replace)
    elif how == "fsync":
        monkeypatch.setattr(os, "fsync", _fail_fsync)
    elif how == "write":
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _HalfWriter(real_fdopen(fd, *a, **k)))
    else:  # Ctrl-C in the middle of the write (a BaseException, not an Exception)
        def interrupt(*a, **k):
            raise KeyboardInterrupt
        monkeypatch.setattr(os, "fsync", interrupt)
        exc_type = KeyboardInterrupt
    with pytest.raises(exc_type):
        atomic_write_bytes(p, b"new content that must not appear" * 1000)
    monkeypatch.undo()
    assert sorted(x.name for x in p.parent.iterdir()) == (["u.npz"] if existing else [])
    if existing:
        assert p.read_bytes() == old


def _writer(path: str, tag: int, n: int, start) -> None:  # runs in a forked child
    start.wait()
    payload = bytes([tag]) * 200_000
    for i in range(n):
        atomic_write_bytes(path, json.dumps({"tag": tag, "i": i}).encode().ljust(64) + payload)


def _check_complete(data: bytes) -> int:
    head = json.loads(data[:64])
    body = data[64:]
    assert len(body) == 200_000 and body == bytes([head["tag"]]) * 200_000, "torn file"
    return head["tag"]


def test_concurrent_writers_end_with_one_complete_file(tmp_path):
    """4 processes x 25 writes to one path while this process keeps reading it: every read is one writer's
    complete payload, and no temp file is left."""
    p = tmp_path / "units" / "u.npz"
    atomic_write_bytes(p, json.dumps({"tag": 0, "i": 0}).encode().ljust(64) + bytes([0]) * 200_000)
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(p), tag, 25, start)) for tag in (1, 2, 3, 4)]
    for pr in procs:
        pr.start()
    start.set()
    seen = set()
    while any(pr.is_alive() for pr in procs):
        seen.add(_check_complete(p.read_bytes()))
    for pr in procs:
        pr.join(60)
        assert pr.exitcode == 0
    assert _check_complete(p.read_bytes()) in (1, 2, 3, 4)
    assert tmp_files(tmp_path) == []


def test_concurrent_threads_end_with_one_complete_file(tmp_path):
    p = tmp_path / "f"
    start = threading.Event()
    threads = [threading.Thread(target=_writer, args=(str(p), tag, 20, start)) for tag in (5, 6, 7)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join()
    assert _check_complete(p.read_bytes()) in (5, 6, 7)
    assert tmp_files(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# creating, reusing and refusing run dirs
# ---------------------------------------------------------------------------------------------------


def _diff_items(msg: str) -> dict:
    """``setting -> (run value, now value)`` parsed from a RunMismatchError message."""
    body = msg.split("different settings: ", 1)[1].rsplit(". Use another --out", 1)[0]
    out = {}
    for part in body.split("; "):
        name, rest = part.split(": ", 1)
        run_v, now_v = rest.split(" (run) vs ")
        assert now_v.endswith(" (now)"), part
        out[name] = (run_v, now_v[: -len(" (now)")])
    return out


def _created(path, **over) -> tuple[RunDir, dict]:
    """A created run dir holding one unit; returns it and a snapshot of its files."""
    r = run_dir(path, **over)
    r.create()
    r.write_unit(r.unit_key(0.9, 0, IDS), unit_arrays(), {"beta": 0.9, "seed": 0})
    return r, snapshot(path)


@pytest.mark.parametrize("over,expected", [
    ({"eps": "16/255"}, {"eps": (json.dumps(8 / 255), json.dumps(16 / 255))}),
    ({"betas": [0.9, 0.7]}, {"betas": ("[1.0, 0.9, 0.8]", "[1.0, 0.9, 0.7]")}),
    ({"attacks": "apgd-ce,fab"}, {"attacks.attacks": ('["apgd-ce", "square"]', '["apgd-ce", "fab"]')}),
    ({"attacks": "rand"}, {"attacks.attacks": ('["apgd-ce", "square"]', '["apgd-ce", "apgd-dlr"]'),
                           "attacks.eot_iter": ("1", "20")}),
    ({"coeff": 0.25, "model": "other"}, {"coeff": ("0.5", "0.25"), "model": ("toy-model", "other")}),
    ({"seeds": "0,1", "chunk_size": 2}, {"seeds": ("[0]", "[0, 1]"), "chunk_size": ("4", "2")}),
])
def test_mismatch_names_exactly_the_differing_settings_and_touches_nothing(tmp_path, over, expected):
    path = tmp_path / "run"
    _, before = _created(path)
    other = run_dir(path, **over)
    for call in (other.check, other.create):
        with pytest.raises(RunMismatchError) as info:
            call()
        assert _diff_items(str(info.value)) == expected
        assert str(path) in str(info.value)
    assert isinstance(info.value, ConfigError)  # bad input: exit code 2
    assert snapshot(path) == before  # config.yaml bytes and mtime, unit files: unchanged
    assert not other.has_unit(other.unit_key(0.9, 0, IDS))


def test_mismatch_on_data_hash_and_settings_only(tmp_path):
    path = tmp_path / "run"
    _, before = _created(path)
    other = run_dir(path, data_hash="e1e1e1e1")
    other.check(settings_only=True)  # same settings: data not known yet, not refused
    with pytest.raises(RunMismatchError) as info:
        other.check()
    assert _diff_items(str(info.value)) == {"data_hash": (DATA_HASH, "e1e1e1e1")}
    with pytest.raises(RunMismatchError):
        run_dir(path, eps="4/255").check(settings_only=True)
    assert snapshot(path) == before


def test_same_config_is_accepted_and_nothing_rewritten(tmp_path):
    path = tmp_path / "run"
    first, before = _created(path)
    again = run_dir(path, coeff=0.2 + 0.3, eps=8 / 255, batch_size=3, device="cpu")  # same experiment
    again.check()
    again.create()
    assert snapshot(path) == before
    key = first.unit_key(0.9, 0, IDS)
    assert again.has_unit(key) and again.unit_key(0.9, 0, IDS) == key


def test_non_run_folders_are_refused(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(RunMismatchError, match="not a ctrobust run dir"):
        run_dir(busy).create()
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunMismatchError, match="not a directory"):
        run_dir(a_file).check()
    # an empty folder, or one with only hidden files, is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden").write_text("")
    run_dir(empty).create()
    assert (empty / "config.yaml").is_file()
    run_dir(tmp_path / "does" / "not" / "exist").check()


def test_exclusive_create_never_overwrites(tmp_path):
    target = tmp_path / "sub" / "f.yaml"
    assert atomic_create_text(target, "first")
    assert not atomic_create_text(target, "second")
    assert target.read_text() == "first" and tmp_files(tmp_path) == []


def _losing_the_race(run: RunDir, monkeypatch):
    """Make ``run``'s first check pass as if it ran before another process created the run dir."""
    real, calls = run.check, []

    def check(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            return real(*a, **k)
    monkeypatch.setattr(run, "check", check)


def test_a_sweep_that_loses_the_creation_race_checks_the_winners_experiment(tmp_path, monkeypatch):
    path = tmp_path / "run"
    winner = run_dir(path)
    same, other = run_dir(path), run_dir(path, coeff=0.3)
    _losing_the_race(same, monkeypatch)
    _losing_the_race(other, monkeypatch)
    winner.create()
    before = snapshot(path)
    same.create()  # the same experiment: joins it
    with pytest.raises(RunMismatchError, match="coeff: 0.5 \\(run\\) vs 0.3 \\(now\\)"):
        other.create()  # another: refused, the winner's config untouched
    assert snapshot(path) == before and tmp_files(path) == []


def test_a_run_dir_being_created_is_never_a_non_run_folder(tmp_path):
    """config.yaml comes first: at no point does the folder hold visible entries but no config.yaml."""
    path = tmp_path / "run"
    seen = []
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if self == path / "units":
            seen.append((path / "config.yaml").is_file())
        return real_mkdir(self, *a, **k)
    import unittest.mock
    with unittest.mock.patch.object(Path, "mkdir", mkdir):
        run_dir(path).create()
    assert seen == [True]
    run_dir(path).check()


def test_unreadable_config_is_refused_untouched(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / "config.yaml").write_text("model: [unclosed\n")
    before = snapshot(path)
    with pytest.raises(RunMismatchError):
        run_dir(path).create()
    assert snapshot(path) == before


# ---------------------------------------------------------------------------------------------------
# torn, corrupt and foreign unit files
# ---------------------------------------------------------------------------------------------------


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _corrupt(kind: str, good: bytes, r: RunDir, key: str, tmp_path: Path) -> bytes:
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "zero-bytes":
        return b""
    if kind == "random-bytes":
        return np.random.default_rng(0).integers(0, 256, len(good), dtype=np.uint8).tobytes()
    if kind == "no-meta":
        return _npz(**unit_arrays())
    if kind == "meta-not-json":
        return _npz(**unit_arrays(), meta=np.array("{not json"))
    if kind == "meta-not-a-dict":
        return _npz(**unit_arrays(), meta=np.array(json.dumps([key, r.key])))
    if kind == "pickled-meta":  # np.load(allow_pickle=False) refuses object arrays
        return _npz(**unit_arrays(), meta=np.array([{"key": key}], dtype=object))
    if kind == "other-experiment":  # the same unit written by a run with other settings
        other = run_dir(tmp_path / "other", eps="4/255")
        other.write_unit(key, unit_arrays(), {"beta": 0.9, "seed": 0})
        return other.unit_path(key).read_bytes()
    if kind == "other-key":  # another unit's file copied under this name
        other_key = r.unit_key(0.8, 0, IDS)
        r.write_unit(other_key, unit_arrays(), {"beta": 0.8, "seed": 0})
        data = r.unit_path(other_key).read_bytes()
        r.unit_path(other_key).unlink()
        return data
    raise AssertionError(kind)


CORRUPT = ["truncated", "zero-bytes", "random-bytes", "no-meta", "meta-not-json", "meta-not-a-dict",
           "pickled-meta", "other-experiment", "other-key"]


@pytest.mark.parametrize("kind", CORRUPT)
def test_bad_unit_file_counts_as_missing_and_is_rewritten(tmp_path, kind):
    r = run_dir(tmp_path / "run")
    r.create()
    key = r.unit_key(0.9, 0, IDS)
    r.write_unit(key, unit_arrays(), {"beta": 0.9, "seed": 0})
    assert r.has_unit(key)
    good = r.unit_path(key).read_bytes()
    r.unit_path(key).write_bytes(_corrupt(kind, good, r, key, tmp_path))
    assert r.has_unit(key) is False
    assert r.read_unit(key) is None
    # writing the unit again replaces the bad file
    arrays = unit_arrays(seed=1)
    r.write_unit(key, arrays, {"beta": 0.9, "seed": 0, "note": "rewritten"})
    assert r.has_unit(key)
    got_arrays, meta = r.read_unit(key)
    assert meta["note"] == "rewritten" and meta["key"] == key and meta["experiment"] == r.key
    assert sorted(got_arrays) == sorted(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got_arrays[k], v)
    assert tmp_files(tmp_path) == []


def test_unit_with_corrupt_arrays_is_not_reported_finished(tmp_path):
    r = run_dir(tmp_path / "run")
    r.create()
    key = r.unit_key(0.9, 0, IDS)
    r.write_unit(key, unit_arrays(n=4), {"beta": 0.9, "seed": 0})
    data = bytearray(r.unit_path(key).read_bytes())
    first = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0]
    assert first.filename != "meta.npy"
    pos = first.header_offset + 30 + len(first.filename) + len(first.extra) + first.compress_size // 2
    data[pos] ^= 0xFF  # one flipped byte inside the first array's compressed data
    r.unit_path(key).write_bytes(bytes(data))
    assert r.read_unit(key) is None  # the arrays are unreadable ...
    assert r.has_unit(key) is False  # ... so the unit is not finished


def test_read_unit_of_a_foreign_or_missing_unit_is_none(tmp_path):
    mine = run_dir(tmp_path / "run")
    mine.create()
    key = mine.unit_key(0.9, 0, IDS)
    assert mine.read_unit(key) is None and not mine.has_unit(key)
    # a run with other settings writing into the same folder (bypassing check) does not become ours
    foreign = run_dir(tmp_path / "run", eps="4/255")
    foreign.write_unit(key, unit_arrays(), {"beta": 0.9, "seed": 0})
    assert foreign.has_unit(key) and foreign.read_unit(key) is not None
    assert mine.read_unit(key) is None and not mine.has_unit(key)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_clean_stale_tmp_removes_only_dead_writers_files(tmp_path):
    r = run_dir(tmp_path / "run")
    r.create()
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            r.path / f".config.yaml.{dead}.abc123.tmp": False,
            r.units_dir / f".u1.npz.{dead}.x_y9.tmp": False,
            r.units_dir / f".u2.npz.{live.pid}.k2j.tmp": True,
            r.units_dir / f".u3.npz.{os.getpid()}.q1w.tmp": True,  # this process is writing it
            r.units_dir / ".unparseable.tmp": True,  # no pid in the name: left alone
        }
        for p in names:
            p.write_bytes(b"partial")
        assert r.clean_stale_tmp() == 2
        for p, kept in names.items():
            assert p.exists() == kept, p.name
        assert (r.path / "config.yaml").is_file()
    finally:
        live.kill()
        live.wait()
