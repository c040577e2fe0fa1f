"""The MLflow schema's names (occstudy.tracking.schema): the evaluation writes, the reader
parses, and both agree."""

from __future__ import annotations

import math

from occstudy.evaluate import ProtocolResult, summarize
from occstudy.tracking import schema


def test_test_metric_names_by_hand() -> None:
    assert schema.test_metric("r16", "acc") == "test.r16.acc"
    region = schema.region_protocol("occlusion-ferplus", "mouth")
    assert region == "occlusion-ferplus.region.mouth"
    assert schema.test_metric(region, "n") == "test.occlusion-ferplus.region.mouth.n"


def test_per_protocol_parses_dotted_protocols_and_skips_the_rest() -> None:
    metrics = {
        "test.clean.acc": 0.5,
        "test.occlusion-ferplus.region.mouth.acc": 0.25,
        "test.clean.macro_f1": 0.4,
        "test.r8.acc": math.nan,
        "val_acc": 0.9,
        "test..acc": 0.1,
    }
    assert schema.per_protocol(metrics, "acc") == {
        "clean": 0.5,
        "occlusion-ferplus.region.mouth": 0.25,
    }
    assert schema.per_protocol(metrics, "macro_f1") == {"clean": 0.4}


def test_what_evaluation_writes_parses_back() -> None:
    r = ProtocolResult(
        protocol="occlusion-ferplus",
        dataset="d",
        label_space="s",
        n=10,
        acc=0.5,
        macro_f1=0.3,
        per_class_acc={},
        confusion=[[1]],
        classes=("a",),
        mask_iou=0.2,
        regions={"mouth": {"n": 4.0, "acc": 0.25}},
    )
    flat = summarize({"occlusion-ferplus": r})
    assert schema.per_protocol(flat, "acc") == {
        "occlusion-ferplus": 0.5,
        "occlusion-ferplus.region.mouth": 0.25,
    }
    assert schema.per_protocol(flat, "mask_iou") == {"occlusion-ferplus": 0.2}
    assert schema.per_protocol(flat, "n") == {"occlusion-ferplus.region.mouth": 4.0}
