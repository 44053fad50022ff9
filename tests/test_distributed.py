"""The Trainer on 2 processes on the CPU (gloo), a float64 MLP, a few steps, checked against
one process run here: 2 processes x b rows reach the parameters of 1 process x 2b rows, the
EMA is the same on both ranks, an error on one rank stops both, a killed rank ends the run,
Ctrl-C saves a checkpoint that one process resumes, the run lock refuses a second trainer,
and the command line trains under torchrun.

The worker script below is written into tmp_path. Two tests launch it with
`python -m torch.distributed.run --standalone --nproc-per-node 2` (three fresh interpreters:
some seconds each on a busy machine); the others fork two ranks from this process with the
environment torchrun would give them (RANK, WORLD_SIZE, MASTER_ADDR, ...), which the Trainer
cannot tell apart and which starts in a fraction of a second."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde.files import LockedError
from scoresde.training.checkpoint import load_checkpoint

ROOT = Path(sd.__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is not available")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                                reason="forks the ranks")

WORKER = textwrap.dedent('''
    """Worker for tests/test_distributed.py: run under torchrun, or imported for the
    one-process references."""
    import json
    import os
    import sys
    import time
    from pathlib import Path

    import torch

    import scoresde as sd
    from scoresde.training import distributed as D
    from scoresde.training.trainer import TrainingInterrupted

    X = sd.data.sample_toy("eight_gaussians", 256,
                           generator=torch.Generator().manual_seed(0)).double()


    def job(**kw):
        net = sd.nets.MLPScoreNet(dim=2, hidden=16, depth=1,
                                  generator=torch.Generator().manual_seed(0)).double()
        opts = dict(batch_size=16, lr=1e-2, warmup_steps=2, ema_decay=0.9, seed=3,
                    progress=False)
        opts.update(kw)
        return sd.Trainer(sd.ScoreModel(net, sd.VPSDE(), prediction="eps"), **opts)


    def data(b, g, sleep=0.0):
        time.sleep(sleep)
        return X[torch.randint(0, len(X), (b,), generator=g)]


    def dump(tr, out, name):
        torch.save({"model": tr.model.net.state_dict(), "ema": tr.ema_net.state_dict(),
                    "losses": tr.losses, "generator": tr.generator.get_state()},
                   out / f"{name}.rank{D.rank()}.pt")


    def record_error(out, name, fn):
        try:
            fn()
            res = None
        except Exception as e:
            res = [type(e).__name__, str(e).splitlines()[0]]
        (out / f"{name}.rank{D.rank()}.json").write_text(json.dumps(res))


    def failing(kind, rank, call):
        calls = []

        def source(b, g):
            calls.append(1)
            x = data(b, g)
            if D.rank() == rank and len(calls) == call:
                if kind == "nan":
                    x = x.clone()
                    x[-1] = float("nan")       # in the rows of the last rank only
                else:
                    raise RuntimeError("boom")
            return x
        return source


    def main(mode, out):
        torch.set_num_threads(1)
        rank = D.rank()
        (out / f"pid.rank{rank}").write_text(str(os.getpid()))
        if mode == "equivalence":
            dump(job(checkpoint_dir=out / "ckpt", checkpoint_every=3).fit(X, 6), out, "plain")
            dump(job(accumulate=2, weighting="likelihood", importance_sampling=True).fit(X, 6),
                 out, "acc_is")
            sampler = torch.utils.data.DistributedSampler(X, shuffle=False, drop_last=True)
            loader = torch.utils.data.DataLoader(X, batch_size=4, sampler=sampler)
            dump(job().fit(loader, 6), out, "sharded")
            record_error(out, "nan", lambda: job().fit(failing("nan", 1, 3), 6))
            record_error(out, "boom", lambda: job().fit(failing("boom", 0, 2), 6))
            D.barrier()                         # the group survived both errors
            (out / f"done.rank{rank}").write_text("ok")
        elif mode == "long":                    # until Ctrl-C or a kill
            tr = job(checkpoint_dir=out / "ckpt", checkpoint_every=1)
            try:
                tr.fit(lambda b, g: data(b, g, sleep=0.05), 100_000)
            except TrainingInterrupted as e:
                dump(tr, out, "interrupted")
                (out / f"interrupted.rank{rank}.json").write_text(
                    json.dumps({"step": e.step, "path": str(e.path)}))
                sys.exit(130)


    if __name__ == "__main__":
        main(sys.argv[1], Path(sys.argv[2]))
''')


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", *args]


@pytest.fixture
def worker(tmp_path):
    """The worker script, written to tmp_path and imported here for the references."""
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    spec = importlib.util.spec_from_file_location("ddp_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.job()                 # a first optimizer imports much of torch: before any fork
    return path, module


def _start(cmd, cwd):
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc, folder, timeout=240):
    """Wait for torchrun; if it hangs, kill it and its workers (they run in sessions of their
    own, so killing torchrun alone would leave them behind) and fail."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        for pid_file in Path(folder).glob("pid.rank*"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        proc.kill()
        pytest.fail(f"torchrun did not finish in {timeout} s: " + proc.communicate()[0][-3000:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fork_ranks(w, mode, out, n=2):
    """Fork `n` ranks running the worker's `main(mode, out)`, each with the environment
    torchrun would set. **Returns:** their pids."""
    port = _free_port()
    pids = []
    for r in range(n):
        pid = os.fork()
        if pid == 0:                                # the rank: run, then leave at once
            code = 0
            try:
                os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n),
                                  LOCAL_WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=str(port))
                w.main(mode, out)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                (out / f"traceback.rank{r}.txt").write_text(traceback.format_exc())
                code = 1
            os._exit(code)
        pids.append(pid)
    return pids


