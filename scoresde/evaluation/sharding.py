r"""Evaluation past one process: sampling and likelihoods sharded over the ranks of a
`torch.distributed` process group (launched by ``torchrun``), gathered in the original order.

**Chunks, not contiguous shards.** The $n$ rows are cut into chunks of ``batch_size`` rows,
chunk $k$ holding the global rows $[kb, \min((k+1)b, n))$; rank $r$ of $W$ solves the chunks
$k \equiv r \pmod W$, one batch each, and every rank receives all of them
(``all_gather``), in order. Row $i$ is sample $i$ of the per-sample seed
([`PerSampleNoise`][scoresde.rng.PerSampleNoise]: starting noise, solver noise and Hutchinson
probes are functions of ``(seed, i)`` alone), and a chunk is the same batch whatever the
number of ranks, so the result is **bit for bit** the one of a single process with the same
``batch_size`` -- even for a network whose BLAS kernels round differently at different batch
sizes, for ``pc`` (a batch statistic in its step size) and for adaptive solves (one step size
per batch). ``batch_size``, not the number of ranks, decides the batches: keep it when you
change the number of processes.

Without a process group (or with one rank) the functions run every chunk in this process.
Under a process group *every* rank must call them (they are collective); an error on one rank
is raised on every rank (no hang). The process-group helpers (joining the group, rank and
size, agreed errors, gathering objects) are those of
[`scoresde.training.distributed`][scoresde.training.distributed], which the Trainer uses too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from tqdm import tqdm

from ..likelihood import LikelihoodResult, log_likelihood
from ..models import ScoreModel, check_model
from ..samplers import SampleResult, SeedError, Solver, sample
from ..training.distributed import rank_and_world, run_on_every_rank
from ..validation import check_int
from .specs import SolverSpec

Tensor = torch.Tensor

__all__ = ["sample_sharded", "sample_seeded", "log_likelihood_sharded", "chunks_of_rank",
           "gather_chunks", "DEFAULT_BATCH_SIZE"]

#: rows per batch of the sharded functions (and of ``scoresde sample``): fixed, so that the
#: batches -- hence the results -- do not change with the number of processes
DEFAULT_BATCH_SIZE = 1000


def chunks_of_rank(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """The ``(start, stop)`` row ranges rank ``rank`` of ``world`` solves: chunks
    $k \\equiv$ ``rank`` (mod ``world``) of ``batch_size`` rows of ``n``."""
    n_chunks = math.ceil(n / batch_size)
    return [(k * batch_size, min((k + 1) * batch_size, n)) for k in range(rank, n_chunks, world)]


def gather_chunks(local: Tensor, n: int, batch_size: int) -> Tensor:
    """The ``n`` rows in global order, on every rank, from each rank's ``local`` rows (its
    chunks of `chunks_of_rank`, concatenated in order). One ``all_gather`` of equal-size
    padded buffers (``nccl`` needs ``local`` on the rank's GPU; ``gloo`` takes CPU tensors)."""
    rank, world = rank_and_world()
    if world == 1:
        return local
    n_chunks = math.ceil(n / batch_size)
    cap = math.ceil(n_chunks / world) * batch_size
    padded = local.new_zeros((cap, *local.shape[1:]))
    padded[:local.shape[0]] = local
    bufs = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(bufs, padded.contiguous())
    parts = []
    for k in range(n_chunks):
        j = (k // world) * batch_size
        parts.append(bufs[k % world][j:j + min(batch_size, n - k * batch_size)])
    return torch.cat(parts)


def _max_over_ranks(v: int, device: torch.device) -> int:
    _, world = rank_and_world()
    if world == 1:
        return v
    t = torch.tensor([v], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t)


def _sum_over_ranks(values: list[int], device: torch.device) -> list[int]:
    _, world = rank_and_world()
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t)
    return [int(v) for v in t.tolist()]


def _check_batch_size(batch_size: object) -> int:
    return check_int("batch_size", batch_size, 1)


def sample_sharded(model: ScoreModel, shape: tuple[int, ...] | torch.Size,
                   solver: str | Solver = "euler_maruyama", nfe: int | None = 100, *,
                   seed: int, batch_size: int = DEFAULT_BATCH_SIZE,
                   x_T: Tensor | None = None, cond: Mapping[str, Tensor] | None = None,
                   progress: bool = False, **kwargs: Any) -> SampleResult:
    r"""``n = shape[0]`` samples with per-sample noise, sharded over the ranks of the process
    group and gathered on every rank in order (module docstring): chunk $[a, b)$ is
    ``sample(model, (b - a, *event), solver, nfe, seed=seed, sample_offset=a, ...)``.

    **Arguments:** as [`sample`][scoresde.samplers.sampling.sample] (``solver``, ``nfe``,
    ``t_end``, ``grid``, ``denoise`` and solver options pass through ``**kwargs``), plus
    ``seed`` (required: sample ``i`` is a function of ``(seed, i)``), ``batch_size`` (rows per
    batch; the results depend on it only through batch effects, see `sample`), ``x_T``
    (``(n, *event)``, optional) and ``cond`` (tensors with batch dimension ``n``), both cut
    into the chunks. No ``generator``, ``callback`` or ``trajectory`` (a batch's callback
    would see a chunk).

    **Returns:** a `SampleResult` with all ``n`` rows of ``x`` and ``x_T`` on every rank,
    ``nfe`` the largest NFE one batch used (the budget, for a fixed ``nfe``), ``times`` and
    ``solver`` of the first batch, ``trajectory`` ``None``.
    """
    check_model(model)
    for bad in ("generator", "callback", "trajectory", "sample_offset"):
        if kwargs.get(bad) not in (None, False):
            raise ValueError(f"sample_sharded takes no {bad}= (per-sample seed=; each batch is "
                             "a chunk of the rows)")
        kwargs.pop(bad, None)
    shape = tuple(shape)
    if len(shape) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be (n, *event_shape) of positive integers, got {shape}")
    batch_size = _check_batch_size(batch_size)
    n = shape[0]
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, not {shape}")
    cond = dict(cond or {})
    for k, v in cond.items():
        if not isinstance(v, Tensor) or v.dim() < 1 or v.shape[0] != n:
            raise ValueError(f"cond[{k!r}] must be a tensor with batch dimension n = {n}")
    rank, world = rank_and_world()
    mine = chunks_of_rank(n, batch_size, rank, world)
    slv = solver if isinstance(solver, Solver) else None

    def run() -> list[SampleResult]:
        out = []
        for a, b in tqdm(mine, disable=not (progress and rank == 0), desc="sample", leave=False):
            out.append(sample(model, (b - a, *shape[1:]), solver if slv is None else slv, nfe,
                              x_T=None if x_T is None else x_T[a:b],
                              cond={k: v[a:b] for k, v in cond.items()} or None,
                              seed=seed, sample_offset=a, **kwargs))
        return out

    results = run_on_every_rank(run)
    dtype, device = (torch.get_default_dtype(), model.device) if x_T is None else (x_T.dtype,
                                                                                    x_T.device)
    empty = torch.empty((0, *shape[1:]), dtype=dtype, device=device)
    x = gather_chunks(torch.cat([r.x for r in results]) if results else empty, n, batch_size)
    x0 = gather_chunks(torch.cat([r.x_T for r in results]) if results else empty, n, batch_size)
    used = _max_over_ranks(max((r.nfe for r in results), default=0), x.device)
    first = results[0] if results else None
    box = [first.times, first.t_end, first.solver] if first else [None, None, None]
    if world > 1:                     # every rank gets the first batch's (rank 0 solved it)
        torch.distributed.broadcast_object_list(box, src=0)
    times, t_end, solver_used = box
    return SampleResult(x=x, nfe=used, times=times, trajectory=None, x_T=x0, solver=solver_used,
                        t_end=t_end)


def sample_seeded(model: ScoreModel, shape: tuple[int, ...], spec: SolverSpec, nfe: int | None, *,
                  seed: int, batch_size: int = DEFAULT_BATCH_SIZE,
                  cond: Mapping[str, Tensor] | None = None, progress: bool = False
                  ) -> tuple[SampleResult, str]:
    """`sample_sharded` with the solver spec `spec` (``nfe`` ignored by an adaptive one): sample
    ``i`` a function of ``(seed, i)`` on any number of processes. A solver that draws one
    noise path for a whole batch (``torchsde``, ``ggf``'s adaptive ``"brownian"`` solve)
    cannot do that (`SeedError`): in one process it falls back to one generator seeded with
    `seed`; under a process group of several ranks it is a `ValueError`.

    **Returns:** ``(result, noise)``, ``noise`` = ``"per-sample"`` or ``"generator"``."""
    nfe = None if spec.adaptive else nfe
    try:
        return sample_sharded(model, shape, spec.make(), nfe, seed=seed, batch_size=batch_size,
                              grid=spec.grid, cond=cond, progress=progress), "per-sample"
    except SeedError as e:
        if rank_and_world()[1] > 1:
            raise ValueError(f"{e}; under torchrun every sample needs noise of its own") from None
    return sample(model, shape, solver=spec.make(), nfe=nfe, grid=spec.grid, progress=progress,
                  cond=cond, generator=torch.Generator().manual_seed(seed)), "generator"


def log_likelihood_sharded(model: ScoreModel, x: Tensor, *, seed: int = 0,
                           batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
                           **kwargs: Any) -> LikelihoodResult:
    r"""[`log_likelihood`][scoresde.likelihood.ode.log_likelihood] of the rows of ``x``,
    sharded over the ranks in chunks of ``batch_size`` rows and gathered on every rank in
    order: chunk $[a, b)$ is ``log_likelihood(model, x[a:b], seed=seed, sample_offset=a,
    ...)``, so sample ``i``'s Hutchinson probes are a function of ``(seed, i)`` and the result
    is bit for bit that of one process with the same ``batch_size`` (``**kwargs``: the other
    options of `log_likelihood`, not ``generator`` or ``batch_size``).

    **Returns:** a `LikelihoodResult` on every rank: the per-sample tensors gathered, ``nfe``
    and ``n_vjp`` summed over all batches (as one process with ``batch_size`` reports them).
    """
    check_model(model)
    for bad in ("generator", "sample_offset"):
        if kwargs.get(bad) is not None:
            raise ValueError(f"log_likelihood_sharded takes no {bad}= (per-sample seed=)")
        kwargs.pop(bad, None)
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError("x must be a tensor of shape (n, *event_shape) with n >= 1")
    batch_size = _check_batch_size(batch_size)
    n = x.shape[0]
    rank, world = rank_and_world()
    mine = chunks_of_rank(n, batch_size, rank, world)

    def run() -> list[LikelihoodResult]:
        return [log_likelihood(model, x[a:b], seed=seed, sample_offset=a, **kwargs)
                for a, b in tqdm(mine, disable=not (progress and rank == 0),
                                 desc="log_likelihood", leave=False)]

    results = run_on_every_rank(run)
    ref = x.to(model.device)

    def gather(name: str, like: Tensor) -> Tensor:
        local = (torch.cat([getattr(r, name) for r in results]) if results
                 else like.new_empty((0, *like.shape[1:])))
        return gather_chunks(local, n, batch_size)

    vec = ref.new_empty((n,))
    logp, prior, delta = (gather(k, vec) for k in ("logp", "prior_logp", "delta_logp"))
    z = gather("z", ref)
    first = results[0] if results else None
    has_se = _max_over_ranks(int(first is not None and first.stderr is not None), ref.device)
    has_ld = _max_over_ranks(int(first is not None and first.logdet is not None), ref.device)
    stderr = gather("stderr", vec) if has_se else None
    logdet = gather("logdet", vec) if has_ld else None
    nfe, n_vjp = _sum_over_ranks([sum(r.nfe for r in results), sum(r.n_vjp for r in results)],
                                 ref.device)
    t_eps = kwargs.get("t_eps", 1e-5) if first is None else first.t_eps
    box = [None if first is None else first.variable]
    if world > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    variable = box[0]
    return LikelihoodResult(logp=logp, prior_logp=prior, delta_logp=delta, z=z, nfe=nfe,
                            n_vjp=n_vjp, t_eps=t_eps, stderr=stderr, logdet=logdet,
                            variable=variable)
