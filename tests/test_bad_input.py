"""Bad input: every case ends with one clear line on stderr, the documented exit code, and the
disk exactly as it was.

The table (:data:`CASES`) runs ``occstudy`` in this process (``cli.main``) on one bad input per
case: data layouts, images, CSVs and lists, ``train`` options, study files, study names,
checkpoints, storage and tracking. Each case asserts

* the exit code: 2, or 1 for ``occstudy data check`` (its code for a broken dataset,
  :func:`occstudy.cli.cmd_data`);
* stderr is exactly one line, equal to the expected message (a regex with ``fullmatch`` where
  part of it comes from torch or the machine);
* nothing under the test's folder (inputs, ``--out``, ``--storage``, the working directory) nor
  the shared checkpoints was written, changed or removed.

Each case was first written down as it behaved (26 of them printed a traceback, a vague or
misleading line, accepted the input silently, or wrote files before failing) and the code was
fixed until it printed the expected line. Property-based tests (hypothesis) cover the parsers: ``DataRef.parse``, the
FER2013 CSV reader, the FER+ ``label.csv`` reader, the challenge lists and ``Study.from_dict``.

Nothing here trains or starts Ray: training cases fail while validating or loading data, study
cases fail while loading the study file (or use ``--plan``), and the ``run`` cases without
``--plan`` find Ray replaced by a guard that fails the test should they get that far.
"""

from __future__ import annotations

import csv
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, configuration, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from occstudy.cli import main
from occstudy.data import EMOTIONS7, DataError, fer2013, ferplus
from occstudy.method import DATASETS, DataRef

# Hypothesis caches what it learns (source constants, charmaps, failure patches) in
# ./.hypothesis, from collection on: keep it out of the checkout, in the system's temp folder.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "occstudy-hypothesis")

DATA_CHECK = 1  # `occstudy data check` exits 1 on a broken dataset (cli.cmd_data)
FER_FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
OCC_LIST = "FERplus_dir_jianfei_occlusion_list.txt"
POSE30 = "FERplus_dir_pose_30_ferplus_list.txt"
POSE45 = "FERplus_dir_pose_45_ferplus_list.txt"
PIXELS = " ".join(["128"] * 48 * 48)
VALID_DATASETS = ", ".join(DATASETS)
BOMB = (
    r"Image size \(10000000000 pixels\) exceeds limit of 178956970 pixels, could be "
    r"decompression bomb DOS attack\."
)
_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
NO_CUDA99 = (
    f"this machine has {_GPUS} CUDA GPU(s), cuda:0..cuda:{_GPUS - 1}"
    if _GPUS
    else "this machine has no CUDA GPU (use cpu or auto)"
)
UNREACHABLE = (
    "MLflow tracking server at http://127.0.0.1:1 is not reachable: [Errno 111] Connection "
    "refused. Start it, or drop --tracking-uri to use the local store."
)


# ------------------------------------------------------------------------------------ inputs


def _png(path: Path, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 128, np.uint8)).save(path)


