"""Data sets: two-dimensional toy distributions (`toy`), discrete image data sets with their
quantization and loaders (`images`), one registry (`DATASETS`, `register_dataset`)."""

from .images import (
    DIGITS_N_TEST,
    SPLITS,
    ImageDataset,
    ImageSource,
    load_dataset,
    load_digits,
    load_idx,
    load_npz,
    load_png_folder,
    read_idx,
)
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
           "eight_gaussians_params", "moons", "pinwheel", "rings", "sample_toy", "swiss_roll",
           "ImageDataset", "ImageSource", "SPLITS", "DIGITS_N_TEST", "load_dataset", "load_digits",
           "read_idx", "load_idx", "load_png_folder", "load_npz"]
