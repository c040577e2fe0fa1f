"""The torch-free core: the vocabulary is defined once and the light modules stay light."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from occstudy import method as M

ROOT = Path(__file__).parents[1]


def test_light_modules_and_every_study_file_import_neither_torch_nor_ray_train(
    tmp_path: Path,
) -> None:
    # A fresh interpreter: this test process has long imported torch.
    for sub in ("lfw", "fer2013", "ferplus", "ckplus", "rafdb", "affectnet", "vggface2"):
        (tmp_path / sub).mkdir()
    code = textwrap.dedent(
        f"""
        import sys, time
        t = time.perf_counter()
        import occstudy.method, occstudy.study, occstudy.study.layout, occstudy.study.status
        import occstudy.cli
        from occstudy.study import load_study
        studies = sorted(__import__("pathlib").Path({str(ROOT / "studies")!r}).glob("*.py"))
        for path in studies:
            study = load_study(path)
            for point in study.grid_points()[:1]:
                low = {{k: p.low for k, p in study.sampled_params().items()}}
                study.method_config({{**point, **low}})
        heavy = [m for m in ("torch", "torchvision", "ray.train", "ray.tune") if m in sys.modules]
        print(len(studies), round(time.perf_counter() - t, 2), heavy)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"OCCSTUDY_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    n, _seconds, heavy = out.stdout.split(" ", 2)
    assert int(n) >= 8
    assert heavy.strip() == "[]"


def test_every_variant_says_what_it_trains() -> None:
    from occstudy.losses import PRETEXT_VARIANTS, VARIANTS
    from occstudy.models import heads_for_pretext

    assert VARIANTS == M.VARIANTS == ("none", "ss", "mask", "ss+mask")
    assert PRETEXT_VARIANTS == ("ss", "mask", "ss+mask")
    assert not M.get_variant("none").has_pretext
    for name in PRETEXT_VARIANTS:
        v = M.get_variant(name)
        assert heads_for_pretext(name) == v.heads
        assert ("projector" in v.heads) == v.uses_ss and ("mask" in v.heads) == v.uses_mask
    # τ only where L_SS is trained; λ only where it weighs L_mask against L_SS.
    assert M.get_variant("ss").irrelevant_params == ("lam",)
    assert M.get_variant("mask").irrelevant_params == ("lam", "tau")
    assert M.get_variant("ss+mask").irrelevant_params == ()
    assert "arch" in M.get_variant("mask").pretext_params
    assert "lr" not in M.get_variant("ss+mask").pretext_params
    with pytest.raises(ValueError, match="unknown variant 'both'"):
        M.get_variant("both")


def test_names_agree_with_the_modules_that_implement_them() -> None:
    from occstudy import data as D
    from occstudy.occlusion import PROTOCOLS, make_policy

    assert set(D.dataset_names()) == set(M.DATASETS)
    assert PROTOCOLS == M.SYNTHETIC_PROTOCOLS and M.PROTOCOLS[0] == "clean"
    for name in M.POLICIES:
        make_policy(name)
    with pytest.raises(ValueError):
        make_policy("nope")
    assert set(M.DEFAULT_SPLITS) <= set(M.DATASETS)
    assert set(M.REAL_OCCLUSION_SETS) <= set(M.DATASETS)


def test_parameters_are_the_single_source_of_defaults_and_bounds() -> None:
    from occstudy.cli import build_parser
    from occstudy.study.space import DEFAULT_SEARCH_SPACE, PARAMS

    assert tuple(M.PARAMETERS) == PARAMS
    config = M.MethodConfig()
    args = build_parser().parse_args(["train"])
    for name in ("lam", "tau"):
        default = M.PARAMETERS[name].default
        assert getattr(config, name) == default == getattr(args, name)
        assert DEFAULT_SEARCH_SPACE[name].bounds() == (default, default)
    assert M.mlflow_param_name("lam") == "lambda" and M.mlflow_param_name("seed") == "seed"
    tau = M.PARAMETERS["tau"]
    assert tau.problem(0.0) == "must be > 0" and tau.problem(0.5) is None
    assert M.PARAMETERS["lam"].problem(0.0) is None
    assert M.PARAMETERS["arch"].problem("vgg") is not None
    # A NaN or an infinite λ passed every check before (NaN < 0 is False).
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match=r"MethodConfig\.lam=.*must be finite"):
            M.MethodConfig(lam=bad)
    with pytest.raises(ValueError, match=r"MethodConfig\.pretext_policy='x'.*squares"):
        M.MethodConfig(pretext_policy="x")


def _reference_key(config: M.MethodConfig, fingerprint: str) -> str:
    """The pretext cache key as written before the vocabulary moved (cache.py's formula)."""
    irrelevant = {"ss": ("lam",), "mask": ("lam", "tau"), "ss+mask": ()}[config.variant]
    key = {k: v for k, v in config.pretext_key().items() if k not in irrelevant}
    key["pretext_data"] = [M.pretext_source_label(s) for s in config.pretext_data]
    key["data"] = fingerprint
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return f"{config.variant.replace('+', '-')}-{hashlib.sha256(blob).hexdigest()[:16]}"


@pytest.mark.parametrize("variant", ["ss", "mask", "ss+mask"])
def test_pretext_cache_keys_are_unchanged(variant: str) -> None:
    config = M.MethodConfig(variant=variant, recipe="fast", lam=0.5, tau=1.0)
    assert M.pretext_cache_key(config, "abc") == _reference_key(config, "abc")
    other_lam = replace(config, lam=0.1)
    assert (M.pretext_cache_key(other_lam, "abc") == M.pretext_cache_key(config, "abc")) == (
        variant != "ss+mask"
    )
    # Gathering negatives changes the pretext result, so it has its own entry.
    gathered = replace(config, gather_negatives=True)
    assert M.pretext_cache_key(gathered, "abc") != M.pretext_cache_key(config, "abc")
