"""Statistics of comparisons: interval coverage on synthetic data, Holm, the ranking rule, and
the engine's verdicts, flags, pathwise errors, budgets and grids on exact targets."""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.evaluation import stats
from scoresde.evaluation.compare import Comparison, Target, builtin_target, compare

NOMINAL = 0.95
TRIALS = 200
# the coverage of TRIALS independent intervals is Binomial(TRIALS, 0.95)/TRIALS: allow 3 s.e.
SLACK = 3 * math.sqrt(NOMINAL * (1 - NOMINAL) / TRIALS)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def covered(hits: list[bool]) -> float:
    rate = sum(hits) / len(hits)
    assert abs(rate - NOMINAL) <= SLACK, f"coverage {rate:.3f} not within {NOMINAL} ± {SLACK:.3f}"
    return rate


# ----- the statistics functions on synthetic data ----------------------------------------
def test_t_interval_covers_the_true_mean_at_the_nominal_rate():
    # a known-variance toy statistic: R = 5 replicate values ~ N(mu, sigma^2)
    g, mu, sigma = gen(0), 1.7, 0.3
    hits = []
    for _ in range(TRIALS):
        v = (mu + sigma * torch.randn(5, generator=g, dtype=torch.float64)).tolist()
        hits.append(stats.t_interval(v).contains(mu))
    covered(hits)
    ci = stats.t_interval([1.0, 2.0, 3.0])
    # mean 2, s = 1, se = 1/sqrt(3), t_{0.975, 2} = 4.302653
    assert ci.mean == 2.0 and ci.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_paired_difference_covers_the_true_difference_and_is_sharper_than_unpaired():
    # paired values share a large replicate effect (x_T and reference set): a_r - b_r cancels it
    g, delta = gen(1), 0.05
    hits, ratio = [], []
    for _ in range(TRIALS):
        shared = torch.randn(5, generator=g, dtype=torch.float64)
        a = (1.0 + delta + shared + 0.02 * torch.randn(5, generator=g, dtype=torch.float64))
        b = (1.0 + shared + 0.02 * torch.randn(5, generator=g, dtype=torch.float64))
        d = stats.paired_difference(a.tolist(), b.tolist())
        hits.append(d.contains(delta))
        ratio.append(d.half_width / stats.welch_difference(a.tolist(), b.tolist()).half_width)
    covered(hits)
    assert max(ratio) < 0.2          # pairing removes the shared part


def test_welch_and_fieller_cover_at_the_nominal_rate():
    g = gen(2)
    hits_d, hits_r = [], []
    for _ in range(TRIALS):
        a = (2.0 + 0.4 * torch.randn(5, generator=g, dtype=torch.float64)).tolist()
        b = (1.0 + 0.1 * torch.randn(10, generator=g, dtype=torch.float64)).tolist()
        hits_d.append(stats.welch_difference(a, b).contains(1.0))
        _, lo, hi = stats.ratio_interval(a, b)
        hits_r.append(lo <= 2.0 <= hi)
    covered(hits_d)
    covered(hits_r)


def test_fieller_excludes_one_exactly_when_welch_excludes_zero():
    g = gen(3)
    for _ in range(100):
        a = (1.0 + 0.3 * torch.randn(5, generator=g, dtype=torch.float64)).tolist()
        b = (1.2 + 0.3 * torch.randn(8, generator=g, dtype=torch.float64)).tolist()
        d = stats.welch_difference(a, b)
        _, lo, hi = stats.ratio_interval(a, b)
        assert (lo <= 1.0 <= hi) == d.contains(0.0)


def test_holm_adjusted_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        stats.holm([1.5])


def test_degenerate_differences_and_bad_input():
    same = stats.paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.mean == 0.0 and same.p_value == 1.0 and same.low == same.high == 0.0
    shifted = stats.paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert shifted.p_value == 0.0 and not shifted.contains(0.0)
    with pytest.raises(ValueError, match="at least 2"):
        stats.t_interval([1.0])
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(TypeError):
        stats.t_interval([1.0, 2.0], level="high")
    with pytest.raises(ValueError):
        stats.t_interval([1.0, 2.0], level=1.0)


