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
Ours runs in the variable t here, as the reference does.

`--variables` instead compares the integration variables (t, sigma/alpha, the log-SNR,
EDM's x/alpha against sigma/alpha) and error norms (per-sample, batch RMS, log p): NFE and
worst-sample error over a tolerance sweep on the exact oracle (VP, sub-VP, VE; D = 2, 5) and
on an MLP trained on eight_gaussians here (3000 steps, or `--checkpoint`), encode/decode in
every variable, where in t the evaluations go, and the time per right-hand side against the
network's forward and backward passes; it writes
`benchmarks/results/likelihood_variables.md`:
`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_likelihood.py --variables --threads 1`.
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
        # in t, like the reference (and the default until issue 13), so that the stored
        # figures stay reproducible; --variables compares the variables
        kw.setdefault("variable", "t")

        def fn():
            gen = torch.Generator(device=device).manual_seed(seed + 1)
            return sd.log_likelihood(model, x, rtol=tol, atol=tol, t_eps=T_EPS, generator=gen, **kw)
        return fn

    hutch = {"divergence": "hutchinson", "probe": "gaussian"}
    # the truths the integration errors are measured against (float64, tolerance 1e-10)
    x64 = x.double()
    star_h = sd.log_likelihood(model, x64, divergence="hutchinson", probe="gaussian", rtol=TIGHT,
                               atol=TIGHT, t_eps=T_EPS, variable="t",
                               generator=torch.Generator(device=device).manual_seed(seed + 1))
    star_e = sd.log_likelihood(model, x64, rtol=TIGHT, atol=TIGHT, t_eps=T_EPS, variable="t")
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


# ----------------------------------------------------------------------------- variables x norms

#: tolerances of the variable/norm sweeps, loosest first
SWEEP_TOLS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7)
#: accuracy at which the sweep compares NFE: max |error| per sample, nats/dim
TARGET = 1e-4
DEFAULT = ("t", "per_sample")  # the defaults before this benchmark's study (issue 13)


