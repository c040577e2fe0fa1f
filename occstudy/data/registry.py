"""Dataset registry: one ``load`` entry point, split listing and layout checks.

Every dataset family lives in its own module (see their docstrings for the expected
layout); this module validates names, splits and options and dispatches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import affectnet, ckplus, fedro, fer2013, ferplus, rafdb
from .errors import DataError
from .faceset import FaceSet
from .synthetic import synthetic_faces
from .unlabelled import load_unlabelled

__all__ = [
    "CheckReport",
    "DataError",
    "check_dataset",
    "dataset_names",
    "load",
    "load_unlabelled",
    "splits",
    "synthetic_faces",
]

Loader = Callable[[Path | None, str, int | None, int, dict[str, Any]], FaceSet]
SplitLister = Callable[[Path | None, dict[str, Any]], tuple[str, ...]]


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset family.

    Attributes:
        name: Registry name.
        options: Valid options and their defaults.
        known_splits: Every split name the loader understands.
        splits: Splits actually available under a root.
        load: ``(root, split, image_size, channels, options) -> FaceSet``.
        needs_root: Whether a root folder is required.
    """

    name: str
    options: dict[str, Any]
    known_splits: tuple[str, ...]
    splits: SplitLister
    load: Loader
    needs_root: bool = True


SYNTHETIC_SPLITS = {"train": (6000, 1), "val": (1000, 2), "test": (1000, 3)}


def _synthetic_load(
    root: Path | None, split: str, image_size: int | None, channels: int, opts: dict[str, Any]
) -> FaceSet:
    default_n, offset = SYNTHETIC_SPLITS[split]
    n = default_n if opts["n"] is None else opts["n"]
    # Distinct seeds per split so train/val/test never share images.
    fs = synthetic_faces(n, seed=int(opts["seed"]) * 1000 + offset, image_size=image_size or 48)
    images = fs.images.expand(-1, 3, -1, -1).contiguous() if channels == 3 else fs.images
    return FaceSet(images, fs.labels, fs.classes, f"synthetic-faces:{split}", fs.label_space)


_REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("fer2013", fer2013.OPTIONS, fer2013.KNOWN_SPLITS, fer2013.splits, fer2013.load),
        DatasetSpec("ferplus", ferplus.OPTIONS, ferplus.SPLITS, ferplus.splits, ferplus.load),
        DatasetSpec(
            ferplus.OCC_NAME,
            ferplus.OCC_OPTIONS,
            ("test",),
            ferplus.occlusion_splits,
            ferplus.load_occlusion,
        ),
        DatasetSpec(
            ferplus.POSE_NAME,
            ferplus.POSE_OPTIONS,
            tuple(ferplus.POSE_LISTS),
            ferplus.pose_splits,
            ferplus.load_pose,
        ),
        DatasetSpec("rafdb", rafdb.OPTIONS, rafdb.KNOWN_SPLITS, rafdb.splits, rafdb.load),
        DatasetSpec(
            "affectnet",
            affectnet.OPTIONS,
            affectnet.BASE_SPLITS + tuple(affectnet.LIST_FILES),
            affectnet.splits,
            affectnet.load,
        ),
        DatasetSpec("ckplus", ckplus.OPTIONS, ckplus.SPLITS, ckplus.splits, ckplus.load),
        DatasetSpec("fedro", fedro.OPTIONS, ("test",), fedro.splits, fedro.load),
        DatasetSpec(
            "synthetic-faces",
            {"n": None, "seed": 0},
            tuple(SYNTHETIC_SPLITS),
            lambda root, opts: tuple(SYNTHETIC_SPLITS),
            _synthetic_load,
            needs_root=False,
        ),
    )
}


def dataset_names() -> tuple[str, ...]:
    """Names accepted by :func:`load`."""
    return tuple(_REGISTRY)


def _spec(name: str) -> DatasetSpec:
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; valid: {list(_REGISTRY)}")
    return _REGISTRY[name]