def _bomb(path: Path, side: int = 100_000) -> None:
    """A 70-byte PNG that declares a ``side`` x ``side`` grey image but holds 16 bytes of pixel
    data: at the default side PIL's decompression-bomb guard refuses it on opening (over
    2 * 89.5 Mpx), at a small side it is a truncated image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def fer_folders(skip: tuple[str, ...] = (), absent: tuple[str, ...] = ()) -> Callable[[Path], None]:
    """FER2013 image folders under ``<t>/fer``: one 8 px image per split and class, except the
    ``Training`` class folders in ``skip``, which are left empty, and those in ``absent``,
    which are not created."""

    def make(t: Path) -> None:
        for split in ("Training", "PublicTest", "PrivateTest"):
            for c in FER_FOLDERS:
                if split == "Training" and c in absent:
                    continue
                folder = t / "fer" / split / c
                folder.mkdir(parents=True)
                if not (split == "Training" and c in skip):
                    _png(folder / "a.png")

    return make


def fer_with(extra: Callable[[Path], None]) -> Callable[[Path], None]:
    """FER2013 folders plus ``extra(<t>/fer/Training/angry)``."""

    def make(t: Path) -> None:
        fer_folders()(t)
        extra(t / "fer" / "Training" / "angry")

    return make


def fer_csv(text: str) -> Callable[[Path], None]:
    def make(t: Path) -> None:
        (t / "csv").mkdir()
        (t / "csv" / "fer2013.csv").write_text(text)

    return make


def challenge(lists: dict[str, str], images: tuple[str, ...] = ("fer0000001.png",)):
    """``<t>/occ/ferplus/FER2013Test/<images>`` and ``<t>/occ/challenge-lists/<lists>``."""

    def make(t: Path) -> None:
        for name in images:
            _png(t / "occ" / "ferplus" / "FER2013Test" / name)
        (t / "occ" / "challenge-lists").mkdir(parents=True)
        for name, text in lists.items():
            (t / "occ" / "challenge-lists" / name).write_text(text)

    return make


def ferplus_label(text: str) -> Callable[[Path], None]:
    """``<t>/fp/FER2013Train/`` with ``a.png`` and ``label.csv`` = ``text``."""

    def make(t: Path) -> None:
        _png(t / "fp" / "FER2013Train" / "a.png")
        (t / "fp" / "FER2013Train" / "label.csv").write_text(text)

    return make


def study_file(name: str, text: str) -> Callable[[Path], None]:
    def make(t: Path) -> None:
        (t / "studies").mkdir(exist_ok=True)
        (t / "studies" / name).write_text(text)

    return make


OK_STUDY = "from occstudy.study import Study\nstudy = Study(name='okstudy')\n"


def ok_study_and_file(t: Path) -> None:
    """A valid study and ``<t>/afile``, a regular file given as ``--storage``."""
    study_file("ok.py", OK_STUDY)(t)
    (t / "afile").write_text("not a folder\n")


def launched(t: Path) -> None:
    """A valid study whose storage ``<t>/store`` records one launch (so that status, report
    and ui have MLflow runs to read)."""
    study_file("ok.py", OK_STUDY)(t)
    (t / "store" / "okstudy").mkdir(parents=True)
    (t / "store" / "okstudy" / "launches.json").write_text('["launch-1"]')


def image_files(t: Path) -> None:
    """Inputs of ``predict``: a good face, a missing one, a folder, corrupt, empty, a bomb."""
    _png(t / "img" / "face.png", 48)
    (t / "img" / "dir.png").mkdir()
    (t / "img" / "corrupt.png").write_bytes(b"this is not a PNG file")
    (t / "img" / "zero.png").write_bytes(b"")
    _bomb(t / "img" / "bomb.png")


# ------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    """One bad input.

    ``argv`` and ``message`` may contain ``{t}`` (the test's folder) and ``{ck}`` (the folder
    of the shared checkpoints); ``message`` is the exact stderr line, or a regular expression
    for ``fullmatch`` when ``regex`` (then the placeholders stand for the escaped paths).
    """

    id: str
    argv: tuple[str, ...]
    message: str
    code: int = 2
    setup: Callable[[Path], None] | None = None
    regex: bool = False


def train(*opts: str) -> tuple[str, ...]:
    device = () if "--device" in opts else ("--device", "cpu")
    return ("train", "--no-progress", "--out", "{t}/out", *device, *opts)


def on_unreachable_server(cmd: str) -> tuple[str, ...]:
    """``cmd`` on the launched study of :func:`launched`, tracked by a server nobody runs."""
    return (
        cmd,
        "{t}/studies/ok.py",
        "--tracking-uri",
        "http://127.0.0.1:1",
        "--storage",
        "{t}/store",
    )


def check(*args: str) -> tuple[str, ...]:
    return ("data", "check", *args)


def predict(image: str, checkpoint: str = "ok", *opts: str) -> tuple[str, ...]:
    return (
        "predict",
        f"{{t}}/img/{image}",
        "--checkpoint",
        f"{{ck}}/{checkpoint}.pt",
        "--overlay-dir",
        "{t}/overlays",
        *opts,
    )


def mc(field: str, why: str) -> str:
    return f"occstudy train: MethodConfig.{field}: {why}"


CASES: list[Case] = [
    # --- occstudy train: options -----------------------------------------------------------
    Case("train-lr-inf", train("--lr", "inf"), mc("lr=inf", "must be a finite number > 0")),
    Case("train-lam-nan", train("--lam", "nan"), mc("lam=nan", "must be finite")),
    Case("train-tau-0", train("--tau", "0"), mc("tau=0.0", "must be > 0")),
    Case("train-epochs-0", train("--epochs", "0"), mc("epochs=0", "must be >= 1")),
    Case(
        "train-max-steps-0",
        train("--max-steps", "0"),
        mc("max_steps=0", "must be >= 1 (or None: whole epochs)"),
    ),
    Case("train-batch-size-1", train("--batch-size", "1"), mc("batch_size=1", "must be >= 2")),
    Case(
        "train-image-size-100000",
        train("--image-size", "100000"),
        mc("image_size=100000", "must be in [32, 1024]"),
    ),
    Case(
        "train-label-fraction-0",
        train("--label-fraction", "0"),
        mc("label_fraction=0.0", "must be in (0, 1]"),
    ),
    Case(
        "train-label-fraction-1.5",
        train("--label-fraction", "1.5"),
        mc("label_fraction=1.5", "must be in (0, 1]"),
    ),
    Case(
        "train-warmup-epochs-neg",
        train("--warmup-epochs", "-1"),
        mc("warmup_epochs=-1.0", "must be a finite number >= 0"),
    ),
    Case(
        "train-label-smoothing-1",
        train("--label-smoothing", "1.0"),
        mc("label_smoothing=1.0", "must be in [0, 1)"),
    ),
    Case(
        "train-weight-decay-neg",
        train("--weight-decay", "-1"),
        mc("weight_decay=-1.0", "must be a finite number >= 0"),
    ),
    Case(
        "train-pretext-lr-0",
        train("--pretext-lr", "0"),
        mc("pretext_lr=0.0", "must be a finite number > 0"),
    ),
    Case(
        "train-device-cuda99",
        train("--device", "cuda:99"),
        f"occstudy train: device='cuda:99': {NO_CUDA99}",
    ),
    Case(
        "train-device-gpu0",
        train("--device", "gpu0"),
        "occstudy train: device='gpu0': not a device name (Invalid device string: 'gpu0')",
    ),
    Case(
        "train-data-unknown",
        train("--data", "nosuch:/x"),
        f"occstudy train: --data 'nosuch:/x': unknown dataset 'nosuch'; valid: {VALID_DATASETS}",
    ),
    Case(
        "train-real-occlusion-unknown",
        train("--real-occlusion", "bogus:/x"),
        "occstudy train: --real-occlusion 'bogus:/x': unknown dataset 'bogus'; valid: "
        f"{VALID_DATASETS}",
    ),
    Case(
        "train-pretext-data-missing",
        train("--pretext-data", "/no/such/folder"),
        "occstudy train: MethodConfig.pretext_data[0]='/no/such/folder': is neither "
        "'synthetic-faces', an existing folder nor NAME:ROOT[@SPLIT]",
    ),
    # --- occstudy train: data -------------------------------------------------------------
    Case(
        "train-data-missing-root",
        train("--data", "fer2013:/nonexistent"),
        "occstudy train: /nonexistent: dataset root not found",
    ),
    Case(
        "train-data-empty-class-folder",
        train("--data", "fer2013:{t}/fer", "--variant", "none"),
        "occstudy train: {t}/fer/Training/angry: class folder has no images",
        setup=fer_folders(skip=("angry",)),
    ),
    Case(
        "train-data-missing-class-folder",
        train("--data", "fer2013:{t}/fer", "--variant", "none"),
        "occstudy train: fer2013:{t}/fer: the training split has no image of class(es) "
        "['anger'] (missing or empty class folder?); every class of fer2013-7 needs training "
        "images",
        setup=fer_folders(absent=("angry",)),
    ),
    Case(
        "train-data-csv-bad-emotion",
        train("--data", "fer2013:{t}/csv"),
        "occstudy train: {t}/csv/fer2013.csv:2: emotion 9 not in 0..6",
        setup=fer_csv(f"emotion,pixels,Usage\n9,{PIXELS},Training\n"),
    ),
    Case(
        "train-pretext-bomb",
        train("--smoke", "--variant", "ss", "--pretext-data", "{t}/faces"),
        r"occstudy train: {t}/faces/bomb\.png: cannot decode image "
        rf"\((DecompressionBombError: )?{BOMB}\)",
        setup=lambda t: _bomb(t / "faces" / "bomb.png"),
        regex=True,
    ),
    # --- occstudy data check: layouts and images -------------------------------------------
    Case(
        "data-missing-root",
        check("fer2013", "--root", "{t}/nothing"),
        "occstudy data check: {t}/nothing: dataset root not found",
        DATA_CHECK,
    ),
    Case(
        "data-empty-class-folder",
        check("fer2013", "--root", "{t}/fer"),
        "occstudy data check: {t}/fer/Training/angry: class folder has no images",
        DATA_CHECK,
        setup=fer_folders(skip=("angry",)),
    ),
    Case(
        "data-unknown-class-folder",
        check("fer2013", "--root", "{t}/fer"),
        "occstudy data check: {t}/fer/Training/happyy: unknown class folder 'happyy'; expected "
        "['angry', 'disgust', 'fear', 'happy', 'neutral', 'sad', 'surprise']",
        DATA_CHECK,
        setup=lambda t: (fer_folders()(t), _png(t / "fer" / "Training" / "happyy" / "a.png")),
    ),
    Case(
        "data-corrupt-image",
        check("fer2013", "--root", "{t}/fer"),
        "occstudy data check: {t}/fer/Training/angry/bad.jpg: cannot decode image "
        "(UnidentifiedImageError: cannot identify image file '{t}/fer/Training/angry/bad.jpg')",
        DATA_CHECK,
        setup=fer_with(lambda d: (d / "bad.jpg").write_bytes(b"not a jpeg at all")),
    ),
    Case(
        "data-zero-byte-image",
        check("fer2013", "--root", "{t}/fer"),
        "occstudy data check: {t}/fer/Training/angry/zero.png: cannot decode image "
        "(UnidentifiedImageError: cannot identify image file '{t}/fer/Training/angry/zero.png')",
        DATA_CHECK,
        setup=fer_with(lambda d: (d / "zero.png").write_bytes(b"")),
    ),
    Case(
        "data-truncated-png",
        check("fer2013", "--root", "{t}/fer"),
        "occstudy data check: {t}/fer/Training/angry/trunc.png: cannot decode image "
        "(OSError: image file is truncated (0 bytes not processed))",
        DATA_CHECK,
        setup=fer_with(lambda d: _bomb(d / "trunc.png", side=64)),
    ),
    Case(
        "data-decompression-bomb",
        check("fer2013", "--root", "{t}/fer"),
        r"occstudy data check: {t}/fer/Training/angry/bomb\.png: cannot decode image "
        rf"\((DecompressionBombError: )?{BOMB}\)",
        DATA_CHECK,
        setup=fer_with(lambda d: _bomb(d / "bomb.png")),
        regex=True,
    ),
    # --- FER2013 csv ----------------------------------------------------------------------
    Case(
        "csv-missing-column",
        check("fer2013", "--root", "{t}/csv"),
        "occstudy data check: {t}/csv/fer2013.csv: missing column(s) ['Usage']",
        DATA_CHECK,
        setup=fer_csv(f"emotion,pixels\n0,{PIXELS}\n"),
    ),
    Case(
        "csv-bad-pixel-count",
        check("fer2013", "--root", "{t}/csv"),
        "occstudy data check: {t}/csv/fer2013.csv:2: pixels must be 2304 ints in 0..255, got 3 "
        "values",
        DATA_CHECK,
        setup=fer_csv("emotion,pixels,Usage\n0,1 2 3,Training\n"),
    ),
    Case(
        "csv-pixel-out-of-range",
        check("fer2013", "--root", "{t}/csv"),
        "occstudy data check: {t}/csv/fer2013.csv:2: pixel value 300 not in 0..255",
        DATA_CHECK,
        setup=fer_csv("emotion,pixels,Usage\n0," + " ".join(["300"] * 2304) + ",Training\n"),
    ),
    Case(
        "csv-pixel-overflow",
        check("fer2013", "--root", "{t}/csv"),
        "occstudy data check: {t}/csv/fer2013.csv:2: pixel value 99999999999999999999 not in "
        "0..255",
        DATA_CHECK,
        setup=fer_csv(
            "emotion,pixels,Usage\n0," + " ".join(["99999999999999999999"] * 2304) + ",Training\n"
        ),
    ),
    Case(
        "csv-bad-emotion",
        check("fer2013", "--root", "{t}/csv"),
        "occstudy data check: {t}/csv/fer2013.csv:2: emotion 9 not in 0..6",
        DATA_CHECK,
        setup=fer_csv(f"emotion,pixels,Usage\n9,{PIXELS},Training\n"),
    ),
    Case(
        "csv-non-integer-emotion",
        check("fer2013", "--root", "{t}/csv"),
        "occstudy data check: {t}/csv/fer2013.csv:2: emotion 'x' is not an integer",
        DATA_CHECK,
        setup=fer_csv(f"emotion,pixels,Usage\nx,{PIXELS},Training\n"),
    ),
    Case(
        "csv-short-row",
        check("fer2013", "--root", "{t}/csv"),
        "occstudy data check: {t}/csv/fer2013.csv:2: expected 3 fields, got 1",
        DATA_CHECK,
        setup=fer_csv(f"emotion,pixels,Usage\n0\n3,{PIXELS}\n"),
    ),
    Case(
        "csv-short-row-reordered",
        check("fer2013", "--root", "{t}/csv"),
        "occstudy data check: {t}/csv/fer2013.csv:2: expected 3 fields, got 1",
        DATA_CHECK,
        setup=fer_csv("Usage,emotion,pixels\nTraining\n"),
    ),
    # --- Occlusion-/Pose-FERPlus lists and FER+ label.csv -----------------------------------
    Case(
        "occ-list-two-fields",
        check("occlusion-ferplus", "--root", "{t}/occ"),
        "occstudy data check: {t}/occ/challenge-lists/"
        f"{OCC_LIST}:1: expected '<label>_<name>.png 8 <k>', got '1_fer0000001.png 8\\n'",
        DATA_CHECK,
        setup=challenge({OCC_LIST: "1_fer0000001.png 8\n"}),
    ),
    Case(
        "occ-list-k-not-int",
        check("occlusion-ferplus", "--root", "{t}/occ"),
        f"occstudy data check: {{t}}/occ/challenge-lists/{OCC_LIST}:2: third column 'x' not an "
        "integer",
        DATA_CHECK,
        setup=challenge({OCC_LIST: "1_fer0000001.png 8 0\n1_fer0000001.png 8 x\n"}),
    ),
    Case(
        "occ-list-label-not-int",
        check("occlusion-ferplus", "--root", "{t}/occ"),
        f"occstudy data check: {{t}}/occ/challenge-lists/{OCC_LIST}:1: label prefix 'x' is not "
        "an integer",
        DATA_CHECK,
        setup=challenge({OCC_LIST: "x_fer0000001.png 8 0\n"}),
    ),
    Case(
        "occ-list-label-range",
        check("occlusion-ferplus", "--root", "{t}/occ"),
        f"occstudy data check: {{t}}/occ/challenge-lists/{OCC_LIST}:1: FER+ label index 9 not "
        "in 0..7",
        DATA_CHECK,
        setup=challenge({OCC_LIST: "9_fer0000001.png 8 0\n"}),
    ),
    Case(
        "occ-list-missing-image",
        check("occlusion-ferplus", "--root", "{t}/occ"),
        "occstudy data check: {t}/occ/ferplus/FER2013Test/fer0000002.png: image listed in "
        f"{{t}}/occ/challenge-lists/{OCC_LIST} not found",
        DATA_CHECK,
        setup=challenge({OCC_LIST: "1_fer0000002.png 8 0\n"}),
    ),
    Case(
        "occ-list-empty",
        check("occlusion-ferplus", "--root", "{t}/occ"),
        f"occstudy data check: {{t}}/occ/challenge-lists/{OCC_LIST}: the list names no images",
        DATA_CHECK,
        setup=challenge({OCC_LIST: "\n"}),
    ),
    Case(
        "pose-list-malformed",
        check("pose-ferplus", "--root", "{t}/occ"),
        f"occstudy data check: {{t}}/occ/challenge-lists/{POSE30}:1: expected "
        "'<label>/<name>.jpg', got '1 fer0000001.jpg\\n'",
        DATA_CHECK,
        setup=challenge({POSE30: "1 fer0000001.jpg\n", POSE45: "1/fer0000001.jpg\n"}),
    ),
    Case(
        "ferplus-label-fields",
        check("ferplus", "--root", "{t}/fp"),
        "occstudy data check: {t}/fp/FER2013Train/label.csv:1: expected 12 fields (name, box, "
        "10 votes), got 5",
        DATA_CHECK,
        setup=ferplus_label('a.png,"(0, 0, 48, 48)",1,2,3\n'),
    ),
    Case(
        "ferplus-label-votes",
        check("ferplus", "--root", "{t}/fp"),
        "occstudy data check: {t}/fp/FER2013Train/label.csv:1: vote counts must be integers",
        DATA_CHECK,
        setup=ferplus_label('a.png,"(0, 0, 48, 48)",x,0,0,0,0,0,0,0,0,0\n'),
    ),
    Case(
        "ferplus-label-missing-image",
        check("ferplus", "--root", "{t}/fp"),
        "occstudy data check: {t}/fp/FER2013Train/b.png: image listed in "
        "{t}/fp/FER2013Train/label.csv not found",
        DATA_CHECK,
        setup=ferplus_label('b.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n'),
    ),
    Case(
        "ferplus-label-negative-votes",
        check("ferplus", "--root", "{t}/fp"),
        "occstudy data check: {t}/fp/FER2013Train/label.csv:1: vote counts must be integers >= "
        "0, got -5",
        DATA_CHECK,
        setup=ferplus_label('a.png,"(0, 0, 48, 48)",-5,0,0,0,0,0,0,0,0,0\n'),
    ),
    Case(
        "ferplus-label-votes-overflow",
        check("ferplus", "--root", "{t}/fp"),
        "occstudy data check: {t}/fp/FER2013Train/label.csv:1: vote count 99999999999999999999 "
        "out of range",
        DATA_CHECK,
        setup=ferplus_label('a.png,"(0, 0, 48, 48)",99999999999999999999,0,0,0,0,0,0,0,0,0\n'),
    ),
    # --- study files (occstudy run --plan) ------------------------------------------------
    Case(
        "run-missing-file",
        ("run", "{t}/studies/missing.py", "--plan", "--storage", "{t}/store"),
        "occstudy run: {t}/studies/missing.py: no such study file",
    ),
    Case(
        "run-syntax-error",
        ("run", "{t}/studies/syntax.py", "--plan", "--storage", "{t}/store"),
        "occstudy run: {t}/studies/syntax.py: SyntaxError: '(' was never closed (syntax.py, "
        "line 1)",
        setup=study_file("syntax.py", "study = Study(\n"),
    ),
    Case(
        "run-no-study-variable",
        ("run", "{t}/studies/nostudy.py", "--plan", "--storage", "{t}/store"),
        "occstudy run: {t}/studies/nostudy.py: defines neither `study` nor `make_study()`",
        setup=study_file("nostudy.py", "x = 1\n"),
    ),
    Case(
        "run-study-not-a-study",
        ("run", "{t}/studies/int.py", "--plan", "--storage", "{t}/store"),
        "occstudy run: {t}/studies/int.py: `study` is a int, not a Study",
        setup=study_file("int.py", "study = 42\n"),
    ),
    Case(
        "run-name-dotdot",
        ("run", "{t}/studies/dotdot.py", "--plan", "--storage", "{t}/store"),
        "occstudy run: {t}/studies/dotdot.py: Study.name='..': must match "
        "[A-Za-z0-9][A-Za-z0-9_.-]* (a folder name)",
        setup=study_file(
            "dotdot.py", "from occstudy.study import Study\nstudy = Study(name='..')\n"
        ),
    ),
    Case(
        "run-unknown-variant",
        ("run", "{t}/studies/variant.py", "--plan", "--storage", "{t}/store"),
        "occstudy run: {t}/studies/variant.py: Study.variants[0]='bogus': valid: none, ss, mask, "
        "ss+mask",
        setup=study_file(
            "variant.py",
            "from occstudy.study import Study\nstudy = Study(name='s', variants=('bogus',))\n",
        ),
    ),
    Case(
        "run-bad-epochs",
        ("run", "{t}/studies/epochs.py", "--plan", "--storage", "{t}/store"),
        "occstudy run: {t}/studies/epochs.py: FinetuneSpec.epochs=0: must be >= 1",
        setup=study_file(
            "epochs.py",
            "from occstudy.study import FinetuneSpec, Study\n"
            "study = Study(name='s', finetune=FinetuneSpec(epochs=0))\n",
        ),
    ),
    Case(
        "run-unknown-name",
        ("run", "nosuch", "--plan", "--storage", "{t}/store"),
        "occstudy run: 'nosuch' is neither a study file nor a study in {t}/store/",
    ),
    # --- study names (status, report, ui) -------------------------------------------------
    *(
        Case(
            f"{cmd}-unknown-name",
            (cmd, "nosuch", "--storage", "{t}/store"),
            f"occstudy {cmd}: 'nosuch' is neither a study file nor a study in {{t}}/store/",
        )
        for cmd in ("status", "report", "ui")
    ),
    *(
        Case(
            f"{cmd}-name-dotdot",
            (cmd, "..", "--storage", "{t}/store"),
            f"occstudy {cmd}: '..' is neither a study file nor a study name: study name '..': "
            "not a folder name (it would point outside the storage root {t}/store)",
        )
        for cmd in ("status", "report", "ui")
    ),
    # --- storage: a regular file, a URI ---------------------------------------------------
    *(
        Case(
            f"{cmd}-storage-is-a-file",
            (cmd, "{t}/studies/ok.py", "--storage", "{t}/afile", *extra),
            f"occstudy {cmd}: --storage {{t}}/afile: not a folder",
            setup=ok_study_and_file,
        )
        for cmd, extra in (
            ("run", ("--device", "cpu", "--quiet")),
            ("status", ()),
            ("report", ()),
            ("ui", ()),
        )
    ),
    Case(
        "status-storage-is-a-uri",
        ("status", "{t}/studies/ok.py", "--storage", "s3://bucket/runs"),
        "occstudy status: --storage s3://bucket/runs: a s3:// URI is not supported; the storage "
        "root must be a folder every node sees (the pretext cache locks files, checkpoints are "
        "renamed into place): use a shared file system, or mount the bucket (e.g. s3fs, "
        "mountpoint-s3)",
        setup=study_file("ok.py", OK_STUDY),
    ),
    # --- tracking -------------------------------------------------------------------------
    Case(
        "run-tracking-unreachable",
        (
            "run",
            "{t}/studies/ok.py",
            "--tracking-uri",
            "http://127.0.0.1:1",
            "--storage",
            "{t}/store",
            "--device",
            "cpu",
            "--quiet",
        ),
        f"occstudy run: {UNREACHABLE}",
        setup=study_file("ok.py", OK_STUDY),
    ),
    Case(
        "run-tracking-unknown-scheme",
        (
            "run",
            "{t}/studies/ok.py",
            "--tracking-uri",
            "nosuch://x",
            "--storage",
            "{t}/store",
            "--device",
            "cpu",
            "--quiet",
        ),
        "occstudy run: --tracking-uri 'nosuch://x': unsupported scheme 'nosuch' (use "
        "http(s)://, sqlite:///, file: or a folder)",
        setup=study_file("ok.py", OK_STUDY),
    ),
    Case(
        "run-ray-address-unreachable",
        ("run", "{t}/studies/none.py", "--address", "127.0.0.1:1", "--storage", "{t}/store"),
        r"occstudy run: --address 127\.0\.0\.1:1: .+",
        setup=study_file(
            "none.py",
            "from occstudy.study import FinetuneSpec, Study\n"
            "study = Study(name='tiny', variants=('none',), "
            "finetune=FinetuneSpec(synthetic_size=60))\n",
        ),
        regex=True,
    ),
    *(
        Case(
            f"{cmd}-tracking-unreachable",
            on_unreachable_server(cmd),
            f"occstudy {cmd}: {UNREACHABLE}",
            setup=launched,
        )
        for cmd in ("status", "report", "ui")
    ),
    Case(
        "status-tracking-wait-not-a-number",
        on_unreachable_server("status"),
        "occstudy status: OCCSTUDY_TRACKING_WAIT_S='soon': must be a number of seconds >= 0",
        setup=lambda t: (launched(t), os.environ.update(OCCSTUDY_TRACKING_WAIT_S="soon")),
    ),
    *(
        Case(
            f"{cmd}-tracking-unknown-scheme",
            (cmd, "{t}/studies/ok.py", "--tracking-uri", "nosuch://x", "--storage", "{t}/store"),
            f"occstudy {cmd}: --tracking-uri 'nosuch://x': unsupported scheme 'nosuch' (use "
            "http(s)://, sqlite:///, file: or a folder)",
            setup=launched,
        )
        for cmd in ("status", "report", "ui")
    ),
    # --- occstudy predict: checkpoints ----------------------------------------------------
    Case(
        "predict-checkpoint-missing",
        predict("face.png", "missing"),
        "occstudy predict: checkpoint not found: {ck}/missing.pt",
        setup=image_files,
    ),
    Case(
        "predict-checkpoint-garbage",
        predict("face.png", "garbage"),
        r"occstudy predict: {ck}/garbage\.pt is not a readable occstudy checkpoint: .+",
        setup=image_files,
        regex=True,
    ),
    Case(
        "predict-checkpoint-empty",
        predict("face.png", "empty"),
        r"occstudy predict: {ck}/empty\.pt is not a readable occstudy checkpoint: \S.*",
        setup=image_files,
        regex=True,
    ),
    Case(
        "predict-checkpoint-foreign",
        predict("face.png", "foreign"),
        "occstudy predict: {ck}/foreign.pt is not an occstudy checkpoint (format 1)",
        setup=image_files,
    ),
    Case(
        "predict-checkpoint-image-size-1e6",
        predict("face.png", "huge"),
        "occstudy predict: {ck}/huge.pt: invalid model config in checkpoint: "
        "ModelConfig.image_size=1000000: must be an int in [32, 1024]",
        setup=image_files,
    ),
    Case(
        "predict-checkpoint-nan-weights",
        predict("face.png", "nan"),
        "occstudy predict: {ck}/nan.pt: the checkpoint holds NaN or infinite weights (a diverged "
        "run); refusing to predict with it",
        setup=image_files,
    ),
    # --- occstudy predict: images and device ----------------------------------------------
    Case(
        "predict-image-missing",
        predict("nosuch.png"),
        "occstudy predict: image not found: {t}/img/nosuch.png",
        setup=image_files,
    ),
    Case(
        "predict-image-is-a-folder",
        predict("dir.png"),
        "occstudy predict: {t}/img/dir.png: not an image file (is it a folder?)",
        setup=image_files,
    ),
    Case(
        "predict-image-corrupt",
        predict("corrupt.png"),
        "occstudy predict: {t}/img/corrupt.png: cannot decode image (UnidentifiedImageError: "
        "cannot identify image file '{t}/img/corrupt.png')",
        setup=image_files,
    ),
    Case(
        "predict-image-zero-byte",
        predict("zero.png"),
        "occstudy predict: {t}/img/zero.png: cannot decode image (UnidentifiedImageError: "
        "cannot identify image file '{t}/img/zero.png')",
        setup=image_files,
    ),
    Case(
        "predict-image-decompression-bomb",
        predict("bomb.png"),
        rf"occstudy predict: {{t}}/img/bomb\.png: cannot decode image "
        rf"\((DecompressionBombError: )?{BOMB}\)",
        setup=image_files,
        regex=True,
    ),
    Case(
        "predict-device-cuda99",
        predict("face.png", "ok", "--device", "cuda:99"),
        r"occstudy predict: {ck}/ok\.pt: cannot use device 'cuda:99' \(.+\)",
        setup=image_files,
        regex=True,
    ),
    Case(
        "predict-device-gpu0",
        predict("face.png", "ok", "--device", "gpu0"),
        "occstudy predict: {ck}/ok.pt: invalid device 'gpu0' (Invalid device string: 'gpu0')",
        setup=image_files,
    ),
]


# ------------------------------------------------------------------------------------ harness


def snapshot(*roots: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime) and folder (None) under ``roots``."""
    out: dict[str, tuple[int, int] | None] = {}
    for root in roots:
        if not root.exists():
            continue
        for p in root.rglob("*"):
            info = p.lstat()
            out[str(p)] = None if p.is_dir() else (info.st_size, info.st_mtime_ns)
    return out


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Work in the test's folder: default storage and anything a command writes relative to
    the working directory land under it. The decode cache is off (a cache entry for a split
    that loaded fine is no output of a failed command, and ~/.cache stays as it was). No
    tracking server leaks in, MLflow gives up on an unreachable server at once, and the
    environment is restored afterwards."""
    saved = dict(os.environ)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OCCSTUDY_CACHE", "off")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OCCSTUDY_DATA", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """Fine-tune checkpoints of a ResNet-18 with 7 classes: ``ok.pt``; ``huge.pt`` whose model
    config asks for 10**6 px inputs; ``nan.pt`` with a NaN weight; ``garbage.pt`` (junk
    bytes), ``empty.pt`` (0 bytes) and ``foreign.pt`` (a torch file of something else)."""
    from occstudy.models import ModelConfig, OccNet
    from occstudy.train import save_checkpoint

    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    config = ModelConfig(
        arch="resnet18", stem="imagenet", in_chans=1, image_size=48, class_names=EMOTIONS7
    )
    net = OccNet.from_config(config, heads=("classifier",))
    save_checkpoint(
        folder / "ok.pt",
        model=net,
        optimizer=None,
        epoch=0,
        config={},
        data_fingerprint="test",
        model_config=config,
    )
    state = torch.load(folder / "ok.pt", weights_only=True)
    state["model_config"]["image_size"] = 10**6
    torch.save(state, folder / "huge.pt")
    state["model_config"]["image_size"] = 48
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first].fill_(float("nan"))
    torch.save(state, folder / "nan.pt")
    (folder / "garbage.pt").write_bytes(b"\x00garbage" * 64)
    (folder / "empty.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, folder / "foreign.pt")
    return folder


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test instead of starting (or joining) Ray."""
    from occstudy.study import runner

    def refuse(*args, **kwargs):
        raise AssertionError("the command got as far as starting Ray")

    monkeypatch.setattr(runner, "ray_session", refuse)


