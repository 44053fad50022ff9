"""Per-sample noise (sample(..., seed=)) and evaluation sharded over processes.

The counter-based generator against a pure-Python reference and for its statistics; sample i
the same at any batch size and offset; and two gloo processes under torchrun (one launch,
several checks) giving bit for bit the single-process results of `sample_sharded`,
`log_likelihood_sharded`, `compare(shard=True)` and the CLI's `sample`.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle import ExactStatistics, gen

import scoresde as sd
from scoresde import cli
from scoresde.evaluation.sharding import chunks_of_rank
from scoresde.rng import PerSampleNoise, cos_sin_turns, log_f64, splitmix64, splitmix64_reference
from scoresde.training.distributed import run_on_every_rank

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


# ----- the counter-based generator ---------------------------------------------------------
def test_splitmix64_matches_the_python_reference_bit_for_bit():
    rnd = random.Random(0)
    vals = [0, 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1] + [rnd.getrandbits(64) for _ in range(2000)]
    t = torch.tensor([v - 2 ** 64 if v >= 2 ** 63 else v for v in vals], dtype=torch.int64)
    got = [v % 2 ** 64 for v in splitmix64(t).tolist()]
    assert got == [splitmix64_reference(v) for v in vals]
    with pytest.raises(TypeError, match="int64"):
        splitmix64(t.to(torch.float64))


def test_elementary_functions_are_accurate():
    g = gen(0)
    u = torch.rand(200_000, generator=g, dtype=F64).clamp_min(1e-300)
    u[:3] = torch.tensor([2.0 ** -53, 1.0 - 2.0 ** -53, 1.0], dtype=F64)
    err = (log_f64(u) - torch.log(u)).abs() / torch.log(u).abs().clamp_min(1e-300)
    assert float(err[u != 1.0].max()) < 2e-15 and float(log_f64(u)[2]) == 0.0
    w = torch.floor(torch.rand(200_000, generator=g, dtype=F64) * 2 ** 53) * 2.0 ** -53
    c, s = cos_sin_turns(w)
    assert float((c - torch.cos(2 * math.pi * w)).abs().max()) < 2e-15
    assert float((s - torch.sin(2 * math.pi * w)).abs().max()) < 2e-15


def _norm_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def test_normals_have_the_right_distribution():
    n = 400_000
    z = PerSampleNoise(11).normal((n // 4, 4), 3, dtype=F64).reshape(-1)   # rows x elements
    se = 1 / math.sqrt(n)
    assert abs(float(z.mean())) < 4 * se
    assert abs(float(z.var()) - 1) < 4 * math.sqrt(2) * se                  # var of s^2: 2/n
    assert abs(float((z ** 3).mean())) < 4 * math.sqrt(15) * se
    assert abs(float((z ** 4).mean()) - 3) < 4 * math.sqrt(96) * se
    p3 = 2 * float(_norm_cdf(torch.tensor(-3.0, dtype=F64)))
    assert abs(float((z.abs() > 3).double().mean()) - p3) < 4 * math.sqrt(p3 * (1 - p3) / n)
    zs = z.sort().values                                   # Kolmogorov-Smirnov at 0.1%
    emp = torch.arange(1, n + 1, dtype=F64) / n
    assert float((_norm_cdf(zs) - emp).abs().max()) < 1.95 / math.sqrt(n)


def test_consecutive_counters_are_uncorrelated():
    """Within 4 standard errors: consecutive samples, draws, elements (within a Box-Muller
    pair and across pairs), seeds -- and their squares (a dependence through the radius)."""
    m = 100_000
    a = PerSampleNoise(5).normal((m, 4), 1, dtype=F64)
    b = PerSampleNoise(5).normal((m, 4), 2, dtype=F64)
    c = PerSampleNoise(6).normal((m, 4), 1, dtype=F64)
    pairs = {"rows i, i+1": (a[:-1, 0], a[1:, 0]), "draws k, k+1": (a[:, 0], b[:, 0]),
             "elements of a pair": (a[:, 0], a[:, 1]), "elements across pairs": (a[:, 1], a[:, 2]),
             "seeds s, s+1": (a[:, 0], c[:, 0])}
    for what, (u, v) in pairs.items():
        for f in (lambda x: x, lambda x: x * x):
            r = float(torch.corrcoef(torch.stack([f(u), f(v)]))[0, 1])
            assert abs(r) < 4 / math.sqrt(u.shape[0]), (what, r)
    r = PerSampleNoise(5).rademacher((m, 2), 4, dtype=F64)
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(r.mean())) < 4 / math.sqrt(2 * m)
    assert abs(float((r[:-1, 0] * r[1:, 0]).mean())) < 4 / math.sqrt(m)


def test_rows_depend_on_seed_index_and_draw_only():
    noise = PerSampleNoise(3)
    full = noise.normal((1000, 3, 2), 7, dtype=F64)
    part = PerSampleNoise(3, 123).normal((333, 3, 2), 7, dtype=F64)
    assert torch.equal(full[123:456], part) and torch.equal(noise.shifted(123).normal(
        (333, 3, 2), 7, dtype=F64), part)
    assert torch.equal(noise.normal((1000, 3, 2), 7, dtype=torch.float32), full.float())
    assert not torch.equal(noise.normal((5, 6), 8, dtype=F64), noise.normal((5, 6), 7, dtype=F64))
    with pytest.raises(ValueError, match="seed"):
        PerSampleNoise(-1)
    with pytest.raises(ValueError, match="seed"):
        PerSampleNoise(2 ** 63)
    with pytest.raises(TypeError, match="seed"):
        PerSampleNoise(True)
    with pytest.raises(ValueError, match="draw"):
        noise.normal((2, 2), -1)


# ----- sample(..., seed=) --------------------------------------------------------------------
SDE = sd.VPSDE()
MU, V = 0.5, 0.49


def _gaussian_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact score of N(MU, V I) under the VP-SDE, elementwise: every row is computed
    alone, so a row's result cannot depend on the batch it is in."""
    t = torch.as_tensor(t, dtype=x.dtype)
    t = t.expand(x.shape[0]) if t.dim() == 0 else t
    a, s = SDE.alpha(t)[:, None], SDE.sigma(t)[:, None]
    return -(x - a * MU) / (a * a * V + s * s)


