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
           "gradient_attacks", "attack_order", "split_list", "suite_attack_names", "MIN_NORM", "MIN_NORM_ATTACKS",
           "bounded_attacks"]


@dataclass(frozen=True)
class AttackSpec:
    """One attack: what it is, what it measures, how it is built and which parameters it reads.

    Attributes:
        name: canonical name (``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``, ``apgd-dlr``, ``fab``; the
            minimum-norm ``fmn`` and ``fab-mn``).
        gradient: follows the input gradient (everything but Square); a point broken only by a gradient-free
            attack after the gradient attacks missed it is a gradient-masking warning sign.
        targeted: runs once per target class (``n_target_classes`` of the suite).
        rng_code: stable integer in every random draw's key; never renumber (it would change all draws).
        color: plot colour.
        pyautoattack: pyautoattack's name for it (``attacks_to_run``), or None (not part of AutoAttack).
        kind: what a run of it produces per example: ``"bounded"`` (robust at eps or broken, with a point in
            the ball) or ``"min-norm"`` (a distance: the smallest perturbation that breaks the example).
        factory: ``"module:function"`` building the fast engine's implementation (imported on first use, so
            this registry imports no engine): for bounded attacks ``function(spec, suite, n_target_classes)``
            returns a per-row attack state machine; for minimum-norm attacks the function is the attack itself
            (``ctrobust.engines.minnorm``).
        params: the attack's own parameters with their defaults. Bounded attacks name the parameters of the
            AutoAttack block they read (one block for all of them, as AutoAttack has: ``n_iter`` ...); a
            minimum-norm attack carries its own (``steps``, ``restarts``), which enter a suite's key only
            when it runs.
    """

    name: str
    gradient: bool
    targeted: bool
    rng_code: int
    color: str
    pyautoattack: str | None
    kind: str = "bounded"
    factory: str = ""
    params: tuple = ()

    def load_factory(self):
        """The factory function (``factory`` imported)."""
        import importlib

        module, _, func = self.factory.partition(":")
        if not module or not func:
            raise NotImplementedError(f"attack {self.name!r} has no implementation in ctrobust")
        return getattr(importlib.import_module(module), func)

    @property
    def defaults(self) -> dict:
        """A minimum-norm attack's parameters with their defaults (``{}`` for bounded attacks)."""
        return dict(self.params) if self.kind == "min-norm" else {}


_FAST = "ctrobust.engines.fast.engine:build_"

#: every attack, in AutoAttack's run order for the standard version first.
ATTACKS: dict[str, AttackSpec] = {a.name: a for a in (
    AttackSpec("apgd-ce", gradient=True, targeted=False, rng_code=1, color="#4c72b0", pyautoattack="apgd-ce",
               factory=_FAST + "apgd", params=("n_iter", "n_restarts", "eot_iter", "rho")),
    AttackSpec("apgd-t", gradient=True, targeted=True, rng_code=2, color="#55a868", pyautoattack="apgd-t",
               factory=_FAST + "apgd", params=("n_iter", "n_target_classes", "eot_iter", "rho")),
    AttackSpec("fab-t", gradient=True, targeted=True, rng_code=3, color="#c44e52", pyautoattack="fab-t",
               factory=_FAST + "fab", params=("n_iter", "n_target_classes")),
    AttackSpec("square", gradient=False, targeted=False, rng_code=4, color="#8172b2", pyautoattack="square",
               factory=_FAST + "square", params=("n_queries", "p_init")),
    AttackSpec("apgd-dlr", gradient=True, targeted=False, rng_code=5, color="#ccb974", pyautoattack="apgd-dlr",
               factory=_FAST + "apgd", params=("n_iter", "n_restarts", "eot_iter", "rho")),
    AttackSpec("fab", gradient=True, targeted=False, rng_code=6, color="#64b5cd", pyautoattack="fab",
               factory=_FAST + "fab", params=("n_iter", "n_restarts")),
    # minimum-norm attacks (Pintor et al. 2021; Croce & Hein 2020, FAB run to minimise the norm)
    AttackSpec("fmn", gradient=True, targeted=False, rng_code=7, color="#937860", pyautoattack=None,
               kind="min-norm", factory="ctrobust.engines.minnorm:fmn", params=(("steps", 100),)),
    AttackSpec("fab-mn", gradient=True, targeted=False, rng_code=8, color="#da8bc3", pyautoattack=None,
               kind="min-norm", factory="ctrobust.engines.minnorm:fab_min_norm",
               params=(("steps", 100), ("restarts", 1), ("candidates", 0))),
)}