def test_ranking_rule_claims_best_only_with_a_significant_paired_difference():
    g = gen(4)
    shared = 0.3 * torch.randn(5, generator=g, dtype=torch.float64)
    noise = [0.01 * torch.randn(5, generator=g, dtype=torch.float64) for _ in range(3)]
    clear = stats.compare_to_leader({"a": (1.0 + shared + noise[0]).tolist(),
                                     "b": (1.2 + shared + noise[1]).tolist(),
                                     "c": (1.5 + shared + noise[2]).tolist()})
    assert clear.best == "a" and clear.others == ["b", "c"] and clear.text() == "a best"
    tied = stats.compare_to_leader({"a": (1.0 + shared + noise[0]).tolist(),
                                    "b": (1.0 + shared + noise[1]).tolist(),
                                    "c": (1.5 + shared + noise[2]).tolist()})
    assert tied.best is None and set(tied.group) == {"a", "b"} and tied.others == ["c"]
    assert "indistinguishable" in tied.text()
    # a consistent but tiny difference counts only above the margin (the resolution)
    tiny = {"a": (1.0 + shared).tolist(), "b": (1.0 + 1e-6 + shared).tolist()}
    assert stats.compare_to_leader(tiny).best == "a"
    assert stats.compare_to_leader(tiny, margin=1e-5).best is None


# ----- the engine --------------------------------------------------------------------------
def _gaussian_target(shrink: float = 1.0) -> Target:
    """A 2-D Gaussian target; the model is the exact score of the target shrunk by `shrink`
    towards its mean, so its samples are under-dispersed by that factor."""
    mean = torch.tensor([[0.5, -0.3]], dtype=torch.float64)
    cov = torch.tensor([[[1.0, 0.3], [0.3, 0.6]]], dtype=torch.float64)
    gm = sd.analytic.GaussianMixture(torch.ones(1), mean, cov)
    shrunk = sd.analytic.GaussianMixture(torch.ones(1), mean, shrink ** 2 * cov)
    return Target("gaussian", shrunk.as_model(sd.VPSDE()), lambda n, g: gm.sample(n, g), gm,
                  f"N(m, C), model shrunk by {shrink}")


def test_under_dispersed_sampler_is_flagged_and_an_exact_one_is_not():
    kw = dict(n=1000, replicates=5, floor_repeats=8, progress=False, pathwise=False)
    bad = compare(_gaussian_target(0.9), ["dpm_solver"], [50], **kw).cell("dpm_solver", 50)
    assert "concentrated" in bad["flags"] and "narrow" in bad["flags"]
    assert bad["logp_gap_lo"] > 0 and bad["var_ratio_hi"] < 1
    assert bad["var_ratio"] == pytest.approx(0.81, abs=0.05)
    good = compare(_gaussian_target(1.0), ["dpm_solver"], [50], **kw).cell("dpm_solver", 50)
    assert good["flags"] == [] and good["logp_gap_lo"] < 0 < good["logp_gap_hi"]


def test_best_is_withheld_for_the_same_solver_under_two_names():
    comp = compare(builtin_target("mixture2d"), ["ddim", "ddim:eta=0.0", "euler_maruyama"],
                   [8], n=300, replicates=3, floor_repeats=3, progress=False, pathwise=False)
    assert comp.values("ddim", 8) == comp.values("ddim[eta=0.0]", 8)
    v = comp.verdicts()[8]
    assert {"ddim", "ddim[eta=0.0]"} <= set(v.group) and v.best is None
    assert 8 not in comp.winners()
    assert "indistinguishable" in comp.verdict_line()


def test_pathwise_error_is_zero_for_the_reference_solver_against_itself():
    spec = "pf_ode:adaptive=1,rtol=1e-6,atol=1e-6"
    comp = compare(builtin_target("mixture2d"), [spec, "ddim", "euler_maruyama"], [10],
                   n=100, replicates=2, floor_repeats=2, reference_tol=1e-6, progress=False)
    assert comp.reference is not None and comp.reference["solver"] == "reference"
    assert comp.values(comp.rows[0]["solver"], None, "pathwise") == [0.0, 0.0]
    assert comp.cell("ddim", 10)["pathwise"] > 1e-3                   # a coarse solver
    assert "pathwise" not in comp.cell("euler_maruyama", 10)           # stochastic: none
    # the reference's accuracy (against a 10x tighter solve) is the verdicts' margin
    acc = comp.score_floors["pathwise"]["mean"]
    assert 0 < acc < 1e-3 and comp.margin("pathwise") == acc and comp.margin("sw2") == 0.0


