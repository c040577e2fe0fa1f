"""Any folder of face images, without labels (VGGFace2 ``<identity>/*.jpg``, LFW ``images/``)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError
from .faceset import FaceSet
from .imageio import Index, is_image, load_index_cached


def list_images(root: Path) -> list[Path]:
    """All images under ``root``, recursively, in sorted (deterministic) order."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / f for f in files if is_image(f) and not f.startswith("."))
    return sorted(found)


def load_unlabelled(
    root: str | Path,
    *,
    image_size: int,
    channels: int = 1,
    limit: int | None = None,
) -> FaceSet:
    """Load every image under a folder, unlabelled (pretext stage).

    Args:
        root: Folder searched recursively for jpg/jpeg/png/bmp files.
        image_size: Square side images are resized to at decode time.
        channels: 1 (grey) or 3 (RGB).
        limit: Keep only the first ``limit`` images of the sorted list.

    Returns:
        FaceSet with uint8 ``(N, C, image_size, image_size)`` images, labels ``-1``,
        ``classes=()`` and label space ``"none"``.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: image folder not found")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive int, got {image_size!r}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    paths = list_images(path)
    if not paths:
        raise DataError(f"{path}: no jpg/jpeg/png/bmp images found")
    if limit is not None:
        paths = paths[:limit]
    idx = Index(
        name=f"unlabelled:{path.name}",
        classes=(),
        label_space="none",
        paths=paths,
        labels=[-1] * len(paths),
    )
    return load_index_cached("unlabelled", path, "all", image_size, channels, {"limit": limit}, idx)
