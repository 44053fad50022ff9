"""Benchmark (not a test): the sampling loop's overhead over the network evaluations it pays for.

For an ``MLPScoreNet`` (``dim=2``, default size: 75,138 parameters) wrapped in
``ScoreModel(VPSDE(), prediction="eps")`` and a batch of ``--batch`` points, every solver is run
through :func:`scoresde.sample` at a budget of ``--nfe`` network evaluations (the final
denoising step included; where a solver cannot meet the budget exactly, the nearest budget it
can meet, the larger one on a tie). The figure of merit is

    overhead = wall time of sd.sample(...) / (NFE x time of one network evaluation),

one evaluation being timed the way the samplers call the network: ``model.eps(x, t)`` on a
``(B, 2)`` batch with a 0-d time tensor (expanded to ``(B,)`` inside the model), under
``torch.no_grad()``. The target is ``overhead <= 1.10`` for every solver with a fixed budget.
A reference row, a bare Python loop of NFE ``model.eps`` calls, shows the timer's noise.

Each row runs ``--repeats`` timed ``sample`` calls after a warm-up, each next to (alternately
before and after) a timing of one evaluation (``--eval-calls`` back-to-back calls, synchronised
at their ends only, divided by their number), and reports the medians of the walls, of the
evaluation times and of the per-run ratios, so that a drift of the machine's speed (a shared
CPU) largely cancels out of the ratio. ``time.perf_counter``, with the device synchronised around
each timed call on CUDA; ``torch.set_num_threads(--threads)``.

A second table times the same rows with a free network (``NullNet``, which returns its
input): that is the loop's own cost, per evaluation, and ``1 + cost / (one evaluation)`` an
upper bound of the overhead that timing noise does not blur (minimum of ``--null-repeats``
runs, in the main thread's CPU time on the CPU, wall time on CUDA). On a busy machine,
``--null-only`` runs just that table.

Run: ``.venv/bin/python benchmarks/bench_sampling.py`` (writes ``benchmarks/results/sampling.md``
and prints it). ``--device cuda`` on a GPU machine (then ``--out`` to keep the CPU results).
``--profile ROW`` prints a cProfile and a torch.profiler summary of one ``sample`` call of
that row (e.g. ``--profile torchsde`` or ``--profile pf_ode:rk4``) instead of the tables.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import scoresde as sd  # noqa: E402
from scoresde.samplers import BudgetError, make_solver  # noqa: E402

TARGET = 1.10

#: (row label, solver name, options): every fixed-budget configuration that is benchmarked
#: option variants measured besides each registered solver's defaults; solvers that are
#: adaptive by default (pf_ode, torchsde) are measured through their fixed-step methods
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "ddim": [{"eta": 0.0}, {"eta": 1.0}],
    "pf_ode": [{"method": "euler"}, {"method": "midpoint"}, {"method": "rk4"}],
    "torchsde": [{"method": "euler"}],
}


def configs() -> list[tuple[str, str, dict[str, Any]]]:
    """Every registered solver (the registry, not a list kept here): its variants, or its
    defaults; solvers that are adaptive only (no fixed-step variant, e.g. ggf) are skipped,
    since the figure of merit needs a fixed budget."""
    from scoresde.samplers import adaptive_solvers
    rows = []
    for name in sd.SOLVERS:
        if name in VARIANTS:
            rows += [(name, name, dict(o)) for o in VARIANTS[name]]
        elif name not in adaptive_solvers():
            rows.append((name, name, {}))
    return rows


CONFIGS: list[tuple[str, str, dict[str, Any]]] = configs()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs
    (wall time by default)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = clock()
        fn()
        sync(device)
        times.append(clock() - t0)
    return statistics.median(times)


def budget_for(solver: str, options: dict[str, Any], nfe: int) -> int:
    """``nfe`` if the solver can meet it with the denoising step, else the nearest budget it
    can meet (the larger one on a tie)."""
    slv = make_solver(solver, **options)
    try:
        slv.steps_for_nfe(nfe, extra=1)
        return nfe
    except BudgetError:
        ok = slv.reachable(nfe + 4 * slv.nfe_for_steps(1) + 4, extra=1)
        return min(ok, key=lambda k: (abs(k - nfe), -k))


def build_model(device: torch.device) -> sd.ScoreModel:
    net = sd.nets.MLPScoreNet(dim=2, generator=torch.Generator().manual_seed(0))
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="eps").to(device)
    model.eval()
    return model


class NullNet(torch.nn.Module):
    """A free stand-in for the network (returns its input): timing `sample` with it leaves
    only the loop's own cost (solver arithmetic, noise, checks, bookkeeping)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()))  # gives the model its device

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x


