"""Log-likelihoods of score models: the probability-flow ODE (`ode`), the variational bound
(`bound`) and bits per dimension with dequantization (`bpd`)."""

from .bound import BoundResult, variational_bound
from .bpd import (
    QUANTIZED_SCALINGS,
    SCALINGS,
    BPDResult,
    bits_per_dim,
    dequantized_bits_per_dim,
    image_bits_per_dim,
    level_centers,
    quantize,
    uniform_dequantize,
)
from .ode import (
    DEFAULT_FLOW_VARIABLE,
    DEFAULT_VARIABLE,
    DIVERGENCES,
    NORMS,
    PROBES,
    VARIABLES,
    FlowResult,
    LikelihoodResult,
    LogpNorm,
    batch_rms_norm,
    log_likelihood,
    per_sample_norm,
    pf_ode_decode,
    pf_ode_encode,
)

__all__ = ["LikelihoodResult", "FlowResult", "BoundResult", "BPDResult", "log_likelihood",
           "pf_ode_encode", "pf_ode_decode", "variational_bound", "bits_per_dim",
           "uniform_dequantize", "dequantized_bits_per_dim", "per_sample_norm", "batch_rms_norm",
           "LogpNorm", "DIVERGENCES", "PROBES", "SCALINGS", "VARIABLES", "NORMS",
           "DEFAULT_VARIABLE", "DEFAULT_FLOW_VARIABLE", "QUANTIZED_SCALINGS",
           "image_bits_per_dim", "level_centers", "quantize"]
