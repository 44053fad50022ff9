r"""Small-sample statistics for comparisons: confidence intervals over replicates, paired
differences, ratios to a noise floor, and the Holm correction.

A comparison runs every solver $R$ times (replicates $r = 1..R$, each with its own $x_T$,
solver noise and reference set; every solver of a replicate starts from the same $x_T$ and is
scored against the same reference set). Each cell then holds $R$ independent values
$v_1..v_R$ of a metric; this module turns them into statements a reviewer can check.

- `t_interval`: the mean and its Student-$t$ interval
  $\bar v \pm t_{1-\alpha/2,\,R-1}\, s/\sqrt R$ ($s$ the sample standard deviation). Exact
  coverage for normal values, and close to it for the averages of many samples that the
  metrics are; $R$ is small, so the $t$ quantile (not 1.96) matters: $t_{0.975,4} = 2.78$.
- `paired_difference`: the interval and two-sided $p$-value of the mean of
  $d_r = a_r - b_r$ (the paired $t$-test). Two solvers of the same replicate share $x_T$ and
  reference set, so their values are positively correlated and the paired interval is much
  narrower than the two intervals side by side suggest.
- `welch_difference`: two independent samples (a cell against the noise floor's repeats):
  $\bar a - \bar b \pm t_{\nu}\sqrt{s_a^2/n_a + s_b^2/n_b}$ with the Welch–Satterthwaite
  degrees of freedom $\nu$ (Welch 1947).
- `ratio_interval`: Fieller's interval for $\mathbb E a / \mathbb E b$ (Fieller 1954), the set of
  $\rho$ with $|\bar a - \rho\bar b| \le t_\nu \sqrt{\mathrm{se}_a^2 + \rho^2\mathrm{se}_b^2}$.
  With $\nu$ the Welch degrees of freedom of the plain difference, $\rho = 1$ lies outside it
  exactly when `welch_difference` excludes 0, so "ratio significantly below 1" and
  "significantly below the floor" are the same statement.
- `holm`: Holm's step-down adjusted $p$-values (Holm 1979): with $p_{(1)} \le \dots \le
  p_{(m)}$, $\tilde p_{(i)} = \max_{j \le i} \min(1, (m - j + 1)\,p_{(j)})$; rejecting
  $\tilde p \le \alpha$ controls the family-wise error rate at $\alpha$.
- `compare_to_leader`: the ranking rule of the reports. Sort by mean; the leader (lowest
  mean) is called **better** than another solver only if the Holm-adjusted paired $p$-value
  of their difference is $\le \alpha$ (so its paired CI excludes 0); solvers it cannot be
  told from form the leading group, reported as **indistinguishable**.

Degenerate cases are explicit: a set of identical values has a zero-width interval; a
paired difference that is exactly 0 in every replicate (the same solver under two names) has
$p = 1$; a non-zero difference identical in every replicate has $p = 0$.

`scipy.stats` is imported on first use (``import scoresde`` stays light).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Interval", "Difference", "t_interval", "paired_difference", "welch_difference",
           "ratio_interval", "holm", "Verdict", "compare_to_leader"]


@functools.lru_cache(maxsize=4096)
def _t_quantile(q: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _t_two_sided_p(tstat: float, df: float) -> float:
    from scipy.stats import t

    return float(2.0 * t.sf(abs(tstat), df))


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)):
        raise TypeError(f"level must be a number in (0, 1), got {level!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(level)


def _values(v: Sequence[float], name: str, low: int = 2) -> list[float]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(v).__name__}")
    out = [float(x) for x in v]
    if len(out) < low:
        raise ValueError(f"{name} needs at least {low} values, got {len(out)}")
    if not all(math.isfinite(x) for x in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _mean_sd(v: list[float]) -> tuple[float, float]:
    m = math.fsum(v) / len(v)
    var = math.fsum((x - m) ** 2 for x in v) / (len(v) - 1)
    return m, math.sqrt(var)


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval: `mean`, `low`, `high`, standard error `se`,
    degrees of freedom `df`, `n` values, `level`."""

    mean: float
    low: float
    high: float
    se: float
    df: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        """Half the width of the interval."""
        return 0.5 * (self.high - self.low)

    def contains(self, value: float) -> bool:
        """Whether `value` lies in ``[low, high]``."""
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Difference(Interval):
    """An `Interval` for a difference of means, with the two-sided `p_value` of "the true
    difference is 0"."""

    p_value: float = 1.0


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    r"""Student-$t$ interval for the mean of independent ``values`` (at least 2):
    $\bar v \pm t_{(1+\text{level})/2,\,n-1}\; s/\sqrt n$.

    **Returns:** an `Interval`.
    """
    level = _check_level(level)
    v = _values(values, "values")
    n = len(v)
    m, sd = _mean_sd(v)
    se = sd / math.sqrt(n)
    h = _t_quantile(0.5 + level / 2, n - 1) * se
    return Interval(m, m - h, m + h, se, float(n - 1), n, level)


