r"""Benchmark (not a test): our stochastic samplers against k-diffusion's, with replicates,
held-out selection and confidence intervals.

The question (issue 12's target "stochastic samplers: ours/best-peer sliced W2 ≤ 1.0 at every NFE in
{10, 20, 50}"): is the best stochastic sampler of scoresde at least as accurate, in distribution,
as the best of k-diffusion's SDE samplers? ``bench_peers.py`` answers it with two replicates and
"best" = the minimum over ~60 noisy configurations: a minimum of noisy values is biased low
(selection bias), and its differences were below the noise floor. This script asks the same
question so that the answer is a statistical statement. Problems, configurations, the
k-diffusion adapter and the peers' virtual environment are ``bench_peers``' (imported).

**Protocol.** Exact Gaussian-mixture targets (``builtin_target``: exact score, zero model error),
float64, VP SDE, NFE 10, 20, 50 (the evaluations counted by a wrapper; a method that cannot meet
``K`` exactly uses the largest budget below it). A **replicate** ``r`` has its own ``x_T`` (shared
by every configuration of that replicate, ours and the peer's), its own solver noise, its own
reference set of ``n`` exact target samples and its own 256 sliced-W2 directions; each run draws
``n = 20000`` samples. Scores of one run ``x``:

- ``sw2``: sliced W2 (``scoresde.metrics.sliced_wasserstein``, 256 directions) of ``x`` to the
  replicate's reference set, as ``bench_peers`` measures it;
- ``abs_logp_gap``: the exact log-density gap $|\frac1n\sum_i \log p(x_i) - \mathbb E_p\log p|$,
  ``p`` the exact target density (``GaussianMixture.log_prob``; the gap ``compare`` reports as
  ``logp_gap``), with $\mathbb E_p \log p$ estimated once from ``--n-entropy`` exact samples (its
  standard error is reported; it is the same constant for every configuration). Its sign
  (``logp_gap``, kept too) says whether the samples are more concentrated (> 0) or more spread
  (< 0) than the target. It is a one-number summary, not a distance (a wrong distribution can
  have gap 0), but far less noisy than SW2 on these targets, so it resolves differences SW2
  cannot;
- ``mean_error``, ``cov_error`` (``scoresde.metrics.mean_cov_errors`` against the exact moments):
  recorded, shown for the selected configurations.

Next to them, through the same scores and replicates: the **noise floor** (an exact set of ``n``
target samples in place of ``x``) and the **perfect solver** (exact samples of $p_{t_\text{end}}$
denoised by the same Tweedie step every sampler ends with).

**Selection without bias.** Every configuration is run on ``--selection`` replicates (seeds of
their own). For each library, budget and metric, the configuration with the lowest mean over the
selection replicates is *selected*; only the selected configurations are run again on
``--evaluation`` **held-out** replicates (other seeds), and only those values enter the verdict.
The in-sample ratio (on the selection replicates, biased towards whichever library has more noisy
configurations) is shown beside it.

**Ratio and verdict.** On the held-out replicates, ours (selected) and the peer (selected) share
``x_T``, reference set and directions per replicate, so their values are paired. The ratio of
means $\bar a/\bar b$ gets a 95% interval by the delta method on the log with the pairing:
$\log(\bar a/\bar b) \pm t_{R-1}\,\mathrm{sd}(a_r/\bar a - b_r/\bar b)/\sqrt R$
(``scoresde.evaluation.stats.paired_difference`` of the normalised values). Verdict: "ours
better" if the interval lies below 1, "peer better" if above 1, else "indistinguishable";
"identical" when both give the same values in every replicate (the same algorithm with the same
noise, see below). Twelve
such intervals are reported (2 targets × 3 budgets × 2 metrics): about one in twenty would
exclude 1 by chance.

**Configurations.** Ours: every registered stochastic solver and option set, on its default grid
and the uniform, quadratic, log-SNR and Karras grids (``bench_peers.ours(True)``; a solver
registered later is included automatically); k-diffusion: its SDE samplers on Karras and
exponential sigmas (``bench_peers.k_configs(True)``). To fit ~35 minutes on a shared 2-core machine,
configurations that were at least ``SCREEN_RATIO`` times worse than the best of both libraries
at *every* (target, NFE) of ``benchmarks/results/peers.md`` (an earlier, independent run:
other seeds) are left out (``SCREENED``, listed in the report; ``--all-configs`` keeps them:
about 3× the time). k-diffusion's DPM-Solver++(2M) SDE and (3M) SDE draw their noise from a
Brownian tree (torchsde, slow on 20000 samples); they only ask it for increments over disjoint
consecutive intervals, whose normalised values are independent standard normals, so by default
they get independent ``torch.randn`` draws instead: the same law of the samples, several times
faster (``--k-noise tree`` uses the tree; the report compares the two on ``--noise-check``
replicates of ``sample_dpmpp_3m_sde`` at NFE 10).
``sample_dpmpp_sde`` (singlestep: overlapping intervals) always keeps the tree. Those iid draws
come from the global generator seeded with the replicate's noise seed, and our solvers draw from a
``torch.Generator`` with the same seed: the same standard normals in the same order (common random
numbers). Where the two libraries implement the same algorithm (our ``dpm_solver_sde`` on the
log-SNR grid and ``sample_dpmpp_2m_sde`` on exponential sigmas; ``solver_order=3`` and
``sample_dpmpp_3m_sde``) their values are therefore equal, which also checks the adapter.

Run (one thread, niced; about 40 minutes on a busy 2-core machine (38 measured))::

    python3 benchmarks/bench_peers_sde.py --setup      # create/reuse benchmarks/.peers-venv, run in it
    benchmarks/.peers-venv/bin/python benchmarks/bench_peers_sde.py
    benchmarks/.peers-venv/bin/python benchmarks/bench_peers_sde.py --quick   # smoke run, ~1 minute

It writes ``benchmarks/results/peers_sde.md``, the raw values ``benchmarks/results/peers_sde.json``
(``--from-raw`` redraws the report from them) and the section between ``<!-- BEGIN peers_sde -->``
and ``<!-- END peers_sde -->`` of ``docs/solvers.md`` (``--no-docs`` skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

if __name__ == "__main__" and "--setup" in sys.argv[1:]:
    # bench_peers makes (or reuses) the peers' environment with any python3, before torch exists
    subprocess.run([sys.executable, str(HERE / "bench_peers.py"), "--setup", "--setup-only"], check=True)
    _py = HERE / ".peers-venv" / "bin" / "python"
    os.execv(str(_py), [str(_py), str(Path(__file__).resolve()),
                        *(a for a in sys.argv[1:] if a != "--setup")])

import torch  # noqa: E402

sys.path.insert(0, str(HERE))
import bench_peers as bp  # noqa: E402  (problems, configurations, the k-diffusion adapter, the venv)

sd = bp.sd
Tensor = torch.Tensor
OUT_MD = bp.RESULTS / "peers_sde.md"
OUT_JSON = bp.RESULTS / "peers_sde.json"
BUDGETS = bp.SDE_BUDGETS
METRICS = ("sw2", "abs_logp_gap")  # the two a verdict is given on
SCORES = (*METRICS, "logp_gap", "mean_error", "cov_error")  # everything recorded per run
METRIC_NAMES = {"sw2": "SW2", "abs_logp_gap": r"\|Δ log p\|"}  # escaped: table cells
LIBRARIES = ("ours", "k-diffusion")
N_PROJECTIONS = 256
LEVEL = 0.95
#: seed offsets of one replicate's generators (replicate r uses offset + r); selection replicates
#: are r = 0.., held-out ones r = EVAL_BASE..
SEEDS = {"x_T": 100_000, "noise": 200_000, "reference": 300_000, "directions": 400_000,
         "floor": 500_000, "perfect": 600_000, "perfect_noise": 700_000}
EVAL_BASE = 10_000
ENTROPY_SEED = 900_000

#: configurations left out by default: label -> the smallest, over both VP targets and NFE 10, 20,
#: 50, of its SW2 / the best SW2 of both libraries in benchmarks/results/peers.md (bench_peers,
#: 2 replicates, seeds 100+r / 1000+r: independent of this script's); dropped when >= SCREEN_RATIO.
#: ``ddim eta=1.0`` is also our ``ancestral`` step for step (equal values to every digit there).
SCREEN_RATIO = 1.5
SCREENED: dict[str, float] = {
    "ancestral [uniform]": 2.70, "ancestral [quadratic]": 1.68, "ancestral [logsnr]": 2.13,
    "ancestral [karras]": 2.58,
    "ddim eta=1.0 [uniform]": 2.70, "ddim eta=1.0 [quadratic]": 1.68, "ddim eta=1.0 [logsnr]": 2.13,
    "ddim eta=1.0 [karras]": 2.58,
    "dpm_solver_sde [uniform]": 3.86, "dpm_solver_sde [karras]": 1.78,
    "dpm_solver_sde solver_order=3 [uniform]": 19.06, "dpm_solver_sde solver_order=3 [karras]": 1.70,
    "euler_maruyama [karras]": 1.61,
    "ggf [uniform]": 1.52, "ggf [quadratic]": 1.52, "ggf [logsnr]": 1.68, "ggf [karras]": 1.64,
    "heun churn=10.0 [uniform]": 1.83, "heun churn=10.0 [quadratic]": 1.98,
    "heun churn=10.0 [logsnr]": 2.03, "heun churn=10.0 [karras]": 2.59,
    "pc [uniform]": 3.32, "pc [quadratic]": 1.73, "pc [logsnr]": 2.05, "pc [karras]": 2.23,
    "torchsde method=euler [uniform]": 2.02,
    "sample_euler_ancestral karras": 2.58, "sample_euler_ancestral exponential": 2.13,
    "sample_dpm_2_ancestral karras": 2.82, "sample_dpm_2_ancestral exponential": 2.13,
    "sample_dpmpp_2s_ancestral karras": 1.74, "sample_dpmpp_2s_ancestral exponential": 1.69,
}
#: k-diffusion samplers whose Brownian-tree noise is only asked for disjoint consecutive intervals
IID_OK = ("sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde")
#: the configuration and budget of the Brownian-tree vs iid noise check
NOISE_CHECK = ("sample_dpmpp_3m_sde exponential", 10)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- configurations


class IidNoiseSampler:
    """Stands in for k-diffusion's ``BrownianTreeNoiseSampler`` (same constructor): an independent
    standard normal of ``x``'s shape per call, from the global generator that
    ``bench_peers.k_config`` seeds. For increments over disjoint intervals, which is all the
    multistep SDE samplers ask for, the tree's normalised values have exactly this law."""

    def __init__(self, x: Tensor, *args: Any, **kwargs: Any) -> None:
        self.x = x

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn_like(self.x)


