"""scoresde: a continuous-time score-SDE toolkit in PyTorch.

One flat public namespace (``import scoresde as sd``); see DESIGN.md and docs/.
"""

__version__ = "0.1.0"

from . import analytic, compare, data, metrics, nets, samplers  # noqa: E402
from .checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from .likelihood import (  # noqa: E402
    BoundResult,
    BPDResult,
    FlowResult,
    LikelihoodResult,
    bits_per_dim,
    dequantized_bits_per_dim,
    log_likelihood,
    pf_ode_decode,
    pf_ode_encode,
    uniform_dequantize,
    variational_bound,
)
from .losses import ddpm_loss, dsm_loss  # noqa: E402
from .models import ScoreModel  # noqa: E402
from .samplers import (  # noqa: E402
    GRIDS,
    SOLVERS,
    BudgetError,
    SampleResult,
    SamplingError,
    register_solver,
    sample,
)
from .schedules import DiscreteSchedule  # noqa: E402
from .sdes import SDE, VESDE, VPSDE, CosineVPSDE, ScheduleVPSDE, SubVPSDE, sde_from_config  # noqa: E402
from .training import Trainer  # noqa: E402

__all__ = [
    "__version__", "analytic", "data", "nets",
    "SDE", "VPSDE", "CosineVPSDE", "ScheduleVPSDE", "SubVPSDE", "VESDE", "sde_from_config",
    "DiscreteSchedule", "ScoreModel", "dsm_loss", "ddpm_loss", "Trainer",
    "save_checkpoint", "load_checkpoint", "load_model",
    "metrics", "samplers", "sample", "SampleResult", "SOLVERS", "GRIDS", "register_solver",
    "BudgetError", "SamplingError", "compare",
    "log_likelihood", "LikelihoodResult", "pf_ode_encode", "pf_ode_decode", "FlowResult",
    "variational_bound", "BoundResult", "bits_per_dim", "uniform_dequantize",
    "dequantized_bits_per_dim", "BPDResult",
]
