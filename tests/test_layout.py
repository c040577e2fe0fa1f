"""Where a study keeps its files."""

from __future__ import annotations

from pathlib import Path

import pytest

from occstudy.study.layout import StudyLayout


def test_launches_are_numbered_and_resumed(tmp_path: Path) -> None:
    layout = StudyLayout.of("s", tmp_path)
    assert layout.launches() == [] and layout.last_launch() is None
    assert layout.start_launch(resume=True) == "launch-1"  # nothing to resume: a new one
    assert layout.start_launch(resume=False) == "launch-2"
    assert layout.start_launch(resume=True) == "launch-2"
    assert layout.launches() == ["launch-1", "launch-2"]
    assert layout.tracking_uri("http://127.0.0.1:1") == "http://127.0.0.1:1"


def test_an_unreadable_launches_file_stops_a_launch_but_not_a_reader(tmp_path: Path) -> None:
    layout = StudyLayout.of("s", tmp_path)
    layout.study_dir.mkdir(parents=True)
    (layout.study_dir / "launches.json").write_text('["launch-1", "launch-2"')  # cut short
    assert layout.launches() == []
    with pytest.raises(ValueError, match="launches.json: not a JSON list"):
        layout.start_launch(resume=False)


@pytest.mark.parametrize("name", ["..", ".", "a/../../b", "x\\y", ""])
def test_a_study_name_cannot_escape_the_storage_root(tmp_path, name: str) -> None:
    with pytest.raises(ValueError, match="not a folder name"):
        StudyLayout.of(name, tmp_path)


def test_a_study_file_cannot_name_a_folder_outside_the_storage() -> None:
    from occstudy.study import Study, StudyError

    for name in ("..", ".hidden"):
        with pytest.raises(StudyError, match=r"Study.name=.*a folder name"):
            Study(name=name)


def test_storage_must_be_a_folder_not_a_uri_or_a_file(tmp_path, capsys) -> None:
    from occstudy.cli import main
    from occstudy.study.layout import storage_problem

    assert storage_problem(None) is None and storage_problem(tmp_path) is None
    assert storage_problem(tmp_path / "not-yet") is None  # created on first use
    why = storage_problem("s3://bucket/runs")
    assert why is not None and why.startswith("--storage s3://bucket/runs: a s3:// URI is not")
    with pytest.raises(ValueError, match="s3:// URI is not supported"):
        StudyLayout.of("x", "s3://bucket/runs")
    afile = tmp_path / "f"
    afile.write_text("")
    assert main(["status", "quickstart", "--storage", str(afile)]) == 2
    assert capsys.readouterr().err == f"occstudy status: --storage {afile}: not a folder\n"


def test_a_second_launch_of_a_running_study_is_refused(tmp_path) -> None:
    import fcntl

    from occstudy.study import RunOptions, Study, StudyError, run_study

    layout = StudyLayout.of("busy", tmp_path)
    layout.study_dir.mkdir(parents=True)
    with open(layout.study_dir / ".launch.lock", "a+") as held:
        # What a running launch holds (another process, or another node on shared storage).
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on node-a")
        held.flush()
        with pytest.raises(StudyError, match=r"study 'busy' is already running in .*pid 4242"):
            run_study(Study(name="busy"), RunOptions(storage=str(tmp_path), progress=False))
    assert layout.launches() == [] and not layout.study_file.exists()  # refused before writing
