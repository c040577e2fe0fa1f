"""Where trials run (occstudy.study.environment) and the CLI's resource overrides: GPU
requests the cluster cannot meet are refused with a message naming them."""

from __future__ import annotations

import pytest

from occstudy.cli import _with_resources, main
from occstudy.study import Resources, Study, StudyError
from occstudy.study.environment import check_gpus, trial_resources


def test_gpu_requests_the_cluster_cannot_meet_are_refused() -> None:
    check_gpus(Resources(), node_gpus=0, n_nodes=1)  # CPU study: nothing to check
    check_gpus(Resources(workers=2, gpus_per_worker=1), node_gpus=8, n_nodes=2)
    with pytest.raises(StudyError) as info:
        check_gpus(Resources(gpus_per_worker=1), node_gpus=0, n_nodes=2)
    assert str(info.value) == (
        "Resources.gpus_per_worker=1: the study asks for GPUs but none of the Ray cluster's 2 "
        "node(s) has one (drop --gpus-per-trial, or add a GPU node)"
    )
    with pytest.raises(StudyError, match=r"gpus_per_worker=4: .*largest node has \(2\)"):
        check_gpus(Resources(gpus_per_worker=4), node_gpus=2, n_nodes=1)


def test_workers_and_gpus_per_trial_reach_the_trials() -> None:
    study = Study(name="g")
    assert _with_resources(study, None, None) is study
    four = _with_resources(study, None, 4).resources  # one DDP worker per GPU
    assert (four.workers, four.gpus_per_worker, four.use_ray_train) == (4, 1.0, True)
    two = _with_resources(study, 2, 1).resources  # two workers sharing one GPU
    assert (two.workers, two.gpus_per_worker) == (2, 0.5)
    half = _with_resources(study, None, 0.5).resources
    assert (half.workers, half.gpus_per_worker) == (1, 0.5)
    assert trial_resources(Study(name="c", resources=Resources(cpus_per_worker=2))) == {"CPU": 2.0}
    # A Ray Train trial only coordinates; its workers hold the GPUs.
    assert trial_resources(Study(name="g", resources=four))["CPU"] == 0
    with pytest.raises(StudyError, match=r"--gpus-per-trial=-1: must be a finite number >= 0"):
        _with_resources(study, None, -1)
    with pytest.raises(StudyError, match=r"--workers/--gpus-per-trial: Resources.workers=0"):
        _with_resources(study, 0, None)


def test_run_refuses_bad_resource_options_before_starting(tmp_path, capsys) -> None:
    study = tmp_path / "r.py"
    study.write_text("from occstudy.study import Study\nstudy = Study(name='r')\n")
    rc = main(["run", str(study), "--storage", str(tmp_path), "--gpus-per-trial", "nan"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == "occstudy run: --gpus-per-trial=nan: must be a finite number >= 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.py"]  # nothing written