ELEMENTWISE = sd.ScoreModel.from_score_fn(_gaussian_score, SDE)
SOLVERS = [("ddim", {}, 6), ("ddim", {"eta": 1.0}, 6), ("euler_maruyama", {}, 6),
           ("ancestral", {}, 6), ("dpm_solver_sde", {}, 6), ("sa_solver", {}, 6)]


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize(("solver", "opts", "nfe"), SOLVERS, ids=lambda v: str(v))
def test_sample_i_is_the_same_at_batch_sizes_7_64_1000(solver, opts, nfe):
    n, ev = 1000, (3,)
    full = sd.sample(ELEMENTWISE, (n, *ev), solver, nfe, seed=7, **opts)
    assert full.x.dtype == F64
    for b, upto in ((7, 35), (64, n)):                     # rows [0, upto) in batches of b
        parts = [sd.sample(ELEMENTWISE, (min(b, n - a), *ev), solver, nfe, seed=7,
                           sample_offset=a, **opts) for a in range(0, upto, b)]
        assert torch.equal(torch.cat([p.x_T for p in parts]), full.x_T[:upto])
        assert torch.equal(torch.cat([p.x for p in parts]), full.x[:upto]), b
    # rows [a, b) alone, out of order
    assert torch.equal(sd.sample(ELEMENTWISE, (333, *ev), solver, nfe, seed=7,
                                 sample_offset=456, **opts).x, full.x[456:789])


