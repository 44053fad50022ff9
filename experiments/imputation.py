"""Imputation on exact mixtures: replacement vs RePaint vs DPS vs the exact conditional score,
at equal NFE.

Targets: the built-in `mixture2d` (4 components; coordinate 0 observed, coordinate 1
imputed) and `mixture5d` (3 components; coordinates 0-1 observed, 2-4 imputed), VP-SDE,
exact joint score (zero model error). Each replicate draws M observations from the data
and imputes n samples per observation with every method from the same starting noise
(paired); the exact answer is `GaussianMixture.condition`, so errors are the methods' own:

- `out of HDR`: the fraction of imputations outside the exact conditional's 99.9%
  highest-density region (where the true conditional has almost no mass; exact sampling:
  0.1%);
- `SW2 / floor`: sliced W2 of the n imputations to exact conditional samples, divided by
  its noise floor (the same distance between two exact sets), averaged over observations.

Methods (all Euler-Maruyama steps, uniform grid, the final Tweedie step included in NFE):
sampling the exact conditional score of the unobserved coordinates (the reference: only
solver error), replacement, RePaint with r = 2, 4, 8 passes per step (jump_length 1, so a
coarser grid at equal NFE) and DPS with step sizes zeta = 0.1, 0.2, 0.5 (normalised by the
residual, as in the paper). Writes docs/results/imputation.png and the "imputation" section
of docs/results.md.

    nice python experiments/imputation.py        # R=5, M=12, n=200: ~2.5 min of CPU
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from _results import FIGURES, provenance, write_section  # noqa: I001

import scoresde as sd
from scoresde.evaluation.compare import replicate_generator
from scoresde.evaluation.metrics import noise_floor, sliced_wasserstein
from scoresde.evaluation.stats import paired_difference, t_interval
from scoresde.evaluation.targets import BUILTIN_TARGETS

TARGETS = [("mixture2d", [True, False]), ("mixture5d", [True, True, False, False, False])]
BUDGETS = [41, 201]
#: (label, method, options)
METHODS = [
    ("exact conditional score", "exact", {}),
    ("replace", "replace", {}),
    ("RePaint r=2", "repaint", {"resample": 2}),
    ("RePaint r=4", "repaint", {"resample": 4}),
    ("RePaint r=8", "repaint", {"resample": 8}),
    ("DPS zeta=0.1", "dps", {"zeta": 0.1}),
    ("DPS zeta=0.2", "dps", {"zeta": 0.2}),
    ("DPS zeta=0.5", "dps", {"zeta": 0.5}),
]
HDR = 0.999
_OBS, _X_T, _SOLVER, _REF, _FLOOR = range(5)


def _sw2(a: torch.Tensor, b: torch.Tensor, seed: int) -> float:
    proj = 1 if a.shape[1] == 1 else 64           # in 1-D one direction is exact
    return float(sliced_wasserstein(a, b, n_projections=proj,
                                    generator=torch.Generator().manual_seed(seed)))


def run_target(name: str, observed: list[bool], R: int, M: int, n: int, seed: int
               ) -> dict[tuple[str, int], dict[str, list[float]]]:
    """Per (method, budget): the per-replicate `out` (%) and `sw2` (floor units), and one
    replicate's imputations for the figure."""
    gm = BUILTIN_TARGETS[name][0]()
    sde = sd.VPSDE()
    model = gm.as_model(sde)
    mask = torch.tensor(observed)
    d, du = gm.dim, int((~mask).sum())
    out: dict[tuple[str, int], dict[str, list[float]]] = {}
    for r in range(R):
        xo = gm.sample(M, replicate_generator(seed, r, _OBS), dtype=torch.float64)
        conds = [gm.condition(mask, xo[i]) for i in range(M)]
        g_ref = replicate_generator(seed, r, _REF)
        refs, thresholds, floors = [], [], []
        for i, c in enumerate(conds):
            ex = c.sample(20_000, g_ref, dtype=torch.float64)
            thresholds.append(float(torch.quantile(c.log_prob(ex), 1.0 - HDR)))
            refs.append(c.sample(2000, g_ref, dtype=torch.float64))
            fl = noise_floor(lambda a, b, i=i: _sw2(a, b, seed + i), lambda k, g, c=c: c.sample(
                k, g, dtype=torch.float64), n, replicate_generator(seed, r * M + i, _FLOOR),
                repeats=8, m=2000)
            floors.append(fl.mean)
        xk = xo.repeat_interleave(n, 0)
        x_T = sde.prior_sample((M * n, d), replicate_generator(seed, r, _X_T), dtype=torch.float64)
        for nfe in BUDGETS:
            for label, method, opts in METHODS:
                g = replicate_generator(seed, r, _SOLVER)
                if method == "exact":
                    xu = torch.cat([sd.sample(c.as_model(sde), nfe=nfe, generator=g,
                                              x_T=x_T[i * n:(i + 1) * n][:, ~mask]).x
                                    for i, c in enumerate(conds)])
                else:
                    res = sd.inpaint(model, xk, mask, nfe=nfe, method=method, generator=g,
                                     x_T=x_T, **opts)
                    assert res.nfe == nfe
                    xu = res.x[:, ~mask]
                outs, sws = [], []
                for i, c in enumerate(conds):
                    xi = xu[i * n:(i + 1) * n].reshape(n, du)
                    outs.append(float((c.log_prob(xi) < thresholds[i]).double().mean()))
                    sws.append(_sw2(xi, refs[i], seed + 1000 + i) / floors[i])
                cell = out.setdefault((label, nfe), {"out": [], "sw2": []})
                cell["out"].append(100.0 * float(np.mean(outs)))
                cell["sw2"].append(float(np.mean(sws)))
                if r == 0:      # for the figure: every observation's imputations
                    cell["example"] = [(xu[i * n:(i + 1) * n].clone(), c, outs[i])
                                       for i, c in enumerate(conds)]
        print(f"{name}: replicate {r + 1}/{R} done", flush=True)
    return out


