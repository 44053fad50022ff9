"""Trainer data sources (labelled tensors, iterables/DataLoaders, epochs, exact resume),
conditioning and condition dropout in the losses, horizontal flips, and the JSONL log."""

import json
import math
import shutil
import sys
import types

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import scoresde as sd
from scoresde.losses import drop_cond


# ----- helpers ---------------------------------------------------------------------------
def binomial_two_sided_p(k: int, n: int, p: float) -> float:
    """Exact two-sided binomial p-value: the probability of outcomes no likelier than k."""
    ks = torch.arange(n + 1, dtype=torch.float64)
    logpmf = torch.distributions.Binomial(n, torch.tensor(p, dtype=torch.float64)).log_prob(ks)
    return float(logpmf[logpmf <= logpmf[k] + 1e-9].exp().sum().clamp(max=1.0))


class Recorder(nn.Module):
    """A parameter-free fake network that records what it is called with."""

    def __init__(self, null_label=None):
        super().__init__()
        self.calls = []
        if null_label is not None:
            self.null_label = null_label

    def forward(self, x, t, **cond):
        self.calls.append({"x": x, "t": t, **cond})
        return torch.zeros_like(x)


class CondNet(nn.Module):
    """A tiny class-conditional MLP: eps(x, t, y) with a learned label embedding; label
    `classes` is the null label."""

    def __init__(self, dim=2, classes=2, hidden=64, seed=0):
        super().__init__()
        self.null_label = classes
        with torch.random.fork_rng():               # seeded initial weights, global RNG untouched
            torch.manual_seed(seed)
            self.emb = nn.Embedding(classes + 1, hidden)
            self.inp = nn.Linear(dim + 1, hidden)
            self.body = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                      nn.Linear(hidden, dim))

    def forward(self, x, t, y=None):
        if y is None:
            y = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        return self.body(self.inp(torch.cat([x, t[:, None]], 1)) + self.emb(y))


def _mlp_model(seed=0):
    net = sd.nets.MLPScoreNet(dim=2, hidden=16, depth=2, generator=torch.Generator().manual_seed(seed))
    return sd.ScoreModel(net, sd.VPSDE(), prediction="eps")