@pytest.mark.usefixtures("float64_default")
def test_seeded_noise_samples_what_the_generator_samples():
    """Per-sample noise is a correct noise source: samples of an exact 2-D mixture score drawn
    with seed= and with a generator have the same distribution (two-sample z-scores of the
    oracle's features: moments, log-density, responsibilities; the solver's own
    discretisation bias is common to both)."""
    gm = sd.analytic.GaussianMixture.eight_gaussians()
    model = gm.as_model(SDE)
    n = 4000
    res = sd.sample(model, (n, 2), "euler_maruyama", 41, seed=1)
    assert res.x.dtype == F64 and torch.equal(res.x_T, PerSampleNoise(1).normal((n, 2), 0))
    ref = sd.sample(model, (n, 2), "euler_maruyama", 41, generator=gen(1)).x
    feats = ExactStatistics(gm, n_exact=2000).features
    a, b = feats(res.x), feats(ref)
    keep = b.std(0) > 1e-9
    z = (a.mean(0) - b.mean(0))[keep] / ((a.var(0) + b.var(0))[keep] / n).sqrt()
    assert float(z.abs().max()) < 4.5, z


def test_seed_with_a_network_agrees_to_rounding_across_batch_sizes():
    """A network's matrix products may round differently at another batch size (BLAS
    blocking): the noise is the same, the samples agree to rounding; `sample_sharded`'s fixed
    chunks remove even that (tested across processes below)."""
    net = sd.nets.MLPScoreNet(dim=2, hidden=32, depth=2, generator=gen(0))
    model = sd.ScoreModel(net, SDE)
    full = sd.sample(model, (105, 2), "euler_maruyama", 11, seed=4).x
    part = torch.cat([sd.sample(model, (7, 2), "euler_maruyama", 11, seed=4,
                                sample_offset=a).x for a in range(0, 105, 7)])
    assert full.dtype == torch.float32 and torch.allclose(part, full, rtol=0, atol=1e-5)


def test_seed_errors():
    m = ELEMENTWISE
    with pytest.raises(ValueError, match="not both"):
        sd.sample(m, (4, 2), "ddim", 3, generator=gen(0), seed=1)
    with pytest.raises(ValueError, match="needs seed"):
        sd.sample(m, (4, 2), "ddim", 3, sample_offset=2)
    with pytest.raises(ValueError, match="seed"):
        sd.sample(m, (4, 2), "ddim", 3, seed=-3)
    with pytest.raises(sd.samplers.SeedError, match="torchsde.*per-sample noise"):
        sd.sample(m, (4, 2), "torchsde", 5, seed=1)
    with pytest.raises(sd.samplers.SeedError, match="brownian"):
        sd.sample(m, (4, 2), "ggf", None, seed=1)
    x = sd.sample(m, (40, 2), "ggf", None, seed=2, noise="resample", rtol=0.2).x
    y = sd.sample(m, (13, 2), "ggf", None, seed=2, sample_offset=20, noise="resample", rtol=0.2).x
    assert torch.allclose(x[20:33], y, rtol=0, atol=1e-5)      # per-sample steps and noise
    with pytest.raises(ValueError, match="generator"):
        sd.sample_sharded(m, (4, 2), "ddim", 3, seed=1, generator=gen(0))


def test_sample_seeded_falls_back_to_a_generator_in_one_process():
    """`sample_seeded`: per-sample noise where the solver can draw it (then exactly
    `sample_sharded`); for torchsde, one generator seeded with the seed (then exactly
    `sample` with that generator); an adaptive spec ignores nfe."""
    from scoresde.evaluation.sharding import sample_seeded
    from scoresde.evaluation.specs import SolverSpec

    m = ELEMENTWISE
    res, noise = sample_seeded(m, (9, 2), SolverSpec.parse("euler_maruyama"), 6, seed=3,
                               batch_size=4)
    assert noise == "per-sample"
    assert torch.equal(res.x, sd.sample_sharded(m, (9, 2), "euler_maruyama", 6, seed=3,
                                                batch_size=4).x)
    res, noise = sample_seeded(m, (9, 2), SolverSpec.parse("torchsde"), 6, seed=3)
    assert noise == "generator"
    assert torch.equal(res.x, sd.sample(m, (9, 2), "torchsde", 6,
                                        generator=torch.Generator().manual_seed(3)).x)
    res, noise = sample_seeded(m, (5, 2), SolverSpec.parse("pf_ode:adaptive=1"), 6, seed=0)
    assert noise == "per-sample" and res.nfe != 6