def with_iid_noise(cfg: bp.Config) -> bp.Config:
    """``cfg`` (a k-diffusion multistep SDE sampler) with `IidNoiseSampler` for its noise."""

    def run(p: bp.Problem, k: int, seed: int) -> tuple[Tensor, int] | None:
        _, ks = bp.import_peers()
        tree = ks.BrownianTreeNoiseSampler
        ks.BrownianTreeNoiseSampler = IidNoiseSampler
        try:
            return cfg.run(p, k, seed)
        finally:
            ks.BrownianTreeNoiseSampler = tree

    return bp.Config(cfg.family, cfg.label, run, cfg.stochastic, cfg.default, cfg.sdes, "iid noise")


def configurations(all_configs: bool, k_noise: str) -> tuple[list[bp.Config], list[str]]:
    """(the configurations run, the labels screened out)."""
    out, dropped = [], []
    for c in bp.ours(True) + bp.k_configs(True):
        if "vp" not in c.sdes:
            continue
        if not all_configs and SCREENED.get(c.label, 0.0) >= SCREEN_RATIO:
            dropped.append(c.label)
            continue
        if k_noise == "iid" and c.family == "k-diffusion" and c.label.split()[0] in IID_OK:
            c = with_iid_noise(c)
        out.append(c)
    return out, dropped


