"""SIGKILL a training process at random moments (mid-step, mid-checkpoint-write, before the
first checkpoint), resume, and compare with an uninterrupted run bit for bit."""

import os
import sys
import time

import pytest

from scoresde.training import faults

STEPS = 30


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork")
def test_sigkill_at_random_points_then_resume_is_bitwise_exact(tmp_path):
    faults.run_training(None, 2)                     # warm-up (first-call costs)
    t0 = time.perf_counter()
    reference = faults.final_state(faults.run_training(None, STEPS))
    span = 1.2 * (time.perf_counter() - t0)          # kills spread over about one whole run
    trials = [faults.kill_and_resume(tmp_path / f"run{i}", STEPS, delay, reference)
              for i, delay in enumerate(faults.random_delays(10, span, seed=0))]
    bad = [t for t in trials if not t.identical]
    assert not bad, bad
    interrupted = [t for t in trials if not t.finished_before_kill]
    assert len(interrupted) >= 3, trials          # most kills land while training runs
    for i in range(10):                           # no lock or temporary file survives a resume
        assert sorted(p.name for p in (tmp_path / f"run{i}").iterdir()) == ["last.pt"]
