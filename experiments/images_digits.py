"""Images end to end on scikit-learn's 8x8 digits: the image demo's training, then its
measured figures, written to docs/results.md (section ``images_digits``) and
docs/results/images_digits/.

- the network (`UNet.preset("tiny")`), its parameter count, the training steps and time;
- held-out bits/dim (dequantized, 17 levels) with its standard error, at the demo's
  tolerance and at rtol = atol = 1e-5;
- FD and KID in the classifier's features at NFE 10, 20, 50, mean ± 95% CI over
  replicates, as ratios to the real-vs-real floor (training vs held-out digits), the
  pathwise error of the deterministic solvers, and whether FD at 50 NFE is within 2x the
  floor;
- the sample grid and the reverse-process GIF.

Run from the repository root::

    python experiments/images_digits.py                      # trains (the demo's settings)
    python experiments/images_digits.py --checkpoint runs/demo_images/train/model.pt
    python experiments/images_digits.py --longer 4000        # and a longer training next to it

Pass ``--threads 1`` for a measurement on a busy machine (see the text it writes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import FIGURES, ROOT, provenance, write_section  # noqa: E402

import scoresde as sd  # noqa: E402
from scoresde.cli import IMAGE_DEMO_STEPS  # noqa: E402
from scoresde.evaluation.features import feature_classifier  # noqa: E402
from scoresde.image_workflow import (  # noqa: E402
    DEMO_SOLVERS,
    LIKELIHOOD_TOL,
    compare_images,
    image_info,
    image_likelihood,
    image_metrics,
    parameter_count,
    sample_images,
    train_image_model,
)

BUDGETS = (10, 20, 50)
SOLVERS = [DEMO_SOLVERS[0], "ddim", DEMO_SOLVERS[1]]


def train_or_load(args: argparse.Namespace, steps: int, folder: Path, given: str | None) -> Path:
    """The checkpoint to measure: `given`, or trained here with the demo's settings (kept in
    folder/train and reused by later runs unless --retrain)."""
    if given:
        return Path(given)
    ckpt = folder / "train" / "model.pt"
    if ckpt.is_file() and not args.retrain:
        return ckpt
    print(f"training UNet.preset('tiny') on digits, {steps} steps of 64 ...", flush=True)
    train_image_model("digits", folder / "train", steps=steps, batch_size=64, ema_decay=0.995,
                      seed=args.seed, progress=True, command="experiments/images_digits.py")
    return ckpt


def measure(ckpt: Path, folder: Path, args: argparse.Namespace) -> dict:
    """Every figure of one checkpoint (cached in folder/measured.json)."""
    cache = folder / "measured.json"
    if cache.is_file() and not args.remeasure:
        return json.loads(cache.read_text())
    model = sd.load_model(ckpt)
    ck = sd.load_checkpoint(ckpt)
    meta, info = ck["meta"], image_info(ck["meta"])
    out = {"checkpoint": str(ckpt), "params": parameter_count(model), "steps": ck["step"],
           "batch_size": meta["trainer"]["batch_size"],
           "train_seconds": meta.get("train_seconds"),
           "train_cpu_seconds": meta.get("train_cpu_seconds"), "threads": meta.get("threads")}
    print("held-out bits/dim ...", flush=True)
    for tol in sorted({LIKELIHOOD_TOL, 1e-5}, reverse=True):
        c0 = time.process_time()
        _, vals = image_likelihood(model, info, batch_size=99, rtol=tol, atol=tol,
                                   seed=args.seed, progress=True)
        vals["cpu_seconds"] = time.process_time() - c0
        out[f"bpd_{tol:g}"] = vals
    print("samples ...", flush=True)
    sample_images(model, info, 64, folder, solver=f"{DEMO_SOLVERS[0]}", nfe=50, seed=args.seed,
                  gif=True, gif_n=36)
    print("comparison ...", flush=True)
    c0 = time.process_time()
    comp, accuracy = compare_images(
        ckpt, SOLVERS, BUDGETS, cache_dir=folder / "features", replicates=args.replicates,
        seed=args.seed, floor_repeats=10, reference_tol=1e-4, out_dir=folder / "compare",
        overwrite=True, progress=True, command="experiments/images_digits.py")
    out.update(accuracy=accuracy, compare_cpu_seconds=time.process_time() - c0,
               compare_dir=str(folder / "compare"), **unseen_floor(info, folder, args))
    cache.write_text(json.dumps(out, indent=2))
    return out


def unseen_floor(info: dict, folder: Path, args: argparse.Namespace) -> dict:
    """FD and KID between the held-out digits and the training digits that the feature
    classifier did *not* train on (its own fixed held-out split, `feature_classifier`: the
    first round(0.2 N) of a permutation seeded with 0, the accuracy checked to match), to
    see how much the floor's training draws are changed by the classifier having seen them."""
    train = sd.data.load_dataset("digits", "train")
    test = sd.data.load_dataset("digits", "test")
    clf, accuracy = feature_classifier(train.images, train.labels, folder / "features")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    unseen = perm[:round(0.2 * len(train))]
    check = clf.accuracy(train.images[unseen], train.labels[unseen])
    if abs(check - accuracy) > 1e-12:
        raise RuntimeError(f"the classifier's held-out split is not the one assumed here "
                           f"(accuracy {check} != {accuracy})")
    metrics, _ = image_metrics(info, folder / "features", n=len(test))
    flat = lambda x: x.reshape(x.shape[0], -1).double()  # noqa: E731
    x = flat(train.images[unseen[:len(test)]])
    return {f"unseen_{m.name}": m(x, flat(test.images), args.seed) for m in metrics}


