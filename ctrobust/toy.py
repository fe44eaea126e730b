"""Tiny real models for tests and benchmarks: a small CNN trained in seconds on scikit-learn's digits.

Needs scikit-learn (the ``test`` extra). Used by ``tests/test_fast_*.py`` and ``benchmarks/parity.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["digits_cnn", "train_digits_cnn"]


def digits_cnn() -> nn.Module:
    """An untrained ReLU CNN for 8x8 one-channel digits: input (N, 1, 8, 8) in [0, 1], logits (N, 10)."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))


def train_digits_cnn(seed: int = 0, cache_dir: Path | None = None):
    """Train ``digits_cnn`` on 1500 digits (~3 s on a CPU); ~96 % accurate on the other 297.

    Args:
        seed: shuffling, initialisation and batch order.
        cache_dir: if given, the weights are saved there (atomically) by the first call and loaded by
            later ones (e.g. pytest's session temp dir, shared by several test modules).

    Returns:
        ``(model in eval mode, x_test (297, 1, 8, 8) float in [0, 1], y_test (297,) int64,
        ids_test (297,) int64 = positions in the shuffled set)``.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    test = (x[1500:], y[1500:], torch.arange(1500, len(x)))
    torch.manual_seed(seed)
    model = digits_cnn()
    path = None if cache_dir is None else Path(cache_dir) / f"ctrobust_digits_cnn_{seed}.pt"
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return (model.eval(), *test)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(6):
        p = torch.randperm(1500, generator=g)
        for i in range(0, 1500, 64):
            b = p[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    if path is not None:
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return (model, *test)
