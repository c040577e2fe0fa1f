import pytest
import torch

from occstudy.data import synthetic_faces
from occstudy.evaluate import (
    classification_metrics,
    confusion_matrix,
    evaluate,
    format_table,
    mask_iou_counts,
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
