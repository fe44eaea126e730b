"""The attack registry: one frozen spec per attack and named suites with all their parameters.

Every other module derives its attack lists from here (config parsing, engines, randomness codes, plots,
diagnostics, reports), so an attack or a suite setting is defined exactly once.

* :class:`AttackSpec` -- what an attack *is*: its canonical name, whether it follows the gradient, whether
  it is targeted, the stable code that keys its random draws (:mod:`ctrobust.engines.fast.rng`), and its
  plot colour.
* :class:`AttackSuite` -- what is *run*: the attacks in order plus every hyper-parameter that changes a
  result (iterations, restarts, target classes, queries, EOT draws). A suite's :meth:`AttackSuite.params`
  is part of every experiment and unit key, so two suites that differ only in a setting (``rand`` is
  APGD-CE + APGD-DLR with 20 EOT draws; ``apgd-ce,apgd-dlr`` is the same attacks with 1) never share
  results.

Example:
    >>> suite = parse_suite("rand")
    >>> suite.attacks, suite.eot_iter
    (('apgd-ce', 'apgd-dlr'), 20)
    >>> parse_suite("apgd-ce, square").label
    'apgd-ce,square'
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ctrobust._registry import did_you_mean

__all__ = ["AttackSpec", "AttackSuite", "ATTACKS", "SUITES", "get_attack", "list_attacks", "parse_suite",
           "gradient_attacks", "attack_order", "split_list", "suite_attack_names"]


@dataclass(frozen=True)
class AttackSpec:
    """One attack of AutoAttack.

    Attributes:
        name: canonical name (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``, ``apgd-dlr``, ``fab``).
        gradient: follows the input gradient (everything but Square); a point broken only by a gradient-free
            attack after the gradient attacks missed it is a gradient-masking warning sign.
        targeted: runs once per target class (``n_target_classes`` of the suite).
        rng_code: stable integer in every random draw's key; never renumber (it would change all draws).
        color: plot colour.
        pyautoattack: pyautoattack's name for it (``attacks_to_run``).
    """

    name: str
    gradient: bool
    targeted: bool
    rng_code: int
    color: str
    pyautoattack: str


#: every attack, in AutoAttack's run order for the standard version first.
ATTACKS: dict[str, AttackSpec] = {a.name: a for a in (
    AttackSpec("apgd-ce", gradient=True, targeted=False, rng_code=1, color="#4c72b0", pyautoattack="apgd-ce"),
    AttackSpec("apgd-t", gradient=True, targeted=True, rng_code=2, color="#55a868", pyautoattack="apgd-t"),
    AttackSpec("fab-t", gradient=True, targeted=True, rng_code=3, color="#c44e52", pyautoattack="fab-t"),
    AttackSpec("square", gradient=False, targeted=False, rng_code=4, color="#8172b2", pyautoattack="square"),
    AttackSpec("apgd-dlr", gradient=True, targeted=False, rng_code=5, color="#ccb974", pyautoattack="apgd-dlr"),
    AttackSpec("fab", gradient=True, targeted=False, rng_code=6, color="#64b5cd", pyautoattack="fab"),
)}


def list_attacks() -> list[str]:
    """Canonical attack names in registry order."""
    return list(ATTACKS)


def get_attack(name: str) -> AttackSpec:
    """The spec of a canonical attack name (case and surrounding spaces ignored)."""
    key = str(name).strip().lower()
    try:
        return ATTACKS[key]
    except KeyError:
        raise did_you_mean("attack", str(name), list(ATTACKS) + list(SUITES)) from None


def gradient_attacks() -> tuple[str, ...]:
    """Names of the attacks that follow the gradient."""
    return tuple(a.name for a in ATTACKS.values() if a.gradient)


def attack_order(names) -> list[str]:
    """``names`` sorted in registry order (AutoAttack's order), unknown names last in their given order."""
    known = [a for a in ATTACKS if a in set(names)]
    return known + [a for a in names if a not in ATTACKS]


@dataclass(frozen=True)
class AttackSuite:
    """The attacks of a run, in order, with every parameter that changes a result.

    Defaults are AutoAttack's standard version (Croce & Hein 2020; pyautoattack 0.2.0): 100 iterations,
    one restart, 9 target classes, 5000 Square queries, no EOT.

    Attributes:
        name: the suite's name (``standard``, ``rand``) or ``custom`` for a list of attacks.
        attacks: canonical attack names in run order.
        n_iter: APGD and FAB iterations per restart / target class.
        n_restarts: restarts of the untargeted APGD and FAB.
        n_target_classes: target classes of APGD-T and FAB-T (capped at classes - 1).
        n_queries: Square's queries.
        eot_iter: gradient draws averaged per APGD step (expectation over transformation; > 1 only for
            randomized defenses).
        rho: APGD's step-size checkpoint threshold.
        p_init: Square's initial fraction of changed pixels.
    """

    name: str
    attacks: tuple
    n_iter: int = 100
    n_restarts: int = 1
    n_target_classes: int = 9
    n_queries: int = 5000
    eot_iter: int = 1
    rho: float = 0.75
    p_init: float = 0.8

    def __post_init__(self):
        names = tuple(get_attack(a).name for a in self.attacks)
        if not names:
            raise ValueError("an attack suite needs at least one attack")
        if len(set(names)) != len(names):
            raise ValueError(f"attack listed twice: {', '.join(names)}")
        object.__setattr__(self, "attacks", names)
        for f in ("n_iter", "n_restarts", "n_target_classes", "n_queries", "eot_iter"):
            v = getattr(self, f)
            if int(v) != v or v < 1:
                raise ValueError(f"attack suite {f} must be a positive integer, got {v!r}")
            object.__setattr__(self, f, int(v))

    @property
    def label(self) -> str:
        """The config string that names this suite: the suite name, or the comma list of a custom one."""
        return ",".join(self.attacks) if self.name == "custom" else self.name

    @property
    def specs(self) -> tuple[AttackSpec, ...]:
        return tuple(ATTACKS[a] for a in self.attacks)

    @property
    def needs_targets(self) -> bool:
        return any(s.targeted for s in self.specs)

    def params(self) -> dict:
        """Everything that determines the suite's results (hashed into experiment and unit keys).

        The name is left out: a custom list equal to a named suite is the same experiment.
        """
        d = dataclasses.asdict(self)
        del d["name"]
        d["attacks"] = list(self.attacks)
        return d


#: the named suites: AutoAttack's ``standard`` and ``rand`` versions.
SUITES: dict[str, AttackSuite] = {
    "standard": AttackSuite("standard", ("apgd-ce", "apgd-t", "fab-t", "square")),
    # AutoAttack's version for randomized defenses: APGD-CE and APGD-DLR, gradients averaged over 20 draws
    "rand": AttackSuite("rand", ("apgd-ce", "apgd-dlr"), eot_iter=20),
}


def split_list(spec) -> list[str]:
    """Split a list option the same way everywhere: commas and/or spaces, or a list of such strings.

    ``"0.8,0.9"``, ``"0.8 0.9"``, ``["0.8", "0.9"]`` and ``["0.8,0.9"]`` all give ``["0.8", "0.9"]``.
    """
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    return [t for item in items for t in re.split(r"[,\s]+", str(item).strip()) if t]


def parse_suite(spec) -> AttackSuite:
    """Parse an attack option into a suite.

    Args:
        spec: an :class:`AttackSuite`, a suite name (``standard``, ``rand``), or attack names as a comma /
            space separated string or a list (``"apgd-ce,square"``); a custom list runs with the standard
            suite's parameters.

    Raises:
        ValueError: unknown attack (``UnknownNameError`` with a suggestion), a suite mixed with attacks,
            an attack listed twice, or nothing given.
    """
    if isinstance(spec, AttackSuite):
        return spec
    names = [t.lower() for t in split_list(spec)]
    if not names:
        raise ValueError("no attacks given: use standard, rand, or e.g. apgd-ce,square")
    if len(names) == 1 and names[0] in SUITES:
        return SUITES[names[0]]
    if any(n in SUITES for n in names):
        raise ValueError(f"suite {next(n for n in names if n in SUITES)!r} cannot be combined with other attacks")
    for n in names:
        get_attack(n)  # did-you-mean for unknown names
    if len(set(names)) != len(names):
        raise ValueError(f"attack listed twice: {', '.join(names)}")
    suite = dataclasses.replace(SUITES["standard"], name="custom", attacks=tuple(names))
    # a list that spells out a named suite is that suite
    return next((s for s in SUITES.values() if s.params() == suite.params()), suite)


def suite_attack_names(label) -> list[str]:
    """The attack names an attack option names, without validating them: a suite's attacks, else the list.

    For reading what an older or foreign run dir wrote (a name this install does not know stays as written);
    options of a new run go through :func:`parse_suite`.
    """
    names = [t.lower() for t in split_list(label)]
    if len(names) == 1 and names[0] in SUITES:
        return list(SUITES[names[0]].attacks)
    return names
