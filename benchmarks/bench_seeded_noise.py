"""The cost of per-sample noise (`sample(..., seed=)`) against one generator stream.

    python benchmarks/bench_seeded_noise.py            # about 2 minutes on one CPU thread

Two tables, written to benchmarks/results/seeded_noise.md (and quoted in
docs/sharded_evaluation.md):

1. one draw of standard normal noise: `torch.randn` from a generator, the counter-based
   `PerSampleNoise.normal` (what `seed=` uses), and the simplest alternative, one
   `torch.Generator` per row (seeded from (seed, i, draw)), for a batch of 2-D points and a
   batch of 3x32x32 images;
2. end to end, samples per second of `sample` at batch 4096 on the CPU with an MLP score
   network (the CLI's, hidden 128, depth 3), NFE 50, `generator=` against `seed=`, for a
   deterministic solver (only the starting noise is drawn) and stochastic ones (a draw per
   step).

Timings are CPU time of this process (`time.process_time`, one thread: robust to other
processes sharing the machine), the fastest of `--repeats` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

import scoresde as sd
from scoresde.rng import PerSampleNoise


def best_seconds(fn: Callable[[], object], repeats: int, min_time: float = 0.2) -> float:
    fn()
    times = []
    for _ in range(repeats):
        k, t0 = 0, time.process_time()
        while True:
            fn()
            k += 1
            dt = time.process_time() - t0
            if dt >= min_time:
                break
        times.append(dt / k)
    return min(times)


def per_row_generators(shape: tuple[int, ...], seed: int, draw: int) -> torch.Tensor:
    """One generator per row, seeded from (seed, i, draw): the simple alternative."""
    rows = []
    for i in range(shape[0]):
        g = torch.Generator().manual_seed(hash((seed, i, draw)) & (2 ** 63 - 1))
        rows.append(torch.randn(shape[1:], generator=g))
    return torch.stack(rows)


def noise_table(repeats: int) -> list[str]:
    lines = ["| batch | generator `randn` | `seed=` (counter-based) | one generator per row |",
             "|---|---|---|---|"]
    noise = PerSampleNoise(0)
    g = torch.Generator().manual_seed(0)
    for shape in ((4096, 2), (64, 3, 32, 32)):
        t_g = best_seconds(lambda s=shape: torch.randn(s, generator=g), repeats)
        t_s = best_seconds(lambda s=shape: noise.normal(s, 1), repeats)
        t_r = best_seconds(lambda s=shape: per_row_generators(s, 0, 1), repeats)
        lines.append(f"| {shape} | {t_g * 1e3:.2f} ms | {t_s * 1e3:.2f} ms ({t_s / t_g:.0f}x) | "
                     f"{t_r * 1e3:.2f} ms ({t_r / t_g:.0f}x) |")
    return lines


def sampling_table(repeats: int, batch: int, nfe: int) -> list[str]:
    net = sd.nets.MLPScoreNet(dim=2, hidden=128, depth=3, generator=torch.Generator().manual_seed(0))
    model = sd.ScoreModel(net, sd.VPSDE())
    lines = ["| solver | noise draws | `generator=` samples/s | `seed=` samples/s "
             "| `seed=` / `generator=` time |", "|---|---|---|---|---|"]
    for solver, opts in (("ddim", {}), ("ddim", {"eta": 1.0}), ("euler_maruyama", {}),
                         ("ancestral", {}), ("dpm_solver_sde", {})):
        label = solver + (f"[eta={opts['eta']}]" if opts else "")
        draws = 1 if solver == "ddim" and not opts else nfe        # x_T (+ one per step)
        t_g = best_seconds(lambda s=solver, o=opts: sd.sample(
            model, (batch, 2), s, nfe, generator=torch.Generator().manual_seed(0), **o), repeats, 0.0)
        t_s = best_seconds(lambda s=solver, o=opts: sd.sample(
            model, (batch, 2), s, nfe, seed=0, **o), repeats, 0.0)
        lines.append(f"| {label} | {draws} | {batch / t_g:,.0f} | {batch / t_s:,.0f} | "
                     f"{t_s / t_g:.2f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--nfe", type=int, default=50)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "seeded_noise.md"))
    a = p.parse_args()
    torch.set_num_threads(1)
    noise = noise_table(a.repeats)
    samp = sampling_table(a.repeats, a.batch, a.nfe)
    text = "\n".join([
        "# Per-sample noise: cost", "",
        f"`python benchmarks/bench_seeded_noise.py` (torch {torch.__version__}, CPU time, 1 thread, "
        f"fastest of {a.repeats}).", "",
        "One draw of N(0, I) noise:", "", *noise, "",
        f"`sample` at batch {a.batch}, NFE {a.nfe}, MLP score network (hidden 128, depth 3):", "",
        *samp, ""])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
