import json
from dataclasses import fields, replace

import pytest

from occstudy.data import synthetic_faces
from occstudy.pipeline import DataRef, Hooks, MethodConfig, holdout_split, run_method
from occstudy.recipes import RECIPE_FIELDS

TINY = MethodConfig(
    image_size=32,
    synthetic_size=96,
    pretext_limit=64,
    batch_size=16,
    pretext_epochs=2,
    epochs=2,
    max_steps=2,
    protocols=("clean", "r16"),
    device="cpu",
)


class Interrupt(Exception):
    pass


def _stop_after(stage: str, epoch: int) -> Hooks:
    def on_epoch(s: str, e: int, _m) -> None:
        if (s, e) == (stage, epoch):
            raise Interrupt

    return Hooks(on_epoch=on_epoch)


def test_tiny_run_end_to_end(tmp_path) -> None:
    result = run_method(TINY, out_dir=tmp_path)
    summary = result.summary()
    assert set(summary) >= {
        "test.clean.acc",
        "test.r16.acc",
        "test.r16.mask_iou",
        "test.clean.macro_f1",
    }
    assert len(result.pretext_history) == 2 and len(result.finetune_history) == 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["clean"]["acc"] == summary["test.clean.acc"]
    assert (tmp_path / "pretext.pt").exists() and (tmp_path / "finetune" / "best.pt").exists()


def test_interrupted_run_resumes_to_the_same_result(tmp_path) -> None:
    config = replace(TINY, variant="ss")
    straight = run_method(config, out_dir=tmp_path / "a")
    for stage, epoch in (("pretext", 0), ("finetune", 0)):
        with pytest.raises(Interrupt):
            run_method(config, out_dir=tmp_path / "b", hooks=_stop_after(stage, epoch))
    resumed = run_method(config, out_dir=tmp_path / "b")
    assert resumed.summary() == straight.summary()
    assert [h["loss"] for h in resumed.finetune_history] == [
        h["loss"] for h in straight.finetune_history
    ]


def test_resume_refuses_another_configuration(tmp_path) -> None:
    run_method(replace(TINY, variant="mask", epochs=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"lam: 0.2 -> 2.0"):
        run_method(replace(TINY, variant="mask", lam=2.0, epochs=1), out_dir=tmp_path)


def test_interrupted_fast_recipe_run_resumes_to_the_same_result(tmp_path) -> None:
    # The cosine schedule is a function of the global step: a resumed run continues it.
    base = {f.name: getattr(TINY, f.name) for f in fields(TINY)}
    unset = dict.fromkeys(RECIPE_FIELDS)
    config = MethodConfig(
        **{**base, **unset, "recipe": "fast", "variant": "none", "batch_size": 16}
    )
    assert config.schedule == "cosine"
    straight = run_method(config, out_dir=tmp_path / "a")
    with pytest.raises(Interrupt):
        run_method(config, out_dir=tmp_path / "b", hooks=_stop_after("finetune", 0))
    resumed = run_method(config, out_dir=tmp_path / "b")
    assert [h["loss"] for h in resumed.finetune_history] == [
        h["loss"] for h in straight.finetune_history
    ]
    # More epochs would stretch the schedule under the finished ones: refused.
    with pytest.raises(ValueError, match=r"epochs: 2 -> 3"):
        run_method(replace(config, epochs=3), out_dir=tmp_path / "b")


def test_variant_none_has_no_pretext() -> None:
    result = run_method(replace(TINY, variant="none", epochs=1))
    assert result.pretext_history == [] and "pretext" not in result.seconds
    assert "test.r16.mask_iou" not in result.summary()


@pytest.mark.parametrize(
    "change,field",
    [
        ({"variant": "ssmask"}, "variant"),
        ({"tau": 0.0}, "tau"),
        ({"lam": -1.0}, "lam"),
        ({"protocols": ("clean", "r99")}, "protocols"),
        ({"pretext_policy": "hats"}, "pretext_policy"),
        ({"label_fraction": 0.0}, "label_fraction"),
        ({"pretext_data": "/no/such/folder"}, r"pretext_data\[0\]"),
        ({"pretext_data": ()}, "pretext_data"),
        ({"epochs": 0}, "epochs"),
        ({"pretext_epochs": -1}, "pretext_epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"lr": float("inf")}, "lr"),
    ],
)
def test_invalid_config_names_the_field(change, field) -> None:
    with pytest.raises(ValueError, match=f"MethodConfig.{field}="):
        replace(TINY, **change)


def test_dataref_parse_and_errors() -> None:
    ref = DataRef.parse("occlusion-ferplus:/data@test")
    assert (ref.name, ref.root, ref.split) == ("occlusion-ferplus", "/data", "test")
    assert DataRef.parse("synthetic-faces").root is None
    with pytest.raises(ValueError, match="unknown dataset 'fer2031'"):
        DataRef.parse("fer2031:/x")
    with pytest.raises(ValueError, match="needs a root"):
        DataRef.parse("fer2013")


def test_holdout_split_is_stratified_and_disjoint() -> None:
    ds = synthetic_faces(140, seed=0, image_size=32)
    rest, held = holdout_split(ds, 0.1, seed=0)
    assert len(rest) + len(held) == len(ds)
    assert not set(rest.paths or []) & set(held.paths or []) or not rest.paths
    for c, n in held.class_counts().items():
        assert n >= 1, c


def test_dataref_options_round_trip() -> None:
    ref = DataRef("ckplus", "/data/ck", options=(("fold", 3), ("n_folds", 10)))
    assert str(ref) == "ckplus:/data/ck?fold=3&n_folds=10"
    assert DataRef.parse(str(ref)) == ref


def test_quickstart_recipe_clearly_beats_chance() -> None:
    """A short run of the quick start's recipe learns the synthetic faces (7 classes), and
    covering the mouth costs accuracy. Not timed; about 20 s on 2 cores."""
    from pathlib import Path

    from occstudy.study import load_study

    study = load_study(Path(__file__).parents[1] / "studies" / "quickstart.py")
    point = next(p for p in study.grid_points() if p["variant"] == "none")
    config = replace(
        study.method_config(point),
        device="cpu",
        synthetic_size=1500,
        train_limit=None,
        protocols=("clean", "mouth"),
    )
    result = run_method(config)
    clean, mouth = result.results["clean"].acc, result.results["mouth"].acc
    chance = 1 / 7
    assert clean >= 2.5 * chance, (clean, result.finetune_history)
    assert mouth < clean


def test_too_few_pretext_faces_for_a_batch_is_an_error() -> None:
    config = replace(TINY, variant="ss", pretext_limit=10)
    with pytest.raises(ValueError, match=r"10 face\(s\), fewer than one batch \(batch_size=16"):
        run_method(config)


def test_a_class_without_training_images_is_an_error(tmp_path) -> None:
    from data_fixtures import write_image

    root = tmp_path / "fer"
    classes = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    for split in ("Training", "PublicTest", "PrivateTest"):
        for k, cls in enumerate(classes):
            if split == "Training" and cls == "disgust":
                continue  # no folder at all (an empty one is the loader's error)
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                write_image(root / split / cls / f"{k}{i}.png", 20 * k + i)
    config = replace(TINY, variant="none", data=DataRef.parse(f"fer2013:{root}"))
    with pytest.raises(ValueError, match=r"no image of class\(es\) \['disgust'\]"):
        run_method(config)
