"""scoresde: a continuous-time score-SDE toolkit in PyTorch.

One flat public namespace (``import scoresde as sd``); see docs/ for the notation and the
API. Importing the package loads the core only: matplotlib (plots and reports), torchsde and
torchdiffeq are imported on first use.
"""

from . import analytic, data, dynamics, evaluation, likelihood, nets, rng, samplers, validation
from .evaluation import compare, log_likelihood_sharded, metrics, sample_sharded
from .guidance import classifier_guidance, guidance
from .inpaint import inpaint
from .likelihood import (
    BoundResult,
    BPDResult,
    FlowResult,
    LikelihoodResult,
    bits_per_dim,
    dequantized_bits_per_dim,
    image_bits_per_dim,
    level_centers,
    log_likelihood,
    pf_ode_decode,
    pf_ode_encode,
    quantize,
    uniform_dequantize,
    variational_bound,
)
from .losses import ddpm_loss, dsm_loss
from .models import ScoreModel
from .nets import NETS, register_net
from .samplers import (
    GRIDS,
    SOLVERS,
    BudgetError,
    SampleResult,
    SamplingError,
    optimize_grid,
    register_solver,
    sample,
)
from .schedules import DiscreteSchedule
from .sdes import (
    SDE,
    SDES,
    VESDE,
    VPSDE,
    Coefficients,
    CosineVPSDE,
    ScheduleVPSDE,
    SubVPSDE,
    get_sde,
    register_sde,
    sde_from_config,
)
from .training import Trainer, load_checkpoint, load_model, save_checkpoint
from .version import __version__


def __getattr__(name: str) -> object:
    # `sd.plots` loads the plots (and matplotlib) on first use only
    if name == "plots":
        import importlib

        return importlib.import_module(".plots", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__", "analytic", "data", "dynamics", "evaluation", "likelihood", "nets",
    "validation",
    "SDE", "VPSDE", "CosineVPSDE", "ScheduleVPSDE", "SubVPSDE", "VESDE", "Coefficients",
    "SDES", "register_sde", "get_sde", "sde_from_config",
    "DiscreteSchedule", "ScoreModel", "dsm_loss", "ddpm_loss", "Trainer",
    "NETS", "register_net", "save_checkpoint", "load_checkpoint", "load_model",
    "metrics", "samplers", "sample", "SampleResult", "SOLVERS", "GRIDS", "register_solver",
    "BudgetError", "SamplingError", "compare", "optimize_grid",
    "log_likelihood", "LikelihoodResult", "pf_ode_encode", "pf_ode_decode", "FlowResult",
    "variational_bound", "BoundResult", "bits_per_dim", "uniform_dequantize",
    "dequantized_bits_per_dim", "BPDResult", "image_bits_per_dim", "level_centers", "quantize",
    "guidance", "classifier_guidance", "inpaint",
    "rng", "sample_sharded", "log_likelihood_sharded",
]