# --------------------------------------------------------------------------- scoring


class Scorer:
    """The scores of sample sets of one target, replicate by replicate."""

    def __init__(self, p: bp.Problem, n: int, n_entropy: int) -> None:
        self.p, self.n, self.gm = p, n, p.gm
        g = gen(ENTROPY_SEED)
        chunks = []
        for start in range(0, n_entropy, 200_000):  # E_p log p from many exact samples
            m = min(200_000, n_entropy - start)
            chunks.append(self.gm.log_prob(self.gm.sample(m, g).to(torch.float64)))
        lp = torch.cat(chunks)
        self.logp_exact = float(lp.mean())
        self.logp_exact_se = float(lp.std()) / math.sqrt(lp.numel())
        self._refs: dict[int, Tensor] = {}

    def reference(self, r: int) -> Tensor:
        if r not in self._refs:
            self._refs = {r: self.gm.sample(self.n, gen(SEEDS["reference"] + r)).to(torch.float64)}
        return self._refs[r]

    def problem(self, r: int) -> bp.Problem:
        """The problem of replicate ``r``: its own ``x_T``."""
        p = self.p
        x_T = p.sde.prior_sample((self.n, p.gm.dim), gen(SEEDS["x_T"] + r), dtype=torch.float64)
        return bp.Problem(p.target, p.sde_name, p.sde, p.model, p.gm, x_T, p.t_end)

    def score(self, x: Tensor, r: int) -> dict[str, float]:
        x = x.detach().to(torch.float64)
        if not bool(torch.isfinite(x).all()):
            return dict.fromkeys(SCORES, math.inf)
        sw = sd.metrics.sliced_wasserstein(x, self.reference(r), n_projections=N_PROJECTIONS,
                                           generator=gen(SEEDS["directions"] + r))
        gap = float(self.gm.log_prob(x).mean()) - self.logp_exact
        mc = sd.metrics.mean_cov_errors(x, self.gm.mean, self.gm.covariance)
        return {"sw2": float(sw), "abs_logp_gap": abs(gap), "logp_gap": gap,
                "mean_error": float(mc["mean_error"]), "cov_error": float(mc["cov_error"])}

    def floor(self, r: int) -> dict[str, float]:
        """An exact sample set through the same scores."""
        return self.score(self.gm.sample(self.n, gen(SEEDS["floor"] + r)), r)

    def perfect(self, r: int) -> dict[str, float]:
        """Exact samples of p_{t_end}, denoised by the Tweedie step every sampler ends with."""
        p = self.p
        x0 = self.gm.sample(self.n, gen(SEEDS["perfect"] + r)).to(torch.float64)
        a, s = p.alpha_sigma(p.t_end)
        noise = torch.randn(x0.shape, generator=gen(SEEDS["perfect_noise"] + r), dtype=torch.float64)
        xt = a * x0 + s * noise
        return self.score(sd.dynamics.tweedie_denoise(p.model, xt, p.t_end), r)


