"""FER+ (Barsoum et al., 2016) and the Occlusion-/Pose-FERPlus test lists (Wang et al., 2020).

FER+ layout of ``root``: ``FER2013Train/``, ``FER2013Valid/``, ``FER2013Test/`` (splits
``Train``, ``Valid``, ``Test`` = FER2013 Training/PublicTest/PrivateTest), each with PNGs and a
header-less ``label.csv``: ``name, box, 10 vote counts`` in the order neutral, happiness,
surprise, sadness, anger, disgust, fear, contempt, unknown, NF.

Label policy (majority vote, as in RAN): the label is the plurality of the 10 vote counts;
images whose plurality is ``unknown`` or ``NF`` are dropped. Tie policy (option
``tie_policy``):

* ``"drop"`` (default): an image is kept only if a single category holds the top count; a
  top count shared by two or more categories (emotions, or an emotion and unknown/NF) drops
  the image. On the real Train split 1,445 of 28,558 images are tied; in total 1,618 Train
  images are dropped ("first": 173, only unknown/NF winners).
* ``"first"``: a tie goes to the first tied category in vocabulary order (neutral first,
  unknown and NF last), so an emotion always beats unknown/NF in a tie.

Option ``classes``: 8 (default, label space ``ferplus-8``) or 7 (contempt images dropped,
``ferplus-7``).

``occlusion-ferplus`` / ``pose-ferplus``: the published lists applied to
``ferplus/FER2013Test/*.png``. ``root`` holds ``ferplus/`` and ``challenge-lists/``; options
``list_file`` and ``ferplus_root`` override. Occlusion list lines are
``<labelidx>_ferNNNNNNN.png 8 <k>``; the undocumented ``k`` (seemingly the occluded region, see
:data:`OCCLUSION_REGIONS`; unverified) is kept as ``groups``, its names as ``group_names``, so
tests report accuracy per region. Pose lines are
``<labelidx>/ferNNNNNNN.jpg`` (the images are the PNGs of the same stem). Option ``labels``:
``"ferplus"`` (default: the list prefix, a FER+ class index, label space ``ferplus-8``) or
``"fer2013"`` (the original FER2013 label, label space ``fer2013-7``, so FER2013-trained
models can be tested): from ``challenge-lists/occlusion_ferplus_labels.csv`` (column
``fer2013_label``) for occlusion, and from
``ferplus/fer2013_msambare_to_ferplus_map_test_valid.csv`` for pose. Listed images with no
FER2013 match (empty label) or an ambiguous one (``fear|sad``: pixel duplicates with
conflicting labels) are left out in that label space: 5 of the 605 Occlusion-FERPlus images,
so ``labels="fer2013"`` gives 600 occlusion images.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .faceset import FaceSet
from .imageio import Index, load_index_cached, require_dir, require_file
from .labels import EMOTIONS, EMOTIONS7, FER2013_FOLDERS, FERPLUS_VOTE_COLUMNS

NAME = "ferplus"
OPTIONS: dict[str, Any] = {"tie_policy": "drop", "classes": 8}
SPLITS = ("Train", "Valid", "Test")
TIE_POLICIES = ("drop", "first")


def majority_labels(votes: np.ndarray, tie_policy: str = "drop") -> np.ndarray:
    """FER+ majority-vote labels.

    Args:
        votes: int ``(N, 10)`` vote counts in :data:`FERPLUS_VOTE_COLUMNS` order.
        tie_policy: ``"drop"`` or ``"first"`` (see module docstring).

    Returns:
        int64 ``(N,)``: index into :data:`EMOTIONS`, or ``-1`` for dropped images
        (winner unknown/NF, no votes, or a tie under ``"drop"``).
    """
    if tie_policy not in TIE_POLICIES:
        raise DataError(f"ferplus: tie_policy={tie_policy!r} must be one of {list(TIE_POLICIES)}")
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_VOTE_COLUMNS):
        raise DataError(f"ferplus: votes must be (N, 10), got {votes.shape}")
    top = votes.max(axis=1, keepdims=True)
    winners = votes == top
    first = winners.argmax(axis=1)  # argmax of a bool array = first True
    labels = first.astype(np.int64)
    dropped = (first >= len(EMOTIONS)) | (top[:, 0] <= 0)
    if tie_policy == "drop":
        dropped |= winners.sum(axis=1) > 1
    labels[dropped] = -1
    return labels


def read_label_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Parse a FER+ ``label.csv``.

    Returns:
        Image names and int64 votes ``(N, 10)``.
    """
    require_file(path, "FER+ label.csv")
    names: list[str] = []
    rows: list[list[int]] = []
    try:
        with open(path, newline="") as fh:
            for line, row in enumerate(csv.reader(fh), start=1):
                if not row or not row[0].strip():
                    continue
                if len(row) != 12:
                    raise DataError(
                        f"{path}:{line}: expected 12 fields (name, box, 10 votes), got {len(row)}"
                    )
                try:
                    counts = [int(v) for v in row[2:]]
                except ValueError:
                    raise DataError(f"{path}:{line}: vote counts must be integers") from None
                for count in counts:
                    if count < 0:
                        raise DataError(
                            f"{path}:{line}: vote counts must be integers >= 0, got {count}"
                        )
                    if count > 10**6:  # FER+ has 10 annotators; this also keeps int64 safe
                        raise DataError(f"{path}:{line}: vote count {count} out of range")
                names.append(row[0].strip())
                rows.append(counts)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return names, np.array(rows, dtype=np.int64).reshape(-1, len(FERPLUS_VOTE_COLUMNS))


