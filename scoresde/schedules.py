r"""Discrete-time (DDPM) noise schedules.

Ho et al. (2020), "Denoising diffusion probabilistic models": a Markov chain
$q(x_i \mid x_{i-1}) = N(\sqrt{1-\beta_i}\,x_{i-1}, \beta_i I)$, $i = 0..N-1$,
so $x_i = \sqrt{\bar\alpha_i}\,x_0 + \sqrt{1-\bar\alpha_i}\,\varepsilon$ with
$\bar\alpha_i = \prod_{j\le i}(1-\beta_j)$.

It is the VP-SDE on a grid: index `i` corresponds to continuous time
$t_i = (i+1)/N$, where $\bar\alpha_i \approx \alpha(t_i)^2$ (exactly, for
[`VPSDE.from_schedule`][scoresde.sdes.VPSDE.from_schedule]). Arrays are kept in float64 and cast on use.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

__all__ = ["DiscreteSchedule"]


class DiscreteSchedule:
    r"""A DDPM schedule built from any betas in `(0, 1)`.

    **Attributes** (float64, shape `(N,)`):

    - `betas`: $\beta_i$;
    - `alphas`: $1 - \beta_i$;
    - `alphas_cumprod`: $\bar\alpha_i = \prod_{j \le i}(1 - \beta_j)$;
    - `alphas_cumprod_prev`: $\bar\alpha_{i-1}$ with $\bar\alpha_{-1} = 1$;
    - `sigmas`: $\sqrt{1 - \bar\alpha_i}$;
    - `posterior_variance`: $\tilde\beta_i = \beta_i (1-\bar\alpha_{i-1})/(1-\bar\alpha_i)$,
      the variance of $q(x_{i-1} \mid x_i, x_0)$ (Ho et al. eq. 7);
    - `times`: $t_i = (i + 1)/N$.
    """

    def __init__(self, betas: Tensor) -> None:
        if not isinstance(betas, Tensor):
            betas = torch.as_tensor(betas)
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a 1-d tensor of length N >= 1, got shape "
                             f"{tuple(betas.shape)}")
        betas = betas.detach().to(device="cpu", dtype=torch.float64)
        if not bool(((betas > 0) & (betas < 1)).all()):
            bad = betas[~((betas > 0) & (betas < 1))][0].item()
            raise ValueError(f"every beta must lie in the open interval (0, 1), got {bad}")
        self.betas = betas
        self.N = int(betas.numel())
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])
        self.sigmas = torch.sqrt(1.0 - self.alphas_cumprod)
        self.posterior_variance = (betas * (1.0 - self.alphas_cumprod_prev)
                                   / (1.0 - self.alphas_cumprod))
        self.times = (torch.arange(self.N, dtype=torch.float64) + 1.0) / self.N

    @staticmethod
    def check_N(N: int) -> int:
        """Validate a number of discretisation steps (an integer >= 1)."""
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be an integer >= 1, got {N!r}")
        return N

    def index_to_time(self, i: Tensor | int) -> Tensor:
        """Continuous time $t_i = (i + 1)/N$ of grid index `i`."""
        i = torch.as_tensor(i)
        if bool(((i < 0) | (i >= self.N)).any()):
            raise ValueError(f"grid index must lie in [0, {self.N - 1}], got {i.tolist()}")
        return (i.to(torch.float64) + 1.0) / self.N

    def time_to_index(self, t: Tensor | float) -> Tensor:
        """Nearest grid index to time `t`: $i = \\mathrm{round}(tN) - 1$, clamped to
        `[0, N-1]`."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"t must lie in [0, 1], got {t.tolist()}")
        return torch.clamp(torch.round(t * self.N).long() - 1, 0, self.N - 1)

    def cast(self, name: str, like: Tensor) -> Tensor:
        """The array `name` (e.g. `"alphas_cumprod"`) cast to `like`'s dtype and device."""
        return getattr(self, name).to(dtype=like.dtype, device=like.device)

    def __len__(self) -> int:
        return self.N

    def __repr__(self) -> str:
        return (f"DiscreteSchedule(N={self.N}, beta_0={self.betas[0].item():.4g}, "
                f"beta_last={self.betas[-1].item():.4g})")
