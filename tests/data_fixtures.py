"""Writers of tiny dataset fixtures in each official layout (used by tests/test_data*.py)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, value: int = 128, size: int = 48, mode: str = "L") -> Path:
    """Write a small image with a value-dependent pattern."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 256, (size, size), dtype=np.uint8)
    arr[: size // 2] = value
    img = Image.fromarray(arr, "L")
    if mode == "RGB":
        img = img.convert("RGB")
    img.save(path)
    return path


def write_fer2013_folders(root: Path, splits: Sequence[str] = ("Training", "PrivateTest")) -> Path:
    """``<Split>/<class>/*.jpg`` with 2 images per class."""
    for s in splits:
        for k, cls in enumerate(("angry", "happy", "sad", "neutral")):
            for i in range(2):
                write_image(root / s / cls / f"{s}_{k}{i}.jpg", 10 * k + i)
    return root


def write_fer2013_csv(path: Path) -> Path:
    """``fer2013.csv`` with 3 Training and 2 PrivateTest rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        (0, "Training"),
        (3, "Training"),
        (6, "Training"),
        (4, "PrivateTest"),
        (5, "PrivateTest"),
    ]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        for i, (emo, usage) in enumerate(rows):
            w.writerow([emo, " ".join(str((i * 7 + j) % 256) for j in range(2304)), usage])
    return path


# (name, votes) with hand-computed outcomes, see test_data_loaders.
FERPLUS_VOTES: list[tuple[str, list[int]]] = [
    ("fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]),  # neutral
    ("fer0000001.png", [0, 6, 1, 1, 0, 0, 0, 0, 2, 0]),  # happiness
    ("fer0000002.png", [3, 0, 0, 3, 1, 0, 0, 0, 3, 0]),  # tie neutral/sadness/unknown
    ("fer0000003.png", [0, 0, 0, 0, 0, 0, 0, 0, 7, 3]),  # unknown -> dropped
    ("fer0000004.png", [0, 0, 0, 0, 0, 0, 0, 1, 0, 9]),  # NF -> dropped
    ("fer0000005.png", [0, 0, 0, 0, 0, 0, 0, 6, 2, 2]),  # contempt
    ("fer0000006.png", [0, 0, 5, 0, 0, 0, 5, 0, 0, 0]),  # tie surprise/fear
]


def write_ferplus(root: Path, splits: Sequence[str] = ("Train", "Test")) -> Path:
    """``FER2013<Split>/label.csv`` + PNGs with :data:`FERPLUS_VOTES`."""
    for s in splits:
        folder = root / f"FER2013{s}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "label.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            for k, (name, votes) in enumerate(FERPLUS_VOTES):
                w.writerow([name, "(0, 0, 48, 48)", *votes])
                write_image(folder / name, 20 + k)
    return root


def write_challenge_root(root: Path) -> Path:
    """``ferplus/`` + ``challenge-lists/`` with tiny occlusion and pose lists."""
    write_ferplus(root / "ferplus", ("Test",))
    lists = root / "challenge-lists"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "FERplus_dir_jianfei_occlusion_list.txt").write_text(
        "0_fer0000000.png 8 1\n1_fer0000001.png 8 0\n7_fer0000005.png 8 3\n"
    )
    (lists / "FERplus_dir_pose_30_ferplus_list.txt").write_text(
        "0/fer0000000.jpg\n2/fer0000006.jpg\n"
    )
    (lists / "FERplus_dir_pose_45_ferplus_list.txt").write_text("1/fer0000001.jpg\n")
    header = "file,fer2013_label"
    rows = [
        "images/neutral/fer0000000.png,sad",
        "images/happiness/fer0000001.png,happy",
        "images/contempt/fer0000005.png,",
    ]
    (lists / "occlusion_ferplus_labels.csv").write_text("\n".join([header, *rows]) + "\n")
    (root / "ferplus" / "fer2013_msambare_to_ferplus_map_test_valid.csv").write_text(
        "fer2013_jpg,fer2013_label,ferplus_png\n"
        "x.jpg,neutral,ferplus/FER2013Test/fer0000000.png\n"
        "y.jpg,fear,ferplus/FER2013Test/fer0000006.png\n"
        "z.jpg,happy,ferplus/FER2013Test/fer0000001.png\n"
    )
    return root


def write_rafdb(root: Path) -> Path:
    """RAF-DB basic layout with 3 train / 3 test images and challenge lists."""
    lines = []
    for i, (split, rid) in enumerate(
        [("train", 1), ("train", 4), ("train", 7), ("test", 4), ("test", 5), ("test", 7)]
    ):
        name = f"{split}_{i:05d}.jpg"
        lines.append(f"{name} {rid}")
        write_image(root / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg", i, 100, "RGB")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    lists = root / "challenge-lists"
    lists.mkdir()
    (lists / "RAF_DB_dir_rafdb_occlusion_list.txt").write_text(
        "test_00003_aligned 3 4\ntest_00005_aligned 6  1\n"
    )
    (lists / "RAF_DB_dir_val_raf_db_list_45.txt").write_text("4/test_00004_aligned.jpg\n")
    return root


def write_affectnet(root: Path) -> Path:
    """AffectNet csvs + ``Manually_Annotated_Images`` and an occlusion list."""
    header = (
        "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
        "expression,valence,arousal"
    )
    ids = [f"{i:056x}" for i in range(5)]
    exprs = [0, 1, 7, 8, 10]
    rows = []
    for i, (hid, e) in enumerate(zip(ids, exprs, strict=True)):
        rel = f"{i}/{hid}.jpg"
        write_image(root / "Manually_Annotated_Images" / rel, i, 64, "RGB")
        rows.append(f'{rel},4,4,56,56,"1;2;3",{e},0.1,0.2')
    (root / "training.csv").write_text("\n".join([header, *rows[:3]]) + "\n")
    (root / "validation.csv").write_text("\n".join([header, *rows[3:], rows[1]]) + "\n")
    lists = root / "challenge-lists"
    lists.mkdir()
    (lists / "AffectNet_dir_occlusion_affectnet_list.txt").write_text(
        f"val/1/{ids[1]}/\nval/7/{ids[2]}/\n"
    )
    return root


def write_ckplus(root: Path, n_subjects: int = 6) -> Path:
    """CK+48 layout: 2 classes x subjects x 2 frames."""
    for s in range(1, n_subjects + 1):
        for cls in ("happy", "anger"):
            for f in range(2):
                write_image(root / cls / f"S{s:03d}_00{f + 1}_0000001{f}.png", s * 3 + f)
    return root
