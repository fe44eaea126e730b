"""Shared test setup: marker skips and an isolated per-user cache.

Markers (declared in pyproject.toml):
- ``network``: needs internet (RobustBench/Drive/CIFAR downloads); runs only with ``CTROBUST_NETWORK=1``.
- ``gpu``: needs a CUDA device; skipped without one.
- ``realweights``: needs real RobustBench checkpoints in ``CTROBUST_MODEL_DIR``; skipped when it is unset.
"""

from __future__ import annotations

import os

import pytest


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not _truthy("CTROBUST_NETWORK"):
        skips["network"] = pytest.mark.skip(reason="needs network: set CTROBUST_NETWORK=1 to run")
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if not has_cuda:
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA device")
    if not os.environ.get("CTROBUST_MODEL_DIR"):
        skips["realweights"] = pytest.mark.skip(reason="needs real checkpoints: set CTROBUST_MODEL_DIR")
    for item in items:
        for name, mark in skips.items():
            if name in item.keywords:
                item.add_marker(mark)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Point every per-user cache ctrobust/torch may write to at ``tmp_path/cache``; returns that folder.

    Clears ``CTROBUST_MODEL_DIR``/``CTROBUST_DATA_DIR`` so the defaults (under ``XDG_CACHE_HOME``) are used.
    """
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.delenv("CTROBUST_MODEL_DIR", raising=False)
    monkeypatch.delenv("CTROBUST_DATA_DIR", raising=False)
    monkeypatch.delenv("CTROBUST_OFFLINE", raising=False)
    return cache


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded (tiny models on a shared 2-core machine: ~10x faster, no OpenMP
    spinning); restores the thread count afterwards. Use with ``pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