def test_at_most_budgets_fill_every_column_and_record_the_nfe_used():
    budgets = [9, 20]
    comp = compare(builtin_target("mixture2d"), None, budgets, n=50, replicates=2,
                   floor_repeats=2, progress=False, pathwise=False)
    for r in comp.rows:
        assert r["status"] == "ok", r
        if r["budget"] is not None:
            slv = sd.evaluation.specs.SolverSpec.parse(r["name"]).make() if r["options"] == "{}" \
                else None
            assert r["nfe"] <= r["budget"]
            if slv is not None:        # the largest budget <= K the solver can meet
                assert r["nfe"] == slv.nfe_for_steps(slv.steps_within(r["budget"], 1)) + 1
    assert "—" not in comp.headline()
    exact = compare(builtin_target("mixture2d"), ["heun"], [9], n=50, replicates=2,
                    floor_repeats=2, progress=False, pathwise=False, budget_mode="exact")
    assert exact.rows[0]["status"] == "unreachable" and "—" in exact.headline()


def test_grid_axis_runs_each_solver_on_each_grid():
    comp = compare(builtin_target("mixture2d"), ["ddim", "dpm_solver:grid=uniform"], [10],
                   grids=["uniform", "logsnr"], n=60, replicates=2, floor_repeats=2,
                   progress=False, pathwise=False)
    labels = [r["solver"] for r in comp.rows]
    assert labels == ["ddim[grid=uniform]", "ddim[grid=logsnr]", "dpm_solver[grid=uniform]"]
    assert [r["grid_used"] for r in comp.rows] == ["uniform", "logsnr", "uniform"]
    table = comp.grid_tables()
    assert "| ddim |" in table and "uniform | logsnr" in table
    with pytest.raises(ValueError, match="unknown grid"):
        compare(builtin_target("mixture2d"), ["ddim"], [10], grids=["nope"], n=60,
                replicates=2, progress=False)


def test_a_saved_comparison_reloads_with_the_same_tables(tmp_path):
    comp = compare(builtin_target("mixture2d"), ["ddim", "dpm_solver"], [6, 12], n=60,
                   replicates=3, floor_repeats=2, progress=False, out_dir=tmp_path / "c")
    back = Comparison.load(tmp_path / "c")
    for metric in ("sw2", "pathwise", "avg_logp", "ksd"):
        assert back.headline(metric) == comp.headline(metric)
        assert back.verdict_line(metric) == comp.verdict_line(metric)
    assert back.difference_table() == comp.difference_table()
    # report.md redrawn from the saved results alone is the one the run wrote
    from scoresde.evaluation.report import write_markdown
    from scoresde.evaluation.specs import SolverSpec

    first = (tmp_path / "c" / "report.md").read_text()
    write_markdown(back, [SolverSpec.parse(s) for s in ("ddim", "dpm_solver")])
    assert (tmp_path / "c" / "report.md").read_text() == first
    with pytest.raises(ValueError, match="results.json"):
        Comparison.load(tmp_path)


def test_replicates_are_paired_and_reproducible():
    kw = dict(n=80, replicates=3, floor_repeats=2, progress=False, pathwise=False)
    a = compare(builtin_target("mixture2d"), ["ddim", "euler_maruyama"], [6], seed=5, **kw)
    b = compare(builtin_target("mixture2d"), ["euler_maruyama"], [6], seed=5, **kw)
    assert isinstance(a, Comparison)
    # the same seed gives the same values, whatever else is compared
    assert a.values("euler_maruyama", 6) == b.values("euler_maruyama", 6)
    vals = a.values("ddim", 6)
    assert len(vals) == 3 and len(set(vals)) == 3           # fresh x_T and reference each
    with pytest.raises(ValueError, match="distinct"):
        compare(builtin_target("mixture2d"), ["ddim", "ddim"], [6], **kw)
    with pytest.raises(ValueError, match="replicates"):
        compare(builtin_target("mixture2d"), ["ddim"], [6], n=80, replicates=1)
    with pytest.raises(ValueError, match="budget_mode"):
        compare(builtin_target("mixture2d"), ["ddim"], [6], n=80, budget_mode="roughly")
