"""FER2013 (Goodfellow et al., 2013): 48x48 grey faces, 7 classes, label space ``fer2013-7``.

Accepted layouts of ``root``:

* image folders ``<Split>/<class>/*.jpg`` with splits ``Training``, ``PublicTest``,
  ``PrivateTest`` (the official three-way split), or the common Kaggle ``train/`` and
  ``test/`` (test = PublicTest + PrivateTest); class folders ``angry disgust fear happy
  neutral sad surprise``;
* the original ``fer2013.csv`` (columns ``emotion,pixels,Usage``; ``pixels`` = 2304
  space-separated ints; ``Usage`` = Training/PublicTest/PrivateTest), either ``root`` itself
  or a file inside ``root``. Image folders win when both exist (option ``source``).

Protocol: train on Training, tune on PublicTest, report on PrivateTest.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .faceset import FaceSet
from .imageio import (
    Index,
    cached_faceset,
    is_image,
    load_index_cached,
    require_dir,
    visible_entries,
)
from .labels import EMOTIONS7, FER2013_CSV_IDS, FER2013_FOLDERS
from .transforms import resize

NAME = "fer2013"
LABEL_SPACE = "fer2013-7"
OPTIONS: dict[str, Any] = {"source": "auto"}
KNOWN_SPLITS = ("Training", "PublicTest", "PrivateTest", "train", "test")
CSV_SPLITS = ("Training", "PublicTest", "PrivateTest")
CSV_NAME = "fer2013.csv"


def _csv_file(root: Path) -> Path | None:
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    candidate = root / CSV_NAME
    return candidate if candidate.is_file() else None


def _source(root: Path, opts: dict[str, Any]) -> str:
    source = opts["source"]
    if source not in ("auto", "folders", "csv"):
        raise DataError(f"fer2013: option source={source!r} must be 'auto', 'folders' or 'csv'")
    if source != "auto":
        return str(source)
    if root.is_dir() and any((root / s).is_dir() for s in KNOWN_SPLITS):
        return "folders"
    if _csv_file(root) is not None:
        return "csv"
    raise DataError(
        f"{root}: no FER2013 layout found (expected Training/PublicTest/PrivateTest or "
        f"train/test folders, or {CSV_NAME})"
    )


def splits(root: Path | None, opts: dict[str, Any]) -> tuple[str, ...]:
    """Splits present under ``root``."""
    root = _need_root(root)
    if _source(root, opts) == "csv":
        return CSV_SPLITS
    found = tuple(s for s in KNOWN_SPLITS if (root / s).is_dir())
    return found


def _need_root(root: Path | None) -> Path:
    if root is None:
        raise DataError("fer2013: a root folder (or fer2013.csv) is required")
    if not root.exists():
        raise DataError(f"{root}: dataset root not found")
    return root


def class_folder_index(
    split_dir: Path, mapping: dict[str, str], classes: tuple[str, ...], name: str, space: str
) -> Index:
    """Index a ``<class>/<image>`` folder; unknown class folders raise DataError naming them."""
    require_dir(split_dir, "split")
    paths: list[Path] = []
    labels: list[int] = []
    for entry in visible_entries(split_dir):
        if not entry.is_dir():
            continue  # stray files (README, zip) next to the class folders are harmless
        if entry.name not in mapping or mapping[entry.name] not in classes:
            raise DataError(
                f"{split_dir / entry.name}: unknown class folder {entry.name!r}; expected "
                f"{sorted(k for k, v in mapping.items() if v in classes)}"
            )
        label = classes.index(mapping[entry.name])
        before = len(paths)
        for f in visible_entries(Path(entry.path)):
            if f.is_file() and is_image(f.name):
                paths.append(Path(f.path))
                labels.append(label)
        if len(paths) == before:
            # An empty class folder is a copy gone wrong, not a class without images.
            raise DataError(f"{split_dir / entry.name}: class folder has no images")
    if not paths:
        raise DataError(f"{split_dir}: no images found in class folders")
    return Index(name=name, classes=classes, label_space=space, paths=paths, labels=labels)


def _parse_row(
    csv_path: Path, line: int, emotion_text: str, pixel_text: str
) -> tuple[int, np.ndarray]:
    """One row's emotion id and (48, 48) uint8 pixels; DataError naming the line and value."""
    where = f"{csv_path}:{line}"
    try:
        emotion = int(emotion_text)
    except ValueError:
        raise DataError(f"{where}: emotion {emotion_text!r} is not an integer") from None
    if not 0 <= emotion < len(FER2013_CSV_IDS):
        raise DataError(f"{where}: emotion {emotion} not in 0..6")
    values = pixel_text.split()
    if len(values) != 48 * 48:
        raise DataError(f"{where}: pixels must be 2304 ints in 0..255, got {len(values)} values")
    for text in values:
        # Only the first bad value is named; int() also takes what numpy would overflow on.
        if not text.isdigit() or int(text) > 255:
            if text.lstrip("-").isdigit():
                raise DataError(f"{where}: pixel value {text} not in 0..255")
            raise DataError(f"{where}: pixel value {text!r} is not an integer")
    return emotion, np.array(values, dtype=np.int64).astype(np.uint8).reshape(48, 48)