def _params() -> list:
    out = []
    for case in CASES:
        out.append(pytest.param(case, id=case.id))
    return out


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, tmp_path, request, capsys) -> None:
    t = tmp_path.resolve()
    roots = [t]
    ck = None
    if any("{ck}" in a for a in case.argv):
        ck = request.getfixturevalue("checkpoints").resolve()
        roots.append(ck)
    if case.argv[0] == "run" and "--plan" not in case.argv:
        request.getfixturevalue("no_ray")

    def fill(text: str, escape: bool) -> str:
        esc = re.escape if escape else str
        text = text.replace("{t}", esc(str(t)))
        return text.replace("{ck}", esc(str(ck))) if ck is not None else text

    if case.setup is not None:
        case.setup(t)
    argv = [fill(a, False) for a in case.argv]
    before = snapshot(*roots)
    capsys.readouterr()

    code = main(argv)

    err = capsys.readouterr().err
    after = snapshot(*roots)
    assert code == case.code, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    line = err[:-1]
    if case.regex:
        assert re.fullmatch(fill(case.message, True), line), line
    else:
        assert line == fill(case.message, False)
    written = sorted(set(after) - set(before))
    lost = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert (written, lost, changed) == ([], [], [])


# ------------------------------------------------------------------------------------ specials