def section(m: dict, comp: sd.compare.Comparison, fig_dir: str, longer: tuple | None) -> str:
    fd_floor = comp.floors["fd"]
    kid_floor = comp.floors["kid"]
    lik, lik_tight = m[f"bpd_{LIKELIHOOD_TOL:g}"], m["bpd_1e-05"]
    at50 = []
    for lab in SOLVERS:
        r = comp.cell(lab, 50)
        within = r["fd"] <= 2 * fd_floor["mean"]
        at50.append(f"{lab}: FD {r['fd']:.2f} (95% CI [{r['fd_lo']:.2f}, {r['fd_hi']:.2f}]) = "
                    f"{r['fd'] / fd_floor['mean']:.2f} x the floor"
                    f" ({'within' if within else 'NOT within'} 2x)")
    cpu = m["train_cpu_seconds"]
    lines = [
        "## Images: a tiny U-Net on 8x8 digits", "",
        provenance(), "",
        f"The image demo's model (`scoresde demo --images`, `make demo-images`): "
        f"`UNet.preset(\"tiny\")`, **{m['params']:,} parameters**, VP-SDE, eps-prediction, "
        f"trained on the 1500 training digits, dequantized afresh every batch, for "
        f"**{m['steps']} steps of {m['batch_size']}** (Adam, lr 2e-3, EMA 0.995): "
        f"**{m['train_seconds']:.0f} s wall, {cpu:.0f} s CPU time** with {m['threads']} "
        "intra-op thread(s) on a shared, heavily loaded 2-core machine (the CPU time is the "
        "figure to read: on 2 idle cores the training takes at most that long).", "",
        "| held-out bits/dim (297 digits, dequantized, 17 levels) | ± s.e. | rtol = atol | "
        "NFE | CPU s |", "|---|---|---|---|---|",
        *(f"| {v['bpd']:.4f} | {v['bpd_se']:.4f} | {v['rtol']:g} | {v['nfe']} | "
          f"{v['cpu_seconds']:.0f} |" for v in (lik, lik_tight)), "",
        "PF-ODE likelihood with one Hutchinson probe and one dequantization draw per image; "
        "an upper bound on the discrete model's bits/dim (a uniform model over the 17 levels "
        f"has log2 17 = 4.09). The demo's tolerance ({LIKELIHOOD_TOL:g}) and 1e-5 agree "
        f"within {abs(lik['bpd'] - lik_tight['bpd']):.4f} bits/dim, far inside the standard "
        "error.", "",
        "**Fréchet distance and KID** in the features of the library's classifier of the "
        f"digits (trained on the training split; held-out accuracy {m['accuracy']:.3f}), "
        "samples rounded to the 17 levels; **not comparable to Inception FID/KID**. Each "
        "cell: mean ± 95% half-width over "
        f"{comp.config['replicates']} replicates of n = {comp.config['n']} samples (all "
        "held-out digits as the reference set), as a ratio to the real-vs-real floor: FD "
        f"between {comp.config['n']} training digits and the held-out digits, "
        f"{fd_floor['mean']:.2f} (95% CI [{fd_floor['low']:.2f}, {fd_floor['high']:.2f}], "
        f"spread of one pair ± {fd_floor['std']:.2f}).", "",
        comp.headline("fd", legend=False), "", comp.verdict_line("fd"), "",
        "At 50 NFE: " + "; ".join(at50) + ".", "",
        "**How the floor is drawn.** Its training digits include the 1200 that the feature "
        "classifier was trained on (it holds out 300 of the 1500 for its accuracy), so they may "
        "sit differently in feature space than unseen digits. Measured: FD between the 297 "
        f"held-out digits and 297 of the classifier's own unseen training digits is "
        f"{m['unseen_fd']:.2f} (one pair; the floor's pairs spread ± {fd_floor['std']:.2f} "
        f"around {fd_floor['mean']:.2f}); KID {m['unseen_kid']:.3f} (floor "
        f"{kid_floor['mean']:.3f} ± {kid_floor['std']:.3f}): within the floor's spread, so the "
        "classifier having seen most of the floor's training digits does not visibly change it.",
        "",
        f"KID, as a ratio to its real-vs-real floor ({kid_floor['mean']:.3f}, 95% CI "
        f"[{kid_floor['low']:.3f}, {kid_floor['high']:.3f}]). KID is unbiased, 0 in "
        "expectation between two independent draws of one distribution, yet its floor is "
        "significantly positive: every floor pair and every replicate uses the same reference "
        f"set, all {comp.config['n']} held-out digits, so the floor and the intervals are "
        "conditional on that one set, whose own deviation from the digits' distribution "
        "counts against real and generated digits alike (the classifier-unseen training "
        "digits above give a similar value).", "", comp.headline("kid", legend=False), "",
        "Pathwise error (solver error alone: distance to a PF-ODE solve at rtol = atol = "
        "1e-4 from the same x_T):", "", comp.headline("pathwise", legend=False), "",
        f"![64 samples, {DEMO_SOLVERS[0]}, 50 NFE]({fig_dir}/samples.png) "
        f"![the reverse process of 36 samples]({fig_dir}/reverse_process.gif)", "",
        f"![FD vs NFE]({fig_dir}/error_vs_nfe_fd.png)", "",
        f"Samples of every solver and budget: [{fig_dir}/samples_grid.png]"
        f"({fig_dir}/samples_grid.png); the full comparison report: "
        f"[{fig_dir}/report.md]({fig_dir}/report.md).",
    ]
    if longer is not None:
        lm, lcomp = longer
        lines += ["", f"**Longer training** ({lm['steps']} steps, {lm['train_cpu_seconds']:.0f} s "
                  f"CPU): held-out bits/dim {lm[f'bpd_{LIKELIHOOD_TOL:g}']['bpd']:.4f} ± "
                  f"{lm[f'bpd_{LIKELIHOOD_TOL:g}']['bpd_se']:.4f}; FD / floor:", "",
                  lcomp.headline("fd", legend=False)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="measure this checkpoint (e.g. the demo's) instead of "
                   "training")
    p.add_argument("--steps", type=int, default=IMAGE_DEMO_STEPS)
    p.add_argument("--longer", type=int, default=None, metavar="STEPS",
                   help="also train and measure a longer run")
    p.add_argument("--replicates", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/images_digits")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--remeasure", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)                     # relative paths in the reports
    out = Path(args.out)
    runs = [(args.steps, out / f"steps{args.steps}", args.checkpoint)]
    if args.longer:
        runs.append((args.longer, out / f"steps{args.longer}", None))
    measured = []
    for steps, folder, given in runs:
        folder.mkdir(parents=True, exist_ok=True)
        ckpt = train_or_load(args, steps, folder, given)
        m = measure(ckpt, folder, args)
        measured.append((m, sd.compare.Comparison.load(m["compare_dir"]), folder))
    m, comp, folder = measured[0]
    dest = FIGURES / "images_digits"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("samples.png", "reverse_process.gif"):
        shutil.copy(folder / name, dest / name)
    for name in ("samples_grid.png", "error_vs_nfe_fd.png", "error_vs_nfe_kid.png",
                 "error_vs_nfe_pathwise.png", "report.md"):
        shutil.copy(folder / "compare" / name, dest / name)
    longer = measured[1][:2] if len(measured) > 1 else None
    write_section("images_digits", section(m, comp, "results/images_digits", longer))
    print(f"wrote the images_digits section of docs/results.md and {dest}")


if __name__ == "__main__":
    main()
