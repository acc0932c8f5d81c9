"""Reading scans, normalising, slicing, subject-level splits, augmentations and datasets."""
from .datasets import LabelledSlices, SliceStack, UnlabelledSlices, sample_rng
from .discover import Case, dataset_root, find_cases
from .errors import ScanError
from .io import Volume, read_dicom_series, read_image2d, read_nifti, read_npy, read_volume
from .preprocess import (NORM_PRESETS, Normalization, add_normalization_args, centre_padding, in_plane_axes,
                         normalization_of, normalize, pad_or_crop, replace_nonfinite, pad_to_at_least, resample_inplane,
                         resample_to_shape, slice_flips, slice_volume, with_inplane_spacing)
from .write import output_name, write_segmentation
from .protocol import (FLIP_AXES_HELP, PROTOCOL, Protocol, consecutive_pairs, load_groups, load_protocol,
                       resolve_flip_axes, subject_map)
from .splits import check_fraction, load_splits, make_splits, select_cases
from .volumes import LoadedCase, check_label, clear_cache, label_values, load_case, load_cases

__all__ = [
    "Case", "LabelledSlices", "LoadedCase", "NORM_PRESETS", "Normalization", "PROTOCOL", "Protocol",
    "ScanError", "SliceStack", "UnlabelledSlices", "Volume", "check_fraction", "check_label", "clear_cache",
    "consecutive_pairs", "dataset_root", "find_cases", "label_values", "in_plane_axes", "load_case", "load_cases", "load_groups", "load_protocol",
    "load_splits", "make_splits", "normalize", "centre_padding", "pad_or_crop", "pad_to_at_least",
    "read_dicom_series", "read_image2d", "read_nifti", "read_npy", "read_volume", "select_cases",
    "slice_volume", "subject_map", "output_name", "write_segmentation", "add_normalization_args",
    "normalization_of", "replace_nonfinite", "resample_inplane", "resample_to_shape", "with_inplane_spacing", "FLIP_AXES_HELP",
    "resolve_flip_axes", "sample_rng", "slice_flips",
]
