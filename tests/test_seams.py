"""The seams between modules: public names only, a light `import scoresde`, and the
registries (a user's network, SDE, solver, metric) end to end, through save -> load_model and
the command line's `--import`."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde import cli

PKG = Path(sd.__file__).resolve().parent
#: private-looking names of other libraries that the package uses on purpose (os._exit is
#: the documented way for a forked child to leave)
THIRD_PARTY_PRIVATE = {("torch", "_assert_async"), ("torch", "_foreach_lerp_"), ("os", "_exit")}


def _own_private_names(tree: ast.AST) -> set[str]:
    """Underscore names a module defines itself: functions, classes, attributes it assigns."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    return {n for n in own if n.startswith("_")}


def _reaches(path: Path, root: Path = PKG.parent) -> list[str]:
    tree = ast.parse(path.read_text())
    name = path.relative_to(root)
    own = _own_private_names(tree)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            a = node.attr
            if not a.startswith("_") or a.startswith("__") or a in own:
                continue
            recv = node.value
            if isinstance(recv, ast.Name) and (recv.id, a) in THIRD_PARTY_PRIVATE:
                continue
            bad.append(f"{name}:{node.lineno}: {ast.unparse(recv)}.{a}")
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if any(p.startswith("_") and not p.startswith("__") for p in parts):
                bad.append(f"{name}:{node.lineno}: from {node.module}")
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    bad.append(f"{name}:{node.lineno}: import {alias.name}")
    return bad


