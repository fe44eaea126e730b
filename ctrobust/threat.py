"""Threat models (Linf, L2), their default radii, and the ball check run after every attack chunk.

An adversarial example for a [0, 1] image ``x`` under threat ``T`` and radius ``eps`` is any ``x_adv``
with ``x_adv`` in [0, 1] (per pixel) and ``||x_adv - x||_T <= eps``, where the norm is taken over the whole
image (all channels and pixels). ``check_ball`` verifies exactly that (plus finiteness), with a small
tolerance for floating-point projection error, and fails loudly otherwise: a result computed from
points outside the ball is not a robustness result.

Example:
    >>> from ctrobust.threat import Threat, DEFAULT_EPS, check_ball
    >>> threat = Threat.parse("linf")
    >>> eps = DEFAULT_EPS[threat]               # 8/255
    >>> check_ball(x, x_adv, threat, eps)        # raises BallViolationError if any row is outside
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch

from ctrobust._registry import did_you_mean

__all__ = ["Threat", "DEFAULT_EPS", "THREATS", "CORRUPTIONS", "parse_threat", "format_eps", "BallViolationError", "DistanceCheckError", "check_distances", "CONSTRAINTS", "check_ball", "check_clamped_ball",
           "check_constraint", "clamped_distances", "distances"]

#: the constraint sets an attack may be checked against: ``ball`` (the threat model: x_adv in [0, 1] and
#: within eps of x) and ``clamped-ball`` (what AutoAttack computes when its inputs are not images in
#: [0, 1], e.g. normalized inputs: the [0, 1]-clamp of a point within eps of x; used by the CT reference
#: protocol, whose points are therefore not in the stated ball in pixel space).
CONSTRAINTS = ("ball", "clamped-ball")


class Threat(str, Enum):
    """The threat model: the norm of a perturbation ball (``Linf``, ``L2``) or common corruptions
    (``corruptions``: RobustBench's third threat model, no ball and no attack). A ``str``, so
    ``Threat.Linf == "Linf"``. Functions about balls (``distances``, ``check_ball``) take the two norms.

    ``Threat("linf")`` and ``Threat.parse("LINF")`` are case-insensitive (``L_inf``/``inf`` are accepted
    for ``Linf``); ``parse`` raises an
    ``UnknownNameError`` with "did you mean ...?" for anything else.
    """

    Linf = "Linf"
    L2 = "L2"
    corruptions = "corruptions"

    def __str__(self) -> str:  # "Linf", not "Threat.Linf", in messages and file names
        return self.value

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            key = value.strip().lower().replace("_", "").replace("-", "")
            return {"linf": cls.Linf, "inf": cls.Linf, "linfty": cls.Linf, "l2": cls.L2,
                    "corruptions": cls.corruptions, "corruption": cls.corruptions}.get(key)
        return None

    @classmethod
    def parse(cls, value: "str | Threat") -> "Threat":
        """Turn a user string into a ``Threat`` (case-insensitive).

        Args:
            value: ``"Linf"``, ``"L2"`` (any case) or a ``Threat``.

        Returns:
            The ``Threat`` member.

        Raises:
            UnknownNameError: for an unknown name, e.g. ``unknown threat model 'L1' — did you mean 'L2'?``.
        """
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise did_you_mean("threat model", str(value), [m.value for m in cls]) from None


#: the threat that is not a perturbation ball: accuracy under common corruptions (RobustBench's CIFAR-10-C,
#: CIFAR-100-C, ImageNet-C), no attack
CORRUPTIONS = Threat.corruptions.value
#: every threat a sweep evaluates: the two norm balls and the corruptions
THREATS = tuple(t.value for t in Threat)


def parse_threat(value) -> str:
    """``"linf"``, ``"L2"``, ``"corruptions"`` (any case) -> the canonical name ("did you mean" otherwise)."""
    return Threat.parse(value).value


#: Default radii of the RobustBench leaderboards (images in [0, 1]).
DEFAULT_EPS: dict[Threat, float] = {Threat.Linf: 8 / 255, Threat.L2: 0.5}


class BallViolationError(AssertionError):
    """Some adversarial examples are outside the threat ball, outside [0, 1], or not finite.

    Attributes:
        n_bad: number of offending examples.
        n_total: number of examples checked.
        first_index: index (row in the checked batch) of the first offending example.
        worst_distance: largest distance to the clean image among all rows (``nan`` if non-finite).
        bad_indices: 1-D int64 tensor of all offending rows.
    """

    def __init__(self, message: str, *, n_bad: int, n_total: int, first_index: int,
                 worst_distance: float, bad_indices: torch.Tensor):
        super().__init__(message)
        self.n_bad = n_bad
        self.n_total = n_total
        self.first_index = first_index
        self.worst_distance = worst_distance
        self.bad_indices = bad_indices


def format_eps(eps, sep: str = "/") -> str:
    """A budget as people write it: ``k/255`` when eps is a multiple of 1/255, else ``%g``.

    Args:
        eps: the budget in [0, 1] pixel units (None gives ``"?"``).
        sep: ``"/"`` for text (``8/255``), ``"_"`` for file names (``8_255``).
    """
    if eps is None:
        return "?"
    eps = float(eps)
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}{sep}255"
    return f"{eps:g}"


def distances(x_clean: torch.Tensor, x_adv: torch.Tensor, threat: "str | Threat") -> torch.Tensor:
    """Per-example distance ``||x_adv - x_clean||`` in the threat's norm over all non-batch dimensions.

    Args:
        x_clean: ``(N, ...)`` float tensor.
        x_adv: same shape as ``x_clean``.
        threat: ``"Linf"`` or ``"L2"``.

    Returns:
        ``(N,)`` float64 tensor on the inputs' device (``nan`` where ``x_adv`` is not finite).
    """
    threat = Threat.parse(threat)
    if x_clean.shape != x_adv.shape:
        raise ValueError(f"x_clean has shape {tuple(x_clean.shape)} but x_adv has {tuple(x_adv.shape)}")
    if x_adv.dim() == 0:
        raise ValueError("expected a batch (N, ...) of examples, got a scalar")
    x_adv, x_clean = x_adv.detach(), x_clean.detach()
    if not x_adv.is_floating_point():
        x_adv = x_adv.to(torch.float64)
    # the difference in the inputs' dtype (exact up to one rounding), the norm accumulated in float64
    diff = (x_adv - x_clean.to(x_adv.dtype)).reshape(x_adv.shape[0], -1)
    if diff.shape[1] == 0:
        return torch.zeros(diff.shape[0], dtype=torch.float64, device=diff.device)
    order = float("inf") if threat is Threat.Linf else 2.0
    dist = torch.linalg.vector_norm(diff, ord=order, dim=1, dtype=torch.float64)
    # vector_norm(inf) of a row containing NaN may be NaN or not depending on the backend: make it explicit
    finite = torch.isfinite(diff).all(dim=1)
    return torch.where(finite, dist, torch.full_like(dist, float("nan")))


def check_ball(x_clean: torch.Tensor, x_adv: torch.Tensor, threat: "str | Threat", eps: float,
               tol: float = 1e-5) -> torch.Tensor:
    """Assert that every ``x_adv`` is a valid adversarial candidate for its clean image.

    Valid means: all entries finite, every pixel in ``[-tol, 1 + tol]``, and
    ``||x_adv - x_clean||_threat <= eps + tol`` (norm over all channels and pixels of one image).
    Engines call this on every attack chunk, before results are recorded.

    Args:
        x_clean: ``(N, C, H, W)`` (any ``(N, ...)``) clean images in [0, 1].
        x_adv: adversarial images, same shape as ``x_clean``.
        threat: ``"Linf"`` or ``"L2"`` (or a ``Threat``).
        eps: radius of the ball, > 0 (e.g. 8/255 for Linf, 0.5 for L2).
        tol: absolute slack for floating-point error in projection/clipping.

    Returns:
        ``(N,)`` float64 tensor of distances (for logging), when every row is valid.

    Raises:
        BallViolationError: naming how many examples violate, the worst distance and the first offending
            index (with the reason: outside the ball, outside [0, 1], non-finite).
        ValueError: on mismatched shapes or a non-positive eps.
    """
    threat = Threat.parse(threat)
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    dist = distances(x_clean, x_adv, threat)
    n = int(x_adv.shape[0])
    flat = x_adv.detach().reshape(n, -1)
    nonfinite = ~torch.isfinite(flat).all(dim=1) if flat.shape[1] else torch.zeros(n, dtype=torch.bool,
                                                                                 device=flat.device)
    if flat.shape[1]:
        finite_vals = torch.nan_to_num(flat, nan=0.5, posinf=0.5, neginf=0.5)
        low = finite_vals.amin(dim=1).to(torch.float64)
        high = finite_vals.amax(dim=1).to(torch.float64)
        out_of_range = (low < -tol) | (high > 1.0 + tol)
    else:
        low = high = torch.zeros(n, dtype=torch.float64, device=flat.device)
        out_of_range = torch.zeros(n, dtype=torch.bool, device=flat.device)
    outside = torch.nan_to_num(dist, nan=float("inf")) > eps + tol
    bad = nonfinite | out_of_range | outside
    if not bool(bad.any()):
        return dist

    bad_idx = bad.nonzero().flatten().cpu()
    first = int(bad_idx[0])
    finite_dist = dist[~nonfinite]
    worst = float(finite_dist.max()) if finite_dist.numel() else float("nan")
    worst_at = int(torch.nan_to_num(dist, nan=-1.0).argmax()) if finite_dist.numel() else first
    reasons = []
    if bool(outside.any()):
        reasons.append(f"{int((outside & ~nonfinite).sum())} outside the {threat} ball "
                       f"(eps={eps:.6g}, tol={tol:g}; worst distance {worst:.6g} at index {worst_at})")
    if bool(out_of_range.any()):
        reasons.append(f"{int(out_of_range.sum())} with pixels outside [0, 1] "
                       f"(min {float(low.min()):.6g}, max {float(high.max()):.6g})")
    if bool(nonfinite.any()):
        reasons.append(f"{int(nonfinite.sum())} with non-finite values (nan/inf)")
    msg = (f"x_adv violates the {threat} threat model for {len(bad_idx)} of {n} examples "
           f"(first offending index {first}): " + "; ".join(reasons)
           + f". Worst distance {worst:.6g} vs eps {eps:.6g}.")
    raise BallViolationError(msg, n_bad=len(bad_idx), n_total=n, first_index=first, worst_distance=worst,
                             bad_indices=bad_idx)


class DistanceCheckError(AssertionError):
    """A stored minimal perturbation is not the distance of its point, or the point is not an image."""


def check_distances(x_clean: torch.Tensor, x_points: torch.Tensor, distance, threat: "str | Threat",
                    tol: float = 1e-5) -> None:
    """Check minimum-norm results: every finite, positive ``distance[i]`` is ``||x_points[i] - x_clean[i]||`` in
    the threat's norm (recomputed; relative and absolute tolerance ``tol``) and ``x_points[i]`` lies in
    [0, 1]. (Whether the point is misclassified needs the model: the caller checks that.)

    Args:
        x_clean: float ``(N, C, H, W)`` in [0, 1].
        x_points: float ``(N, C, H, W)``, the points the distances claim.
        distance: ``(N,)`` floats; 0 (misclassified clean), ``inf`` (none found) and NaN are not checked here.
        threat: ``Linf`` or ``L2``.

    Raises:
        DistanceCheckError: naming the first rows that fail.
    """
    d = torch.as_tensor(np.asarray(distance, dtype=np.float64))
    sel = torch.isfinite(d) & (d > 0)
    if not bool(sel.any()):
        return
    got = distances(x_clean[sel], x_points[sel], threat).double()
    flat = x_points[sel].reshape(int(sel.sum()), -1)
    bad = ((got - d[sel]).abs() > tol * (1 + d[sel].abs())) | (flat.amin(1) < -tol) | (flat.amax(1) > 1 + tol)
    if bool(bad.any()):
        rows = torch.nonzero(sel).squeeze(1)[bad][:5].tolist()
        raise DistanceCheckError(f"minimum-norm distances of rows {rows} are not the {Threat.parse(threat).value} "
                                 "norm of their points, or the points leave [0, 1]: refusing to store them")


def clamped_distances(x: torch.Tensor, x_adv: torch.Tensor, threat: "str | Threat",
                      tol: float = 1e-5) -> torch.Tensor:
    """Per-example distance from ``x`` to the nearest ``w`` with ``clamp(w, 0, 1) == x_adv``.

    AutoAttack projects every iterate onto the eps-ball around ``x`` and then clamps it to [0, 1]; when
    ``x`` itself lies outside [0, 1] (normalized inputs) the clamp moves the point further than eps.
    Such an ``x_adv`` is what AutoAttack *could* return iff this distance is <= eps. Per pixel the
    nearest preimage is ``x_adv`` itself inside (0, 1); at the lower face (``x_adv <= tol``) any
    ``w <= x_adv`` maps there, so the gap is ``max(0, x - x_adv)``; at the upper face (``x_adv >= 1 - tol``)
    it is ``max(0, x_adv - x)``.

    Args:
        x: ``(N, ...)`` the attacked inputs (any range).
        x_adv: ``(N, ...)`` points in [0, 1].
        threat: ``"Linf"`` or ``"L2"``.
        tol: how close to a box face counts as on it.

    Returns:
        ``(N,)`` float64 distances (``nan`` where ``x_adv`` is not finite).
    """
    threat = Threat.parse(threat)
    if x.shape != x_adv.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but x_adv has {tuple(x_adv.shape)}")
    x, x_adv = x.detach().to(torch.float64), x_adv.detach().to(torch.float64)
    gap = (x_adv - x).abs()
    gap = torch.where(x_adv <= tol, (x - x_adv).clamp_min(0), gap)
    gap = torch.where(x_adv >= 1 - tol, (x_adv - x).clamp_min(0), gap)
    flat = gap.reshape(gap.shape[0], -1)
    d = flat.amax(dim=1) if threat is Threat.Linf else flat.pow(2).sum(dim=1).sqrt()
    return torch.where(torch.isfinite(x_adv.reshape(x_adv.shape[0], -1)).all(dim=1), d,
                       torch.full_like(d, float("nan")))


def check_clamped_ball(x: torch.Tensor, x_adv: torch.Tensor, threat: "str | Threat", eps: float,
                       tol: float = 1e-5) -> torch.Tensor:
    """Assert that every ``x_adv`` lies in [0, 1] and in the [0, 1]-clamp of the eps-ball around ``x``, or
    equals ``x`` (a row the attack did not change).

    The constraint set of AutoAttack run on inputs outside [0, 1] (the CT reference code's normalized
    inputs). It is *not* a threat model in pixel space; results checked with it must say so.

    Returns:
        ``(N,)`` float64 distances (:func:`clamped_distances`).

    Raises:
        BallViolationError: some row is outside that set, outside [0, 1] or not finite.
    """
    threat = Threat.parse(threat)
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    dist = clamped_distances(x, x_adv, threat, tol)
    n = int(x_adv.shape[0])
    flat = x_adv.detach().reshape(n, -1).to(torch.float64)
    bad = ~torch.isfinite(dist) | (dist > eps + tol)
    if flat.shape[1]:
        bad |= (torch.nan_to_num(flat, nan=0.5).amin(dim=1) < -tol) | (torch.nan_to_num(flat, nan=0.5).amax(dim=1) > 1 + tol)
        # a row left as it was (not broken: the attack returns the clean input) is valid wherever it lies
        bad &= ~(x_adv.detach().reshape(n, -1) == x.detach().reshape(n, -1)).all(dim=1)
    if not bool(bad.any()):
        return dist
    bad_idx = bad.nonzero().flatten().cpu()
    worst = float(torch.nan_to_num(dist, nan=float("inf")).max())
    raise BallViolationError(
        f"x_adv is outside the [0, 1]-clamp of the {threat} ball (eps={eps:.6g}) for {len(bad_idx)} of {n} "
        f"examples (first offending index {int(bad_idx[0])}; worst distance {worst:.6g})",
        n_bad=len(bad_idx), n_total=n, first_index=int(bad_idx[0]), worst_distance=worst, bad_indices=bad_idx)


def check_constraint(x: torch.Tensor, x_adv: torch.Tensor, threat: "str | Threat", eps: float,
                     constraint: str = "ball", tol: float = 1e-5) -> torch.Tensor:
    """:func:`check_ball` (``constraint="ball"``) or :func:`check_clamped_ball` (``"clamped-ball"``)."""
    if constraint == "ball":
        return check_ball(x, x_adv, threat, eps, tol)
    if constraint == "clamped-ball":
        return check_clamped_ball(x, x_adv, threat, eps, tol)
    raise did_you_mean("constraint", str(constraint), CONSTRAINTS)
