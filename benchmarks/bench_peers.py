r"""Benchmark (not a test): our samplers against diffusers' schedulers and k-diffusion's samplers.

The question (issue 12): at every budget from 5 to 50 network evaluations, is our best sampler
more accurate than the best of the two libraries people use? Measured on exact Gaussian-mixture
targets (``builtin_target``: zero model error), float64, from one shared ``x_T``:

- **Deterministic, pathwise.** Error = $\mathbb E\|x - x_\text{ref}\|$ (with its standard error
  over the ``--n`` draws of ``x_T``), ``x_ref`` the denoised end point of a dopri5 solve of the
  PF-ODE (``rtol = atol = 1e-10``) from the same ``x_T``. Every method ends at the same noise level,
  ``t_end = sde.sample_eps`` (``1e-3`` VP/sub-VP, ``1e-5`` VE), and is denoised by the same Tweedie
  step there, ``x0 = (x + sigma^2 s)/alpha`` (one evaluation, counted in the budget): ours with
  ``denoise=True``; k-diffusion's natively (its last step, from ``sigma(t_end)`` to 0, is exactly
  that step for every sampler here but ``sample_lms``, whose last step to 0 is a multistep step);
  diffusers' schedulers are stopped at ``t_end`` (``final_sigmas_type="sigma_min"``, DDIM with
  ``set_alpha_to_one=False``) and given the same Tweedie step, or, in their own final mode, denoise
  natively (rows marked ``final=zero``, ``alpha_to_one``: their last step maps to the data prediction
  of their last evaluation). The budget ``NFE K`` counts every evaluation (a wrapper around the
  model counts them and must agree with the method's cost); a method that cannot meet ``K`` exactly
  takes the largest budget below it (the NFE it used is reported).
- **Stochastic, in distribution.** Sliced W2 (``scoresde.metrics.sliced_wasserstein``) of
  ``--n-sde`` samples against as many exact samples of the target, at NFE 10, 20, 50, next to the
  noise floor (``noise_floor``: two exact sets) and to a perfect solver (exact samples of
  ``p_{t_end}`` denoised by the same Tweedie step).

How the peers see our SDEs (exactly, no retraining, no approximation):

- **k-diffusion** works in the variance-exploding view of any SDE: state ``x / alpha(t)``, noise
  level ``sigma~ = sigma(t)/alpha(t)``; the denoiser maps ``sigma~`` back to ``t`` (``log_snr_inverse``)
  and returns our model's ``x0`` prediction. Sigma schedules from k-diffusion's own
  ``get_sigmas_karras`` / ``get_sigmas_exponential`` / ``get_sigmas_polyexponential`` (rho 2; rho 1
  is the exponential one) / ``get_sigmas_vp`` (VP only) between ``sigma~(t_end)`` and ``sigma~(T)``.
- **diffusers** schedulers are discrete-time VP (DDPM) schedulers. Each is built with
  ``num_train_timesteps = N = 1/t_end`` and ``trained_betas`` whose cumulative product is the
  VP-equivalent ``alphā_i = alpha(t_i)^2 / (alpha(t_i)^2 + sigma(t_i)^2)`` of our SDE at
  ``t_i = (i + 1)/N`` (DESIGN.md's discrete-schedule convention; for the VP-SDE just ``alpha(t_i)^2``,
  not DDPM's ``linspace(1e-4, 0.02)`` betas, whose product is off by up to 7%), its ``alphas_cumprod``
  replaced by the float64 values. Timestep ``tau`` is fed to our model as ``t = (tau + 1)/N``
  (fractional ``tau``, e.g. Heun's: the time of the noise level the scheduler interpolates there),
  the state rescaled by ``sqrt(alpha^2 + sigma^2)`` (1 for VP), which makes sub-VP and VE exact too.
  diffusers' multistep schedulers cast the state to float32 inside ``step`` (a floor near 1e-6).

Ours: every registered deterministic solver (``SOLVERS``, option sets from ``comparison_specs``
plus the variants in ``OUR_VARIANTS``) on every grid in ``GRIDS`` (``polyexponential`` at rho 2),
and the stochastic ones on their default grids. "Ours, defaults" is the best of our solvers with
their default options and default grid (what ``sd.sample(model, solver=name, nfe=K)`` gives: rows
``[default]``, run with ``grid=None``, where the default is a rule per SDE and per number of
steps; otherwise the named grid).

Peers are never dependencies of scoresde: they live in their own virtual environment,
``benchmarks/.peers-venv`` (git-ignored), that this script creates and reuses (CPU torch, pinned
diffusers and k-diffusion from the configured package index; k-diffusion without its training
dependencies, its ``sampling`` module loaded alone). One command sets it up and runs::

    python3 benchmarks/bench_peers.py --setup          # create/reuse the venv, then run in it
    benchmarks/.peers-venv/bin/python benchmarks/bench_peers.py      # later runs
    benchmarks/.peers-venv/bin/python benchmarks/bench_peers.py --quick   # a smoke run (minutes)

It writes ``benchmarks/results/peers.md``, ``benchmarks/results/peers.png`` and the section
between ``<!-- BEGIN peers -->`` and ``<!-- END peers -->`` of ``docs/solvers.md``
(``--no-docs`` to skip that). One thread, niced: about 75 minutes on a busy shared 2-core machine,
two thirds of it the stochastic runs (``--sde-sdes`` with no SDE skips them, ``--sdes`` with none
the deterministic ones). The two halves can run as two processes and be reported together::

    benchmarks/.peers-venv/bin/python benchmarks/bench_peers.py --sde-sdes --raw det.json --no-docs
    benchmarks/.peers-venv/bin/python benchmarks/bench_peers.py --sdes --raw sde.json --no-docs
    benchmarks/.peers-venv/bin/python benchmarks/bench_peers.py --from-raw det.json --from-raw sde.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks" / ".peers-venv"
RESULTS = ROOT / "benchmarks" / "results"
OUT_MD = RESULTS / "peers.md"
OUT_PNG = RESULTS / "peers.png"
SOLVERS_MD = ROOT / "docs" / "solvers.md"
#: the exact versions the peers' environment gets (CPU torch: an unpinned one pulls CUDA wheels)
PINS = {"torch": "2.13.0", "diffusers": "0.42.1", "k-diffusion": "0.1.1.post1"}
BUDGETS = (5, 8, 10, 15, 20, 50)
SDE_BUDGETS = (10, 20, 50)
TARGETS = ("eight_gaussians", "mixture5d")
SDE_NAMES = ("vp", "subvp", "ve")

if __name__ == "__main__" and "--setup" in sys.argv[1:]:
    torch = None  # the setup step runs with any python3, before torch exists anywhere
else:
    import torch

    sys.path.insert(0, str(ROOT))  # this checkout's scoresde, whatever the venv points at
    import scoresde as sd
    from scoresde.evaluation.targets import builtin_target
    from scoresde.samplers import GRIDS, PolyExponentialGrid, get_grid, make_solver

    Tensor = torch.Tensor


# --------------------------------------------------------------------------- the environment


def venv_python() -> Path:
    return VENV / "bin" / "python"


def peers_ready(python: Path) -> bool:
    """Whether ``python`` imports the pinned torch, diffusers and k-diffusion's sampling."""
    if not python.exists():
        return False
    probe = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import torch, diffusers, scoresde; "
             "from importlib.metadata import version; "
             f"assert torch.__version__.split('+')[0] == {PINS['torch']!r}, torch.__version__; "
             f"assert diffusers.__version__ == {PINS['diffusers']!r}, diffusers.__version__; "
             f"assert version('k-diffusion') == {PINS['k-diffusion']!r}")
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def setup_venv() -> Path:
    """Create (or reuse) ``benchmarks/.peers-venv`` with CPU torch, diffusers and k-diffusion
    (``--no-deps``: its sampling module needs only scipy, torchdiffeq, torchsde and tqdm, which
    scoresde already brings; the rest of k-diffusion, torchvision included, is for training) and
    scoresde itself (editable). Only the configured package index is used."""
    py = venv_python()
    if peers_ready(py):
        print(f"reusing {VENV.relative_to(ROOT)}", file=sys.stderr)
        return py
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)

    def pip(*args: str) -> None:
        print("+ pip install", " ".join(args), file=sys.stderr, flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *args], check=True)

    pip(f"torch=={PINS['torch']}")
    with tempfile.TemporaryDirectory() as tmp:
        pin = Path(tmp) / "constraints.txt"  # nothing may swap the CPU torch for another build
        pin.write_text(f"torch=={PINS['torch']}\n")
        pip("-c", str(pin), "-e", str(ROOT), f"diffusers=={PINS['diffusers']}")
        pip("-c", str(pin), "--no-deps", f"k-diffusion=={PINS['k-diffusion']}")
    if not peers_ready(py):
        raise SystemExit(f"bench_peers: error: {VENV} was set up but does not import the pinned peers")
    return py