def _difference(mean: float, se: float, df: float, n: int, level: float) -> Difference:
    if se == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        return Difference(mean, mean, mean, 0.0, df, n, level, p)
    h = _t_quantile(0.5 + level / 2, df) * se
    return Difference(mean, mean - h, mean + h, se, df, n, level,
                      _t_two_sided_p(mean / se, df))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    r"""The mean of the paired differences $d_r = a_r - b_r$ with its $t$-interval and the
    paired $t$-test's two-sided $p$-value ($t = \bar d / (s_d/\sqrt R)$, $R - 1$ degrees of
    freedom). ``a`` and ``b`` must have the same length (one value per replicate).

    **Returns:** a `Difference`.
    """
    level = _check_level(level)
    va, vb = _values(a, "a"), _values(b, "b")
    if len(va) != len(vb):
        raise ValueError(f"paired values need equal lengths, got {len(va)} and {len(vb)}")
    d = [x - y for x, y in zip(va, vb, strict=True)]
    m, sd = _mean_sd(d)
    return _difference(m, sd / math.sqrt(len(d)), float(len(d) - 1), len(d), level)


def _welch(a: list[float], b: list[float]) -> tuple[float, float, float, float, float]:
    """Means, squared standard errors and the Welch–Satterthwaite degrees of freedom."""
    ma, sa = _mean_sd(a)
    mb, sb = _mean_sd(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    if va + vb == 0.0:
        df = float(len(a) + len(b) - 2)
    else:
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return ma, mb, va, vb, df


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    r"""$\bar a - \bar b$ for two independent samples, with Welch's interval
    $\pm t_\nu \sqrt{s_a^2/n_a + s_b^2/n_b}$, $\nu$ by Welch–Satterthwaite, and the two-sided
    $p$-value of Welch's test.

    **Returns:** a `Difference` (``n`` is ``len(a)``).
    """
    level = _check_level(level)
    va, vb = _values(a, "a"), _values(b, "b")
    ma, mb, sa2, sb2, df = _welch(va, vb)
    return _difference(ma - mb, math.sqrt(sa2 + sb2), df, len(va), level)


def ratio_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95
                   ) -> tuple[float, float, float]:
    r"""Fieller's confidence interval for $\mathbb E a / \mathbb E b$ from two independent
    samples: all $\rho$ with
    $(\bar a - \rho\bar b)^2 \le t_\nu^2(\mathrm{se}_a^2 + \rho^2\mathrm{se}_b^2)$, where
    $\nu$ is the Welch degrees of freedom of $\bar a - \bar b$ (so that $\rho = 1$ is excluded
    exactly when `welch_difference` excludes 0).

    **Returns:** ``(ratio, low, high)`` with ``ratio`` $= \bar a/\bar b$; ``low``/``high``
    are ``nan`` when $\bar b$ is not significantly different from 0 (the set is then
    unbounded and no ratio can be stated).
    """
    level = _check_level(level)
    va, vb = _values(a, "a"), _values(b, "b")
    ma, mb, sa2, sb2, df = _welch(va, vb)
    ratio = ma / mb if mb != 0.0 else math.nan
    t2 = _t_quantile(0.5 + level / 2, df) ** 2 if sa2 + sb2 > 0 else 0.0
    qa = mb * mb - t2 * sb2                      # coefficient of rho^2
    if qa <= 0.0 or mb == 0.0:
        return ratio, math.nan, math.nan
    qb = ma * mb
    disc = max(qb * qb - qa * (ma * ma - t2 * sa2), 0.0)
    root = math.sqrt(disc)
    return ratio, (qb - root) / qa, (qb + root) / qa


