"""Image decoding, file listing and the on-disk cache of decoded tensors.

Each image is decoded once with PIL (resized at decode time, so memory stays at the target
size) and the resulting uint8 tensors are cached with ``torch.save`` under ``OCCSTUDY_CACHE``
(default ``~/.cache/occstudy``; ``off`` disables). The cache key covers the dataset, absolute
root, split, image size, channels, options and a stat fingerprint (relative names, sizes,
mtimes) of every file read, so editing, adding or touching a file invalidates it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .faceset import FaceSet

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
CACHE_VERSION = 1

Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass
class Index:
    """What a loader found on disk, before decoding.

    Attributes:
        name: FaceSet name, e.g. ``"fer2013:Training"``.
        classes: Class tuple of the label space.
        label_space: Label space name.
        paths: Image files, one per sample.
        labels: Label index per sample (``-1`` when unlabelled).
        groups: Group id per sample, or ``None``.
        group_names: Name per group id when the groups are reportable categories (see
            :attr:`FaceSet.group_names`), else ``()``.
        boxes: Optional face box per sample (crop before resizing).
        extra_files: Annotation files the index was built from (part of the cache key).
        notes: Human-readable remarks for check reports (e.g. how many rows were dropped).
    """

    name: str
    classes: tuple[str, ...]
    label_space: str
    paths: list[Path]
    labels: list[int]
    groups: list[int] | None = None
    group_names: tuple[str, ...] = ()
    boxes: list[Box | None] | None = None
    extra_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_image(name: str) -> bool:
    """Whether a file name has one of the supported image extensions."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    """Sorted directory entries, skipping hidden ones (``.DS_Store``, ``._x``).

    Raises:
        DataError: If ``folder`` is not a readable directory.
    """
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    return sorted(entries, key=lambda e: e.name)


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise a DataError naming it."""
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def decode_image(
    path: Path, image_size: int | None, channels: int, box: Box | None = None
) -> np.ndarray:
    """Decode one image file.

    Args:
        path: Image file.
        image_size: Square output side, or ``None`` for the native size.
        channels: 1 (grey) or 3 (RGB).
        box: Optional ``(x, y, w, h)`` crop, clipped to the image.

    Returns:
        uint8 array ``(H, W)`` for grey or ``(H, W, 3)`` for RGB.

    Raises:
        DataError: Naming the file if it is missing or cannot be decoded.
    """
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as opened, warnings.catch_warnings():
            img: Image.Image = opened
            warnings.simplefilter("ignore")  # PIL's EXIF/ICC chatter is not actionable here
            if image_size is not None and box is None and opened.format == "JPEG":
                # DCT-domain downscaling: much faster for large JPEGs, exact for small ones.
                opened.draft(mode, (image_size, image_size))
            if box is not None:
                x, y, w, h = box
                x0, y0 = max(0, x), max(0, y)
                x1, y1 = min(img.width, x + w), min(img.height, y + h)
                if x1 > x0 and y1 > y0:
                    img = img.crop((x0, y0, x1, y1))
            out = img.convert(mode)
            if image_size is not None and out.size != (image_size, image_size):
                out = out.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(out, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,  # not an OSError: a huge declared size, never decoded
    ) as exc:
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def decode_many(
    paths: Sequence[Path],
    image_size: int | None,
    channels: int,
    boxes: Sequence[Box | None] | None = None,
) -> torch.Tensor:
    """Decode a list of images into one tensor.

    Args:
        paths: ``N`` image files.
        image_size: Square side, or ``None`` (then all images must share one size).
        channels: 1 or 3.
        boxes: Optional per-image face boxes.

    Returns:
        uint8 ``(N, C, H, W)``.
    """
    n = len(paths)
    if n == 0:
        side = image_size or 48
        return torch.zeros(0, channels, side, side, dtype=torch.uint8)
    first = decode_image(paths[0], image_size, channels, boxes[0] if boxes else None)
    shape = first.shape
    out = np.empty((n, *shape), dtype=np.uint8)
    out[0] = first

    def work(i: int) -> None:
        arr = decode_image(paths[i], image_size, channels, boxes[i] if boxes else None)
        if arr.shape != shape:
            raise DataError(
                f"{paths[i]}: image size {arr.shape[1]}x{arr.shape[0]} differs from "
                f"{shape[1]}x{shape[0]} of {paths[0]}; pass image_size to resize"
            )
        out[i] = arr

    # PIL releases the GIL while decoding, so threads give a real speed-up.
    workers = min(8, os.cpu_count() or 1)
    if n < 256 or workers == 1:
        for i in range(1, n):
            work(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            # list() re-raises the first DataError from a worker.
            list(pool.map(work, range(1, n), chunksize=256))
    t = torch.from_numpy(out)
    t = t.unsqueeze(1) if channels == 1 else t.permute(0, 3, 1, 2)
    return t.contiguous()


def faceset_from_index(index: Index, image_size: int | None, channels: int) -> FaceSet:
    """Decode the images of an index into a FaceSet."""
    images = decode_many(index.paths, image_size, channels, index.boxes)
    return FaceSet(
        images=images,
        labels=torch.tensor(index.labels, dtype=torch.int64),
        classes=index.classes,
        name=index.name,
        label_space=index.label_space,
        paths=tuple(str(p) for p in index.paths),
        groups=None if index.groups is None else torch.tensor(index.groups, dtype=torch.int64),
        group_names=tuple(index.group_names),
    )


# ----------------------------------------------------------------------------- cache


def cache_dir() -> Path | None:
    """Cache folder from ``OCCSTUDY_CACHE`` (``off`` disables), default ``~/.cache/occstudy``."""
    value = os.environ.get("OCCSTUDY_CACHE", "").strip()
    if value.lower() in {"off", "0", "false", "none", "no"}:
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "occstudy"


def stat_fingerprint(files: Sequence[Path], root: Path | None) -> str:
    """sha256 over (relative name, size, mtime_ns) of every file.

    Raises:
        DataError: Naming the first file that does not exist.
    """
    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            raise DataError(f"{f}: file not found") from None
        try:
            rel = os.path.relpath(f, root) if root is not None else str(f)
        except ValueError:  # different drives on Windows
            rel = str(f)
        h.update(f"{rel}\x1f{st.st_size}\x1f{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value.resolve())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def cached_faceset(
    key: dict[str, Any], files: Sequence[Path], root: Path | None, build: Callable[[], FaceSet]
) -> FaceSet:
    """Return the cached FaceSet for ``key`` + file stats, building and saving it on a miss.

    Args:
        key: Dataset, root, split, image size, channels and options.
        files: Every file the set is built from (images and annotations).
        root: Root for relative names in the stat fingerprint.
        build: Builds the FaceSet on a cache miss.

    Returns:
        The FaceSet.
    """
    folder = cache_dir()
    if folder is None:
        return build()
    payload = json.dumps(
        {"v": CACHE_VERSION, "key": _jsonable(key), "stat": stat_fingerprint(files, root)},
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:24]
    stem = "-".join(str(key.get(k, "")) for k in ("dataset", "split")).replace(os.sep, "_")
    path = folder / f"{stem}-{digest}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return FaceSet(
                images=blob["images"],
                labels=blob["labels"],
                classes=tuple(blob["classes"]),
                name=blob["name"],
                label_space=blob["label_space"],
                paths=tuple(blob["paths"]),
                groups=blob["groups"],
                # Entries written before group names existed lack the key.
                group_names=tuple(blob.get("group_names", ())),
            )
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never fatal
            pass
    fs = build()
    blob = {
        "images": fs.images,
        "labels": fs.labels,
        "classes": list(fs.classes),
        "name": fs.name,
        "label_space": fs.label_space,
        "paths": list(fs.paths),
        "groups": fs.groups,
        "group_names": list(fs.group_names),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so concurrent readers (Ray workers) never see a partial file.
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(blob, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # a read-only cache folder only costs speed
    return fs


def load_index_cached(
    dataset: str,
    root: Path | None,
    split: str,
    image_size: int | None,
    channels: int,
    options: dict[str, Any],
    index: Index,
) -> FaceSet:
    """Decode an index through the cache."""
    key = {
        "dataset": dataset,
        "root": str(root.resolve()) if root is not None else None,
        "split": split,
        "image_size": image_size,
        "channels": channels,
        "options": options,
    }
    files = [*index.paths, *index.extra_files]
    fs = cached_faceset(key, files, root, lambda: faceset_from_index(index, image_size, channels))
    names = tuple(index.group_names)
    if fs.group_names != names:
        # Group names are the loader's reading of its annotations, not decoded content: the
        # index (always rebuilt) wins over a cache entry written before the names existed or
        # changed, so no cached pixels need decoding again.
        fs = dataclasses.replace(fs, group_names=names)
    return fs