def import_peers() -> tuple[Any, Any]:
    """(diffusers, k_diffusion.sampling). k-diffusion's package ``__init__`` imports its training
    stack (torchvision, kornia, wandb, ...); its ``sampling`` module needs only
    ``utils.append_dims``, so the module is loaded under a bare package with that one function."""
    if "k_diffusion.sampling" in sys.modules:
        import diffusers
        return diffusers, sys.modules["k_diffusion.sampling"]
    try:
        import diffusers
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("k_diffusion")
    except ImportError as e:
        raise SystemExit(f"bench_peers: error: {e.name} is not installed here; run "
                         "`python3 benchmarks/bench_peers.py --setup` (creates benchmarks/.peers-venv "
                         "and runs this benchmark in it)") from None
    diffusers.utils.logging.set_verbosity_error()
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x: Tensor, target_dims: int) -> Tensor:  # k_diffusion.utils.append_dims
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules["k_diffusion"] = pkg
    sys.modules["k_diffusion.utils"] = utils
    import k_diffusion.sampling as ks
    return diffusers, ks


# --------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """One target under one SDE, with the shared ``x_T`` and the reference end point."""

    target: str
    sde_name: str
    sde: Any
    model: Any
    gm: Any
    x_T: Tensor
    t_end: float
    ref: Tensor | None = None

    @property
    def label(self) -> str:
        return f"{self.target}, {self.sde_name}"

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        c = self.sde.coefficients(torch.tensor(t, dtype=torch.float64))
        return float(c.alpha), float(c.sigma)

    def sigma_tilde(self, t: float) -> float:
        a, s = self.alpha_sigma(t)
        return s / a

    def time_of_sigma(self, sig: float) -> float:
        """The time whose noise level ``sigma/alpha`` is ``sig`` (``lambda = -2 log sig``), kept in
        ``[t_end, T]`` (a float32 noise level may round just outside it)."""
        t = float(self.sde.log_snr_inverse(torch.tensor(-2.0 * math.log(sig), dtype=torch.float64)))
        return min(max(t, self.t_end), self.sde.T)


def make_problem(target: str, sde_name: str, n: int, seed: int, reference: bool = True) -> Problem:
    sde = sd.SDES[sde_name]()
    tgt = builtin_target(target, sde)
    gm = tgt.exact
    x_T = sde.prior_sample((n, gm.dim), torch.Generator().manual_seed(seed), dtype=torch.float64)
    p = Problem(target, sde_name, sde, tgt.model, gm, x_T, float(sde.sample_eps))
    if reference:
        p.ref = sd.sample(p.model, solver="pf_ode", nfe=None, x_T=x_T, rtol=1e-10, atol=1e-10).x
    return p


