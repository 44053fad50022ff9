"""Evaluation: distances between sample sets (`metrics`, with a registry; Fréchet distance and
KID in the feature space of `features`' classifier), the comparison
engine (`compare`), its statistics (`stats`: intervals over replicates, paired differences,
Holm), its targets (`targets`), solver specs (`specs`), reports (`report`) and plots
(`plots`, which alone imports matplotlib, on first use), and sampling and likelihoods sharded
over the ranks of a process group (`sharding`)."""

from . import compare, features, metrics, report, sharding, specs, stats, targets
from .sharding import log_likelihood_sharded, sample_sharded

__all__ = ["compare", "features", "metrics", "report", "sharding", "specs", "stats", "targets",
           "sample_sharded", "log_likelihood_sharded"]
