"""Images end to end: training a U-Net on the digits, the image branches of `scoresde train |
sample | likelihood | compare | demo --images`, and the comparison engine's image support
(metrics given per comparison, real-vs-real floors between two splits)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import scoresde as sd
from scoresde import cli
from scoresde.evaluation.compare import Target, builtin_target, compare
from scoresde.evaluation.metrics import Metric, noise_floor
from scoresde.image_workflow import choose_net, dequantized_source, image_info

pytest.importorskip("sklearn")


def _run(argv, capsys):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# ----- the library pieces ----------------------------------------------------------------
def test_200_training_steps_on_digits_lower_the_loss():
    """The tiny U-Net starts at exactly zero output, so its eps-prediction loss is
    E|eps|^2 / D = 1 in expectation; 200 steps must bring the loss on held-out digits (same
    times and noise before and after) well below that."""
    train = sd.data.load_dataset("digits", "train")
    test = sd.data.load_dataset("digits", "test")
    net = sd.nets.UNet.preset("tiny", generator=torch.Generator().manual_seed(0))
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="eps")

    def held_out_loss():
        with torch.no_grad():
            return float(sd.dsm_loss(model.eval(), test.images,
                                     generator=torch.Generator().manual_seed(1)))

    before = held_out_loss()
    assert abs(before - 1.0) < 0.05        # zero output: mean |eps|^2 over 297 x 64 draws
    trainer = sd.Trainer(model, lr=2e-3, batch_size=8, warmup_steps=20, progress=False,
                         ema_decay=None, seed=0)
    trainer.fit(dequantized_source(train), steps=200)
    after = held_out_loss()
    assert len(trainer.losses) == 200
    assert after < 0.5 * before, (before, after)
    assert np.mean(trainer.losses[-50:]) < 0.6 * np.mean(trainer.losses[:10])


def test_dequantized_source_draws_uniformly_within_each_bin():
    k = torch.tensor([[[[0, 16], [7, 3]]]])                         # one 1x2x2 image
    ds = sd.data.ImageDataset(k, levels=17)
    x = dequantized_source(ds)(4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 1, 2, 2)
    assert bool((ds.to_levels(x) == k).all())                       # every draw in its own bin
    u = (x + 1) * 17 / 2 - k                                        # y = 2(k + u)/17 - 1
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01                        # U[0,1): mean 1/2, s.e. 0.0023
    assert abs(float(u.var()) - 1 / 12) < 0.005


def test_choose_net_and_image_info():
    assert choose_net("digits", None) == "unet" and choose_net("moons", None) == "mlp"
    assert choose_net("digits", "unet") == "unet" and choose_net("moons", "mlp") == "mlp"
    with pytest.raises(ValueError, match="--net unet trains on image data sets"):
        choose_net("moons", "unet")
    with pytest.raises(ValueError, match="--net mlp trains on 2-D toy sets"):
        choose_net("digits", "mlp")
    with pytest.raises(ValueError, match="unknown data set"):
        choose_net("nope", None)
    assert image_info({"data": "moons"}) is None
    assert image_info({"data": "digits"}) == {"data": "digits", "levels": 17, "scaling": "[-1,1]"}


def test_noise_floor_with_a_reference_sampler_pairs_the_two_samplers():
    zeros = lambda n, g: torch.zeros(n, 1)          # noqa: E731
    ones = lambda n, g: torch.ones(n, 1)            # noqa: E731
    fl = noise_floor(lambda x, y: float(y.mean() - x.mean()), zeros, 5, torch.Generator(),
                     repeats=3, reference_sampler=ones)
    assert fl.mean == 1.0 and fl.std == 0.0
    with pytest.raises(TypeError, match="reference_sampler"):
        noise_floor(lambda x, y: 0.0, zeros, 5, torch.Generator(), reference_sampler=3)


def test_compare_takes_its_metrics_and_the_targets_floor_sampler():
    """`metrics=` replaces the registry's metrics (names or Metric objects, the first is the
    headline's); `Target.floor_sample` draws the first set of every floor pair: with the
    exact samples shifted by 1 in one coordinate, the floor of the squared mean distance is
    1 + its sampling noise, instead of the noise alone."""
    base = builtin_target("mixture2d")
    sq_mean = Metric("sq_mean", lambda x, y, seed: float((x.mean(0) - y.mean(0)).square().sum()),
                     "squared mean distance")
    opts = dict(n=400, replicates=2, floor_repeats=4, progress=False, pathwise=False, seed=3)
    plain = compare(base, ["ddim"], [8], metrics=[sq_mean, "sw2"], **opts)
    assert list(plain.metrics) == ["sq_mean", "sw2"] and plain.primary == "sq_mean"
    row = plain.rows[0]
    assert "sq_mean" in row and "sw2" in row and "mmd" not in row and "energy" not in row
    assert "sq_mean_ratio" in row and plain.floors["sq_mean"]["mean"] < 0.1
    shift = torch.tensor([1.0, 0.0])
    shifted = Target(base.name, base.model, base.sample, base.exact, base.description,
                     floor_sample=lambda n, g: base.sample(n, g) + shift)
    moved = compare(shifted, ["ddim"], [8], metrics=[sq_mean], **opts)
    assert abs(moved.floors["sq_mean"]["mean"] - 1.0) < 0.15
    assert "training-split draw" in moved.legend("sq_mean")
    with pytest.raises(ValueError, match="unknown metric"):
        compare(base, ["ddim"], [8], metrics=["nope"], **opts)
    with pytest.raises(ValueError, match="twice"):
        compare(base, ["ddim"], [8], metrics=["sw2", "sw2"], **opts)


# ----- the command line ------------------------------------------------------------------
def test_cli_image_train_sample_likelihood_compare(tmp_path, capsys):
    ckpt = tmp_path / "t" / "model.pt"
    code, out, err = _run(["train", "--data", "digits", "--net", "unet", "--steps", "5",
                           "--batch-size", "8", "--out", str(tmp_path / "t"), "--no-progress"],
                          capsys)
    assert code == 0, err
    assert "271,649 parameters" in out
    assert (tmp_path / "t" / "loss.png").is_file() and (tmp_path / "t" / "samples.png").is_file()
    meta = sd.load_checkpoint(ckpt)["meta"]
    assert (meta["data"], meta["levels"], meta["scaling"], meta["preset"]) == \
        ("digits", 17, "[-1,1]", "tiny")
    assert meta["net_class"] == "UNet" and meta["event_shape"] == [1, 8, 8]

    code, out, err = _run(["sample", "--checkpoint", str(ckpt), "--solver", "ddim", "--nfe", "4",
                           "--n", "10", "--grid-png", "--gif", "--out", str(tmp_path / "s"),
                           "--no-progress"], capsys)
    assert code == 0, err
    z = np.load(tmp_path / "s" / "samples.npz")
    assert z["x"].shape == (10, 1, 8, 8) and int(z["nfe"]) == 4
    assert z["k"].min() >= 0 and z["k"].max() <= 16
    with Image.open(tmp_path / "s" / "samples.png") as im:
        # 8 per row, 1-pixel padding: (2 * 9 + 1) x (8 * 9 + 1) pixels, each 4x4
        assert im.size == (4 * 73, 4 * 19)
    with Image.open(tmp_path / "s" / "reverse_process.gif") as im:
        assert im.n_frames == 5            # x_T, 2 ddim steps, x(t_end), the denoised sample

    code, out, err = _run(["likelihood", "--checkpoint", str(ckpt), "--n", "8", "--batch-size",
                           "4", "--rtol", "1e-2", "--atol", "1e-2", "--out", str(tmp_path / "l"),
                           "--no-progress"], capsys)
    assert code == 0, err
    vals = json.loads((tmp_path / "l" / "likelihood.json").read_text())
    assert vals["n"] == 8 and vals["levels"] == 17 and vals["divergence"] == "hutchinson"
    # an upper bound on the discrete model's bits/dim: positive, and a 5-step model is
    # far from log2(17) = 4.09 bits of a uniform model
    assert 0 < vals["bpd"] < 30 and 0 < vals["bpd_se"] < vals["bpd"] and vals["nfe"] > 0
    assert "bits/dim" in out

    code, out, err = _run(["compare", "--checkpoint", str(ckpt), "--solvers", "ddim", "ancestral",
                           "--nfe", "3", "5", "--n", "20", "--replicates", "2",
                           "--floor-repeats", "2", "--reference-tol", "1e-2",
                           "--classifier-steps", "20", "--out", str(tmp_path / "c"),
                           "--no-progress"], capsys)
    assert code == 0, err
    assert "Fréchet distance" in out and "Verdict (fd" in out
    res = json.loads((tmp_path / "c" / "results.json").read_text())
    assert list(res["config"]["metrics"]) == ["fd", "kid"] and res["config"]["n"] == 20
    for r in res["rows"]:
        assert r["status"] == "ok" and math.isfinite(r["fd"]) and r["fd"] > 0
        assert math.isfinite(r["kid"]) and ("pathwise" in r) == (r["name"] == "ddim")
    assert res["floors"]["fd"]["mean"] > 0
    assert (tmp_path / "t" / "features" / "feature_classifier.pt").is_file()
    for f in ("report.md", "samples_grid.png", "error_vs_nfe_fd.png", "error_vs_nfe_kid.png"):
        assert (tmp_path / "c" / f).is_file(), f
    assert "held-out accuracy" in (tmp_path / "c" / "report.md").read_text()


def test_cli_image_errors_are_one_line(tmp_path, capsys):
    moons = tmp_path / "m"
    assert _run(["train", "--data", "moons", "--steps", "2", "--hidden", "8", "--depth", "1",
                 "--out", str(moons), "--no-progress"], capsys)[0] == 0
    cases = [
        ["train", "--data", "moons", "--net", "unet", "--out", str(tmp_path / "a")],
        ["train", "--data", "digits", "--net", "mlp", "--out", str(tmp_path / "a")],
        ["train", "--data", "digits", "--hidden", "16", "--out", str(tmp_path / "a")],
        ["train", "--data", "moons", "--preset", "tiny", "--out", str(tmp_path / "a")],
        ["train", "--data", "digits", "--preset", "huge", "--steps", "1", "--out",
         str(tmp_path / "a")],
        ["sample", "--checkpoint", str(moons / "model.pt"), "--grid-png", "--out",
         str(tmp_path / "b")],
        ["likelihood", "--checkpoint", str(moons / "model.pt"), "--probes", "2", "--out",
         str(tmp_path / "b")],
        ["compare", "--target", "mixture2d", "--features-cache", str(tmp_path), "--out",
         str(tmp_path / "b")],
    ]
    for argv in cases:
        code, out, err = _run(argv, capsys)
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("scoresde: error:"), (argv, err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_demo_images_quick(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, err = _run(["demo", "--images", "--quick", "--out", str(out_dir), "--no-progress"],
                          capsys)
    assert code == 0, err
    for f in ("report.md", "samples.png", "reverse_process.gif", "likelihood.json",
              "train/model.pt", "compare/report.md", "compare/samples_grid.png"):
        assert (out_dir / f).is_file(), f
    lik = json.loads((out_dir / "likelihood.json").read_text())
    assert math.isfinite(lik["bpd"]) and lik["bpd_se"] > 0
    report = (out_dir / "report.md").read_text()
    for part in ("271,649 parameters", "bits/dim", "Not Inception FID/KID", "Fréchet distance",
                 "real-vs-real floor", "KID"):
        assert part in report, part
    assert "report:" in out and "held-out bits/dim" in out