class Counter:
    """Counts the evaluations a peer asks for (one call on the whole batch = one evaluation) and
    checks them against the model's own counter."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.calls = 0
        self.start = problem.model.n_evals

    def eps(self, x: Tensor, t: float) -> Tensor:
        self.calls += 1
        return self.problem.model.eps(x, torch.tensor(t, dtype=x.dtype))

    def x0(self, x: Tensor, t: float) -> Tensor:
        self.calls += 1
        return self.problem.model.x0(x, torch.tensor(t, dtype=x.dtype))

    def tweedie(self, x: Tensor) -> Tensor:
        """The final denoising step at ``t_end``, as ``sd.sample(denoise=True)`` takes it."""
        self.calls += 1
        return sd.dynamics.tweedie_denoise(self.problem.model, x, self.problem.t_end)

    def used(self) -> int:
        if self.problem.model.n_evals - self.start != self.calls:
            raise RuntimeError("NFE accounting: the wrapper and the model disagree")
        return self.calls


# --------------------------------------------------------------------------- configurations


@dataclass
class Config:
    """A sampler configuration: ``run(problem, K, seed) -> (x, nfe)`` or None (budget too small)."""

    family: str            # "ours", "diffusers", "k-diffusion"
    label: str
    run: Callable[[Problem, int, int], tuple[Tensor, int] | None]
    stochastic: bool = False
    default: bool = False  # the method with its library's default settings
    sdes: tuple[str, ...] = SDE_NAMES
    note: str = ""


#: option sets of our solvers tried besides each solver's ``comparison_specs`` (deterministic
#: ones); an entry whose solver is not registered, or that names an option the solver does not
#: accept, is skipped
OUR_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "dpm_solver_3m": [{"lower_order_final": False}, {"second_difference": "taylor"}],
    "unipc": [{"solver_order": 1}, {"solver_order": 3}, {"variant": "bh1"}, {"prediction": "eps"},
              {"solver_order": 3, "prediction": "eps"}, {"lower_order_final": False}],
    "deis": [{"solver_order": 1}, {"solver_order": 2}],
    "ipndm": [{"solver_order": 2}, {"solver_order": 3}, {"solver_order": 4}],
    "dpm_solver_singlestep": [{"solver_order": 2}],
    "dpm_solver_sde": [{"eta": 0.0}, {"eta": 0.0, "solver_order": 3}],
    "pf_ode": [{"method": "midpoint"}],
}
#: stochastic option sets of our solvers (defaults where stochastic, plus these)
OUR_SDE_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "ggf": [{}],  # its fixed-grid form (2 evaluations a step); adaptive runs cannot meet a budget
    "ddim": [{"eta": 1.0}],
    "heun": [{"churn": 10.0}],
    "dpm_solver_sde": [{"solver_order": 3}],
    "torchsde": [{"method": "euler"}],
}


def opts_label(name: str, opts: dict[str, Any]) -> str:
    return name + "".join(f" {k}={v}" for k, v in opts.items())


#: the grids our stochastic solvers are run on (besides their default)
SDE_GRIDS = ("uniform", "quadratic", "logsnr", "karras")


def our_grids() -> list[tuple[str, Any]]:
    """Every registered grid rule; polyexponential at rho 2 (at its default rho 1 it is logsnr)."""
    out = []
    for name in GRIDS:
        if name == "polyexponential":
            out.append(("polyexp(2)", PolyExponentialGrid(2.0)))
        else:
            out.append((name, get_grid(name)))
    return out


def ours(stochastic: bool) -> list[Config]:
    """Our configurations: (solver, options, grid) for every registered solver."""
    configs = []
    for name, cls in sd.SOLVERS.items():
        allowed = set(cls.options())
        sets = [s for s in cls.comparison_specs if not s.get("adaptive")]
        extra = (OUR_SDE_VARIANTS if stochastic else OUR_VARIANTS).get(name, [])
        sets += [s for s in extra if set(s) <= allowed and s not in sets]
        for opts in sets:
            try:
                solver = make_solver(name, **opts)
            except (TypeError, ValueError):
                continue
            if bool(solver.stochastic) != stochastic:
                continue
            is_default = not opts or opts in cls.comparison_specs
            grids = our_grids()
            if stochastic:  # fewer grids: each stochastic run is 20000 samples, twice
                grids = [(g, grid) for g, grid in grids if g in SDE_GRIDS or g == solver.default_grid]
            # a default named by a registered grid is that grid's row; any other (a rule per SDE,
            # and per number of steps: the deterministic solvers') gets a row of its own, grid=None
            named = solver.default_grid if isinstance(solver.default_grid, str) else None
            if is_default and named is None:
                grids = [*grids, ("default", None)]
            for gname, grid in grids:
                label = opts_label(name, opts) + f" [{gname}]"

                def run(p: Problem, k: int, seed: int, name=name, opts=opts, grid=grid, solver=solver):
                    ok = solver.reachable(k, extra=1)
                    if not ok:
                        return None
                    res = sd.sample(p.model, solver=name, nfe=ok[-1], x_T=p.x_T, grid=grid,
                                    generator=torch.Generator().manual_seed(seed), **opts)
                    return res.x, res.nfe

                configs.append(Config("ours", label, run, stochastic,
                                      is_default and gname in (named, "default")))
    return configs


def diffusers_time(view: dict, tau: float) -> float:
    """Our continuous time for a diffusers timestep: ``(tau + 1)/N`` for an integer ``tau``; for a
    fractional one, the time of the noise level the scheduler interpolates there."""
    if float(tau).is_integer():
        return (float(tau) + 1.0) / view["N"]
    import numpy as np
    sig = float(np.interp(float(tau), np.arange(view["N"]), view["sig"]))
    return view["problem"].time_of_sigma(sig)


def vp_view(p: Problem) -> dict:
    """The VP-equivalent discrete schedule of ``p.sde`` at ``t_i = (i + 1)/N``, ``N = 1/t_end``."""
    N = round(1.0 / p.t_end)
    if abs(N * p.t_end - 1.0) > 1e-9:
        raise ValueError(f"t_end = {p.t_end} is not 1/N for an integer N")
    t = (torch.arange(N, dtype=torch.float64) + 1.0) / N
    c = p.sde.coefficients(t)
    a, s = c.alpha.expand_as(t), c.sigma.expand_as(t)
    abar = a * a / (a * a + s * s)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return {"N": N, "abar": abar, "betas": (1.0 - abar / prev).numpy(), "sig": (s / a).numpy(),
            "problem": p}


def diffusers_scheduler(cls: Any, view: dict, cfg: dict) -> Any:
    sched = cls(num_train_timesteps=view["N"], trained_betas=view["betas"], **cfg)
    abar = view["abar"]  # the float64 cumulative product, not diffusers' float32 one
    sched.alphas_cumprod = abar.clone()
    if hasattr(sched, "alpha_t"):
        sched.alpha_t = abar.sqrt()
        sched.sigma_t = (1.0 - abar).sqrt()
        sched.lambda_t = sched.alpha_t.log() - sched.sigma_t.log()
    if hasattr(sched, "final_alpha_cumprod") and not cfg.get("set_alpha_to_one", True):
        sched.final_alpha_cumprod = abar[0].clone()
    return sched


def diffusers_config(cls_name: str, label: str, cfg: dict, ends_at_t_end: bool, cost: Callable[[int], int],
                     default: bool = False, note: str = "", sigma_time: bool = False) -> Config:
    """A diffusers scheduler in the standard loop (``scale_model_input``, model, ``step``).
    ``ends_at_t_end``: the scheduler stops at ``t_end`` and the Tweedie step follows (one more
    evaluation); else its own last step denoises. ``cost(n)``: evaluations for ``n`` inference steps.
    ``sigma_time``: feed the model the time of the scheduler's own noise level ``sigmas[i]`` rather
    than of its timestep (with ``use_karras_sigmas`` and the like, diffusers rounds the timesteps,
    so a model fed them would see a slightly different noise level than the step assumes)."""

    def run(p: Problem, k: int, seed: int) -> tuple[Tensor, int] | None:
        diffusers, _ = import_peers()
        cls = getattr(diffusers, cls_name)
        budget = k - 1 if ends_at_t_end else k
        ns = [n for n in range(1, budget + 1) if cost(n) <= budget]
        if not ns:
            return None
        view = vp_view(p)
        sched = diffusers_scheduler(cls, view, cfg)
        sched.set_timesteps(ns[-1])
        cnt = Counter(p)
        a_T, s_T = p.alpha_sigma(p.sde.T)
        x = p.x_T / math.hypot(a_T, s_T)                          # the VP-equivalent state
        if cls_name == "HeunDiscreteScheduler":                  # its state is x / alpha (VE view)
            x = x * math.sqrt(1.0 + float(sched.sigmas[0]) ** 2)
        gen = torch.Generator().manual_seed(seed)
        for i, tau in enumerate(sched.timesteps):
            t = p.time_of_sigma(float(sched.sigmas[i])) if sigma_time else diffusers_time(view, float(tau))
            a, s = p.alpha_sigma(t)
            x_in = sched.scale_model_input(x, tau)
            eps = cnt.eps(x_in * math.hypot(a, s), t)
            kw = {"generator": gen} if "generator" in sched.step.__code__.co_varnames else {}
            x = sched.step(eps, tau, x, **kw).prev_sample
        if ends_at_t_end:
            a, s = p.alpha_sigma(p.t_end)
            x = cnt.tweedie(x * math.hypot(a, s))
        return x, cnt.used()

    return Config("diffusers", label, run, default=default, note=note)


#: DDIM stopped at t_end (eta = 0; clip_sample off: our data are not images in [-1, 1])
DDIM_TRAILING = {"clip_sample": False, "timestep_spacing": "trailing", "set_alpha_to_one": False}
DPM_DEFAULT = ("dpmsolver++", 2, True, "linspace", "zero")


def diffusers_configs() -> list[Config]:
    one = lambda n: n  # noqa: E731
    out = []
    # DDIM (eta = 0; clip_sample off: our data are not images in [-1, 1])
    out.append(diffusers_config("DDIMScheduler", "DDIMScheduler leading, alpha_to_one (default)",
                                {"clip_sample": False}, False, one, default=True,
                                note="starts below T (leading spacing)"))
    out.append(diffusers_config("DDIMScheduler", "DDIMScheduler linspace, alpha_to_one",
                                {"clip_sample": False, "timestep_spacing": "linspace"}, False, one))
    out.append(diffusers_config("DDIMScheduler", "DDIMScheduler trailing", DDIM_TRAILING, True, one))
    for algo in ("dpmsolver++", "dpmsolver"):
        for order in (2, 3):
            for lof in (True, False):
                for spacing in ("linspace", "trailing"):
                    for final in ("sigma_min", "zero"):
                        if final == "zero" and algo != "dpmsolver++":
                            continue
                        cfg = {"algorithm_type": algo, "solver_order": order, "lower_order_final": lof,
                               "timestep_spacing": spacing, "final_sigmas_type": final}
                        label = (f"DPMSolverMultistep {algo} {order}" + ("" if lof else " lof=False")
                                 + f" {spacing}" + (" final=zero" if final == "zero" else ""))
                        dflt = (algo, order, lof, spacing, final) == DPM_DEFAULT
                        out.append(diffusers_config("DPMSolverMultistepScheduler",
                                                    label + (" (default)" if dflt else ""), cfg,
                                                    final == "sigma_min", one, default=dflt))
    for variant in ("bh1", "bh2"):
        for order in (1, 2, 3):
            for spacing in ("linspace", "trailing"):
                for final in ("sigma_min", "zero"):
                    cfg = {"solver_type": variant, "solver_order": order, "timestep_spacing": spacing,
                           "final_sigmas_type": final}
                    dflt = (variant, order, spacing, final) == ("bh2", 2, "linspace", "zero")
                    label = (f"UniPCMultistep {variant} {order} {spacing}"
                             + (" final=zero" if final == "zero" else "") + (" (default)" if dflt else ""))
                    bad = "diffusers divides by an infinite last step" if variant + final == "bh1zero" else ""
                    out.append(diffusers_config("UniPCMultistepScheduler", label, cfg, final == "sigma_min",
                                                one, default=dflt, note=bad))
    # diffusers' own noise-level schedules; final_sigmas_type="zero" makes the last step the
    # Tweedie step from sigma(t_end) (the last schedule entry); DEIS has no such mode, its last
    # step is from sigma_min to sigma_min (an evaluation spent on nothing) before ours
    # (use_lu_lambdas, uniform in log-SNR, is use_exponential_sigmas again; UniPC's bh1 with
    # final_sigmas_type="zero" divides by an infinite step: see the rows that use it)
    for sched_opt, short in (("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential")):
        for cls_name, short_cls, variants in (
                ("DPMSolverMultistepScheduler", "DPMSolverMultistep",
                 [{"solver_order": 2}, {"solver_order": 3}]),
                ("UniPCMultistepScheduler", "UniPCMultistep",
                 [{"solver_order": 2}, {"solver_order": 3}]),
                ("DEISMultistepScheduler", "DEISMultistep", [{"solver_order": 2}, {"solver_order": 3}])):
            for v in variants:
                deis = short_cls == "DEISMultistep"
                cfg = {**v, sched_opt: True, **({} if deis else {"final_sigmas_type": "zero"})}
                label = f"{short_cls} {v['solver_order']} {short}" + ("" if deis else " final=zero")
                out.append(diffusers_config(cls_name, label, cfg, deis, one, sigma_time=True,
                                            note="its last step has length 0" if deis else ""))
    for order in (1, 2, 3):
        for spacing in ("linspace", "trailing"):
            dflt = (order, spacing) == (2, "linspace")
            out.append(diffusers_config("DEISMultistepScheduler",
                                        f"DEISMultistep {order} {spacing}" + (" (default)" if dflt else ""),
                                        {"solver_order": order, "timestep_spacing": spacing}, True, one,
                                        default=dflt))
    for spacing in ("linspace", "trailing"):
        dflt = spacing == "linspace"
        out.append(diffusers_config("HeunDiscreteScheduler",
                                    f"HeunDiscrete {spacing}" + (" (default)" if dflt else ""),
                                    {"timestep_spacing": spacing}, False, lambda n: 2 * n - 1, default=dflt,
                                    note="" if dflt else "its last evaluation is above t_end"))
    return out


#: k-diffusion samplers: name -> (evaluations for n nonzero sigmas, stochastic)
K_SAMPLERS: dict[str, tuple[Callable[[int], int], bool]] = {
    "sample_euler": (lambda n: n, False),
    "sample_heun": (lambda n: 2 * n - 1, False),
    "sample_dpm_2": (lambda n: 2 * n - 1, False),
    "sample_lms": (lambda n: n, False),
    "sample_dpmpp_2m": (lambda n: n, False),
    "sample_euler_ancestral": (lambda n: n, True),
    "sample_dpm_2_ancestral": (lambda n: 2 * n - 1, True),
    "sample_dpmpp_2s_ancestral": (lambda n: 2 * n - 1, True),
    "sample_dpmpp_sde": (lambda n: 2 * n - 1, True),
    "sample_dpmpp_2m_sde": (lambda n: n, True),
    "sample_dpmpp_3m_sde": (lambda n: n, True),
}
K_SIGMAS = ("karras", "exponential", "polyexponential", "vp")


def k_sigmas(ks: Any, kind: str, n: int, p: Problem) -> Tensor:
    """k-diffusion's schedule of ``n`` noise levels from ``sigma~(T)`` to ``sigma~(t_end)``, then 0."""
    lo, hi = p.sigma_tilde(p.t_end), p.sigma_tilde(p.sde.T)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # k-diffusion builds its ramps in the default dtype
    try:
        if kind == "karras":
            s = ks.get_sigmas_karras(n, lo, hi)
        elif kind == "exponential":
            s = ks.get_sigmas_exponential(n, lo, hi)
        elif kind == "polyexponential":
            s = ks.get_sigmas_polyexponential(n, lo, hi, rho=2.0)
        else:
            s = ks.get_sigmas_vp(n, beta_d=p.sde.beta_max - p.sde.beta_min, beta_min=p.sde.beta_min,
                                 eps_s=p.t_end)
    finally:
        torch.set_default_dtype(old)
    s = s.to(torch.float64)
    s[0], s[n - 1] = hi, lo  # the ends exactly (a ramp's rounding would step outside [t_end, T])
    return s