def run_cell(sc: Scorer, c: bp.Config, k: int, reps: list[int]) -> dict[str, Any]:
    """One configuration at budget ``k`` on the replicates ``reps``: {"nfe", "reps"} or
    {"error"} or {"unreachable"}."""
    vals, used = [], None
    for r in reps:
        try:
            out = c.run(sc.problem(r), k, SEEDS["noise"] + r)
        except Exception as e:  # a configuration failing is a result, not a crash
            return {"error": f"{type(e).__name__}: {e}"}
        if out is None:
            return {"unreachable": True}
        x, used = out
        if used > k:
            raise RuntimeError(f"{c.label} used {used} > {k} evaluations")
        vals.append(sc.score(x, r))
    return {"nfe": used, "reps": vals}


# --------------------------------------------------------------------------- statistics


def finite_mean(cell: dict | None, m: str) -> float:
    if not cell or "reps" not in cell:
        return math.nan
    v = [d[m] for d in cell["reps"]]
    return sum(v) / len(v) if all(math.isfinite(x) for x in v) else math.inf


def select(cells: dict, families: dict, lib: str, k: int, m: str) -> str | None:
    """The configuration of ``lib`` with the lowest finite mean of ``m`` at budget ``k``."""
    cands = [(finite_mean(row.get(str(k)), m), lab) for lab, row in cells.items() if families[lab] == lib]
    cands = [c for c in cands if math.isfinite(c[0])]
    return min(cands)[1] if cands else None


