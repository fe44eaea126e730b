"""Counter-based random numbers that are a pure function of (key, counter, element index).

Why
---
AutoAttack seeds the global torch RNG once per batch (``torch.manual_seed(seed)`` in every
``perturb``), so the random start or square position an example gets depends on which
batch it landed in, on the batch size, on the device and on the number of examples before it. The fast
engine instead derives every random draw from

    key     = H(seed, example id, round(beta * 1e6), attack code, restart / target index)   (per row)
    counter = (iteration * 16 + stream)                                                      (per row)
    element = position of the number inside the row's draw (e.g. the flat pixel index)

so the draw for an example is identical whatever else is in the batch, however the rows are chunked,
whether several betas share a batch, and on which machine the run happens. This is the idea of
counter-based generators (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3" — Philox/
Threefry); the mixing function here is a 32-bit integer hash rather than Philox rounds.

How
---
All arithmetic is on ``torch.int64`` tensors holding unsigned 32-bit values in ``[0, 2**32)``:

- right shifts of non-negative values are logical shifts;
- 32x32-bit multiplications modulo ``2**32`` are split into 16-bit halves so that no intermediate
  exceeds ``2**49`` (no signed overflow, which is undefined behaviour in the C++ kernels);
- the mixer is Chris Wellons' ``lowbias32`` (from his hash-prospector search: two multiply-xorshift
  rounds with full avalanche), applied in a sponge-like chain to absorb the key words when the key is
  made, then ``h = mix(mix(k0 xor mix(counter + golden)) xor k1)`` per row and counter, and
  ``mix(h xor E[j])`` per element ``j`` (``E`` a fixed hashed index table).

Only integer operations, exact int -> float conversions and multiplications by powers of two are used for
uniform numbers, so they are bit-identical on CPU and CUDA. Normal numbers use Box-Muller in float64
(``log``, ``cos``, ``sqrt``) and are rounded to float32: device libraries may differ in the last float64
bit, which changes the float32 result only if the float64 value lies within one float64 ulp of a float32
rounding boundary (probability ~1e-9 per number; measured: 15 million normals identical on an H100 and
on CPU, as were all integer and uniform draws).

Public functions take ``keys`` of shape ``(B, 2)`` (from :func:`row_keys`) and ``counter`` as an int or an
int64 tensor ``(B,)`` (each row may be at a different iteration), and return tensors of shape
``(B, *shape)`` on the keys' device.

Example:
    >>> keys = row_keys(0, torch.tensor([3, 7]), torch.tensor([1.0, 0.9]), attack=1, index=0)
    >>> u = uniform(keys, 0, (1, 8, 8))      # (2, 1, 8, 8) float32 in [0, 1)
    >>> u2 = uniform(keys[1:], 0, (1, 8, 8))  # == u[1:] bit for bit
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ctrobust.attacks import ATTACKS

__all__ = ["ATTACK_CODES", "row_keys", "stream_counter", "bits", "to_uniform", "to_randint", "to_sign", "uniform",
           "normal", "randint", "rademacher"]

_M32 = 0xFFFFFFFF
_M16 = 0xFFFF
_GOLDEN = 0x9E3779B9

#: stable integer code per attack, part of every row key (owned by the attack registry; never renumbered).
ATTACK_CODES = {name: spec.rng_code for name, spec in ATTACKS.items()}


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) and a constant ``c`` < 2**32, without overflow.

    ``c = c_hi * 2**16 + c_lo``: ``x * c_lo < 2**48`` and only the low 16 bits of ``x * c_hi < 2**48``
    survive the shift by 16 modulo ``2**32``.
    """
    return (x * (c & _M16) + (((x * (c >> 16)) & _M16) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' ``lowbias32`` integer hash, elementwise on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def _absorb(h: torch.Tensor, word: torch.Tensor | int) -> torch.Tensor:
    """One sponge step: ``h <- mix(h xor mix(word + golden))`` (all values in [0, 2**32))."""
    if not isinstance(word, torch.Tensor):
        word = torch.as_tensor(int(word) & _M32, dtype=torch.int64, device=h.device)
    return _mix32(h ^ _mix32((word + _GOLDEN) & _M32))


def _split64(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high 32-bit words of int64 values (two's complement), both in [0, 2**32)."""
    return v & _M32, (v >> 32) & _M32


def row_keys(seed: int, ids: torch.Tensor, betas: torch.Tensor, attack: int, index: int | torch.Tensor
             ) -> torch.Tensor:
    """Per-row keys: a hash of (seed, example id, beta, attack, restart/target index).

    Args:
        seed: the run's seed (any Python int; used modulo 2**64).
        ids: int64 ``(B,)`` example ids (index in the test set).
        betas: float ``(B,)`` CT betas; enters as ``round(beta * 1e6)`` so that float32/float64 copies of
            the same beta give the same key.
        attack: the attack code (see :data:`ATTACK_CODES`).
        index: the restart or target-class index, an int or an int64 ``(B,)`` tensor.

    Returns:
        int64 ``(B, 2)``: two independent 32-bit key words per row, on ``ids.device``.
    """
    ids = ids.to(torch.int64)
    dev = ids.device
    seed = int(seed) & ((1 << 64) - 1)
    beta_code = torch.round(betas.to(device=dev, dtype=torch.float64) * 1e6).to(torch.int64)
    index = torch.as_tensor(index, dtype=torch.int64, device=dev).expand(ids.shape)
    id_lo, id_hi = _split64(ids)
    b_lo, b_hi = _split64(beta_code)
    words = [seed & _M32, seed >> 32, id_lo, id_hi, b_lo, b_hi, int(attack), index & _M32]
    out = []
    for lane in (0x243F6A88, 0x85A308D3):  # two lanes with different initial states (digits of pi)
        h = torch.full(ids.shape, lane, dtype=torch.int64, device=dev)
        for w in words:
            h = _absorb(h, w)
        out.append(h)
    return torch.stack(out, dim=1)


def stream_counter(iteration: int | torch.Tensor, stream: int) -> int | torch.Tensor:
    """Combine a per-row iteration counter (< 2**28) and a stream id (0..15) into one counter value."""
    if not 0 <= stream < 16:
        raise ValueError(f"stream must be in [0, 16), got {stream}")
    return iteration * 16 + stream


_ELEMENT_TABLES: dict = {}


def _element_table(n: int, device: torch.device) -> torch.Tensor:
    key = (n, str(device))
    t = _ELEMENT_TABLES.get(key)
    if t is None:
        t = _mix32((torch.arange(n, dtype=torch.int64, device=device) * 0x632BE5AB + 0x5851F42D) & _M32)
        if len(_ELEMENT_TABLES) > 64:
            _ELEMENT_TABLES.clear()
        _ELEMENT_TABLES[key] = t
    return t


def bits(keys: torch.Tensor, counter: int | torch.Tensor, n: int) -> torch.Tensor:
    """Raw random 32-bit words.

    Args:
        keys: int64 ``(B, 2)`` from :func:`row_keys`.
        counter: int or int64 ``(B,)`` in [0, 2**32) (e.g. :func:`stream_counter`).
        n: numbers per row.

    Returns:
        int64 ``(B, n)`` with values uniform in [0, 2**32).
    """
    dev = keys.device
    ctr = torch.as_tensor(counter, dtype=torch.int64, device=dev).expand(keys.shape[:1])
    h = _mix32(keys[:, 0] ^ _mix32((ctr + _GOLDEN) & _M32))
    h = _mix32(h ^ keys[:, 1])
    return _mix32(h[:, None] ^ _element_table(n, dev)[None, :])


def to_uniform(b: torch.Tensor) -> torch.Tensor:
    """Raw words -> float32 in [0, 1) on a 2**-24 grid (exact)."""
    return (b >> 8).to(torch.float32) * (2.0 ** -24)


def to_randint(b: torch.Tensor, high: int | torch.Tensor) -> torch.Tensor:
    """Raw words -> int64 in ``[0, high)`` by multiply-shift (``0`` where ``high <= 0``); ``high`` broadcasts."""
    high = torch.as_tensor(high, dtype=torch.int64, device=b.device).clamp_min(0)
    return ((b >> 8) * high) >> 24


def to_sign(b: torch.Tensor) -> torch.Tensor:
    """Raw words -> float32 -1 or +1 (the top bit)."""
    return ((b >> 31) * 2 - 1).to(torch.float32)


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def uniform(keys: torch.Tensor, counter: int | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Uniform float32 numbers in [0, 1) on a 2**-24 grid (exact, device independent).

    Returns:
        float32 ``(B, *shape)``.
    """
    return to_uniform(bits(keys, counter, _numel(shape))).reshape(keys.shape[0], *shape)


def normal(keys: torch.Tensor, counter: int | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal float32 numbers by Box-Muller (computed in float64, then rounded).

    Returns:
        float32 ``(B, *shape)``.
    """
    n = _numel(shape)
    b = bits(keys, counter, 2 * n)
    u1 = (b[:, :n] + 1).to(torch.float64) * (2.0 ** -32)   # (0, 1], exact: log is finite
    u2 = b[:, n:].to(torch.float64) * (2.0 ** -32)         # [0, 1), exact
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.to(torch.float32).reshape(keys.shape[0], *shape)


def randint(keys: torch.Tensor, counter: int | torch.Tensor, high: int | torch.Tensor,
            shape: Sequence[int] = ()) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` (``0`` where ``high <= 0``), by multiply-shift (exact).

    Args:
        high: int or int64 ``(B,)`` upper bounds (< 2**24; the bias is below ``high * 2**-24``).

    Returns:
        int64 ``(B, *shape)``.
    """
    b = bits(keys, counter, max(_numel(shape), 1))
    high = torch.as_tensor(high, dtype=torch.int64, device=keys.device)
    if high.dim() == 1:
        high = high[:, None]
    return to_randint(b, high).reshape(keys.shape[0], *shape)


def rademacher(keys: torch.Tensor, counter: int | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Random signs: float32 ``(B, *shape)`` with values -1 or +1 (each with probability 1/2)."""
    return to_sign(bits(keys, counter, _numel(shape))).reshape(keys.shape[0], *shape)
