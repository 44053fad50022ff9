"""Shared by the experiment scripts: write a section of docs/results.md and its figures."""

from __future__ import annotations

import re
import shlex
import sys
import time
from pathlib import Path

import torch

import scoresde

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "results"


def provenance() -> str:
    """One line naming the command, versions, threads and date."""
    cmd = "python " + " ".join(shlex.quote(str(a)) for a in [Path(sys.argv[0]).relative_to(ROOT)
                                                           if Path(sys.argv[0]).is_absolute()
                                                           else sys.argv[0], *sys.argv[1:]])
    return (f"Reproduce: `{cmd}` (scoresde {scoresde.__version__}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}).")


def write_section(name: str, body: str) -> None:
    """Replace the text between `<!-- BEGIN name -->` and `<!-- END name -->` in results.md
    (appending the section if it is not there yet)."""
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Results\n"
    block = f"<!-- BEGIN {name} -->\n{body.strip()}\n<!-- END {name} -->"
    pat = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)