def test_log_likelihood_probes_from_the_seed():
    """Hutchinson probes per sample from (seed, i): the estimate is unbiased (exact density
    of the Gaussian within 4 standard errors) and a chunk alone is the chunk of the batch."""
    gm = sd.analytic.GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 2, dtype=F64),
                                     (0.3 * torch.eye(2, dtype=F64))[None])
    model = gm.as_model(SDE)
    x = gm.sample(20, gen(2))
    kw = dict(divergence="hutchinson", probe="gaussian", n_probes=4, rtol=1e-4, atol=1e-4)
    res = sd.log_likelihood(model, x, seed=9, **kw)
    err = res.logp - gm.log_prob(x)
    assert float(res.stderr.min()) > 0.01            # the probes' noise dominates the solve's
    assert abs(float(err.mean())) < 4 * float(res.stderr.pow(2).sum().sqrt()) / 20
    kw.update(rtol=1e-3, atol=1e-3)
    one = sd.log_likelihood_sharded(model, x, seed=9, batch_size=8, **kw)
    ref = torch.cat([sd.log_likelihood(model, x[a:b], seed=9, sample_offset=a, **kw).logp
                     for a, b in chunks_of_rank(20, 8)])
    assert torch.equal(one.logp, ref)
    with pytest.raises(ValueError, match="not both"):
        sd.log_likelihood(model, x, seed=1, generator=gen(0), **kw)


