"""FED-RO (Li et al., 2019): real-occlusion test set, class folders ``<class>/*.jpg``.

Split ``test``. Folder names may use any common spelling (``angry``/``anger``,
``happy``/``happiness``, ``sad``/``sadness``, ``surprised``, ...). Label space ``fedro-7``
over EMOTIONS7, or ``fedro-8`` over EMOTIONS when a contempt folder exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import DataError
from .faceset import FaceSet
from .fer2013 import class_folder_index
from .imageio import load_index_cached, visible_entries
from .labels import EMOTIONS, EMOTIONS7, FOLDER_SYNONYMS

NAME = "fedro"
OPTIONS: dict[str, Any] = {}


def splits(root: Path | None, opts: dict[str, Any]) -> tuple[str, ...]:
    """FED-RO has one split."""
    return ("test",)


def load(
    root: Path | None, split: str, image_size: int | None, channels: int, opts: dict[str, Any]
) -> FaceSet:
    """Load FED-RO."""
    if root is None or not root.is_dir():
        raise DataError(f"{root}: FED-RO root folder not found")
    folders = {e.name for e in visible_entries(root) if e.is_dir()}
    eight = any(FOLDER_SYNONYMS.get(f) == "contempt" for f in folders)
    classes, space = (EMOTIONS, "fedro-8") if eight else (EMOTIONS7, "fedro-7")
    idx = class_folder_index(root, FOLDER_SYNONYMS, classes, f"{NAME}:{split}", space)
    return load_index_cached(NAME, root, split, image_size, channels, opts, idx)
