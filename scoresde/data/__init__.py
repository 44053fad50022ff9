"""Data sets: two-dimensional toy distributions (`toy`), one registry (`DATASETS`,
`register_dataset`)."""

from .toy import (
    DATASETS,
    TOY_DATASETS,
    checkerboard,
    eight_gaussians,
    eight_gaussians_params,
    moons,
    pinwheel,
    register_dataset,
    rings,
    sample_toy,
    swiss_roll,
)

__all__ = ["DATASETS", "register_dataset", "TOY_DATASETS", "checkerboard", "eight_gaussians",
           "eight_gaussians_params", "moons", "pinwheel", "rings", "sample_toy", "swiss_roll"]
