"""Several pretext sources at once, and no validation/test image in the pretext set."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from data_fixtures import write_fer2013_folders, write_ferplus, write_image

from occstudy.cli import build_parser, main
from occstudy.data import load_unlabelled
from occstudy.pipeline import (
    DataRef,
    MethodConfig,
    image_hashes,
    load_pretext_data,
    load_pretext_sources,
    load_ref,
)
from occstudy.study.cache import pretext_cache_key
from occstudy.study.spec import PretextSpec, Study, StudyError
from occstudy.study.trainables import pretext_data_id
from occstudy.tracking import method_params

BASE = MethodConfig(image_size=32, synthetic_size=12, pretext_epochs=1, device="cpu")


def _folder(root: Path, values: range, mode: str = "L", size: int = 48) -> Path:
    for v in values:
        write_image(root / f"img_{v:03d}.png", v, size, mode)
    return root


def _fer2013(root: Path) -> Path:
    """FER2013 with distinct Training images, one of which repeats a PublicTest image."""
    write_fer2013_folders(root, ("PublicTest", "PrivateTest"))
    for i in range(6):
        write_image(root / "Training" / "happy" / f"Training_{i}.jpg", 100 + i)
    shutil.copy(
        root / "PublicTest" / "happy" / "PublicTest_10.jpg",
        root / "Training" / "happy" / "Training_dup.jpg",
    )
    return root


# ---------------------------------------------------------------------------------------------
# Several sources
# ---------------------------------------------------------------------------------------------


def test_plain_str_is_one_source_and_to_dict_is_jsonable(tmp_path: Path) -> None:
    config = replace(BASE, pretext_data=str(_folder(tmp_path / "a", range(3))))
    assert config.pretext_data == (str(tmp_path / "a"),)
    assert replace(BASE, pretext_data=["synthetic-faces"]).pretext_data == ("synthetic-faces",)
    d = json.loads(json.dumps(config.to_dict()))
    assert d["pretext_data"] == [str(tmp_path / "a")]
    assert config.pretext_key()["pretext_data"] == [str(tmp_path / "a")]


def test_several_sources_of_any_size_and_channels_concatenate(tmp_path: Path) -> None:
    grey = _folder(tmp_path / "grey", range(3))
    rgb = _folder(tmp_path / "rgb", range(50, 54), mode="RGB", size=100)
    fer = _fer2013(tmp_path / "fer2013")
    sources = (str(grey), str(rgb), f"fer2013:{fer}", "synthetic-faces")
    config = replace(BASE, pretext_data=sources)
    loaded = load_pretext_sources(config)
    assert loaded is not None
    faces = loaded.faces
    assert loaded.counts == {str(grey): 3, str(rgb): 4, f"fer2013:{fer}": 7, "synthetic-faces": 12}
    assert len(faces) == 3 + 4 + 7 + 12 and tuple(faces.images.shape[1:]) == (1, 32, 32)
    assert faces.label_space == "none" and bool((faces.labels == -1).all())
    # Concatenated in the given order.
    first = load_unlabelled(grey, image_size=32, channels=1)
    assert torch.equal(faces.images[:3], first.images)
    assert "fer2013:Training" in faces.name
    # The synthetic labelled data set has no validation/test images in a folder: nothing dropped.
    assert loaded.dropped_total == 0
    rgb3 = load_pretext_data(replace(config, in_chans=3))
    assert rgb3 is not None and tuple(rgb3.images.shape[1:]) == (3, 32, 32)


def test_limit_of_several_sources_is_a_seeded_draw(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", range(10))
    b = _folder(tmp_path / "b", range(20, 30))
    config = replace(BASE, pretext_data=(str(a), str(b)), pretext_limit=8)
    first, again = load_pretext_data(config), load_pretext_data(config)
    assert first is not None and again is not None
    assert len(first) == 8 and torch.equal(first.images, again.images)
    other = load_pretext_data(replace(config, seed=1))
    assert other is not None and not torch.equal(first.images, other.images)
    # A single source keeps its first pretext_limit images, as before.
    single = load_pretext_data(replace(config, pretext_data=str(a)))
    assert single is not None
    expected = load_unlabelled(a, image_size=32, channels=1, limit=8)
    assert torch.equal(single.images, expected.images)


def test_labelled_source_takes_the_training_split(tmp_path: Path) -> None:
    kaggle = tmp_path / "kaggle"
    write_fer2013_folders(kaggle, ("train", "test"))
    ferplus = write_ferplus(tmp_path / "ferplus", ("Train", "Test"))
    config = replace(BASE, pretext_data=(f"fer2013:{kaggle}", f"ferplus:{ferplus}@Train"))
    loaded = load_pretext_sources(config)
    assert loaded is not None
    # Kaggle's train/ (8 images), FER+ Train (what its vote policy keeps).
    n_train = len(load_ref(DataRef("ferplus", str(ferplus)), "Train", image_size=32, channels=1))
    assert loaded.counts == {f"fer2013:{kaggle}": 8, f"ferplus:{ferplus}@Train": n_train}


def test_no_pretext_stage_loads_nothing(tmp_path: Path) -> None:
    config = replace(BASE, pretext_data=str(_folder(tmp_path / "a", range(2))), variant="none")
    assert load_pretext_sources(config) is None
    assert load_pretext_sources(replace(BASE, pretext_epochs=0)) is None


# ---------------------------------------------------------------------------------------------
# Validation: no validation/test image ever enters the pretext set
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "fer2013:/d/fer2013@PrivateTest",
        "fer2013:/d/fer2013@PublicTest",
        "fer2013:/d/fer2013@test",
        "ferplus:/d/ferplus@Valid",
        "ferplus:/d/ferplus@Test",
        "affectnet:/d/affectnet@validation",
        "rafdb:/d/rafdb@test",
    ],
)
def test_validation_or_test_split_source_is_refused(source: str) -> None:
    with pytest.raises(ValueError) as info:
        replace(BASE, pretext_data=("synthetic-faces", source))
    msg = str(info.value)
    assert msg.startswith(f"MethodConfig.pretext_data[1]={source!r}: ")
    assert "validation/test split" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "sources,fragment",
    [
        ((), "MethodConfig.pretext_data=(): must name at least one source"),
        (("synthetic-faces", "synthetic-faces"), "pretext_data[1]='synthetic-faces': duplicate"),
        (("fer2031:/x",), "pretext_data[0]='fer2031:/x': unknown dataset 'fer2031'"),
        (("occlusion-ferplus:/x",), "not a labelled training set"),
        (("ckplus:/x@all",), "pretext_data[0]='ckplus:/x@all': split 'all' is not a training"),
        (("/no/such/folder",), "pretext_data[0]='/no/such/folder': is neither"),
        (("fer2013",), "for the dataset write fer2013:ROOT"),
        (("fer2013:/no/such/root",), "dataset root /no/such/root not found"),
    ],
)
def test_bad_sources_are_named(sources: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        replace(BASE, pretext_data=sources)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_duplicate_and_nested_folders_are_refused(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", range(2))
    _folder(a / "sub", range(5, 7))
    with pytest.raises(ValueError, match=r"pretext_data\[1\]=.*duplicate of pretext_data\[0\]"):
        replace(BASE, pretext_data=(str(a), str(a) + "/"))
    with pytest.raises(ValueError, match=r"pretext_data\[1\]=.*overlaps pretext_data\[0\]"):
        replace(BASE, pretext_data=(str(a), str(a / "sub")))


def test_folder_holding_a_test_split_is_refused(tmp_path: Path) -> None:
    fer = _fer2013(tmp_path / "fer2013")
    data = DataRef("fer2013", str(fer))
    for source, relation in (
        (fer, "contains"),
        (tmp_path, "contains"),
        (fer / "PrivateTest", "is"),
        (fer / "PrivateTest" / "happy", "lies inside"),
    ):
        with pytest.raises(ValueError) as info:
            replace(BASE, data=data, pretext_data=("synthetic-faces", str(source)))
        msg = str(info.value)
        assert msg.startswith(f"MethodConfig.pretext_data[1]={str(source)!r}: {relation} ")
        assert "Test" in msg and f"of fer2013:{fer}" in msg
    # The training folder itself is fine, and a run without pretext never reads the sources.
    replace(BASE, data=data, pretext_data=str(fer / "Training"))
    replace(BASE, data=data, pretext_data=str(fer), variant="none")


def test_folder_holding_real_occlusion_images_is_refused(tmp_path: Path) -> None:
    write_ferplus(tmp_path / "ferplus", ("Train", "Test"))
    real = (DataRef("occlusion-ferplus", str(tmp_path)),)
    with pytest.raises(ValueError, match=r"pretext_data\[0\]=.*FER2013Test.*occlusion-ferplus"):
        replace(BASE, real_occlusion=real, pretext_data=str(tmp_path / "ferplus"))
    replace(BASE, real_occlusion=real, pretext_data=str(tmp_path / "ferplus" / "FER2013Train"))


def test_pixel_duplicates_of_validation_and_test_images_are_dropped(tmp_path: Path) -> None:
    fer = _fer2013(tmp_path / "fer2013")
    folder = _folder(tmp_path / "faces", range(200, 204))
    shutil.copy(fer / "PrivateTest" / "sad" / "PrivateTest_20.jpg", folder / "dup.jpg")
    sources = (str(folder), f"fer2013:{fer}")
    config = replace(BASE, data=DataRef("fer2013", str(fer)), pretext_data=sources)
    loaded = load_pretext_sources(config)
    assert loaded is not None
    assert loaded.dropped == {str(folder): 1, f"fer2013:{fer}": 1}
    assert loaded.counts == {str(folder): 4, f"fer2013:{fer}": 6}
    public = load_ref(DataRef("fer2013", str(fer)), "PublicTest", image_size=32, channels=1)
    assert not set(image_hashes(public.images)) & set(image_hashes(loaded.faces.images))
    # Synthetic labelled data: nothing to compare with, nothing dropped.
    kept = load_pretext_sources(replace(config, data=DataRef("synthetic-faces")))
    assert kept is not None and kept.dropped_total == 0 and len(kept.faces) == 5 + 7


def test_a_source_made_only_of_test_duplicates_is_an_error(tmp_path: Path) -> None:
    fer = _fer2013(tmp_path / "fer2013")
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(fer / "PublicTest" / "happy" / "PublicTest_10.jpg", copies / "x.jpg")
    config = replace(BASE, data=DataRef("fer2013", str(fer)), pretext_data=str(copies))
    with pytest.raises(ValueError, match=r"pretext source .*copies.*all 1 images are pixel"):
        load_pretext_sources(config)


# ---------------------------------------------------------------------------------------------
# Keys, params, spec, CLI
# ---------------------------------------------------------------------------------------------


def test_cache_key_and_data_id_cover_every_source_in_order(tmp_path: Path) -> None:
    a = str(_folder(tmp_path / "lfw", range(2)))
    b = str(_folder(tmp_path / "vgg", range(10, 12)))
    one = replace(BASE, pretext_data=(a,))
    two = replace(BASE, pretext_data=(a, b))
    swapped = replace(BASE, pretext_data=(b, a))
    keys = {pretext_cache_key(c, "f" * 16) for c in (one, two, swapped)}
    ids = {pretext_data_id(c) for c in (one, two, swapped)}
    assert len(keys) == 3 and len(ids) == 3
    # The fingerprint of the concatenation changes with the order too.
    fa, fb = load_pretext_data(two), load_pretext_data(swapped)
    assert fa is not None and fb is not None and fa.fingerprint() != fb.fingerprint()
    # The same faces under another path share a cache entry (the fingerprint is the identity).
    moved = shutil.copytree(tmp_path / "lfw", tmp_path / "elsewhere" / "lfw")
    assert pretext_cache_key(replace(one, pretext_data=str(moved)), "f" * 16) == (
        pretext_cache_key(one, "f" * 16)
    )
    assert method_params(two)["pretext_data"] == f"{a},{b}"


def test_data_id_names_what_is_excluded(tmp_path: Path) -> None:
    fer = _fer2013(tmp_path / "fer2013")
    a = str(_folder(tmp_path / "a", range(2)))
    plain = replace(BASE, pretext_data=a)
    labelled = replace(plain, data=DataRef("fer2013", str(fer)))
    assert pretext_data_id(plain) != pretext_data_id(labelled)
    # The seed does not change which faces a folder gives: seeds share a fingerprint.
    assert pretext_data_id(labelled) == pretext_data_id(replace(labelled, seed=3))


def test_pretext_spec_sources_round_trip_and_errors(tmp_path: Path) -> None:
    folder = str(_folder(tmp_path / "faces", range(2)))
    assert PretextSpec(data=folder).data == (folder,)
    spec = PretextSpec(data=[folder, "synthetic-faces"])  # type: ignore[arg-type]
    assert spec.data == (folder, "synthetic-faces")
    study = Study("multi", pretext=spec)
    restored = Study.from_dict(json.loads(json.dumps(study.to_dict())))
    assert restored == study and restored.pretext.data == (folder, "synthetic-faces")
    point = {**study.grid_points()[-1]}
    assert study.method_config(point).pretext_data == (folder, "synthetic-faces")
    for data, fragment in (
        ((), "PretextSpec.data=(): must name at least one source"),
        ((folder, folder), "PretextSpec.data[1]="),
        (("synthetic-faces", "fer2013:/x@PublicTest"), "PretextSpec.data[1]='fer2013:/x@Public"),
        (("fer2031:/x",), "PretextSpec.data[0]='fer2031:/x': unknown dataset"),
        (("",), "PretextSpec.data[0]=''"),
    ):
        with pytest.raises(StudyError) as info:
            PretextSpec(data=data)
        assert fragment in str(info.value), str(info.value)
    with pytest.raises(StudyError, match=r"Study.pretext.data\[1\]='/no/such/folder'"):
        Study("s", pretext=PretextSpec(data=(folder, "/no/such/folder")))


def test_cli_pretext_data_is_repeatable(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["train"]).pretext_data is None
    args = parser.parse_args(["train", "--pretext-data", "a", "--pretext-data", "b"])
    assert args.pretext_data == ["a", "b"]
    argv = ["train", "--smoke", "--pretext-data", "synthetic-faces"]
    assert main([*argv, "--pretext-data", "ferplus:/x@Test"]) == 2
    assert "MethodConfig.pretext_data[1]='ferplus:/x@Test'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------


def _real_root() -> Path:
    env = os.environ.get("OCCSTUDY_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "fer2013" / "duplicates_pixel_identical.tsv").is_file():
        pytest.skip(f"real FER2013 not found at {root} (set OCCSTUDY_DATA)")
    return root


@pytest.mark.data
def test_real_fer2013_training_loses_its_test_duplicates() -> None:
    root = _real_root()
    fer = root / "fer2013"
    # Training images in a duplicate group that also holds a PublicTest/PrivateTest image.
    expected: set[str] = set()
    for line in (fer / "duplicates_pixel_identical.tsv").read_text().splitlines():
        group = line.split()
        if any(p.startswith(("PublicTest", "PrivateTest")) for p in group):
            expected |= {p for p in group if p.startswith("Training")}
    config = MethodConfig(
        data=DataRef("fer2013", str(fer)), pretext_data=f"fer2013:{fer}", image_size=48
    )
    loaded = load_pretext_sources(config)
    assert loaded is not None
    assert loaded.dropped == {f"fer2013:{fer}": len(expected)}
    kept = {str(Path(p).resolve().relative_to(fer.resolve())) for p in loaded.faces.paths}
    assert not kept & expected