def _wait_ranks(pids, out, timeout=120):
    """The ranks' exit codes (-signal if killed); kills them all and fails after `timeout`."""
    codes, deadline = {}, time.monotonic() + timeout
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = (os.WEXITSTATUS(status) if os.WIFEXITED(status)
                                  else -os.WTERMSIG(status))
        time.sleep(0.05)
    if len(codes) < len(pids):
        for pid in pids:
            if pid not in codes:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        pytest.fail(f"ranks still running after {timeout} s (a hang): "
                    + " ".join(p.read_text()[-1500:] for p in out.glob("traceback.rank*")))
    return [codes[pid] for pid in pids]


def _close(a, b):
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-12)


@needs_fork
def test_two_processes_take_the_step_of_one_and_fail_together(worker, tmp_path):
    _, w = worker
    # one process, the global batch of 16 rows (computed first: the forked ranks inherit
    # the imports a first optimizer triggers)
    X = w.X
    order = [torch.arange(r, 256, 2) for r in (0, 1)]      # DistributedSampler(shuffle=False)
    batches = [torch.cat([X[o[4 * s:4 * s + 4]] for o in order]) for s in range(6)]
    refs = {"plain": w.job().fit(X, 6),
            "acc_is": w.job(weighting="likelihood", importance_sampling=True).fit(X, 6),
            "sharded": w.job().fit(batches, 6)}
    codes = _wait_ranks(_fork_ranks(w, "equivalence", tmp_path), tmp_path)
    assert codes == [0, 0], [p.read_text() for p in tmp_path.glob("traceback.rank*")]
    ranks = {name: [torch.load(tmp_path / f"{name}.rank{r}.pt") for r in (0, 1)]
             for name in ("plain", "acc_is", "sharded")}
    for name, ref in refs.items():
        r0, r1 = ranks[name]
        _close(ref.model.net.state_dict(), r0["model"])
        _close(ref.ema_net.state_dict(), r0["ema"])
        assert r0["losses"] == pytest.approx(ref.losses, rel=1e-10)
        for key in ("model", "ema"):                          # identical on both ranks
            assert all(torch.equal(r0[key][k], r1[key][k]) for k in r0[key])
        assert r0["losses"] == r1["losses"]
        if name != "sharded":                                 # the same draws, consumed alike
            assert torch.equal(r0["generator"], ref.generator.get_state())
    # rank 0 wrote one checkpoint of the bare network
    ckpt = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert list(ckpt["model"]) == list(refs["plain"].model.net.state_dict())
    assert ckpt["meta"]["net_class"] == "MLPScoreNet" and ckpt["meta"]["world_size"] == 2
    assert ckpt["step"] == 6 and not list((tmp_path / "ckpt").glob("*.tmp"))
    _close(refs["plain"].ema_net.state_dict(), ckpt["ema"])
    served = sd.load_model(tmp_path / "ckpt" / "last.pt")       # rebuilt from the registry
    _close(refs["plain"].ema_net.float().state_dict(), served.net.state_dict())
    # an error on one rank stops both at the same step, each saying why
    errors = {name: [json.loads((tmp_path / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]
              for name in ("nan", "boom")}
    nan0, nan1 = errors["nan"]
    assert nan1[0] == "ValueError" and "step 2: the training batch contains NaN" in nan1[1]
    assert nan0[0] == "ValueError" and nan0[1].startswith("rank 1 failed at step 2: training")
    boom0, boom1 = errors["boom"]
    assert boom0 == ["RuntimeError", "boom"]
    assert boom1 == ["RankError", "rank 0 failed at step 1: boom"]
    assert all((tmp_path / f"done.rank{r}").exists() for r in (0, 1))


def _await_checkpoint(folder, alive, steps=2, timeout=240):
    """Wait until the run has written a checkpoint of at least `steps` steps."""
    ckpt, deadline = folder / "last.pt", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ckpt.exists() and load_checkpoint(ckpt)["step"] >= steps:
            return
        if not alive():
            break
        time.sleep(0.1)
    pytest.fail("the 2-process run wrote no checkpoint")


def _resume_one_process(w, folder, steps):
    """Resume the 2-process run's checkpoint in this process and compare with an
    uninterrupted one-process run of the same steps."""
    resumed = w.job(checkpoint_dir=folder)
    resumed.load(folder / "last.pt")
    resumed.fit(w.data, steps)
    ref = w.job().fit(w.data, steps)
    assert resumed.step == steps
    _close(ref.model.net.state_dict(), resumed.model.net.state_dict())
    _close(ref.ema_net.state_dict(), resumed.ema_net.state_dict())
    assert resumed.losses == pytest.approx(ref.losses, rel=1e-10)


@pytest.mark.slow
def test_torchrun_ctrl_c_saves_on_rank_0_and_one_process_resumes(worker, tmp_path):
    """Under torchrun: the lock refuses a concurrent trainer; Ctrl-C (SIGINT to torchrun,
    which forwards it) stops both ranks after the same step k, rank 0 saves; the two ranks
    agree bit for bit and match one process run for k steps; one process resumes."""
    path, w = worker
    proc = _start(_torchrun(str(path), "long", str(tmp_path)), tmp_path)
    folder = tmp_path / "ckpt"
    try:
        _await_checkpoint(folder, lambda: proc.poll() is None)
        with pytest.raises(LockedError, match="in use by pid"):
            w.job(checkpoint_dir=folder).fit(w.data, 1)
    finally:
        os.kill(proc.pid, signal.SIGINT)
    out = _finish(proc, tmp_path, timeout=120)
    stops = [json.loads((tmp_path / f"interrupted.rank{r}.json").read_text()) for r in (0, 1)]
    k = stops[0]["step"]
    assert stops[1]["step"] == k and stops[0]["path"] == str(folder / "last.pt"), out[-3000:]
    ckpt = load_checkpoint(folder / "last.pt")
    assert ckpt["step"] == k and ckpt["meta"]["world_size"] == 2
    assert list(ckpt["model"]) == list(w.job().model.net.state_dict())    # no "module."
    assert not (folder / ".lock").exists()               # rank 0 released it
    r0, r1 = (torch.load(tmp_path / f"interrupted.rank{r}.pt") for r in (0, 1))
    for key in ("model", "ema"):
        assert all(torch.equal(r0[key][n], r1[key][n]) for n in r0[key])
    ref = w.job().fit(w.data, k)
    _close(ref.model.net.state_dict(), r0["model"])
    _close(ref.ema_net.state_dict(), ckpt["ema"])
    _resume_one_process(w, folder, k + 3)


def _fork_then_signal(w, tmp_path, rank: int, sig: int) -> tuple[list[int], Path]:
    """Fork two ranks of a long run, wait for its first checkpoint, send `sig` to `rank`."""
    pids = _fork_ranks(w, "long", tmp_path)
    folder = tmp_path / "ckpt"
    try:
        _await_checkpoint(folder, lambda: all(os.waitpid(p, os.WNOHANG) == (0, 0)
                                              for p in pids))
    finally:
        os.kill(pids[rank], sig)
    return pids, folder


@needs_fork
def test_ctrl_c_on_one_rank_stops_both_at_the_same_step(worker, tmp_path):
    """SIGINT to rank 1 alone: the step's agreement tells rank 0, both finish that step, rank
    0 saves it, both raise TrainingInterrupted naming it."""
    _, w = worker
    pids, folder = _fork_then_signal(w, tmp_path, 1, signal.SIGINT)
    assert _wait_ranks(pids, tmp_path, timeout=90) == [130, 130]
    stops = [json.loads((tmp_path / f"interrupted.rank{r}.json").read_text()) for r in (0, 1)]
    assert stops[0]["step"] == stops[1]["step"] == load_checkpoint(folder / "last.pt")["step"]
    assert not (folder / ".lock").exists()


@needs_fork
def test_a_killed_rank_ends_the_run_and_one_process_resumes(worker, tmp_path):
    """SIGKILL rank 0 mid-run: rank 1 fails in its next collective instead of hanging; the
    lock rank 0 held is stale and one process takes it over, resumes and finishes."""
    _, w = worker
    pids, folder = _fork_then_signal(w, tmp_path, 0, signal.SIGKILL)
    codes = _wait_ranks(pids, tmp_path, timeout=90)
    assert codes[0] == -signal.SIGKILL and codes[1] == 1
    assert "RuntimeError" in (tmp_path / "traceback.rank1.txt").read_text()
    assert json.loads((folder / ".lock").read_text())["pid"] == pids[0]     # stale
    k = load_checkpoint(folder / "last.pt")["step"]
    _resume_one_process(w, folder, k + 3)
    assert not (folder / ".lock").exists()


@pytest.mark.slow
def test_cli_train_under_torchrun(tmp_path):
    """`python -m torch.distributed.run --nproc-per-node 2 -m scoresde train ...`: one
    checkpoint of the bare network, written by rank 0, which alone reports."""
    out = tmp_path / "run"
    proc = _start(_torchrun("-m", "scoresde", "train", "--data", "eight_gaussians", "--steps",
                            "20", "--batch-size", "64", "--hidden", "16", "--depth", "1",
                            "--out", str(out), "--no-progress"), tmp_path)
    text = _finish(proc, tmp_path)
    assert proc.returncode == 0, text[-3000:]
    assert text.count("trained 20 steps") == 1               # rank 0 reports
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "model.pt", "score_field.png"]
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["step"] == 20 and ckpt["meta"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["meta"]["net_class"] == "MLPScoreNet"
    assert sd.load_model(out / "model.pt").net.hidden == 16