#: the name of the suite of minimum-norm attacks (FMN and FAB, the smallest verified distance per point).
MIN_NORM = "min-norm"
MIN_NORM_ATTACKS = ("fmn", "fab-mn")


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
    """Names of the bounded attacks that follow the gradient."""
    return tuple(a.name for a in ATTACKS.values() if a.gradient and a.kind == "bounded")


def bounded_attacks() -> tuple[str, ...]:
    """Names of the attacks that decide robust-or-broken at eps (AutoAttack's)."""
    return tuple(a.name for a in ATTACKS.values() if a.kind == "bounded")


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
    min_norm: tuple = ()

    def __post_init__(self):
        names = tuple(get_attack(a).name for a in self.attacks)
        if any(ATTACKS[n].kind != "bounded" for n in names):
            raise ValueError("minimum-norm attacks go in min_norm, not attacks")
        mn = tuple(self._min_norm_entry(m) for m in self.min_norm)
        if not names and not mn:
            raise ValueError("an attack suite needs at least one attack")
        if len(set(names)) != len(names) or len({m[0] for m in mn}) != len(mn):
            raise ValueError(f"attack listed twice: {', '.join(names + tuple(m[0] for m in mn))}")
        object.__setattr__(self, "attacks", names)
        object.__setattr__(self, "min_norm", mn)
        for f in ("n_iter", "n_restarts", "n_target_classes", "n_queries", "eot_iter"):
            v = getattr(self, f)
            if int(v) != v or v < 1:
                raise ValueError(f"attack suite {f} must be a positive integer, got {v!r}")
            object.__setattr__(self, f, int(v))

    @staticmethod
    def _min_norm_entry(m) -> tuple:
        """``"fmn"`` or ``("fmn", {"steps": 50})`` -> ``("fmn", (("steps", 50),))`` with every parameter."""
        name, given = (m, {}) if isinstance(m, str) else (m[0], dict(m[1]))
        spec = get_attack(name)
        if spec.kind != "min-norm":
            raise ValueError(f"{spec.name!r} is not a minimum-norm attack")
        unknown = set(given) - set(spec.defaults)
        if unknown:
            raise ValueError(f"{spec.name} has no parameter {sorted(unknown)[0]!r} "
                             f"(it takes {', '.join(spec.defaults)})")
        values = {**spec.defaults, **given}
        for k, v in values.items():
            if int(v) != v or v < (0 if spec.defaults[k] == 0 else 1):
                raise ValueError(f"{spec.name} {k} must be a {'non-negative' if spec.defaults[k] == 0 else 'positive'}"
                                 f" integer, got {v!r}")
        return spec.name, tuple((k, int(values[k])) for k in spec.defaults)

    @property
    def bounded_label(self) -> str:
        """The label of the bounded attacks alone ("" when there are none)."""
        if not self.attacks:
            return ""
        return ",".join(self.attacks) if self.name == "custom" else self.name

    @property
    def label(self) -> str:
        """The config string that names this suite: the suite name, or the comma list of a custom one, then
        ``min-norm`` (or the minimum-norm attacks' names) when minimum-norm attacks run."""
        parts = [self.bounded_label] if self.attacks else []
        if self.min_norm:
            names = tuple(m[0] for m in self.min_norm)
            parts.append(MIN_NORM if names == MIN_NORM_ATTACKS else ",".join(names))
        return ",".join(parts)

    @property
    def specs(self) -> tuple[AttackSpec, ...]:
        """The bounded attacks' specs, in run order."""
        return tuple(ATTACKS[a] for a in self.attacks)

    @property
    def min_norm_specs(self) -> tuple[AttackSpec, ...]:
        return tuple(ATTACKS[m[0]] for m in self.min_norm)

    def min_norm_params(self, name: str) -> dict:
        """The parameters a minimum-norm attack of this suite runs with."""
        return dict(dict(self.min_norm)[name])

    @property
    def needs_targets(self) -> bool:
        return any(s.targeted for s in self.specs)

    def with_min_norm_params(self, params) -> "AttackSuite":
        """The same suite with some minimum-norm parameters changed: ``{attack: {param: value}}`` (None or {}:
        unchanged; an attack the suite does not run, or a parameter it does not have, is an error)."""
        if not params or not self.min_norm:
            return self
        runs = {n for n, _ in self.min_norm}
        unknown = set(params) - runs
        if unknown:
            raise ValueError(f"parameters for {sorted(unknown)[0]!r}, which this suite does not run "
                             f"({', '.join(n for n, _ in self.min_norm)})")
        return dataclasses.replace(self, min_norm=tuple((n, {**dict(p), **params.get(n, {})}) for n, p in self.min_norm))

    def with_min_norm_steps(self, steps) -> "AttackSuite":
        """Every minimum-norm attack at ``steps`` steps (an int), or per attack (``{attack: steps}``)."""
        if steps is None or not self.min_norm:
            return self
        per = dict(steps) if isinstance(steps, dict) else {n: steps for n, _ in self.min_norm}
        return self.with_min_norm_params({n: {"steps": v} for n, v in per.items()})

    def params(self) -> dict:
        """Everything that determines the suite's results (hashed into experiment and unit keys).

        The AutoAttack attacks share one parameter block (``n_iter`` ... ``p_init``, one value for all, as in
        AutoAttack), which enters when any of them runs; a minimum-norm attack's own parameters enter under
        ``min_norm`` only when it runs, so adding an attack to the registry leaves every existing key as it
        is. The name is left out: a custom list equal to a named suite is the same experiment.
        """
        d = {}
        if self.attacks:
            d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("name", "min_norm")}
            d["attacks"] = list(self.attacks)
        if self.min_norm:
            d["min_norm"] = {n: dict(p) for n, p in self.min_norm}
        return d


