"""How `VPSDE.from_schedule` embeds a DDPM schedule, measured on the exact 8-Gaussians oracle.

Compares, for DDPM's `linspace(1e-4, 0.02, 1000)`:

- `from_schedule` as built now: $B(t)$ a monotone C1 cubic Hermite interpolant of
  $-\\log\\bar\\alpha$, so $\\beta$ is continuous;
- the previous embedding (piecewise-linear $B$, $\\beta$ jumping at every $k/N$),
  reproduced below by `PiecewiseLinearScheduleVPSDE` for comparison only;
- the previous embedding with its 999 kinks declared as `breakpoints` (the adaptive solver
  then steps onto every knot);
- the smooth default `VPSDE()`.

Log-likelihood: max over 16 points of |logp - log p_eps(x)| in nats (float64, exact
divergence, dopri5, rtol = atol), with the prior replaced by the exact log p_T(z) so only the
integration error is left. Sampling: adaptive PF-ODE (dopri5, rtol = atol = 1e-8) from a
shared x_T to t_end = 1e-3 without denoising, max |x - x_ref| against dopri5 at
rtol = atol = 1e-11 on the new embedding (for the smooth VP: on itself). That reference
is exact for both embeddings: the oracle's score depends on t only through B(t), so in the
variable B the PF-ODE is dx/dB = -x/2 - s(x, B)/2 for any VP-SDE, and both embeddings have
the same B at T = 1 and at t_end = 1/N (both knots), hence the same flow map. Prints a
markdown table (docs/math.md, "The exact embedding"); a few minutes on one thread.

    python experiments/schedule_embedding.py
"""

from __future__ import annotations

import time

import torch
from _results import provenance  # noqa: I001

import scoresde as sd
from scoresde.sdes import ScheduleVPSDE

LL_TOLS = (1e-5, 1e-6, 1e-7)
SAMPLE_TOL, REF_TOL = 1e-8, 1e-11
T_EPS = 1e-5


class PiecewiseLinearScheduleVPSDE(ScheduleVPSDE):
    """The PREVIOUS embedding, kept here for comparison only: $B$ piecewise linear through
    the knots, so $\\beta = -N\\log(1 - \\beta_i)$ is constant on each cell and jumps at
    every $k/N$."""

    def beta(self, t):
        k, _ = self._old_cell(t)
        knots = self._knots.to(t)
        return self.N * (knots[k + 1] - knots[k])

    def beta_integral(self, t):
        k, w = self._old_cell(t)
        knots = self._knots.to(t)
        return knots[k] + w * (knots[k + 1] - knots[k])

    def beta_integral_inverse(self, b):
        knots = self._knots.to(b)
        k = torch.clamp(torch.searchsorted(knots, b.contiguous(), right=True) - 1, 0, self.N - 1)
        return (k + (b - knots[k]) / (knots[k + 1] - knots[k])) / self.N

    def _old_cell(self, t):
        u = t * self.N
        k = torch.clamp(torch.ceil(u) - 1, 0, self.N - 1).long()
        return k, u - k


def with_knots(sde: ScheduleVPSDE) -> ScheduleVPSDE:
    """The same SDE with every knot k/N declared a breakpoint (adaptive solves step onto each)."""
    cls = type(sde)
    knotted = type(f"Knotted{cls.__name__}", (cls,), {
        "breakpoints": property(lambda self: tuple(k / self.N for k in range(1, self.N)))})
    return knotted(sde.schedule)


def likelihood_errors(sde, gm, x):
    model, exact = gm.as_model(sde), gm.marginal_log_prob(x, T_EPS, sde)
    out = []
    for tol in LL_TOLS:
        res = sd.log_likelihood(model, x, rtol=tol, atol=tol, t_eps=T_EPS)
        logp = res.logp - res.prior_logp + gm.marginal_log_prob(res.z, sde.T, sde)
        out.append(((logp - exact).abs().max().item(), res.nfe))
    return out


def sampling_error(sde, ref_sde, gm, x_T):
    def run(s, tol):
        return sd.sample(gm.as_model(s), solver="pf_ode", nfe=None, x_T=x_T, denoise=False,
                         rtol=tol, atol=tol)

    res, ref = run(sde, SAMPLE_TOL), run(ref_sde, REF_TOL)
    return (res.x - ref.x).abs().max().item(), res.nfe


def main() -> None:
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)   # tiny tensors: intra-op threads only add wake-up costs
    gm = sd.analytic.GaussianMixture.eight_gaussians()
    x = gm.sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sched = sd.DiscreteSchedule(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    new, old = sd.VPSDE.from_schedule(sched), PiecewiseLinearScheduleVPSDE(sched)
    rows = [  # (label, sde, reference sde for sampling)
        ("`from_schedule` (C1 cubic B, this version)", new, new),
        ("previous `from_schedule` (piecewise-linear B)", old, new),
        ("previous, its 999 knots declared as breakpoints", with_knots(old), new),
        ("smooth `VPSDE()`", sd.VPSDE(), sd.VPSDE()),
    ]
    head = ("| SDE | " + " | ".join(f"log-lik. rtol=atol={t:g}" for t in LL_TOLS)
            + f" | pf_ode sampling {SAMPLE_TOL:g} |")
    lines = [head, "|---" * (len(LL_TOLS) + 2) + "|"]
    for label, sde, ref in rows:
        t0 = time.perf_counter()
        cells = [f"{e:.1e} ({n})" for e, n in likelihood_errors(sde, gm, x)]
        e, n = sampling_error(sde, ref, gm, x_T)
        cells.append(f"{e:.1e} ({n})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(f"[{label}: {time.perf_counter() - t0:.1f} s]", flush=True)
    print("\nmax error (NFE); log-likelihood error in nats, sampling error max |x - x_ref|\n")
    print("\n".join(lines))
    print("\n" + provenance())


if __name__ == "__main__":
    main()
