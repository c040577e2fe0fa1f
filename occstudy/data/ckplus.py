"""CK+ (Lucey et al., 2010) in the CK+48 layout, with subject-independent k-fold splits.

Layout of ``root``: ``<class>/S<subject>_<seq>_<frame>.png`` with classes ``anger contempt
disgust fear happy sadness surprise`` (a ``neutral`` folder is accepted). Label space
``ckplus-8`` over EMOTIONS (neutral is empty in CK+48).

Options ``n_folds`` (default 10) and ``fold`` (default 0): subjects (never images) are sorted
by id and dealt round-robin into folds, so folds are deterministic and subject-disjoint.
Split ``test`` = the subjects of ``fold``, ``train`` = all others, ``all`` = everything.
``groups`` holds the subject id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import DataError
from .faceset import FaceSet
from .fer2013 import class_folder_index
from .imageio import load_index_cached
from .labels import CKPLUS_FOLDERS, EMOTIONS

NAME = "ckplus"
LABEL_SPACE = "ckplus-8"
OPTIONS: dict[str, Any] = {"fold": 0, "n_folds": 10}
SPLITS = ("train", "test", "all")
_SUBJECT = re.compile(r"^S(\d+)_")


def subject_folds(subjects: Sequence[int], n_folds: int) -> list[list[int]]:
    """Deal distinct subject ids round-robin into folds.

    Args:
        subjects: Subject ids (repeats allowed, e.g. one per image).
        n_folds: Number of folds, ``2 <= n_folds <= number of distinct subjects``.

    Returns:
        ``n_folds`` sorted lists of subject ids; every subject is in exactly one fold.
    """
    unique = sorted(set(int(s) for s in subjects))
    if not 2 <= n_folds <= len(unique):
        raise DataError(
            f"ckplus: n_folds={n_folds} must be in [2, {len(unique)}] (distinct subjects)"
        )
    return [unique[i::n_folds] for i in range(n_folds)]


def subject_of(path: Path) -> int:
    """Subject id parsed from ``S<subject>_<seq>_<frame>.png``."""
    m = _SUBJECT.match(path.name)
    if m is None:
        raise DataError(f"{path}: file name does not match S<subject>_<seq>_<frame>.png")
    return int(m.group(1))


def load(
    root: Path | None, split: str, image_size: int | None, channels: int, opts: dict[str, Any]
) -> FaceSet:
    """Load one fold split of CK+."""
    if root is None or not root.is_dir():
        raise DataError(f"{root}: CK+ root folder not found")
    fold, n_folds = opts["fold"], opts["n_folds"]
    if not isinstance(n_folds, int) or not isinstance(fold, int) or not 0 <= fold < n_folds:
        raise DataError(f"ckplus: option fold={fold!r} must be an int in [0, n_folds={n_folds})")
    idx = class_folder_index(root, CKPLUS_FOLDERS, EMOTIONS, f"{NAME}:{split}", LABEL_SPACE)
    subjects = [subject_of(p) for p in idx.paths]
    if split != "all":
        test_subjects = set(subject_folds(subjects, n_folds)[fold])
        keep = [(s in test_subjects) == (split == "test") for s in subjects]
        idx.paths = [p for p, k in zip(idx.paths, keep, strict=True) if k]
        idx.labels = [v for v, k in zip(idx.labels, keep, strict=True) if k]
        subjects = [s for s, k in zip(subjects, keep, strict=True) if k]
        idx.name = f"{NAME}:{split}[fold {fold}/{n_folds}]"
    idx.groups = subjects
    return load_index_cached(NAME, root, split, image_size, channels, opts, idx)


def splits(root: Path | None, opts: dict[str, Any]) -> tuple[str, ...]:
    """CK+ splits."""
    return SPLITS