#: the named suites: AutoAttack's ``standard`` and ``rand`` versions.
SUITES: dict[str, AttackSuite] = {
    "standard": AttackSuite("standard", ("apgd-ce", "apgd-t", "fab-t", "square")),
    # AutoAttack's version for randomized defenses: APGD-CE and APGD-DLR, gradients averaged over 20 draws
    "rand": AttackSuite("rand", ("apgd-ce", "apgd-dlr"), eot_iter=20),
    # FMN and FAB (minimum-norm) on every point: its minimal perturbation, robust accuracy at every eps
    MIN_NORM: AttackSuite(MIN_NORM, (), min_norm=MIN_NORM_ATTACKS),
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
        spec: an :class:`AttackSuite`, a suite name (``standard``, ``rand``, ``min-norm``), or attack names as a
            comma / space separated string or a list (``"apgd-ce,square"``); a custom list runs with the standard
            suite's parameters. The minimum-norm part (``min-norm``, or ``fmn`` / ``fab-mn``) may follow a
            bounded suite or list: ``"standard,min-norm"`` runs AutoAttack at eps *and* finds every point's
            minimal perturbation.

    Raises:
        ValueError: unknown attack (``UnknownNameError`` with a suggestion), two bounded suites or a suite mixed
            with bounded attacks, an attack listed twice, or nothing given.
    """
    if isinstance(spec, AttackSuite):
        return spec
    names = [t.lower() for t in split_list(spec)]
    if not names:
        raise ValueError("no attacks given: use standard, rand, min-norm, or e.g. apgd-ce,square")
    mn: list[str] = []
    bounded: list[str] = []
    for n in names:
        if n == MIN_NORM:
            mn += list(MIN_NORM_ATTACKS)
        elif n in SUITES:
            bounded.append(n)
        elif get_attack(n).kind == "min-norm":  # did-you-mean for unknown names
            mn.append(n)
        else:
            bounded.append(n)
    if len(set(mn)) != len(mn) or len(set(bounded)) != len(bounded):
        raise ValueError(f"attack listed twice: {', '.join(names)}")
    if not bounded:
        return dataclasses.replace(SUITES["standard"], name=MIN_NORM, attacks=(), min_norm=tuple(mn))
    if len(bounded) == 1 and bounded[0] in SUITES:
        named = SUITES[bounded[0]]
        return dataclasses.replace(named, min_norm=tuple(mn)) if mn else named
    if any(n in SUITES for n in bounded):
        raise ValueError(f"suite {next(n for n in bounded if n in SUITES)!r} cannot be combined with other "
                         "bounded attacks")
    suite = dataclasses.replace(SUITES["standard"], name="custom", attacks=tuple(bounded))
    # a list that spells out a named suite is that suite
    named = next((s for s in SUITES.values() if s.attacks and s.params() == suite.params()), suite)
    return dataclasses.replace(named, min_norm=tuple(mn)) if mn else named


def suite_attack_names(label) -> list[str]:
    """The bounded attack names an attack option names, without validating them: a suite's attacks, else the
    list (minimum-norm names left out).

    For reading what an older or foreign run dir wrote (a name this install does not know stays as written);
    options of a new run go through :func:`parse_suite`.
    """
    names = [t.lower() for t in split_list(label)]
    mn = set(MIN_NORM_ATTACKS) | {MIN_NORM}
    names = [n for n in names if n not in mn]
    if len(names) == 1 and names[0] in SUITES:
        return list(SUITES[names[0]].attacks)
    return names
