"""AffectNet (Mollahosseini et al., 2017), manually annotated part, and its challenge lists.

Layout of ``root``: ``training.csv`` and ``validation.csv`` (columns
``subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks,
expression, valence, arousal``; expression 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear,
5 Disgust, 6 Anger, 7 Contempt, 8 None, 9 Uncertain, 10 No-Face) and images under
``Manually_Annotated_Images/<subDirectory_filePath>``. Rows 8-10 (non-emotions) are dropped.

Options: ``classes`` 7 (C7, contempt dropped, ``affectnet-7``) or 8 (default C8,
``affectnet-8``); ``crop`` (default True) crops the annotated face box before resizing;
``list_dir`` (default ``root/challenge-lists``) for the challenge splits.

Splits ``train``, ``validation`` and, when their lists are present, ``occlusion``,
``pose30``, ``pose45``. The lists name images by their 56-hex id inside the authors'
re-organised folders (``val/<label>/<id>/``, ``<label>/<id>.jpg``, ``<label>/<id>/8.jpg``);
each id is resolved through ``validation.csv`` (then ``training.csv``) and labelled with the
official annotation.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from .errors import DataError
from .faceset import FaceSet
from .imageio import Box, Index, load_index_cached, require_dir, require_file
from .labels import AFFECTNET_IDS, EMOTIONS, EMOTIONS7

NAME = "affectnet"
OPTIONS: dict[str, Any] = {"classes": 8, "crop": True, "list_dir": None}
BASE_SPLITS = ("train", "validation")
CSV_FILES = {"train": "training.csv", "validation": "validation.csv"}
LIST_FILES = {
    "occlusion": "occlusion_affectnet_list.txt",
    "pose30": "pose_30_affectnet_list.txt",
    "pose45": "pose_45_affectnet_list.txt",
}
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
_HEX_ID = re.compile(r"[0-9a-fA-F]{56}")

Row = tuple[str, Box, int]


def _classes(opts: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    if opts["classes"] not in (7, 8):
        raise DataError(f"affectnet: option classes={opts['classes']!r} must be 7 or 8")
    return (EMOTIONS7, "affectnet-7") if opts["classes"] == 7 else (EMOTIONS, "affectnet-8")


def read_annotations(path: Path) -> list[Row]:
    """Rows ``(relative path, face box, expression id)`` of an AffectNet csv."""
    require_file(path, "AffectNet annotation file")
    rows: list[Row] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}")
        for line_no, row in enumerate(reader, start=2):
            try:
                box = (
                    int(float(row["face_x"])),
                    int(float(row["face_y"])),
                    int(float(row["face_width"])),
                    int(float(row["face_height"])),
                )
                rows.append((row["subDirectory_filePath"], box, int(row["expression"])))
            except (TypeError, ValueError):
                raise DataError(f"{path}:{line_no}: non-numeric face box or expression") from None
    return rows


def _list_file(root: Path, split: str, opts: dict[str, Any]) -> Path:
    folder = Path(opts["list_dir"]).expanduser() if opts["list_dir"] else root / "challenge-lists"
    for name in (LIST_FILES[split], "AffectNet_dir_" + LIST_FILES[split]):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"{folder / LIST_FILES[split]}: AffectNet {split} list not found (option list_dir)"
    )


def splits(root: Path | None, opts: dict[str, Any]) -> tuple[str, ...]:
    """train/validation plus the challenge splits whose lists are present."""
    if root is None:
        return BASE_SPLITS
    found = []
    for split in LIST_FILES:
        try:
            _list_file(root, split, opts)
            found.append(split)
        except DataError:
            pass
    return BASE_SPLITS + tuple(found)


def index(root: Path, split: str, opts: dict[str, Any]) -> Index:
    """Index one AffectNet split."""
    classes, space = _classes(opts)
    image_dir = require_dir(
        root / "Manually_Annotated_Images", "AffectNet Manually_Annotated_Images"
    )
    extra: list[Path] = []
    if split in BASE_SPLITS:
        extra.append(root / CSV_FILES[split])
        rows = read_annotations(root / CSV_FILES[split])
    else:
        list_file = _list_file(root, split, opts)
        by_id: dict[str, Row] = {}
        for s in ("train", "validation"):  # validation wins: the lists are validation images
            if (root / CSV_FILES[s]).is_file():
                extra.append(root / CSV_FILES[s])
                by_id.update((Path(r[0]).stem, r) for r in read_annotations(root / CSV_FILES[s]))
        extra.append(list_file)
        rows = []
        with open(list_file) as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                m = _HEX_ID.search(line)
                if m is None or m.group(0) not in by_id:
                    raise DataError(
                        f"{list_file}:{line_no}: image id in {line.strip()!r} not found in "
                        f"{root / CSV_FILES['validation']}"
                    )
                rows.append(by_id[m.group(0)])
    paths: list[Path] = []
    labels: list[int] = []
    boxes: list[Box | None] = []
    for rel, box, expr in rows:
        name = AFFECTNET_IDS.get(expr)
        if name is None or name not in classes:
            continue  # None/Uncertain/No-Face, or contempt under C7
        path = image_dir / rel
        if not path.is_file():
            raise DataError(f"{path}: image listed in annotations not found")
        paths.append(path)
        labels.append(classes.index(name))
        boxes.append(box if opts["crop"] else None)
    return Index(
        name=f"{NAME}:{split}",
        classes=classes,
        label_space=space,
        paths=paths,
        labels=labels,
        boxes=boxes,
        extra_files=extra,
    )


def load(
    root: Path | None, split: str, image_size: int | None, channels: int, opts: dict[str, Any]
) -> FaceSet:
    """Load one AffectNet split."""
    if root is None or not root.is_dir():
        raise DataError(f"{root}: AffectNet root folder not found")
    idx = index(root, split, opts)
    return load_index_cached(NAME, root, split, image_size, channels, opts, idx)
