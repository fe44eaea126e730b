"""``coverage_table``: CT coverage of models built with random weights (offline), per CT scope."""

from __future__ import annotations

import gc
import time
from typing import Callable, Sequence

import torch

from ctrobust.data import parse_dataset
from ctrobust.models._common import caused_by_blocked_network, first_line
from ctrobust.models._families import build_architecture
from ctrobust.models.robustbench import list_models
from ctrobust.threat import Threat

__all__ = ["coverage_table"]


def _summary(unsupported: dict) -> str:
    return ", ".join(f"{k} x {v}" for k, v in sorted(unsupported.items(), key=lambda kv: (-kv[1], kv[0])))


def _status(cov) -> str:
    verdict = cov.verdict
    # the table keeps missed ReLU calls apart from other partial coverage: they are a CT bug to fix
    return "missed" if verdict == "partial" and cov.missed else verdict


def coverage_table(dataset: str = "cifar10", threat: "str | Threat" = "Linf",
                   example_input: torch.Tensor | None = None, names: list[str] | None = None,
                   on_row: Callable[[dict], None] | None = None, scopes: Sequence[str] = ("all",)) -> list[dict]:
    """CT coverage of models of a (dataset, threat) pair, from random-weight architectures (offline).

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        threat: ``"Linf"`` or ``"L2"``.
        example_input: the input of the counting forward pass; default one uniform [0, 1] image (seed 0),
            ``(1, 3, 32, 32)`` (CIFAR) or ``(1, 3, 224, 224)`` (ImageNet).
        names: restrict to these names, of any family (default: :func:`list_models`, RobustBench + bundled).
        on_row: called with each row as soon as it is computed (for progress output).
        scopes: the CT scopes to count for (``ctrobust.ct.SCOPES``: ``"all"``, ``"modules"``).

    Returns:
        One dict per model: ``name``; ``relu_modules``, ``relu_functional``, ``leaky_relu``, ``missed`` (ints,
        ``None`` if the build failed) as counted by ``ctrobust.ct.ct_coverage`` for the first of ``scopes``;
        ``unsupported`` (str summary, e.g. ``"SiLU x 67"``); ``reachable`` (bool: CT tunes at least one ReLU and
        misses none); ``status``: the ``Coverage.verdict`` -- ``full`` (every activation is a ReLU CT reaches),
        ``partial`` (CT reaches the ReLUs, other activations stay or the scope leaves some ReLUs), ``none`` (no
        ReLU tuned: CT does not apply) -- except ``missed`` (a ``partial`` verdict where some ReLU calls escape
        CT), plus ``skipped`` (building needs a download) and ``error`` (the build or forward failed); ``error``
        (str); ``coverage`` (the first scope's :class:`ctrobust.ct.Coverage`, ``None`` if the build failed);
        ``by_scope`` (``{scope: Coverage}``) and ``status_by_scope`` (``{scope: status}``); ``seconds``.
    """
    from ctrobust.ct import ct_coverage

    dataset, threat = parse_dataset(dataset), Threat.parse(threat)
    names = list_models(dataset, threat) if names is None else list(names)
    scopes = list(scopes)
    if example_input is None:
        size = 224 if dataset == "imagenet" else 32
        example_input = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in names:
        t0 = time.perf_counter()
        row = {"name": name, "relu_modules": None, "relu_functional": None, "leaky_relu": None, "missed": None,
               "unsupported": "", "reachable": False, "status": "error", "error": "", "coverage": None,
               "by_scope": {}, "status_by_scope": {}}
        model = None
        try:
            model = build_architecture(name, dataset, threat)
            by_scope = {s: ct_coverage(model, example_input, scope=s) for s in scopes}
        except Exception as exc:  # noqa: BLE001 - one broken entry must not stop the table
            if caused_by_blocked_network(exc):
                row.update(status="skipped", error=f"building needs a download: {first_line(exc)}")
            else:
                row.update(status="error", error=f"{type(exc).__name__}: {first_line(exc)}")
        else:
            cov = by_scope[scopes[0]]
            row.update(relu_modules=cov.relu_modules, relu_functional=cov.relu_functional,
                       leaky_relu=cov.leaky_relu, missed=cov.missed, unsupported=_summary(cov.unsupported),
                       reachable=cov.verdict != "none" and not cov.missed, status=_status(cov), coverage=cov,
                       by_scope=by_scope, status_by_scope={s: _status(c) for s, c in by_scope.items()})
        finally:
            del model
            gc.collect()
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
