"""Fault injection at scale: SIGKILL a training process at many random moments, resume, and
count how many resumed runs are bit-for-bit identical to an uninterrupted one.

    python benchmarks/bench_fault_injection.py --trials 200

Each trial forks a process that trains the reference job (`scoresde.training.faults`) with a
checkpoint after every step, kills it with SIGKILL after a random delay spread over one whole
run, resumes from the checkpoint folder and compares weights, EMA, optimizer moments, losses
and generator state with the uninterrupted run. Writes benchmarks/results/fault_injection.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from scoresde.training import faults


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "fault_injection.md"))
    a = p.parse_args()
    torch.set_num_threads(1)
    faults.run_training(None, 2)
    t0 = time.perf_counter()
    reference = faults.final_state(faults.run_training(None, a.steps))
    span = 1.2 * (time.perf_counter() - t0)
    trials = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, delay in enumerate(faults.random_delays(a.trials, span, a.seed)):
            trials.append(faults.kill_and_resume(Path(tmp) / f"run{i}", a.steps, delay, reference))
            print(f"\rtrial {i + 1}/{a.trials}", end="", flush=True)
    print()
    killed = [t for t in trials if not t.finished_before_kill]
    mid_write = [t for t in killed if t.orphans_seen]
    before_first = [t for t in killed if t.killed_at_step is None]
    identical = sum(t.identical for t in trials)
    lines = [
        "# Fault injection: SIGKILL during training, then resume", "",
        f"`python benchmarks/bench_fault_injection.py --trials {a.trials} --steps {a.steps} "
        f"--seed {a.seed}` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}, 1 thread)", "",
        "| trials | killed while running | killed mid-checkpoint-write | killed before the first "
        "checkpoint | resumed runs bit-identical |",
        "|---|---|---|---|---|",
        f"| {len(trials)} | {len(killed)} | {len(mid_write)} | {len(before_first)} | "
        f"{identical} / {len(trials)} |", "",
        "Steps reached by the checkpoint when killed: "
        + ", ".join(str(t.killed_at_step) for t in killed), "",
    ]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))
    if identical != len(trials):
        raise SystemExit(f"{len(trials) - identical} resumed runs differ")


if __name__ == "__main__":
    main()
