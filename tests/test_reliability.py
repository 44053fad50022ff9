"""Nothing lost, nothing silent: regression tests for checkpoints, result folders, locks and
the command line under faults and bad input (each failed before its fix)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch

import scoresde as sd
from scoresde import cli
from scoresde.evaluation.compare import builtin_target, compare
from scoresde.files import LockedError, RunLock, atomic_folder
from scoresde.training.trainer import TrainingInterrupted


def _model(seed=0, hidden=16):
    net = sd.nets.MLPScoreNet(dim=2, hidden=hidden, depth=1,
                              generator=torch.Generator().manual_seed(seed))
    return sd.ScoreModel(net, sd.VPSDE(), prediction="eps")


def _data(n=512):
    return sd.data.sample_toy("eight_gaussians", n, generator=torch.Generator().manual_seed(0))


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err):
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and lines[0].startswith("scoresde: error:") and \
        "Traceback" not in err


# ----- 1. EMA and prediction on load ------------------------------------------------------
def test_ema_trainer_loading_a_checkpoint_without_ema_starts_ema_from_the_loaded_weights(tmp_path):
    plain = sd.Trainer(_model(0), ema_decay=None, progress=False, batch_size=32)
    plain.fit(_data(), steps=5)
    path = plain.save(tmp_path / "noema.pt")
    ema = sd.Trainer(_model(7), ema_decay=0.99, progress=False, batch_size=32)
    with pytest.warns(UserWarning, match="no EMA weights"):
        ema.load(path)
    for p, q in zip(ema.ema_net.parameters(), plain.model.net.parameters(), strict=True):
        assert torch.equal(p, q)                  # not the random initial EMA of _model(7)
    ema.fit(_data(), steps=8)
    ema.save(tmp_path / "later.pt")
    served = sd.load_model(tmp_path / "later.pt")       # what sampling uses: the EMA weights

    def dist(a, b):
        return sum(float((p.detach() - q.detach()).pow(2).sum()) for p, q in
                   zip(a.parameters(), b.parameters(), strict=True)) ** 0.5

    # the EMA tracks the trained weights, not the random initialisation of _model(7)
    assert dist(served.net, ema.model.net) < 0.1 * dist(_model(7).net, ema.model.net)


def test_load_refuses_a_checkpoint_of_another_prediction(tmp_path):
    tr = sd.Trainer(_model(0), progress=False, batch_size=32)
    tr.fit(_data(), steps=2)
    path = tr.save(tmp_path / "eps.pt")
    other = sd.ScoreModel(_model(1).net, sd.VPSDE(), prediction="x0")
    with pytest.raises(ValueError, match="prediction='eps'.*predicts 'x0'"):
        sd.Trainer(other, progress=False).load(path)


# ----- 4. a failed load changes nothing ---------------------------------------------------
@pytest.mark.parametrize("corrupt", ["optimizer", "model_shape", "generator"])
def test_a_failed_load_leaves_the_trainer_unchanged(tmp_path, corrupt):
    src = sd.Trainer(_model(0), progress=False, batch_size=32)
    src.fit(_data(), steps=3)
    ck = src.state()
    if corrupt == "optimizer":
        ck["optimizer"]["param_groups"][0]["params"] = [0]       # wrong number of parameters
    elif corrupt == "model_shape":
        k = next(iter(ck["model"]))
        ck["model"][k] = torch.zeros(3, 3)
    else:
        ck["generator"] = torch.zeros(3, dtype=torch.uint8)        # not a generator state
    path = sd.save_checkpoint(ck, tmp_path / "bad.pt")
    dst = sd.Trainer(_model(5), progress=False, batch_size=32)
    before = {k: v.clone() for k, v in dst.model.net.state_dict().items()}
    ema_before = {k: v.clone() for k, v in dst.ema_net.state_dict().items()}
    opt_before = json.dumps(dst.optimizer.state_dict()["param_groups"])
    with pytest.raises(ValueError, match="bad.pt"):
        dst.load(path)
    assert all(torch.equal(v, dst.model.net.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, dst.ema_net.state_dict()[k]) for k, v in ema_before.items())
    assert json.dumps(dst.optimizer.state_dict()["param_groups"]) == opt_before
    assert dst.step == 0 and dst.losses == []


# ----- 5. silent mismatches ---------------------------------------------------------------
def test_ddpm_loss_refuses_a_non_vp_model():
    model = sd.ScoreModel(lambda x, t: x, sd.VESDE(), prediction="eps")
    with pytest.raises(ValueError, match="variance-preserving"):
        sd.ddpm_loss(model, torch.zeros(4, 2), sd.VPSDE().discretize(100))


def test_a_network_that_changes_dtype_is_refused():
    model = sd.ScoreModel(lambda x, t: x.double(), sd.VPSDE())
    with pytest.raises(ValueError, match="returned torch.float64 for torch.float32 input"):
        sd.sample(model, (3, 2), solver="ddim", nfe=4)
    # under autocast a lower-precision output is cast back to the input's dtype
    low = sd.ScoreModel(lambda x, t: x.bfloat16(), sd.VPSDE())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert low.eps(torch.zeros(3, 2), 0.5).dtype == torch.float32


# ----- 2. result folders ------------------------------------------------------------------
def _small_compare(out, **kw):
    return compare(builtin_target(kw.pop("target", "mixture2d")), ["ddim"], [4], n=60,
                   out_dir=out, floor_repeats=2, progress=False, **kw)


def test_compare_refuses_a_non_empty_folder_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _small_compare(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import scoresde.evaluation.compare as cmp

    monkeypatch.setattr(cmp, "noise_floor", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match="not empty.*overwrite"):
        _small_compare(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_compare_overwrite_replaces_the_whole_folder_only_at_the_end(tmp_path):
    out = tmp_path / "out"
    _small_compare(out, target="mixture2d")
    assert (out / "samples_grid.png").is_file()
    (out / "stale.txt").write_text("from an earlier run")
    comp = _small_compare(out, target="mixture5d", overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names and "samples_grid.png" not in names   # 5-D: no 2-D grid
    report = (out / "report.md").read_text()
    assert "samples_grid" not in report and comp.out_dir == out
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]       # no temporary folder left


def test_atomic_folder_keeps_the_old_result_when_the_new_run_fails(tmp_path):
    out = tmp_path / "res"
    with atomic_folder(out) as w:
        (w / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(out, overwrite=True) as w:
        (w / "a.txt").write_text("new")
        raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "old"
    (kept,) = tmp_path.glob("res.interrupted-*")
    assert (kept / "a.txt").read_text() == "new"
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# ----- 3. locks ---------------------------------------------------------------------------
def test_two_trainers_cannot_share_a_checkpoint_folder(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps(
            {"host": __import__("socket").gethostname(), "pid": sleeper.pid, "started": "x"}))
        tr = sd.Trainer(_model(), progress=False, checkpoint_dir=tmp_path, batch_size=32)
        with pytest.raises(LockedError, match=f"in use by pid {sleeper.pid}"):
            tr.fit(_data(), steps=2)
        assert not (tmp_path / "last.pt").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the owner is gone: the lock is stale and taken over
    tr.fit(_data(), steps=2)
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / ".lock").exists()


def test_the_same_process_cannot_lock_twice(tmp_path):
    with RunLock(tmp_path), pytest.raises(LockedError, match="already locked by this process"):
        RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()      # released by the context manager


def test_cli_train_refuses_to_overwrite_model_pt(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"precious")
    code, _, err = _run(["train", "--steps", "2", "--out", str(tmp_path), "--no-progress"], capsys)
    assert _one_line_error(code, err) and "--overwrite" in err
    assert (tmp_path / "model.pt").read_bytes() == b"precious"


# ----- 6. the command line: one line, exit 2 ----------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    tr = sd.Trainer(_model(), progress=False, batch_size=32, meta={"data": "eight_gaussians"})
    tr.fit(_data(), steps=3)
    return tr.save(d / "good.pt")


def _edited(trained, tmp_path, edit):
    ck = sd.load_checkpoint(trained)
    edit(ck)
    ck.pop("format"), ck.pop("version")
    return sd.save_checkpoint(ck, tmp_path / "edited.pt")


def _nan_weights(ck):
    for k in ("model", "ema"):
        first = next(iter(ck[k]))
        ck[k][first] = torch.full_like(ck[k][first], float("nan"))


@pytest.mark.parametrize("case", ["nan_weights", "architecture", "no_prediction", "empty_file",
                                  "out_under_a_file"])
@pytest.mark.parametrize("command", ["sample", "likelihood"])
def test_cli_bad_checkpoints_and_folders_give_one_line(tmp_path, capsys, trained, case, command):
    out = tmp_path / "o"
    if case == "nan_weights":
        path = _edited(trained, tmp_path, _nan_weights)
    elif case == "architecture":
        path = _edited(trained, tmp_path, lambda ck: ck["meta"]["net"].update(hidden=8))
    elif case == "no_prediction":
        path = _edited(trained, tmp_path, lambda ck: ck["meta"].pop("prediction"))
    elif case == "empty_file":
        path = tmp_path / "empty.pt"
        path.write_bytes(b"")
    else:
        path = trained
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "sub"
    argv = [command, "--checkpoint", str(path), "--out", str(out), "--no-progress"]
    argv += ["--nfe", "4", "--num-samples", "10"] if command == "sample" else ["--num-samples", "5"]
    code, _, err = _run(argv, capsys)
    assert _one_line_error(code, err), err


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_cli_train_bad_steps(tmp_path, capsys, steps):
    code, _, err = _run(["train", "--steps", steps, "--out", str(tmp_path / "t"), "--no-progress"],
                        capsys)
    assert _one_line_error(code, err) and "--steps must be a positive integer" in err


def test_ctrl_c_during_training_saves_a_checkpoint_and_says_where(tmp_path):
    # a shell's background job starts with SIGINT ignored; Ctrl-C handling is only installed
    # over Python's default handler, so put that in place as an interactive run has it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    data = _data()

    def batches(n, g):
        if tr.step == 4:
            os.kill(os.getpid(), signal.SIGINT)      # what Ctrl-C sends
        return data[torch.randint(0, len(data), (n,), generator=g)]

    tr = sd.Trainer(_model(), progress=False, checkpoint_dir=tmp_path, batch_size=32)
    with pytest.raises(TrainingInterrupted, match=r"after step 5; checkpoint saved to .*last\.pt"):
        tr.fit(batches, steps=50)
    ck = sd.load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 5 == tr.step and len(ck["losses"]) == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handler restored
    assert not (tmp_path / ".lock").exists()


def test_cli_reports_an_interrupted_training(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise TrainingInterrupted(7, tmp_path / "last.pt")

    monkeypatch.setattr(cli, "train_model", interrupted)
    code, _, err = _run(["train", "--steps", "9", "--out", str(tmp_path / "t")], capsys)
    assert code == 130 and "after step 7; checkpoint saved to" in err


# ----- 7. huge budgets --------------------------------------------------------------------
def test_a_huge_budget_is_refused_before_any_allocation():
    model = sd.analytic.GaussianMixture.eight_gaussians().as_model(sd.VPSDE())
    with pytest.raises(ValueError, match="at most 1000000 steps"):
        sd.sample(model, (4, 2), solver="ddim", nfe=10 ** 8)
    with pytest.raises(ValueError, match="trajectory=True would store"):
        sd.sample(model, (400_000, 2), solver="ddim", nfe=3000, trajectory=True)

    class Counting(sd.samplers.DDIM):
        calls = 0

        def nfe_for_steps(self, n):
            Counting.calls += 1
            return n

    assert Counting().steps_for_nfe(10 ** 12, extra=1) == 10 ** 12 - 1
    assert Counting.calls < 200                      # a search, not a loop over the budget
    with pytest.raises(sd.BudgetError, match=r"nearest budgets it can meet are \[8, 10, 12, 14, 16, 18\]"):
        sd.SOLVERS["heun"]().steps_for_nfe(13, extra=1)


# ----- 8. disk full, orphans, permissions, the folder checked at start --------------------
def test_disk_full_is_a_plain_oserror_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import scoresde.training.checkpoint as ckmod

    tr = sd.Trainer(_model(), progress=False, checkpoint_dir=tmp_path, batch_size=32)
    tr.fit(_data(), steps=2)
    good = (tmp_path / "last.pt").read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    monkeypatch.setattr(ckmod.torch, "save", full)
    with pytest.raises(OSError, match="no space left to write checkpoint .*previous checkpoint"):
        tr.save(tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_orphaned_temporary_checkpoints_are_removed_at_the_next_start(tmp_path):
    orphan = tmp_path / "last.pt.abc123.tmp"
    orphan.write_bytes(b"\0" * 1000)                 # what a SIGKILL mid-write leaves
    tr = sd.Trainer(_model(), progress=False, checkpoint_dir=tmp_path, batch_size=32)
    tr.fit(_data(), steps=1)
    assert not orphan.exists()


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = sd.Trainer(_model(), progress=False).save(tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644       # mkstemp alone gives 0600


def test_checkpoint_dir_is_checked_when_the_trainer_is_made(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        sd.Trainer(_model(), progress=False, checkpoint_dir=f)
    with pytest.raises(TypeError, match="checkpoint_dir must be a path"):
        sd.Trainer(_model(), progress=False, checkpoint_dir=3)


def test_no_warning_when_loading_a_checkpoint_with_ema(tmp_path):
    tr = sd.Trainer(_model(), progress=False, batch_size=32)
    tr.fit(_data(), steps=2)
    path = tr.save(tmp_path / "e.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sd.Trainer(_model(3), progress=False).load(path)