def one_eval_fn(model: sd.ScoreModel, batch: int, device: torch.device) -> Callable[[], Any]:
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, 2, generator=g, device=device)
    t = torch.tensor(0.5, device=device)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model.eps(x, t)

    return run


def sample_fn(model: sd.ScoreModel, batch: int, device: torch.device, solver: str,
              options: dict[str, Any], nfe: int) -> Callable[[], Any]:
    g = torch.Generator(device=device)

    def run() -> sd.SampleResult:
        g.manual_seed(2)
        res = sd.sample(model, (batch, 2), solver=solver, nfe=nfe, generator=g, **options)
        if res.nfe != nfe:
            raise RuntimeError(f"{solver} {options}: asked for nfe={nfe}, used {res.nfe}")
        return res

    return run


def fmt_opts(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "(defaults)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, threads: int) -> str:
    dev = (f"CUDA ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "CPU")
    return (f"torch {torch.__version__}; device {dev}; torch threads {threads} "
            f"(of {os.cpu_count()} logical CPUs); CPU model: {cpu_model()}; "
            f"Python {platform.python_version()}")


def profile(model: sd.ScoreModel, a: argparse.Namespace, device: torch.device) -> None:
    """cProfile and torch.profiler summaries of one ``sample`` call of the ``--profile`` row."""
    rows = [(lab, s, o) for lab, s, o in CONFIGS
            if a.profile in (lab, f"{lab}:{fmt_opts(o)}", f"{s}:{o.get('method', '')}")]
    if not rows:
        raise SystemExit(f"--profile: no row named {a.profile!r}; rows: "
                         f"{[f'{lab}:{fmt_opts(o)}' for lab, _, o in CONFIGS]}")
    for label, solver, options in rows:
        nfe = budget_for(solver, options, a.nfe)
        run = sample_fn(model, a.batch, device, solver, options, nfe)
        run()
        print(f"\n### {label} {fmt_opts(options)}, nfe={nfe}: cProfile (cumulative, top 30)\n")
        pr = cProfile.Profile()
        pr.enable()
        run()
        sync(device)
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
        print(f"\n### {label} {fmt_opts(options)}: torch.profiler (self CPU time, top 25; "
              "on CUDA that shows the launches and synchronisations)\n")
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            run()
            sync(device)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--nfe", type=int, default=100, help="NFE budget, denoising step included")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row (median)")
    p.add_argument("--eval-calls", type=int, default=25,
                   help="back-to-back network evaluations per timing of one evaluation")
    p.add_argument("--null-repeats", type=int, default=25,
                   help="runs per row of the null-network table (minimum taken)")
    p.add_argument("--null-only", action="store_true",
                   help="only the null-network table (quick and stable on a busy machine); "
                        "the one-evaluation time is then the fastest of 200 single calls")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results", "sampling.md"))
    p.add_argument("--rows", default=None,
                   help="comma-separated row labels to run (default: all), e.g. 'torchsde,pc'")
    p.add_argument("--profile", default=None, metavar="ROW",
                   help="profile one row (a solver name, or 'pf_ode:rk4', 'torchsde:euler') "
                        "instead of writing the table")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model = build_model(device)
    if a.profile:
        profile(model, a, device)
        return

    # One network evaluation, timed as the samplers call it: a run of `k_eval` back-to-back
    # calls (synchronised at its ends only, so that on CUDA launches overlap with kernels as
    # they do inside a sampler), divided by `k_eval`. It is re-timed next to every timed
    # sample call, alternately before and after it, and a row's overhead is the median over
    # its repeats of wall / (NFE x that adjacent evaluation time): drifts of the machine's
    # speed (a shared CPU, clock changes) largely cancel out of the ratio.
    eval_fn = one_eval_fn(model, a.batch, device)
    k_eval = a.eval_calls

    def bare_loop(n: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(n):
                eval_fn()
        return run

    eval_run = bare_loop(k_eval)
    timed(eval_fn, device, 1, warmup=10)

    jobs = [("(reference) bare loop", f"{a.nfe} x model.eps", a.nfe, bare_loop(a.nfe), None, {})]
    wanted = None if a.rows is None else set(a.rows.split(","))
    for label, solver, options in CONFIGS:
        if wanted is not None and label not in wanted:
            continue
        nfe = budget_for(solver, options, a.nfe)
        jobs.append((label, fmt_opts(options), nfe,
                     sample_fn(model, a.batch, device, solver, options, nfe), solver, options))
    rows = []
    all_evals = [timed(eval_run, device, 1, warmup=0) / k_eval for _ in range(3)]
    if a.null_only:  # only the fastest single evaluation, for the null table's prediction
        all_evals = [timed(eval_fn, device, 1, warmup=0) for _ in range(200)]
    for label, opts, nfe, fn, _, _ in ([] if a.null_only else jobs):
        try:
            fn()  # warm-up
        except Exception as e:  # a broken solver is reported in the table, not fatal
            msg = f"{type(e).__name__}: {e}".replace("|", "/").splitlines()[0][:100]
            rows.append((label, opts, nfe, None, None, None, msg))
            print(f"{label:22s} {opts:18s} nfe={nfe:4d} FAILED: {msg}", file=sys.stderr)
            continue
        walls, evals, ratios = [], [], []
        for r in range(a.repeats):
            if r % 2 == 0:
                te = timed(eval_run, device, 1, warmup=0) / k_eval
                w = timed(fn, device, 1, warmup=0)
            else:
                w = timed(fn, device, 1, warmup=0)
                te = timed(eval_run, device, 1, warmup=0) / k_eval
            walls.append(w)
            evals.append(te)
            ratios.append(w / (nfe * te))
        all_evals += evals
        row = (label, opts, nfe, statistics.median(walls), statistics.median(evals),
               statistics.median(ratios), "")
        rows.append(row)
        print(f"{label:22s} {opts:18s} nfe={nfe:4d} {row[3] * 1e3:9.2f} ms, eval "
              f"{row[4] * 1e3:.3f} ms, overhead {row[5]:.3f}", file=sys.stderr)

    # The loop's own cost, measured directly: the same rows with a free network (NullNet).
    # These runs are short and timed many times (minimum taken); the predicted overhead
    # divides the cost per NFE by the fastest evaluation time seen above.
    t_eval_min = min(t for t in all_evals)
    null = sd.ScoreModel(NullNet(), sd.VPSDE(), prediction="eps").to(device)
    # On the CPU the null runs are timed in the main thread's CPU time: their tensors are too
    # small for intra-op threads, so CPU time is the wall time of an idle machine, and time
    # spent descheduled by other processes does not count. On CUDA: wall time.
    null_clock = time.thread_time if device.type == "cpu" else time.perf_counter
    null_clock_text = ("in the main thread's CPU time, so that time spent descheduled by other processes "
                       "does not count" if device.type == "cpu" else "wall time")
    null_rows = []
    for label, opts, nfe, _, solver, options in [j for j in jobs if j[4] is not None]:
        fn = sample_fn(null, a.batch, device, solver, options, nfe)
        try:
            fn()
        except Exception as e:
            msg = f"{type(e).__name__}: {e}".replace("|", "/").splitlines()[0][:100]
            null_rows.append((label, opts, nfe, None, msg))
            continue
        t_null = min(timed(fn, device, 1, warmup=0, clock=null_clock)
                     for _ in range(a.null_repeats))
        null_rows.append((label, opts, nfe, t_null, ""))
    null_lines = ["| solver | options | NFE | null-network sample (ms) | loop cost per NFE (µs) | "
                  f"predicted overhead | meets ≤ {TARGET:.2f}? |",
                  "| --- | --- | ---: | ---: | ---: | ---: | :---: |"]
    for label, opts, nfe, t_null, err in null_rows:
        if err:
            null_lines.append(f"| {label} | {opts} | {nfe} | failed: `{err}` | | | **no** |")
            continue
        per = t_null / nfe
        pred = 1.0 + per / t_eval_min
        null_lines.append(f"| {label} | {opts} | {nfe} | {t_null * 1e3:.2f} | {per * 1e6:.1f} | "
                          f"{pred:.3f} | {'yes' if pred <= TARGET else '**no**'} |")

    lines = ["| solver | options | NFE | sample wall (ms) | one eval (ms) | overhead | meets ≤ "
             f"{TARGET:.2f}? |", "| --- | --- | ---: | ---: | ---: | ---: | :---: |"]
    for label, opts, nfe, wall, t_eval, ratio, err in rows:
        if err:
            lines.append(f"| {label} | {opts} | {nfe} | failed: `{err}` | | | **no** |")
            continue
        ok = "—" if label.startswith("(") else ("yes" if ratio <= TARGET else "**no**")
        lines.append(f"| {label} | {opts} | {nfe} | {wall * 1e3:.1f} | {t_eval * 1e3:.3f} | "
                     f"{ratio:.3f} | {ok} |")
    py = ".venv/bin/python" if ".venv" in sys.executable else os.path.basename(sys.executable)
    cmd = " ".join([py, "benchmarks/bench_sampling.py"]
                   + (argv if argv is not None else sys.argv[1:]))
    md = "\n".join([
        "## Sampling-loop overhead",
        "",
        f"MLPScoreNet(dim=2) (75,138 parameters) in ScoreModel(VPSDE(), \"eps\"), batch {a.batch}, "
        f"float32, budget nfe={a.nfe} (the denoising step included; the nearest budget a "
        "solver can meet where it cannot meet that one). Overhead = wall time of `sd.sample` / "
        "(NFE x one evaluation of `model.eps` on the same batch, 0-d time, no_grad). Each row: "
        f"{a.repeats} timed `sample` calls after a warm-up, each next to (alternately before "
        f"and after) a timing of one evaluation ({k_eval} back-to-back calls / {k_eval}); "
        "the table gives the medians of the walls, of the evaluation times and of the "
        "per-run ratios (so a drift of the machine's speed largely cancels). The reference "
        "row times a bare Python loop of NFE `model.eps` calls the same way: its distance "
        "from 1 is the timing noise.",
        "",
        f"Machine: {machine_info(device, torch.get_num_threads())}.",
        "",
        f"Command: `{cmd}`",
        "",
        *(lines if not a.null_only else ["(skipped: `--null-only`)"]),
        "",
        "### The loop's own cost, measured with a free network",
        "",
        "The same rows with `NullNet` (returns its input) in place of the MLP: the time is "
        f"then the loop's own cost (minimum of {a.null_repeats} runs, {null_clock_text}). "
        "Predicted overhead = 1 + (loop cost per NFE) / (fastest one-evaluation time "
        f"{'of 200 single calls' if a.null_only else 'above'}, {t_eval_min * 1e3:.3f} ms): an "
        "upper bound of the table above, free of its timing noise (it also counts the "
        "null network's own call).",
        "",
        *null_lines,
        "",
    ])
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
