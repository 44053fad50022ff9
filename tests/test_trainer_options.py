"""Trainer options that change how a step is computed, not what it computes: gradient
accumulation (the same update as one big batch), learning-rate schedules (exact values),
mixed precision (bfloat16/float16 autocast with float32 master weights), and the
distributed helpers in one process. Several processes: tests/test_distributed.py."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde.training import distributed
from scoresde.training.checkpoint import load_checkpoint, save_checkpoint


def _mlp(dim=2, seed=0, dtype=torch.float64):
    net = sd.nets.MLPScoreNet(dim=dim, hidden=16, depth=1,
                              generator=torch.Generator().manual_seed(seed))
    return net.to(dtype)


def _model(dtype=torch.float64):
    return sd.ScoreModel(_mlp(dtype=dtype), sd.VPSDE(), prediction="eps")


def _toy(n=256, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return sd.data.sample_toy("eight_gaussians", n, generator=g).to(dtype)


class CondNet(nn.Module):
    """A class-conditional MLP (label 2 is the null label), float64."""

    null_label = 2

    def __init__(self):
        super().__init__()
        self.mlp = _mlp()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            self.emb = nn.Embedding(3, 2).double()

    def forward(self, x, t, y):
        return self.mlp(x + self.emb(y), t)


class ImageNet(nn.Module):
    """An MLP on flattened 1x2x3 images (for horizontal flips)."""

    def __init__(self):
        super().__init__()
        self.mlp = _mlp(dim=6)

    def forward(self, x, t):
        return self.mlp(x.flatten(1), t).view_as(x)


def _case(name):
    """(model, data, trainer options) of each data path the Trainer has."""
    x = _toy()
    if name == "tensor":
        return _model(), x, {}
    if name == "likelihood_is":
        return _model(), x, {"weighting": "likelihood", "importance_sampling": True}
    if name == "labels_cond_drop":
        y = (x[:, 0] > 0).long()
        return sd.ScoreModel(CondNet(), sd.VPSDE()), (x, y), {"cond_drop": 0.3}
    if name == "images_hflip":
        imgs = torch.randn(64, 1, 2, 3, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64)
        return sd.ScoreModel(ImageNet(), sd.VPSDE()), imgs, {"hflip": True}
    if name == "callable":
        return _model(), (lambda b, g: x[torch.randint(0, len(x), (b,), generator=g)]), \
            {"weighting": "none"}
    if name == "dataloader":
        dl = torch.utils.data.DataLoader(x, batch_size=20, shuffle=True,
                                         generator=torch.Generator().manual_seed(1))
        return _model(), dl, {}
    raise AssertionError(name)


def _train(name, steps=6, **kw):
    model, data, opts = _case(name)
    tr = sd.Trainer(model, batch_size=20, lr=1e-2, warmup_steps=2, ema_decay=0.9, seed=3,
                    progress=False, **opts, **kw)
    return tr.fit(data, steps=steps)


CASES = ["tensor", "likelihood_is", "labels_cond_drop", "images_hflip", "callable",
         "dataloader"]


@pytest.mark.parametrize("name", CASES)
def test_accumulation_takes_the_step_of_one_big_batch(name):
    """accumulate=k splits the step's batch of 20 rows into k micro-batches (3: 6+7+7 rows;
    the loss of each weighted by its share) and draws the same times, noise, flips and
    dropout for the whole batch: the same parameters, EMA and losses as one batch, and the
    generator consumed identically (so a run may change accumulate when it resumes)."""
    one = _train(name)
    for k in (3, 20):
        acc = _train(name, accumulate=k)
        for p, q in zip(one.model.parameters(), acc.model.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
        for p, q in zip(one.ema_net.parameters(), acc.ema_net.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
        assert acc.losses == pytest.approx(one.losses, rel=1e-10)
        assert torch.equal(acc.generator.get_state(), one.generator.get_state())
    # and the run really moved (a test that cannot fail is a defect)
    fresh = _case(name)[0]
    assert all(not torch.equal(p, q) for p, q in
               zip(one.model.parameters(), fresh.parameters(), strict=True))


def test_accumulation_resumes_exactly_with_a_custom_loss(tmp_path):
    """With loss_fn (here DDPM's), each micro-batch's draws come from a generator derived
    from one seed per step: the run is deterministic and resumes bit for bit."""
    sde = sd.VPSDE()
    sched = sde.discretize(1000)

    def job(folder=None):
        model = sd.ScoreModel(_mlp(), sde, prediction="eps")
        return sd.Trainer(model, batch_size=16, accumulate=2, seed=1, progress=False,
                          loss_fn=lambda m, b, g: sd.ddpm_loss(m, b, sched, g),
                          checkpoint_dir=folder)

    full = job().fit(_toy(), steps=6)
    part = job(tmp_path).fit(_toy(), steps=3)
    resumed = job().load(tmp_path / "last.pt").fit(_toy(), steps=6)
    assert part.step == 3 and resumed.losses == full.losses
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert len(set(full.losses)) == 6


def test_batch_must_cover_processes_times_micro_batches():
    tr = sd.Trainer(_model(), batch_size=4, accumulate=5, progress=False)
    with pytest.raises(ValueError, match="batch_size=4 is the global batch.*at least 5"):
        tr.fit(_toy(), steps=1)
    with pytest.raises(ValueError, match="accumulate"):
        sd.Trainer(_model(), accumulate=0)


# ----- learning-rate schedules ---------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_schedule_values(schedule, tmp_path):
    lr, lo, warm, total = 1e-2, 1e-4, 4, 14
    tr = sd.Trainer(_model(), lr=lr, warmup_steps=warm, lr_schedule=schedule,
                    total_steps=total if schedule != "constant" else None, lr_min=lo,
                    batch_size=8, progress=False, log_path=tmp_path / "log.jsonl", log_every=1)
    for k in range(warm):                                   # the warm-up, unchanged
        assert tr.lr_at(k) == lr * (k + 1) / warm
    for k in range(warm, total + 3):
        p = min(1.0, (k - warm) / (total - warm))
        want = {"constant": lr, "cosine": lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * p)),
                "linear": lr + (lo - lr) * p}[schedule]
        assert tr.lr_at(k) == pytest.approx(want, rel=1e-14)
    if schedule != "constant":
        assert tr.lr_at(warm) == pytest.approx(lr) and tr.lr_at(total) == pytest.approx(lo)
        assert tr.lr_at(warm + 5) == pytest.approx((lr + lo) / 2)   # the midpoint, both
    tr.fit(_toy(), steps=total)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in logged] == [tr.lr_at(r["step"] - 1) for r in logged]
    assert tr.optimizer.param_groups[0]["lr"] == tr.lr_at(total - 1)
    assert all(r["grad_norm"] > 0 for r in logged)


def test_lr_schedule_errors():
    with pytest.raises(ValueError, match="pass total_steps"):
        sd.Trainer(_model(), lr_schedule="cosine")
    with pytest.raises(ValueError, match="total_steps=5 must exceed warmup_steps=5"):
        sd.Trainer(_model(), lr_schedule="linear", warmup_steps=5, total_steps=5)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        sd.Trainer(_model(), lr_schedule="step")
    with pytest.raises(ValueError, match="lr_min"):
        sd.Trainer(_model(), lr=1e-3, lr_min=1e-2, lr_schedule="cosine", total_steps=10)


# ----- mixed precision -----------------------------------------------------------------------
def _float32_job(precision, **kw):
    net = sd.nets.MLPScoreNet(dim=2, hidden=64, depth=2,
                              generator=torch.Generator().manual_seed(0))
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="eps")
    return sd.Trainer(model, lr=3e-3, batch_size=128, seed=0, progress=False,
                      precision=precision, **kw)


def test_bfloat16_autocast_lowers_the_loss_with_float32_master_weights(tmp_path):
    tr = _float32_job("bfloat16", checkpoint_dir=tmp_path)
    seen = []
    hook = tr.model.net.inp.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = sd.data.sample_toy("eight_gaussians", 4096, generator=torch.Generator().manual_seed(1))
    tr.fit(x, steps=150)
    hook.remove()
    assert set(seen) == {torch.bfloat16}                 # the network ran in bfloat16
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert all(p.dtype == torch.float32 for p in tr.ema_net.parameters())
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())
    assert ckpt["meta"]["trainer"]["precision"] == "bfloat16"
    first, last = sum(tr.losses[:10]) / 10, sum(tr.losses[-30:]) / 30
    assert last < 0.75 * first, (first, last)
    # and it learns about as well as float32 (same seed, same batches)
    ref = _float32_job("float32").fit(x, steps=150)
    assert abs(last - sum(ref.losses[-30:]) / 30) < 0.1 * last


def test_float16_uses_a_grad_scaler_and_resumes_exactly(tmp_path):
    x = sd.data.sample_toy("eight_gaussians", 4096, generator=torch.Generator().manual_seed(1))
    full = _float32_job("float16").fit(x, steps=40)
    assert isinstance(full.scaler, torch.amp.GradScaler)
    assert sum(full.losses[-10:]) < sum(full.losses[:10])
    _float32_job("float16", checkpoint_dir=tmp_path).fit(x, steps=20)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["scaler"]["scale"] > 0
    resumed = _float32_job("float16").load(tmp_path / "last.pt")
    assert resumed.scaler.get_scale() == ckpt["scaler"]["scale"]
    resumed.fit(x, steps=40)
    assert resumed.losses == full.losses
    for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_float16_skips_an_overflowing_step_instead_of_failing():
    tr = _float32_job("float16")
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 126)   # gradients overflow
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.fit(_toy(dtype=torch.float32), steps=1)
    assert tr.step == 1 and tr.scaler.get_scale() < 2.0 ** 126      # skipped, scale lowered
    for p, q in zip(before, tr.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_precision_errors():
    with pytest.raises(ValueError, match="float32 network under autocast.*float64"):
        sd.Trainer(_model(torch.float64), precision="bfloat16")
    with pytest.raises(ValueError, match="precision must be one of"):
        sd.Trainer(_model(torch.float32), precision="float8")


# ----- the distributed helpers in one process ------------------------------------------------
def test_one_process_helpers_are_no_ops(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init() == 1 and not distributed.is_initialized()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    x = torch.arange(3.0)
    assert distributed.all_reduce_sum(x) is x and distributed.broadcast(x) is x
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    distributed.barrier()
    assert distributed.agree(lambda: ("r", [1, 2]), 2) == ("r", [1.0, 2.0])
    with pytest.raises(KeyError):                      # one process: the error itself
        distributed.agree(lambda: {}["missing"])
    net = _mlp()
    assert distributed.unwrap(net) is net
    tr = sd.Trainer(_model(), progress=False)
    assert tr.world_size == 1 and tr.rank == 0


def test_shard_partitions_the_batch():
    for n in range(0, 30):
        for w in range(1, 7):
            parts = [distributed.shard(n, r, w) for r in range(w)]
            assert parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:], strict=True))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank must lie in"):
        distributed.shard(10, 2, 2)


def test_world_size_from_a_malformed_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        distributed.world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="launch with torchrun"):
        distributed.init()


def test_a_position_saved_with_another_data_split_is_converted(tmp_path):
    """A DataLoader's position saved while a DistributedSampler split the data 2 ways, resumed
    in one process: batch b becomes batch 2b, with a warning."""
    x = _toy()
    dl = torch.utils.data.DataLoader(x, batch_size=8, shuffle=True,
                                     generator=torch.Generator().manual_seed(1))
    tr = sd.Trainer(_model(), batch_size=8, progress=False).fit(dl, steps=3)
    state = tr.state()
    state["data_state"]["shards"] = 2
    save_checkpoint(state, tmp_path / "two.pt")
    again = sd.Trainer(_model(), batch_size=8, progress=False).load(tmp_path / "two.pt")
    with pytest.warns(UserWarning, match="split 2 way.*now split 1 way.*batch 3 of epoch 0 "
                      "becomes batch 6"):
        again.fit(dl, steps=4)
    assert again.epoch == 0 and again.state()["data_state"]["batch"] == 7
    assert again.state()["data_state"]["shards"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sd.Trainer(_model(), batch_size=8, progress=False).load(tmp_path / "two.pt")
