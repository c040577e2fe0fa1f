"""A study on a two-node Ray cluster, logging to a real MLflow server (slow: about 3 minutes,
two 2-worker TorchTrainers; ``pytest -m slow``). The one-worker Ray Train path, and its
agreement with the in-process path, are tested in the default run (test_study_runner.py)."""

from __future__ import annotations

import math

import pytest
from mlflow_server import free_port, mlflow_server

from occstudy import tracking
from occstudy.study import (
    FinetuneSpec,
    PretextSpec,
    Resources,
    RunOptions,
    Study,
    TestSpec,
    run_study,
)

TINY = Study(
    name="tiny-ddp",
    image_size=32,
    batch_size=16,
    variants=("ss+mask",),
    pretext=PretextSpec(epochs=1, limit=64),
    finetune=FinetuneSpec(epochs=1, train_limit=64, synthetic_size=96),
    test=TestSpec(protocols=("clean", "r16")),
)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_loopback")
def test_two_node_cluster_ddp_both_stages_into_mlflow_server(tmp_path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    study = Study(**{**TINY.__dict__, "resources": Resources(workers=2, cpus_per_worker=1)})
    with mlflow_server(tmp_path) as uri:
        cluster = Cluster(
            initialize_head=True,
            # The dashboard serves the state API through which Train V2 frees a finished
            # TorchTrainer's placement group (``ray start --head`` runs it by default).
            head_node_args={
                "num_cpus": 1,
                "node_ip_address": "127.0.0.1",
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": free_port(),
            },
        )
        try:
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
            cluster.wait_for_nodes()
            outcome = run_study(
                study,
                RunOptions(
                    storage=str(tmp_path / "shared"),
                    address=cluster.address,
                    tracking_uri=uri,
                    progress=False,
                ),
            )
        finally:
            ray.shutdown()
            cluster.shutdown()
        assert not outcome.failed, [r.error for r in outcome.failed]
        assert outcome.pretext_computed == 1

        # Everything is in the server, not in a local store.
        assert not (tmp_path / "shared" / "tiny-ddp" / "mlflow.db").exists()
        parents = tracking.find_runs(uri, "tiny-ddp", kind="study")
        (pretext,) = tracking.find_runs(uri, "tiny-ddp", kind="pretext")
        (trial,) = tracking.find_runs(uri, "tiny-ddp", kind="finetune")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        for run in (pretext, trial):
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            # Two DDP workers, one on each node.
            assert run.data.tags["ray_workers"] == "2"
            assert run.data.tags["ray_nodes"] == "2"
        assert "pretext.loss" in pretext.data.metrics
        for key in ("test.clean.acc", "test.r16.acc", "test.r16.mask_iou", "val_acc"):
            assert math.isfinite(trial.data.metrics[key]), key
        client = tracking.store._client(uri)
        names = {f.path for f in client.list_artifacts(trial.info.run_id, "confusion")}
        assert "confusion/clean.json" in names
        assert trial.info.artifact_uri.startswith("mlflow-artifacts:")
        assert list((tmp_path / "served").rglob("best.pt"))
