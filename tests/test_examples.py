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
