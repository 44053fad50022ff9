"""Benchmark (not a test): probability-flow log-likelihoods, ours vs the original score_sde approach.

The reference is written here, small, after `likelihood.py` of Song et al.'s score_sde
code: scipy's `solve_ivp` (RK45) on a flattened NumPy vector `[x, logp]`, a
NumPy -> torch -> NumPy round trip per right-hand side, one Gaussian Hutchinson probe,
and the drift computed twice per right-hand side (once for `dx/dt`, once more inside
the divergence's autograd pass). Ours is `scoresde.log_likelihood` (torchdiffeq
`dopri5`, one forward per right-hand side, tolerance held per sample).

Both run on the same exact oracle score (a random Gaussian mixture pushed through the
VP-SDE, `GaussianMixture.as_model`), the same batch, `rtol = atol = 1e-5`,
`t_eps = 1e-5` and the same probe draw. Accuracy is measured against the exact
log p_{t_eps}(x) after replacing log pi(z) by the exact log p_T(z) (so it measures the
integration, not the prior mismatch); `|z - z*|` is the latent's error against a solve at
`rtol = atol = 1e-10`.

Run: `.venv/bin/python benchmarks/bench_likelihood.py` (writes
`benchmarks/results/likelihood.md` and prints it; `--append` adds to the file instead).
`--device cuda` on a GPU machine; docs/likelihood.md lists the commands behind the stored figures.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import scoresde as sd  # noqa: E402

T_EPS, TOL = 1e-5, 1e-5


# ----------------------------------------------------------------------------- the reference


def reference_log_likelihood(model: sd.ScoreModel, x: torch.Tensor, probe: torch.Tensor, *,
                             rtol: float = TOL, atol: float = TOL, t_eps: float = T_EPS
                             ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """score_sde's approach: scipy RK45 on a flat float64 NumPy state, torch per evaluation.

    Returns `(logp, z, nfev)`; each of the `nfev` right-hand sides costs two network
    forwards and one backward pass.
    """
    sde = model.sde
    shape, b, device, dtype = x.shape, x.shape[0], x.device, x.dtype

    def drift_fn(xx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sde.reverse_drift(xx, t, model.score(xx, t), probability_flow=True)

    def div_fn(xx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xx.requires_grad_(True)
            fn_eps = torch.sum(drift_fn(xx, t) * probe)       # the drift, a second time
            grad_fn_eps = torch.autograd.grad(fn_eps, xx)[0]
        xx.requires_grad_(False)
        return torch.sum(grad_fn_eps * probe, dim=tuple(range(1, xx.dim())))

    def ode_func(t: float, y: np.ndarray) -> np.ndarray:
        sample = torch.from_numpy(y[:-b]).reshape(shape).to(device=device, dtype=dtype)
        vec_t = torch.ones(b, device=device, dtype=dtype) * t
        drift = drift_fn(sample, vec_t).detach().cpu().numpy().reshape(-1)
        logp_grad = div_fn(sample, vec_t).detach().cpu().numpy().reshape(-1)
        return np.concatenate([drift, logp_grad], axis=0)

    with torch.no_grad():
        init = np.concatenate([x.detach().cpu().numpy().reshape(-1), np.zeros(b)], axis=0)
        sol = solve_ivp(ode_func, (t_eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
        zp = sol.y[:, -1]
        z = torch.from_numpy(zp[:-b]).reshape(shape).to(device=device, dtype=dtype)
        delta_logp = torch.from_numpy(zp[-b:]).to(device=device, dtype=dtype)
        return sde.prior_logp(z) + delta_logp, z, int(sol.nfev)


# ----------------------------------------------------------------------------- measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int):
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def _errors(gm, sde, x, logp, prior_logp, z, z_star, exact):
    d = x[0].numel()
    corrected = (logp - prior_logp).double() + gm.marginal_log_prob(z.double(), sde.T, sde)
    e = (corrected - exact) / d
    return {"mae": e.abs().mean().item(), "max": e.abs().max().item(), "bias": e.mean().item(),
            "bias_se": (e.std() / math.sqrt(e.numel())).item(),
            "zerr": (z.double() - z_star).abs().max().item()}


def run_config(dim: int, batch: int, dtype: torch.dtype, device: torch.device, repeats: int,
               seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    gm = sd.analytic.GaussianMixture.random(4, dim, g)
    sde = sd.VPSDE()
    model = gm.as_model(sde, device=device)
    x = gm.sample(batch, g, dtype=torch.float64).to(device=device, dtype=dtype)
    exact = gm.marginal_log_prob(x.double(), T_EPS, sde)
    z_star = sd.pf_ode_encode(model, x.double(), t_eps=T_EPS, rtol=1e-10, atol=1e-10).z
    # the very draw log_likelihood makes from the same generator: both use the same probe
    probe = torch.randn((1,) + tuple(x.shape), generator=torch.Generator(device=device).manual_seed(seed + 1),
                        dtype=dtype, device=device)

    rows = []

    def ref():
        n0 = model.n_evals
        logp, z, nfev = reference_log_likelihood(model, x, probe[0])
        return logp, model.sde.prior_logp(z), z, nfev, model.n_evals - n0

    (logp, prior, z, nfev, fwd), t_ref = _timed(ref, device, repeats)
    rows.append({"method": "reference: scipy RK45, Hutchinson (Gaussian, 1 probe), drift twice",
                 "rhs": nfev, "forwards": fwd, "time": t_ref,
                 **_errors(gm, sde, x, logp, prior, z, z_star, exact)})

    def ours(**kw):
        def fn():
            gen = torch.Generator(device=device).manual_seed(seed + 1)
            return sd.log_likelihood(model, x, rtol=TOL, atol=TOL, t_eps=T_EPS, generator=gen, **kw)
        return fn

    def batch_rms(state):  # the reference's error norm: RMS over the whole flattened batch
        return torch.cat([s.reshape(-1) for s in state]).pow(2).mean().sqrt()

    variants = [("ours: dopri5, Hutchinson (Gaussian, 1 probe)",
                 {"divergence": "hutchinson", "probe": "gaussian"}),
                ("ours: same, batch-RMS error norm (as the reference)",
                 {"divergence": "hutchinson", "probe": "gaussian", "options": {"norm": batch_rms}}),
                ("ours: dopri5, exact divergence", {"divergence": "exact"})]
    for name, kw in variants:
        res, t = _timed(ours(**kw), device, repeats)
        rows.append({"method": name, "rhs": res.nfe, "forwards": res.nfe, "time": t,
                     **_errors(gm, sde, x, res.logp, res.prior_logp, res.z, z_star, exact)})
    for r in rows:
        r.update(dim=dim, batch=batch, ratio=t_ref / r["time"])
    return rows


def to_markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| D | B | method | RHS evals | network forwards | time (s) | ref time / time "
             "| mean abs err (nats/dim) | max abs err (nats/dim) | bias (nats/dim) | max abs z err |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dim']} | {r['batch']} | {r['method']} | {r['rhs']} | {r['forwards']} "
                     f"| {r['time']:.3f} | {r['ratio']:.2f}x | {r['mae']:.2e} | {r['max']:.2e} "
                     f"| {r['bias']:+.1e} ± {r['bias_se']:.1e} | {r['zerr']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 5, 20])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results", "likelihood.md"))
    p.add_argument("--append", action="store_true", help="append the table to --out")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    rows = []
    for d in a.dims:
        rows += run_config(d, a.batch, dtype, device, a.repeats)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    args = argv if argv is not None else sys.argv[1:]
    shown, skip = [], False  # the command without --out/--append, for the table's header
    for x in args:
        if skip or x == "--append" or x.startswith("--out="):
            skip = False
            continue
        skip = x == "--out"
        if not skip:
            shown.append(x)
    cmd = " ".join(["python", "benchmarks/bench_likelihood.py", *shown])
    header = (f"## PF-ODE log-likelihood: ours vs the score_sde reference ({a.device}, {a.dtype}, "
              f"B = {a.batch})\n\n"
              f"{where}; torch {torch.__version__}; {a.dtype}; VP-SDE; oracle: random 4-component "
              f"Gaussian mixture (full covariances), exact score; rtol = atol = {TOL:g}, "
              f"t_eps = {T_EPS:g}; median of {a.repeats} runs after a warm-up.\n"
              f"Errors are per dimension against the exact log p_t_eps(x), with the exact "
              f"log p_T(z) in place of the prior; z err is against a solve at tolerance 1e-10.\n\n"
              f"Command: `{cmd}`")
    md = to_markdown(rows, header)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "a" if a.append else "w") as f:
        f.write(("\n" if a.append else "") + md)
    print(md)


if __name__ == "__main__":
    main()
