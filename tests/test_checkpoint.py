"""Tests of ``synthsets.checkpoint``: round trips and clear errors for damaged files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from synthsets.checkpoint import CheckpointError, load_checkpoint, optimizer_state, save_checkpoint
from synthsets.hub import WeightsError


@pytest.fixture
def saved(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / "checkpoints" / "last.safetensors"
    save_checkpoint(path, {"model": model.state_dict(), "opt": opt.state_dict()}, {"epoch": 3})
    return path, model, opt


def test_round_trip(saved):
    path, model, opt = saved
    parts, meta = load_checkpoint(path)
    assert meta == {"epoch": 3} and set(parts) == {"model", "opt"}
    for key, value in model.state_dict().items():
        assert torch.equal(parts["model"][key], value)
    fresh = torch.optim.Adam(torch.nn.Linear(4, 3).parameters())
    fresh.load_state_dict(optimizer_state(parts["opt"]))
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize("damage", ["head", "tail", "empty", "garbage"])
def test_corrupt_file_names_it_and_says_what_to_do(saved, damage):
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes({"head": data[:100], "tail": data[:-10], "empty": b"", "garbage": b"x" * 500}[damage])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"training checkpoint {path} is truncated or corrupt (")
    assert message.endswith(f"delete it ({path}) to start the run over, or restore a copy of it")
    assert "force_download" not in message and "\n" not in message
    assert isinstance(info.value, WeightsError)  # callers that catch WeightsError still do


def test_corrupt_metadata(saved):
    path = saved[0]
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "synthsets-checkpoint", "meta": "{", "skeleton": "{}"})
    with pytest.raises(CheckpointError, match=r"has corrupt metadata \(JSONDecodeError: .*delete it \("):
        load_checkpoint(path)
    skeleton = json.dumps({"model": {"__tensor__": "missing"}})
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "synthsets-checkpoint", "meta": "{}", "skeleton": skeleton})
    with pytest.raises(CheckpointError, match=r"has corrupt metadata \(KeyError: 'missing'\)"):
        load_checkpoint(path)


def test_other_safetensors_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match=f"{path} is not a synthsets training checkpoint: delete it"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")
