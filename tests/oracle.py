"""Analytic test problems shared by the whole suite (one place, imported by every test)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

import scoresde as sd

# the built-in SDEs by their registry names (sd.SDES), with default parameters
SDE_FACTORIES = {name: (lambda name=name: sd.get_sde(name))
                 for name in ("vp", "vp_cosine", "subvp", "ve")}


def make_sde(name: str) -> sd.SDE:
    return SDE_FACTORIES[name]()


def random_gm(dim: int = 2, k: int = 3, seed: int = 0, **kw) -> sd.analytic.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return sd.analytic.GaussianMixture.random(k, dim, g, **kw)


def fit_slope(x, y) -> float:
    """Least-squares slope of log(y) against log(x): the empirical convergence order."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


@functools.cache
def order_problem(sde_name: str, n: int = 256, tol: float = 1e-11, t_end: float = 1e-3):
    """The convergence-order problem of the solver tests: a smooth 2-component 2-D mixture
    under SDE `sde_name`, `n` points of x_T and a tight adaptive PF-ODE reference (rtol = atol
    = `tol`, no denoising) to `t_end`. **Returns:** `(model, x_T, x_ref)`, cached, so every
    test file with the same arguments shares one reference solve."""
    gm = sd.analytic.GaussianMixture.random(2, 2, gen(0), min_std=0.5, max_std=1.0, spread=1.0)
    sde = make_sde(sde_name)
    model = gm.as_model(sde)
    x_T = sde.prior_sample((n, 2), gen(1), dtype=torch.float64)
    ref = sd.sample(model, solver="pf_ode", nfe=None, x_T=x_T, denoise=False, rtol=tol, atol=tol,
                    t_end=t_end)
    return model, x_T, ref.x


def half_log_snr(sde: sd.SDE, t: float) -> float:
    """The papers' lambda = log(alpha/sigma) at time `t` (float64): half our log-SNR."""
    return 0.5 * float(sde.log_snr(torch.tensor(t, dtype=torch.float64)))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ExactStatistics:
    r"""Goodness of fit of a sample set against a `GaussianMixture`, as z-scores.

    For features $h(x)$ -- the coordinates, the centred second moments
    $(x_i - \mu_i)(x_j - \mu_j)$, $i \le j$, the exact log-density $\log p(x)$ and the
    component responsibilities $r_k(x)$ -- the z-score of a set of $n$ samples is
    $(\bar h - \mathbb E h)/(\mathrm{sd}(h)/\sqrt n)$, approximately $N(0, 1)$ per feature
    for exact samples. $\mathbb E h$ is exact for the moments (``gm.mean``,
    ``gm.covariance``) and, with $\mathrm{sd}(h)$, estimated from ``n_exact`` exact draws
    otherwise (its own error is $\sqrt{n/n_\text{exact}}$ standard errors).
    A sampler's bias shows as $|z|$ growing like $\sqrt n\,\cdot$ bias.
    """

    def __init__(self, gm: sd.analytic.GaussianMixture, n_exact: int = 200_000, seed: int = 12345):
        self.gm = gm
        self._components = [
            sd.analytic.GaussianMixture(torch.ones(1), gm.means[k:k + 1], gm.covs[k:k + 1])
            for k in range(gm.n_components)]
        d = gm.dim
        self._iu = torch.triu_indices(d, d)
        self.names = ([f"mean[{i}]" for i in range(d)]
                      + [f"cov[{i},{j}]" for i, j in self._iu.T.tolist()]
                      + ["log_p"] + [f"resp[{k}]" for k in range(gm.n_components)])
        h = self.features(gm.sample(n_exact, gen(seed), dtype=torch.float64))
        self.expect, self.std = h.mean(0), h.std(0)
        k = d + self._iu.shape[1]
        self.expect[:d] = 0.0                                   # E[x - mu] = 0 exactly
        self.expect[d:k] = gm.covariance[self._iu[0], self._iu[1]]
        # constant features (the responsibility of a single component) carry no information
        self._keep = self.std > 1e-12 * self.std.max()
        self.names = [n for n, k in zip(self.names, self._keep.tolist(), strict=True) if k]
        self.expect, self.std = self.expect[self._keep], self.std[self._keep]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        c = x - self.gm.mean
        second = (c[:, :, None] * c[:, None, :])[:, self._iu[0], self._iu[1]]
        logjoint = torch.stack([comp.log_prob(x) for comp in self._components], 1) + self.gm.weights.log()
        return torch.cat([c, second, torch.logsumexp(logjoint, 1, keepdim=True),
                          torch.softmax(logjoint, 1)], 1)

    def zscores(self, x: torch.Tensor) -> torch.Tensor:
        """z-score of each feature (shape ``(F,)``, named by `names`) for samples ``x``."""
        h = self.features(x)[:, self._keep]
        return (h.mean(0) - self.expect) / (self.std / h.shape[0] ** 0.5)

    def max_abs_z(self, x: torch.Tensor) -> float:
        return float(self.zscores(x).abs().max())


def gaussian(mu, v: float) -> sd.analytic.GaussianMixture:
    """The data distribution N(mu, v I) as a one-component mixture; ``v = 0`` is the point
    mass at ``mu`` (a degenerate covariance, allowed)."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    d = mu.shape[0]
    return sd.analytic.GaussianMixture(torch.ones(1), mu[None], v * torch.eye(d, dtype=torch.float64)[None])


def gaussian_pf_ode_flow(x_s: torch.Tensor, s: float, t: float, sde: sd.SDE, mu, v: float) -> torch.Tensor:
    r"""Exact probability-flow ODE map from time ``s`` to ``t`` for data $N(\mu, vI)$:
    $x_t = \alpha_t\mu + \sqrt{(\alpha_t^2 v + \sigma_t^2)/(\alpha_s^2 v + \sigma_s^2)}\,
    (x_s - \alpha_s\mu)$ (the flow of a Gaussian is the affine map between its marginals)."""
    mu = torch.as_tensor(mu, dtype=x_s.dtype)
    ts = torch.tensor([s, t], dtype=torch.float64)
    (a_s, a_t), (s_s, s_t) = sde.alpha(ts).tolist(), sde.sigma(ts).tolist()
    scale = math.sqrt((a_t ** 2 * v + s_t ** 2) / (a_s ** 2 * v + s_s ** 2))
    return a_t * mu + scale * (x_s - a_s * mu)
