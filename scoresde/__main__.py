"""``python -m scoresde``: the command line (see `scoresde.cli`)."""

import sys

from .cli import main

sys.exit(main())