def test_stray_entries_are_ignored(tmp_path, capsys) -> None:
    """Stray files next to the class folders, a non-image file and a folder named like an image
    inside a class folder are skipped (by design): the check passes with the same counts and
    leaves the dataset as it was."""
    fer_folders()(tmp_path)
    root = tmp_path / "fer"
    assert main(["data", "check", "fer2013", "--root", str(root)]) == 0
    clean = capsys.readouterr().out
    (root / "Training" / "README.txt").write_text("notes\n")
    (root / "Training" / "angry" / "notes.txt").write_text("notes\n")
    (root / "Training" / "angry" / "folder.png").mkdir()
    before = snapshot(root)
    assert main(["data", "check", "fer2013", "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (clean, "")
    assert snapshot(root) == before


def test_argparse_type_error_names_option_and_value(capsys) -> None:
    """A value argparse cannot convert ends in its usage text (several lines, by argparse's
    design) whose last line names the option and the value; exit code 2."""
    with pytest.raises(SystemExit) as exc:
        main(["train", "--lr", "abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.splitlines()[-1] == "occstudy train: error: argument --lr: invalid float value: 'abc'"
    )


def test_predict_checks_every_image_before_writing_overlays(tmp_path, checkpoints, capsys) -> None:
    """A good image before a missing one: nothing is predicted or written, the missing one is
    named."""
    image_files(tmp_path)
    before = snapshot(tmp_path, checkpoints)
    code = main(
        [
            "predict",
            str(tmp_path / "img" / "face.png"),
            str(tmp_path / "img" / "nosuch.png"),
            "--checkpoint",
            str(checkpoints / "ok.pt"),
            "--overlay-dir",
            str(tmp_path / "overlays"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == f"occstudy predict: image not found: {tmp_path / 'img' / 'nosuch.png'}\n"
    assert snapshot(tmp_path, checkpoints) == before


# ------------------------------------------------------------------------------------ properties

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
_chars = st.characters(blacklist_categories=("Cs",))
# Free text, and text shaped like NAME[:ROOT][@SPLIT][?K=V&...] from the pieces that matter.
ref_text = st.one_of(
    st.text(_chars, max_size=30),
    st.builds(
        lambda *parts: "".join(parts),
        st.sampled_from([*DATASETS, "nosuch", ""]),
        st.sampled_from(["", ":", ":/data", ":a@b", ":@", ":x@"]),
        st.sampled_from(["", "@", "@Training", "@@"]),
        st.sampled_from(["", "?", "?a=1", "?a=-2&b", "?=", "&", "?k=v=w"]),
    ),
)


@PROPERTY
@given(ref_text)
def test_dataref_parse_raises_only_value_error(text: str) -> None:
    try:
        ref = DataRef.parse(text)
    except ValueError:
        return
    assert isinstance(ref, DataRef)


@PROPERTY
@example("fer2013:a@@")
@example("synthetic-faces:@x")
@given(ref_text)
def test_dataref_round_trips(text: str) -> None:
    try:
        ref = DataRef.parse(text)
    except ValueError:
        return
    assert DataRef.parse(str(ref)) == ref


_field = st.one_of(
    st.text(_chars, max_size=6),
    st.sampled_from(
        ["0", "6", "7", "-1", "Training", "PublicTest", "1 2 3", PIXELS, "99999999999999999999"]
    ),
)
_header = st.sampled_from(
    [["emotion", "pixels", "Usage"], ["Usage", "emotion", "pixels"], ["emotion", "pixels"], []]
)


@PROPERTY
@example(["emotion", "pixels", "Usage"], [["0", "99999999999999999999", "Training"]])
@example(["Usage", "emotion", "pixels"], [["Training"]])
@given(_header, st.lists(st.lists(_field, max_size=4), max_size=4))
def test_fer2013_csv_fails_only_with_a_data_error_naming_the_file(
    tmp_path, header: list[str], rows: list[list[str]]
) -> None:
    path = tmp_path / "fer2013.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    try:
        faces = fer2013._load_csv(path, "Training")
    except DataError as exc:
        assert str(exc).startswith(str(path))
    else:
        assert len(faces) >= 1


_vote = st.one_of(st.integers(-3, 12).map(str), st.sampled_from(["", "x", "1.5", "1e3"]))


@PROPERTY
@example([["a.png", "(0, 0, 48, 48)", "-1", *["0"] * 9]])
@example([["a.png", "(0, 0, 48, 48)", "99999999999999999999", *["0"] * 9]])
@given(
    st.lists(
        st.one_of(
            st.lists(st.text(_chars, max_size=4), max_size=13),
            st.tuples(st.just("a.png"), st.just("(0, 0, 48, 48)"), *[_vote] * 10).map(list),
        ),
        max_size=3,
    )
)
def test_ferplus_label_csv_fails_only_with_a_data_error_naming_the_file(
    tmp_path, rows: list[list[str]]
) -> None:
    path = tmp_path / "label.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    try:
        names, votes = ferplus.read_label_csv(path)
    except DataError as exc:
        assert str(exc).startswith(str(path))
    else:
        assert votes.shape == (len(names), 10) and (votes >= 0).all()


_list_line = st.text(
    st.sampled_from([*"0123456789_ .pngjferx/-\t", "\x0b", "\x1c", "\x00", "\x85", "٣"]),
    max_size=24,
)


@PROPERTY
@given(st.lists(_list_line, max_size=4), st.sampled_from([ferplus.OCC_NAME, ferplus.POSE_NAME]))
def test_challenge_lists_fail_only_with_a_data_error_naming_a_file(
    tmp_path, lines: list[str], dataset: str
) -> None:
    root = tmp_path / "occ"
    _png(root / "ferplus" / "FER2013Test" / "fer0000001.png")
    (root / "challenge-lists").mkdir(exist_ok=True)
    occlusion = dataset == ferplus.OCC_NAME
    listed = root / "challenge-lists" / (OCC_LIST if occlusion else POSE30)
    listed.write_text("\n".join(lines))
    options = dict(ferplus.OCC_OPTIONS if occlusion else ferplus.POSE_OPTIONS)
    try:
        index = ferplus.challenge_index(root, dataset, "test" if occlusion else "pose30", options)
    except DataError as exc:
        assert str(listed) in str(exc)
    else:
        assert len(index.paths) == len(index.labels)
        assert all(0 <= label < 8 for label in index.labels)


def _study_dicts() -> st.SearchStrategy[dict]:
    from dataclasses import fields

    from occstudy.recipes import Recipe
    from occstudy.study import spec

    leaf = (
        st.none()
        | st.booleans()
        | st.integers(-3, 10)
        | st.floats(allow_nan=True)
        | st.text(_chars, max_size=6)
        | st.sampled_from(["synthetic-faces", "fer2013:/x", "ss", "grid", "asha", "all", "fast"])
    )
    value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3), max_leaves=4)

    def nested(cls: type) -> st.SearchStrategy[dict]:
        names = [f.name for f in fields(cls)] + ["bogus"]
        return st.dictionaries(st.sampled_from(names), value, max_size=3)

    param = st.fixed_dictionaries(
        {"kind": st.sampled_from(["fixed", "grid", "uniform", "loguniform", "bogus"])},
        optional={"value": value, "values": value, "low": value, "high": value},
    )
    special = {
        "name": st.sampled_from(["s", "..", "", "a/b"]) | st.text(_chars, max_size=4),
        "pretext": nested(spec.PretextSpec) | value,
        "finetune": nested(spec.FinetuneSpec) | value,
        "test": nested(spec.TestSpec) | value,
        "search": nested(spec.SearchSpec) | value,
        "resources": nested(spec.Resources) | value,
        "recipe": nested(Recipe) | value,
        "search_space": st.dictionaries(
            st.sampled_from(["lam", "tau", "lr", "pretext_lr", "arch", "x"]),
            param | value,
            max_size=2,
        )
        | value,
    }
    others = {f.name: value for f in fields(spec.Study) if f.name not in special}
    return st.fixed_dictionaries({}, optional={**special, **others, "bogus": value})


@PROPERTY
@example({"name": "s", "recipe": [[]]})
@given(_study_dicts())
def test_study_from_dict_returns_a_study_or_raises_study_error(d: dict) -> None:
    from occstudy.study import Study, StudyError

    try:
        study = Study.from_dict(d)
    except StudyError:
        return
    assert isinstance(study, Study)
