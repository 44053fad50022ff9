r"""Per-sample noise from a counter-based generator: the noise of sample $i$ is a function of
``(seed, i, draw, element)`` alone, so it does not depend on the batch size, the number of
processes or the order in which samples are drawn.

`sample(..., seed=s)` and `log_likelihood(..., seed=s)` use it (instead of a
``torch.Generator``, which produces one stream for the whole batch): the starting noise of
sample $i$ is draw 0, the solver's noise draws 1, 2, ... (one per call of
``StepContext.noise``), the Hutchinson probes draws 0, 1, ... of the likelihood.

**Construction.** Every value is a hash of its counter by the SplitMix64 finaliser
(Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators", OOPSLA;
the mixing function of Java's ``SplittableRandom``, Stafford's variant 13), computed with
wrapping 64-bit integer arithmetic on int64 tensors:

$$m(z) = \text{xs}_{31}\big(\text{xs}_{27}\big(\text{xs}_{30}(z)\cdot C_1\big)\cdot C_2\big),
\qquad \text{xs}_s(z) = z \oplus (z \gg s),$$

$C_1$ = ``0xBF58476D1CE4E5B9``, $C_2$ = ``0x94D049BB133111EB``. With the golden-ratio
increment $\gamma$ = ``0x9E3779B97F4A7C15``, a key is derived level by level,
$k_0 = m(\text{seed} \oplus \kappa)$, $k_i = m(k_0 + (i + 1)\gamma)$ for the sample,
$k_{i,d} = m(k_i + (d + 1)\gamma)$ for the draw, and the 64-bit outputs of that draw are
SplitMix64's stream from state $k_{i,d}$: $o_j = m(k_{i,d} + (j + 1)\gamma)$,
$j = 0, 1, \dots$ (SplitMix64 passes TestU01's BigCrush). Two outputs give two standard
normals by the Box–Muller transform (Box & Muller 1958): with
$u_1 = (\lfloor o_{2p}/2^{11}\rfloor + 1)\,2^{-53} \in (0, 1]$ and
$u_2 = \lfloor o_{2p+1}/2^{11}\rfloor\,2^{-53} \in [0, 1)$,

$$z_{2p} = \sqrt{-2\ln u_1}\,\cos 2\pi u_2,\qquad z_{2p+1} = \sqrt{-2\ln u_1}\,\sin 2\pi u_2,$$

for the elements $2p, 2p+1$ of the flattened event. A Rademacher value is the sign bit of $o_j$.

**Bit-for-bit on every device.** The logarithm, sine and cosine are evaluated here with
additions, multiplications, divisions, ``frexp`` and ``sqrt`` only (IEEE-754 correctly
rounded everywhere; no fused multiply-add, each operation is its own kernel): a series for
$\ln$ on $[\sqrt{1/2}, \sqrt2)$ after extracting the exponent, Taylor polynomials for
$\sin$/$\cos$ on $[-\pi/4, \pi/4]$ after an exact quarter-turn reduction. So the normals do
not depend on the math library, the vector width or the device; they are computed in float64
(accurate to a few units in the last place) and then rounded to the requested dtype. The
largest normal is $\sqrt{-2\ln 2^{-53}} \approx 8.57$.

**Cost.** About a hundred elementwise tensor operations per draw instead of one
``torch.randn``: measured in docs/sharded_evaluation.md (negligible next to a network
evaluation except for the smallest networks).
"""

from __future__ import annotations

import math

import torch

from .validation import check_int

Tensor = torch.Tensor

__all__ = ["PerSampleNoise", "splitmix64", "splitmix64_reference", "log_f64", "cos_sin_turns", "MAX_SEED"]

_MASK64 = (1 << 64) - 1
#: seeds are integers in ``[0, MAX_SEED]``
MAX_SEED = (1 << 63) - 1
_GAMMA = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_KAPPA = 0x5DEECE66D1CE4E5B    # separates the seed's level from the sample and draw levels