def sweep_oracle(sde_name: str, dim: int, n: int, variables, norms, seed: int = 0) -> list[dict]:
    """NFE and max |error| (nats/dim, against the exact log p_{t_eps}, with the exact log p_T(z)
    in place of the prior) over `SWEEP_TOLS` for every variable and norm, exact divergence,
    float64. A sweep stops once the error is below TARGET / 10."""
    sde = sd.get_sde(sde_name)
    gm = sd.analytic.GaussianMixture.random(3, dim, torch.Generator().manual_seed(seed + dim))
    x = gm.sample(n, torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    model = gm.as_model(sde)
    exact = gm.marginal_log_prob(x, T_EPS, sde)
    rows = []
    for var in variables:
        for norm in norms:
            pts = []
            for tol in SWEEP_TOLS:
                res = sd.log_likelihood(model, x, rtol=tol, atol=tol, t_eps=T_EPS, variable=var,
                                        norm=norm)
                corr = res.logp - res.prior_logp + gm.marginal_log_prob(res.z, sde.T, sde)
                err = ((corr - exact).abs().max() / dim).item()
                pts.append((tol, res.nfe, err))
                if err < TARGET / 10:
                    break
            ok = [nfe for _, nfe, err in pts if err <= TARGET]
            rows.append({"sde": sde_name, "dim": dim, "variable": var, "norm": norm, "pts": pts,
                         "nfe_at_target": min(ok) if ok else None})
            print(f"  {sde_name} D={dim} {var:8s} {norm:10s} NFE@{TARGET:g}: "
                  f"{rows[-1]['nfe_at_target']}  " +
                  " ".join(f"{t:.0e}:{k}/{e:.1e}" for t, k, e in pts), flush=True)
    return rows


def oracle_markdown(rows: list[dict]) -> str:
    lines = [f"### Exact oracle: NFE to reach max |error| <= {TARGET:g} nats/dim", "",
             f"Random 3-component Gaussian mixtures (full covariances), B = "
             f"{{B}} points, exact divergence, float64, dopri5, rtol = atol = tol, t_eps = "
             f"{T_EPS:g}. Error: the worst sample's |log p - exact log p_t_eps| / D, with the "
             f"exact log p_T(z) in place of the prior (the integration alone). 'NFE @ target': "
             f"the fewest RHS evaluations on the tolerance grid whose error is <= {TARGET:g} "
             f"(— if none); 'vs default': the defaults' (variable t, per-sample norm) NFE @ "
             f"target over this row's.", "",
             "| SDE | D | variable | norm | NFE @ target | vs default | sweep: tol → NFE / max err |",
             "|---|---|---|---|---|---|---|"]
    base = {(r["sde"], r["dim"]): r["nfe_at_target"] for r in rows
            if (r["variable"], r["norm"]) == DEFAULT}
    for r in rows:
        b = base.get((r["sde"], r["dim"]))
        k = r["nfe_at_target"]
        ratio = f"{b / k:.2f}x" if (b and k) else "—"
        sweep = ", ".join(f"{t:.0e} → {n} / {e:.1e}" for t, n, e in r["pts"])
        lines.append(f"| {r['sde']} | {r['dim']} | {r['variable']} | {r['norm']} "
                     f"| {k if k else '—'} | {ratio} | {sweep} |")
    return "\n".join(lines)


def trained_model(checkpoint: str | None, steps: int, seed: int = 0) -> sd.ScoreModel:
    """A small MLP trained on eight_gaussians (`steps` Adam steps, 20-40 ms each on one CPU
    thread), or the checkpoint given: one from `scoresde train`, or a model saved with
    `--save-model`."""
    if checkpoint:
        try:
            return sd.load_model(checkpoint)
        except Exception:  # a whole model saved by --save-model
            return torch.load(checkpoint, weights_only=False)
    x = sd.data.eight_gaussians(20_000, generator=torch.Generator().manual_seed(seed))
    net = sd.nets.MLPScoreNet(dim=2, hidden=128, depth=3,
                              generator=torch.Generator().manual_seed(seed + 1))
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="eps")
    tr = sd.Trainer(model, lr=2e-3, batch_size=512, warmup_steps=100, ema_decay=0.999,
                    seed=seed, progress=False)
    t0 = time.perf_counter()
    tr.fit(x, steps=steps)
    print(f"  trained {steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    return tr.ema_model()


TRAINED_TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)


def sweep_trained(model: sd.ScoreModel, n: int, variables, norms, seed: int = 0) -> dict:
    """The trained model on `n` held-out eight_gaussians points (float64): a reference solve
    (variable t, per-sample norm, tolerance 1e-8), then every variable and norm over
    `TRAINED_TOLS`: NFE, the mean log-likelihood's difference from the reference, and the
    worst sample's."""
    model = model.double().eval()
    x = sd.data.eight_gaussians(n, generator=torch.Generator().manual_seed(seed + 10_000),
                                dtype=torch.float64)
    ref = sd.log_likelihood(model, x, rtol=1e-8, atol=1e-8, variable="t")
    se = (ref.logp.std() / math.sqrt(n)).item()
    out = {"n": n, "ref_mean": ref.logp.mean().item(), "ref_nfe": ref.nfe, "se": se, "rows": []}
    print(f"  reference: mean log p {out['ref_mean']:.5f} ± {se:.4f} (s.e.), NFE {ref.nfe}",
          flush=True)
    for var in variables:
        for norm in norms:
            pts = []
            for tol in TRAINED_TOLS:
                res = sd.log_likelihood(model, x, rtol=tol, atol=tol, variable=var, norm=norm)
                d = (res.logp - ref.logp).abs()
                pts.append((tol, res.nfe, abs(res.logp.mean().item() - out["ref_mean"]),
                            d.max().item()))
            ok = [k for _, k, dm, _ in pts if dm <= se]
            ok_strict = [k for _, k, _, dx in pts if dx <= 1e-3]
            row = {"variable": var, "norm": norm, "pts": pts,
                   "nfe_within_se": min(ok) if ok else None,
                   "nfe_max_1e3": min(ok_strict) if ok_strict else None}
            out["rows"].append(row)
            print(f"  trained {var:8s} {norm:10s} within s.e.: {row['nfe_within_se']}, "
                  f"max err <= 1e-3: {row['nfe_max_1e3']}  " +
                  " ".join(f"{t:.0e}:{k}/{dm:.1e}/{dx:.1e}" for t, k, dm, dx in pts), flush=True)
    return out


