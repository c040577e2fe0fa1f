"""Tests of occstudy.tracking against a sqlite store in tmp_path (and one real server, slow)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
import torch
from mlflow_server import free_port, mlflow_server

from occstudy.evaluate import ProtocolResult, summarize
from occstudy.tracking import (
    RunRef,
    StudyTracker,
    TrackingError,
    check_reachable,
    default_tracking_uri,
    find_runs,
    log_checkpoint,
    log_json,
    log_mask_picture,
    log_metrics,
    log_params,
    log_results,
    redact,
    set_description,
    set_tags,
)
from occstudy.tracking.store import _client as store_client

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRIAL_PARAMS = ("lambda", "tau", "lr", "variant", "seed", "dataset", "epochs", "batch_size")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_dir(uri: str, run: RunRef) -> Path:
    """Local folder of a run's artifacts in a sqlite store (file: artifact root)."""
    info = _client(uri).get_run(run.run_id).info
    parsed = urlparse(info.artifact_uri)
    assert parsed.scheme == "file", info.artifact_uri
    return Path(url2pathname(parsed.path))


def _result(protocol: str, acc: float, mask_iou: float | None = None) -> ProtocolResult:
    return ProtocolResult(
        protocol=protocol,
        dataset="synthetic-faces:test",
        label_space="synthetic-7",
        n=10,
        acc=acc,
        macro_f1=acc - 0.1,
        per_class_acc={"neutral": 0.5, "happiness": 1.0, "anger": 0.75},
        confusion=[[2, 1, 1], [0, 3, 0], [1, 0, 2]],
        classes=("neutral", "happiness", "anger"),
        mask_iou=mask_iou,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    # One store for the module: creating a sqlite MLflow database runs its migrations (seconds).
    storage = tmp_path_factory.mktemp("storage")
    return default_tracking_uri(storage), storage


@pytest.fixture(scope="module")
def tracker(store: tuple[str, Path]) -> StudyTracker:
    return StudyTracker(store[0], "unit")


@pytest.fixture(scope="module")
def parent(tracker: StudyTracker) -> RunRef:
    study = {"name": "unit", "variants": ["ss", "ss+mask"], "seeds": [0, 1, 2], "out": Path("/x")}
    return tracker.parent_run("L1", study, resume=False)


def _trial(tracker: StudyTracker, parent: RunRef, key: str, seed: int) -> RunRef:
    params = {"lambda": 1.0, "tau": 0.1, "lr": 1e-3, "variant": "ss+mask", "seed": seed}
    params |= {"dataset": "synthetic-faces", "epochs": 2, "batch_size": 8}
    tags = {"dataset": "synthetic-faces", "variant": "ss+mask", "seed": str(seed), "trial": key}
    return tracker.child_run(
        parent, kind="finetune", key=key, name=f"ft-{key}", tags=tags, params=params
    )


def test_default_uri_and_redact(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve().as_posix()}/mlflow.db"
    assert redact("https://alice:s3cr3t@mlflow.example.com:5000/x") == (
        "https://mlflow.example.com:5000/x"
    )
    assert "s3cr3t" not in redact("http://u:s3cr3t@h/p?token=s3cr3t&a=1")
    assert redact("http://h:5000") == "http://h:5000"
    assert redact(uri) == uri


def test_experiment_created_once(store: tuple[str, Path], tracker: StudyTracker) -> None:
    again = StudyTracker(store[0], "unit")
    assert again.experiment_id == tracker.experiment_id
    exps = _client(store[0]).search_experiments(filter_string="name = 'occstudy/unit'")
    assert len(exps) == 1
    # Artifacts live beside the database, not in the working directory.
    assert exps[0].artifact_location == (store[1].resolve() / "mlartifacts").as_uri()


def test_parent_and_children_nested_get_or_create(
    store: tuple[str, Path], tracker: StudyTracker, parent: RunRef
) -> None:
    client = _client(store[0])
    p = client.get_run(parent.run_id)
    assert p.data.tags["occstudy.role"] == "study"
    assert p.data.tags["occstudy.launch"] == "L1"
    assert p.info.run_name == "unit:L1"
    assert p.data.params["n_seeds"] == "3"
    assert (_artifact_dir(store[0], parent) / "study.json").read_text().count("ss+mask") == 1

    a = _trial(tracker, parent, "t-a", 0)
    b = _trial(tracker, parent, "t-b", 1)
    assert a.run_id != b.run_id
    assert _trial(tracker, parent, "t-a", 0) == a  # get-or-create: no duplicate
    # Same key but another kind is another run.
    pre = tracker.child_run(
        parent, kind="pretext", key="t-a", name="pre", tags={"dataset": "x"}, params={"lr": 0.1}
    )
    assert pre.run_id not in (a.run_id, b.run_id)

    ra, rb = client.get_run(a.run_id), client.get_run(b.run_id)
    for r in (ra, rb):
        assert r.data.tags["mlflow.parentRunId"] == parent.run_id
        assert r.data.tags["occstudy.kind"] == "finetune"
        assert {"dataset", "variant", "seed", "trial"} <= set(r.data.tags)
    assert set(ra.data.params) == set(rb.data.params) == set(TRIAL_PARAMS)
    assert ra.data.params["lr"] == "0.001"

    # Resume reuses the parent of that launch and sets it RUNNING again.
    tracker.finish(parent, "FAILED")
    resumed = tracker.parent_run("L1", {"name": "unit"}, resume=True)
    assert resumed == parent
    assert client.get_run(parent.run_id).info.status == "RUNNING"
    assert tracker.parent_run("L2", {}, resume=True) != parent  # nothing to resume: new run

    tracker.finish(a)
    assert len(find_runs(store[0], "unit", kind="finetune", status="FINISHED")) == 1
    assert len(find_runs(store[0], "unit", kind="finetune")) == 2
    assert find_runs(store[0], "no-such-study") == []


def test_params_metrics_and_tags(
    store: tuple[str, Path], tracker: StudyTracker, parent: RunRef, caplog: pytest.LogCaptureFixture
) -> None:
    run = _trial(tracker, parent, "t-m", 3)
    log_params(run, {"lr": 1e-3, "image_size": 48})  # identical value: fine
    with pytest.raises(TrackingError, match="lr"):
        log_params(run, {"lr": 0.5})
    for epoch in range(3):
        log_metrics(run, {"train.loss_ce": 1.0 / (epoch + 1), "val.acc": 0.1 * epoch}, step=epoch)
    with caplog.at_level(logging.WARNING, logger="occstudy.tracking"):
        log_metrics(run, {"train.loss_ss": math.nan, "train.loss_mask": math.inf, "ok": 1}, step=3)
    assert "train.loss_ss" in caplog.text
    set_tags(run, {"note": "x"})

    client = _client(store[0])
    hist = client.get_metric_history(run.run_id, "val.acc")
    assert [m.step for m in hist] == [0, 1, 2]
    assert [round(m.value, 6) for m in hist] == [0.0, 0.1, 0.2]
    data = client.get_run(run.run_id).data
    assert "train.loss_ss" not in data.metrics and "train.loss_mask" not in data.metrics
    assert data.metrics["ok"] == 1.0
    assert data.params["image_size"] == "48"
    assert data.tags["note"] == "x"


def test_results_masks_checkpoint(
    store: tuple[str, Path], tracker: StudyTracker, parent: RunRef, tmp_path: Path
) -> None:
    run = _trial(tracker, parent, "t-r", 4)
    # By region: 1 of 4 mouth images and 4 of 6 eyewear images right (overall 5 / 10).
    occ_result = dataclasses.replace(
        _result("occlusion-ferplus", 0.5),
        regions={"mouth": {"n": 4.0, "acc": 0.25}, "eyewear": {"n": 6.0, "acc": 4 / 6}},
    )
    results = {
        "clean": _result("clean", 0.7),
        "r16": _result("r16", 0.6, mask_iou=0.4),
        "occlusion-ferplus": occ_result.to_dict(),
    }
    log_results(run, results)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g)
    masks = (torch.rand(3, 1, 16, 16, generator=g) > 0.5).float()
    log_mask_picture(run, x, masks, torch.randn(3, 1, 16, 16, generator=g))
    log_mask_picture(run, x.expand(3, 3, 16, 16), None, torch.randn(3, 1, 16, 16), name="rgb.png")
    ckpt = tmp_path / "best.pt"
    torch.save({"w": torch.zeros(2)}, ckpt)
    log_checkpoint(run, ckpt)
    log_json(run, {"p": Path("/a"), "t": torch.tensor([1, 2])}, "extra/x.json")

    metrics = _client(store[0]).get_run(run.run_id).data.metrics
    assert metrics["test.clean.acc"] == pytest.approx(0.7)
    assert metrics["test.r16.acc"] == pytest.approx(0.6)
    assert metrics["test.occlusion-ferplus.acc"] == pytest.approx(0.5)
    assert metrics["test.r16.macro_f1"] == pytest.approx(0.5)
    assert metrics["test.r16.mask_iou"] == pytest.approx(0.4)
    assert "test.clean.mask_iou" not in metrics
    assert metrics["test.occlusion-ferplus.region.mouth.acc"] == pytest.approx(0.25)
    assert metrics["test.occlusion-ferplus.region.eyewear.n"] == 6.0
    assert not any(".region." in k for k in metrics if not k.startswith("test.occlusion"))
    # The same names as evaluate.summarize (what Tune and the runner's trial rows see).
    region_keys = {k for k in metrics if ".region." in k}
    summary = summarize({"occlusion-ferplus": occ_result})
    assert region_keys == {k for k in summary if ".region." in k}

    art = _artifact_dir(store[0], run)
    for p in results:
        assert (art / "confusion" / f"{p}.png").read_bytes()[:8] == PNG_MAGIC
        doc = (art / "confusion" / f"{p}.json").read_text()
        assert '"matrix"' in doc and '"label_space": "synthetic-7"' in doc
    occ = json.loads((art / "confusion" / "occlusion-ferplus.json").read_text())
    assert occ["regions"] == occ_result.regions
    assert (art / "masks" / "masks.png").read_bytes()[:8] == PNG_MAGIC
    assert (art / "masks" / "rgb.png").read_bytes()[:8] == PNG_MAGIC
    assert (art / "checkpoints" / "best.pt").is_file()
    assert '"/a"' in (art / "extra" / "x.json").read_text()


