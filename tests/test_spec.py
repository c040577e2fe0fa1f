"""Study definitions: validation, grid expansion, mapping to MethodConfig, study files."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from occstudy.pipeline import MethodConfig
from occstudy.study import (
    PARAMS,
    FinetuneSpec,
    Fixed,
    Grid,
    LogUniform,
    PretextSpec,
    Resources,
    SearchSpec,
    Study,
    StudyError,
    TestSpec,
    Uniform,
    data_root,
    load_study,
)
from occstudy.study.space import SearchSpace

STUDIES = sorted((Path(__file__).parents[1] / "studies").glob("*.py"))
DATA_SUBFOLDERS = ("lfw", "fer2013", "ferplus", "ckplus", "vggface2")
#: Grid points per study file (variants x seeds x label fractions x folds x Grid values).
GRID_SIZES = {
    "quickstart": 4,
    "paper_ablation": 4 * 3,
    "paper_ablation_cpu": 4 * 3,
    "paper_ablation_gpu": 4 * 3,
    "lambda_sensitivity": 4 * 3,
    "hpo": 1,
    "ckplus_10fold": 4 * 10,
    "label_efficiency": 4 * 5 * 3,
    "label_efficiency_cpu": 2 * 4 * 3,
    "fer2013_best": 1,
    "ferplus": 4 * 3,
}


def _complete(study: Study, point: dict) -> dict:
    """A grid point plus a value (the lower bound) for every sampled param."""
    return {**point, **{k: p.low for k, p in study.sampled_params().items()}}


def test_defaults_are_valid_and_the_papers_settings() -> None:
    study = Study("defaults")
    assert study.variants == ("none", "ss", "mask", "ss+mask")
    assert dict(study.search_space) == {
        "lam": Fixed(0.2),
        "tau": Fixed(2.0),
        "lr": Fixed(1e-4),
        "pretext_lr": Fixed(1e-4),
        "arch": Fixed("resnet34"),
    }
    assert study.sampled_params() == {}
    assert not study.resources.use_ray_train
    assert Resources(workers=2).use_ray_train and Resources(gpus_per_worker=0.5).use_ray_train
    assert Resources(ray_train=True).use_ray_train and not Resources().use_ray_train
    hash(study)  # frozen all the way down
    assert pickle.loads(pickle.dumps(study)) == study  # shipped to Ray workers


def test_partial_search_space_takes_defaults_and_is_immutable() -> None:
    study = Study("s", search_space={"lam": Grid((0.2, 2))})
    assert list(study.search_space) == list(PARAMS)
    assert study.search_space["lam"] == Grid((0.2, 2.0))
    assert study.search_space["tau"] == Fixed(2.0)
    with pytest.raises(TypeError):
        study.search_space["lam"] = Fixed(1.0)  # type: ignore[index]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Study("s", search_space={"gamma": Fixed(1)}), "Study.search_space['gamma']"),
        (lambda: Study("s", search_space={"tau": Fixed(0)}), "Study.search_space['tau']"),
        (lambda: Study("s", search_space={"tau": Grid((1, -2))}), "Study.search_space['tau']"),
        (
            lambda: Study(
                "s", search_space={"tau": Uniform(0, 1)}, search=SearchSpec(algorithm="tpe")
            ),
            "Study.search_space['tau']",
        ),
        (lambda: Study("s", search_space={"lr": Fixed(0)}), "Study.search_space['lr']"),
        (lambda: Study("s", search_space={"pretext_lr": Fixed(-1)}), "['pretext_lr']"),
        (lambda: Study("s", search_space={"lam": Fixed(-0.1)}), "Study.search_space['lam']"),
        (lambda: Study("s", search_space={"lam": 0.2}), "Study.search_space['lam']"),  # type: ignore[dict-item]
        (lambda: Study("s", variants=()), "Study.variants: empty"),
        (lambda: Study("s", variants=("ss", "jigsaw")), "Study.variants[1]"),
        (lambda: Study("s", variants=("ss", "ss")), "Study.variants"),
        (lambda: Study("s", seeds=()), "Study.seeds: empty"),
        (lambda: Study("s", seeds=(0, 0)), "Study.seeds"),
        (lambda: Study("s", label_fractions=(0.0,)), "Study.label_fractions[0]"),
        (lambda: Study("s", label_fractions=(0.5, 1.5)), "Study.label_fractions[1]"),
        (lambda: Study("s", label_fractions=(0.5, 0.5)), "Study.label_fractions"),
        (lambda: Study("s", search_space={"lam": Uniform(0, 1)}), "Study.search.algorithm"),
        (lambda: Study("s", search=SearchSpec(algorithm="tpe")), "Study.search.algorithm"),
        (lambda: Study("s", image_size=16), "Study.image_size"),
        (lambda: Study("s", stem="vit"), "Study.stem"),
        (lambda: Study("s", in_chans=2), "Study.in_chans"),
        (lambda: Study("bad name/"), "Study.name"),
        (lambda: Study("s", pretext=PretextSpec(data="/no/such/folder")), "Study.pretext.data"),
        (
            lambda: Study(
                "s",
                finetune=FinetuneSpec(epochs=1),
                search_space={"lr": LogUniform(1e-5, 1e-3)},
                search=SearchSpec(algorithm="tpe", scheduler="asha", grace_period=2),
            ),
            "Study.search.grace_period",
        ),
        (lambda: SearchSpec(algorithm="bohb"), "SearchSpec.algorithm"),
        (lambda: SearchSpec(scheduler="pbt"), "SearchSpec.scheduler"),
        (lambda: SearchSpec(num_samples=4), "SearchSpec.num_samples"),
        (lambda: SearchSpec(metric="test.clean.acc"), "SearchSpec.metric"),
        (lambda: SearchSpec(mode="up"), "SearchSpec.mode"),
        (lambda: TestSpec(protocols=("clean", "r12")), "TestSpec.protocols[1]"),
        (lambda: TestSpec(protocols=(), real=()), "TestSpec: empty"),
        (lambda: TestSpec(real=("fer2013:/x",)), "TestSpec.real[0]"),
        (lambda: TestSpec(real=("occlusion-ferplus",)), "TestSpec.real[0]"),
        (lambda: PretextSpec(policy="scarves"), "PretextSpec.policy"),
        (lambda: PretextSpec(epochs=0), "PretextSpec.epochs"),
        (lambda: PretextSpec(limit=0), "PretextSpec.limit"),
        (lambda: FinetuneSpec(policy="scarves"), "FinetuneSpec.policy"),
        (lambda: FinetuneSpec(data="fer2031:/x"), "FinetuneSpec.data='fer2031:/x'"),
        (lambda: FinetuneSpec(data="occlusion-ferplus:/x"), "FinetuneSpec.data"),
        (lambda: FinetuneSpec(data="fer2013"), "FinetuneSpec.data"),  # no root
        (lambda: FinetuneSpec(occlusion_prob=1.5), "FinetuneSpec.occlusion_prob"),
        (lambda: FinetuneSpec(folds=10), "FinetuneSpec.folds"),  # not a fold dataset
        (lambda: FinetuneSpec(data="ckplus:/x", folds=1), "FinetuneSpec.folds"),
        (lambda: Resources(workers=0), "Resources.workers"),
        (lambda: Resources(cpus_per_worker=0), "Resources.cpus_per_worker"),
        (lambda: Resources(gpus_per_worker=-1), "Resources.gpus_per_worker"),
        (lambda: Resources(max_concurrent=0), "Resources.max_concurrent"),
        (lambda: Resources(ray_train="yes"), "Resources.ray_train"),
        (lambda: Grid(()), "Grid.values: empty"),
        (lambda: Grid((1, 1)), "Grid.values"),
        (lambda: Uniform(2, 1), "Uniform.high"),
        (lambda: LogUniform(0, 1), "LogUniform.low"),
        (lambda: Fixed(float("nan")), "Fixed.value"),
    ],
)
def test_invalid_values_raise_study_error_naming_the_field(make, fragment: str) -> None:
    with pytest.raises(StudyError) as info:
        make()
    assert fragment in str(info.value)


def test_error_message_format() -> None:
    with pytest.raises(StudyError, match=r"^Study.search_space\['gamma'\]: unknown parameter; "):
        Study("s", search_space={"gamma": Fixed(1)})
    with pytest.raises(StudyError, match=r"^FinetuneSpec.data='fer2031:/x': unknown dataset"):
        FinetuneSpec(data="fer2031:/x")


def test_pretext_folder_only_checked_with_a_pretext_variant(tmp_path: Path) -> None:
    Study("s", variants=("none",), pretext=PretextSpec(data=str(tmp_path / "missing")))
    Study("s", pretext=PretextSpec(data=str(tmp_path)))
    # A pretext variant later in the list is checked too, not only the first grid point's.
    with pytest.raises(StudyError, match="Study.pretext.data"):
        Study("s", variants=("none", "ss"), pretext=PretextSpec(data=str(tmp_path / "missing")))


def test_recipe_sets_the_default_search_space_and_an_arch_grid_names_trials() -> None:
    from occstudy.recipes import FAST

    fast = Study("f", recipe="fast")
    assert fast.search_space["lr"] == Fixed(FAST.lr)
    assert fast.search_space["pretext_lr"] == Fixed(FAST.pretext_lr)
    assert fast.search_space["arch"] == Fixed(FAST.arch)
    config = fast.method_config(_complete(fast, fast.grid_points()[0]))
    assert (config.recipe, config.arch, config.schedule, config.tta_flip) == (
        "fast",
        FAST.arch,
        FAST.schedule,
        FAST.tta_flip,
    )
    both = Study("a", variants=("none",), search_space={"arch": Grid(("resnet18", "resnet34"))})
    points = both.grid_points()
    assert [p["arch"] for p in points] == ["resnet18", "resnet34"]
    names = [both.trial_name(p) for p in points]
    assert len(set(names)) == 2 and all(p["arch"] in n for p, n in zip(points, names, strict=True))
    assert both.method_config(points[1]).arch == "resnet34"
    with pytest.raises(StudyError, match="arch"):
        Study("b", search_space={"arch": Grid(("resnet18", "vgg16"))})


def test_grid_points_count_order_and_determinism() -> None:
    study = Study("s", seeds=(0, 1, 2), search_space={"lam": Grid((0.2, 2))})
    points = study.grid_points()
    assert len(points) == 4 * 3 * 2
    assert points == study.grid_points()
    assert points[0] == {
        "variant": "none",
        "seed": 0,
        "label_fraction": 1.0,
        "lam": 0.2,
        "tau": 2.0,
        "lr": 1e-4,
        "pretext_lr": 1e-4,
        "arch": "resnet34",
    }
    assert points[1]["lam"] == 2.0  # the last dimension varies fastest
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)


def test_sampled_params_are_not_grid_dimensions() -> None:
    study = Study(
        "s",
        variants=("ss+mask",),
        label_fractions=(0.1, 1.0),
        search_space={"lam": Grid((0.2, 2)), "lr": LogUniform(1e-5, 1e-3), "tau": Uniform(1, 3)},
        search=SearchSpec(algorithm="tpe", num_samples=4),
    )
    assert study.sampled_params() == {"tau": Uniform(1.0, 3.0), "lr": LogUniform(1e-5, 1e-3)}
    points = study.grid_points()
    assert len(points) == 2 * 2
    assert all("lr" not in p and "tau" not in p for p in points)
    with pytest.raises(StudyError, match="missing tau, lr"):
        study.method_config(points[0])


def test_folds_are_a_grid_dimension_passed_as_loader_options() -> None:
    study = Study("ck", finetune=FinetuneSpec(data="ckplus:/data/ckplus", folds=10))
    points = study.grid_points()
    assert len(points) == 4 * 10
    assert [p["fold"] for p in points[:10]] == list(range(10))
    config = study.method_config(points[3])
    assert config.data.name == "ckplus" and config.data.root == "/data/ckplus"
    assert dict(config.data.options) == {"fold": 3, "n_folds": 10}
    assert "_k3_" in study.trial_name(points[3])


def test_trial_names_unique_stable_and_safe() -> None:
    study = Study(
        "s",
        seeds=(0, 1),
        label_fractions=(0.05, 1.0),
        search_space={"lam": Grid((0.02, 0.2, 2, 20, 1e6)), "tau": Grid((0.5, 2))},
    )
    names = [study.trial_name(p) for p in study.grid_points()]
    assert len(set(names)) == len(names)
    assert names == [study.trial_name(p) for p in study.grid_points()]
    for name in names:
        assert "+" not in name and " " not in name and "/" not in name
    point = {"variant": "ss+mask", "seed": 0, "label_fraction": 1.0, "lam": 0.2, "tau": 2.0}
    assert study.trial_name(point) == "ss-mask_s0_f1_lam0.2_tau2_lr0.0001_plr0.0001"


def test_grid_label_names_the_point_without_sampled_params() -> None:
    study = Study(
        "g",
        search=SearchSpec(algorithm="tpe", num_samples=4),
        search_space={"lam": Grid((0.2, 2.0)), "lr": LogUniform(1e-5, 1e-2)},
    )
    labels = [study.grid_label(p) for p in study.grid_points()]
    assert len(set(labels)) == len(labels) == 4 * 2
    assert labels[1] == "none_s0_f1_lam2_tau2_plr0.0001"
    assert all("_lr" not in label for label in labels)


def test_method_config_maps_fields() -> None:
    study = Study(
        "m",
        pretext=PretextSpec(epochs=3, limit=500, policy="squares"),
        finetune=FinetuneSpec(
            epochs=4,
            balanced=True,
            policy="objects",
            occlusion_prob=0.3,
            train_limit=700,
            synthetic_size=900,
        ),
        test=TestSpec(protocols=("clean", "r8"), real=("occlusion-ferplus:/data",)),
        label_fractions=(0.25,),
        image_size=64,
        batch_size=32,
        stem="small",
        in_chans=3,
    )
    point = {"variant": "mask", "seed": 7, "label_fraction": 0.25, "lam": 2.0, "tau": 0.5}
    config = study.method_config({**point, "lr": 3e-4, "pretext_lr": 5e-4})
    assert isinstance(config, MethodConfig)
    expected = {
        "variant": "mask",
        "seed": 7,
        "label_fraction": 0.25,
        "lam": 2.0,
        "tau": 0.5,
        "lr": 3e-4,
        "pretext_lr": 5e-4,
        "pretext_data": ("synthetic-faces",),
        "pretext_epochs": 3,
        "pretext_limit": 500,
        "pretext_policy": "squares",
        "epochs": 4,
        "balanced": True,
        "finetune_policy": "objects",
        "occlusion_prob": 0.3,
        "train_limit": 700,
        "synthetic_size": 900,
        "protocols": ("clean", "r8"),
        "image_size": 64,
        "batch_size": 32,
        "stem": "small",
        "in_chans": 3,
    }
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.data.name == "synthetic-faces"
    assert [(r.name, r.root) for r in config.real_occlusion] == [("occlusion-ferplus", "/data")]
    # Fixed params may be left out of the point; unknown keys are refused.
    assert study.method_config(point).lr == 1e-4
    with pytest.raises(StudyError, match=r"point\['gamma'\]"):
        study.method_config({**point, "gamma": 1.0})


def test_to_dict_from_dict_round_trip() -> None:
    study = Study(
        "rt",
        finetune=FinetuneSpec(data="ckplus:/data/ckplus", folds=10, epochs=6),
        test=TestSpec(protocols=("clean", "eye"), real=("occlusion-ferplus:/data",)),
        variants=("ss", "ss+mask"),
        seeds=(0, 1),
        label_fractions=(0.1, 1.0),
        search_space={
            "lam": Grid((0.2, 2)),
            "tau": LogUniform(0.1, 5),
            "lr": Uniform(1e-5, 1e-3),
        },
        search=SearchSpec(algorithm="tpe", num_samples=8, scheduler="asha"),
        resources=Resources(workers=2, gpus_per_worker=0.5, max_concurrent=3),
        description="round trip",
    )
    d = study.to_dict()
    restored = Study.from_dict(json.loads(json.dumps(d)))
    assert restored == study
    assert restored.to_dict() == d
    assert d["search_space"]["tau"] == {"kind": "loguniform", "low": 0.1, "high": 5.0}
    with pytest.raises(StudyError, match="Study.bogus"):
        Study.from_dict({**d, "bogus": 1})
    with pytest.raises(StudyError, match="Study.search.bogus"):
        Study.from_dict({**d, "search": {**d["search"], "bogus": 1}})


def test_smoke_shrinks() -> None:
    study = Study(
        "big",
        pretext=PretextSpec(epochs=10),
        finetune=FinetuneSpec(epochs=10, synthetic_size=6000),
        seeds=(0, 1, 2),
        label_fractions=(0.1, 1.0),
        search_space={"lr": LogUniform(1e-5, 1e-3)},
        search=SearchSpec(algorithm="tpe", num_samples=16, scheduler="asha", grace_period=3),
    )
    small = study.smoke()
    assert small.name == "big-smoke"
    assert small.pretext.epochs == 1 and small.finetune.epochs == 1
    assert small.pretext.limit == 256 and small.finetune.train_limit == 256
    assert small.finetune.synthetic_size == 300
    assert small.seeds == (0,) and small.label_fractions == (1.0,)
    assert small.search.num_samples == 2 and small.search.grace_period == 1
    assert small.finetune.data == study.finetune.data and small.variants == study.variants
    tiny = replace(study, pretext=PretextSpec(limit=100)).smoke()
    assert tiny.pretext.limit == 100


def test_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OCCSTUDY_DATA", raising=False)
    with pytest.raises(StudyError, match="OCCSTUDY_DATA"):
        data_root("lfw")
    monkeypatch.setenv("OCCSTUDY_DATA", str(tmp_path))
    assert data_root("lfw") == str(tmp_path / "lfw")
    assert data_root() == str(tmp_path)


def test_studies_folder_holds_the_known_studies() -> None:
    assert {p.stem for p in STUDIES} == set(GRID_SIZES)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_study_file_loads(
    path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for sub in DATA_SUBFOLDERS:
        (tmp_path / sub).mkdir()
    monkeypatch.setenv("OCCSTUDY_DATA", str(tmp_path))
    monkeypatch.delenv("OCCSTUDY_PRETEXT_DATA", raising=False)
    study = load_study(path)
    assert study.name == path.stem
    points = study.grid_points()
    assert len(points) == GRID_SIZES[path.stem]
    names = {study.trial_name(_complete(study, p)) for p in points}
    assert len(names) == len(points)
    study.method_config(_complete(study, points[-1]))
    assert Study.from_dict(study.to_dict()) == study
    assert study.smoke().grid_points()


def test_quickstart_loads_without_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCCSTUDY_DATA", raising=False)
    study = load_study(Path(__file__).parents[1] / "studies" / "quickstart.py")
    assert study.finetune.data == "synthetic-faces" and study.pretext.data == ("synthetic-faces",)
    assert len(study.grid_points()) == 4


def test_load_study_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.py"
    with pytest.raises(StudyError, match="missing.py"):
        load_study(missing)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(StudyError, match="empty.py: defines neither"):
        load_study(empty)
    broken = tmp_path / "broken.py"
    broken.write_text("from occstudy.study import Study\nstudy = Study('b', seeds=())\n")
    with pytest.raises(StudyError, match=r"broken.py: Study.seeds: empty"):
        load_study(broken)
    crash = tmp_path / "crash.py"
    crash.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(StudyError, match="crash.py: RuntimeError: boom"):
        load_study(crash)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("study = 3\n")
    with pytest.raises(StudyError, match="wrong.py: `study` is a int"):
        load_study(wrong)


def test_load_study_make_study_and_no_module_leak(tmp_path: Path) -> None:
    import sys

    f = tmp_path / "factory.py"
    f.write_text(
        "from occstudy.study import Study\n\ndef make_study():\n    return Study('factory')\n"
    )
    before = set(sys.modules)
    assert load_study(f).name == "factory"
    assert set(sys.modules) - before == set()


@pytest.mark.parametrize(
    "resources,node_cpus,node_gpus,want",
    [
        (Resources(), 2, 0, 2),  # few cores: one trial with all of them
        (Resources(), 64, 0, 8),  # capped at AUTO_MAX_CPUS
        (Resources(workers=2), 2, 0, 1),  # a trial's share is split among its workers
        (Resources(workers=2), 16, 0, 4),
        (Resources(max_concurrent=2), 2, 0, 1),
        (Resources(max_concurrent=3, workers=2), 16, 0, 2),
        (Resources(gpus_per_worker=0.25), 16, 1, 4),  # 4 GPU trials share 16 CPUs
        (Resources(gpus_per_worker=1, workers=2), 16, 8, 2),
        (Resources(cpus_per_worker=3), 64, 0, 3),  # set by the study: kept
    ],
)
def test_resources_resolved_shares_a_node(
    resources: Resources, node_cpus: int, node_gpus: float, want: int
) -> None:
    got = resources.resolved(node_cpus, node_gpus)
    assert got.cpus_per_worker == want == got.cpus
    assert Resources().cpus == 1  # undecided before the driver resolves it


def test_another_recipe_brings_its_own_defaults_but_keeps_the_studys_entries() -> None:
    from occstudy.recipes import FAST

    paper = Study("x", search_space={"lam": Fixed(2.0)})
    fast = replace(paper, recipe="fast")
    assert fast.search_space["lr"] == Fixed(FAST.lr) and fast.search_space["lam"] == Fixed(2.0)
    config = fast.method_config(_complete(fast, fast.grid_points()[0]))
    assert (config.lr, config.pretext_lr, config.arch) == (FAST.lr, FAST.pretext_lr, FAST.arch)
    own = replace(Study("y", search_space={"lr": Fixed(5e-4)}), recipe="fast")
    assert own.search_space["lr"] == Fixed(5e-4)
    d = fast.to_dict()
    assert set(d["search_space"]) == {"lam"}
    d["recipe"] = "paper"
    assert Study.from_dict(d).search_space["lr"] == Fixed(1e-4)
    assert pickle.loads(pickle.dumps(fast)).search_space.given == ("lam",)


def test_recipe_in_a_study_dict_is_checked() -> None:
    from occstudy.recipes import FAST

    d = Study("r", recipe=replace(FAST, name="mine", lr=1e-3)).to_dict()
    assert Study.from_dict(d).recipe == replace(FAST, name="mine", lr=1e-3)
    bad = {**d, "recipe": {**d["recipe"], "lr": -1.0}}
    with pytest.raises(StudyError, match="Study.recipe: .*lr=-1.0"):
        Study.from_dict(bad)
    nameless = {**d, "recipe": {k: v for k, v in d["recipe"].items() if k != "name"}}
    with pytest.raises(StudyError, match="Study.recipe"):
        Study.from_dict(nameless)
    with pytest.raises(ValueError, match="Recipe name=''"):
        replace(FAST, name="")


def test_search_space_unpickles_the_format_without_given() -> None:
    space = SearchSpace.__new__(SearchSpace)
    space.__setstate__({"lam": Fixed(0.2), "lr": Fixed(1e-3)})
    assert dict(space) == {"lam": Fixed(0.2), "lr": Fixed(1e-3)} and space.given == ("lam", "lr")