def k_config(sampler: str, kind: str) -> Config:
    cost, stochastic = K_SAMPLERS[sampler]

    def run(p: Problem, k: int, seed: int) -> tuple[Tensor, int] | None:
        _, ks = import_peers()
        ns = [n for n in range(1, k + 1) if cost(n) <= k]
        if not ns:
            return None
        sigmas = k_sigmas(ks, kind, ns[-1], p)
        cnt = Counter(p)

        def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
            t = p.time_of_sigma(float(sigma.reshape(-1)[0]))
            a, _ = p.alpha_sigma(t)
            return cnt.x0(a * x, t)

        a_T, _ = p.alpha_sigma(p.sde.T)
        torch.manual_seed(seed)  # k-diffusion draws its noise from the global generator
        x = getattr(ks, sampler)(denoiser, p.x_T / a_T, sigmas, disable=True)
        return x, cnt.used()

    return Config("k-diffusion", f"{sampler} {kind}", run, stochastic,
                  sdes=("vp",) if kind == "vp" else SDE_NAMES,
                  note="last step to 0 is a multistep step" if sampler == "sample_lms" else "")


def k_configs(stochastic: bool) -> list[Config]:
    kinds = ("karras", "exponential") if stochastic else K_SIGMAS
    return [k_config(s, kind) for s, (_, st) in K_SAMPLERS.items() if st == stochastic for kind in kinds]