def _classes(opts: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    n = opts["classes"]
    if n not in (7, 8):
        raise DataError(f"ferplus: option classes={n!r} must be 7 or 8")
    return (EMOTIONS7, "ferplus-7") if n == 7 else (EMOTIONS, "ferplus-8")


def splits(root: Path | None, opts: dict[str, Any]) -> tuple[str, ...]:
    """FER+ splits present under ``root`` (all three when no root is given)."""
    if root is None:
        return SPLITS
    return tuple(s for s in SPLITS if (root / f"FER2013{s}").is_dir())


def index(root: Path, split: str, opts: dict[str, Any]) -> Index:
    """Index one FER+ split, applying the vote policy."""
    classes, space = _classes(opts)
    folder = require_dir(root / f"FER2013{split}", f"FER+ {split}")
    label_csv = folder / "label.csv"
    names, votes = read_label_csv(label_csv)
    labels = majority_labels(votes, opts["tie_policy"])
    top = votes.max(axis=1, keepdims=True)
    ties = int(((votes == top).sum(axis=1) > 1).sum())
    paths: list[Path] = []
    kept: list[int] = []
    n_contempt = 0
    for name, label in zip(names, labels.tolist(), strict=True):
        if label < 0:
            continue
        if label >= len(classes):
            n_contempt += 1
            continue
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: image listed in {label_csv} not found")
        paths.append(path)
        kept.append(label)
    notes = [
        f"{split}: {len(names)} rows, {ties} with tied top votes, "
        f"{len(names) - len(paths) - n_contempt} dropped (tie_policy={opts['tie_policy']!r}, "
        f"unknown/NF winners)" + (f", {n_contempt} contempt dropped" if n_contempt else "")
    ]
    return Index(
        name=f"{NAME}:{split}",
        classes=classes,
        label_space=space,
        paths=paths,
        labels=kept,
        extra_files=[label_csv],
        notes=notes,
    )


def load(
    root: Path | None, split: str, image_size: int | None, channels: int, opts: dict[str, Any]
) -> FaceSet:
    """Load one FER+ split."""
    root = _need_root(root, NAME)
    _classes(opts)
    idx = index(root, split, opts)
    return load_index_cached(NAME, root, split, image_size, channels, opts, idx)


def _need_root(root: Path | None, name: str) -> Path:
    if root is None:
        raise DataError(f"{name}: a root folder is required")
    if not root.is_dir():
        raise DataError(f"{root}: dataset root folder not found")
    return root


# --------------------------------------------------------------------- challenge lists

OCC_NAME = "occlusion-ferplus"
POSE_NAME = "pose-ferplus"
OCC_OPTIONS: dict[str, Any] = {
    "labels": "ferplus",
    "list_file": None,
    "ferplus_root": None,
    "labels_file": None,
}
POSE_OPTIONS: dict[str, Any] = {
    "labels": "ferplus",
    "list_file": None,
    "ferplus_root": None,
    "map_file": None,
}
OCC_LIST = "FERplus_dir_jianfei_occlusion_list.txt"
#: Occlusion-FERPlus third column ``k`` -> name of the occluded region. UNVERIFIED: the column
#: is undocumented upstream (kaiwang960112/Challenge-condition-FER-dataset); these names come
#: from looking at samples (12 random images per value agreed): 0 hand, hair or headwear over
#: the forehead and eyes (70 images), 1 hand or object over the mouth (138), 2 hands on the
#: cheeks or sides of the face (213), 3 glasses or sunglasses (184). Metric names use them
#: (``test.occlusion-ferplus.region.<name>.acc``), so renaming one renames the metric.
OCCLUSION_REGIONS: dict[int, str] = {0: "upper-face", 1: "mouth", 2: "cheek-hand", 3: "eyewear"}
POSE_LISTS = {
    "pose30": "FERplus_dir_pose_30_ferplus_list.txt",
    "pose45": "FERplus_dir_pose_45_ferplus_list.txt",
}


def occlusion_splits(root: Path | None, opts: dict[str, Any]) -> tuple[str, ...]:
    """Occlusion-FERPlus has one split."""
    return ("test",)


def pose_splits(root: Path | None, opts: dict[str, Any]) -> tuple[str, ...]:
    """Pose-FERPlus splits (yaw > 30 and > 45 degrees)."""
    return tuple(POSE_LISTS)


def _opt_path(value: Any, default: Path) -> Path:
    return Path(value).expanduser() if value is not None else default


def _fer2013_label(name: str, where: str) -> int:
    key = name.strip()
    if key not in FER2013_FOLDERS:
        raise DataError(f"{where}: unknown FER2013 label {key!r}")
    return EMOTIONS7.index(FER2013_FOLDERS[key])


def _read_csv_column(path: Path, key_col: str, value_col: str) -> dict[str, str]:
    require_file(path, "label file")
    out: dict[str, str] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {key_col, value_col} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}")
        for row in reader:
            out[Path(row[key_col]).name] = row[value_col]
    return out


