"""The data layer: dataset layouts -> validated :class:`Sample` records -> torch batches.

Qt-free.  Typical use::

    from napari_mtunet.data import load_dataset, train_val_test_split, make_dataloader

    report = load_dataset("Dataset_BUSI_with_GT")          # layout auto-detected
    print(report.format())                                 # counts, sizes, duplicates, problems
    split = train_val_test_split(report.samples, 0.15, 0.15, seed=0, root=report.root)
    parts = split.select(report.samples, report.root)
    loader = make_dataloader(parts["train"], report.class_names, preprocessing, augment, train=True)
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Exported name -> the submodule that defines it.  Imported on first use
#: (PEP 562), so ``import napari_mtunet.data.layouts`` / ``.io`` / ``.writer``
#: do not import torch / torchvision: napari calls readers, writers and
#: sample-data functions on its GUI thread, and torchvision pulls in triton,
#: whose LLVM crashes a process that already runs software OpenGL.
_LAZY: dict[str, str] = {
    **dict.fromkeys(["SampleDataset", "class_balanced_weights", "dataset_labels", "make_dataloader", "make_loader"],
                    "dataset"),
    **dict.fromkeys(["DuplicateCluster", "ImageHashes", "find_duplicates", "image_hashes"], "duplicates"),
    **dict.fromkeys(
        [
            "DataError", "DatasetValidationError", "EmptyDatasetError", "EmptyFileError", "FilePermissionError",
            "LayoutError", "MaskMismatchError", "MissingFileError", "OptionalDependencyError", "Problem",
            "SplitError", "TruncatedFileError", "UnreadableFileError", "UnsupportedFormatError", "ImageTooLargeError",
        ],
        "errors",
    ),
    **dict.fromkeys(
        ["IMAGE_EXTENSIONS", "ImageInfo", "load_sample", "read_image", "read_image_info", "read_mask",
         "read_region", "tiff_levels"],
        "io",
    ),
    **dict.fromkeys(["LAYOUTS", "detect_layout"], "layouts"),
    **dict.fromkeys(["DatasetReport", "DatasetSummary", "SampleStats", "load_dataset"], "loading"),
    **dict.fromkeys(["rle_decode", "rle_encode"], "rle"),
    "Sample": "samples",
    **dict.fromkeys(
        ["Split", "kfold_splits", "load_splits", "sample_key", "save_splits", "split_for_config", "split_groups",
         "train_val_test_split"],
        "splits",
    ),
    **dict.fromkeys(["JointTransform", "build_transforms"], "transforms"),
    **dict.fromkeys(["NewSample", "append_generic_samples", "copy_generic_samples", "remove_generic_sample",
                     "write_generic_dataset", "write_generic_sample"], "writer"),
}

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .dataset import SampleDataset, class_balanced_weights, make_dataloader
    from .duplicates import DuplicateCluster, ImageHashes, find_duplicates, image_hashes
    from .errors import (
        DataError,
        DatasetValidationError,
        EmptyDatasetError,
        EmptyFileError,
        FilePermissionError,
        LayoutError,
        MaskMismatchError,
        MissingFileError,
        OptionalDependencyError,
        Problem,
        SplitError,
        TruncatedFileError,
        UnreadableFileError,
        UnsupportedFormatError,
    )
    from .io import (
        IMAGE_EXTENSIONS,
        ImageInfo,
        load_sample,
        read_image,
        read_image_info,
        read_mask,
        read_region,
        tiff_levels,
    )
    from .layouts import LAYOUTS, detect_layout
    from .loading import DatasetReport, DatasetSummary, SampleStats, load_dataset
    from .rle import rle_decode, rle_encode
    from .samples import Sample
    from .splits import (
        Split,
        kfold_splits,
        load_splits,
        sample_key,
        save_splits,
        split_for_config,
        split_groups,
        train_val_test_split,
    )
    from .transforms import JointTransform, build_transforms
    from .writer import (
        NewSample,
        append_generic_samples,
        copy_generic_samples,
        remove_generic_sample,
        write_generic_dataset,
        write_generic_sample,
    )

__all__ = [
    "DataError", "DatasetReport", "DatasetSummary", "DatasetValidationError", "DuplicateCluster", "EmptyDatasetError",
    "EmptyFileError", "FilePermissionError", "IMAGE_EXTENSIONS", "ImageHashes", "ImageInfo", "JointTransform",
    "LAYOUTS", "LayoutError", "MaskMismatchError", "MissingFileError", "OptionalDependencyError", "Problem", "Sample",
    "SampleDataset", "SampleStats", "Split", "SplitError", "TruncatedFileError", "UnreadableFileError",
    "UnsupportedFormatError", "build_transforms", "class_balanced_weights", "detect_layout", "find_duplicates",
    "image_hashes", "kfold_splits", "load_dataset", "load_sample", "load_splits", "make_dataloader", "read_image",
    "read_image_info", "read_mask", "read_region", "rle_decode", "rle_encode", "sample_key", "save_splits",
    "split_for_config", "split_groups", "tiff_levels", "train_val_test_split", "write_generic_sample",
    "NewSample", "append_generic_samples", "copy_generic_samples", "remove_generic_sample", "write_generic_dataset",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
