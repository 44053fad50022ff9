"""Trainer: learning happens, resume is exact, checkpoints are atomic and safe, NaN stops."""

import copy

import pytest
import torch

import scoresde as sd


def _model(seed=0):
    net = sd.nets.MLPScoreNet(dim=2, hidden=32, depth=2, generator=torch.Generator().manual_seed(seed))
    return sd.ScoreModel(net, sd.VPSDE(), prediction="eps")


def _data(n=2048):
    return sd.data.sample_toy("eight_gaussians", n, generator=torch.Generator().manual_seed(0))


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def test_loss_decreases_and_ema_tracks():
    tr = sd.Trainer(_model(), lr=3e-3, batch_size=256, ema_decay=0.9, progress=False, seed=1)
    tr.fit(_data(), steps=300)
    assert len(tr.losses) == 300 and tr.step == 300
    first, last = sum(tr.losses[:30]) / 30, sum(tr.losses[-30:]) / 30
    assert last < 0.8 * first, (first, last)
    ema = tr.ema_model()
    assert not any(torch.equal(a, b) for a, b in zip(_params(ema), _params(tr.model), strict=True))


def test_resume_is_exact(tmp_path):
    data = _data()
    kw = dict(lr=2e-3, batch_size=64, warmup_steps=10, ema_decay=0.99, progress=False, seed=3,
              weighting="likelihood", importance_sampling=True)
    a = sd.Trainer(_model(0), checkpoint_dir=tmp_path / "a", checkpoint_every=15, **kw)
    a.fit(data, steps=15)
    mid = tmp_path / "mid.pt"
    (tmp_path / "a" / "last.pt").rename(mid)
    a.fit(data, steps=40)
    b = sd.Trainer(_model(99), checkpoint_dir=tmp_path / "b", **kw).load(mid)
    assert b.step == 15
    b.fit(data, steps=40)
    for p, q in zip(_params(a.model), _params(b.model), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(a.ema_net.parameters(), b.ema_net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert a.losses == b.losses


def test_checkpoint_is_weights_only_and_rebuilds_model(tmp_path):
    tr = sd.Trainer(_model(), progress=False, checkpoint_dir=tmp_path, checkpoint_every=5)
    tr.fit(_data(), steps=10)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["last.pt"], files          # no temporary files left behind
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw["format"] == "scoresde-checkpoint" and raw["step"] == 10
    model = sd.load_model(tmp_path / "last.pt", ema=False)
    x = torch.randn(7, 2)
    torch.testing.assert_close(model.eps(x, 0.4), tr.model.eps(x, 0.4))
    ema = sd.load_model(tmp_path / "last.pt")
    torch.testing.assert_close(ema.eps(x, 0.4), tr.ema_model().eps(x, 0.4))


def test_nan_batch_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    good = _data()

    def source(batch_size, generator):
        idx = torch.randint(0, good.shape[0], (batch_size,), generator=generator)
        batch = good[idx].clone()
        if tr.step == 7:
            batch[3, 1] = float("nan")
        return batch

    tr = sd.Trainer(_model(), progress=False, checkpoint_dir=tmp_path, checkpoint_every=5)
    before = None
    with pytest.raises(ValueError, match=r"step 7: the training batch contains NaN/Inf"):
        tr.fit(source, steps=20)
    before = copy.deepcopy(tr.model.state_dict())
    assert all(torch.isfinite(v).all() for v in before.values())
    ckpt = sd.load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_bad_inputs(tmp_path):
    m = _model()
    with pytest.raises(ValueError, match="lr must be"):
        sd.Trainer(m, lr=-1.0)
    with pytest.raises(ValueError, match="optimizer must be"):
        sd.Trainer(m, optimizer="sgd")
    with pytest.raises(ValueError, match="weighting must be"):
        sd.Trainer(m, weighting="foo")
    with pytest.raises(ValueError, match="ema_decay"):
        sd.Trainer(m, ema_decay=1.0)
    tr = sd.Trainer(m, progress=False)
    with pytest.raises(ValueError, match="data must be a floating tensor"):
        tr.fit(torch.zeros(10, dtype=torch.long), steps=1)
    with pytest.raises(ValueError, match="steps must be"):
        tr.fit(_data(), steps=-1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sd.load_model(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable scoresde checkpoint"):
        sd.load_checkpoint(junk)
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a scoresde checkpoint"):
        sd.load_checkpoint(tmp_path / "other.pt")
