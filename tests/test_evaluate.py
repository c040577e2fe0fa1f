import pytest
import torch

from occstudy.data import FaceSet, synthetic_faces
from occstudy.evaluate import (
    OCCLUDED_AREA,
    classification_metrics,
    confusion_matrix,
    evaluate,
    format_table,
    mask_iou_counts,
    region_accuracy,
    summarize,
)
from occstudy.models import OccNet
from occstudy.train import Runtime


def test_classification_metrics_hand_computed() -> None:
    # true: a a b b c ; pred: a b b b a
    labels = torch.tensor([0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0])
    acc, f1, per_class, cm = classification_metrics(preds, labels, ("a", "b", "c"))
    assert cm == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert acc == pytest.approx(3 / 5)
    assert per_class == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.0})
    # F1: a = 2*1/(2+2) = .5 ; b = 2*2/(2+3) = .8 ; c = 0
    assert f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_ignores_classes_absent_from_labels_and_predictions() -> None:
    acc, f1, per_class, _ = classification_metrics(
        torch.tensor([0, 1]), torch.tensor([0, 1]), ("a", "b", "c")
    )
    assert acc == 1.0 and f1 == 1.0 and set(per_class) == {"a", "b"}


def test_confusion_matrix_counts() -> None:
    cm = confusion_matrix(torch.tensor([2, 2, 0]), torch.tensor([2, 1, 0]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]


def test_mask_iou_counts() -> None:
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1  # 4 px
    logits = torch.full((1, 1, 4, 4), -10.0)
    logits[..., :2, :3] = 10.0  # 6 px predicted, 4 overlap
    assert mask_iou_counts(logits, mask) == (4, 6)


def test_evaluate_every_protocol_and_real_sets() -> None:
    test = synthetic_faces(40, seed=5, image_size=32)
    model = OccNet(heads=("classifier", "mask"), num_classes=7)
    res = evaluate(
        model,
        test,
        image_size=32,
        runtime=Runtime.auto("cpu"),
        protocols=("clean", "r16", "mouth"),
        real={"other": synthetic_faces(20, seed=6, image_size=32)},
    )
    assert list(res) == ["clean", "r16", "mouth", "other"]
    for r in res.values():
        assert 0 <= r.acc <= 1 and sum(map(sum, r.confusion)) == r.n
    assert res["clean"].mask_iou is None and res["r16"].mask_iou is not None
    assert "r16" in format_table(res)
    # The same seed gives the same occluded pixels, hence the same numbers.
    again = evaluate(model, test, image_size=32, runtime=Runtime.auto("cpu"), protocols=("r16",))
    assert again["r16"].acc == res["r16"].acc


def test_evaluate_rejects_unknown_protocol_and_mismatched_labels() -> None:
    test = synthetic_faces(8, seed=5, image_size=32)
    model = OccNet(num_classes=7)
    with pytest.raises(ValueError, match="r99"):
        evaluate(model, test, image_size=32, runtime=Runtime.auto("cpu"), protocols=("r99",))
    other = test.subset(range(4))
    other = type(other)(
        images=other.images,
        labels=other.labels,
        classes=tuple("abcdefg"),
        name="x",
        label_space="other-7",
    )
    with pytest.raises(ValueError, match="label space"):
        evaluate(
            model, test, image_size=32, runtime=Runtime.auto("cpu"), protocols=(), real={"x": other}
        )


class _Replay(torch.nn.Module):
    """Stands in for a network: returns logits for a fixed sequence of predictions, in the
    order the images arrive (evaluate feeds every set in order, batch after batch)."""

    mask_head = None

    def __init__(self, preds: list[int], num_classes: int) -> None:
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(preds), num_classes).float()
        self.pos = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits[self.pos : self.pos + x.shape[0]]
        self.pos += x.shape[0]
        return out


def _real_set(group_names: tuple[str, ...] = ()) -> FaceSet:
    """6 images of classes a, b, c in occluded regions 0 0 1 1 1 2 (region 3: no image)."""
    return FaceSet(
        images=torch.zeros(6, 1, 8, 8, dtype=torch.uint8),
        labels=torch.tensor([0, 1, 2, 2, 0, 1]),
        classes=("a", "b", "c"),
        name="occ:test",
        label_space="abc-3",
        groups=torch.tensor([0, 0, 1, 1, 1, 2]),
        group_names=group_names,
    )


REGIONS = ("upper-face", "mouth", "cheek-hand", "eyewear")
# True 0 1 | 2 2 0 | 1 ; predicted 0 2 | 2 2 1 | 0: right, wrong | right, right, wrong | wrong
PREDS = [0, 2, 2, 2, 1, 0]


def test_region_accuracy_hand_computed() -> None:
    regions = region_accuracy(
        torch.tensor(PREDS), _real_set().labels, torch.tensor([0, 0, 1, 1, 1, 2]), REGIONS
    )
    assert list(regions) == ["upper-face", "mouth", "cheek-hand"]  # eyewear: no image, left out
    assert regions == {
        "upper-face": {"n": 2.0, "acc": pytest.approx(1 / 2)},
        "mouth": {"n": 3.0, "acc": pytest.approx(2 / 3)},
        "cheek-hand": {"n": 1.0, "acc": 0.0},
    }