# --------------------------------------------------------------------------- measuring


@dataclass
class Cell:
    err: float
    se: float
    nfe: int


@dataclass
class Results:
    """errors[problem label][config label][K] = Cell; plus the configs' families and defaults."""

    errors: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)   # config label -> {family, default, note}
    info: dict = field(default_factory=dict)   # problem label -> dict of diagnostics


def pathwise(p: Problem, configs: list[Config], budgets: tuple[int, ...], res: Results) -> None:
    table = res.errors.setdefault(p.label, {})
    for c in configs:
        if p.sde_name not in c.sdes:
            continue
        res.meta[c.label] = {"family": c.family, "default": c.default, "note": c.note}
        row = table.setdefault(c.label, {})
        for k in budgets:
            try:
                out = c.run(p, k, 0)
            except Exception as e:  # a peer failing on a problem is a result, not a crash
                print(f"  {p.label}: {c.label} NFE {k}: {type(e).__name__}: {e}", file=sys.stderr)
                row[k] = None
                continue
            if out is None:
                continue
            x, nfe = out
            if nfe > k:
                raise RuntimeError(f"{c.label} used {nfe} > {k} evaluations")
            d = (x - p.ref).norm(dim=1)
            err = float(d.mean()) if bool(torch.isfinite(d).all()) else math.inf
            row[k] = Cell(err, float(d.std()) / math.sqrt(d.numel()), nfe)
    print(f"  {p.label}: {len(configs)} configurations", file=sys.stderr, flush=True)


def endpoint_offset(p: Problem) -> float:
    """E|x_ref - x(0)|: the Tweedie step at t_end against the PF-ODE continued to t = 1e-3 t_end
    (what a method that integrates "to zero" approximates instead)."""
    deep = sd.sample(p.model, solver="pf_ode", nfe=None, x_T=p.x_T, rtol=1e-10, atol=1e-10,
                     t_end=p.t_end * 1e-3, denoise=False).x
    return float((deep - p.ref).norm(dim=1).mean())


def adapter_checks(p: Problem) -> dict[str, float]:
    """The peers' adapters against our solvers where the methods are the same, on the same grid:
    k-diffusion's DPM-Solver++(2M) on exponential sigmas = our ``dpm_solver`` on the log-SNR grid;
    k-diffusion's Euler = Euler on the PF-ODE in ``x/alpha`` vs ``sigma~`` (our ``ddim``, exactly);
    diffusers' DDIM (trailing) = our ``ddim`` on the same times. max |x_peer - x_ours|."""
    _, ks = import_peers()
    out = {}
    k = 10
    x_k, _ = k_config("sample_dpmpp_2m", "exponential").run(p, k, 0)
    x_o = sd.sample(p.model, solver="dpm_solver", nfe=k, x_T=p.x_T, grid="logsnr").x
    out["k-diffusion dpmpp_2m exponential vs dpm_solver logsnr"] = float((x_k - x_o).abs().max())
    x_k, _ = k_config("sample_euler", "karras").run(p, k, 0)
    sig = k_sigmas(ks, "karras", k, p)[:-1]
    grid = torch.tensor([p.time_of_sigma(float(s)) for s in sig], dtype=torch.float64)
    grid[0], grid[-1] = p.sde.T, p.t_end
    x_o = sd.sample(p.model, solver="ddim", nfe=k, x_T=p.x_T, grid=grid).x
    out["k-diffusion euler karras vs ddim on the same grid"] = float((x_k - x_o).abs().max())
    view = vp_view(p)
    diffusers, _ = import_peers()
    k = 11  # 10 DDIM steps: N/10 is an integer, so diffusers' own step sizes match its timesteps
    sched = diffusers_scheduler(diffusers.DDIMScheduler, view, DDIM_TRAILING)
    sched.set_timesteps(k - 1)
    taus = [float(t) for t in sched.timesteps]
    grid = torch.tensor([(t + 1) / view["N"] for t in taus] + [p.t_end], dtype=torch.float64)
    x_d, _ = diffusers_config("DDIMScheduler", "", DDIM_TRAILING, True, lambda n: n).run(p, k, 0)
    x_o = sd.sample(p.model, solver="ddim", nfe=k, x_T=p.x_T, grid=grid).x
    out["diffusers DDIM trailing vs ddim on the same grid"] = float((x_d - x_o).abs().max())
    return out