def holm(p_values: Sequence[float]) -> list[float]:
    r"""Holm's step-down adjusted $p$-values, in the input order: with the $m$ values sorted,
    $\tilde p_{(i)} = \max_{j \le i}\min\{1, (m - j + 1)\,p_{(j)}\}$ (Holm 1979, "A simple
    sequentially rejective multiple test procedure"). Rejecting $\tilde p \le \alpha$ controls
    the probability of any false rejection at $\alpha$."""
    p = [float(x) for x in p_values]
    if any(not (0.0 <= x <= 1.0) for x in p):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


@dataclass
class Verdict:
    """What the paired comparisons support at one budget.

    - `leader`: the label with the lowest mean; `means`: every label's mean.
    - `group`: the leader and every label it is not significantly better than
      (indistinguishable); `others`: the rest, each significantly worse than the leader.
    - `differences`: for each other label, the paired `Difference` (other − leader) and its
      Holm-adjusted $p$-value, as ``{label: (difference, p_adjusted)}``, in ranking order.
    - `alpha`: the family-wise error rate of the Holm procedure.
    """

    leader: str
    means: dict[str, float]
    group: list[str]
    others: list[str]
    differences: dict[str, tuple[Difference, float]] = field(default_factory=dict)
    alpha: float = 0.05

    @property
    def best(self) -> str | None:
        """The leader if it is significantly better than every other label, else None."""
        return self.leader if len(self.group) == 1 else None

    def text(self) -> str:
        """"A best" or "A, B indistinguishable" (plus how many were worse)."""
        if len(self.means) == 1:
            return f"{self.leader} (only one solver)"
        if self.best is not None:
            return f"{self.leader} best"
        return ", ".join(self.group) + " indistinguishable"


def compare_to_leader(values: Mapping[str, Sequence[float]], level: float = 0.95,
                      correction: str = "holm", margin: float = 0.0) -> Verdict:
    r"""Rank labels by their mean value (lower is better) and test the leader against each
    other label with paired differences (one value per replicate, the same replicates for
    every label).

    The leader is declared **better** than label $B$ only if the adjusted $p$-value of the
    paired difference $B - \text{leader}$ is at most $\alpha = 1 - \text{level}$;
    ``correction="holm"`` adjusts over the $m - 1$ comparisons with the leader, ``"none"``
    uses each paired interval alone. Labels it is not better than join its group.

    ``margin`` $\ge 0$ is the smallest difference that counts (the resolution of the
    measurement, e.g. the accuracy of a pathwise reference): the leader is then better only if
    the difference is significantly larger than ``margin`` (the $p$-value tests
    $\mathbb E\,d = \text{margin}$, so the paired interval must lie above ``margin``).

    Choosing the leader by its sample mean and then testing it is a comparison with the
    (estimated) best; the Holm correction keeps the chance of any false "better" at most
    $\alpha$ for the comparisons made, and "indistinguishable" is the safe answer when in doubt.

    **Returns:** a `Verdict`.
    """
    level = _check_level(level)
    if correction not in ("holm", "none"):
        raise ValueError(f"correction must be 'holm' or 'none', got {correction!r}")
    if not values:
        raise ValueError("no values to rank")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    means = {k: math.fsum(map(float, v)) / len(v) for k, v in values.items()}
    order = sorted(means, key=lambda k: means[k])
    leader = order[0]
    diffs = {k: paired_difference(values[k], values[leader], level) for k in order[1:]}
    ps = [_difference(d.mean - margin, d.se, d.df, d.n, level).p_value if margin else d.p_value
          for d in diffs.values()]
    adj = holm(ps) if correction == "holm" else ps
    alpha = 1.0 - level
    group, others, out = [leader], [], {}
    for (k, d), pa in zip(diffs.items(), adj, strict=True):
        out[k] = (d, pa)
        (others if (pa <= alpha and d.mean > margin) else group).append(k)
    return Verdict(leader, means, group, others, out, alpha)
