r"""Exact oracle: a Gaussian mixture pushed through any of our SDEs.

If $x_0 \sim \sum_k w_k N(\mu_k, \Sigma_k)$ and $x_t = \alpha x_0 + \sigma\varepsilon$,
then $x_t \sim \sum_k w_k N(\alpha\mu_k, \alpha^2\Sigma_k + \sigma^2 I)$ exactly, so the
marginal density and its score

$$
\nabla_x \log p_t(x) = -\sum_k r_k(x)\,(\alpha^2\Sigma_k + \sigma^2 I)^{-1}(x - \alpha\mu_k),
\qquad r_k(x) = \frac{w_k N_k(x)}{\sum_j w_j N_j(x)},
$$

are in closed form. With $\Sigma_k = U_k \operatorname{diag}(\ell_k) U_k^\top$
computed once, $\alpha^2\Sigma_k + \sigma^2 I = U_k\operatorname{diag}(\alpha^2\ell_k +
\sigma^2)U_k^\top$, so every time costs only a rotation: no factorisation per `t`.
Solvers and likelihoods are tested against it with zero model error.
"""

from __future__ import annotations

import math

import torch

from .models import ScoreModel
from .sdes import SDE
from .validation import as_time, check_batch, check_int

Tensor = torch.Tensor

__all__ = ["GaussianMixture"]


