"""The main job (examples/quickstart.py) end to end on tiny local data, in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_distill import CLASSES, write_folder

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], env=env, capture_output=True, text=True,
                          timeout=240)


def run_quickstart(*args: str) -> subprocess.CompletedProcess:
    return run_example("quickstart.py", *args)


@pytest.fixture
def generator_folder(make_generator, tmp_path) -> Path:
    """A 28px grey generator whose classes are the test folder's (written with save_pretrained)."""
    folder = tmp_path / "generator"
    make_generator(image_size=28, channels=1, num_classes=len(CLASSES), classes=list(CLASSES)).save_pretrained(folder)
    return folder


def test_quickstart_trains_and_reports_test_accuracy(generator_folder, tmp_path):
    data = write_folder(tmp_path / "data", 28, "L", n_train=2, n_test=5)
    result = run_quickstart("--generator", str(generator_folder), "--data", str(data), "--epochs", "3",
                            "--inpc", "4", "--model", "resnet10")
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"resnet10 trained 3 epochs on 4 generated images/class \(\d+ s\): real \S+ test accuracy ([\d.]+)%",
                      result.stdout)
    assert match, result.stdout[-2000:]
    accuracy = float(match.group(1))
    assert 0.0 <= accuracy <= 100.0
    n_test = len(CLASSES) * 5
    correct = round(accuracy * n_test / 100)
    assert accuracy == pytest.approx(100 * correct / n_test, abs=0.006)  # a whole number of the 15 test images


def test_timm_example_trains_and_reports_test_accuracy(generator_folder, tmp_path):
    data = write_folder(tmp_path / "data", 28, "L", n_train=2, n_test=5)
    result = run_example("train_timm.py", "--generator", str(generator_folder), "--data", str(data), "--epochs", "2",
                         "--inpc", "4", "--model", "resnet18")
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"timm resnet18: real test accuracy ([\d.]+)%", result.stdout)
    assert match, result.stdout[-2000:]
    assert 0.0 <= float(match.group(1)) <= 100.0


@pytest.mark.parametrize("script", ["quickstart.py", "train_timm.py"])
def test_examples_report_missing_data_without_a_traceback(script, generator_folder, tmp_path):
    result = run_example(script, "--generator", str(generator_folder), "--data", str(tmp_path / "nowhere"), "--epochs", "1")
    assert result.returncode != 0
    assert "error:" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_timm_example_names_close_models_for_a_typo(generator_folder):
    result = run_example("train_timm.py", "--generator", str(generator_folder), "--model", "resnet81")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unknown timm model 'resnet81'; did you mean resnet18" in result.stderr


def test_sample_grid_creates_the_output_folder(generator_folder, tmp_path):
    from PIL import Image

    out = tmp_path / "new" / "deeper" / "grid.png"
    result = run_example("sample_grid.py", "--generator", str(generator_folder), "--per-class", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}: {len(CLASSES)} classes" in result.stdout
    assert Image.open(out).size[0] > 0


@pytest.mark.parametrize("args, expected", [
    (["--per-class", "0"], "error: --per-class must be at least 1, got 0"),
    (["--per-class", "-3"], "error: --per-class must be at least 1, got -3"),
    (["--out", "{tmp}/afile.txt/grid.png"], "error: --out {tmp}/afile.txt/grid.png lies under {tmp}/afile.txt, "
                                             "which is a file, not a folder"),
    (["--out", "{tmp}"], "error: --out {tmp} needs an image file extension such as .png"),
    (["--out", "{tmp}/adir.png"], "error: --out {tmp}/adir.png is a folder; give an image file path such as "
                                  "{tmp}/adir.png/grid.png"),
    (["--generator", "{tmp}/nowhere"], "nowhere"),
])
def test_sample_grid_reports_bad_arguments_without_a_traceback(args, expected, generator_folder, tmp_path):
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "adir.png").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    if "--generator" not in args:
        args = ["--generator", str(generator_folder), *args]
    # in this process (the error path needs no fresh interpreter): main() exits with the message
    import importlib.util

    spec = importlib.util.spec_from_file_location("sample_grid_example", EXAMPLES / "sample_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(args)
    message = str(exit_info.value.code)
    assert len(message.splitlines()) == 1 and message.startswith("error: "), message
    assert expected.format(tmp=tmp_path) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png", "afile.txt", "generator"]  # nothing created


def _run_in_process(script: str, argv: list[str], monkeypatch) -> str:
    """Run an example's ``main()`` here (the error paths need no fresh interpreter); its exit message."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{script[:-3]}", EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    return str(exit_info.value.code)


@pytest.mark.parametrize("script", ["quickstart.py", "train_timm.py"])
@pytest.mark.parametrize("args, expected", [
    (["--generator", "mnsit"], "error: unknown generator 'mnsit' (did you mean 'mnist'?)"),
    (["--inpc", "0"], "error: --inpc must be at least 1, got 0"),
    (["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
    (["--epochs", "-1"], "error: --epochs must be at least 1, got -1"),
])
def test_examples_report_bad_arguments_without_a_traceback(script, args, expected, monkeypatch, hf_isolation):
    message = _run_in_process(script, args, monkeypatch)
    assert len(message.splitlines()) == 1 and message.startswith(expected), message


def test_quickstart_checks_the_model_name_before_loading_anything(monkeypatch):
    import synthsets

    monkeypatch.setattr(synthsets, "DiM", lambda *a, **k: pytest.fail("loaded a generator for a bad model name"))
    message = _run_in_process("quickstart.py", ["--model", "foo"], monkeypatch)
    assert message.startswith("error: unknown model 'foo'; synthsets models: [") and "timm model name" in message