def trained_markdown(tr: dict) -> str:
    base = next(r for r in tr["rows"] if (r["variable"], r["norm"]) == DEFAULT)
    at_default = next(k for t, k, _, _ in base["pts"] if t == 1e-5)
    lines = ["### Trained MLP (eight_gaussians, VP): NFE at the same estimate", "",
             f"Held-out n = {tr['n']} points, float64, exact divergence. Reference: variable t, "
             f"per-sample norm, tolerance 1e-8 ({tr['ref_nfe']} NFE): mean log p = "
             f"{tr['ref_mean']:.5f}, standard error of the mean {tr['se']:.4f}. 'within s.e.': the "
             f"fewest NFE on the tolerance grid {list(TRAINED_TOLS)} whose mean is within one "
             f"s.e. of the reference; 'max err <= 1e-3': whose worst sample is within 1e-3 nats. "
             f"The old default (t, per-sample, 1e-5) used {at_default} NFE.", "",
             "| variable | norm | NFE within s.e. | NFE, max err <= 1e-3 | sweep: tol → NFE / "
             "|mean err| / max err |", "|---|---|---|---|---|"]
    for r in tr["rows"]:
        sweep = ", ".join(f"{t:.0e} → {k} / {dm:.1e} / {dx:.1e}" for t, k, dm, dx in r["pts"])
        lines.append(f"| {r['variable']} | {r['norm']} | {r['nfe_within_se']} "
                     f"| {r['nfe_max_1e3']} | {sweep} |")
    return "\n".join(lines)


def sweep_flow(model: sd.ScoreModel, n: int, seed: int = 0) -> str:
    """Encode and decode in every variable: NFE and the worst error against a tight solve
    (tolerance 1e-9), on the trained model (eight_gaussians held-out points) and the exact
    oracle (5-D random mixtures, VP and VE)."""
    lines = ["### Encoding and decoding in every variable", "",
             "Worst absolute error of the latent (encode) and of the data (decode, from the "
             "exact latent) against a solve at tolerance 1e-9; per-sample norm. Trained: the "
             f"MLP above, n = {n} held-out points, float64. Oracle: 5-D random 3-component "
             "mixture, 32 points.", "",
             "| model | tol | variable | encode NFE | encode max err | decode NFE | decode max err |",
             "|---|---|---|---|---|---|---|"]
    problems = []
    m = model.double().eval()
    x = sd.data.eight_gaussians(n, generator=torch.Generator().manual_seed(seed + 10_000),
                                dtype=torch.float64)
    problems.append(("trained MLP, VP", m, x))
    for sde_name in ("vp", "ve"):
        gm = sd.analytic.GaussianMixture.random(3, 5, torch.Generator().manual_seed(8))
        problems.append((f"oracle, {sde_name}", gm.as_model(sd.get_sde(sde_name)),
                         gm.sample(32, torch.Generator().manual_seed(108), dtype=torch.float64)))
    for label, model_, x_ in problems:
        z_ref = sd.pf_ode_encode(model_, x_, rtol=1e-9, atol=1e-9, variable="sigma").z
        x_ref = sd.pf_ode_decode(model_, z_ref, rtol=1e-9, atol=1e-9, variable="log_snr").x
        for tol in (1e-4, 1e-5):
            for var in sd.likelihood.VARIABLES:
                enc = sd.pf_ode_encode(model_, x_, rtol=tol, atol=tol, variable=var)
                dec = sd.pf_ode_decode(model_, z_ref, rtol=tol, atol=tol, variable=var)
                lines.append(f"| {label} | {tol:g} | {var} | {enc.nfe} "
                             f"| {(enc.z - z_ref).abs().max().item():.1e} | {dec.nfe} "
                             f"| {(dec.x - x_ref).abs().max().item():.1e} |")
                print("  " + lines[-1], flush=True)
    return "\n".join(lines)


