"""Pre-flight: every missing input of a sweep or a study at once, in the flags a user types, before any work.

``preflight`` loads each distinct model and data set of the cells (reads only) and names every one that is
missing or unusable; ``check_inputs`` adds the device and the output folder for one sweep. Both read only:
a refused sweep or study has written nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ctrobust.errors import ConfigError

__all__ = ["InputsMissingError", "preflight", "check_inputs", "in_cli_terms"]


class InputsMissingError(ConfigError):
    """Inputs of a sweep are missing (weights, data, device, output folder): every one is listed, one per line,
    and nothing was written."""

    all_lines = True  # the CLI prints every line of the message


#: the library's words for an option (messages of ``load_model`` / ``load_eval_set``) -> the flag a user types
_CLI_TERMS = [
    (r"\(or None for all\)", "(or --n-examples all)"),
    (r"n_examples=None \(all\)", "--n-examples all"),
    (r"n_examples<=(\d+)", r"--n-examples \1 or fewer"),
    (r"\bn_examples=(\d+)", r"--n-examples \1"),
    (r"a smaller n_examples", "a smaller --n-examples"),
    (r"\bdata='(\w+)'", r"--data \1"),
    (r"\bsubset='(\w+)'", r"--subset \1"),
    (r"\bpass data_dir\b", "pass --data-dir DIR"),
    (r"\bpass model_dir\b", "pass --model-dir DIR"),
    (r"\bcheckpoint=", "--checkpoint "),
]


def in_cli_terms(text: str) -> str:
    """``text`` with the library's option names (``data='bundled'``, ``pass data_dir``, ``n_examples<=20 (or
    None for all)``) in the flags a user types (``--data bundled``, ``pass --data-dir DIR``, ``--n-examples 20
    or fewer (or --n-examples all)``)."""
    for pattern, repl in _CLI_TERMS:
        text = re.sub(pattern, repl, text)
    return text


def preflight(cells) -> list[str]:
    """Every missing weight file or dataset of ``cells`` (``(dataset, cfg)`` pairs, or objects with ``dataset``
    and ``cfg``: a study's cells), one line each in the flags a user types (empty: all there). Reads only."""
    from ctrobust.data import DataUnavailableError, load_eval_set
    from ctrobust.models import ModelLoadError, ModelUnavailableError, load_model

    problems, seen = [], set()
    for c in cells:
        dataset, cfg = c if isinstance(c, tuple) else (c.dataset, c.cfg)
        mkey = (cfg.model, cfg.dataset, cfg.model_dir, getattr(cfg, "checkpoint", None))
        if mkey not in seen:
            seen.add(mkey)
            try:
                load_model(cfg.model, dataset=cfg.dataset, threat=cfg.threat, model_dir=cfg.model_dir,
                           device="cpu", **({"checkpoint": cfg.checkpoint} if getattr(cfg, "checkpoint", None) else {}))
            except (ModelUnavailableError, ModelLoadError, ConfigError) as exc:
                problems.append(f"{dataset}: model {cfg.model}: {str(exc).splitlines()[0]}")
        if cfg.threat == "corruptions":
            problems += _missing_corruption_data(dataset, cfg, seen)
            continue
        dkey = (cfg.dataset, cfg.data, cfg.data_dir, cfg.n_examples, cfg.subset)
        if dkey not in seen:
            seen.add(dkey)
            try:
                load_eval_set(cfg.dataset, cfg.n_examples, subset=cfg.subset, data=cfg.data, data_dir=cfg.data_dir)
            except (DataUnavailableError, ConfigError, ValueError) as exc:
                problems.append(f"{dataset}: data: {str(exc).splitlines()[0]}")
    return [in_cli_terms(p) for p in problems]


def _missing_corruption_data(dataset: str, cfg, seen: set) -> list[str]:
    """One line per missing CIFAR-C file / ImageNet-C folder of a corruptions sweep or cell, with its source."""
    from ctrobust.corruptions import missing_corruption_files

    key = ("corruptions", cfg.dataset, cfg.data_dir, str(cfg.corruptions), str(cfg.severities), cfg.n_examples)
    if key in seen:
        return []
    seen.add(key)
    try:
        missing = missing_corruption_files(cfg.dataset, cfg.corruptions, cfg.severities, cfg.data_dir,
                                           n_examples=cfg.n_examples)
    except (ConfigError, ValueError) as exc:
        return [f"{dataset}: corruptions data: {str(exc).splitlines()[0]}"]
    return [f"{dataset}: corruptions data: {m.path}  <- {m.source}" for m in missing]


def _out_problems(out) -> list[str]:
    """Why the run dir ``out`` cannot be written (a file on its path, a folder not writable), without writing."""
    out = Path(out)
    for q in [out, *out.parents]:
        if q.exists():
            if not q.is_dir():
                if q == out:
                    return []  # RunDir.check names it ("exists and is not a directory")
                return [f"--out {str(out)!r}: {str(q)!r} is a file, not a folder: choose another --out"]
            if not os.access(q, os.W_OK | os.X_OK):
                return [f"--out {str(out)!r}: {str(q)!r} is not writable: choose another --out"]
            return []
    return []


def check_inputs(cfg, *, in_process: bool = True, load: bool = False) -> None:
    """Refuse, listing every problem at once in the flags a user types, when an input of the sweep ``cfg`` is
    missing: the device (when the sweep runs in this process), the output folder, and -- when ``load``, or
    when one of those is already wrong -- the model's weights and the data (:func:`preflight`, which loads
    them). Writes nothing.

    Raises:
        InputsMissingError: one line per problem (a single problem is its own one-line message).
    """
    from ctrobust.runner import resolve_device
    from ctrobust.store import RunDir

    problems = []
    if in_process:
        try:
            resolve_device(cfg.device)
        except ConfigError as exc:
            problems.append(str(exc))
    problems += _out_problems(cfg.run_dir)
    try:
        RunDir(cfg.run_dir, cfg, data_hash=None).check(settings_only=True)
    except ConfigError as exc:
        problems.append(str(exc))
    if problems or load:
        problems += preflight([(cfg.dataset, cfg)])
    if len(problems) == 1:
        raise InputsMissingError(problems[0])
    if problems:
        raise InputsMissingError(f"{len(problems)} inputs of this sweep are missing or unusable (nothing was "
                                 "written):\n" + "\n".join(f"  - {p}" for p in problems))
