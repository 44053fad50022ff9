"""Samplers: solvers of the reverse SDE and the probability-flow ODE, one file each, one
registry (`SOLVERS`), one entry point (`sample`)."""

from ..dynamics import tweedie_denoise
from . import (  # noqa: F401
    ancestral,
    ddim,
    deis,
    dpm_solver,
    dpm_solver_3m,
    dpm_solver_sde,
    dpm_solver_singlestep,
    euler_maruyama,
    ggf,
    heun,
    ipndm,
    pc,
    pf_ode,
    sa_solver,
    torchsde_solver,
    unipc,
)
from .ancestral import Ancestral
from .base import (
    AdaptiveSolver,
    BudgetError,
    FixedGridSolver,
    SamplingError,
    SeedError,
    Solver,
    StepContext,
)
from .ddim import DDIM
from .deis import DEIS
from .dpm_solver import DPMSolverPP2M
from .dpm_solver_3m import DPMSolverPP3M
from .dpm_solver_sde import DPMSolverPPSDE
from .dpm_solver_singlestep import DPMSolverSinglestep
from .euler_maruyama import EulerMaruyama
from .ggf import GottaGoFast
from .grids import (
    GRIDS,
    KarrasGrid,
    LogSNRGrid,
    PerSDEGrid,
    PerStepsGrid,
    PolyExponentialGrid,
    QuadraticGrid,
    TimeGrid,
    UniformGrid,
    get_grid,
    grid_label,
    register_grid,
    sde_names,
)
from .heun import Heun
from .ipndm import IPNDM
from .optimized_grid import OptimizedGrid, grid_error, optimize_grid
from .pc import PredictorCorrector
from .pf_ode import ProbabilityFlowODE
from .registry import SOLVERS, adaptive_solvers, make_solver, register_solver, solver_table
from .sa_solver import SASolver
from .sampling import SampleResult, sample
from .torchsde_solver import TorchSDE
from .unipc import UniPC

__all__ = [
    "SOLVERS", "register_solver", "make_solver", "adaptive_solvers", "solver_table", "sample", "SampleResult",
    "Solver", "FixedGridSolver", "AdaptiveSolver", "StepContext", "SamplingError", "BudgetError", "SeedError",
    "tweedie_denoise", "GRIDS", "register_grid", "TimeGrid", "UniformGrid", "QuadraticGrid", "LogSNRGrid",
    "KarrasGrid", "get_grid", "EulerMaruyama", "Ancestral", "DDIM", "ProbabilityFlowODE",
    "Heun", "PredictorCorrector", "TorchSDE", "DPMSolverPP2M",
    "PolyExponentialGrid", "DPMSolverPP3M", "DPMSolverPPSDE", "UniPC", "DPMSolverSinglestep", "DEIS", "IPNDM",
    "GottaGoFast", "PerSDEGrid", "PerStepsGrid", "grid_label", "sde_names", "OptimizedGrid", "optimize_grid",
    "grid_error", "SASolver",
]