def _signed(v: int) -> int:
    """The int64 with the same 64 bits as the unsigned integer ``v``."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def _xs(z: Tensor, s: int) -> Tensor:
    """``z ^ (z >>> s)`` with a logical (unsigned) shift of int64 ``z``."""
    return z ^ ((z >> s) & ((1 << (64 - s)) - 1))


def splitmix64(z: Tensor) -> Tensor:
    """The SplitMix64 finaliser of each element of an int64 tensor (wrapping arithmetic,
    read as unsigned 64-bit values): the same bits on the CPU and on CUDA."""
    if z.dtype != torch.int64:
        raise TypeError(f"splitmix64 needs an int64 tensor, got {z.dtype}")
    return _mix_(z.clone())


def _mix_(z: Tensor) -> Tensor:
    """`splitmix64` in place."""
    t = torch.empty_like(z)
    for shift, mult in ((30, _signed(_C1)), (27, _signed(_C2)), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t)
        z.bitwise_xor_(t.bitwise_and_((1 << (64 - shift)) - 1))
        if mult is not None:
            z.mul_(mult)
    return z


def splitmix64_reference(v: int) -> int:
    """The SplitMix64 finaliser of one unsigned 64-bit Python integer (the reference the
    tensor version is tested against)."""
    z = v & _MASK64
    z = ((z ^ (z >> 30)) * _C1) & _MASK64
    z = ((z ^ (z >> 27)) * _C2) & _MASK64
    return z ^ (z >> 31)


# ----- float64 elementary functions from +, -, *, /, frexp and sqrt only --------------------
_LN2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
#: 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...): coefficients of s2^k, highest first; 11 terms
#: reach 2e-17 relative for |s| < 0.172
_ATANH = [2.0 / (2 * k + 1) for k in range(11)][::-1]
#: sin(theta)/theta in theta^2, highest first; 9 terms reach 5e-17 for |theta| <= pi/4
_SIN = [(-1) ** k / math.factorial(2 * k + 1) for k in range(9)][::-1]


def _horner(coefs: list[float], y: Tensor) -> Tensor:
    p = torch.full_like(y, coefs[0])
    for c in coefs[1:]:
        p.mul_(y).add_(c)                # two separate roundings: never a fused multiply-add
    return p


def log_f64(u: Tensor) -> Tensor:
    r"""$\ln u$ for float64 $u > 0$, from +, -, *, / and ``frexp`` only (the same bits on every
    device): $u = m\,2^e$ with $m \in [\sqrt{1/2}, \sqrt2)$, $\ln m = 2\,\text{atanh}\,s$,
    $s = (m - 1)/(m + 1)$, $|s| < 0.172$ (11 terms of the series; within 2 ulp)."""
    m, e = torch.frexp(u)                                      # m in [0.5, 1)
    low = m < _SQRT_HALF
    m = torch.where(low, m * 2.0, m)
    e = e.to(u.dtype).sub_(low.to(u.dtype))
    s = (m - 1.0).div_(m.add_(1.0))
    return _horner(_ATANH, s * s).mul_(s).add_(e.mul_(_LN2))


def cos_sin_turns(u: Tensor) -> tuple[Tensor, Tensor]:
    r"""$(\cos 2\pi u, \sin 2\pi u)$ for float64 $u \in [0, 1)$ a multiple of $2^{-53}$, from
    +, -, *, and ``sqrt`` only: the quarter turn $q = \text{round}(4u)$ and
    $f = 4u - q \in [-\frac12, \frac12]$ are exact; at $\theta = f\pi/2 \in [-\pi/4, \pi/4]$,
    $s = \sin\theta$ by its Taylor polynomial and $c = \cos\theta = \sqrt{1 - s^2}$
    (within 2 ulp); then the quarter turn swaps and negates them."""
    w = u * 4.0
    q = torch.round(w)
    theta = w.sub_(q).mul_(math.pi / 2)
    s = _horner(_SIN, theta * theta).mul_(theta)
    c = torch.sqrt(1.0 - s * s)
    q = q.to(torch.int64)
    odd = (q & 1).bool()
    a, b = torch.where(odd, s, c), torch.where(odd, c, s)      # q = 1, 3: (s, c)
    # signs: cos is negative for q = 1, 2; sin for q = 2, 3 (q = 4 is q = 0)
    cos = torch.where((q == 1) | (q == 2), -a, a)
    sin = torch.where((q == 2) | (q == 3), -b, b)
    return cos, sin


def _check_index(name: str, value: object) -> int:
    v = check_int(name, value, 0)
    if v > MAX_SEED:
        raise ValueError(f"{name} must be an integer in [0, 2**63 - 1], got {v}")
    return v


class PerSampleNoise:
    r"""Noise for a batch whose row $b$ is the global sample ``offset + b``: every value is
    a function of ``(seed, offset + b, draw, element)`` alone (module docstring).

    **Arguments:** ``seed``, an integer in ``[0, 2^63 - 1]``; ``offset``, the global index of
    row 0 (``sample(..., sample_offset=)``), a non-negative integer.

    ``normal(shape, draw)`` and ``rademacher(shape, draw)`` give the values of draw ``draw``
    (a non-negative integer) for ``shape[0]`` rows. Rows ``[a, b)`` of a draw for a batch
    equal the same draw for the batch of those rows alone (``offset + a``), bit for bit.
    """

    def __init__(self, seed: int, offset: int = 0) -> None:
        self.seed = _check_index("seed", seed)
        self.offset = _check_index("sample_offset", offset)
        self._k0 = splitmix64_reference(self.seed ^ _KAPPA)
        self._rows: Tensor | None = None       # the rows' keys k_i, kept for the next draw

    def __repr__(self) -> str:
        return f"PerSampleNoise(seed={self.seed}, offset={self.offset})"

    def shifted(self, rows: int) -> PerSampleNoise:
        """The noise of the rows from ``rows`` on: ``PerSampleNoise(seed, offset + rows)``."""
        return PerSampleNoise(self.seed, self.offset + check_int("rows", rows, 0))

    def _bits(self, batch: int, draw: int, count: int, device: torch.device | str | None
              ) -> Tensor:
        """The int64 outputs ``o_0 .. o_{count-1}`` of draw ``draw`` for each row: (batch, count)."""
        draw = check_int("draw", draw, 0)
        device = torch.device("cpu") if device is None else torch.device(device)
        if self._rows is None or self._rows.shape[0] != batch or self._rows.device != device:
            rows = torch.arange(self.offset + 1, self.offset + batch + 1, dtype=torch.int64,
                                device=device)
            self._rows = _mix_(rows.mul_(_signed(_GAMMA)).add_(_signed(self._k0)))
        k_draw = _mix_(self._rows + _signed((draw + 1) * _GAMMA))
        j = torch.arange(1, count + 1, dtype=torch.int64, device=device).mul_(_signed(_GAMMA))
        return _mix_(j.unsqueeze(0) + k_draw.unsqueeze(1))

    @staticmethod
    def _check_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        shape = tuple(shape)
        if len(shape) < 1 or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                 for s in shape):
            raise ValueError(f"shape must be (B, *event_shape) of non-negative integers, got {shape}")
        return shape

    def normal(self, shape: tuple[int, ...] | torch.Size, draw: int, *,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None
               ) -> Tensor:
        """Standard normal values of draw ``draw``, shape ``(B, *event_shape)``, computed in
        float64 on ``device`` and rounded to ``dtype`` (default: the default dtype)."""
        shape = self._check_shape(shape)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        b, m = shape[0], math.prod(shape[1:])
        pairs = (m + 1) // 2
        o = self._bits(b, draw, 2 * pairs, device).reshape(b, pairs, 2)
        top53 = o.bitwise_right_shift_(11).bitwise_and_((1 << 53) - 1).to(torch.float64)  # exact
        u1 = top53[..., 0].add_(1.0).mul_(2.0 ** -53)                 # (0, 1]
        u2 = top53[..., 1].mul_(2.0 ** -53)                           # [0, 1)
        r = log_f64(u1).mul_(-2.0).sqrt_()
        cos, sin = cos_sin_turns(u2)
        z = torch.stack([cos.mul_(r), sin.mul_(r)], dim=-1).reshape(b, 2 * pairs)[:, :m]
        return z.reshape(shape).to(dtype)

    def rademacher(self, shape: tuple[int, ...] | torch.Size, draw: int, *,
                   dtype: torch.dtype | None = None, device: torch.device | str | None = None
                   ) -> Tensor:
        """Values ±1 with probability 1/2 each (the sign bit of each output) of draw
        ``draw``, shape ``(B, *event_shape)``."""
        shape = self._check_shape(shape)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        b, m = shape[0], math.prod(shape[1:])
        o = self._bits(b, draw, m, device)
        return torch.where(o < 0, -1.0, 1.0).to(dtype).reshape(shape)
