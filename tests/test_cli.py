import json
import os
import subprocess
import sys

from occstudy.cli import main


def test_train_smoke_prints_table_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--smoke",
                "--no-progress",
                "--image-size",
                "32",
                "--out",
                str(out),
                "--json",
                str(tmp_path / "m.json"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "protocol" in text and "objects" in text
    payload = json.loads(text[text.index("{") :])
    assert 0 <= payload["metrics"]["test.clean.acc"] <= 1
    assert json.loads((tmp_path / "m.json").read_text())["results"]["mouth"]["n"] > 0
    assert (out / "results.json").exists()


def test_train_bad_value_is_a_clear_error(capsys) -> None:
    assert main(["train", "--tau", "0", "--smoke"]) == 2
    assert "MethodConfig.tau=0.0" in capsys.readouterr().err
    assert main(["train", "--data", "fer2013:/no/such/dir", "--smoke"]) == 2
    assert "/no/such/dir" in capsys.readouterr().err


def test_data_check_synthetic_and_missing_root(tmp_path, capsys) -> None:
    assert main(["data", "check", "synthetic-faces"]) == 0
    assert "happiness" in capsys.readouterr().out
    assert main(["data", "check", "fer2013", "--root", str(tmp_path / "nothing")]) == 1
    assert "nothing" in capsys.readouterr().err


def test_console_script_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "occstudy.cli", "data", "list"],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=True,
    )
    assert "fer2013" in proc.stdout.split()