def fmt(v: list[float]) -> str:
    ci = t_interval(v)
    return f"{ci.mean:.2f} ± {ci.half_width:.2f}"


def table(res: dict, key: str) -> list[str]:
    head = "| method | " + " | ".join(f"NFE {b}" for b in BUDGETS) + " |"
    lines = [head, "|---|" + "---|" * len(BUDGETS)]
    for label, _, _ in METHODS:
        lines.append(f"| {label} | " + " | ".join(fmt(res[(label, b)][key]) for b in BUDGETS) + " |")
    return lines


def verdicts(res: dict, key: str) -> str:
    """Paired differences (method - replace), 95% CI, at the largest budget."""
    b = BUDGETS[-1]
    parts = []
    for label, _, _ in METHODS:
        if label == "replace":
            continue
        d = paired_difference(res[(label, b)][key], res[("replace", b)][key])
        parts.append(f"{label} {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]")
    return "; ".join(parts)


def headline(name: str, res: dict) -> str:
    """One sentence: replacement, the exact conditional score and the best RePaint and DPS
    (by sliced W2) at the largest budget."""
    b = BUDGETS[-1]

    def cell(label: str) -> str:
        o, w = t_interval(res[(label, b)]["out"]), t_interval(res[(label, b)]["sw2"])
        return f"{label}: {o.mean:.2f}% outside, SW2 {w.mean:.2f} x floor"

    def best(prefix: str) -> str:
        return min((m[0] for m in METHODS if m[0].startswith(prefix)),
                   key=lambda lab: float(np.mean(res[(lab, b)]["sw2"])))

    return (f"**{name}, NFE {b}:** " + "; ".join(cell(lab) for lab in (
        "replace", best("RePaint"), best("DPS"), "exact conditional score")) + ".")


