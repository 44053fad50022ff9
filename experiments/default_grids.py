"""Default time grid per solver, per SDE and per budget, chosen by measurement.

Every deterministic solver of the registry (default options) on every grid rule (the registered
ones, plus `PolyExponentialGrid(rho=2)`; `rho=1` is `logsnr`), at at-most budgets of 10, 15 and
20 evaluations, on the VP, sub-VP and VE SDEs, each with the exact scores of two calibration
Gaussian mixtures (8 Gaussians in 2-D, a random 5-D mixture) and two held-out ones (the random
2-D mixture `mixture2d`, and a random 10-D mixture registered here as `mixture10d`): the
pathwise error E||x - x_ref|| of the denoised samples against a tight dopri5 solve of the PF-ODE
(rtol = atol = 1e-10) from the same x_T (`experiments/fewstep_table.py`'s `measure`), float64.

The choice uses the calibration targets only. In each (target, budget) cell a rule's error is
divided by the solver's best error there (over the same rules). A solver's rule on an SDE is
the one with the smallest geometric mean of that ratio over the 6 cells (the pre-study default
kept when within 1%); at a budget, another rule replaces it when both targets support that:
it is no worse than 1% on either target there, and its geometric mean there is more than 1%
better. The step counts where the rule changes are the midpoints between the budgets' step
counts (a `PerStepsGrid`). The held-out targets then say how the choice carries over.

A what-if (`--family`): the same choice with a continuous family, `TimePowerGrid(rho)` (uniform
in t^(1/rho): rho = 1 is `uniform`, rho = 2 `quadratic`) at several rho, added to the rules;
it says whether such a family would help (it does not: see docs/results.md).

Writes the "default_grids" section of docs/results.md and prints the `default_grid`
declarations; `--check` exits 1 if a solver's declared default differs from the choice.

    python experiments/default_grids.py            # 1000 draws (5-12 min, 1 thread)
    python experiments/default_grids.py --n 200    # quicker
    python experiments/default_grids.py --save errs.json; ... --load errs.json --check
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
from _results import provenance, write_section  # noqa: I001
from fewstep_table import GRID_CASES as _CASES
from fewstep_table import measure

import scoresde as sd
from scoresde.analytic import GaussianMixture
from scoresde.evaluation.targets import builtin_target, register_target
from scoresde.samplers import FixedGridSolver, ProbabilityFlowODE, TimeGrid, grid_label

Tensor = torch.Tensor

#: (label, grid): fewstep_table's rules, labelled as the comparison labels them
GRID_CASES = [(g.label, g) for _, g in _CASES]
RULES = [g for g, _ in GRID_CASES]

BUDGETS = (10, 15, 20)
TIE = 1.01
LIMIT = 1.2
TARGETS = ("eight_gaussians", "mixture5d")
HELD_OUT = ("mixture2d", "mixture10d")
SDES = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}
#: each solver's default grid before this study (issue 12), on every SDE
OLD_DEFAULTS = {"dpm_solver": "logsnr", "dpm_solver_3m": "quadratic", "dpm_solver_singlestep": "quadratic",
                "deis": "quadratic", "ipndm": "quadratic", "unipc": "quadratic"}
#: the what-if family's exponents (1 and 2 are `uniform` and `quadratic`, already in the rules)
FAMILY_RHOS = (0.5, 0.75, 1.25, 1.5, 1.75, 2.5, 3.0, 4.0)


def _mixture10d() -> GaussianMixture:
    return GaussianMixture.random(6, 10, torch.Generator().manual_seed(3), spread=1.5, min_std=0.15,
                                  max_std=0.6)


register_target("mixture10d", _mixture10d, "random 10-D mixture, 6 full-covariance components "
                "(held out in experiments/default_grids.py)")


class TimePowerGrid(TimeGrid):
    """The what-if family, not a registered rule: uniform in $t^{1/\\rho}$,
    $t_i = (T^{1/\\rho} + \\tfrac{i}{n}(t_\\text{end}^{1/\\rho} - T^{1/\\rho}))^\\rho$
    ($\\rho = 1$: `UniformGrid`, $\\rho = 2$: `QuadraticGrid`; $\\rho < 1$ denser near $T$)."""

    name = "time_power"

    def __init__(self, rho: float) -> None:
        self.rho = float(rho)

    def _grid(self, sde: sd.SDE, n: int, t_end: float) -> Tensor:
        r = 1.0 / self.rho
        return torch.linspace(sde.T ** r, t_end ** r, n + 1, dtype=torch.float64) ** self.rho

    @property
    def label(self) -> str:
        return f"time_power(rho={self.rho:g})"


FAMILY = [(g.label, g) for g in map(TimePowerGrid, FAMILY_RHOS)]


def deterministic_solvers() -> list[tuple[str, str, dict]]:
    """(label, name, options): every registered solver whose default instance is deterministic
    and runs on a fixed grid."""
    out = []
    for name, cls in sd.SOLVERS.items():
        try:
            s = cls()
        except TypeError:
            continue
        if not s.stochastic and isinstance(s, FixedGridSolver | ProbabilityFlowODE):
            out.append((name, name, {}))
    return out


def _gmean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def ratios(errs: dict, label: str, rules: list[str], targets: tuple[str, ...]
           ) -> dict[str, dict[tuple[str, int], float]]:
    """Per rule and (target, budget) cell: its error / the best error of ``rules`` there."""
    cells = [(t, k) for t in targets for k in BUDGETS]
    best = {(t, k): min(errs[t][(label, g)][k][0] for g in rules) for t, k in cells}
    return {g: {(t, k): errs[t][(label, g)][k][0] / best[(t, k)] for t, k in cells} for g in rules}


def choose(errs: dict, label: str, old: str, rules: list[str]) -> tuple[str, dict[int, str]]:
    """The single rule (smallest geometric mean of error / best over the calibration cells, the
    old default kept within ``TIE``) and the rule per budget (another rule where both targets
    support it, see the module docstring). Ties (on VE `uniform` and `logsnr` are one grid)
    go to the rule listed first."""
    r = ratios(errs, label, rules, TARGETS)

    def score(g: str, ks: tuple[int, ...]) -> tuple[float, int]:
        return round(_gmean([r[g][(t, k)] for t in TARGETS for k in ks]), 9), rules.index(g)

    top = min(rules, key=lambda g: score(g, BUDGETS))
    base = old if old in rules and score(old, BUDGETS)[0] <= TIE * score(top, BUDGETS)[0] else top
    per = {}
    for k in BUDGETS:
        alt = min(rules, key=lambda g: score(g, (k,)))
        supported = all(r[alt][(t, k)] <= TIE * r[base][(t, k)] for t in TARGETS)
        per[k] = alt if supported and TIE * score(alt, (k,))[0] < score(base, (k,))[0] else base
    return base, per


def steps_at(name: str, errs: dict) -> dict[int, int]:
    """The number of steps the solver takes at each budget (from the NFE it used)."""
    slv = sd.SOLVERS[name]()
    row = errs[TARGETS[0]][(name, RULES[0])]
    return {k: slv.steps_for_nfe(row[k][1], extra=1) for k in BUDGETS}


def thresholds(per: dict[int, str], steps: dict[int, int]) -> tuple[dict[int, str], str]:
    """``per`` as `PerStepsGrid` arguments: {last step count of a rule: rule}, otherwise."""
    rules: dict[int, str] = {}
    for a, b in zip(BUDGETS, BUDGETS[1:], strict=False):
        if per[a] != per[b]:
            rules[(steps[a] + steps[b]) // 2] = per[a]
    return rules, per[BUDGETS[-1]]


def declaration(per_sde: dict[str, tuple[dict[int, str], str]]) -> str:
    """The `default_grid = PerSDEGrid(...)` line for one solver (fallback: the VP rule)."""
    def one(rules: dict[int, str], otherwise: str) -> str:
        if not rules:
            return f'"{otherwise}"'
        inner = ", ".join(f'{k}: "{g}"' for k, g in rules.items())
        return f'PerStepsGrid({{{inner}}}, otherwise="{otherwise}")'

    body = ", ".join(f'"{s}": {one(*v)}' for s, v in per_sde.items())
    return f"PerSDEGrid({{{body}}}, fallback={one(*per_sde['vp'])})"


def worst(r: dict[str, dict], per: dict[int, str]) -> tuple[float, float, tuple[str, int]]:
    """Geometric mean and largest error / best of the per-budget choice, and that cell."""
    vals = {c: r[per[c[1]]][c] for c in r[per[BUDGETS[0]]]}
    cell = max(vals, key=vals.get)
    return _gmean(list(vals.values())), vals[cell], cell


def _load(path: str) -> tuple[int, str, dict]:
    raw = json.loads(open(path).read())
    measured = {s: {t: {(lab, g): {int(k): tuple(v) for k, v in row.items()} for lab, g, row in rows}
                    for t, rows in m.items()} for s, m in raw["errs"].items()}
    return raw["n"], raw["provenance"], measured


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-family", action="store_true", help="skip the TimePowerGrid what-if")
    p.add_argument("--save", help="write the measured errors to this JSON file")
    p.add_argument("--load", help="use errors measured before (--save) instead of measuring")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if a solver's declared default_grid is not the chosen one")
    a = p.parse_args()
    torch.set_num_threads(1)
    cases = deterministic_solvers()
    targets = TARGETS + HELD_OUT
    grids = GRID_CASES + ([] if a.no_family else FAMILY)
    if a.load:
        a.n, made, measured = _load(a.load)
    else:
        made = provenance()
        measured = {s: {t: measure(t, a.n, a.seed, sde=sde, cases=cases, budgets=BUDGETS, grids=grids)
                        for t in targets} for s, sde in SDES.items()}
    if a.save:
        with open(a.save, "w") as f:
            json.dump({"n": a.n, "provenance": made,
                       "errs": {s: {t: [[lab, g, row] for (lab, g), row in e.items()]
                                    for t, e in m.items()} for s, m in measured.items()}}, f)
    family = [g for g, _ in FAMILY if (cases[0][0], g) in measured["vp"][TARGETS[0]]]
    scale = {t: float(builtin_target(t).exact.sample(20000, torch.Generator().manual_seed(0))
                      .flatten(1).norm(dim=1).mean()) for t in TARGETS}
    rows, full, decl, mismatch, hard, what_if, stiff = [], [], {}, [], [], [], ""
    count = {"per": [0, 0], "single": [0, 0], "old": [0, 0], "family": [0, 0]}
    for sde_name, sde in SDES.items():
        errs = measured[sde_name]
        for label, name, _ in cases:
            old = OLD_DEFAULTS.get(name, "uniform")
            base, per = choose(errs, label, old, RULES)
            steps = steps_at(name, errs)
            decl.setdefault(name, {})[sde_name] = thresholds(per, steps)
            rc, rh = ratios(errs, label, RULES, TARGETS), ratios(errs, label, RULES, HELD_OUT)
            single = {k: base for k in BUDGETS}
            olds = {k: old for k in BUDGETS}
            res = {key: (worst(rc, ch), worst(rh, ch))
                   for key, ch in (("per", per), ("single", single), ("old", olds))}
            for key, (c, h) in res.items():
                count[key][0] += c[1] <= LIMIT
                count[key][1] += h[1] <= LIMIT
            declared = sd.SOLVERS[name]().default_grid
            for k in BUDGETS:
                have = grid_label(declared, sde, steps[k])
                if have != per[k]:
                    mismatch.append(f"{name} on {sde_name} at NFE {k} ({steps[k]} steps): measured best "
                                    f"{per[k]}, declared {have}")
            shown = per[10] if len(set(per.values())) == 1 else " / ".join(per[k] for k in BUDGETS)
            at15 = " / ".join(f"{errs[t][(label, per[15])][15][0]:.1e}" for t in TARGETS)
            (cg, cw, _), (hg, hw, _) = res["per"]
            rows.append(f"| `{name}` | {sde_name} | {shown} | {at15} | {cg:.2f}, {cw:.2f} | {hg:.2f}, "
                        f"{hw:.2f} | {res['single'][0][1]:.2f} | {old}: {res['old'][0][0]:.2f}, "
                        f"{res['old'][0][1]:.2f} |")
            gm = {g: _gmean(list(rc[g].values())) for g in RULES}
            full.append(f"| `{name}` | {sde_name} | " + " | ".join(
                (f"**{gm[g]:.2f}**" if g == base else f"{gm[g]:.2f}") for g in RULES) + " |")
            if cw > LIMIT:
                hard.append(_why(name, sde_name, errs, label, rc, per, steps, scale))
                if name == "pf_ode" and sde_name == "ve":
                    stiff = _stiff(errs, steps, scale)
            if family:
                what_if.append(_family_row(name, sde_name, errs, label, old, family, count))
    n = len(rows)
    body = "\n".join([
        "## Default time grid per solver, SDE and budget", "",
        f"Every deterministic solver (default options) on every grid rule, at at-most budgets "
        f"{', '.join(map(str, BUDGETS))} on the VP, sub-VP and VE SDEs with the exact scores of two "
        f"calibration targets, {' and '.join(f'`{t}`' for t in TARGETS)}, and two held-out ones, "
        f"{' and '.join(f'`{t}`' for t in HELD_OUT)} (a random 10-D mixture of 6 components, "
        f"registered by the experiment); float64, {a.n} draws of $x_T$ per target and SDE shared "
        "by all runs: the pathwise error $\\mathbb E\\|x - x_\\text{ref}\\|$ of the denoised samples "
        "against a dopri5 solve of the PF-ODE (rtol = atol = $10^{-10}$) from the same $x_T$. In "
        "each (target, budget) cell a rule's error is divided by the solver's best error there, "
        "over the same five rules (`polyexponential(rho=2)` is `PolyExponentialGrid(rho=2)`; "
        "`rho=1` is `logsnr`, and on VE `logsnr` is `uniform`: log-SNR is linear in t). The "
        "choice uses the calibration targets only: the rule with the smallest geometric mean of "
        "that ratio over the 6 cells (the pre-study default kept when within "
        f"{100 * (TIE - 1):.0f}%), replaced at a budget by another rule where both targets support "
        f"it there (no worse than {100 * (TIE - 1):.0f}% on either, geometric mean more than "
        f"{100 * (TIE - 1):.0f}% better; it then holds from the midpoint between that budget's "
        "step count and the neighbouring budget's, a `PerStepsGrid`). Pre-study defaults: "
        "`uniform` for `ddim`, `heun`, `pf_ode`; `logsnr` for `dpm_solver`; `quadratic` for the "
        "others, on every SDE.", "",
        "| solver | SDE | default (at NFE 10 / 15 / 20) | error at NFE 15 (" + " / ".join(TARGETS)
        + ") | error / best, calibration: geo-mean, worst cell | held-out: geo-mean, worst cell "
        "| one rule for all budgets: worst cell | pre-study default: geo-mean, worst cell |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |", *rows, "",
        f"Within {LIMIT}× of the solver's best rule in every calibration cell: **{count['per'][0]} "
        f"of the {n}** (solver, SDE) pairs (one rule for all budgets, as before this per-budget "
        f"choice: {count['single'][0]}; the pre-study defaults: {count['old'][0]}). In every "
        f"held-out cell: {count['per'][1]} of {n} (one rule: {count['single'][1]}; pre-study: "
        f"{count['old'][1]}). The solvers declare these defaults as `default_grid = PerSDEGrid("
        "{...}, fallback=...)`, a rule per SDE that may be a `PerStepsGrid` "
        "([Time grids](solvers.md#default-grid-per-solver-and-sde)).", "",
        f"**Where {LIMIT}× is out of reach.** For each pair not within {LIMIT}×: the default's "
        "worst cell, and the budget where the two calibration targets disagree most. There, "
        "\"best any rule\" is the smallest, over the five rules, of the larger of the two "
        "targets' error / best: a lower bound for every default that depends only on the "
        f"solver, the SDE and the number of steps (above {LIMIT}: out of reach with these "
        "rules). In parentheses: the default's error / best on that target, and the target's "
        "best error over $\\mathbb E\\|x_0\\|$ (its data scale; near or above 1, no rule "
        "gives a usable sample).", "",
        "| solver | SDE | default's worst cell | hardest budget | each target's best rule there "
        "(default's ratio; best error / data scale) | best any rule |",
        "| --- | --- | --- | --- | --- | ---: |", *(h for h, _ in hard), "",
        f"{sum(b > LIMIT for _, b in hard)} of these {len(hard)} are out of reach by the bound."
        + (f" {sum(b <= LIMIT for _, b in hard)} would be reachable by a per-budget rule that one "
           "calibration target does not support (the choice above does not take it)."
           if any(b <= LIMIT for _, b in hard) else "") + stiff, "",
        *(_family_text(what_if, count, n) if family else []),
        '??? note "Every rule: geometric mean of error / best over the calibration cells"', "",
        "    | solver | SDE | " + " | ".join(RULES) + " |",
        "    | --- | --- |" + " ---: |" * len(RULES),
        *("    " + line for line in full), "",
        made])
    write_section("default_grids", body)
    print(body)
    print("\ndeclarations (fallback = the VP choice):")
    for name, per_sde in decl.items():
        print(f"  {name}: default_grid = {declaration(per_sde)}")
    for line in mismatch:
        print(f"MISMATCH {line}", file=sys.stderr)
    if a.check and mismatch:
        sys.exit(1)


def _why(name: str, sde_name: str, errs: dict, label: str, rc: dict, per: dict[int, str],
         steps: dict[int, int], scale: dict[str, float]) -> tuple[str, float]:
    """One row of the "out of reach" table, and its lower bound: the default's worst cell, and
    the budget where the smallest, over the rules, of the larger of the two targets' ratios
    (the best any per-budget rule can do) is largest."""
    _, w, (t, k) = worst(rc, per)

    def bound(kk: int) -> float:
        return min(max(rc[g][(tt, kk)] for tt in TARGETS) for g in RULES)

    kb = max(BUDGETS, key=bound)
    wants = []
    for tt in TARGETS:
        g = min(RULES, key=lambda r: rc[r][(tt, kb)])
        best = errs[tt][(label, g)][kb][0]
        wants.append(f"{tt}: {g} ({rc[per[kb]][(tt, kb)]:.2f}; {best / scale[tt]:.2f})")
    return (f"| `{name}` | {sde_name} | {t}, NFE {k}: {w:.2f} | NFE {kb} ({steps[kb]} steps) | "
            f"{'; '.join(wants)} | {bound(kb):.2f} |"), bound(kb)


def _stiff(errs: dict, steps: dict[int, int], scale: dict[str, float]) -> str:
    """Why `pf_ode` (RK4) fails on VE at these budgets, from the numbers."""
    k = BUDGETS[0]
    best = {t: min(errs[t][("pf_ode", g)][k][0] for g in RULES) / scale[t] for t in TARGETS}
    expo = {t: min(errs[t][("dpm_solver", g)][k][0] for g in RULES) / scale[t] for t in TARGETS}
    return (f" `pf_ode` on VE is not a grid problem: at NFE {k} ({steps[k]} RK4 steps from "
            "$\\sigma = 50$ to $0.01$) its best error over the rules is "
            + " and ".join(f"{best[t]:.1f}" for t in TARGETS) + " times the data scale ("
            + " / ".join(TARGETS) + "), against " + " and ".join(f"{expo[t]:.3f}" for t in TARGETS)
            + " for `dpm_solver` with as many evaluations. On VE the PF-ODE contracts $x$ like "
            "$(v + \\sigma^2)^{1/2}$ for a component of variance $v$, over many e-folds of "
            "$\\sigma^2$; a few RK4 steps, a polynomial in the step, cannot follow that, while "
            "the exponential integrators (DDIM, the DPM-Solver family, UniPC, DEIS) treat the "
            "part linear in $x$ exactly: on VE below about 20 evaluations use one of those.")


def _family_row(name: str, sde_name: str, errs: dict, label: str, old: str, family: list[str],
                count: dict) -> str:
    """The what-if with the family among the rules: its choice, and each target's best rho."""
    rules = RULES + family
    _, per = choose(errs, label, old, rules)
    (_, cw, _), (_, hw, _) = worst(ratios(errs, label, rules, TARGETS), per), \
        worst(ratios(errs, label, rules, HELD_OUT), per)
    count["family"][0] += cw <= LIMIT
    count["family"][1] += hw <= LIMIT
    fam = {1.0: "uniform", 2.0: "quadratic"} | {g.rho: g.label for _, g in FAMILY}
    rhos = sorted(fam)
    best_rho = " / ".join(
        ",".join(f"{min(rhos, key=lambda r: errs[t][(label, fam[r])][k][0]):g}" for k in BUDGETS)
        for t in TARGETS + HELD_OUT)
    shown = per[10] if len(set(per.values())) == 1 else " / ".join(per[k] for k in BUDGETS)
    return f"| `{name}` | {sde_name} | {shown} | {cw:.2f} | {hw:.2f} | {best_rho} |"


