"""Checks against the real data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from occstudy.data import EMOTIONS, EMOTIONS7, load, load_unlabelled

pytestmark = pytest.mark.data


def _data_root() -> Path:
    env = os.environ.get("OCCSTUDY_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "challenge-lists").is_dir():
        pytest.skip(f"real data not found at {root} (set OCCSTUDY_DATA)")
    return root


def test_occlusion_ferplus_both_label_spaces() -> None:
    root = _data_root()
    fs = load("occlusion-ferplus", root, "test")
    assert len(fs) == 605 and fs.classes == EMOTIONS
    assert fs.class_counts() == {
        "neutral": 160,
        "happiness": 122,
        "surprise": 133,
        "sadness": 125,
        "anger": 23,
        "disgust": 3,
        "fear": 36,
        "contempt": 3,
    }
    assert fs.groups is not None and fs.groups.bincount().tolist() == [70, 138, 213, 184]
    # The third column's codes, named (unverified reading, see ferplus.OCCLUSION_REGIONS).
    assert fs.group_names == ("upper-face", "mouth", "cheek-hand", "eyewear")
    fer = load("occlusion-ferplus", root, "test", labels="fer2013")
    # 5 images have no (or an ambiguous) FER2013 label and are left out.
    assert len(fer) == 600 and fer.classes == EMOTIONS7 and fer.label_space == "fer2013-7"
    assert fer.group_names == fs.group_names and fer.groups is not None
    assert int(fer.groups.bincount().sum()) == 600


def test_pose_ferplus_sizes() -> None:
    root = _data_root()
    assert len(load("pose-ferplus", root, "pose30")) == 1170
    assert len(load("pose-ferplus", root, "pose45")) == 633


def test_fer2013_private_test() -> None:
    fs = load("fer2013", _data_root() / "fer2013", "PrivateTest")
    assert len(fs) == 3589 and fs.images.shape[1:] == (1, 48, 48)


def test_lfw_unlabelled_subset() -> None:
    fs = load_unlabelled(_data_root() / "lfw", image_size=48, limit=200)
    assert fs.images.shape == (200, 1, 48, 48) and fs.label_space == "none"
