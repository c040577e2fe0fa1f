import pytest
import torch

from occstudy.data import iterate_batches, synthetic_faces
from occstudy.models import OccNet, PretextNet
from occstudy.occlusion import make_policy
from occstudy.train import (
    Runtime,
    finetune_one_epoch,
    load_checkpoint,
    make_optimizer,
    pretext_one_epoch,
    save_checkpoint,
    seeded_generator,
)

CPU = Runtime.auto("cpu")


@pytest.fixture(scope="module")
def faces():
    return synthetic_faces(48, seed=3, image_size=32)


def _pretext(faces, variant: str, seed: int, steps: int = 2) -> tuple[PretextNet, dict[str, float]]:
    torch.manual_seed(seed)
    heads = {"ss": ("projector",), "mask": ("mask",), "ss+mask": ("projector", "mask")}[variant]
    model = PretextNet(OccNet(heads=heads))
    opt = make_optimizer(model, 1e-3)
    out = pretext_one_epoch(
        model,
        iterate_batches(faces, 8, shuffle=True, seed=seed, drop_last=True),
        opt,
        variant=variant,
        policy=make_policy("all"),
        tau=0.5,
        lam=0.2,
        image_size=32,
        runtime=CPU,
        generator=seeded_generator(seed),
        max_steps=steps,
    )
    return model, out


@pytest.mark.parametrize("variant", ["ss", "mask", "ss+mask"])
def test_pretext_epoch_reports_finite_terms(faces, variant: str) -> None:
    _, out = _pretext(faces, variant, seed=0)
    assert out["steps"] == 2 and out["images"] == 16
    assert torch.isfinite(torch.tensor(out["loss"]))
    assert (out["loss_ss"] > 0) == (variant != "mask")
    assert (out["loss_mask"] > 0) == (variant != "ss")


def test_pretext_is_repeatable_for_a_seed(faces) -> None:
    a, out_a = _pretext(faces, "ss+mask", seed=1)
    b, out_b = _pretext(faces, "ss+mask", seed=1)
    assert out_a["loss"] == out_b["loss"]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_finetune_learns_a_repeated_batch(faces) -> None:
    torch.manual_seed(0)
    model = OccNet(heads=("classifier",), num_classes=7)
    opt = make_optimizer(model, 1e-3)
    batch = (faces.images[:16], faces.labels[:16])
    first = finetune_one_epoch(
        model,
        [batch],
        opt,
        policy=make_policy("squares"),
        occlusion_prob=0.0,
        image_size=32,
        runtime=CPU,
        generator=seeded_generator(0),
    )
    for _ in range(15):
        last = finetune_one_epoch(
            model,
            [batch],
            opt,
            policy=make_policy("squares"),
            occlusion_prob=0.0,
            image_size=32,
            runtime=CPU,
            generator=seeded_generator(0),
        )
    assert last["loss"] < first["loss"] * 0.5


def test_finetune_callback_and_validation(faces) -> None:
    model = OccNet(heads=("classifier",), num_classes=7)
    seen = []
    finetune_one_epoch(
        model,
        iterate_batches(faces, 8, shuffle=False),
        make_optimizer(model, 1e-4),
        policy=make_policy("all"),
        occlusion_prob=0.5,
        image_size=32,
        runtime=CPU,
        generator=seeded_generator(0),
        callback=lambda s, m: seen.append((s, dict(m))),
        log_every=2,
    )
    assert [s for s, _ in seen] == [2, 4, 6]
    assert set(seen[0][1]) == {"loss", "acc"}
    with pytest.raises(ValueError, match="occlusion_prob"):
        finetune_one_epoch(
            model,
            [],
            make_optimizer(model, 1e-4),
            policy=make_policy("all"),
            occlusion_prob=2.0,
            image_size=32,
            runtime=CPU,
            generator=seeded_generator(0),
        )


def test_checkpoint_roundtrip_weights_only(tmp_path) -> None:
    model = OccNet(heads=("classifier",), num_classes=7)
    opt = make_optimizer(model, 1e-4)
    path = save_checkpoint(
        tmp_path / "c" / "ck.pt",
        model=model,
        optimizer=opt,
        epoch=3,
        config={"lr": 1e-4, "variant": "ss"},
        data_fingerprint="abc",
    )
    state = load_checkpoint(path)
    assert (
        state["epoch"] == 3
        and state["config"]["variant"] == "ss"
        and state["data_fingerprint"] == "abc"
    )
    other = OccNet(heads=("classifier",), num_classes=7)
    other.load_state_dict(state["model"])
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not (tmp_path / "c" / "ck.pt.tmp").exists()


def test_load_checkpoint_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="foreign.pt"):
        load_checkpoint(foreign)


def test_a_diverged_run_stops_with_a_message_naming_stage_step_and_cause(faces) -> None:
    from occstudy.train import NonFiniteError, check_finite_weights

    torch.manual_seed(0)
    model = OccNet(heads=("classifier",), num_classes=7)
    with torch.no_grad():
        next(model.classifier.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError) as info:
        finetune_one_epoch(
            model,
            [(faces.images[:8], faces.labels[:8])],
            make_optimizer(model, 1e-3),
            policy=make_policy("squares"),
            occlusion_prob=0.0,
            image_size=32,
            runtime=CPU,
            generator=seeded_generator(0),
            first_step=40,
        )
    message = str(info.value)
    assert message.startswith("fine-tune loss is nan at step 40: training diverged")
    assert "--lr" in message and "\n" not in message
    assert isinstance(info.value, ValueError)  # the CLI prints ValueErrors as one line, exit 2
    with pytest.raises(NonFiniteError, match=r"fine-tune: weight classifier\..* is not finite"):
        check_finite_weights(model, "fine-tune")
    check_finite_weights(OccNet(heads=("classifier",), num_classes=7), "fine-tune")  # no error


def test_check_device_names_the_value() -> None:
    from occstudy.train import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device='cuda:99': this machine has"):
        check_device("cuda:99")
    with pytest.raises(ValueError, match=r"device='gpu0': not a device name"):
        check_device("gpu0")
    with pytest.raises(ValueError, match=r"device='meta': supported devices"):
        check_device("meta")
    with pytest.raises(ValueError, match=r"device='cuda:99'"):
        Runtime.auto("cuda:99")
