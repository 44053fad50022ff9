"""Benchmark (not a test): probability-flow log-likelihoods, ours vs the original score_sde approach.

The reference is written here, small, after `likelihood.py` of Song et al.'s score_sde
code: scipy's `solve_ivp` (RK45) on a flattened NumPy vector `[x, logp]`, a
NumPy -> torch -> NumPy round trip per right-hand side, one Gaussian Hutchinson probe,
and the drift computed twice per right-hand side (once for `dx/dt`, once more inside
the divergence's autograd pass). Ours is `scoresde.log_likelihood` (torchdiffeq
`dopri5`, one forward per right-hand side, tolerance held per sample).

Both run on the same exact oracle score (a random Gaussian mixture pushed through the
VP-SDE, `GaussianMixture.as_model`), the same batch, `t_eps = 1e-5` and the same probe
draw, so with one probe both integrate the very same ODE. Two kinds of error are reported:

- against the exact `log p_{t_eps}(x)` (with the exact `log p_T(z)` in place of the
  prior): for Hutchinson this is dominated by the probe's noise, the same for both;
- the **integration error**: against the same estimator (same probe; or the exact
  divergence) solved at `rtol = atol = 1e-10`, and the latent against a `1e-10` solve.
  This is what the tolerance controls, and what "equal accuracy" is judged on.

Rows: the reference and ours at the same tolerance (ours with its default per-sample
error norm, and with the reference's batch-RMS norm), ours at **equal accuracy** (the
loosest tolerance on a grid whose mean and max integration errors of log p and max latent
error are all no larger than the reference's), and ours with the exact divergence.
Timing: every method once as a warm-up, then `--repeats` rounds in which each runs once,
in an order rotated every round (so load changes on a shared machine hit all alike);
medians of wall-clock and of process CPU time. A cost model (one network forward F, one
forward plus one backward pass F+B, the solver's overhead per evaluation) explains the
ratios.

Run (single-threaded, as the stored figures):
`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_likelihood.py --threads 1` (writes
`benchmarks/results/likelihood.md` and prints it; `--append` adds to the file instead;
`--sweep` adds a work-precision table over tolerances). `--device cuda` on a GPU machine.
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

T_EPS, TOL, TIGHT = 1e-5, 1e-5, 1e-10
#: tolerances tried, loosest last, for "ours at equal accuracy"
TOL_GRID = (1e-5, 1.5e-5, 2e-5, 3e-5, 5e-5, 7e-5, 1e-4, 1.5e-4, 2e-4, 3e-4, 5e-4, 7e-4, 1e-3)


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
        return sd.dynamics.reverse_drift(sde, xx, t, model.score(xx, t), probability_flow=True)

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


def batch_rms(state) -> torch.Tensor:
    """The reference's (scipy's) error norm: RMS over the whole flattened batch state."""
    return torch.cat([s.reshape(-1) for s in state]).pow(2).mean().sqrt()


# ----------------------------------------------------------------------------- measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(fn, device: torch.device):
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - w0, time.process_time() - c0


def time_interleaved(fns: dict, device: torch.device, repeats: int) -> dict:
    """Median wall and CPU seconds per method; each round runs every method once, the order
    rotated from round to round."""
    names = list(fns)
    for n in names:
        fns[n]()  # warm-up
    wall: dict = {n: [] for n in names}
    cpu: dict = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            _, w, c = _clock(fns[n], device)
            wall[n].append(w)
            cpu[n].append(c)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in names}


def cost_model(model: sd.ScoreModel, x: torch.Tensor, probe: torch.Tensor, device: torch.device,
               repeats: int) -> dict:
    """Milliseconds (process CPU time, medians; wall clock on CUDA) of one network forward
    (F) and of one forward plus one backward pass (F + B), at t = 0.5, interleaved."""
    t = torch.full((x.shape[0],), 0.5, dtype=x.dtype, device=device)

    def fwd():
        with torch.no_grad():
            return model.score(x, t)

    def fwd_bwd():
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = model.score(xg, t)
            return torch.autograd.grad(s, xg, probe)[0]

    def loop(fn, n=20):
        return lambda: [fn() for _ in range(n)]

    med = time_interleaved({"F": loop(fwd), "F+B": loop(fwd_bwd)}, device, max(repeats, 7))
    k = 0 if device.type == "cuda" else 1
    return {n: 1e3 * v[k] / 20 for n, v in med.items()}


def _int_errors(logp, z, logp_star, z_star, d):
    e = (logp.double() - logp_star) / d
    return {"int_mean": e.abs().mean().item(), "int_max": e.abs().max().item(),
            "zerr": (z.double() - z_star).abs().max().item()}


def _exact_errors(gm, sde, x, logp, prior_logp, z, exact):
    d = x[0].numel()
    corrected = (logp - prior_logp).double() + gm.marginal_log_prob(z.double(), sde.T, sde)
    e = (corrected - exact) / d
    return {"mae": e.abs().mean().item(), "bias": e.mean().item(),
            "bias_se": (e.std() / math.sqrt(e.numel())).item()}


def sweep_rounds(repeats: int) -> int:
    return max(3, repeats // 2)


def run_config(dim: int, batch: int, dtype: torch.dtype, device: torch.device, repeats: int,
               sweep: bool, seed: int = 0) -> tuple[list[dict], dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    gm = sd.analytic.GaussianMixture.random(4, dim, g)
    sde = sd.VPSDE()
    model = gm.as_model(sde, device=device)
    x = gm.sample(batch, g, dtype=torch.float64).to(device=device, dtype=dtype)
    exact = gm.marginal_log_prob(x.double(), T_EPS, sde)
    # the very draw log_likelihood makes from the same generator: both use the same probe
    probe = torch.randn((1,) + tuple(x.shape), generator=torch.Generator(device=device).manual_seed(seed + 1),
                        dtype=dtype, device=device)

    def ours(tol=TOL, **kw):
        def fn():
            gen = torch.Generator(device=device).manual_seed(seed + 1)
            return sd.log_likelihood(model, x, rtol=tol, atol=tol, t_eps=T_EPS, generator=gen, **kw)
        return fn

    hutch = {"divergence": "hutchinson", "probe": "gaussian"}
    # the truths the integration errors are measured against (float64, tolerance 1e-10)
    x64 = x.double()
    star_h = sd.log_likelihood(model, x64, divergence="hutchinson", probe="gaussian", rtol=TIGHT,
                               atol=TIGHT, t_eps=T_EPS,
                               generator=torch.Generator(device=device).manual_seed(seed + 1))
    star_e = sd.log_likelihood(model, x64, rtol=TIGHT, atol=TIGHT, t_eps=T_EPS)
    z_star = star_e.z

    def ref(tol=TOL):
        def fn():
            n0 = model.n_evals
            logp, z, nfev = reference_log_likelihood(model, x, probe[0], rtol=tol, atol=tol)
            return logp, z, nfev, model.n_evals - n0
        return fn

    def ref_row(out):
        logp, z, nfev, fwd = out
        return {"rhs": nfev, "forwards": fwd, "backwards": nfev,
                **_int_errors(logp, z, star_h.logp, z_star, dim),
                **_exact_errors(gm, sde, x, logp, sde.prior_logp(z), z, exact)}

    def our_row(res, star):
        return {"rhs": res.nfe, "forwards": res.nfe, "backwards": res.n_vjp,
                **_int_errors(res.logp, res.z, star.logp, z_star, dim),
                **_exact_errors(gm, sde, x, res.logp, res.prior_logp, res.z, exact)}

    rows = {"ref": {"method": "reference: scipy RK45, Hutchinson (Gaussian, 1 probe), drift twice",
                    "tol": TOL, **ref_row(ref()())}}
    fns = {"ref": ref()}
    rows["ours"] = {"method": "ours: dopri5, Hutchinson (Gaussian, 1 probe), per-sample norm",
                    "tol": TOL, **our_row(ours(**hutch)(), star_h)}
    fns["ours"] = ours(**hutch)
    rms = {**hutch, "options": {"norm": batch_rms}}
    rows["rms"] = {"method": "ours: same, batch-RMS norm (as the reference)", "tol": TOL,
                   **our_row(ours(**rms)(), star_h)}
    fns["rms"] = ours(**rms)
    # equal accuracy: the loosest tolerance at which ours is at least as accurate on all three
    # (if even TOL is not, the row stays at TOL and shows it)
    r = rows["ref"]
    eq_tol, eq_row = TOL, rows["ours"]
    for tol in TOL_GRID:  # from the tightest; stop at the first tolerance that is less accurate
        row = our_row(ours(tol, **hutch)(), star_h)
        if not all(row[k] <= r[k] for k in ("int_mean", "int_max", "zerr")):
            break
        eq_tol, eq_row = tol, row
    rows["eq"] = {"method": "ours: per-sample norm, at equal accuracy", "tol": eq_tol, **eq_row}
    fns["eq"] = ours(eq_tol, **hutch)
    rows["exact"] = {"method": "ours: dopri5, exact divergence, per-sample norm", "tol": TOL,
                     **our_row(ours()(), star_e)}
    fns["exact"] = ours()

    times = time_interleaved(fns, device, repeats)
    for k, row in rows.items():
        row.update(dim=dim, batch=batch, wall=times[k][0], cpu=times[k][1],
                   ratio_wall=times["ref"][0] / times[k][0], ratio_cpu=times["ref"][1] / times[k][1])

    cm = cost_model(model, x, probe[0], device, repeats)
    k = 0 if device.type == "cuda" else 1  # the clock the cost model used
    cm.update(dim=dim, ref_rhs=1e3 * times["ref"][k] / rows["ref"]["rhs"],
              ours_rhs=1e3 * times["ours"][k] / rows["ours"]["rhs"],
              ceiling=(2 * cm["F"] + (cm["F+B"] - cm["F"])) / cm["F+B"])

    swept = []
    if sweep:
        for tol in (1e-3, 1e-4, 1e-5, 1e-6):
            st = time_interleaved({"ref": ref(tol), "ours": ours(tol, **hutch)}, device,
                                  sweep_rounds(repeats))
            a, b = ref_row(ref(tol)()), our_row(ours(tol, **hutch)(), star_h)
            swept.append({"dim": dim, "tol": tol, "ref": {**a, "wall": st["ref"][0]},
                          "ours": {**b, "wall": st["ours"][0]}})
    return list(rows.values()), cm, swept


def to_markdown(rows: list[dict], costs: list[dict], swept: list[dict], header: str,
                rounds: int = 0) -> str:
    lines = [header, "",
             "| D | method | rtol = atol | RHS evals | network forwards | backward passes | wall (s) "
             "| CPU (s) | ref / ours (wall) | ref / ours (CPU) | integration err, mean (nats/dim) "
             "| integration err, max (nats/dim) | max abs z err | err vs exact log p, mean (nats/dim) "
             "| bias vs exact (nats/dim) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dim']} | {r['method']} | {r['tol']:g} | {r['rhs']} | {r['forwards']} "
                     f"| {r['backwards']} | {r['wall']:.3f} | {r['cpu']:.3f} | {r['ratio_wall']:.2f}x "
                     f"| {r['ratio_cpu']:.2f}x | {r['int_mean']:.1e} | {r['int_max']:.1e} "
                     f"| {r['zerr']:.1e} | {r['mae']:.2e} | {r['bias']:+.1e} ± {r['bias_se']:.1e} |")
    lines += ["", "Cost model (ms of CPU time, wall clock on CUDA; t = 0.5, the batch above): F = one "
              "network forward, B = one backward pass; 'per RHS' = a whole solve's time over its "
              "right-hand-side evaluations (Hutchinson rows at tolerance 1e-5); 'overhead' = per RHS "
              "minus the network work (2F + B for the reference, F + B for ours): solver, "
              "conversions, bookkeeping.", "",
              "| D | F | F + B | reference per RHS | its overhead | ours per RHS | our overhead "
              "| ceiling (2F + B) / (F + B) |",
              "|---|---|---|---|---|---|---|---|"]
    for c in costs:
        ref_over = c["ref_rhs"] - (c["F"] + c["F+B"])
        lines.append(f"| {c['dim']} | {c['F']:.3f} | {c['F+B']:.3f} | {c['ref_rhs']:.3f} "
                     f"| {ref_over:.3f} | {c['ours_rhs']:.3f} | {c['ours_rhs'] - c['F+B']:.3f} "
                     f"| {c['ceiling']:.2f}x |")
    if swept:
        lines += ["", "Work-precision sweep (Hutchinson, Gaussian, 1 probe; ours with the per-sample "
                  "norm): RHS evals, wall time (median of " + str(rounds) + " interleaved rounds), "
                  "integration error mean / max (nats/dim), max z err.", "",
                  "| D | rtol = atol | reference: RHS, wall (s) | reference: err mean / max, z "
                  "| ours: RHS, wall (s) | ours: err mean / max, z | ref / ours (wall) |",
                  "|---|---|---|---|---|---|---|"]
        for s in swept:
            a, b = s["ref"], s["ours"]
            lines.append(f"| {s['dim']} | {s['tol']:g} | {a['rhs']}, {a['wall']:.3f} "
                         f"| {a['int_mean']:.1e} / {a['int_max']:.1e}, {a['zerr']:.1e} "
                         f"| {b['rhs']}, {b['wall']:.3f} | {b['int_mean']:.1e} / {b['int_max']:.1e}, "
                         f"{b['zerr']:.1e} | {a['wall'] / b['wall']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 5, 20])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--sweep", action="store_true", help="add a work-precision table")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results", "likelihood.md"))
    p.add_argument("--append", action="store_true", help="append the table to --out")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    rows, costs, swept = [], [], []
    for d in a.dims:
        r, c, s = run_config(d, a.batch, dtype, device, a.repeats, a.sweep)
        rows += r
        costs.append(c)
        swept += s
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch threads {torch.get_num_threads()}, "
                  f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    args = argv if argv is not None else sys.argv[1:]
    shown, skip = [], False  # the command without --out/--append, for the table's header
    for x in args:
        if skip or x == "--append" or x.startswith("--out="):
            skip = False
            continue
        skip = x == "--out"
        if not skip:
            shown.append(x)
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    cmd = " ".join([f"{env}python", "benchmarks/bench_likelihood.py", *shown])
    header = (f"## PF-ODE log-likelihood: ours vs the score_sde reference ({a.device}, {a.dtype}, "
              f"B = {a.batch})\n\n"
              f"{where}; torch {torch.__version__}; {a.dtype}; VP-SDE; oracle: random 4-component "
              f"Gaussian mixture (full covariances), exact score; t_eps = {T_EPS:g}; one warm-up, "
              f"then medians of {a.repeats} interleaved rounds (wall clock and process CPU time).\n"
              f"Integration errors are against the same estimator (same probe, or the exact "
              f"divergence) solved at tolerance {TIGHT:g}, per dimension; z err against a "
              f"{TIGHT:g} solve; 'err vs exact log p' uses the exact log p_T(z) in place of the "
              f"prior (for Hutchinson it is the probe's noise). 'Equal accuracy': going up "
              f"{list(TOL_GRID)}, the last tolerance before the first at which any of the three "
              f"integration errors exceeds the reference's.\n\n"
              f"Command: `{cmd}`")
    md = to_markdown(rows, costs, swept, header, sweep_rounds(a.repeats))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "a" if a.append else "w") as f:
        f.write(("\n" if a.append else "") + md)
    print(md)


if __name__ == "__main__":
    main()