def _check_space(opts: dict[str, Any], name: str) -> str:
    space = opts["labels"]
    if space not in ("ferplus", "fer2013"):
        raise DataError(f"{name}: option labels={space!r} must be 'ferplus' or 'fer2013'")
    return str(space)


def _list_label(prefix: str, where: str) -> int:
    try:
        label = int(prefix)
    except ValueError:
        raise DataError(f"{where}: label prefix {prefix!r} is not an integer") from None
    if not 0 <= label < len(EMOTIONS):
        raise DataError(f"{where}: FER+ label index {label} not in 0..7")
    return label


def challenge_index(root: Path | None, dataset: str, split: str, opts: dict[str, Any]) -> Index:
    """Index the Occlusion- or Pose-FERPlus list."""
    space = _check_space(opts, dataset)
    base = root if root is not None else Path(".")
    fer_root = _opt_path(opts["ferplus_root"], base / "ferplus")
    test_dir = require_dir(fer_root / "FER2013Test", "FER+ FER2013Test")
    list_name = OCC_LIST if dataset == OCC_NAME else POSE_LISTS[split]
    list_file = require_file(
        _opt_path(opts["list_file"], base / "challenge-lists" / list_name), "challenge list"
    )
    names: list[str] = []
    labels: list[int] = []
    groups: list[int] = []
    with open(list_file) as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{list_file}:{line_no}"
            if dataset == OCC_NAME:
                if len(parts) != 3 or "_" not in parts[0]:
                    raise DataError(f"{where}: expected '<label>_<name>.png 8 <k>', got {line!r}")
                prefix, name = parts[0].split("_", 1)
                try:
                    groups.append(int(parts[2]))
                except ValueError:
                    raise DataError(f"{where}: third column {parts[2]!r} not an integer") from None
            else:
                if len(parts) != 1 or "/" not in parts[0]:
                    raise DataError(f"{where}: expected '<label>/<name>.jpg', got {line!r}")
                prefix, name = parts[0].split("/", 1)
                name = Path(name).stem + ".png"  # the list says .jpg; FER+ ships PNGs
            labels.append(_list_label(prefix, where))
            names.append(name)
    if not names:
        raise DataError(f"{list_file}: the list names no images")
    paths = [test_dir / n for n in names]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: image listed in {list_file} not found")
    extra = [list_file]
    notes: list[str] = []
    if space == "fer2013":
        if dataset == OCC_NAME:
            lab_file = _opt_path(
                opts["labels_file"], list_file.parent / "occlusion_ferplus_labels.csv"
            )
            mapping = _read_csv_column(lab_file, "file", "fer2013_label")
        else:
            lab_file = _opt_path(
                opts["map_file"], fer_root / "fer2013_msambare_to_ferplus_map_test_valid.csv"
            )
            mapping = _read_csv_column(lab_file, "ferplus_png", "fer2013_label")
        extra.append(lab_file)
        fer_labels: list[int] = []
        keep: list[bool] = []
        for n in names:
            value = mapping.get(n, "").strip()
            # A few FER+ test images have no pixel match in FER2013 (empty label) or match
            # duplicates with conflicting labels ("fear|sad"); they cannot be scored in the
            # FER2013 label space, so they are left out.
            value = "" if "|" in value else value
            keep.append(bool(value))
            if value:
                fer_labels.append(_fer2013_label(value, f"{lab_file} ({n})"))
        n_unmatched = keep.count(False)
        if n_unmatched == len(names):
            raise DataError(f"{lab_file}: no FER2013 labels for the images of {list_file}")
        paths = [p for p, k in zip(paths, keep, strict=True) if k]
        groups = [g for g, k in zip(groups, keep, strict=True) if k] if groups else groups
        labels = fer_labels
        notes.append(
            f"{n_unmatched} listed image(s) without an unambiguous FER2013 label in {lab_file} left out"
        )
        classes, label_space = EMOTIONS7, "fer2013-7"
    else:
        classes, label_space = EMOTIONS, "ferplus-8"
    group_names: tuple[str, ...] = ()
    if dataset == OCC_NAME:
        unknown = sorted(set(groups) - set(OCCLUSION_REGIONS))
        if unknown:
            # Another list (option list_file) may use other codes: keep them as groups, but
            # do not guess names for them (no per-region results).
            notes.append(f"third column values {unknown} are not known regions: no region names")
        else:
            group_names = tuple(OCCLUSION_REGIONS[k] for k in range(len(OCCLUSION_REGIONS)))
    return Index(
        name=f"{dataset}:{split}",
        classes=classes,
        label_space=label_space,
        paths=paths,
        labels=labels,
        groups=groups if dataset == OCC_NAME else None,
        group_names=group_names,
        extra_files=extra,
        notes=notes,
    )


def load_occlusion(
    root: Path | None, split: str, image_size: int | None, channels: int, opts: dict[str, Any]
) -> FaceSet:
    """Load Occlusion-FERPlus (split ``test``)."""
    idx = challenge_index(root, OCC_NAME, split, opts)
    return load_index_cached(OCC_NAME, root, split, image_size, channels, opts, idx)


def load_pose(
    root: Path | None, split: str, image_size: int | None, channels: int, opts: dict[str, Any]
) -> FaceSet:
    """Load Pose-FERPlus (splits ``pose30``, ``pose45``)."""
    idx = challenge_index(root, POSE_NAME, split, opts)
    return load_index_cached(POSE_NAME, root, split, image_size, channels, opts, idx)
