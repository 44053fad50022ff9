"""`sd.plots`: the plotting functions of :mod:`scoresde.evaluation.plots`, under a short name.

A thin alias (the same function objects). `import scoresde` does not load it -- and so does
not import matplotlib -- until `sd.plots` is first used (or `scoresde.plots` imported).
"""

from .evaluation.plots import *  # noqa: F403
from .evaluation.plots import __all__  # noqa: F401