def test_check_reachable(tmp_path: Path) -> None:
    port = free_port()  # closed: nothing listens on it once the socket is gone
    t0 = time.monotonic()
    with pytest.raises(TrackingError) as e:
        check_reachable(f"http://bob:hunter2@127.0.0.1:{port}", timeout_s=2.0)
    assert time.monotonic() - t0 < 3.0
    msg = str(e.value)
    assert f"MLflow tracking server at http://127.0.0.1:{port} is not reachable" in msg
    assert "--tracking-uri" in msg and "hunter2" not in msg
    check_reachable(default_tracking_uri(tmp_path / "new" / "dir"))
    assert (tmp_path / "new" / "dir").is_dir()


def test_calls_to_a_server_that_does_not_answer_wait_then_name_the_store_and_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused connection is "not answering": the call says so, retries, and gives up after
    OCCSTUDY_TRACKING_WAIT_S with one line naming the (redacted) store, the call and the
    reason; a store answering with an error is not waited for."""
    port = free_port()
    uri = f"http://bob:hunter2@127.0.0.1:{port}"
    monkeypatch.setenv("OCCSTUDY_TRACKING_WAIT_S", "2.5")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(TrackingError) as e:
        store_client(uri).get_run("abc")
    waited = time.monotonic() - t0
    assert 1.0 <= waited < 4.0, waited
    msg = str(e.value)
    assert msg.startswith(f"MLflow tracking store http://127.0.0.1:{port} did not answer get_run")
    assert "Connection refused" in msg and "hunter2" not in msg
    assert "is not answering (Connection refused); get_run waits and retries" in caplog.text
    monkeypatch.setenv("OCCSTUDY_TRACKING_WAIT_S", "soon")
    with pytest.raises(TrackingError, match=r"OCCSTUDY_TRACKING_WAIT_S='soon': must be a number"):
        store_client(uri).get_run("abc")


def test_a_call_that_fails_while_the_store_is_down_goes_through_once_it_is_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.exceptions import MlflowException

    from occstudy.tracking.store import _patiently, unavailable_reason

    down = MlflowException(
        "API request to http://127.0.0.1:1/api/2.0/mlflow/runs/get failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Caused by "
        'NewConnectionError("...: [Errno 111] Connection refused"))'
    )
    busy = MlflowException(
        "API request to endpoint /api/2.0/mlflow/runs/get failed with error code 503 != 200. "
        "Response body: 'upstream'"
    )
    missing = MlflowException("Run 'abc' not found", error_code="RESOURCE_DOES_NOT_EXIST")
    assert unavailable_reason(down) == "Connection refused"
    assert unavailable_reason(busy) == "HTTP 503"
    assert unavailable_reason(missing) is None
    answers = iter([down, busy, "run"])

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setenv("OCCSTUDY_TRACKING_WAIT_S", "60")
    with caplog.at_level(logging.WARNING):
        assert _patiently(flaky, "get_run", "http://127.0.0.1:1", (), {}) == "run"
    assert "answers again after" in caplog.text and "get_run went through" in caplog.text
    calls = []

    def wrong() -> None:
        calls.append(1)
        raise missing

    with pytest.raises(MlflowException, match="not found"):
        _patiently(wrong, "get_run", "http://127.0.0.1:1", (), {})
    assert calls == [1]  # an answer that is an error is not retried


@pytest.mark.slow
def test_real_server(tmp_path: Path) -> None:
    with mlflow_server(tmp_path) as uri:
        check_reachable(uri)
        t1 = time.monotonic()

        tracker = StudyTracker(uri, "served")
        parent = tracker.parent_run("L1", {"name": "served", "seeds": [0]}, resume=False)
        child = tracker.child_run(
            parent, kind="finetune", key="k", name="ft", tags={"seed": "0"}, params={"lr": 0.01}
        )
        log_metrics(child, {"val.acc": 0.5}, step=1)
        log_results(child, {"clean": _result("clean", 0.8)})
        assert tracker.child_run(
            parent, kind="finetune", key="k", name="ft", tags={}, params={}
        ) == (child)
        tracker.finish(child)

        client = _client(uri)
        run = client.get_run(child.run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent.run_id
        assert run.data.metrics["test.clean.acc"] == pytest.approx(0.8)
        assert client.get_metric_history(child.run_id, "val.acc")[0].step == 1
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        names = {f.path for f in client.list_artifacts(child.run_id, "confusion")}
        assert names == {"confusion/clean.json", "confusion/clean.png"}
        local = client.download_artifacts(child.run_id, "confusion/clean.png", str(tmp_path))
        assert Path(local).read_bytes()[:8] == PNG_MAGIC
        # The server stored it under --artifacts-destination.
        assert list((tmp_path / "served").rglob("clean.png"))
        print(f"logged and read back through the server in {time.monotonic() - t1:.1f} s")


def test_descriptions_for_the_ui(store: tuple[str, Path], tracker: StudyTracker) -> None:
    tracker.describe_experiment("four variants, one seed")
    tags = _client(store[0]).get_experiment(tracker.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "four variants, one seed"
    run = _trial(tracker, tracker.parent_run("L-desc", {"name": "unit"}, resume=False), "d", 0)
    set_description(run, "| a | b |\n|---|---|\n| 1 | 2 |")
    assert _client(store[0]).get_run(run.run_id).data.tags["mlflow.note.content"].endswith("| 2 |")
    # Past MLflow's 8,000-character limit on a tag: cut at a line break, and said so.
    long = "\n".join(f"| row {i} | {'x' * 60} |" for i in range(200))
    set_description(run, long, more="see ablation.json")
    note = _client(store[0]).get_run(run.run_id).data.tags["mlflow.note.content"]
    assert len(note) <= 8000
    kept, _, tail = note.rpartition("\n\n")
    assert long.startswith(kept) and kept.endswith("|")
    assert "8,000-character limit; see ablation.json" in tail