def stochastic(p: Problem, configs: list[Config], n: int, seeds: list[int], res: Results) -> None:
    """Sliced W2 of ``n`` samples (one x_T per replicate) against ``n`` exact samples."""
    noise_floor, sliced_wasserstein = sd.metrics.noise_floor, sd.metrics.sliced_wasserstein

    table = res.errors.setdefault(p.label + " (SDE)", {})
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    exact = p.gm.sample(n, gen(10_000)).to(torch.float64)

    def sw(x: Tensor) -> float:
        return float(sliced_wasserstein(x, exact, n_projections=256, generator=gen(7)))

    floor = noise_floor(lambda a, b: sliced_wasserstein(a, b, n_projections=256, generator=gen(7)),
                        lambda m, g: p.gm.sample(m, g).to(torch.float64), n, gen(11), repeats=4)
    x0 = p.gm.sample(n, gen(12)).to(torch.float64)
    a, s = p.alpha_sigma(p.t_end)
    xt = a * x0 + s * torch.randn(x0.shape, generator=gen(13), dtype=torch.float64)
    perfect = sw(sd.dynamics.tweedie_denoise(p.model, xt, p.t_end))
    res.info.setdefault(p.label, {}).update(
        {"sw2_floor": float(floor.mean), "sw2_floor_std": float(floor.std), "sw2_perfect": perfect,
         "n_sde": n, "replicates": len(seeds)})
    for c in configs:
        if p.sde_name not in c.sdes:
            continue
        res.meta[c.label] = {"family": c.family, "default": c.default, "note": c.note}
        row = table.setdefault(c.label, {})
        for k in SDE_BUDGETS:
            vals, used = [], None
            for r in seeds:
                q = Problem(p.target, p.sde_name, p.sde, p.model, p.gm,
                            p.sde.prior_sample((n, p.gm.dim), gen(100 + r), dtype=torch.float64), p.t_end)
                try:
                    out = c.run(q, k, 1000 + r)
                except Exception as e:
                    print(f"  {p.label}: {c.label} NFE {k}: {type(e).__name__}: {e}", file=sys.stderr)
                    out = None
                if out is None:
                    break
                x, used = out
                vals.append(sw(x) if bool(torch.isfinite(x).all()) else math.inf)
            if vals:
                m = sum(vals) / len(vals)
                se = (math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals))
                      if len(vals) > 1 and math.isfinite(m) else math.nan)
                row[k] = Cell(m, se, used)
    print(f"  {p.label} (SDE): {len(configs)} configurations", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- reporting


def fmt(c: Cell | None, k: int, se: bool = True) -> str:
    if c is None:
        return "—"
    s = f"{c.err:.2e}" if math.isfinite(c.err) else "diverged"
    if se and math.isfinite(c.se) and math.isfinite(c.err):
        s += f" ± {c.se:.0e}"
    return s + (f" ({c.nfe})" if c.nfe != k else "")


def best(row_map: dict, meta: dict, k: int, pred: Callable[[str], bool]) -> tuple[str, Cell] | None:
    cands = [(lab, r[k]) for lab, r in row_map.items() if pred(lab) and r.get(k) is not None]
    cands = [c for c in cands if math.isfinite(c[1].err)]
    return min(cands, key=lambda c: c[1].err) if cands else None


def peer_grid(label: str) -> bool:
    """Whether one of our configurations runs on a grid the peers also have (all but quadratic:
    diffusers' linspace/trailing spacing is uniform in t, k-diffusion has karras, exponential =
    logsnr, polyexponential, vp = uniform); a ``[default]`` row is left out (it repeats the
    named grid its rule picks, quadratic included)."""
    return not label.endswith(("[quadratic]", "[default]"))


def summary_rows(table: dict, meta: dict, budgets: tuple[int, ...]) -> list[dict]:
    rows = []
    for k in budgets:
        peer = best(table, meta, k, lambda lab: meta[lab]["family"] != "ours")
        peer_d = best(table, meta, k, lambda lab: meta[lab]["family"] != "ours" and meta[lab]["default"])
        our = best(table, meta, k, lambda lab: meta[lab]["family"] == "ours")
        our_d = best(table, meta, k, lambda lab: meta[lab]["family"] == "ours" and meta[lab]["default"])
        our_pg = best(table, meta, k, lambda lab: meta[lab]["family"] == "ours" and peer_grid(lab))
        rows.append({"k": k, "peer": peer, "peer_default": peer_d, "ours": our, "ours_default": our_d,
                     "ours_peer_grid": our_pg})
    return rows


def ratio(a: tuple[str, Cell] | None, b: tuple[str, Cell] | None) -> str:
    if a is None or b is None:
        return "—"
    return f"{a[1].err / b[1].err:.2f}"


def who(c: tuple[str, Cell] | None, meta: dict) -> str:
    if c is None:
        return "—"
    fam = meta[c[0]]["family"]
    return f"`{c[0]}`" + ("" if fam == "ours" else f" ({fam})")


def summary_table(table: dict, meta: dict, budgets: tuple[int, ...], unit: str) -> list[str]:
    lines = [f"| NFE | best peer | {unit} | ours, best | {unit} | ours / peer | ours, defaults | {unit} "
             f"| defaults / peer | ours, peers' grids | {unit} | peers' grids / peer |",
             "| ---: | --- | ---: |" + " --- | ---: | ---: |" * 3]
    for r in summary_rows(table, meta, budgets):
        k = r["k"]
        cells = [str(k)]
        for key in ("peer", "ours", "ours_default", "ours_peer_grid"):
            c = r[key]
            cells += [who(c, meta), fmt(c[1] if c else None, k)]
            if key != "peer":
                cells.append(ratio(c, r["peer"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def full_table(table: dict, meta: dict, budgets: tuple[int, ...]) -> list[str]:
    lines = ["| library | configuration | " + " | ".join(f"NFE {k}" for k in budgets) + " |",
             "| --- | --- |" + " ---: |" * len(budgets)]
    order = {"ours": 0, "diffusers": 1, "k-diffusion": 2}
    best_at = {k: best(table, meta, k, lambda lab: True) for k in budgets}
    for lab in sorted(table, key=lambda lab: (order[meta[lab]["family"]], lab)):
        row = table[lab]
        if all(v is None for v in row.values()):  # e.g. torchsde, which takes uniform steps only
            continue
        cells = []
        for k in budgets:
            s = fmt(row.get(k), k, se=False)
            cells.append(f"**{s}**" if best_at[k] and best_at[k][0] == lab else s)
        note = f" ({meta[lab]['note']})" if meta[lab]["note"] else ""
        lines.append(f"| {meta[lab]['family']} | `{lab}`{note} | " + " | ".join(cells) + " |")
    return lines


def headline(name: str, cells: list[tuple[float, str]]) -> str:
    """One sentence: in how many (problem, budget) cells a ratio ours/peer is < 0.95, within 5%,
    > 1.05, its median, and the losses."""
    if not cells:
        return ""
    r = sorted(c[0] for c in cells)
    med = r[len(r) // 2] if len(r) % 2 else math.sqrt(r[len(r) // 2 - 1] * r[len(r) // 2])
    win = sum(c[0] < 0.95 for c in cells)
    lose = [c for c in cells if c[0] > 1.05]
    tie = len(cells) - win - len(lose)
    s = (f"- {name}: more accurate than the best peer in {win} of {len(cells)} (problem, budget) cells, "
         f"within 5% in {tie}, less accurate in {len(lose)}; median ratio {med:.2f}")
    if lose:
        s += " (behind: " + ", ".join(f"{w} ×{q:.2f}" for q, w in lose) + ")"
    return s + "."


def shown_command(script: str, args: list[str]) -> str:
    """``python <script> <args>`` without the options that only say where the raw numbers
    went or came from, or that the docs are not written: they are not part of the method."""
    shown, skip = [], False
    for a in args:
        if skip or a in ("--no-docs",):
            skip = False
            continue
        if a in ("--raw", "--from-raw"):
            skip = True
            continue
        if not a.startswith(("--raw=", "--from-raw=")):
            shown.append(a)
    return "python " + " ".join(shlex.quote(a) for a in [script, *shown])


def provenance(args: list[str]) -> str:
    import diffusers
    cmd = shown_command("benchmarks/bench_peers.py", args)
    from importlib.metadata import version
    return (f"Reproduce: `{cmd}` in `benchmarks/.peers-venv` (`python3 benchmarks/bench_peers.py --setup` "
            f"creates it). scoresde {sd.__version__}, torch {torch.__version__}, diffusers "
            f"{diffusers.__version__}, k-diffusion {version('k-diffusion')}, {platform.machine()}, "
            f"{torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d')}.")


def plot(res: Results, labels: list[str], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, lab in zip(axes.flat, labels, strict=False):
        table = res.errors[lab]
        series = {"best peer (any config)": lambda m: m["family"] != "ours",
                  "best diffusers": lambda m: m["family"] == "diffusers",
                  "best k-diffusion": lambda m: m["family"] == "k-diffusion",
                  "ours, best": lambda m: m["family"] == "ours",
                  "ours, defaults": lambda m: m["family"] == "ours" and m["default"]}
        styles = {"best peer (any config)": ("k", "o", "-"), "best diffusers": ("tab:orange", "s", ":"),
                  "best k-diffusion": ("tab:green", "^", ":"), "ours, best": ("tab:blue", "o", "-"),
                  "ours, defaults": ("tab:blue", "D", "--")}
        for name, pred in series.items():
            pts = []
            for k in BUDGETS:
                b = best(table, res.meta, k, lambda lb, pred=pred: pred(res.meta[lb]))
                if b:
                    pts.append((b[1].nfe, b[1].err))
            if pts:
                color, marker, ls = styles[name]
                wide = name.startswith("best peer")  # drawn wide and pale: the best of the two below
                ax.plot([q[0] for q in pts], [q[1] for q in pts], color=color, marker=marker, ls=ls,
                        label=name, lw=5 if wide else 1.5, alpha=0.3 if wide else 1.0,
                        zorder=1 if wide else 2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(BUDGETS)
        ax.set_xticklabels([str(k) for k in BUDGETS])
        ax.set_title(lab)
        ax.set_xlabel("NFE (denoising step included)")
        ax.set_ylabel(r"$E\|x - x_{ref}\|$")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Pathwise error vs NFE: best of ours vs best of diffusers / k-diffusion (exact scores)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in ``path`` (as
    experiments/fewstep_table.py does for its section), appending the section if absent."""
    text = path.read_text()
    block = f"<!-- BEGIN {name} -->\n{body.strip()}\n<!-- END {name} -->"
    pat = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    write_atomic(path, text)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


PROTOCOL = (
    "Exact scores of the target (zero model error), float64, one shared $x_T$ per problem. "
    "**Deterministic**: pathwise error $\\mathbb E\\|x - x_\\text{{ref}}\\|$ ± its standard error over "
    "{n} draws, $x_\\text{{ref}}$ the denoised end point of a dopri5 PF-ODE solve (rtol = atol = "
    "$10^{{-10}}$) from the same $x_T$. Every method ends at $t_\\text{{end}}$ ($10^{{-3}}$ VP and "
    "sub-VP, $10^{{-5}}$ VE) and is denoised by the same Tweedie step there, counted in the budget "
    "(k-diffusion: natively, its last step to $\\sigma = 0$; diffusers: stopped at $t_\\text{{end}}$ by "
    "`final_sigmas_type=\"sigma_min\"` / DDIM `set_alpha_to_one=False` and given the step, or in its "
    "own final mode, rows `final=zero` / `alpha_to_one`). diffusers' schedulers get `trained_betas` "
    "with $\\bar\\alpha_i$ = the VP-equivalent $\\alpha^2/(\\alpha^2+\\sigma^2)$ of our SDE at "
    "$t_i = (i+1)/N$, $N = 1/t_\\text{{end}}$, and timestep $\\tau$ is our time $(\\tau+1)/N$; "
    "k-diffusion works on $x/\\alpha$ and $\\sigma/\\alpha$. A method that cannot meet NFE K "
    "uses the largest budget below it (in parentheses). \"Ours, defaults\": our solvers with their "
    "default options and grid; \"best\": over every option set and grid (ours) or every "
    "configuration listed below (peers).")


def report(res: Results, args: argparse.Namespace, argv: list[str], problems: list[str],
           sde_problems: list[str]) -> tuple[str, str]:
    """(the results markdown, the docs section)."""
    md = ["# Our samplers against diffusers and k-diffusion", "",
          "Written by `benchmarks/bench_peers.py` (its docstring has the full protocol). "
          "![error vs NFE](peers.png)", "", PROTOCOL.format(n=args.n), ""]
    docs = ["### Against diffusers and k-diffusion", "",
            "The same question as the table above, asked of the two libraries people use: diffusers' "
            "schedulers (`DDIMScheduler`, `DPMSolverMultistepScheduler`, `UniPCMultistepScheduler`, "
            "`DEISMultistepScheduler`, `HeunDiscreteScheduler`, every order and variant, `linspace` "
            "and `trailing` spacing) and k-diffusion's samplers (`sample_euler`, `_heun`, `_dpm_2`, "
            "`_lms`, `_dpmpp_2m`; Karras, exponential, polyexponential and VP sigmas), run on our "
            "exact targets. " + PROTOCOL.format(n=args.n), "",
            "Error of our best configuration / error of the best peer configuration, per budget "
            "(< 1: ours is more accurate); in parentheses the same for the best of our solvers "
            "with their default options and grid:", ""]
    tally: dict[str, list[tuple[float, str]]] = {"ours": [], "ours_default": [], "ours_peer_grid": []}
    head = "| target, SDE | " + " | ".join(f"NFE {k}" for k in BUDGETS) + " |"
    docs += [head, "| --- |" + " ---: |" * len(BUDGETS)]
    for lab in problems:
        table = res.errors[lab]
        md += [f"## {lab}", ""]
        info = res.info.get(lab, {})
        if "offset" in info:
            md += [f"$\\mathbb E\\|x_\\text{{ref}} - x(0)\\|$ "
                   f"(Tweedie at $t_\\text{{end}}$ vs the PF-ODE continued to $10^{{-3}} t_\\text{{end}}$) = "
                   f"{info['offset']:.1e}: what a method that integrates \"to zero\" instead is off by."
                   + (" Adapter checks (max |peer − ours| for the same method on the same grid): "
                      + "; ".join(f"{k} {v:.1e}" for k, v in info.get("checks", {}).items())
                      if info.get("checks") else ""), ""]
        md += [*summary_table(table, res.meta, BUDGETS, "error"), ""]
        md += [f"<details><summary>Every configuration, {lab}</summary>", "",
               *full_table(table, res.meta, BUDGETS), "", "</details>", ""]
        rows = summary_rows(table, res.meta, BUDGETS)
        cells = [f"{ratio(r['ours'], r['peer'])} ({ratio(r['ours_default'], r['peer'])})" for r in rows]
        docs.append(f"| {lab} | " + " | ".join(cells) + " |")
        for key in tally:
            for r in rows:
                if r[key] and r["peer"]:
                    tally[key].append((r[key][1].err / r["peer"][1].err, f"{lab}, NFE {r['k']}"))
    docs += ["", *(headline(name, tally[key]) for key, name in
                   (("ours", "Our best configuration"), ("ours_default", "Our best default configuration"),
                    ("ours_peer_grid", "Our best configuration on a peer's grid (not quadratic)"))),
             "", "Winning configurations (best of ours; best peer):", ""]
    for lab in problems:
        rows = summary_rows(res.errors[lab], res.meta, BUDGETS)
        docs.append(f"- {lab}: " + "; ".join(
            f"{r['k']}: {r['ours'][0] if r['ours'] else '—'} / "
            f"{r['peer'][0] if r['peer'] else '—'}" for r in rows))
    if sde_problems:
        md += ["## Stochastic samplers", "",
               f"Sliced W2 (256 directions) of {args.n_sde} samples against {args.n_sde} exact ones, "
               f"mean ± standard error over {args.replicates} replicate(s) (each its own $x_T$ and "
               "noise); ours on their default grid and on the uniform, quadratic, log-SNR and Karras "
               "grids, k-diffusion's SDE samplers on Karras and exponential sigmas (their noise: "
               "k-diffusion's own, a Brownian tree for the `_sde` ones). Noise floor: two "
               "independent exact sets; perfect: exact samples of "
               "$p_{t_\\text{end}}$ denoised by the same Tweedie step.", ""]
        docs += ["", f"Stochastic samplers: sliced W2 of {args.n_sde} samples against exact ones "
                 "(best of ours / best of k-diffusion's SDE samplers; floor = two exact sample "
                 "sets):", "",
                 "| target, SDE | floor | perfect | " + " | ".join(f"NFE {k}" for k in SDE_BUDGETS) + " |",
                 "| --- | ---: | ---: |" + " ---: |" * len(SDE_BUDGETS)]
        for lab in sde_problems:
            table = res.errors[lab + " (SDE)"]
            info = res.info[lab]
            md += [f"### {lab}", "",
                   f"Noise floor {info['sw2_floor']:.2e} ± {info['sw2_floor_std']:.0e}; perfect solver "
                   f"{info['sw2_perfect']:.2e}.", "",
                   *summary_table(table, res.meta, SDE_BUDGETS, "SW2"), "",
                   f"<details><summary>Every configuration, {lab} (SDE)</summary>", "",
                   *full_table(table, res.meta, SDE_BUDGETS), "", "</details>", ""]
            cells = []
            for r in summary_rows(table, res.meta, SDE_BUDGETS):
                cells.append(f"{r['ours'][1].err:.1e} / {r['peer'][1].err:.1e}" if r["ours"] and r["peer"]
                             else "—")
            docs.append(f"| {lab} | {info['sw2_floor']:.1e} ± {info['sw2_floor_std']:.0e} | "
                        f"{info['sw2_perfect']:.1e} | " + " | ".join(cells) + " |")
    prov = provenance(argv)
    md += [prov, ""]
    docs += ["", "Full tables (every configuration, standard errors, the stochastic winners) and the "
             "error-vs-NFE figure: `benchmarks/results/peers.md`, `benchmarks/results/peers.png`. "
             "Peers are not dependencies of scoresde: the benchmark makes its own environment "
             "(`benchmarks/.peers-venv`, CPU torch, diffusers and k-diffusion from the package index):",
             "", "```bash", "python3 benchmarks/bench_peers.py --setup    # create/reuse the venv, run in it",
             "benchmarks/.peers-venv/bin/python benchmarks/bench_peers.py   # later runs", "```", "", prov]
    return "\n".join(md), "\n".join(docs)


# --------------------------------------------------------------------------- main


def to_json(res: Results) -> dict:
    conv = {p: {c: {str(k): (None if v is None else [v.err, v.se, v.nfe]) for k, v in row.items()}
                for c, row in t.items()} for p, t in res.errors.items()}
    return {"errors": conv, "meta": res.meta, "info": res.info}


def from_json(d: dict) -> Results:
    errs = {p: {c: {int(k): (None if v is None else Cell(*v)) for k, v in row.items()}
                for c, row in t.items()} for p, t in d["errors"].items()}
    return Results(errs, d["meta"], d["info"])


def merge(parts: list[Results]) -> Results:
    """Several raw files as one (e.g. the deterministic and the stochastic runs made apart); a
    later file's numbers replace an earlier one's for the same problem and configuration."""
    out = Results()
    for r in parts:
        for p, table in r.errors.items():
            out.errors.setdefault(p, {}).update(table)
        out.meta.update(r.meta)
        for p, info in r.info.items():
            out.info.setdefault(p, {}).update(info)
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", action="store_true",
                    help="create or reuse benchmarks/.peers-venv, then run this benchmark in it")
    ap.add_argument("--setup-only", action="store_true", help="with --setup: stop after the setup")
    ap.add_argument("--n", type=int, default=1000, help="draws of x_T for the pathwise errors")
    ap.add_argument("--n-sde", type=int, default=20000, help="samples per stochastic run")
    ap.add_argument("--replicates", type=int, default=2, help="replicates of each stochastic run")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--sdes", nargs="*", default=list(SDE_NAMES), choices=SDE_NAMES,
                    help="SDEs of the deterministic (pathwise) comparison (none: skip it)")
    ap.add_argument("--sde-sdes", nargs="*", default=["vp"], choices=SDE_NAMES,
                    help="SDEs on which the stochastic samplers are compared (none: skip them)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: n=200, eight_gaussians, VP, 2000 stochastic samples")
    ap.add_argument("--raw", type=Path, help="also save the raw numbers (JSON) here")
    ap.add_argument("--from-raw", type=Path, action="append",
                    help="only redraw the report from saved raw numbers (repeat to merge the files "
                         "of runs made apart, e.g. --sdes and --sde-sdes alone)")
    ap.add_argument("--out", type=Path, default=OUT_MD)
    ap.add_argument("--no-docs", action="store_true", help="do not write the docs/solvers.md section")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.setup:
        py = setup_venv()
        if args.setup_only:
            print(f"ready: {py.relative_to(ROOT)} benchmarks/bench_peers.py", file=sys.stderr)
            return
        rest = [a for a in argv if a not in ("--setup", "--setup-only")]
        os.execv(str(py), [str(py), str(Path(__file__).resolve()), *rest])
    if args.quick:
        args.n, args.n_sde, args.replicates = 200, 2000, 1
        args.targets, args.sdes, args.sde_sdes = ["eight_gaussians"], ["vp"], ["vp"]
        if args.out == OUT_MD:
            args.out = Path(tempfile.gettempdir()) / "peers_quick.md"
        args.no_docs = True
    torch.set_num_threads(args.threads)
    import_peers()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    problems = [f"{t}, {s}" for t in args.targets for s in args.sdes]
    sde_problems = [f"{t}, {s}" for t in args.targets for s in args.sde_sdes]
    if args.from_raw:
        res = merge([from_json(json.loads(f.read_text())) for f in args.from_raw])
    else:
        res = Results()
        det = ours(False) + diffusers_configs() + k_configs(False)
        sto = ours(True) + k_configs(True)
        t0 = time.time()
        for target in args.targets:
            for sde_name in args.sdes:
                p = make_problem(target, sde_name, args.n, 0)
                info = res.info.setdefault(p.label, {})
                info["offset"] = endpoint_offset(p)
                info["checks"] = adapter_checks(p)
                pathwise(p, det, BUDGETS, res)
                print(f"  [{time.time() - t0:.0f} s]", file=sys.stderr, flush=True)
            for sde_name in args.sde_sdes:
                p = make_problem(target, sde_name, args.n_sde, 0, reference=False)
                stochastic(p, sto, args.n_sde, list(range(args.replicates)), res)
                print(f"  [{time.time() - t0:.0f} s]", file=sys.stderr, flush=True)
        if args.raw:
            write_atomic(args.raw, json.dumps(to_json(res)))
    md, docs = report(res, args, argv, problems, sde_problems)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if problems:
        plot(res, problems, args.out.with_suffix(".png"))
    write_atomic(args.out, md + "\n")
    if not args.no_docs:
        write_section(SOLVERS_MD, "peers", docs)
    print(docs)


if __name__ == "__main__":
    if "--setup" not in sys.argv[1:] and hasattr(os, "nice"):
        os.nice(5)  # a benchmark on a shared machine
    main(sys.argv[1:])