def test_no_module_reaches_into_another_modules_private_names():
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 30
    bad = [b for f in files for b in _reaches(f)]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_the_scan_would_catch_a_reach(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("from ._checks import bcast\nfrom .models import _FunctionNet\n\n"
                 "def g(sde, model):\n    return sde._sigma(1.0) + model._forward_hooks\n\n"
                 "class A:\n    def h(self, other):\n        self._x = 1\n"
                 "        return other._x + self._y\n")
    found = _reaches(f, tmp_path)
    # _checks, _FunctionNet, _sigma, _forward_hooks, and self._y: an attribute this module
    # never defines, i.e. a base class's private name from another module
    assert len(found) == 5, found


def test_import_scoresde_is_light():
    code = ("import sys, scoresde; heavy = [m for m in ('matplotlib', 'torchsde', 'torchdiffeq', "
            "'tqdm.notebook', 'scipy', 'IPython') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_registry_is_reachable_from_the_namespace():
    assert set(sd.SDES) >= {"vp", "subvp", "ve", "vp_cosine", "vp_schedule"}
    assert "mlp" in sd.NETS and sd.NETS["mlp"] is sd.nets.MLPScoreNet
    assert {"sw2", "mmd", "energy"} <= set(sd.metrics.METRICS)
    assert {"eight_gaussians", "moons"} <= set(sd.data.DATASETS)
    assert {"uniform", "logsnr"} <= set(sd.GRIDS)
    table = {r["name"]: r for r in sd.samplers.solver_table()}
    assert table["pf_ode"]["adaptive"] and not table["ddim"]["adaptive"]
    assert table["dpm_solver"]["default_grid"] == sd.SOLVERS["dpm_solver"].default_grid.label
    assert table["euler_maruyama"]["default_grid"] == "uniform"
    assert table["heun"]["cost"] == "2n - 1 evaluations for n steps"
    assert sd.samplers.adaptive_solvers() == ["ggf", "pf_ode", "torchsde"]


@pytest.mark.parametrize("register", [sd.register_solver, sd.register_sde, sd.register_net,
                                      sd.data.register_dataset,
                                      lambda name, x: sd.metrics.register_metric(name, x),
                                      sd.samplers.register_grid])
def test_registries_refuse_a_bad_name_or_object(register):
    with pytest.raises(TypeError):
        register(3, object)                        # a name must be a string
    with pytest.raises(TypeError):
        register("x_not_registered", 42)          # not a class/callable of the right kind


# ----- a user's own module: network, SDE, solver, metric -----------------------------------
USER_MODULE = textwrap.dedent('''
    """A user's extensions, registered on import."""
    import math

    import torch
    from torch import nn

    import scoresde as sd


    @sd.register_net("tiny_user_net")
    class TinyUserNet(nn.Module):
        def __init__(self, dim=2, width=8):
            super().__init__()
            self.dim, self.width = dim, width
            self.body = nn.Sequential(nn.Linear(dim + 1, width), nn.SiLU(), nn.Linear(width, dim))

        def forward(self, x, t):
            return self.body(torch.cat([x, t[:, None].to(x.dtype)], dim=1))

        def config(self):
            return {"dim": self.dim, "width": self.width}

        @classmethod
        def from_config(cls, cfg):
            return cls(**cfg)


    @sd.register_sde("user_ou")
    class UserOU(sd.SDE):
        """dx = -theta x dt + sqrt(2 theta) dw: alpha = e^{-theta t}, sigma^2 = 1 - e^{-2 theta t}."""

        variance_preserving = True

        def __init__(self, theta=3.0):
            self.theta = float(theta)

        def _f(self, t):
            return torch.full_like(t, -self.theta)

        def _g2(self, t):
            return torch.full_like(t, 2.0 * self.theta)

        def _log_alpha(self, t):
            return -self.theta * t

        def _sigma(self, t):
            return torch.sqrt(-torch.expm1(-2.0 * self.theta * t))

        def config(self):
            return {"name": "user_ou", "theta": self.theta}
    ''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_ext.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = (dict(sd.NETS), dict(sd.SDES))
    sys.modules.pop("user_ext", None)
    yield "user_ext"
    sys.modules.pop("user_ext", None)
    sd.NETS.clear(), sd.NETS.update(saved[0])
    sd.SDES.clear(), sd.SDES.update(saved[1])


def _train_user_model(tmp_path):
    import user_ext

    net = user_ext.TinyUserNet(dim=2, width=8)
    model = sd.ScoreModel(net, user_ext.UserOU(theta=2.5), prediction="eps")
    x = sd.data.sample_toy("eight_gaussians", 256, generator=torch.Generator().manual_seed(0))
    trainer = sd.Trainer(model, batch_size=32, progress=False, seed=0, ema_decay=0.9,
                         meta={"data": "eight_gaussians"})
    trainer.fit(x, steps=5)
    path = trainer.save(tmp_path / "user.pt")
    return trainer, path


def test_user_network_and_sde_round_trip_through_load_model(tmp_path, user_module):
    trainer, path = _train_user_model(tmp_path)
    model = sd.load_model(path)
    assert type(model.net).__name__ == "TinyUserNet" and model.net.width == 8
    assert type(model.sde).__name__ == "UserOU" and model.sde.theta == 2.5
    ema = trainer.ema_model()
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.eps(x, 0.3), ema.eps(x, 0.3))
    # the same checkpoint with the network passed in (an unregistered architecture)
    import user_ext

    del sd.NETS["tiny_user_net"]
    with pytest.raises(ValueError, match="unknown network 'TinyUserNet'.*net="):
        sd.load_model(path)
    again = sd.load_model(path, net=user_ext.TinyUserNet(dim=2, width=8))
    torch.testing.assert_close(again.eps(x, 0.3), ema.eps(x, 0.3))
    with pytest.raises(TypeError, match="net must be an nn.Module"):
        sd.load_model(path, net="TinyUserNet")


def test_user_network_and_sde_through_the_cli_with_import(tmp_path, user_module, capsys):
    _, path = _train_user_model(tmp_path)
    sys.modules.pop("user_ext", None)
    sd.NETS.pop("tiny_user_net"), sd.SDES.pop("user_ou")
    out = tmp_path / "s"
    args = ["sample", "--checkpoint", str(path), "--solver", "ddim", "--nfe", "4", "--num-samples", "50",
            "--out", str(out), "--no-progress"]
    assert cli.main(args) == 2                     # without --import: one-line error
    assert "unknown network 'TinyUserNet'" in capsys.readouterr().err
    assert cli.main(["--import", "user_ext", *args]) == 0
    assert (out / "samples.npz").is_file()
    sys.modules.pop("user_ext", None)
    sd.NETS.pop("tiny_user_net"), sd.SDES.pop("user_ou")
    assert cli.main([*args, "--overwrite", "--import", str(tmp_path / "user_ext.py")]) == 0  # a file
    # an SDE registered by the module is a valid --sde for the built-in targets
    assert cli.main(["compare", "--import", "user_ext", "--sde", "user_ou", "--solvers", "ddim",
                     "--nfe", "4", "--num-samples", "40", "--floor-repeats", "2", "--out",
                     str(tmp_path / "c"), "--no-progress"]) == 0
    assert cli.main(["--import", "no_such_module_xyz", "sample", "--checkpoint", str(path)]) == 2
    assert "--import 'no_such_module_xyz' failed" in capsys.readouterr().err
