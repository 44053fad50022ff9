"""Evaluation: distances between sample sets (`metrics`, with a registry), the comparison
engine (`compare`), its statistics (`stats`: intervals over replicates, paired differences,
Holm), its targets (`targets`), solver specs (`specs`), reports (`report`) and plots
(`plots`, which alone imports matplotlib, on first use)."""

from . import compare, metrics, report, specs, stats, targets

__all__ = ["compare", "metrics", "report", "specs", "stats", "targets"]