def figure(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = [m[0] for m in METHODS]
    for ax, (name, res) in zip(axes[:2], results.items(), strict=True):
        xs = np.arange(len(labels))
        for j, b in enumerate(BUDGETS):
            cis = [t_interval(res[(lab, b)]["out"]) for lab in labels]
            ax.errorbar(xs + (j - 0.5) * 0.25, [c.mean for c in cis],
                        yerr=[c.half_width for c in cis], fmt="o", capsize=3, label=f"NFE {b}")
        ax.axhline(100 * (1 - HDR), color="grey", lw=0.8, ls="--", label="exact (0.1%)")
        ax.set_xticks(xs, labels, rotation=35, ha="right", fontsize=8)
        top = max(t_interval(res[(lab, b)]["out"]).high for lab in labels for b in BUDGETS)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(0, 2 * top)
        ax.set_ylabel("% outside the exact conditional's 99.9% HDR")
        ax.set_title(name)
        ax.legend(fontsize=8)
    ax = axes[2]
    res = results["mixture2d"]
    b = BUDGETS[-1]
    shown = ("replace", "RePaint r=8", "DPS zeta=0.2")
    # the observation (of the first replicate) where replacement missed most
    i = int(np.argmax([o for _, _, o in res[("replace", b)]["example"]]))
    cond = res[("replace", b)]["example"][i][1]
    xs = torch.cat([res[(lab, b)]["example"][i][0][:, 0] for lab in shown])
    grid = torch.linspace(float(xs.min()) - 0.5, float(xs.max()) + 0.5, 800, dtype=torch.float64)
    ax.plot(grid, cond.log_prob(grid[:, None]).exp(), "k", lw=1.5, label="exact p(x1 | x0)")
    for lab in shown:
        ax.hist(res[(lab, b)]["example"][i][0][:, 0].numpy(), bins=40, density=True,
                histtype="step", lw=1.2, label=lab)
    ax.set_title(f"mixture2d, the observation replacement missed most, NFE {b}", fontsize=9)
    ax.set_xlabel("imputed x1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--replicates", type=int, default=5)
    p.add_argument("--observations", type=int, default=12, help="observations per replicate")
    p.add_argument("--n", type=int, default=200, help="imputations per observation")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    results = {name: run_target(name, obs, a.replicates, a.observations, a.n, a.seed)
               for name, obs in TARGETS}
    FIGURES.mkdir(parents=True, exist_ok=True)
    figure(results, FIGURES / "imputation.png")
    parts = [
        "## Imputation on exact mixtures",
        "",
        "Imputing the unobserved coordinates of the built-in mixtures with the exact *joint* "
        "score (zero model error): replacement (Song et al. 2021), RePaint (Lugmayr et al. "
        "2022; r passes per step, jump length 1) and DPS (Chung et al. 2023; step zeta "
        "normalised by the residual) against sampling the exact *conditional* score "
        "(`GaussianMixture.condition`), all with Euler-Maruyama steps at the same NFE (RePaint "
        "pays for its passes with a coarser grid). Each of R = "
        f"{a.replicates} replicates draws {a.observations} observations from the data and "
        f"imputes n = {a.n} samples for each, every method from the same $x_T$; cells are "
        "mean ± 95% CI half-width over the replicates. See "
        "[Conditional generation](conditional.md) for the methods.",
        "",
    ]
    for name, obs in TARGETS:
        res = results[name]
        d = len(obs)
        parts += [f"### {name} ({sum(obs)} of {d} coordinates observed)", "",
                  "Percent of imputations outside the exact conditional's 99.9% highest-density "
                  "region (exact sampling: 0.1%):", ""] + table(res, "out") + [
                  "", "Sliced W2 to exact conditional samples / its noise floor (1.00 = as "
                  "close as exact samples):", ""] + table(res, "sw2") + [
                  "", f"Paired differences to replacement at NFE {BUDGETS[-1]} (percent outside "
                  f"the HDR; 95% CI): {verdicts(res, 'out')}.", ""]
    parts += [
        "**Headline** (the best RePaint and DPS settings by sliced W2):", "",
        *[headline(name, results[name]) + "\n" for name, _ in TARGETS],
        "How to read it: well below 0.1% outside the HDR points to *over*-concentration "
        "(the sliced W2 is the check), not to better than exact. DPS's best step size "
        "depends on the budget and was picked here knowing the exact answer, an optimistic "
        "choice no real imputation has; "
        "RePaint at NFE 41 with r = 8 has only 5 grid steps, so its coarse grid dominates.",
        "", "![imputation](results/imputation.png)", "",
        f"{provenance()} About 2.5 min of CPU (10 min wall on a shared, busy 2-core machine)."]
    body = "\n".join(parts)
    write_section("imputation", body)
    print(body)
    assert not any(math.isnan(v) for res in results.values() for c in res.values()
                   for v in c["out"])


if __name__ == "__main__":
    main()