class GaussianMixture:
    r"""A Gaussian mixture $\sum_k w_k N(\mu_k, \Sigma_k)$ in $\mathbb R^D$.

    **Arguments:**

    - `weights`: shape `(K,)`, positive, summing to 1.
    - `means`: shape `(K, D)`.
    - `covs`: shape `(K, D, D)`, symmetric positive semi-definite (positive definite for
      [`log_prob`][scoresde.analytic.GaussianMixture.log_prob] at `t = 0`).
    - `event_shape`: shape of one sample (default `(D,)`); e.g. `(1, 2, 2)` for `D = 4`
      image-shaped data. Methods take `x` of shape `(B, *event_shape)`.

    Parameters are kept in float64 and cast to the input's dtype/device on use.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor,
                 event_shape: tuple[int, ...] | None = None) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
        mu = torch.as_tensor(means, dtype=torch.float64).detach().cpu()
        cov = torch.as_tensor(covs, dtype=torch.float64).detach().cpu()
        if w.dim() != 1:
            raise ValueError(f"weights must have shape (K,), got {tuple(w.shape)}")
        k = w.shape[0]
        if mu.dim() != 2 or mu.shape[0] != k:
            raise ValueError(f"means must have shape (K, D) = ({k}, D), got {tuple(mu.shape)}")
        d = mu.shape[1]
        if cov.shape != (k, d, d):
            raise ValueError(f"covs must have shape (K, D, D) = ({k}, {d}, {d}), "
                             f"got {tuple(cov.shape)}")
        if not bool(torch.isfinite(w).all() & torch.isfinite(mu).all() & torch.isfinite(cov).all()):
            raise ValueError("weights, means and covs must be finite")
        if bool((w <= 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must be positive and sum to 1, got {w.tolist()}")
        if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-10):
            raise ValueError("covs must be symmetric")
        evals, evecs = torch.linalg.eigh(cov)
        if bool((evals < -1e-10 * evals.abs().amax().clamp(min=1.0)).any()):
            raise ValueError(f"covs must be positive semi-definite; eigenvalues {evals.tolist()}")
        self.weights, self.means, self.covs = w / w.sum(), mu, cov
        self._evals = evals.clamp(min=0.0)
        self._evecs = evecs
        self.event_shape = (d,) if event_shape is None else tuple(event_shape)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} has {math.prod(self.event_shape)} "
                             f"elements but the mixture has D={d}")
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, ...]] = {}

    # ----- construction helpers -----------------------------------------------------
    @classmethod
    def random(cls, n_components: int, dim: int, generator: torch.Generator | None = None, *,
               spread: float = 2.0, min_std: float = 0.2, max_std: float = 0.8
               ) -> GaussianMixture:
        """A random mixture with full covariances (Dirichlet-like weights, means of scale
        `spread`, covariance eigenvalues in `[min_std², max_std²]` with random rotations)."""
        g = generator
        w = torch.rand(n_components, generator=g, dtype=torch.float64) + 0.5
        mu = spread * torch.randn(n_components, dim, generator=g, dtype=torch.float64)
        q, r = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=g,
                                           dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
        std = min_std + (max_std - min_std) * torch.rand(n_components, dim, generator=g,
                                                         dtype=torch.float64)
        cov = q @ torch.diag_embed(std ** 2) @ q.transpose(1, 2)
        return cls(w / w.sum(), mu, 0.5 * (cov + cov.transpose(1, 2)))

    @classmethod
    def eight_gaussians(cls, **kwargs: float) -> GaussianMixture:
        """The '8 Gaussians' toy target of
        [`scoresde.data.eight_gaussians`][scoresde.data.eight_gaussians], exactly."""
        from .data import eight_gaussians_params

        return cls(*eight_gaussians_params(**kwargs))

    # ----- basic properties ---------------------------------------------------------
    @property
    def n_components(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def mean(self) -> Tensor:
        r"""Mixture mean $\sum_k w_k\mu_k$, shape `(D,)` (float64)."""
        return (self.weights[:, None] * self.means).sum(0)

    @property
    def covariance(self) -> Tensor:
        r"""Mixture covariance $\sum_k w_k(\Sigma_k + \mu_k\mu_k^\top) - \bar\mu\bar\mu^\top$."""
        m = self.mean
        second = (self.weights[:, None, None]
                  * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]

    def marginal_moments(self, t: float | Tensor, sde: SDE) -> tuple[Tensor, Tensor]:
        r"""Mean and covariance of $p_t$: $\alpha\bar\mu$ and
        $\alpha^2\,\mathrm{Cov} + \sigma^2 I$ (float64, `t` a scalar)."""
        t = as_time(t, None, None, T=sde.T).to(torch.float64)
        if t.dim() != 0:
            raise ValueError("marginal_moments takes a scalar t")
        a, s = sde.alpha(t), sde.sigma(t)
        return a * self.mean, a ** 2 * self.covariance + s ** 2 * torch.eye(self.dim,
                                                                             dtype=torch.float64)

    def _params(self, like: Tensor) -> tuple[Tensor, ...]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = tuple(p.to(dtype=like.dtype, device=like.device) for p in
                                     (self.weights.log(), self.means, self._evals, self._evecs))
        return self._cache[key]

    # ----- sampling -----------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None
               ) -> Tensor:
        """Draw `n` exact samples, shape `(n, *event_shape)`."""
        check_int("n", n, 1)
        dtype = dtype or torch.get_default_dtype()
        if device is None and generator is not None:
            device = generator.device
        like = torch.empty(0, dtype=dtype, device=device)
        logw, mu, evals, evecs = self._params(like)
        k = torch.multinomial(logw.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)
        x = mu[k] + torch.einsum("nde,ne->nd", evecs[k], evals[k].sqrt() * z)
        return x.reshape((n,) + self.event_shape)

    def marginal_sample(self, n: int, t: float, sde: SDE,
                        generator: torch.Generator | None = None, **kw) -> Tensor:
        r"""Exact samples of $p_t$: $\alpha x_0 + \sigma\varepsilon$."""
        x0 = self.sample(n, generator, **kw)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return sde.perturb(x0, t, noise)

    # ----- densities and scores -----------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        check_batch(x)
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, *{self.event_shape}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    def _rotation(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """All eigenbases side by side, `U_all[:, k*D:(k+1)*D] = U_k`, shape (D, K*D), and the
        rotated means `mu_k U_k`, shape (K, D): one matrix product rotates `x` into every
        component's eigenbasis at once."""
        key = ("rot", like.dtype, like.device)
        if key not in self._cache:
            u_all = self._evecs.permute(1, 0, 2).reshape(self.dim, -1)
            mu_rot = torch.einsum("kd,kde->ke", self.means, self._evecs)
            self._cache[key] = tuple(p.to(dtype=like.dtype, device=like.device)
                                     for p in (u_all, mu_rot))
        return self._cache[key]

    def _logjoint(self, x: Tensor, alpha: Tensor, sigma2: Tensor) -> tuple[Tensor, Tensor]:
        """`log w_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma2 I)`, shape (B, K), and
        the eigen-coordinates of `x - alpha mu_k` divided by the variances, shape (B, K, D)."""
        logw, _, evals, _ = self._params(x)
        u_all, mu_rot = self._rotation(x)
        a = alpha.reshape(-1, 1, 1) if alpha.dim() else alpha
        s2 = sigma2.reshape(-1, 1, 1) if sigma2.dim() else sigma2
        proj = (x @ u_all).reshape(x.shape[0], self.n_components, self.dim) - a * mu_rot
        var = a ** 2 * evals + s2                                  # (B or 1, K, D)
        scaled = proj / var
        lognorm = -0.5 * (self.dim * math.log(2 * math.pi) + var.log().sum(-1)
                          + (proj * scaled).sum(-1))
        return logw + lognorm, scaled

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the data distribution, per sample: shape `(B,)`, nats."""
        if not bool((self._evals > 0).all()):
            raise ValueError("log_prob needs positive-definite covs; this mixture is degenerate "
                             "(use marginal_log_prob at t > 0)")
        xf = self._flat(x)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        lj, _ = self._logjoint(xf, one, 0.0 * one)
        return torch.logsumexp(lj, dim=1)

    def data_score(self, x: Tensor) -> Tensor:
        r"""Exact score of the data distribution itself, $\nabla_x \log p_0(x) =
        -\sum_k r_k(x)\,\Sigma_k^{-1}(x - \mu_k)$, shape of `x`.

        This is [`score`][scoresde.analytic.GaussianMixture.score] at $\alpha = 1$,
        $\sigma = 0$, which no SDE reaches at a time in its range (VE has
        $\sigma(0) = \sigma_\text{min} > 0$); it needs positive-definite covs, like
        [`log_prob`][scoresde.analytic.GaussianMixture.log_prob], whose gradient it is.
        """
        if not bool((self._evals > 0).all()):
            raise ValueError("data_score needs positive-definite covs; this mixture is degenerate")
        xf = self._flat(x)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        lj, scaled = self._logjoint(xf, one, 0.0 * one)
        w = (torch.softmax(lj, dim=1).unsqueeze(-1) * scaled).reshape(xf.shape[0], -1)
        u_all, _ = self._rotation(xf)
        return -(w @ u_all.T).reshape(x.shape)

    def _coefs(self, x: Tensor, t: float | Tensor, sde: SDE) -> tuple[Tensor, Tensor]:
        t = as_time(t, x.shape[0], x, T=sde.T)
        c = sde.coefficients(t)
        return c.alpha, c.sigma ** 2

    def marginal_log_prob(self, x: Tensor, t: float | Tensor, sde: SDE) -> Tensor:
        r"""Exact $\log p_t(x)$ under `sde`, per sample: shape `(B,)`, nats."""
        xf = self._flat(x)
        lj, _ = self._logjoint(xf, *self._coefs(xf, t, sde))
        return torch.logsumexp(lj, dim=1)

    def score(self, x: Tensor, t: float | Tensor, sde: SDE) -> Tensor:
        r"""Exact score $\nabla_x \log p_t(x)$ under `sde`, shape of `x`."""
        xf = self._flat(x)
        lj, scaled = self._logjoint(xf, *self._coefs(xf, t, sde))
        # score = -sum_k r_k U_k (proj_k / var_k): one matrix product back from all eigenbases
        w = (torch.softmax(lj, dim=1).unsqueeze(-1) * scaled).reshape(xf.shape[0], -1)
        u_all, _ = self._rotation(xf)
        return -(w @ u_all.T).reshape(x.shape)

    def as_model(self, sde: SDE, device: torch.device | str | None = None) -> ScoreModel:
        """A [`ScoreModel`][scoresde.models.ScoreModel] whose score is exactly
        [`score`][scoresde.analytic.GaussianMixture.score] (zero model error)."""
        return ScoreModel.from_score_fn(lambda x, t: self.score(x, t, sde), sde, device=device)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"