def _two_classes(n=512, seed=0):
    """Class 0 near (-2, 0), class 1 near (+2, 0), std 0.1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.1 * torch.randn(n, 2, generator=g)
    x[:, 0] += 4.0 * y - 2.0
    return x, y


def _recording_loss(seen):
    def loss_fn(model, batch, generator, cond=None):
        seen.append((batch.detach().clone(), None if cond is None else
                     {k: v.clone() for k, v in cond.items()}))
        return (model.eps(batch.flatten(1)[:, :2].contiguous(), 0.5) ** 2).mean()
    return loss_fn


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


# ----- condition dropout -------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_label_dropout_hits_the_null_label_at_rate_p(p):
    n, null = 20_000, 10
    net = Recorder(null_label=null)
    model = sd.ScoreModel(net, sd.VPSDE())
    y = torch.arange(n) % 10
    sd.dsm_loss(model, torch.randn(n, 2), generator=torch.Generator().manual_seed(1),
                cond={"y": y}, cond_drop=p)
    seen = net.calls[-1]["y"]
    dropped = seen == null
    assert torch.equal(seen[~dropped], y[~dropped])          # the others are untouched
    k = int(dropped.sum())
    assert binomial_two_sided_p(k, n, p) > 1e-3, (k, n * p)
    assert binomial_two_sided_p(k, n, p + 0.02) < 1e-3       # the test can tell a wrong rate


def test_dropout_extremes_and_the_draw_order():
    n, null = 1000, 7
    y = torch.arange(n) % 7
    x = torch.randn(n, 3)
    out = {}
    for p in (0.0, 1.0):
        net = Recorder(null_label=null)
        model = sd.ScoreModel(net, sd.VPSDE())
        g = torch.Generator().manual_seed(0)
        sd.dsm_loss(model, x, generator=g, cond={"y": y}, cond_drop=p)
        out[p] = net.calls[-1]
    assert torch.equal(out[0.0]["y"], y)                        # p = 0: none dropped
    assert bool((out[1.0]["y"] == null).all())                   # p = 1: all dropped
    # the mask is drawn after t and the noise: the same t and x_t as without dropout
    assert torch.equal(out[0.0]["t"], out[1.0]["t"]) and torch.equal(out[0.0]["x"], out[1.0]["x"])
    # cond_drop=0 draws nothing: the loss equals the unconditional call's, bit for bit
    plain = sd.ScoreModel(lambda x, t, **c: 0.3 * x, sd.VPSDE())
    a = sd.dsm_loss(plain, x, generator=torch.Generator().manual_seed(4))
    b = sd.dsm_loss(plain, x, generator=torch.Generator().manual_seed(4), cond={"y": y})
    assert torch.equal(a, b)


def test_drop_cond_drops_every_key_of_a_sample_together():
    n = 4000
    cond = {"y": torch.arange(n) % 3, "z": torch.ones(n, 2, 2)}
    out = drop_cond(cond, 0.3, {"y": -1, "z": torch.zeros(2, 2)}, torch.Generator().manual_seed(2))
    dropped_y = out["y"] == -1
    dropped_z = (out["z"] == 0).flatten(1).all(1)
    assert torch.equal(dropped_y, dropped_z) and (out["z"].flatten(1).sum(1) % 4 == 0).all()
    assert 0.25 < dropped_y.float().mean() < 0.35
    assert drop_cond(cond, 0.0, {"y": -1, "z": 0.0})["y"] is cond["y"]


def test_ddpm_loss_takes_cond_and_cond_drop():
    sched = sd.VPSDE().discretize(100)
    net = Recorder(null_label=5)
    model = sd.ScoreModel(net, sd.VPSDE.from_schedule(sched))
    y = torch.arange(64) % 5
    sd.ddpm_loss(model, torch.randn(64, 2), sched, torch.Generator().manual_seed(0), cond={"y": y})
    assert torch.equal(net.calls[-1]["y"], y)
    sd.ddpm_loss(model, torch.randn(64, 2), sched, torch.Generator().manual_seed(0),
                 cond={"y": y}, cond_drop=1.0)
    assert bool((net.calls[-1]["y"] == 5).all())


def test_conditioning_errors():
    x = torch.randn(4, 2)
    with_null = sd.ScoreModel(Recorder(null_label=3), sd.VPSDE())
    without = sd.ScoreModel(Recorder(), sd.VPSDE())
    y = torch.arange(4)
    with pytest.raises(ValueError, match=r"cond\['y'\] has shape \(3,\).*must be 4"):
        sd.dsm_loss(with_null, x, cond={"y": y[:3]})
    with pytest.raises(ValueError, match="cond_drop must be a number in"):
        sd.dsm_loss(with_null, x, cond={"y": y}, cond_drop=1.5)
    with pytest.raises(ValueError, match="needs a null condition.*Recorder has none"):
        sd.dsm_loss(without, x, cond={"y": y}, cond_drop=0.1)
    with pytest.raises(ValueError, match="cond is empty"):
        sd.dsm_loss(with_null, x, cond_drop=0.1)
    with pytest.raises(ValueError, match="a null value for each conditioning key"):
        sd.dsm_loss(without, x, cond={"y": y}, cond_drop=0.1, null_cond={"label": 3})
    with pytest.raises(TypeError, match="floating point"):
        sd.dsm_loss(without, x, cond={"y": y}, cond_drop=0.1, null_cond={"y": 0.5})
    with pytest.raises(ValueError, match="does not broadcast"):
        sd.dsm_loss(without, x, cond={"y": y}, cond_drop=0.1,
                    null_cond={"y": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(TypeError, match="cond must be a dict"):
        sd.dsm_loss(with_null, x, cond=y)
    with pytest.raises(TypeError, match=r"cond\['y'\] must be a tensor"):
        sd.dsm_loss(with_null, x, cond={"y": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="cannot have the key 't'"):
        sd.dsm_loss(with_null, x, cond={"t": y})


# ----- conditioning through the Trainer ---------------------------------------------------
def test_labelled_tensor_data_samples_rows_jointly_and_cond_reaches_the_net():
    n = 300
    x = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], 1)
    y = torch.arange(n)
    seen = []
    tr = sd.Trainer(_mlp_model(), batch_size=32, progress=False, loss_fn=_recording_loss(seen))
    tr.fit((x, y), steps=3)
    for batch, cond in seen:
        assert torch.equal(batch[:, 0].long(), cond["y"])     # rows drawn jointly
    # the built-in loss passes y (and the dropout's null label) to the network
    net = CondNet(classes=n)
    rec = []
    net.register_forward_hook(lambda mod, args, kwargs, out: rec.append(kwargs["y"].clone()),
                              with_kwargs=True)
    model = sd.ScoreModel(net, sd.VPSDE())
    sd.Trainer(model, batch_size=4000, progress=False, cond_drop=0.25).fit((x, y), steps=1)
    labels = rec[-1]
    frac = float((labels == n).float().mean())
    assert 0.2 < frac < 0.3 and bool((labels <= n).all())


def test_dataloader_of_labelled_data_trains_a_conditional_net():
    x, y = _two_classes(2048)
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    model = sd.ScoreModel(CondNet(), sd.VPSDE(), prediction="eps")
    tr = sd.Trainer(model, lr=3e-3, ema_decay=None, progress=False, seed=0)
    tr.fit(loader, steps=400)
    assert tr.epoch == 24 and tr.step == 400          # batch 400 is the last of epoch 24
    first, last = sum(tr.losses[:40]) / 40, sum(tr.losses[-40:]) / 40
    assert last < 0.7 * first, (first, last)
    # it learned the class-conditional denoiser: for class mean m, variance s0^2 = 0.01,
    # E[x0 | x_t, y] = m + alpha s0^2 / (alpha^2 s0^2 + sigma^2) (x_t - alpha m)
    sde, t = sd.VPSDE(), 0.3
    a, s = sde.alpha(torch.tensor(t)), sde.sigma(torch.tensor(t))
    x0, label = _two_classes(1000, seed=7)
    xt = a * x0 + s * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    m = torch.stack([4.0 * label - 2.0, torch.zeros(1000)], 1)
    exact = m + a * 0.01 / (a ** 2 * 0.01 + s ** 2) * (xt - a * m)
    with torch.no_grad():
        right = (model.x0(xt, t, y=label) - exact).abs().mean()
        wrong = (model.x0(xt, t, y=1 - label) - exact).abs().mean()
    assert right < 0.25 and wrong > 1.2, (right, wrong)     # measured: 0.12 and 1.6


def test_trainer_conditioning_options_are_checked_and_checkpointed(tmp_path):
    with pytest.raises(ValueError, match="needs a null condition"):
        sd.Trainer(_mlp_model(), cond_drop=0.1)
    with pytest.raises(ValueError, match="cond_drop applies to the built-in dsm_loss"):
        sd.Trainer(sd.ScoreModel(CondNet(), sd.VPSDE()), cond_drop=0.1,
                   loss_fn=lambda m, b, g: b.sum())
    with pytest.raises(TypeError, match="hflip must be True or False"):
        sd.Trainer(_mlp_model(), hflip=1)
    x, y = _two_classes(64)
    tr = sd.Trainer(sd.ScoreModel(CondNet(), sd.VPSDE()), cond_drop=0.2, batch_size=16,
                    progress=False)
    assert tr.null_cond == {"y": 2}
    tr.fit((x, y), steps=2)
    tr.save(tmp_path / "c.pt")
    meta = sd.load_checkpoint(tmp_path / "c.pt")["meta"]
    assert meta["trainer"]["cond_drop"] == 0.2 and meta["trainer"]["null_cond"] == {"y": 2}
    assert meta["trainer"]["hflip"] is False
    with pytest.raises(ValueError, match="cond is empty"):        # no labels in the data
        sd.Trainer(sd.ScoreModel(CondNet(), sd.VPSDE()), cond_drop=0.2,
                   progress=False).fit(x, steps=1)


# ----- iterables, epochs, resume --------------------------------------------------------
def test_an_iterable_is_reiterated_and_epochs_are_counted():
    batches = [torch.full((4, 2), float(i)) for i in range(3)]
    seen = []
    tr = sd.Trainer(_mlp_model(), progress=False, loss_fn=_recording_loss(seen))
    tr.fit(batches, steps=8)
    assert [int(b[0, 0]) for b, _ in seen] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert tr.epoch == 2 and tr.step == 8
    tr.fit(batches, steps=10)                                   # continues the same epoch
    assert [int(b[0, 0]) for b, _ in seen[8:]] == [2, 0] and tr.epoch == 3

    class EpochAware:
        def __init__(self):
            self.epochs = []

        def set_epoch(self, e):
            self.epochs.append(e)

        def __iter__(self):
            return iter(batches[:2])

    data = EpochAware()
    sd.Trainer(_mlp_model(), progress=False).fit(data, steps=5)
    assert data.epochs == [0, 1, 2]
    with pytest.raises(ValueError, match="used up after one pass"):
        sd.Trainer(_mlp_model(), progress=False).fit(iter(batches), steps=4)
    with pytest.raises(ValueError, match="no batches in epoch 0"):
        sd.Trainer(_mlp_model(), progress=False).fit([], steps=1)


def test_batch_forms_tuple_list_and_dict():
    x = torch.randn(6, 2)
    y = torch.arange(6)
    forms = [(x, y), [x, y], {"x": x, "y": y}, [x], {"x": x}]
    got = []
    for batch in forms:
        seen = []
        sd.Trainer(_mlp_model(), progress=False, loss_fn=_recording_loss(seen)).fit([batch], steps=1)
        got.append(seen[0])
    for b, c in got[:3]:
        assert torch.equal(b, x) and torch.equal(c["y"], y)
    for b, c in got[3:]:
        assert torch.equal(b, x) and c is None


def _loader(x, y, seed=0):
    return DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("stop,epoch", [(10, 2), (12, 2)])   # mid-epoch, at an epoch's end
def test_dataloader_resume_skips_the_consumed_batches_exactly(tmp_path, stop, epoch):
    x, y = _two_classes(200)                       # 4 batches per epoch
    kw = dict(lr=2e-3, ema_decay=0.9, progress=False, seed=5)
    ref = sd.Trainer(sd.ScoreModel(CondNet(seed=1), sd.VPSDE()), **kw).fit(_loader(x, y), 17)
    a = sd.Trainer(sd.ScoreModel(CondNet(seed=1), sd.VPSDE()), checkpoint_dir=tmp_path, **kw)
    a.fit(_loader(x, y), stop)
    assert a.epoch == epoch
    for seed in (0, 99):     # a fresh loader, as in a new process; its shuffle state is restored
        b = sd.Trainer(sd.ScoreModel(CondNet(seed=2), sd.VPSDE()), **kw).load(tmp_path / "last.pt")
        b.fit(_loader(x, y, seed), 17)
        assert b.losses == ref.losses and b.epoch == ref.epoch == 4
        for p, q in zip(_params(ref.model), _params(b.model), strict=True):
            assert torch.equal(p, q)
    # fit called again with the same loader continues its live iterator: the same run
    a.fit(_loader(x, y, 99), 14)
    a.fit(_loader(x, y, 99), 15)
    assert a.losses == ref.losses[:15]
    # the shuffle differs between seeds (else the restore above would prove nothing)
    other = sd.Trainer(sd.ScoreModel(CondNet(seed=1), sd.VPSDE()), **kw).fit(_loader(x, y, 99), 17)
    assert other.losses != ref.losses


def test_resuming_a_globally_shuffled_loader_warns(tmp_path):
    x, _ = _two_classes(100)
    loader = DataLoader(TensorDataset(x), batch_size=50, shuffle=True)
    sd.Trainer(_mlp_model(), progress=False, checkpoint_dir=tmp_path).fit(loader, 1)
    tr = sd.Trainer(_mlp_model(), progress=False).load(tmp_path / "last.pt")
    with pytest.warns(UserWarning, match="shuffles with the global random generator"):
        tr.fit(loader, 2)


def test_resume_with_fewer_batches_is_refused(tmp_path):
    batches = [torch.randn(4, 2) for _ in range(5)]
    sd.Trainer(_mlp_model(), progress=False, checkpoint_dir=tmp_path).fit(batches, 3)
    tr = sd.Trainer(_mlp_model(), progress=False).load(tmp_path / "last.pt")
    with pytest.raises(ValueError, match="batch 3 of epoch 0: the data yields only 2 batches"):
        tr.fit(batches[:2], 5)


# ----- horizontal flips ---------------------------------------------------------------------
def _flipped_batch(seed, x):
    seen = []
    tr = sd.Trainer(_mlp_model(), progress=False, hflip=True, seed=seed, loss_fn=_recording_loss(seen))
    tr.fit([x], steps=1)
    return seen[0][0]


def test_hflip_flips_about_half_only_along_w_and_is_reproducible():
    n = 2000
    x = torch.randn(n, 1, 2, 3, generator=torch.Generator().manual_seed(0))
    out = _flipped_batch(0, x)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same ^ flipped).all())                 # each image exactly one of the two
    assert not bool((out == x.flip(-2)).flatten(1).all(1).any())   # never along H
    k = int(flipped.sum())
    assert binomial_two_sided_p(k, n, 0.5) > 1e-3, k
    assert torch.equal(out, _flipped_batch(0, x))        # the seed fixes the flips
    assert not torch.equal(out, _flipped_batch(1, x))
    with pytest.raises(ValueError, match=r"hflip=True flips images of shape \(B, C, H, W\)"):
        sd.Trainer(_mlp_model(), progress=False, hflip=True).fit(torch.randn(10, 2), 1)


# ----- the JSONL log ----------------------------------------------------------------------
def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_log_keys_steps_and_resume_without_duplicates(tmp_path):
    data = sd.data.sample_toy("moons", 512, generator=torch.Generator().manual_seed(0))
    kw = dict(batch_size=32, progress=False, seed=2, log_every=5, checkpoint_every=10)
    ref = sd.Trainer(_mlp_model(), checkpoint_dir=tmp_path / "ref", **kw).fit(data, 30)
    ref_log = _lines(tmp_path / "ref" / "log.jsonl")
    assert [r["step"] for r in ref_log] == [5, 10, 15, 20, 25, 30]
    assert set(ref_log[0]) == {"step", "loss", "lr", "grad_norm", "epoch", "samples_per_s",
                               "wall_time"}
    for r in ref_log:
        assert r["loss"] == sum(ref.losses[r["step"] - 5:r["step"]]) / 5
        assert r["epoch"] == r["step"] * 32 / 512 and r["lr"] == 1e-3
        assert r["grad_norm"] > 0 and r["samples_per_s"] > 0
    # a run that got to step 23, then "crashed" back to its checkpoint at step 10, with a
    # torn last line in its log
    run = tmp_path / "run"
    a = sd.Trainer(_mlp_model(), checkpoint_dir=run, **kw).fit(data, 10)
    shutil.copy(run / "last.pt", tmp_path / "at10.pt")
    a.fit(data, 23)
    shutil.copy(tmp_path / "at10.pt", run / "last.pt")
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 2')
    b = sd.Trainer(_mlp_model(), checkpoint_dir=run, **kw).load(run / "last.pt").fit(data, 30)
    log = _lines(run / "log.jsonl")
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
    assert b.losses == ref.losses
    for r, q in zip(log, ref_log, strict=True):
        assert all(r[k] == q[k] for k in ("step", "loss", "lr", "grad_norm", "epoch")), (r, q)


def test_log_path_iterable_epochs_and_tensorboard(tmp_path, monkeypatch):
    batches = [torch.randn(8, 2) for _ in range(3)]
    sd.Trainer(_mlp_model(), progress=False, log_path=tmp_path / "l" / "x.jsonl",
               log_every=2).fit(batches, 7)
    log = _lines(tmp_path / "l" / "x.jsonl")
    assert [(r["step"], r["epoch"]) for r in log] == [(2, 0), (4, 1), (6, 1)]
    with pytest.raises(TypeError, match="log_every must be"):
        sd.Trainer(_mlp_model(), log_every=2.0)
    with pytest.raises(ValueError, match="is a folder"):
        sd.Trainer(_mlp_model(), log_path=tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="needs the tensorboard package"):
        sd.Trainer(_mlp_model(), log_path=tmp_path / "tb.jsonl", tensorboard=True)
    calls = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("init", log_dir, purge_step))

        def add_scalar(self, tag, value, step, walltime=None):
            calls.append((tag, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=FakeWriter))
    sd.Trainer(_mlp_model(), progress=False, log_path=tmp_path / "tb" / "log.jsonl", log_every=2,
               tensorboard=True).fit(batches, 4)
    assert calls[0] == ("init", str(tmp_path / "tb"), None) and calls[-1] == ("close",)
    assert [c for c in calls if c[0] == "train/loss"] == [("train/loss", 2), ("train/loss", 4)]
    assert {c[0] for c in calls[1:-1]} == {"train/loss", "train/lr", "train/grad_norm",
                                           "train/epoch", "train/samples_per_s"}


# ----- bad data and batches ---------------------------------------------------------------
def test_bad_data_and_batches_are_clear_errors():
    x = torch.randn(6, 2)
    tr = sd.Trainer(_mlp_model(), progress=False)
    cases = [
        ((x, torch.arange(5)), ValueError, "data y has 5 rows but x has 6"),
        ((x, [1, 2]), TypeError, "a tuple data set must be two tensors"),
        ((x, x, x), ValueError, "must be two tensors .x, y., got 3"),
        ({"y": x}, ValueError, "needs the key 'x'"),
        (TensorDataset(x), TypeError, "wrap it in a torch.utils.data.DataLoader"),
        (x.numpy(), TypeError, "must be a torch tensor, not ndarray"),
        (3, TypeError, "or an iterable of batches"),
        ([(x, torch.arange(4))], ValueError, "batch 0 of epoch 0 of the data: y has 4 rows but x has 6"),
        ([(x, x, x)], ValueError, r"a tuple batch must be \(x,\) or \(x, y\)"),
        ([{"y": x}], ValueError, "a dict batch needs the key 'x'"),
        ([{"x": x, "y": [1]}], TypeError, r"conditioning\['y'\] must be a tensor"),
        (["abc"], TypeError, "a batch must be a tensor x, a tuple"),
        ([torch.arange(6).reshape(3, 2)], ValueError, "x must be a floating tensor"),
        (lambda n, g: "x", TypeError, "the batch returned by the data callable: a batch must be"),
    ]
    for data, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            tr.fit(data, steps=tr.step + 1)
    assert math.isfinite(sum(tr.losses)) and tr.step == 0
