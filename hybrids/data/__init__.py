"""Datasets (integer levels in memory), 2-D toys and the level <-> model-space transforms."""
from hybrids.data.datasets import DATASETS, ArrayDataset, default_data_dir, load_dataset, read_idx
from hybrids.data.toys import TOY_NAMES, sample_toy
from hybrids.data.transforms import (
    bin_centers,
    check_levels,
    dequantize,
    level_values,
    perturb_lsb,
    quantize,
    to_model_space,
    to_unit_interval,
)

__all__ = [
    "DATASETS",
    "TOY_NAMES",
    "ArrayDataset",
    "bin_centers",
    "check_levels",
    "default_data_dir",
    "dequantize",
    "level_values",
    "load_dataset",
    "perturb_lsb",
    "quantize",
    "read_idx",
    "sample_toy",
    "to_model_space",
    "to_unit_interval",
]