def _load_csv(csv_path: Path, split: str) -> FaceSet:
    images: list[np.ndarray] = []
    labels: list[int] = []
    try:
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}")
            n_fields = len(reader.fieldnames or ())
            for line, row in enumerate(reader, start=2):
                got = sum(v is not None for k, v in row.items() if k is not None)
                if got != n_fields or None in row:
                    # A short (or long) row: csv fills the missing fields with None.
                    extra = len(row.get(None) or ())  # type: ignore[call-overload]
                    raise DataError(
                        f"{csv_path}:{line}: expected {n_fields} fields, got {got + extra}"
                    )
                if row["Usage"] != split:
                    continue
                emotion, pixels = _parse_row(csv_path, line, row["emotion"], row["pixels"])
                images.append(pixels)
                labels.append(EMOTIONS7.index(FER2013_CSV_IDS[emotion]))
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot read ({exc.strerror or exc})") from None
    if not images:
        raise DataError(f"{csv_path}: no rows with Usage={split!r}")
    return FaceSet(
        images=torch.from_numpy(np.stack(images)).unsqueeze(1),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=EMOTIONS7,
        name=f"{NAME}:{split}",
        label_space=LABEL_SPACE,
    )


def load(
    root: Path | None, split: str, image_size: int | None, channels: int, opts: dict[str, Any]
) -> FaceSet:
    """Load one split (see module docstring)."""
    root = _need_root(root)
    valid = splits(root, opts)
    if split not in valid:
        raise DataError(f"fer2013: split {split!r} not found under {root}; valid: {list(valid)}")
    if _source(root, opts) == "csv":
        csv_path = _csv_file(root)
        if csv_path is None:
            raise DataError(f"{root}: {CSV_NAME} not found")

        def build() -> FaceSet:
            fs = _load_csv(csv_path, split)
            images = fs.images
            if image_size is not None:
                images = resize(images, image_size)
            if channels == 3:
                images = images.expand(-1, 3, -1, -1).contiguous()
            return FaceSet(images, fs.labels, fs.classes, fs.name, fs.label_space)

        key = {
            "dataset": NAME,
            "root": str(csv_path.resolve()),
            "split": split,
            "image_size": image_size,
            "channels": channels,
            "options": opts,
        }
        return cached_faceset(key, [csv_path], csv_path.parent, build)
    index = class_folder_index(
        root / split, FER2013_FOLDERS, EMOTIONS7, f"{NAME}:{split}", LABEL_SPACE
    )
    return load_index_cached(NAME, root, split, image_size, channels, opts, index)
