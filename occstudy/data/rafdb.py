"""RAF-DB basic set (Li et al., 2017) and the Occlusion-/Pose-RAF-DB lists (Wang et al., 2020).

Layout of ``root``: ``EmoLabel/list_patition_label.txt`` (lines ``train_00001.jpg 5``; ids
1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral) and
``Image/aligned/train_00001_aligned.jpg``. Splits ``train`` and ``test``; label space
``rafdb-7`` over EMOTIONS7.

Challenge splits (test images only), lists looked up in option ``list_dir`` (default
``root/challenge-lists``), with or without the ``RAF_DB_dir_`` prefix:

* ``occlusion``: ``rafdb_occlusion_list.txt``, lines ``test_0003_aligned <label0> <k>``
  (``label0`` = RAF id - 1; ``k`` undocumented, kept as ``groups``);
* ``pose30`` / ``pose45``: ``val_raf_db_list_30.txt`` / ``val_raf_db_list_45.txt``, lines
  ``<label0>/test_0004_aligned.jpg``.

Labels always come from the official ``list_patition_label.txt``; a list whose label
disagrees with it raises DataError (it would mean a wrong list or annotation file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import DataError
from .faceset import FaceSet
from .imageio import Index, load_index_cached, require_dir, require_file
from .labels import EMOTIONS7, RAFDB_IDS

NAME = "rafdb"
LABEL_SPACE = "rafdb-7"
OPTIONS: dict[str, Any] = {"list_dir": None}
BASE_SPLITS = ("train", "test")
LIST_FILES = {
    "occlusion": "rafdb_occlusion_list.txt",
    "pose30": "val_raf_db_list_30.txt",
    "pose45": "val_raf_db_list_45.txt",
}
KNOWN_SPLITS = BASE_SPLITS + tuple(LIST_FILES)


def _list_dir(root: Path, opts: dict[str, Any]) -> Path:
    return Path(opts["list_dir"]).expanduser() if opts["list_dir"] else root / "challenge-lists"


def _list_file(root: Path, split: str, opts: dict[str, Any]) -> Path:
    folder = _list_dir(root, opts)
    for name in (LIST_FILES[split], "RAF_DB_dir_" + LIST_FILES[split]):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"{folder / LIST_FILES[split]}: RAF-DB {split} list not found (option list_dir)"
    )


def splits(root: Path | None, opts: dict[str, Any]) -> tuple[str, ...]:
    """train/test plus the challenge splits whose list files are present."""
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


def read_partition(path: Path) -> dict[str, int]:
    """Official labels: image name -> EMOTIONS7 index."""
    require_file(path, "RAF-DB label file")
    out: dict[str, int] = {}
    with open(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                rid = int(parts[1])
                out[parts[0]] = EMOTIONS7.index(RAFDB_IDS[rid])
            except (IndexError, ValueError, KeyError):
                raise DataError(
                    f"{path}:{line_no}: expected '<name>.jpg <1..7>', got {line!r}"
                ) from None
    return out


def _aligned_name(name: str) -> str:
    stem = Path(name).stem
    return (stem if stem.endswith("_aligned") else stem + "_aligned") + ".jpg"


def index(root: Path, split: str, opts: dict[str, Any]) -> Index:
    """Index one RAF-DB split."""
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    official = read_partition(label_file)
    image_dir = require_dir(root / "Image" / "aligned", "RAF-DB Image/aligned")
    names: list[str] = []
    groups: list[int] | None = None
    extra = [label_file]
    if split in BASE_SPLITS:
        names = [n for n in official if n.startswith(split + "_")]
    else:
        list_file = _list_file(root, split, opts)
        extra.append(list_file)
        groups = [] if split == "occlusion" else None
        with open(list_file) as fh:
            for line_no, line in enumerate(fh, start=1):
                parts = line.split()
                if not parts:
                    continue
                where = f"{list_file}:{line_no}"
                try:
                    if split == "occlusion":
                        name, label0 = parts[0], int(parts[1])
                        assert groups is not None
                        groups.append(int(parts[2]))
                    else:
                        prefix, name = parts[0].split("/", 1)
                        label0 = int(prefix)
                except (IndexError, ValueError):
                    raise DataError(f"{where}: unexpected line {line!r}") from None
                base = name.replace("_aligned", "").removesuffix(".jpg") + ".jpg"
                if base not in official:
                    raise DataError(f"{where}: {base} not in {label_file}")
                if (
                    label0 + 1 not in RAFDB_IDS
                    or EMOTIONS7.index(RAFDB_IDS[label0 + 1]) != official[base]
                ):
                    raise DataError(f"{where}: label {label0} disagrees with {label_file}")
                names.append(base)
    if not names:
        raise DataError(f"{label_file}: no images for split {split!r}")
    paths = [image_dir / _aligned_name(n) for n in names]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: image listed for split {split!r} not found")
    return Index(
        name=f"{NAME}:{split}",
        classes=EMOTIONS7,
        label_space=LABEL_SPACE,
        paths=paths,
        labels=[official[n] for n in names],
        groups=groups,
        extra_files=extra,
    )


def load(
    root: Path | None, split: str, image_size: int | None, channels: int, opts: dict[str, Any]
) -> FaceSet:
    """Load one RAF-DB split."""
    if root is None or not root.is_dir():
        raise DataError(f"{root}: RAF-DB root folder not found")
    idx = index(root, split, opts)
    return load_index_cached(NAME, root, split, image_size, channels, opts, idx)
