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

    # ----- conditioning: classes and observed coordinates -------------------------------
    def component(self, k: int) -> GaussianMixture:
        r"""The `k`-th component $N(\mu_k, \Sigma_k)$ as a one-component mixture (same
        `event_shape`): the exact class-conditional distribution of label `k` when the
        components are the classes."""
        k = check_int("k", k, 0)
        if k >= self.n_components:
            raise ValueError(f"k={k} is outside the components 0..{self.n_components - 1}")
        return GaussianMixture(torch.ones(1, dtype=torch.float64), self.means[k:k + 1],
                               self.covs[k:k + 1], event_shape=self.event_shape)

    def _check_labels(self, y: Tensor | None, batch: int) -> Tensor | None:
        if y is None:
            return None
        if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() \
                or y.dtype == torch.bool:
            what = f"a {y.dtype} tensor" if isinstance(y, Tensor) else type(y).__name__
            raise TypeError(f"y must be an integer tensor of class labels, got {what}")
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"y must have shape (B,) = ({batch},), got {tuple(y.shape)}")
        k = self.n_components
        if bool(((y < 0) | (y > k)).any()):
            raise ValueError(f"class labels must lie in 0..{k - 1}, or be {k} (the null label: "
                             f"the whole mixture); got values in {int(y.min())}..{int(y.max())}")
        return y

    def conditional_score(self, x: Tensor, t: float | Tensor, sde: SDE,
                          y: Tensor | None = None) -> Tensor:
        r"""Exact class-conditional score under `sde`: for label $y = k < K$ the score of
        component $k$ alone, $-(\alpha^2\Sigma_k + \sigma^2 I)^{-1}(x - \alpha\mu_k)$; for
        the null label $y = K$ (or `y=None`) the mixture's score
        ([`score`][scoresde.analytic.GaussianMixture.score]). `y`: integer labels of shape
        `(B,)` (or 0-d) in `0..K`; anything else is a `TypeError`/`ValueError`."""
        xf = self._flat(x)
        y = self._check_labels(y, xf.shape[0])
        lj, scaled = self._logjoint(xf, *self._coefs(xf, t, sde))
        r = torch.softmax(lj, dim=1)
        if y is not None:
            k = self.n_components
            onehot = torch.nn.functional.one_hot(y.clamp(max=k - 1), k).to(r.dtype)
            r = torch.where((y == k).unsqueeze(1), r, onehot)
        w = (r.unsqueeze(-1) * scaled).reshape(xf.shape[0], -1)
        u_all, _ = self._rotation(xf)
        return -(w @ u_all.T).reshape(x.shape)

    def as_conditional_model(self, sde: SDE, device: torch.device | str | None = None
                             ) -> ScoreModel:
        """An exact class-conditional [`ScoreModel`][scoresde.models.ScoreModel] whose
        network takes labels `y` (`model.score(x, t, y=labels)`, `sd.sample(..., cond={"y":
        labels})`): label `k < K` gives component `k`'s exact score, the null label
        `K = n_components` (or no `y`) the whole mixture's
        ([`conditional_score`][scoresde.analytic.GaussianMixture.conditional_score]).
        Its network exposes `null_label = K` and `num_classes = K`, like a class-conditional
        `UNet`, so classifier-free guidance ([`scoresde.guidance`][scoresde.guidance.guidance])
        and class-conditional sampling are tested with zero model error."""
        model = ScoreModel.from_score_fn(
            lambda x, t, y=None: self.conditional_score(x, t, sde, y), sde, device=device)
        model.net.null_label = self.n_components
        model.net.num_classes = self.n_components
        return model

    def _check_mask(self, mask: object) -> Tensor:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            what = f"a {mask.dtype} tensor" if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor (True = observed), got {what}")
        if tuple(mask.shape) not in (self.event_shape, (self.dim,)):
            raise ValueError(f"mask must have the event shape {self.event_shape} (or ({self.dim},)), "
                             f"got {tuple(mask.shape)}")
        m = mask.detach().cpu().reshape(self.dim)
        n_obs = int(m.sum())
        if n_obs == 0 or n_obs == self.dim:
            raise ValueError(f"mask observes {n_obs} of {self.dim} coordinates; condition() needs "
                             "at least one observed and one unobserved coordinate")
        return m

    def condition(self, mask: Tensor, x_obs: Tensor) -> GaussianMixture:
        r"""The exact conditional distribution of the unobserved coordinates given the
        observed ones, $p(x_u \mid x_o)$: again a Gaussian mixture.

        Per component (Gaussian conditioning), with $o$ the observed and $u$ the
        unobserved coordinates,
        $\mu_k' = \mu_{k,u} + \Sigma_{k,uo}\Sigma_{k,oo}^{-1}(x_o - \mu_{k,o})$ and
        $\Sigma_k' = \Sigma_{k,uu} - \Sigma_{k,uo}\Sigma_{k,oo}^{-1}\Sigma_{k,ou}$; the
        weights are reweighted by each component's marginal likelihood of the observation,
        $w_k' \propto w_k\,N(x_o;\mu_{k,o},\Sigma_{k,oo})$ (Bayes' rule over the
        component label). Weights that underflow are kept at the smallest positive float64,
        so component `k` of the result is component `k` of the mixture.

        **Arguments:**

        - `mask`: bool tensor of the event shape (or `(D,)`), `True` = observed; at least
          one coordinate observed and one not.
        - `x_obs`: one observation: a tensor of the event shape (or `(D,)`) whose entries
          at `mask` are read (the others are ignored), or the `m` observed values in the
          flattened (row-major) order of the event, shape `(m,)`.

        **Returns:** a `GaussianMixture` over the unobserved coordinates, in flattened
        (row-major) order, event shape `(D - m,)`.

        **Raises:** `TypeError`/`ValueError` for a wrong mask or observation; `ValueError`
        if a component's covariance of the observed coordinates is singular.
        """
        m = self._check_mask(mask)
        if not isinstance(x_obs, Tensor):
            raise TypeError(f"x_obs must be a tensor, got {type(x_obs).__name__}")
        xo = x_obs.detach().to(device="cpu", dtype=torch.float64)
        n_obs = int(m.sum())
        if xo.numel() == self.dim and tuple(xo.shape) in (self.event_shape, (self.dim,)):
            xo = xo.reshape(self.dim)[m]
        elif tuple(xo.shape) != (n_obs,):
            raise ValueError(f"x_obs must have the event shape {self.event_shape} or hold the "
                             f"{n_obs} observed values (shape ({n_obs},)), got {tuple(xo.shape)}")
        if not bool(torch.isfinite(xo).all()):
            raise ValueError("x_obs must be finite at the observed coordinates")
        o, u = m.nonzero().squeeze(1), (~m).nonzero().squeeze(1)
        s_oo = self.covs[:, o][:, :, o]                               # (K, m, m)
        s_uo = self.covs[:, u][:, :, o]                               # (K, D-m, m)
        s_uu = self.covs[:, u][:, :, u]
        chol, info = torch.linalg.cholesky_ex(s_oo)
        if bool((info != 0).any()):
            k = int((info != 0).nonzero()[0, 0])
            raise ValueError(f"component {k}'s covariance of the observed coordinates is singular; "
                             "it cannot be conditioned on them")
        resid = (xo - self.means[:, o]).unsqueeze(-1)                 # (K, m, 1)
        white = torch.linalg.solve_triangular(chol, resid, upper=False)
        gain_t = torch.cholesky_solve(s_uo.transpose(1, 2), chol)     # S_oo^-1 S_ou, (K, m, D-m)
        mu = self.means[:, u] + (s_uo @ torch.cholesky_solve(resid, chol)).squeeze(-1)
        cov = s_uu - s_uo @ gain_t
        cov = 0.5 * (cov + cov.transpose(1, 2))
        loglik = -0.5 * (n_obs * math.log(2 * math.pi) + white.pow(2).sum((1, 2))
                         + 2.0 * torch.diagonal(chol, dim1=1, dim2=2).log().sum(-1))
        w = torch.softmax(self.weights.log() + loglik, dim=0)
        w = w.clamp(min=torch.finfo(torch.float64).tiny)
        return GaussianMixture(w / w.sum(), mu, cov)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"
