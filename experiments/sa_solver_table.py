"""SA-Solver against the other stochastic samplers, in distribution, on exact targets.

Sliced W2 (``scoresde.metrics.sliced_wasserstein``, 256 directions) of ``--n`` samples
against ``--n`` exact samples of the target, on the exact score of the target (zero model
error), float64, VP-SDE, denoised (the budget ``NFE K`` counts every evaluation, the Tweedie
step included). Each replicate draws its own x_T and solver noise; the table gives the mean
over replicates with a 95% t-interval, next to the noise floor (two independent exact sets
of the same size) and a "perfect" solver (exact samples of p_{t_end} denoised by the same
Tweedie step). SW2 at this size cannot tell samplers apart once they are within about one
floor standard deviation of the floor, so the table also gives the largest |z| of the sample
mean and centred second moments against their exact values (``ggf_noise.max_z``; about
N(0, 1) per feature for exact samples, a bias b shows as |z| ~ sqrt(n) b / sd): the more
sensitive check, with the z of the mean exact log-density log p(x) of the samples (its
expectation and sd from 400 000 exact draws). Writes the ``sa_solver`` section of
docs/results.md and prints it.

    python experiments/sa_solver_table.py              # the table
    python experiments/sa_solver_table.py --select     # also the defaults study

One thread; on a busy shared 2-core machine the table took about 15 minutes and ``--select``
about 35 more.

``--select`` first measures SA-Solver's options (predictor/corrector orders, tau, time grid)
at NFE 10 and 20 on VP (both targets) and its grid per SDE (sub-VP, VE) with the defaults,
one replicate each, and writes them to the ``sa_solver_defaults`` section.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from _results import provenance, write_section
from ggf_noise import max_z

import scoresde as sd
from scoresde.evaluation.metrics import noise_floor, sliced_wasserstein
from scoresde.evaluation.targets import builtin_target

TARGETS = ("eight_gaussians", "mixture5d")
BUDGETS = (10, 20, 50)
#: (label, solver, options): SA-Solver with its defaults, and the stochastic samplers it is
#: compared with (k-diffusion's DPM-Solver++(2M)/(3M) SDE are `dpm_solver_sde`)
CASES = [
    ("sa_solver", "sa_solver", {}),
    ("sa_solver tau=0 (ODE)", "sa_solver", {"tau": 0.0}),
    ("dpm_solver_sde (2M SDE)", "dpm_solver_sde", {}),
    ("dpm_solver_sde (3M SDE)", "dpm_solver_sde", {"solver_order": 3}),
    ("euler_maruyama", "euler_maruyama", {}),
    ("ancestral", "ancestral", {}),
]
T_CRIT = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}   # t_{0.975, r-1}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Problem:
    """One target under one SDE: the model, the exact reference set, the SW2 and its floor."""

    def __init__(self, target: str, sde: sd.SDE, n: int) -> None:
        t = builtin_target(target, sde)
        self.target, self.sde, self.n, self.gm, self.model = target, sde, n, t.exact, t.model
        self.exact = self.gm.sample(n, gen(10_000)).to(torch.float64)
        lp = self.gm.log_prob(self.gm.sample(400_000, gen(20_000)).to(torch.float64))
        self.lp_mean, self.lp_sd = float(lp.mean()), float(lp.std())

    def z(self, x: torch.Tensor) -> float:
        """Largest |z| of the moments (``ggf_noise.max_z``) and of the mean log-density."""
        if not bool(torch.isfinite(x).all()):
            return math.inf
        z_lp = (float(self.gm.log_prob(x).mean()) - self.lp_mean) / (self.lp_sd / math.sqrt(x.shape[0]))
        return max(max_z(self.gm, x), abs(z_lp))

    def sw(self, x: torch.Tensor) -> float:
        if not bool(torch.isfinite(x).all()):
            return math.inf
        return float(sliced_wasserstein(x, self.exact, n_projections=256, generator=gen(7)))

    def floor(self) -> tuple[float, float]:
        f = noise_floor(lambda a, b: sliced_wasserstein(a, b, n_projections=256, generator=gen(7)),
                        lambda m, g: self.gm.sample(m, g).to(torch.float64), self.n, gen(11), repeats=4)
        return float(f.mean), float(f.std)

    def perfect(self) -> float:
        """Exact samples of p_{t_end}, denoised by the same Tweedie step."""
        t_end = self.sde.sample_eps
        tt = torch.tensor(t_end, dtype=torch.float64)
        a, s = float(self.sde.alpha(tt)), float(self.sde.sigma(tt))
        x0 = self.gm.sample(self.n, gen(12)).to(torch.float64)
        xt = a * x0 + s * torch.randn(x0.shape, generator=gen(13), dtype=torch.float64)
        return self.sw(sd.dynamics.tweedie_denoise(self.model, xt, t_end))

    def samples(self, name: str, opts: dict, nfe: int, rep: int, grid=None) -> tuple[torch.Tensor, int]:
        """One replicate at the largest budget <= nfe: (samples, nfe used)."""
        slv = sd.samplers.make_solver(name, **opts)
        ok = slv.reachable(nfe, extra=1)
        x_T = self.sde.prior_sample((self.n, self.gm.dim), gen(100 + rep), dtype=torch.float64)
        kw = {} if grid is None else {"grid": grid}
        res = sd.sample(self.model, solver=name, nfe=ok[-1], x_T=x_T, generator=gen(1000 + rep), **kw, **opts)
        return res.x, res.nfe

    def run(self, name: str, opts: dict, nfe: int, rep: int, grid=None) -> tuple[float, int]:
        """SW2 of one replicate at the largest budget <= nfe; (sw2, nfe used)."""
        x, used = self.samples(name, opts, nfe, rep, grid)
        return self.sw(x), used


def mean_ci(vals: list[float]) -> tuple[float, float]:
    m = sum(vals) / len(vals)
    if len(vals) < 2 or not math.isfinite(m):
        return m, math.nan
    sd_ = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return m, T_CRIT.get(len(vals), 2.0) * sd_ / math.sqrt(len(vals))


def table(n: int, reps: int) -> str:
    head = "| solver | " + " | ".join(f"NFE {k}" for k in BUDGETS) + " |"
    sep = "| --- |" + " ---: |" * len(BUDGETS)
    parts = []
    for target in TARGETS:
        p = Problem(target, sd.VPSDE(), n)
        fm, fs = p.floor()
        cells: dict = {}
        for label, name, opts in CASES:
            for k in BUDGETS:
                sws, zs, used = [], [], k
                for r in range(reps):
                    x, used = p.samples(name, opts, k, r)
                    sws.append(p.sw(x))
                    zs.append(p.z(x))
                cells[(label, k)] = (*mean_ci(sws), used, *mean_ci(zs))
            print(f"  {target}: {label}", file=sys.stderr, flush=True)
        stoch = [lab for lab, _, _ in CASES if not lab.endswith("(ODE)")]
        rows_sw, rows_z = [], []
        for label, _, _ in CASES:
            out_sw, out_z = [], []
            for k in BUDGETS:
                m, ci, used, zm, zci = cells[(label, k)]
                nfe = f" ({used})" if used != k else ""
                s_sw, s_z = f"{m:.2e} ± {ci:.0e}{nfe}", f"{zm:.1f} ± {zci:.1f}{nfe}"
                bold_sw = m == min(cells[(lab, k)][0] for lab in stoch)
                bold_z = zm == min(cells[(lab, k)][3] for lab in stoch)
                out_sw.append(f"**{s_sw}**" if bold_sw else s_sw)
                out_z.append(f"**{s_z}**" if bold_z else s_z)
            rows_sw.append(f"| `{label}` | " + " | ".join(out_sw) + " |")
            rows_z.append(f"| `{label}` | " + " | ".join(out_z) + " |")
        desc = builtin_target(target).description.split(";")[0]
        parts += [f"#### `{target}` ({desc}), VP", "",
                  f"Sliced W2. Noise floor (two exact sets of {n}): {fm:.2e} ± {fs:.0e} (sd over 4 "
                  f"pairs); perfect solver: {p.perfect():.2e}.", "", head, sep, *rows_sw, "",
                  "Largest $|z|$ of the sample mean, centred second moments and mean log-density "
                  "(exact samples: $|z| \\lesssim 3$):", "", head, sep, *rows_z, ""]
    return "\n".join(parts)


SELECT_PC = [(1, 0), (2, 0), (3, 0), (1, 2), (2, 2), (2, 3), (3, 4), (4, 4)]
SELECT_TAU = [("0.5", {"tau": 0.5}), ("1", {"tau": 1.0}),
              ("1 in [0.7, 25]", {"tau": 1.0, "tau_interval": (0.7, 25.0)})]
SELECT_GRIDS = ["uniform", "quadratic", "logsnr"]
SELECT_BUDGETS = (10, 20)


def geo_mean(vals: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def select(n: int) -> str:
    """The defaults study, one replicate per configuration at NFE 10 and 20: every (orders,
    tau, grid) on VP, ranked by the geometric mean of SW2 over both targets and budgets; then
    the grid per SDE with the chosen options."""
    parts = []
    cols = [(t, k) for t in TARGETS for k in SELECT_BUDGETS]
    head = "| predictor, corrector | tau | grid | " + " | ".join(
        f"{'E8' if t == TARGETS[0] else 'M5'} {k}" for t, k in cols) + " | geo. mean |"
    probs = {t: Problem(t, sd.VPSDE(), n) for t in TARGETS}
    rows = []
    for pc in SELECT_PC:
        for tlab, topts in SELECT_TAU:
            for grid in SELECT_GRIDS:
                opts = dict(topts, predictor_order=pc[0], corrector_order=pc[1])
                vals = [probs[t].run("sa_solver", opts, k, 0, grid=grid)[0] for t, k in cols]
                rows.append((geo_mean(vals), pc, tlab, grid, vals))
        print(f"  select {pc}", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: r[0])
    lines = [head, "| --- | --- | --- |" + " ---: |" * (len(cols) + 1)]
    for g, pc, tlab, grid, vals in rows:
        lines.append(f"| {pc[0]}, {pc[1]} | {tlab} | {grid} | " + " | ".join(f"{v:.1e}" for v in vals)
                     + f" | {g:.2e} |")
    parts += ["Every option set on VP, ranked by the geometric mean of SW2 over both targets "
              "(E8 = `eight_gaussians`, M5 = `mixture5d`) at NFE 10 and 20; one replicate, "
              f"{n} samples:", "", *lines, ""]
    head = "| SDE | grid | " + " | ".join(f"{'E8' if t == TARGETS[0] else 'M5'} {k}" for t, k in cols) + " |"
    lines = [head, "| --- | --- |" + " ---: |" * len(cols)]
    for sde_name in ("vp", "subvp", "ve"):
        ps = {t: Problem(t, sd.get_sde(sde_name), n) for t in TARGETS}
        for grid in (*SELECT_GRIDS, "karras"):
            vals = [ps[t].run("sa_solver", {}, k, 0, grid=grid)[0] for t, k in cols]
            lines.append(f"| {sde_name} | {grid} | " + " | ".join(f"{v:.1e}" for v in vals) + " |")
        print(f"  select grids {sde_name}", file=sys.stderr, flush=True)
    parts += ["`sa_solver` with its default options on each grid and SDE, one replicate:", "", *lines, ""]
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--select", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.select:
        body = "\n".join(["### SA-Solver: choosing the defaults", "", select(a.n), provenance()])
        write_section("sa_solver_defaults", body)
        print(body)
    intro = (f"{a.n} samples per run; exact score of the target (zero model error), VP-SDE, "
             "float64, denoised. Two measures of the same samples: sliced W2 (256 directions) "
             f"against {a.n} exact samples, and the largest $|z|$ of the sample mean, centred "
             "second moments (exact) and mean log-density $\\log p(x)$ (from 400 000 exact draws), "
             "$z = (\\bar h - \\mathbb E h)/"
             "(\\mathrm{sd}(h)/\\sqrt n)$, about $N(0, 1)$ per feature for exact samples (a bias "
             "$b$ shows as $|z| \\approx \\sqrt n\\,b/\\mathrm{sd}$; SW2 cannot tell samplers "
             "apart once they are within about one floor standard deviation of the floor). Mean "
             f"over {a.replicates} replicates (each its own $x_T$ and solver noise, shared by "
             "all solvers) ± the half-width of a 95% t-interval. `NFE K` counts every "
             "evaluation, the denoising step included (a solver that cannot meet K uses the "
             "largest budget below it, in parentheses). **Bold**: the lowest of the stochastic "
             "samplers at that budget; `sa_solver tau=0` (its deterministic form) is shown for "
             "reference. Options not named are the solvers' defaults, on their default grids.")
    body = "\n".join(["### SA-Solver against the stochastic samplers", "", intro, "",
                      table(a.n, a.replicates), provenance()])
    write_section("sa_solver", body)
    print(body)


if __name__ == "__main__":
    main()
