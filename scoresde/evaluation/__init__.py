"""Evaluation: distances between sample sets (`metrics`, with a registry), the comparison
engine (`compare`), its targets (`targets`), solver specs (`specs`), reports (`report`) and
plots (`plots`, which alone imports matplotlib, on first use)."""

from . import compare, metrics, report, specs, targets

__all__ = ["compare", "metrics", "report", "specs", "targets"]
