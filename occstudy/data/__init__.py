"""Face expression datasets, batching and transforms for occlusion-robust FER studies.

Everything returns a :class:`FaceSet` (uint8 images in memory); see :func:`load` and
:func:`dataset_names` for the datasets and each dataset module for its expected layout.
"""

from .batches import iterate_batches, num_batches
from .ckplus import subject_folds
from .errors import DataError
from .faceset import FaceSet
from .ferplus import majority_labels
from .labels import EMOTIONS, EMOTIONS7
from .registry import (
    CheckReport,
    check_dataset,
    dataset_names,
    load,
    load_unlabelled,
    splits,
    synthetic_faces,
)
from .synthetic import region_boxes
from .transforms import normalize, random_affine_flip, random_crop_flip, resize, to_float

__all__ = [
    "EMOTIONS",
    "EMOTIONS7",
    "CheckReport",
    "DataError",
    "FaceSet",
    "check_dataset",
    "dataset_names",
    "iterate_batches",
    "load",
    "load_unlabelled",
    "majority_labels",
    "normalize",
    "num_batches",
    "random_affine_flip",
    "random_crop_flip",
    "region_boxes",
    "resize",
    "splits",
    "subject_folds",
    "synthetic_faces",
    "to_float",
]