class _TimeLog(torch.nn.Module):
    """Wraps a network and records the time of every call."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net, self.times = net, []

    def forward(self, x, t, **cond):
        self.times.append(float(t.reshape(-1)[0]))
        return self.net(x, t, **cond)


def where_evaluations(model: sd.ScoreModel, n: int, seed: int = 0) -> str:
    """Where in t a likelihood solve (tolerance 1e-5, per-sample norm) spends its evaluations,
    per variable: the trained model and the 2-D VP oracle."""
    edges = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 0.3, 1.0]
    lines = ["### Where the evaluations go", "",
             "Right-hand-side evaluations of one log_likelihood solve (rtol = atol = 1e-5, "
             "per-sample norm) by the time t they evaluate, per interval of t.", "",
             "| model | variable | NFE | " + " | ".join(
                 f"[{a:g}, {b:g})" for a, b in zip(edges, edges[1:], strict=False)) + " |",
             "|---|---|---|" + "---|" * (len(edges) - 1)]
    x_tr = sd.data.eight_gaussians(n, generator=torch.Generator().manual_seed(seed + 10_000),
                                   dtype=torch.float64)
    gm = sd.analytic.GaussianMixture.random(3, 2, torch.Generator().manual_seed(seed + 2))
    x_or = gm.sample(n, torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    oracle = sd.ScoreModel.from_score_fn(lambda y, t: gm.score(y, t, sd.VPSDE()), sd.VPSDE())
    for label, m, x in (("trained MLP", model.double().eval(), x_tr), ("oracle, VP, D = 2", oracle, x_or)):
        wrapped = sd.ScoreModel(_TimeLog(m.net), m.sde, prediction=m.prediction)
        for var in sd.likelihood.VARIABLES:
            wrapped.net.times = []
            res = sd.log_likelihood(wrapped, x, variable=var)
            ts = torch.tensor(wrapped.net.times)
            counts = [int(((ts >= a) & ((ts < b) if b < 1.0 else (ts <= b))).sum())
                      for a, b in zip(edges, edges[1:], strict=False)]
            lines.append(f"| {label} | {var} | {res.nfe} | " + " | ".join(map(str, counts)) + " |")
            print("  " + lines[-1], flush=True)
    return "\n".join(lines)


def _per_rhs_rows(m: sd.ScoreModel, dtype: torch.dtype, n: int, repeats: int) -> list[str]:
    x = sd.data.eight_gaussians(n, generator=torch.Generator().manual_seed(3), dtype=dtype)
    t = torch.full((n,), 0.5, dtype=dtype)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    nfe: dict = {}

    def fb(k):
        def fn():
            for _ in range(20):
                xg = x.detach().requires_grad_(True)
                s = m.score(xg, t)
                for j in range(k):
                    torch.autograd.grad(s, xg, v, retain_graph=j < k - 1)
        return fn

    def solve(div, variable, norm):
        def fn():
            r = sd.log_likelihood(m, x, divergence=div, variable=variable, norm=norm,
                                  generator=torch.Generator().manual_seed(5))
            nfe[(div, variable, norm)] = r.nfe
        return fn

    cases = [("hutchinson", "t", "per_sample"), ("hutchinson", "sigma", "per_sample"),
             ("exact", "t", "per_sample"), ("exact", "sigma", "per_sample"),
             ("exact", "sigma", "logp"), ("exact", "edm", "per_sample")]
    fns = {"fb1": fb(1), "fb2": fb(2), **{c: solve(*c) for c in cases}}
    med = time_interleaved(fns, torch.device("cpu"), repeats)
    rows = []
    for div, var, norm in cases:
        k = "fb1" if div == "hutchinson" else "fb2"
        cost = 1e3 * med[k][1] / 20
        per = 1e3 * med[(div, var, norm)][1] / nfe[(div, var, norm)]
        rows.append(f"| {str(dtype).split('.')[-1]} | {div} | {var} | {norm} | "
                    f"{nfe[(div, var, norm)]} | {cost:.3f} | {per:.3f} | {per / cost:.2f}x |")
    return rows


def per_rhs_cost(model: sd.ScoreModel, n: int, repeats: int) -> str:
    """Process CPU time per right-hand side of a whole solve against one network forward and
    one (Hutchinson, 1 probe) or D = 2 (exact) backward passes on the same batch."""
    lines = ["### Time per right-hand side vs the network's forward + backward passes", "",
             f"MLPScoreNet (trained above), B = {n}, one CPU thread; process CPU time (robust "
             f"on a shared machine), medians of {repeats} interleaved rounds. 'per RHS' = a "
             "whole log_likelihood solve (rtol = atol = 1e-5) over its NFE; 'F + kB' = one "
             "network forward plus the k backward passes a right-hand side needs (k = 1 for "
             "Hutchinson with one probe, k = D = 2 for the exact divergence), measured alone "
             "at t = 0.5.", "",
             "| dtype | divergence | variable | norm | NFE | F + kB (ms) | per RHS (ms) | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for dtype in (torch.float32, torch.float64):
        lines += _per_rhs_rows(model.to(dtype).eval(), dtype, n, repeats)
    model.double()
    return "\n".join(lines)


def run_variables(a) -> None:
    variables, norms = sd.likelihood.VARIABLES, sd.likelihood.NORMS
    parts = [] if a.append else [
        "## PF-ODE likelihood: integration variables and error norms (issue 13)", "",
        f"CPU, torch {torch.__version__}, torch threads {torch.get_num_threads()}. Command: "
        f"`OMP_NUM_THREADS=1 python benchmarks/bench_likelihood.py --variables --threads 1`",
        ""]
    if not a.skip_oracle:
        rows = []
        for sde_name in a.sdes:
            for dim in a.dims_oracle:
                rows += sweep_oracle(sde_name, dim, a.n_oracle, variables, norms)
        parts += [oracle_markdown(rows).replace("{B}", str(a.n_oracle)), ""]
    model = trained_model(a.checkpoint, a.train_steps)
    if a.save_model:
        torch.save(model, a.save_model)
    if not a.skip_trained:
        parts += [trained_markdown(sweep_trained(model, a.n_trained, variables, norms)), ""]
    if not a.skip_flow:
        parts += [sweep_flow(model, 256), ""]
    if not a.skip_where:
        parts += [where_evaluations(model, 256), ""]
    if not a.skip_cost:
        parts += [per_rhs_cost(model, a.n_trained, a.repeats), ""]
    md = "\n".join(parts)
    with open(a.out_variables, "a" if a.append else "w") as f:
        f.write(md)
    print(md)


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
    v = p.add_argument_group("integration variables and error norms (--variables)")
    v.add_argument("--variables", action="store_true",
                   help="instead of the reference comparison: sweep every variable and error "
                        "norm on the oracle and a trained model, and the per-RHS cost")
    v.add_argument("--sdes", nargs="+", default=["vp", "subvp", "ve"])
    v.add_argument("--dims-oracle", type=int, nargs="+", default=[2, 5])
    v.add_argument("--n-oracle", type=int, default=256)
    v.add_argument("--n-trained", type=int, default=1000)
    v.add_argument("--train-steps", type=int, default=3000)
    v.add_argument("--checkpoint", default=None, help="a trained eight_gaussians model instead")
    v.add_argument("--skip-oracle", action="store_true")
    v.add_argument("--skip-trained", action="store_true")
    v.add_argument("--skip-cost", action="store_true")
    v.add_argument("--skip-flow", action="store_true")
    v.add_argument("--skip-where", action="store_true")
    v.add_argument("--save-model", default=None, help="torch.save the trained model here")
    v.add_argument("--out-variables", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "likelihood_variables.md"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.variables:
        run_variables(a)
        return
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