def test_evaluate_real_set_by_region_from_the_same_predictions() -> None:
    clean = _real_set(REGIONS)  # also the clean test set: its groups must NOT be broken down
    model = _Replay([0, 1, 2, 2, 0, 1, *PREDS], 3)  # clean: all right; then the real set
    res = evaluate(
        model,  # type: ignore[arg-type]
        clean,
        image_size=8,
        runtime=Runtime.auto("cpu"),
        protocols=("clean",),
        real={"occ": _real_set(REGIONS)},
    )
    assert model.pos == 12  # one forward pass per image: the regions reuse the predictions
    assert res["clean"].acc == 1.0 and res["clean"].regions == {}
    occ = res["occ"]
    assert occ.acc == pytest.approx(3 / 6)
    assert {k: (m["n"], m["acc"]) for k, m in occ.regions.items()} == {
        "upper-face": (2, pytest.approx(0.5)),
        "mouth": (3, pytest.approx(2 / 3)),
        "cheek-hand": (1, 0.0),
    }
    # Every image has a region, so the overall accuracy is the n-weighted mean of the regions.
    weighted = sum(m["n"] * m["acc"] for m in occ.regions.values()) / occ.n
    assert occ.acc == pytest.approx(weighted)
    assert occ.to_dict()["regions"] == occ.regions
    metrics = summarize(res)
    assert metrics["test.occ.acc"] == pytest.approx(0.5)
    assert metrics["test.occ.region.mouth.acc"] == pytest.approx(2 / 3)
    assert metrics["test.occ.region.mouth.n"] == 3.0
    assert "test.occ.region.eyewear.acc" not in metrics
    assert not any(".region." in k for k in metrics if k.startswith("test.clean."))
    table = format_table(res)
    assert "  region mouth" in table and "66.67%" in table


def test_groups_without_names_are_not_broken_down() -> None:
    # CK+ subjects (or an undocumented RAF-DB column): groups, but no names.
    res = evaluate(
        _Replay(PREDS, 3),  # type: ignore[arg-type]
        _real_set(),
        image_size=8,
        runtime=Runtime.auto("cpu"),
        protocols=(),
        real={"occ": _real_set()},
    )
    assert res["occ"].regions == {} and not any(".region." in k for k in summarize(res))


def test_synthetic_protocols_carry_the_area_their_occluder_covered() -> None:
    test = synthetic_faces(70, seed=5, image_size=48)  # more than one 64-image protocol block
    protocols = ("clean", "r8", "r16", "r24", "mouth")
    res = evaluate(
        _Replay([0] * (70 * len(protocols) + 6), 7),  # type: ignore[arg-type]
        test,
        image_size=48,
        runtime=Runtime.auto("cpu"),
        protocols=protocols,
        real={"other": synthetic_faces(6, seed=6, image_size=48)},
    )
    # One square of side 8, 16, 24 px on each 48 x 48 face: 64, 256, 576 of 2304 pixels.
    assert res["r8"].occluded_area == pytest.approx(1 / 36)
    assert res["r16"].occluded_area == pytest.approx(1 / 9)
    assert res["r24"].occluded_area == pytest.approx(1 / 4)
    # The mouth band keeps its box's size, 0.25 x 0.56 of the face (up to pixel rounding).
    assert res["mouth"].occluded_area == pytest.approx(0.25 * 0.56, abs=0.01)
    # Nothing covered on clean images, and a real set's occluders are not measured.
    assert res["clean"].occluded_area is None and res["other"].occluded_area is None
    # Carried in extra: logged beside the accuracy as test.r16.occluded_area.
    assert res["r16"].to_dict()["extra"] == {OCCLUDED_AREA: pytest.approx(1 / 9)}
    assert OCCLUDED_AREA == "occluded_area"


def test_tta_flip_is_the_argmax_of_the_mean_softmax_of_face_and_mirror() -> None:
    from occstudy.data import normalize
    from occstudy.evaluate import predict

    torch.manual_seed(0)
    model = OccNet(arch="resnet18", num_classes=7).eval()
    images = torch.randint(0, 256, (9, 1, 48, 48), dtype=torch.uint8)
    runtime = Runtime.auto("cpu")
    got, _ = predict(model, images, image_size=48, runtime=runtime, batch_size=4, tta_flip=True)
    x = normalize(images.float() / 255.0)
    with torch.no_grad():
        probs = model(x).softmax(1) + model(x.flip(-1)).softmax(1)
    assert torch.equal(got, probs.argmax(1))
    plain, _ = predict(model, images, image_size=48, runtime=runtime, tta_flip=False)
    with torch.no_grad():
        assert torch.equal(plain, model(x).argmax(1))
    # A mirror-symmetric face gives the same answer with and without the flip.
    sym = torch.cat([images[..., :24], images[..., :24].flip(-1)], dim=-1)
    a, _ = predict(model, sym, image_size=48, runtime=runtime, tta_flip=True)
    b, _ = predict(model, sym, image_size=48, runtime=runtime, tta_flip=False)
    assert torch.equal(a, b)