def interval(v: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean."""
    if len(v) < 2 or not all(math.isfinite(x) for x in v):
        m = sum(v) / len(v) if v else math.nan
        return m, math.nan, math.nan
    ci = sd.evaluation.stats.t_interval(v, LEVEL)
    return ci.mean, ci.low, ci.high


def paired_ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    r"""(ratio, low, high): $\bar a/\bar b$ and its paired delta-method interval on the log,
    $\pm t_{R-1}\,\mathrm{sd}(a_r/\bar a - b_r/\bar b)/\sqrt R$."""
    if not (a and b) or not all(math.isfinite(x) for x in a + b):
        return math.nan, math.nan, math.nan
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    if ma <= 0 or mb <= 0:
        return math.nan, math.nan, math.nan
    h = sd.evaluation.stats.paired_difference([x / ma for x in a], [x / mb for x in b], LEVEL).half_width
    q = ma / mb
    return q, q * math.exp(-h), q * math.exp(h)


def identical(a: list[float], b: list[float]) -> bool:
    """Equal values in every replicate (to round-off): the same algorithm with the same noise."""
    return bool(a) and len(a) == len(b) and all(
        math.isfinite(x) and abs(x - y) <= 1e-9 * max(abs(x), abs(y)) for x, y in zip(a, b, strict=True))


def verdict(lo: float, hi: float, same: bool = False) -> str:
    if same:
        return "identical"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "—"
    return "ours better" if hi < 1 else "peer better" if lo > 1 else "indistinguishable"


# --------------------------------------------------------------------------- the run


def measure(target: str, args: argparse.Namespace, configs: list[bp.Config], t0: float) -> dict:
    """Everything measured on one target: raw values per phase."""
    p = bp.make_problem(target, "vp", args.n, 0, reference=False)
    sc = Scorer(p, args.n, args.n_entropy)
    sel_reps = list(range(args.selection))
    ev_reps = [EVAL_BASE + i for i in range(args.evaluation)]
    res: dict[str, Any] = {"logp_exact": sc.logp_exact, "logp_exact_se": sc.logp_exact_se,
                           "selection_reps": sel_reps, "evaluation_reps": ev_reps,
                           "floor": [sc.floor(r) for r in ev_reps],
                           "perfect": [sc.perfect(r) for r in ev_reps],
                           "selection": {}, "evaluation": {}, "selected": {}}

    def log(msg: str) -> None:
        print(f"  [{time.time() - t0:5.0f} s] {target}: {msg}", file=sys.stderr, flush=True)

    by_label = {c.label: c for c in configs}
    for c in configs:  # selection phase: every configuration
        row = res["selection"].setdefault(c.label, {})
        for k in args.budgets:
            row[str(k)] = run_cell(sc, c, k, sel_reps)
            if "error" in row[str(k)] or "unreachable" in row[str(k)]:
                break  # the same at every budget
        log(f"selection {c.label}")
    families = {c.label: c.family for c in configs}
    for k in args.budgets:  # held-out phase: the selected configurations only
        chosen = {}
        for lib in LIBRARIES:
            for m in METRICS:
                chosen[f"{lib}|{m}"] = select(res["selection"], families, lib, k, m)
        res["selected"][str(k)] = chosen
        for lab in dict.fromkeys(v for v in chosen.values() if v):
            res["evaluation"].setdefault(lab, {})[str(k)] = run_cell(sc, by_label[lab], k, ev_reps)
            log(f"held-out NFE {k} {lab}")
    lab, k = NOISE_CHECK
    if args.noise_check and lab in by_label and by_label[lab].note == "iid noise":
        reps = [EVAL_BASE + i for i in range(args.noise_check)]  # the held-out ones, and more
        tree = bp.k_config(*lab.split())
        res["noise_check"] = {"label": lab, "nfe": k, "iid": run_cell(sc, by_label[lab], k, reps),
                              "tree": run_cell(sc, tree, k, reps)}
        log("noise check")
    return res


# --------------------------------------------------------------------------- report


def fmt_ci(v: list[float], digits: int = 2) -> str:
    m, lo, hi = interval(v)
    if not math.isfinite(m):
        return "diverged" if m == math.inf else "—"
    s = f"{m:.{digits}e}"
    return s + (f" [{lo:.{digits}e}, {hi:.{digits}e}]" if math.isfinite(lo) else "")


def fmt_ratio(q: float, lo: float, hi: float) -> str:
    if not math.isfinite(q):
        return "—"
    return f"{q:.2f} [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else f"{q:.2f}"


def values(cell: dict | None, m: str) -> list[float]:
    return [d[m] for d in cell["reps"]] if cell and "reps" in cell else []


def nfe_note(cell: dict | None, k: int) -> str:
    return f" ({cell['nfe']})" if cell and cell.get("nfe") not in (None, k) else ""


def verdict_rows(data: dict, k: int, m: str) -> dict[str, Any]:
    """The held-out comparison of the two selected configurations at budget ``k`` on metric ``m``."""
    chosen = data["selected"][str(k)]
    ours_lab, peer_lab = chosen[f"ours|{m}"], chosen[f"k-diffusion|{m}"]
    ours_cell = data["evaluation"].get(ours_lab, {}).get(str(k)) if ours_lab else None
    peer_cell = data["evaluation"].get(peer_lab, {}).get(str(k)) if peer_lab else None
    a, b = values(ours_cell, m), values(peer_cell, m)
    q, lo, hi = paired_ratio(a, b)
    sa = values(data["selection"].get(ours_lab, {}).get(str(k)), m) if ours_lab else []
    sb = values(data["selection"].get(peer_lab, {}).get(str(k)), m) if peer_lab else []
    biased = (sum(sa) / len(sa)) / (sum(sb) / len(sb)) if sa and sb and sum(sb) > 0 else math.nan
    return {"ours": ours_lab, "peer": peer_lab, "a": a, "b": b, "ratio": (q, lo, hi),
            "verdict": verdict(lo, hi, identical(a, b)), "in_sample": biased,
            "ours_cell": ours_cell, "peer_cell": peer_cell}


def provenance(argv: list[str]) -> str:
    from importlib.metadata import version
    cmd = bp.shown_command("benchmarks/bench_peers_sde.py", argv)
    return (f"Reproduce: `{cmd}` in `benchmarks/.peers-venv` (`python3 benchmarks/bench_peers_sde.py "
            f"--setup` creates it). scoresde {sd.__version__}, torch {torch.__version__}, k-diffusion "
            f"{version('k-diffusion')}, {platform.machine()}, {torch.get_num_threads()} thread(s), "
            f"{time.strftime('%Y-%m-%d')}.")


def protocol(a: dict) -> str:
    return (f"Exact targets under VP, float64, exact scores; each run draws {a['n']} samples. "
            f"Every configuration on {a['selection']} selection replicates; per library, budget and "
            f"metric the configuration with the lowest selection mean is run on {a['evaluation']} "
            "**held-out** replicates (other $x_T$, noise, reference sets and directions), and only "
            "those values are compared: ours / peer = ratio of held-out means with its paired 95% "
            "interval (delta method on the log, Student $t$). SW2: sliced W2 (256 directions) to "
            f"{a['n']} exact samples; \\|Δ log p\\|: $|\\frac1n\\sum_i\\log p(x_i) - \\mathbb E_p\\log p|$ "
            "with the exact target density $p$. Floor: exact samples through the same scores; "
            "perfect: exact samples of $p_{t_\\text{end}}$ denoised by the same Tweedie step.")


def floors_table(data: dict, n_entropy: int) -> list[str]:
    fl, pf = data["floor"], data["perfect"]
    rows = [f"| {name} | " + " | ".join(fmt_ci([d[m] for d in vals]) for m in SCORES) + " |"
            for name, vals in (("noise floor (exact samples)", fl), ("perfect solver", pf))]
    return [f"$\\mathbb E_p \\log p$ = {data['logp_exact']:.4f} ± {data['logp_exact_se']:.0e} "
            f"(standard error; {n_entropy} exact samples). Means [95% CI] over the "
            f"{len(fl)} held-out replicates:", "",
            r"| | SW2 | \|Δ log p\| | Δ log p (signed) | mean error | cov error |",
            "| --- | ---: | ---: | ---: | ---: | ---: |", *rows, ""]


def heldout_table(data: dict, budgets: list[int]) -> tuple[list[str], dict]:
    """The held-out comparison rows of one target, and its verdict cells by (budget, metric)."""
    out = ["Held-out comparison of the selected configurations (in-sample: the same ratio on the "
           "selection replicates the configurations were chosen on, biased):", "",
           "| NFE | metric | ours (selected) | held-out | k-diffusion (selected) | held-out | "
           "ours / peer [95% CI] | verdict | in-sample |",
           "| ---: | --- | --- | ---: | --- | ---: | ---: | --- | ---: |"]
    cells = {}
    for k in budgets:
        for m in METRICS:
            v = cells[(k, m)] = verdict_rows(data, k, m)
            ours = f"`{v['ours']}`{nfe_note(v['ours_cell'], k)}"
            peer = f"`{v['peer']}`{nfe_note(v['peer_cell'], k)}"
            biased = f"{v['in_sample']:.2f}" if math.isfinite(v["in_sample"]) else "—"
            out.append(f"| {k} | {METRIC_NAMES[m]} | {ours} | {fmt_ci(v['a'])} | {peer} | {fmt_ci(v['b'])} | "
                       f"{fmt_ratio(*v['ratio'])} | {v['verdict']} | {biased} |")
    return out + [""], cells


def moments_table(data: dict, budgets: list[int]) -> list[str]:
    out = ["Moments of the selected configurations (held-out means [95% CI]; Δ log p > 0: more "
           "concentrated than the target, < 0: more spread):", "",
           "| NFE | configuration | Δ log p | mean error | cov error |",
           "| ---: | --- | ---: | ---: | ---: |"]
    for k in budgets:
        for lab, row in data["evaluation"].items():
            cell = row.get(str(k))
            if cell and "reps" in cell:
                out.append(f"| {k} | `{lab}` | " + " | ".join(
                    fmt_ci(values(cell, m)) for m in ("logp_gap", "mean_error", "cov_error")) + " |")
    return out + [""]


def noise_check(data: dict) -> list[str]:
    nc = data.get("noise_check")
    if not nc or "reps" not in nc["iid"] or "reps" not in nc["tree"]:
        return []
    out = [f"Noise check, `{nc['label']}` at NFE {nc['nfe']} on {len(nc['tree']['reps'])} replicates (the "
           "held-out ones first): k-diffusion's Brownian tree minus the iid draws used here (paired "
           "difference [95% CI], p-value):", ""]
    for m in METRICS:
        tree, iid = values(nc["tree"], m), values(nc["iid"], m)
        d = sd.evaluation.stats.paired_difference(tree, iid, LEVEL)
        out.append(f"- {METRIC_NAMES[m]}: tree {fmt_ci(tree)}, iid {fmt_ci(iid)}; difference "
                   f"{d.mean:.2e} [{d.low:.2e}, {d.high:.2e}], p = {d.p_value:.2f}")
    return out + [""]


def selection_table(data: dict, families: dict, budgets: list[int], target: str) -> list[str]:
    out = [f"<details><summary>Every configuration on the selection replicates, {target}</summary>", "",
           "Mean over the selection replicates, SW2 / |Δ log p| (bold: selected for that library, "
           "budget and metric; in parentheses the NFE used when below the budget).", "",
           "| library | configuration | " + " | ".join(f"NFE {k}" for k in budgets) + " |",
           "| --- | --- |" + " ---: |" * len(budgets)]
    chosen = {(k, lab) for k in budgets for lab in data["selected"][str(k)].values()}
    fails = {}
    for lab, row in sorted(data["selection"].items(), key=lambda kv: (families[kv[0]] != "ours", kv[0])):
        cells = []
        for k in budgets:
            cell = row.get(str(k))
            if cell and "error" in cell:
                fails[lab] = cell["error"]
                cells.append("failed")
            elif not cell or "reps" not in cell:
                cells.append("—")
            else:
                s = " / ".join(f"{finite_mean(cell, m):.2e}" for m in METRICS) + nfe_note(cell, k)
                cells.append(f"**{s}**" if (k, lab) in chosen else s)
        out.append(f"| {families[lab]} | `{lab}` | " + " | ".join(cells) + " |")
    if fails:
        out += ["", "Failed: " + "; ".join(f"`{lab}`: {e}" for lab, e in fails.items())]
    return out + ["", "</details>", ""]


def readings(cells: dict[tuple[str, int, str], dict]) -> list[str]:
    """One line per verdict kind: which cells, and which configurations decided them."""
    out = []
    for kind in ("ours better", "peer better", "identical", "indistinguishable"):
        hits = [f"{t} NFE {k} {METRIC_NAMES[m]} (`{v['ours']}` vs `{v['peer']}`)"
                for (t, k, m), v in cells.items() if v["verdict"] == kind]
        if hits:
            out.append(f"- {kind}: " + "; ".join(hits) + ".")
    return out


def report(raw: dict, argv: list[str]) -> tuple[str, str]:
    """(the results markdown, the docs section)."""
    a = raw["args"]
    budgets = a["budgets"]
    prov = raw.get("provenance") or provenance(argv)
    md = ["# Stochastic samplers against k-diffusion: replicates, held-out selection, intervals", "",
          "Written by `benchmarks/bench_peers_sde.py` (its docstring has the full protocol). "
          + protocol(a), ""]
    summary = [r"| target | NFE | SW2: ours / peer [95% CI] | verdict | \|Δ log p\|: ours / peer [95% CI] "
               "| verdict |", "| --- | ---: | ---: | --- | ---: | --- |"]
    everything = {}
    for target, data in raw["problems"].items():
        held, cells = heldout_table(data, budgets)
        everything.update({(target, k, m): v for (k, m), v in cells.items()})
        md += [f"## {target}, vp", "", *floors_table(data, a["n_entropy"]), *held,
               *moments_table(data, budgets), *noise_check(data),
               *selection_table(data, raw["families"], budgets, target)]
        for k in budgets:
            s, g = cells[(k, "sw2")], cells[(k, "abs_logp_gap")]
            summary.append(f"| {target} | {k} | {fmt_ratio(*s['ratio'])} | {s['verdict']} | "
                           f"{fmt_ratio(*g['ratio'])} | {g['verdict']} |")
    dropped = ", ".join(f"`{lab}` ({SCREENED[lab]:.2f})" for lab in raw.get("dropped", [])) or "none"
    md += ["## Verdicts", "", *summary, "", *readings(everything), "",
           f"Configurations left out (at least {SCREEN_RATIO}× the best SW2 of both libraries at every "
           "target and budget in `benchmarks/results/peers.md`, an independent earlier run; "
           f"`--all-configs` keeps them): {dropped}.", "",
           f"k-diffusion noise: {a['k_noise']} for the multistep SDE samplers "
           "(`sample_dpmpp_2m_sde`, `sample_dpmpp_3m_sde`); the tree for `sample_dpmpp_sde`. "
           f"Run time {raw.get('seconds', math.nan) / 60:.0f} minutes.", "", prov, ""]
    docs = ["### Stochastic samplers, with replicates and held-out selection", "",
            "The stochastic rows above are minima over many noisy configurations, two replicates each. "
            "`benchmarks/bench_peers_sde.py` asks again: every configuration on "
            f"{a['selection']} selection replicates, the selected one of each library (per budget and "
            f"metric) re-run on {a['evaluation']} held-out replicates, and a paired 95% interval for the "
            f"ratio of held-out means, on sliced W2 and on the exact log-density gap "
            f"$|\\mathbb E_q\\log p - \\mathbb E_p\\log p|$ (n = {a['n']}, VP; protocol in its "
            "docstring):", "", *summary, "", *readings(everything), "",
            "\"Identical\": the two libraries implement the same algorithm there (our `dpm_solver_sde` on "
            "the log-SNR grid and `sample_dpmpp_2m_sde` on exponential sigmas; `solver_order=3` and "
            "`sample_dpmpp_3m_sde`) and are given the same standard normals.", "",
            "Full tables (the selected configurations, every configuration's selection means, floors, "
            "moments, the noise check): `benchmarks/results/peers_sde.md`.", "", prov]
    return "\n".join(md), "\n".join(docs)


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", action="store_true",
                    help="create or reuse benchmarks/.peers-venv (bench_peers.py --setup), then run in it")
    ap.add_argument("--n", type=int, default=20000, help="samples per run")
    ap.add_argument("--selection", type=int, default=5, help="replicates every configuration is run on")
    ap.add_argument("--evaluation", type=int, default=8, help="held-out replicates of the selected ones")
    ap.add_argument("--n-entropy", type=int, default=2_000_000, help="exact samples for E_p log p")
    ap.add_argument("--targets", nargs="+", default=list(bp.TARGETS))
    ap.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    ap.add_argument("--all-configs", action="store_true", help="do not leave out the SCREENED ones")
    ap.add_argument("--k-noise", choices=("iid", "tree"), default="iid",
                    help="noise of k-diffusion's multistep SDE samplers (same law; iid is faster)")
    ap.add_argument("--noise-check", type=int, default=16,
                    help="replicates of the Brownian-tree vs iid noise check (0: skip it)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: n=2000, 3+3 replicates, eight_gaussians")
    ap.add_argument("--raw", type=Path, default=None, help=f"raw values (JSON; default {OUT_JSON.name})")
    ap.add_argument("--from-raw", type=Path, help="only redraw the report from saved raw values")
    ap.add_argument("--out", type=Path, default=OUT_MD)
    ap.add_argument("--no-docs", action="store_true", help="do not write the docs/solvers.md section")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    for name in ("n", "selection", "evaluation", "n_entropy", "threads"):
        if getattr(args, name) < (2 if name in ("n", "selection", "evaluation") else 1):
            ap.error(f"--{name.replace('_', '-')} is too small")
    if args.quick:
        args.n, args.selection, args.evaluation, args.n_entropy, args.noise_check = 2000, 3, 3, 200_000, 3
        args.targets = ["eight_gaussians"]
        if args.out == OUT_MD:
            args.out = Path(tempfile.gettempdir()) / "peers_sde_quick.md"
        args.no_docs = True
    raw_path = args.raw or (OUT_JSON if args.out == OUT_MD else args.out.with_suffix(".json"))
    torch.set_num_threads(args.threads)
    bp.import_peers()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.from_raw:
        raw = json.loads(args.from_raw.read_text())
    else:
        configs, dropped = configurations(args.all_configs, args.k_noise)
        print(f"{len(configs)} configurations ({len(dropped)} left out), targets {args.targets}",
              file=sys.stderr, flush=True)
        t0 = time.time()
        problems = {t: measure(t, args, configs, t0) for t in args.targets}
        raw = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "families": {c.label: c.family for c in configs}, "dropped": dropped,
               "problems": problems, "seconds": time.time() - t0, "provenance": provenance(argv)}
        raw_path.parent.mkdir(parents=True, exist_ok=True)
        bp.write_atomic(raw_path, json.dumps(raw, indent=1) + "\n")
    md, docs = report(raw, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bp.write_atomic(args.out, md + "\n")
    if not args.no_docs:
        bp.write_section(bp.SOLVERS_MD, "peers_sde", docs)
    print(docs)


if __name__ == "__main__":
    if hasattr(os, "nice"):
        os.nice(5)  # a benchmark on a shared machine
    main(sys.argv[1:])