def _options(spec: DatasetSpec, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise DataError(
            f"{spec.name}: unknown option(s) {unknown}; valid: {sorted(spec.options) or 'none'}"
        )
    return {**spec.options, **options}


def _root(spec: DatasetSpec, root: str | Path | None) -> Path | None:
    if root is None:
        if spec.needs_root:
            raise DataError(f"{spec.name}: a dataset root is required")
        return None
    return Path(root).expanduser()


def splits(name: str, root: str | Path | None, **options: Any) -> tuple[str, ...]:
    """Splits of a dataset available under ``root``."""
    spec = _spec(name)
    return spec.splits(_root(spec, root), _options(spec, options))


def load(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    image_size: int | None = None,
    channels: int = 1,
    **options: Any,
) -> FaceSet:
    """Load one split of a dataset.

    Args:
        name: One of :func:`dataset_names`.
        root: Folder the user downloaded (ignored by ``synthetic-faces``).
        split: One of the dataset's splits.
        image_size: Resize to ``image_size x image_size`` at decode time (``None``: native
            size, which must then be the same for all images).
        channels: 1 (grey) or 3 (RGB).
        **options: Dataset options (see each dataset module).

    Returns:
        FaceSet of uint8 ``(N, channels, H, W)`` images.

    Raises:
        DataError: Unknown name, split or option; wrong layout; missing or corrupt file.
    """
    spec = _spec(name)
    opts = _options(spec, options)
    if split not in spec.known_splits:
        raise DataError(f"{name}: unknown split {split!r}; valid: {list(spec.known_splits)}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive int or None, got {image_size!r}")
    return spec.load(_root(spec, root), split, image_size, channels, opts)


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        name: Dataset name.
        root: Root that was checked.
        counts: ``{split: {class: images}}``.
        label_spaces: ``{split: label space}``.
        notes: Remarks (e.g. images dropped by a label policy).
    """

    name: str
    root: str
    counts: dict[str, dict[str, int]]
    label_spaces: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """Class-by-split table of image counts, with totals and notes."""
        split_names = list(self.counts)
        classes: list[str] = []
        for per_class in self.counts.values():
            classes.extend(k for k in per_class if k not in classes)
        width = max([len("class"), len("total"), *map(len, classes)])
        cols = [max(len(s), 6) for s in split_names]
        lines = [f"{self.name} at {self.root}"]
        lines.append(
            "  ".join(
                [
                    "class".ljust(width),
                    *(s.rjust(w) for s, w in zip(split_names, cols, strict=True)),
                ]
            )
        )
        for c in [*classes, "total"]:
            cells = []
            for s, w in zip(split_names, cols, strict=True):
                v = sum(self.counts[s].values()) if c == "total" else self.counts[s].get(c, 0)
                cells.append(str(v).rjust(w))
            lines.append("  ".join([c.ljust(width), *cells]))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def check_dataset(
    name: str,
    root: str | Path | None,
    *,
    image_size: int | None = 48,
    channels: int = 1,
    **options: Any,
) -> CheckReport:
    """Load every split, decoding every image, and count images per class.

    Args:
        name: Dataset name.
        root: Dataset root.
        image_size: Decode size used for the check (also warms the cache for it).
        channels: 1 or 3.
        **options: Dataset options.

    Returns:
        The report (``.counts``, ``.format()``).

    Raises:
        DataError: Wrong layout, missing/corrupt file (named), unknown class folder, or a
            list that references missing images.
    """
    spec = _spec(name)
    opts = _options(spec, options)
    path = _root(spec, root)
    if path is not None and not path.exists():
        raise DataError(f"{path}: dataset root not found")
    report = CheckReport(name=name, root=str(path), counts={})
    for split in spec.splits(path, opts):
        fs = load(name, root, split, image_size=image_size, channels=channels, **options)
        report.counts[split] = fs.class_counts()
        report.label_spaces[split] = fs.label_space
        if name == "ferplus" and path is not None:
            report.notes.extend(ferplus.index(path, split, opts).notes)
    return report
