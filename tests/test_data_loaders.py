"""Dataset loaders against tiny fixtures in each official layout."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    FERPLUS_VOTES,
    write_affectnet,
    write_challenge_root,
    write_ckplus,
    write_fer2013_csv,
    write_fer2013_folders,
    write_ferplus,
    write_image,
    write_rafdb,
)

from occstudy.data import (
    EMOTIONS,
    EMOTIONS7,
    DataError,
    FaceSet,
    check_dataset,
    dataset_names,
    load,
    load_unlabelled,
    majority_labels,
    splits,
    subject_folds,
)
from occstudy.data.ferplus import OCCLUSION_REGIONS


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCCSTUDY_CACHE", str(tmp_path / "cache"))


def test_fer2013_folders(tmp_path: Path) -> None:
    root = write_fer2013_folders(tmp_path / "fer")
    assert splits("fer2013", root) == ("Training", "PrivateTest")
    fs = load("fer2013", root, "Training")
    assert fs.images.shape == (8, 1, 48, 48) and fs.label_space == "fer2013-7"
    assert fs.class_counts()["anger"] == 2 and fs.class_counts()["sadness"] == 2
    assert load("fer2013", root, "PrivateTest", image_size=24, channels=3).images.shape == (
        8,
        3,
        24,
        24,
    )
    kaggle = write_fer2013_folders(tmp_path / "kaggle", ("train", "test"))
    assert splits("fer2013", kaggle) == ("train", "test")
    assert len(load("fer2013", kaggle, "test")) == 8


def test_fer2013_csv(tmp_path: Path) -> None:
    csv_path = write_fer2013_csv(tmp_path / "raw" / "fer2013.csv")
    for root in (csv_path, csv_path.parent):
        fs = load("fer2013", root, "Training")
        assert [EMOTIONS7[i] for i in fs.labels] == ["anger", "happiness", "neutral"]
        assert fs.images[0, 0, 0, :3].tolist() == [0, 1, 2]
    assert len(load("fer2013", csv_path, "PrivateTest", image_size=24)) == 2
    with pytest.raises(DataError, match="PublicTest"):
        load("fer2013", csv_path, "PublicTest")


def test_cache_hit_and_invalidation(tmp_path: Path) -> None:
    root = write_fer2013_folders(tmp_path / "fer")
    a = load("fer2013", root, "Training")
    cached = list((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 1
    assert load("fer2013", root, "Training").fingerprint() == a.fingerprint()
    target = root / "Training" / "happy" / "Training_10.jpg"
    write_image(target, 99)
    os.utime(target, ns=(1, 1))  # a changed file must invalidate the entry
    assert load("fer2013", root, "Training").fingerprint() != a.fingerprint()


def test_bad_input_names_the_culprit(tmp_path: Path) -> None:
    root = write_fer2013_folders(tmp_path / "fer")
    (root / "Training" / "happy" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load("fer2013", root, "Training", image_size=48)
    write_image(root / "PrivateTest" / "grumpy" / "x.jpg")
    with pytest.raises(DataError, match="grumpy"):
        load("fer2013", root, "PrivateTest")
    with pytest.raises(DataError, match="ferplus"):
        load("nope", root, "Training")
    with pytest.raises(DataError, match="PrivateTest"):
        load("fer2013", root, "Validation")
    with pytest.raises(DataError, match="source"):
        load("fer2013", root, "Training", colour=True)
    with pytest.raises(DataError, match="not found"):
        load("fer2013", tmp_path / "missing", "Training")


def test_ferplus_majority_and_ties(tmp_path: Path) -> None:
    votes = np.array([v for _, v in FERPLUS_VOTES])
    assert majority_labels(votes, "drop").tolist() == [0, 1, -1, -1, -1, 7, -1]
    assert majority_labels(votes, "first").tolist() == [0, 1, 0, -1, -1, 7, 2]
    root = write_ferplus(tmp_path / "ferplus")
    fs = load("ferplus", root, "Train")
    assert fs.label_space == "ferplus-8" and fs.classes == EMOTIONS
    assert [p.rsplit("/", 1)[1] for p in fs.paths] == [
        "fer0000000.png",
        "fer0000001.png",
        "fer0000005.png",
    ]
    first7 = load("ferplus", root, "Train", tie_policy="first", classes=7)
    assert first7.label_space == "ferplus-7" and first7.labels.tolist() == [0, 1, 0, 2]
    with pytest.raises(DataError, match="tie_policy"):
        load("ferplus", root, "Train", tie_policy="random")
    report = check_dataset("ferplus", root)
    assert report.counts["Train"]["contempt"] == 1 and "Train" in report.format()
    (root / "FER2013Test" / "fer0000001.png").unlink()
    with pytest.raises(DataError, match="fer0000001.png"):
        load("ferplus", root, "Test")


def test_challenge_lists(tmp_path: Path) -> None:
    root = write_challenge_root(tmp_path)
    occ = load("occlusion-ferplus", root, "test")
    assert occ.labels.tolist() == [0, 1, 7] and occ.label_space == "ferplus-8"
    assert occ.groups is not None and occ.groups.tolist() == [1, 0, 3]
    occ7 = load("occlusion-ferplus", root, "test", labels="fer2013")
    assert occ7.label_space == "fer2013-7"
    assert [EMOTIONS7[i] for i in occ7.labels] == ["sadness", "happiness"]  # unlabelled one out
    pose = load("pose-ferplus", root, "pose30")
    assert pose.labels.tolist() == [0, 2] and len(load("pose-ferplus", root, "pose45")) == 1
    pose7 = load("pose-ferplus", root, "pose30", labels="fer2013")
    assert [EMOTIONS7[i] for i in pose7.labels] == ["neutral", "fear"]
    with open(root / "challenge-lists" / "FERplus_dir_pose_45_ferplus_list.txt", "a") as fh:
        fh.write("3/fer0099999.jpg\n")
    with pytest.raises(DataError, match="fer0099999.png"):
        load("pose-ferplus", root, "pose45")


def test_occlusion_regions_are_named_and_survive_cache_subset_concat(tmp_path: Path) -> None:
    root = write_challenge_root(tmp_path)
    names = tuple(OCCLUSION_REGIONS[k] for k in range(4))
    assert names == ("upper-face", "mouth", "cheek-hand", "eyewear")
    occ = load("occlusion-ferplus", root, "test")
    assert occ.group_names == names and occ.groups is not None
    assert [names[g] for g in occ.groups.tolist()] == ["mouth", "upper-face", "eyewear"]
    # The decoded-image cache: a hit keeps the names, and an entry written before names
    # existed (no "group_names" key) gets them from the index instead of losing them.
    (entry,) = (tmp_path / "cache").glob("occlusion-ferplus-test-*.pt")
    assert load("occlusion-ferplus", root, "test").group_names == names
    blob = torch.load(entry, weights_only=True)
    assert blob["group_names"] == list(names)
    del blob["group_names"]
    torch.save(blob, entry)
    again = load("occlusion-ferplus", root, "test")
    assert again.group_names == names and torch.equal(again.images, occ.images)
    # fer2013 labels leave an image out; the names still index the remaining groups.
    occ7 = load("occlusion-ferplus", root, "test", labels="fer2013")
    assert occ7.group_names == names and occ7.groups is not None
    assert occ7.groups.tolist() == [1, 0]
    # Groups that are not occluded regions get no names.
    assert load("pose-ferplus", root, "pose30").group_names == ()
    assert load("ferplus", root / "ferplus", "Test").group_names == ()
    # Kept by subset and concat (dropped by concat when the two sides name groups differently).
    assert occ.subset([2, 0]).group_names == names
    assert occ.concat(occ).group_names == names
    one = occ.subset([0])
    unnamed = FaceSet(one.images, one.labels, one.classes, "x", one.label_space, groups=one.groups)
    mixed = occ.concat(unnamed)
    assert mixed.group_names == () and mixed.groups is not None
    with pytest.raises(DataError, match="group names"):
        dataclasses.replace(occ, group_names=("a",))  # group 3 has no name
    # A list with codes outside 0..3 keeps them as groups, without guessed names.
    lists = root / "challenge-lists"
    (lists / "FERplus_dir_jianfei_occlusion_list.txt").write_text("0_fer0000000.png 8 7\n")
    odd = load("occlusion-ferplus", root, "test")
    assert odd.groups is not None and odd.groups.tolist() == [7] and odd.group_names == ()


def test_rafdb(tmp_path: Path) -> None:
    root = write_rafdb(tmp_path / "raf")
    assert splits("rafdb", root) == ("train", "test", "occlusion", "pose45")
    tr = load("rafdb", root, "train", image_size=32, channels=3)
    assert tr.images.shape == (3, 3, 32, 32)
    assert [EMOTIONS7[i] for i in tr.labels] == ["surprise", "happiness", "neutral"]
    occ = load("rafdb", root, "occlusion")
    assert [EMOTIONS7[i] for i in occ.labels] == ["happiness", "neutral"]
    assert occ.groups is not None and occ.groups.tolist() == [4, 1]
    assert len(load("rafdb", root, "pose45")) == 1
    with pytest.raises(DataError, match="pose30"):
        load("rafdb", root, "pose30")


def test_affectnet(tmp_path: Path) -> None:
    root = write_affectnet(tmp_path / "aff")
    tr = load("affectnet", root, "train", image_size=32)
    assert tr.labels.tolist() == [0, 1, 7] and tr.label_space == "affectnet-8"
    assert load("affectnet", root, "train", image_size=32, classes=7).labels.tolist() == [0, 1]
    assert len(load("affectnet", root, "validation", image_size=32)) == 1  # non-emotions dropped
    occ = load("affectnet", root, "occlusion", image_size=32)
    assert occ.labels.tolist() == [1, 7]


def test_ckplus_folds_subject_disjoint(tmp_path: Path) -> None:
    folds = subject_folds([5, 3, 3, 9, 1, 7, 5], 3)
    flat = [s for f in folds for s in f]
    assert sorted(flat) == [1, 3, 5, 7, 9] and len(flat) == len(set(flat))
    root = write_ckplus(tmp_path / "ck")
    seen: set[int] = set()
    for fold in range(3):
        te = load("ckplus", root, "test", fold=fold, n_folds=3)
        tr = load("ckplus", root, "train", fold=fold, n_folds=3)
        assert te.groups is not None and tr.groups is not None
        test_subjects = set(te.groups.tolist())
        assert not test_subjects & set(tr.groups.tolist())
        assert len(te) + len(tr) == 24
        assert not test_subjects & seen
        seen |= test_subjects
    assert seen == set(range(1, 7))
    with pytest.raises(DataError, match="fold"):
        load("ckplus", root, "test", fold=3, n_folds=3)


def test_fedro_and_unlabelled(tmp_path: Path) -> None:
    for cls in ("angry", "happy", "surprised"):
        write_image(tmp_path / "fedro" / cls / "a.jpg")
    fe = load("fedro", tmp_path / "fedro", "test")
    assert fe.class_counts()["surprise"] == 1 and fe.label_space == "fedro-7"
    for i, rel in enumerate(["b/2.jpg", "a/1.png", "a/0.JPEG", "c/x.txt"]):
        target = tmp_path / "vgg" / rel
        if rel.endswith(".txt"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("x")
        else:
            write_image(target, i, 64, "RGB")
    un = load_unlabelled(tmp_path / "vgg", image_size=16, channels=3)
    assert un.images.shape == (3, 3, 16, 16) and un.labels.tolist() == [-1] * 3
    assert [Path(p).name for p in un.paths] == ["0.JPEG", "1.png", "2.jpg"]
    assert len(load_unlabelled(tmp_path / "vgg", image_size=16, limit=2)) == 2
    assert set(dataset_names()) >= {"fer2013", "ferplus", "ckplus", "synthetic-faces"}
    assert torch.all(un.images >= 0)
