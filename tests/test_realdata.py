"""Checks against real datasets; skipped unless SYNTHSETS_TEST_DATA points at a data folder
(torchvision layout for MNIST: DATA/MNIST/raw/*-ubyte)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import synthsets
from synthsets.data import load_real

DATA = os.environ.get("SYNTHSETS_TEST_DATA")
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        not DATA or not (Path(DATA) / "MNIST" / "raw").is_dir(),
        reason="set SYNTHSETS_TEST_DATA to a folder holding MNIST/raw to run real-data checks",
    ),
]


def test_mnist_loads_with_official_statistics():
    real = load_real("mnist", DATA)
    assert real.train.images.shape == (60000, 1, 28, 28) and len(real.test) == 10000
    assert real.mean == [0.1307] and real.std == [0.3081]
    assert real.train.labels.unique().tolist() == list(range(10))
    assert abs(real.train.images.mean().item()) < 1e-3  # normalised


def test_bundled_mnist_generator_matches_the_data_statistics():
    real = load_real("mnist", DATA, with_test=False)
    config = synthsets.Generator.from_pretrained("mnist").config
    assert config.mean == real.mean and config.std == real.std
    assert config.classes == real.classes
