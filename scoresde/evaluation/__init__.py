"""Evaluation: distances between sample sets (`metrics`, with a registry; Fréchet distance and
KID in the feature space of `features`' classifier), the comparison
engine (`compare`), its statistics (`stats`: intervals over replicates, paired differences,
Holm), its targets (`targets`), solver specs (`specs`), reports (`report`) and plots
(`plots`, which alone imports matplotlib, on first use)."""

from . import compare, features, metrics, report, specs, stats, targets

__all__ = ["compare", "features", "metrics", "report", "specs", "stats", "targets"]