def test_chunks_and_agreement_in_one_process():
    assert chunks_of_rank(10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert chunks_of_rank(10, 3, 1, 2) == [(3, 6), (9, 10)]
    assert chunks_of_rank(10, 3, 0, 8) == [(0, 3)] and chunks_of_rank(10, 3, 5, 8) == []
    assert run_on_every_rank(lambda: 3) == 3


def test_cli_flags_are_not_torchrun_flags():
    """`torchrun ... -m scoresde <command> <flags>`: torchrun's own parser sees the whole
    command line, and takes a flag that abbreviates one of its own (`--n` for `--nnodes`...)."""
    from torch.distributed.run import get_args_parser

    tr = get_args_parser()
    for name, sub in cli.build_parser()._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help", "--n"):
                    continue
                args = tr.parse_args(["-m", "scoresde", name, flag, "1"])
                assert args.training_script_args == [name, flag, "1"], (name, flag)


def test_num_samples_flag_and_hidden_alias(tmp_path, capsys):
    assert "--num-samples" in cli.build_parser()._subparsers._group_actions[0].choices[
        "sample"].format_help()
    assert "--n " not in cli.build_parser()._subparsers._group_actions[0].choices[
        "sample"].format_help()
    p = cli.build_parser()
    assert p.parse_args(["sample", "--checkpoint", "x", "--n", "7"]).n == 7
    assert p.parse_args(["sample", "--checkpoint", "x", "--num-samples", "8"]).n == 8
    assert p.parse_args(["sample", "--checkpoint", "x"]).n == 5000


# ----- two processes (gloo) -------------------------------------------------------------------
WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    import scoresde as sd
    from scoresde import cli
    from scoresde.training.distributed import init, rank_and_world, run_on_every_rank
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from image_helpers import DIGITS, HAVE_DIGITS, image_model

    out = sys.argv[1]
    assert init("cpu") == 2
    rank, world = rank_and_world()
    torch.manual_seed(0)     # unused by the library: a wrong rank-local stream would show
    net = sd.nets.MLPScoreNet(dim=2, hidden=32, depth=2,
                              generator=torch.Generator().manual_seed(0))
    model = sd.ScoreModel(net, sd.VPSDE())
    res = {}
    for name, solver, nfe, opts in [("ddim", "ddim", 6, {}), ("em", "euler_maruyama", 6, {}),
                                    ("sde", "dpm_solver_sde", 6, {}), ("pc", "pc", 7, {})]:
        r = sd.sample_sharded(model, (100, 2), solver, nfe, seed=5, batch_size=32, **opts)
        res[name] = r.x
        res[name + "_nfe"] = torch.tensor(r.nfe)
    lik = sd.log_likelihood_sharded(model, res["ddim"][:24], seed=3, batch_size=10,
                                    divergence="hutchinson", n_probes=2, rtol=1e-3, atol=1e-3)
    res["logp"], res["stderr"] = lik.logp, lik.stderr
    res["lik_nfe"] = torch.tensor([lik.nfe, lik.n_vjp])
    target = sd.evaluation.compare.builtin_target("mixture2d")
    comp = sd.compare.compare(target, ["ddim", "euler_maruyama"], [6, 11], n=40, replicates=2,
                              floor_repeats=2, pathwise=False, progress=False, shard=True)
    res["processes"] = comp.config["machine"]["processes"]
    res["rows"] = [{k: v for k, v in r.items() if k != "wall_s"} for r in comp.rows]
    code = cli.main(["sample", "--checkpoint", os.path.join(out, "model.pt"), "--solver",
                     "euler_maruyama", "--nfe", "5", "--num-samples", "90", "--batch-size", "20",
                     "--seed", "2", "--out", os.path.join(out, "cli"), "--no-progress"])
    res["cli_code"] = code
    if HAVE_DIGITS:                 # image sampling and bits/dim, as the CLI runs them
        from scoresde.image_workflow import draw_images, image_likelihood
        imodel = image_model()
        res["img_x"] = draw_images(imodel, DIGITS, 10, solver="ddim", nfe=4, seed=1,
                                   batch_size=3)[0].x
        res["img_bpd"] = image_likelihood(imodel, DIGITS, n=5, batch_size=2, rtol=1e-2,
                                          atol=1e-2, progress=False)[1]
    def fail():
        if rank == 1:
            raise ValueError("only rank one fails")
        return 1
    try:
        run_on_every_rank(fail)
    except ValueError as e:
        res["agreed_error"] = str(e)
    torch.save(res, os.path.join(out, f"res{rank}.pt"))
''')


#: a tiny model of 8x8 digit images (an MLP on the flattened pixels), shared by the worker
#: and the single-process side of the two-process test
IMAGE_HELPERS = textwrap.dedent('''
    import importlib.util
    import torch
    import scoresde as sd

    HAVE_DIGITS = importlib.util.find_spec("sklearn") is not None
    DIGITS = {"data": "digits", "levels": 17, "scaling": "[-1,1]"}

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = sd.nets.MLPScoreNet(dim=64, hidden=32, depth=2,
                                           generator=torch.Generator().manual_seed(3))

        def forward(self, x, t):
            return self.mlp(x.flatten(1), t).view_as(x)

    def image_model():
        return sd.ScoreModel(Flat(), sd.VPSDE())
''')


def _single_process(model):
    res = {}
    for name, solver, nfe in [("ddim", "ddim", 6), ("em", "euler_maruyama", 6),
                              ("sde", "dpm_solver_sde", 6), ("pc", "pc", 7)]:
        res[name] = sd.sample_sharded(model, (100, 2), solver, nfe, seed=5, batch_size=32).x
    lik = sd.log_likelihood_sharded(model, res["ddim"][:24], seed=3, batch_size=10,
                                    divergence="hutchinson", n_probes=2, rtol=1e-3, atol=1e-3)
    return res, lik


def test_two_processes_equal_one_bit_for_bit(tmp_path):
    """torchrun --standalone --nproc-per-node 2 on gloo: sharded sampling (deterministic,
    stochastic, and pc with its batch statistic), the sharded likelihood, a sharded comparison
    and the CLI's `sample` equal one process's results bit for bit; only rank 0 writes; an
    error on rank 1 is raised on rank 0 too."""
    net = sd.nets.MLPScoreNet(dim=2, hidden=32, depth=2, generator=gen(0))
    model = sd.ScoreModel(net, SDE)
    sd.Trainer(model, progress=False).save(tmp_path / "model.pt")    # untrained will do
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    (tmp_path / "image_helpers.py").write_text(IMAGE_HELPERS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = torch.load(tmp_path / "res0.pt", weights_only=False)
    other = torch.load(tmp_path / "res1.pt", weights_only=False)      # every rank gets it all
    assert all(torch.equal(got[k], other[k]) for k in ("ddim", "em", "sde", "pc", "logp"))
    assert json.dumps(other["rows"]) == json.dumps(got["rows"])
    assert other["agreed_error"].startswith("only rank one")
    want, lik = _single_process(model)
    for name in ("ddim", "em", "sde", "pc"):
        assert torch.equal(got[name], want[name]), name
    assert int(got["ddim_nfe"]) == 6 and int(got["pc_nfe"]) == 7
    # the sample-i property across processes too: rank 1's chunks equal plain sample() calls
    assert torch.equal(got["em"][32:64], sd.sample(model, (32, 2), "euler_maruyama", 6, seed=5,
                                                   sample_offset=32).x)
    assert torch.equal(got["em"][96:], sd.sample(model, (4, 2), "euler_maruyama", 6, seed=5,
                                                 sample_offset=96).x)
    assert torch.equal(got["logp"], lik.logp) and torch.equal(got["stderr"], lik.stderr)
    assert got["lik_nfe"].tolist() == [lik.nfe, lik.n_vjp]
    target = sd.evaluation.compare.builtin_target("mixture2d")
    comp = sd.compare.compare(target, ["ddim", "euler_maruyama"], [6, 11], n=40, replicates=2,
                              floor_repeats=2, pathwise=False, progress=False)
    rows = [{k: v for k, v in r.items() if k != "wall_s"} for r in comp.rows]
    assert json.dumps(got["rows"], sort_keys=True) == json.dumps(rows, sort_keys=True)
    assert got["processes"] == 2 and comp.config["machine"]["processes"] == 1
    assert got["cli_code"] == 0
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "model.pt"), "--solver",
                     "euler_maruyama", "--nfe", "5", "--num-samples", "90", "--batch-size", "20",
                     "--seed", "2", "--out", str(tmp_path / "cli1"), "--no-progress"]) == 0
    two, one = np.load(tmp_path / "cli" / "samples.npz"), np.load(tmp_path / "cli1" / "samples.npz")
    assert np.array_equal(two["x"], one["x"]) and str(two["noise"]) == "per-sample"
    assert proc.stdout.count("90 samples with") == 1             # rank 0 alone prints (writes)
    assert got["agreed_error"] == "rank 1 failed: only rank one fails"
    if "img_x" in got:    # image sampling and chunked bits/dim: the same as one process's
        from scoresde.image_workflow import draw_images, image_likelihood
        sys.path.insert(0, str(tmp_path))
        try:
            from image_helpers import DIGITS, image_model
        finally:
            sys.path.remove(str(tmp_path))
        imodel = image_model()
        assert torch.equal(got["img_x"], draw_images(imodel, DIGITS, 10, solver="ddim", nfe=4,
                                                     seed=1, batch_size=3)[0].x)
        vals = image_likelihood(imodel, DIGITS, n=5, batch_size=2, rtol=1e-2, atol=1e-2,
                                progress=False)[1]
        assert got["img_bpd"]["bpd"] == vals["bpd"] and got["img_bpd"]["nfe"] == vals["nfe"]
        assert got["img_bpd"]["processes"] == 2 and vals["processes"] == 1
        assert other["img_bpd"]["bpd"] == vals["bpd"]