def _family_text(what_if: list[str], count: dict, n: int) -> list[str]:
    rhos = ", ".join(f"{r:g}" for r in FAMILY_RHOS)
    return [
        "**Would a continuous family help?** No. Adding `TimePowerGrid(rho)`, uniform in "
        "$t^{1/\\rho}$ ($\\rho = 1$ is `uniform`, $\\rho = 2$ `quadratic`; defined in the "
        f"experiment, not a registered rule), at $\\rho$ = {rhos} to the rules (the same choice, "
        "the best now over all of them): within "
        f"{LIMIT}× in every calibration cell for {count['family'][0]} of {n} pairs, in every "
        f"held-out cell for {count['family'][1]} of {n} (five rules: {count['per'][0]} and "
        f"{count['per'][1]}). The family lowers the best more than it helps the default: the "
        "error is smooth in $\\rho$ with one minimum, but the best $\\rho$ moves with the target "
        "and the budget (the table below: for the multistep solvers on VP from about 1.5 to "
        "5), so a $\\rho$ chosen on two targets is often more than "
        f"{LIMIT}× off the best on others.", "",
        '??? note "The what-if per pair: its choice, and the best rho per target"', "",
        "    | solver | SDE | choice with the family (at NFE 10 / 15 / 20) | calibration worst "
        "cell | held-out worst cell | best $\\rho$ at NFE 10,15,20 (" + " / ".join(TARGETS + HELD_OUT)
        + ") |",
        "    | --- | --- | --- | ---: | ---: | --- |",
        *("    " + line for line in what_if), ""]


if __name__ == "__main__":
    main()
