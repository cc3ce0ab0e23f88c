"""Tests of ``synthsets.distill`` (the DiM trainer and its CLI) and of the real-data loader.

Everything runs on the CPU on tiny image folders written by the tests (3 classes, 12
training images each) with the ``tiny`` preset, so a whole two-stage run takes about a
second. One test starts a 2-process gloo DDP run through ``torch.distributed.run``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import synthsets
from synthsets import distill as distill_mod
from synthsets.augment import DSA
from synthsets.checkpoint import load_checkpoint, save_checkpoint
from synthsets.data import DataNotFoundError, load_real
from synthsets.distill import PRESETS, DistillConfig, Distiller, apply_preset, main

REPO_ROOT = Path(synthsets.__file__).resolve().parent.parent
CLASSES = ["ant", "bee", "cat"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a small, shared CPU, two threads on tiny tensors are far
    slower (they spin against each other and against any other process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- tiny image folders ---------------------------------------------------------------------
def write_folder(root: Path, size: int, mode: str, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``; classes differ in brightness."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    for split, count in (("train", n_train), ("test", n_test)):
        if count == 0:
            continue
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.integers(0, 128, shape) + 60 * c).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).convert(mode).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def grey28(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("grey28"), 28, "L")


@pytest.fixture(scope="module")
def rgb32(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("rgb32"), 32, "RGB", seed=1)


FOLDERS = {"28px-1ch": ("grey28", 28, 1), "32px-3ch": ("rgb32", 32, 3)}


def run_cli(data: Path, out: Path, *extra: str) -> int:
    return main(["--data", str(data), "--out", str(out), "--preset", "tiny", "--device", "cpu", "--no-progress", *extra])


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def tiny_config(data: Path, out: Path, **overrides) -> DistillConfig:
    config = apply_preset(DistillConfig(data=str(data), out=str(out), preset="tiny", device="cpu", progress=False))
    return DistillConfig(**{**config.__dict__, **overrides})


# -- 1. real data -----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", FOLDERS)
def test_load_real_image_folder(variant, request):
    fixture, size, channels = FOLDERS[variant]
    real = load_real(request.getfixturevalue(fixture))
    assert real.classes == CLASSES and real.num_classes == 3
    assert (real.channels, real.image_size) == (channels, size)
    assert real.train.images.shape == (36, channels, size, size)
    assert real.train.images.dtype == torch.float32
    assert torch.bincount(real.train.labels).tolist() == [12, 12, 12]
    assert real.test is not None and real.test.images.shape == (12, channels, size, size)
    assert len(real.mean) == len(real.std) == channels
    # normalised with the training set's own statistics
    assert real.train.images.mean().abs() < 0.05
    assert abs(real.train.images.std().item() - 1) < 0.05
    # classes were written with increasing brightness: labels follow the folders
    per_class = [real.train.images[real.train.labels == c].mean().item() for c in range(3)]
    assert per_class == sorted(per_class)


def test_load_real_resizes(tmp_path):
    folder = write_folder(tmp_path / "small", 20, "L", n_train=3, n_test=2)
    assert load_real(folder).image_size == 20
    real = load_real(folder, image_size=28)
    assert real.image_size == 28 and real.train.images.shape == (9, 1, 28, 28)
    assert real.test.images.shape == (6, 1, 28, 28)


def test_cli_asks_for_image_size(tmp_path, capsys):
    folder = write_folder(tmp_path / "small", 20, "L", n_train=3, n_test=1)
    assert run_cli(folder, tmp_path / "out") == 2
    assert "--image-size" in capsys.readouterr().err


def test_cli_reports_bad_device(tmp_path, capsys):
    folder = write_folder(tmp_path / "small", 28, "L", n_train=3, n_test=1)
    rc = main(["--data", str(folder), "--out", str(tmp_path / "out"), "--preset", "tiny", "--device", "foo", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown device 'foo'") and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a run that cannot start


def test_load_real_missing_folder(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(DataNotFoundError, match="looked for the folder") as info:
        load_real(missing)
    assert str(missing) in str(info.value)


def test_load_real_unknown_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as info:
        load_real("imagenet-9000")
    message = str(info.value)
    assert "mnist" in message and "cifar10" in message  # lists the known names
    assert str(tmp_path / "imagenet-9000") in message  # and where it looked


def test_load_real_torchvision_name_needs_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError, match="--root") as info:
        load_real("mnist")
    assert str(tmp_path / "mnist") in str(info.value)  # where it looked for a folder
    with pytest.raises(DataNotFoundError, match="--root"):
        load_real("CIFAR-10")  # aliases are recognised


def test_load_real_torchvision_missing_under_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataNotFoundError) as info:
        load_real("mnist", root)
    assert str(root) in str(info.value)


def test_cli_reports_missing_data(tmp_path, capsys):
    assert run_cli(tmp_path / "missing", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(tmp_path / "missing") in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_load_real_bad_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataNotFoundError, match="class sub-folders"):
        load_real(tmp_path / "flat")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "b").mkdir(parents=True)
    with pytest.raises(DataNotFoundError):
        load_real(tmp_path / "empty")
    mixed = write_folder(tmp_path / "mixed", 28, "L", n_train=2, n_test=0)
    Image.new("L", (32, 32)).save(mixed / "train" / "ant" / "big.png")
    with pytest.raises(ValueError, match="image-size"):
        load_real(mixed)
    assert load_real(mixed, image_size=32).train.images.shape == (7, 1, 32, 32)


# -- 2. end-to-end runs -------------------------------------------------------------------------
def check_run(out: Path, size: int, channels: int, epochs: list[int], stages: list[int]) -> None:
    for name in ("config.json", "model.safetensors", "README.md", "distill_config.json"):
        assert (out / name).is_file(), name
    assert (out / "stage1" / "config.json").is_file() and (out / "stage1" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "last.safetensors").is_file()
    assert tmp_files(out) == []

    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    front = card.split("---\n")[1]
    assert "library_name: synthsets" in front.splitlines()
    try:
        import yaml
    except ImportError:  # not a dependency: the line check above is the test then
        yaml = None
    if yaml is not None:
        assert yaml.safe_load(front)["library_name"] == "synthsets"

    records = read_log(out)
    assert [r["epoch"] for r in records] == epochs
    assert [r["stage"] for r in records] == stages
    for r in records:
        losses = {k: v for k, v in r.items() if k in ("d_loss", "g_loss", "gp", "wdist", "match", "pool_ce")}
        assert {"d_loss", "g_loss", "gp"} <= set(losses)
        if r["stage"] == 2:
            assert {"match", "pool_ce"} <= set(losses) and r["pool_model"] == "convnet3"
        assert all(math.isfinite(v) for v in losses.values()), r

    samples = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert samples == [f"epoch_{e:04d}.png" for e in epochs] + ["final.png"]
    with Image.open(out / "samples" / "final.png") as grid:
        assert grid.size[0] > size and grid.size[1] > size

    train = synthsets.DiM(out, inpc=2, device="cpu", seed=0)
    assert len(train) == 2 * 3 and train.classes == CLASSES
    x, y = train[0]
    assert x.shape == (channels, size, size) and torch.isfinite(x).all()
    assert 0 <= int(y) < 3
    assert sorted(int(train[i][1]) for i in range(len(train))) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("variant", FOLDERS)
def test_end_to_end(variant, request, tmp_path):
    fixture, size, channels = FOLDERS[variant]
    out = tmp_path / "run"
    assert run_cli(request.getfixturevalue(fixture), out, "--stage1-epochs", "2") == 0
    check_run(out, size, channels, epochs=[1, 2, 3], stages=[1, 1, 2])
    config = json.loads((out / "config.json").read_text())
    assert (config["channels"], config["image_size"], config["num_classes"]) == (channels, size, 3)
    assert config["width"] == PRESETS["tiny"]["width"]
    assert config["classes"] == CLASSES
    # stage1/ is the generator after stage 1, not the final one
    final, stage1 = load_file(out / "model.safetensors"), load_file(out / "stage1" / "model.safetensors")
    assert not all(torch.equal(final[k], stage1[k]) for k in final)
    _, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["epoch"] == 3


def test_library_call(rgb32, tmp_path):
    out = distill_mod.distill(data=str(rgb32), out=str(tmp_path / "run"), preset="tiny", device="cpu",
                              progress=False, stage2_epochs=0)
    assert out == tmp_path / "run"
    assert [r["stage"] for r in read_log(out)] == [1]
    assert synthsets.Generator.from_pretrained(out).config.width == PRESETS["tiny"]["width"]


# -- 3. logits matching ------------------------------------------------------------------------
@pytest.fixture
def trainer(grey28, tmp_path):
    torch.manual_seed(0)
    d = Distiller(tiny_config(grey28, tmp_path / "run"))
    yield d
    d.close()


def trained_pool_model(d: Distiller) -> torch.nn.Module:
    model, opt, name = d._new_pool_model(d.cfg.stage1_epochs)
    assert name == "convnet3"
    d._train_pool_model(model, opt, 2)
    # matching runs in training mode (as the reference), with the weights frozen
    assert model.training and not any(p.requires_grad for p in model.parameters())
    return model


def test_matching_uses_one_siamese_draw(trainer, monkeypatch):
    calls = []
    original = DSA.pair

    def spy(self, a, b, generator=None, siamese=True):
        calls.append((a, b, siamese))
        return original(self, a, b, generator=generator, siamese=siamese)

    monkeypatch.setattr(DSA, "pair", spy)
    record = trainer.run_epoch(trainer.cfg.stage1_epochs)  # a stage-2 epoch
    assert record["stage"] == 2 and math.isfinite(record["match"])
    steps = PRESETS["tiny"]["stage2_steps_per_epoch"]
    assert len(calls) == steps  # once per generator step
    batch = PRESETS["tiny"]["batch_size"]
    for real, fake, siamese in calls:
        assert siamese is True
        assert real.shape == fake.shape == (batch, 1, 28, 28)
        assert not real.requires_grad and fake.requires_grad  # the fake batch comes from G
        assert fake.grad_fn is not None
    # the real batch is a batch of (normalised) training images
    flat = trainer.train_x.flatten(1)
    for row in calls[0][0].flatten(1):
        assert torch.isclose(flat, row, atol=1e-5).all(dim=1).any()


def test_no_siamese_flag(trainer, monkeypatch):
    seen = []
    monkeypatch.setattr(DSA, "pair", lambda self, a, b, generator=None, siamese=True: seen.append(siamese) or (a, b))
    trainer.cfg.siamese = False
    model = trained_pool_model(trainer)
    x = trainer.train_x[:4]
    trainer.matching_loss(model, x, x)
    assert seen == [False]
    assert distill_mod.build_parser().parse_args(["--data", "x", "--out", "y", "--no-siamese"]).siamese is False


def test_matching_loss_zero_for_identical_batches(trainer):
    model = trained_pool_model(trainer)
    x = trainer.train_x[:8]
    for _ in range(3):  # several random DSA draws: one shared draw gives identical views
        loss = trainer.matching_loss(model, x, x.clone())
        assert loss.item() == 0.0
    other = trainer.train_x[8:16]
    assert trainer.matching_loss(model, x, other).item() > 0


def test_matching_gradient_reaches_generator(trainer):
    model = trained_pool_model(trainer)
    pool_grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    G = trainer.G
    labels = trainer.train_y[:8]
    fake = G(G.make_noise(labels))
    real = trainer.train_x[:8]
    G.zero_grad(set_to_none=True)
    loss = trainer.matching_loss(model, real, trainer.to_classifier(fake))
    assert loss.item() > 0
    loss.backward()
    for name, p in G.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    for before, p in zip(pool_grads, model.parameters()):  # L_m does not train the pool model
        assert (before is None and p.grad is None) or torch.equal(before, p.grad)


def test_generator_step_adds_weighted_matching(trainer, monkeypatch):
    model = trained_pool_model(trainer)
    idx = torch.arange(8)
    real, labels = trainer.to_gan(trainer.train_x[idx]), trainer.train_y[idx]
    z = trainer.G.make_noise(labels)
    stats = trainer._generator_step(real, labels, trainer.G(z), model)
    assert {"g_loss", "match"} <= set(stats) and stats["match"] > 0
    # the GAN part alone when there is no matcher
    assert set(trainer._generator_step(real, labels, trainer.G(z), None)) == {"g_loss"}


def test_one_forward_moves_batchnorm_statistics_like_two(trainer):
    import copy

    from synthsets.distill import _running_stats_as_two_passes

    z = trainer.G.make_noise(torch.arange(8) % 3)
    twice = copy.deepcopy(trainer.G).train()
    with torch.no_grad():
        twice(z)
        twice(z)
    once = copy.deepcopy(trainer.G).train()
    with torch.no_grad(), _running_stats_as_two_passes(once):
        once(z)
    for (name, a), b in zip(twice.named_buffers(), once.buffers()):
        torch.testing.assert_close(b.double(), a.double(), rtol=0, atol=1e-6, msg=name)
    momenta = {m.momentum for m in once.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert momenta == {0.1}  # restored


def test_real_and_gan_ranges_round_trip(trainer):
    x = trainer.train_x[:4]
    pm = trainer.to_gan(x)
    assert pm.min() >= -1 - 1e-5 and pm.max() <= 1 + 1e-5
    assert torch.allclose(trainer.to_classifier(pm), x, atol=1e-5)


def test_cudnn_benchmark_is_on_during_steps_only(trainer, monkeypatch):
    """A Distiller turns cuDNN autotuning on for its training steps, not for the process."""
    seen = []
    train_step = trainer._train_step

    def recording(*args):
        seen.append(torch.backends.cudnn.benchmark)
        return train_step(*args)

    monkeypatch.setattr(trainer, "_train_step", recording)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    trainer.run_epoch(0)
    assert seen and all(seen)
    assert torch.backends.cudnn.benchmark is False


def test_cpu_layouts(trainer):
    """On a CPU the generator, the discriminator (whose LayerNorm takes either layout) and
    BatchNorm pool models train in channels_last (faster there)."""
    cl = torch.channels_last
    assert all(m.weight.is_contiguous(memory_format=cl) for m in trainer.G.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.weight.is_contiguous(memory_format=cl) for m in trainer.D.modules() if isinstance(m, torch.nn.Conv2d))
    trainer.cfg.pool = ("resnet10",)
    model, _, _ = trainer._new_pool_model(trainer.cfg.stage1_epochs)
    assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous(memory_format=cl)
    folder = trainer.out / "g"
    trainer.save_generator(folder)  # loads back as the same generator, in the standard layout
    loaded = synthsets.Generator.from_pretrained(folder)
    for key, value in trainer.G.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert all(m.weight.is_contiguous() for m in loaded.modules() if isinstance(m, torch.nn.Conv2d))


# -- 4. checkpoints and resume -------------------------------------------------------------------
def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


SCHEDULE = ("--stage1-epochs", "2", "--stage2-epochs", "1")


@pytest.fixture(scope="module")
def uninterrupted(grey28, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert run_cli(grey28, out, *SCHEDULE) == 0
    return out


def run_until_interrupted(data, out: Path, stop_at: int, monkeypatch) -> None:
    """Run the CLI with SCHEDULE and stop it (KeyboardInterrupt, as Ctrl-C) as epoch ``stop_at``
    begins: it exits with 130 and says how to continue."""
    original = Distiller.run_epoch

    def interrupted(self, epoch):
        if epoch == stop_at:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Distiller, "run_epoch", interrupted)
    assert run_cli(data, out, *SCHEDULE) == 130
    monkeypatch.setattr(Distiller, "run_epoch", original)


@pytest.mark.parametrize("stop_at", [1, 2], ids=["in-stage1", "at-stage-boundary"])
def test_resume_matches_uninterrupted_run(stop_at, grey28, uninterrupted, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    run_until_interrupted(grey28, out, stop_at, monkeypatch)
    assert capsys.readouterr().err.split("\r")[-1].endswith(
        f"interrupted; add --resume to the same command to continue from the last finished epoch (checkpointed in "
        f"{out})\n"
    )

    _, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["epoch"] == stop_at
    assert [r["epoch"] for r in read_log(out)] == list(range(1, stop_at + 1))
    assert tmp_files(out) == []
    assert not (out / "model.safetensors").exists()  # the final generator is written at the end only

    assert run_cli(grey28, out, *SCHEDULE, "--resume") == 0
    for name in ("model.safetensors", "stage1/model.safetensors", "checkpoints/last.safetensors"):
        assert_same_tensors(uninterrupted / name, out / name)
    # the log is the uninterrupted one (same losses, each epoch once)
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(read_log(out)) == strip(read_log(uninterrupted))
    check_run(out, 28, 1, epochs=[1, 2, 3], stages=[1, 1, 2])


def test_resume_drops_log_records_after_the_checkpoint(grey28, tmp_path):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage2-epochs", "0") == 0
    with open(out / "log.jsonl", "a") as handle:  # an epoch logged, then killed before its checkpoint
        handle.write(json.dumps({"epoch": 2, "stage": 1, "d_loss": 1.0}) + "\n" + '{"epoch": 3, "sta')
    assert run_cli(grey28, out, "--stage1-epochs", "2", "--stage2-epochs", "0", "--resume") == 0
    records = read_log(out)
    assert [r["epoch"] for r in records] == [1, 2] and "g_loss" in records[1]


def card_wall_minutes(out: Path) -> float:
    match = re.search(r"wall time ([0-9.]+) minutes", (out / "README.md").read_text())
    assert match, "no wall time in the model card"
    return float(match.group(1))


def test_wall_time_adds_up_over_resumed_sessions(grey28, tmp_path, monkeypatch):
    """The checkpoint keeps the run's wall time; a resume adds its own session to it."""
    out = tmp_path / "run"
    run_until_interrupted(grey28, out, 1, monkeypatch)
    checkpoint = out / "checkpoints" / "last.safetensors"
    parts, meta = load_checkpoint(checkpoint)
    assert meta["epoch"] == 1 and meta["wall_seconds"] > 0
    # pretend the first session took 100 minutes
    save_checkpoint(checkpoint, parts, {**meta, "wall_seconds": 6000.0})
    assert run_cli(grey28, out, *SCHEDULE, "--resume") == 0
    _, meta = load_checkpoint(checkpoint)
    assert meta["epoch"] == 3 and 6000.0 < meta["wall_seconds"] < 6000.0 + 120
    assert 100.0 <= card_wall_minutes(out) < 102.0
    # resuming the finished run keeps the total (it showed only the last session: 0.0 minutes)
    assert run_cli(grey28, out, *SCHEDULE, "--resume") == 0
    assert 100.0 <= card_wall_minutes(out) < 102.0
    _, again = load_checkpoint(checkpoint)
    assert again["wall_seconds"] == meta["wall_seconds"]  # nothing ran, nothing was saved


def test_wall_time_of_an_old_checkpoint_without_it(grey28, tmp_path):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage2-epochs", "0") == 0
    checkpoint = out / "checkpoints" / "last.safetensors"
    parts, meta = load_checkpoint(checkpoint)
    for epochs, wall in enumerate((None, "n/a", -5.0), start=2):  # absent (older versions) or unusable: 0
        save_checkpoint(checkpoint, parts, {k: v for k, v in {**meta, "wall_seconds": wall}.items() if v is not None})
        assert run_cli(grey28, out, "--stage1-epochs", str(epochs), "--stage2-epochs", "0", "--resume") == 0
        assert 0.0 <= card_wall_minutes(out) < 2.0
        parts, meta = load_checkpoint(checkpoint)
        assert 0.0 <= meta["wall_seconds"] < 120


def test_existing_run_needs_resume(grey28, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage2-epochs", "0") == 0
    before = (out / "checkpoints" / "last.safetensors").read_bytes()
    capsys.readouterr()
    assert run_cli(grey28, out, "--stage2-epochs", "0") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err
    assert (out / "checkpoints" / "last.safetensors").read_bytes() == before
    with pytest.raises(FileExistsError):
        distill_mod.distill(tiny_config(grey28, out, stage2_epochs=0))
    # a finished run resumed with the same schedule has nothing left to do
    assert run_cli(grey28, out, "--stage2-epochs", "0", "--resume") == 0
    assert len(read_log(out)) == 1


def test_resume_with_other_architecture_is_refused(grey28, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage2-epochs", "0") == 0
    capsys.readouterr()
    assert run_cli(grey28, out, "--stage2-epochs", "0", "--width", "8", "--resume") == 2
    assert "width" in capsys.readouterr().err


def test_resume_without_checkpoint_starts_fresh(grey28, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage2-epochs", "0", "--resume") == 0
    assert "starting from scratch" in capsys.readouterr().err
    assert [r["epoch"] for r in read_log(out)] == [1]


def test_corrupt_checkpoint_is_reported(grey28, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage2-epochs", "0") == 0
    checkpoint = out / "checkpoints" / "last.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    capsys.readouterr()
    assert run_cli(grey28, out, "--stage2-epochs", "1", "--resume") == 2
    err = capsys.readouterr().err.split("\r")[-1]  # after the data loader's progress bar
    assert err.startswith(f"error: training checkpoint {checkpoint} is truncated or corrupt") and err.count("\n") == 1
    assert f"delete it ({checkpoint}) to start the run over, or restore a copy" in err
    assert "force_download" not in err and "download it again" not in err  # Hub advice, not for a local file
    checkpoint.unlink()  # as the message says: the run starts over
    assert run_cli(grey28, out, "--stage2-epochs", "1", "--resume") == 0
    assert [r["epoch"] for r in read_log(out)] == [1, 2]


def test_resume_with_other_data_is_reported(grey28, rgb32, tmp_path, capsys):
    """A checkpoint of a run on other data (other image shape) is refused with advice, not a traceback."""
    out = tmp_path / "run"
    assert run_cli(rgb32, out, "--stage2-epochs", "0") == 0
    capsys.readouterr()
    assert run_cli(grey28, out, "--stage2-epochs", "0", "--resume") == 2
    err = capsys.readouterr().err.split("\r")[-1]  # after the data loader's progress bar
    checkpoint = out / "checkpoints" / "last.safetensors"
    assert err.startswith(f"error: cannot resume {checkpoint}: this run differs from it (--data: 'rgb32")
    assert "(3 classes, 3x32x32, 36 training images) in the checkpoint, 'grey28" in err
    assert "(3 classes, 1x28x28, 36 training images) now" in err
    assert f"({out / 'distill_config.json'} lists them), or choose another --out (out=)" in err and err.count("\n") == 1


def test_resume_with_other_data_of_the_same_shape_or_settings_is_refused(grey28, tmp_path, capsys):
    """Other images of the same shape, another seed or learning rate: refused, each named;
    the checkpoint and the recorded settings stay as they were."""
    other = write_folder(tmp_path / "other28", 28, "L", n_train=10, seed=3)
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage2-epochs", "0") == 0
    checkpoint = out / "checkpoints" / "last.safetensors"
    before, settings = checkpoint.read_bytes(), (out / "distill_config.json").read_text()
    capsys.readouterr()
    assert run_cli(other, out, "--stage2-epochs", "0", "--seed", "7", "--lr", "0.5", "--resume") == 2
    err = capsys.readouterr().err.split("\r")[-1]
    assert "36 training images) in the checkpoint, 'other28' (3 classes, 1x28x28, 30 training images) now" in err
    assert "--lr: 0.0001 in the checkpoint, 0.5 now; --seed: 0 in the checkpoint, 7 now" in err
    assert checkpoint.read_bytes() == before and (out / "distill_config.json").read_text() == settings
    # the Python API names the DistillConfig fields
    with pytest.raises(distill_mod.ConfigError, match=r"DistillConfig.seed: 0 in the checkpoint, 7 now"):
        distill_mod.distill(tiny_config(grey28, out, stage2_epochs=0, seed=7), resume=True)


def test_resume_may_change_the_schedule_and_reporting(grey28, tmp_path):
    """Longer training, another sample grid, stage-2 settings before stage 2 began, and the
    same images in a renamed folder are fine; the recorded settings follow the session."""
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage2-epochs", "0") == 0
    grey28_copy = tmp_path / "moved" / "renamed"  # the same images, read from elsewhere
    shutil.copytree(grey28, grey28_copy)
    assert run_cli(grey28_copy, out, "--stage2-epochs", "1", "--samples-per-class", "2", "--match-weight", "0.1",
                   "--inner-steps", "3", "--resume") == 0
    assert [r["epoch"] for r in read_log(out)] == [1, 2]
    recorded = json.loads((out / "distill_config.json").read_text())
    assert recorded["stage2_epochs"] == 1 and recorded["samples_per_class"] == 2 and recorded["match_weight"] == 0.1
    assert recorded["data"] == str(grey28_copy)
    # stage 2 has begun: its settings are fixed now
    assert run_cli(grey28, out, "--stage2-epochs", "2", "--match-weight", "0.2", "--inner-steps", "3", "--resume") == 2


def test_resume_names_the_preset_a_run_was_made_with(grey28, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage2-epochs", "0") == 0  # --preset tiny
    capsys.readouterr()
    assert main(["--data", str(grey28), "--out", str(out), "--device", "cpu", "--no-progress", "--stage2-epochs", "0",
                 "--resume"]) == 2
    err = capsys.readouterr().err.split("\r")[-1]
    assert "--width: 16 in the checkpoint, 196 now" in err
    assert f"({out / 'distill_config.json'} lists them, --preset tiny), or choose another --out (out=)" in err


def test_stage_time_limits(grey28, tmp_path, monkeypatch):
    """--stage1-minutes moves on to stage 2 at an epoch boundary; --stage2-minutes ends the run."""
    clock = iter(range(0, 10**6, 100))  # every reading of the clock advances it by 100 s
    monkeypatch.setattr(distill_mod, "time", type("FakeTime", (), {"time": staticmethod(lambda: next(clock))}))
    out = tmp_path / "run"
    flags = ("--stage1-epochs", "3", "--stage2-epochs", "5", "--stage1-minutes", "1", "--stage2-minutes", "9")
    assert run_cli(grey28, out, *flags) == 0
    records = read_log(out)
    assert {r["stage"] for r in records} == {2}  # stage 1 was over budget at once
    assert 1 <= len(records) < 5  # and stage 2 stopped early
    assert [r["epoch"] for r in records] == list(range(4, 4 + len(records)))
    assert (out / "stage1" / "model.safetensors").is_file() and (out / "model.safetensors").is_file()
    _, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["epoch"] == 3 + len(records)


def test_checkpoint_write_is_atomic(trainer, monkeypatch):
    trainer.cfg.progress = False
    trainer.out.mkdir(parents=True)
    trainer.save_checkpoint()
    path = trainer.checkpoint_path
    before = path.read_bytes()
    trainer.epoch = 5
    import synthsets.hub as hub

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(hub.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert tmp_files(trainer.out) == []  # and the partial file is gone
    # the checkpoint round-trips every part
    parts, meta = load_checkpoint(path)
    assert meta["epoch"] == 0 and set(parts) == {"generator", "discriminator", "opt_g", "opt_d"}
    for key, value in trainer.G.state_dict().items():
        assert torch.equal(parts["generator"][key], value)


# -- 5. distributed (2 processes, gloo) -------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_gloo(rgb32, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "synthsets.distill", "--data", str(rgb32), "--out", str(out),
        "--preset", "tiny", "--device", "cpu", "--no-progress", "--stage1-epochs", "2",
        "--stage1-minutes", "30",  # exercises the ranks' agreement on time limits
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("generator written to") == 1  # rank 0 reports
    assert "terminate called" not in result.stderr  # clean shutdown of the gloo group
    assert list(tmp_path.rglob("log.jsonl")) == [out / "log.jsonl"]
    check_run(out, 32, 3, epochs=[1, 2, 3], stages=[1, 1, 2])
    _, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["world_size"] == 2 and meta["epoch"] == 3


# -- 6. presets and flags -------------------------------------------------------------------------
@pytest.fixture
def captured(monkeypatch):
    """Run ``main`` without training: capture the final config."""
    seen = []

    def fake_run(config, resume, real=None):
        seen.append(config)
        return Path(config.out)

    monkeypatch.setattr(distill_mod, "_run", fake_run)
    return seen


@pytest.mark.parametrize(
    "flags, width",
    [([], PRESETS["tiny"]["width"]), (["--width", "8"], 8), (["--width=8"], 8), (["--wid", "8"], 8), (["--width", "196"], 196)],
    ids=["preset", "flag", "flag=value", "abbreviated", "flag-equal-to-default"],
)
def test_explicit_flags_win_over_preset(flags, width, captured, tmp_path):
    assert main(["--data", "d", "--out", str(tmp_path), "--preset", "tiny", *flags]) == 0
    (config,) = captured
    assert config.width == width
    assert config.disc_width == PRESETS["tiny"]["disc_width"]  # the rest still comes from the preset
    assert config.batch_size == PRESETS["tiny"]["batch_size"]


def test_flags_without_preset_are_paper_defaults(captured, tmp_path):
    assert main(["--data", "d", "--out", str(tmp_path), "--lambda", "0.5", "--no-siamese"]) == 0
    (config,) = captured
    assert config == DistillConfig(data="d", out=str(tmp_path), match_weight=0.5, siamese=False)
    assert (config.width, config.stage1_epochs, config.inner_steps, config.stage2_lr) == (196, 120, 16, 5e-6)


def test_library_preset_keeps_explicit_values(captured, tmp_path):
    distill_mod.distill(data="d", out=str(tmp_path), preset="tiny", width=8)
    distill_mod.distill(DistillConfig(data="d", out=str(tmp_path), preset="tiny", width=8))
    assert [c.width for c in captured] == [8, 8]
    assert all(c.disc_width == PRESETS["tiny"]["disc_width"] for c in captured)
    with pytest.raises(ValueError, match="unknown preset"):
        distill_mod.distill(data="d", out=str(tmp_path), preset="huge")


@pytest.fixture
def built(monkeypatch):
    """Build real Distillers but do not train: capture each one's final config."""
    seen = []

    def fake_fit(self, resume=False):
        seen.append(self.cfg)
        return self.out

    monkeypatch.setattr(Distiller, "fit", fake_fit)
    return seen


def test_distiller_applies_the_preset(grey28, tmp_path):
    """``Distiller(DistillConfig(preset="tiny"))`` builds the tiny run, not the paper's."""
    config = DistillConfig(data=str(grey28), out=str(tmp_path / "run"), preset="tiny", device="cpu", progress=False)
    d = Distiller(config)
    try:
        for name, value in PRESETS["tiny"].items():
            assert getattr(d.cfg, name) == value, name
        assert d.G.config.width == PRESETS["tiny"]["width"]
        assert d.cfg.preset == "tiny" and config.width == 196  # the caller's config is left alone
        assert d.cfg.pool is not PRESETS["tiny"]["pool"]  # the config owns its lists
    finally:
        d.close()


def test_distiller_explicit_values_win_over_the_preset(grey28, tmp_path):
    config = DistillConfig(data=str(grey28), out=str(tmp_path / "run"), preset="tiny", device="cpu", progress=False,
                           batch_size=16, width=8)
    d = Distiller(config)
    try:
        assert (d.cfg.batch_size, d.cfg.width, d.G.config.width) == (16, 8, 8)
        assert d.cfg.disc_width == PRESETS["tiny"]["disc_width"]  # the rest from the preset
    finally:
        d.close()


def test_preset_is_applied_once(grey28, built, tmp_path):
    """A field explicitly set to its default wins on the CLI and through distill(): the preset
    applied there is not applied again by the Distiller."""
    common = {"data": str(grey28), "out": str(tmp_path / "run"), "preset": "tiny", "device": "cpu", "progress": False}
    assert main(["--data", str(grey28), "--out", str(tmp_path / "run"), "--preset", "tiny", "--device", "cpu",
                 "--no-progress", "--batch-size", "64", "--width", "196"]) == 0
    distill_mod.distill(**common, batch_size=64, width=196)
    distill_mod.distill(apply_preset(DistillConfig(**common, batch_size=64, width=196), explicit=["batch_size", "width"]))
    distill_mod.distill(DistillConfig(**common))  # nothing explicit: all from the preset
    assert [(c.batch_size, c.width) for c in built] == [(64, 196)] * 3 + [(8, PRESETS["tiny"]["width"])]
    assert all(c.disc_width == PRESETS["tiny"]["disc_width"] for c in built)
    applied = apply_preset(DistillConfig(**common, batch_size=64), explicit=["batch_size"])
    assert apply_preset(applied) is applied  # a second call changes nothing
    d = Distiller(dataclasses.replace(applied, width=196))  # a copy keeps the mark
    d.close()
    assert (d.cfg.batch_size, d.cfg.width) == (64, 196)


def test_saved_config_round_trips_without_applying_the_preset_again(grey28, tmp_path):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--batch-size", "64", "--stage2-epochs", "0") == 0
    saved = json.loads((out / "distill_config.json").read_text())
    assert saved["batch_size"] == 64 and saved["width"] == PRESETS["tiny"]["width"] and saved["preset"] == "tiny"
    d = Distiller(DistillConfig(**saved))  # the run's settings, as saved
    try:
        assert d.cfg.to_json() == saved
    finally:
        d.close()


def test_python_api_preset_run_resumes(grey28, tmp_path):
    """A run started with ``Distiller(DistillConfig(preset=...))`` resumes with the same call."""
    def config(stage2_epochs: int) -> DistillConfig:
        return DistillConfig(data=str(grey28), out=str(tmp_path / "run"), preset="tiny", device="cpu",
                             progress=False, stage2_epochs=stage2_epochs)

    distill_mod._run(config(0), resume=False)
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert meta["config"]["width"] == PRESETS["tiny"]["width"] and meta["epoch"] == 1
    distill_mod._run(config(1), resume=True)
    assert [r["stage"] for r in read_log(tmp_path / "run")] == [1, 2]


def test_end_to_end_width_flag_with_preset(grey28, tmp_path):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--width", "8", "--stage2-epochs", "0") == 0
    assert json.loads((out / "config.json").read_text())["width"] == 8
    saved = json.loads((out / "distill_config.json").read_text())
    assert saved["width"] == 8 and saved["disc_width"] == PRESETS["tiny"]["disc_width"]


def test_image_folder_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    """A decoded image folder is cached; changing a file replaces the cache entry."""
    from PIL import Image

    from synthsets import data as data_mod

    root = tmp_path / "imgs"
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (28, 28), color=40 * i + (100 if c == "b" else 0)).save(root / split / c / f"{i}.png")
    monkeypatch.setenv("SYNTHSETS_CACHE", str(tmp_path / "cache"))
    first = data_mod.load_real(root)
    files = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(data_mod, "_image_folder", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    second = data_mod.load_real(root)  # served from the cache: no folder decoding
    assert calls == []
    assert torch.equal(first.train.images, second.train.images) and first.classes == second.classes
    assert torch.equal(first.test.labels, second.test.labels)
    monkeypatch.undo()
    monkeypatch.setenv("SYNTHSETS_CACHE", str(tmp_path / "cache"))
    Image.new("L", (28, 28), color=255).save(root / "train" / "a" / "0.png")  # change one image
    third = data_mod.load_real(root)
    assert not torch.equal(first.train.images, third.train.images)
    replaced = list((tmp_path / "cache").glob("*.safetensors"))  # the stale copy is gone
    assert len(replaced) == 1 and replaced != files
    resized = data_mod.load_real(root, image_size=32)  # other settings: their own copy, beside it
    assert resized.image_size == 32 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    monkeypatch.setenv("SYNTHSETS_CACHE", "off")
    data_mod.load_real(root)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_push_to_hub_round_trips_through_a_local_endpoint(grey28, tmp_path, hub_endpoint):
    """--push-to-hub uploads the output folder (not the checkpoints) with the real client."""
    import synthsets

    out = tmp_path / "pushed"
    assert run_cli(grey28, out, "--push-to-hub", "me/dim-grey") == 0
    remote = hub_endpoint.state.files("me/dim-grey")
    assert {"config.json", "model.safetensors", "README.md", "log.jsonl"} <= set(remote)
    assert not any(name.startswith("checkpoints/") for name in remote)
    assert remote["model.safetensors"] == (out / "model.safetensors").read_bytes()
    loaded = synthsets.Generator.from_pretrained("me/dim-grey", cache_dir=tmp_path / "cache")
    local = synthsets.Generator.from_pretrained(out)
    for key, value in local.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


# -- 7. input checks: bad settings fail before any data is read ------------------------------------
BAD_FLAGS = {
    "batch-size": (["--batch-size", "0"], "--batch-size must be a positive int, got 0"),
    "negative-seed": (["--seed", "-1"], "--seed must be an int >= 0, got -1"),
    "huge-seed": (["--seed", str(2**64)], f"--seed must lie in [0, 2**63), got {2**64}"),
    "samples-per-class": (["--samples-per-class", "0"], "--samples-per-class must be a positive int, got 0"),
    "steps-per-epoch": (
        ["--steps-per-epoch", "0"],
        "--steps-per-epoch must be a positive int, got 0 (leave it unset for one pass over the training set)",
    ),
    "stage2-steps-per-epoch": (
        ["--stage2-steps-per-epoch", "0"],
        "--stage2-steps-per-epoch must be a positive int, got 0 (leave it unset for the stage-1 number of steps)",
    ),
    "negative-epochs": (
        ["--stage1-epochs", "-1", "--stage2-epochs", "-5"],
        "--stage1-epochs must be an int >= 0, got -1 (0 skips the stage)",
    ),
    "negative-stage2-epochs": (["--stage2-epochs", "-5"], "--stage2-epochs must be an int >= 0, got -5 (0 skips the stage)"),
    "no-epochs": (
        ["--stage1-epochs", "0", "--stage2-epochs", "0"],
        (
            "--stage1-epochs and --stage2-epochs are both 0, which would publish an untrained generator: "
            "give at least one stage a positive number of epochs"
        ),
    ),
    "lr": (["--lr", "0"], "--lr must be a number > 0, got 0.0"),
    "lr-nan": (["--lr", "nan"], "--lr must be a number > 0, got nan"),
    "stage2-lr": (["--stage2-lr=-1e-4"], "--stage2-lr must be a number > 0, got -0.0001"),
    "lambda": (["--lambda", "-1"], "--match-weight/--lambda must be a number >= 0, got -1.0 (0 leaves the GAN loss alone)"),
    "width": (["--width", "0"], "--width must be a positive int, got 0"),
    "disc-width": (["--disc-width", "0"], "--disc-width must be a positive int, got 0"),
    "noise-dim": (["--noise-dim", "0"], "--noise-dim must be a positive int, got 0"),
    "inner-steps": (["--inner-steps", "0"], "--inner-steps must be a positive int, got 0"),
    "pool-width": (["--pool-width", "0"], "--pool-width must be a positive int, got 0 (leave it unset for ConvNet width 128)"),
    "pool": (["--pool", "convnet3", "nosuchnet"], "--pool has unknown models ['nosuchnet']: use synthsets models ("),
    "stage1-minutes": (["--stage1-minutes", "0"], "--stage1-minutes must be a number > 0, got 0.0 (leave it unset"),
    "stage2-minutes": (["--stage2-minutes", "-1"], "--stage2-minutes must be a number > 0, got -1.0 (leave it unset"),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_cli_rejects_bad_settings_before_loading_data(case, tmp_path, capsys, monkeypatch):
    flags, message = BAD_FLAGS[case]
    monkeypatch.setattr(distill_mod, "load_real", lambda *a, **k: pytest.fail("data loaded for a run that cannot start"))
    out = tmp_path / "out"
    rc = main(["--data", str(tmp_path / "no-data"), "--out", str(out), "--preset", "tiny", "--device", "cpu",
               "--no-progress", *flags])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_one_stage_may_have_zero_epochs(grey28, tmp_path):
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--stage1-epochs", "0") == 0  # stage 2 only
    assert [(r["epoch"], r["stage"]) for r in read_log(out)] == [(1, 2)]
    assert (out / "model.safetensors").is_file()


def test_steps_per_epoch_none_is_a_full_pass(trainer):
    full = len(trainer.real.train) // trainer.cfg.batch_size  # 36 images, batch 8
    assert full == 4
    trainer.cfg.steps_per_epoch = trainer.cfg.stage2_steps_per_epoch = None
    assert trainer._steps(1) == trainer._steps(2) == full
    trainer.cfg.steps_per_epoch = 1  # a cap of 1 is a cap, not "unset"
    assert trainer._steps(1) == trainer._steps(2) == 1
    trainer.cfg.steps_per_epoch = 100  # a cap above a full pass is a full pass
    assert trainer._steps(1) == full
    trainer.cfg.stage2_steps_per_epoch = 6
    assert trainer._steps(2) == 6


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 0, "DistillConfig.batch_size must be a positive int, got 0"),
        ("batch_size", 8.0, "DistillConfig.batch_size must be a positive int, got 8.0"),
        ("samples_per_class", 0, "DistillConfig.samples_per_class must be a positive int, got 0"),
        ("steps_per_epoch", 0, "DistillConfig.steps_per_epoch must be a positive int, got 0"),
        ("stage2_steps_per_epoch", -1, "DistillConfig.stage2_steps_per_epoch must be a positive int, got -1"),
        ("stage1_epochs", -1, "DistillConfig.stage1_epochs must be an int >= 0, got -1"),
        ("stage2_epochs", True, "DistillConfig.stage2_epochs must be an int >= 0, got True"),
        ("lr", 0.0, "DistillConfig.lr must be a number > 0, got 0.0"),
        ("stage2_lr", float("inf"), "DistillConfig.stage2_lr must be a number > 0, got inf"),
        ("inner_lr", -0.01, "DistillConfig.inner_lr must be a number > 0, got -0.01"),
        ("gp_weight", -10.0, "DistillConfig.gp_weight must be a number >= 0, got -10.0"),
        ("match_weight", float("nan"), "DistillConfig.match_weight must be a number >= 0, got nan"),
        ("inner_weight_decay", -1.0, "DistillConfig.inner_weight_decay must be a number >= 0, got -1.0"),
        ("inner_momentum", 1.0, "DistillConfig.inner_momentum must be a number in [0, 1), got 1.0"),
        ("inner_steps", 0, "DistillConfig.inner_steps must be a positive int, got 0"),
        ("noise_dim", 0, "DistillConfig.noise_dim must be a positive int, got 0"),
        ("width", -3, "DistillConfig.width must be a positive int, got -3"),
        ("disc_width", 0, "DistillConfig.disc_width must be a positive int, got 0"),
        ("pool_width", 0, "DistillConfig.pool_width must be a positive int, got 0"),
        ("betas", (0.5, 1.0), "DistillConfig.betas must be two Adam betas in [0, 1), got (0.5, 1.0)"),
        ("image_size", 64, "DistillConfig.image_size must be 28 or 32"),
        ("pool", [], "DistillConfig.pool must be a non-empty list of model names"),
        ("pool", "convnet3", "DistillConfig.pool must be a non-empty list of model names"),
        ("pool", ["nosuchnet"], "DistillConfig.pool has unknown models ['nosuchnet']"),
        ("seed", 1.5, "DistillConfig.seed must be an int >= 0, got 1.5"),
        ("stage1_minutes", 0, "DistillConfig.stage1_minutes must be a number > 0, got 0"),
        ("preset", "huge", "DistillConfig.preset names an unknown preset 'huge'"),
    ],
)
def test_python_api_gets_the_same_checks(field, value, message, tmp_path):
    with pytest.raises(ValueError) as info:
        DistillConfig(**{field: value})
    assert str(info.value).startswith(message) and isinstance(info.value, distill_mod.ConfigError)
    with pytest.raises(ValueError, match=f"^{message[:30]}"):  # the library call too
        distill_mod.distill(data=str(tmp_path / "no-data"), out=str(tmp_path / "out"), **{field: value})
    assert not (tmp_path / "out").exists()


def test_python_api_rejects_no_epochs_and_accepts_edge_values():
    with pytest.raises(ValueError, match=r"^DistillConfig\.stage1_epochs and DistillConfig\.stage2_epochs are both 0"):
        DistillConfig(stage1_epochs=0, stage2_epochs=0)
    # the edges of the valid ranges
    DistillConfig(stage1_epochs=0, gp_weight=0.0, match_weight=0, inner_momentum=0, inner_weight_decay=0, seed=2**63 - 1,
                  steps_per_epoch=1, stage2_steps_per_epoch=1, betas=[0.0, 0.999], stage1_minutes=float("inf"))


def test_config_paths_become_str(tmp_path):
    config = DistillConfig(data=tmp_path / "d", root=tmp_path, out=tmp_path / "out")
    assert (config.data, config.root, config.out) == (str(tmp_path / "d"), str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"^DistillConfig\.out must be a str naming the output folder, got ''"):
        DistillConfig(out="")


def test_distiller_checks_a_config_changed_after_construction(tmp_path, monkeypatch):
    monkeypatch.setattr(distill_mod, "load_real", lambda *a, **k: pytest.fail("data loaded for a run that cannot start"))
    config = DistillConfig(data=str(tmp_path / "no-data"), out=str(tmp_path / "out"), device="cpu")
    config.batch_size = 0
    with pytest.raises(ValueError, match=r"^DistillConfig\.batch_size must be a positive int, got 0"):
        Distiller(config)


def test_out_that_is_a_file_is_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distill_mod, "load_real", lambda *a, **k: pytest.fail("data loaded for a run that cannot start"))
    monkeypatch.chdir(tmp_path)
    Path("afile.txt").write_text("not a folder")
    assert main(["--data", "d", "--out", "afile.txt", "--preset", "tiny", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "error: --out afile.txt is a file; give a folder path\n"
    assert main(["--data", "d", "--out", "afile.txt/run", "--preset", "tiny", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "error: --out afile.txt/run: afile.txt is a file; give a folder path\n"
    with pytest.raises(ValueError, match=r"^DistillConfig\.out afile\.txt is a file; give a folder path"):
        Distiller(DistillConfig(data="d", out="afile.txt", device="cpu"))
    assert Path("afile.txt").read_text() == "not a folder"


def test_help_describes_every_preset_and_shows_defaults():
    parser = distill_mod.build_parser()
    actions = {action.dest: action for action in parser._actions}
    assert all(action.help for action in parser._actions), [a.dest for a in parser._actions if not a.help]
    preset_help = actions["preset"].help
    assert all(f"{name}:" in preset_help for name in PRESETS)
    text = parser.format_help()
    defaults = DistillConfig()
    for dest in ("noise_dim", "stage1_epochs", "stage2_epochs", "batch_size", "match_weight", "seed", "samples_per_class"):
        assert "%(default)s" in actions[dest].help, dest
        assert f"(default: {getattr(defaults, dest)})" in " ".join(text.split()), dest
    assert "--lambda" in text and "logits-matching" in actions["match_weight"].help
    assert "progress bar" in actions["progress"].help



def test_push_to_hub_offline_is_refused_before_training(grey28, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--push-to-hub", "me/dim-grey") == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --push-to-hub 'me/dim-grey' needs the network, but huggingface_hub is offline (HF_HUB_OFFLINE=1): "
        f"unset it, or leave the option out and upload the finished folder later with: hf upload me/dim-grey {out} . "
        "--exclude 'checkpoints/*'\n"
    )
    assert not out.exists()  # nothing trained


def test_push_to_hub_without_a_network_is_refused_before_training(grey28, tmp_path, capsys, no_dns):
    """No network at all (the Hub's host name does not resolve): refused at once too."""
    out = tmp_path / "run"
    assert run_cli(grey28, out, "--push-to-hub", "me/dim-grey") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --push-to-hub 'me/dim-grey' needs the network, but the Hub cannot be reached "
                          "(cannot resolve ")
    assert "Name or service not known): check the network connection, or leave the option out" in err
    assert f"hf upload me/dim-grey {out} . --exclude 'checkpoints/*'" in err
    assert not out.exists()  # nothing trained


def test_failed_upload_says_the_folder_is_complete(grey28, tmp_path, capsys, hub_endpoint):
    """An upload that fails after training (here: the Hub is gone) ends with one line that
    says where the generator is and how to upload it later, not a traceback."""
    import synthsets

    out = tmp_path / "run"
    hub_endpoint.stop()  # the Hub goes away during training
    assert run_cli(grey28, out, "--push-to-hub", "me/dim-grey") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: the generator is complete in {out}, but uploading it to me/dim-grey failed (")
    assert err.endswith(f"upload it later with: hf upload me/dim-grey {out} . --exclude 'checkpoints/*'")
    assert synthsets.Generator.from_pretrained(out).config.num_classes == 3  # the folder is usable


def test_stage2_learning_rate_applies_to_both_optimisers(trainer):
    """The reference sets the generator's and the discriminator's Adam to the stage-2 rate."""
    trainer.run_epoch(0)
    assert {g["lr"] for opt in (trainer.opt_g, trainer.opt_d) for g in opt.param_groups} == {trainer.cfg.lr}
    trainer.run_epoch(trainer.cfg.stage1_epochs)
    assert {g["lr"] for opt in (trainer.opt_g, trainer.opt_d) for g in opt.param_groups} == {trainer.cfg.stage2_lr}


def test_matching_sees_batch_statistics(trainer, monkeypatch):
    """A BatchNorm pool model matches in training mode: each batch is normalised with its
    own statistics, as in the reference."""
    seen = []
    original = Distiller.matching_loss

    def spy(self, model, real, fake):
        seen.append(model.training)
        return original(self, model, real, fake)

    monkeypatch.setattr(Distiller, "matching_loss", spy)
    trainer.cfg.pool = ["resnet10"]
    record = trainer.run_epoch(trainer.cfg.stage1_epochs)
    assert record["pool_model"] == "resnet10" and seen and all(seen)


# -- 8. what --out may hold; pool models that cannot take the data's images ----------------------
def fake_generator_folder(folder: Path) -> dict[str, bytes]:
    """A folder like a downloaded generator (weights, config, card, evaluation, samples); returns its files."""
    synthsets.Generator(num_classes=3, channels=1, image_size=28, width=8, dataset="grey", classes=CLASSES,
                        mean=[0.5], std=[0.5]).save_pretrained(folder)
    (folder / "README.md").write_text("# a model card\n")
    (folder / "evaluation.json").write_text('{"runs": []}\n')
    (folder / "samples.png").write_bytes(b"png")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_out_holding_other_files_is_refused(grey28, tmp_path, capsys, monkeypatch):
    """A generator folder is not overwritten (with or without --resume), before any data are
    read; the library calls refuse it the same way."""
    out = tmp_path / "gen"
    before = fake_generator_folder(out)
    expected = (
        f"{out} already exists and is not empty (README.md, config.json, evaluation.json, model.safetensors, "
        "samples.png), and holds no synthsets.distill run to resume (no checkpoints/last.safetensors): a new run "
        "would overwrite those files or mix with them; choose a new or empty --out (out=)"
    )
    with monkeypatch.context() as patch:
        patch.setattr(distill_mod, "load_real", lambda *a, **k: pytest.fail("data loaded for a run that cannot start"))
        for extra in ([], ["--resume"]):
            assert run_cli(grey28, out, *extra) == 2
            assert capsys.readouterr().err == f"error: {expected}\n"
        for resume in (False, True):
            with pytest.raises(FileExistsError) as caught:
                distill_mod.distill(tiny_config(grey28, out), resume=resume)
            assert str(caught.value) == expected
    d = Distiller(tiny_config(grey28, out))  # the Distiller alone: fit() refuses before writing
    try:
        for resume in (False, True):
            with pytest.raises(FileExistsError) as caught:
                d.fit(resume=resume)
            assert str(caught.value) == expected
    finally:
        d.close()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, nothing replaced
    (out / "samples.png").unlink()  # seven names are shown as six and "..."
    for name in ("a", "b", "c"):
        (out / name).write_text(name)
    assert run_cli(grey28, out) == 2
    assert "(README.md, a, b, c, config.json, evaluation.json, ...), and holds no" in capsys.readouterr().err


def test_new_empty_and_own_run_folders_are_used(grey28, tmp_path, capsys, monkeypatch):
    """A new folder, an empty one, and a run stopped before its first checkpoint (with or
    without --resume) start a run; a finished run whose checkpoint is gone starts over only
    with --resume."""
    assert run_cli(grey28, tmp_path / "new" / "run", "--stage2-epochs", "0") == 0
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".gitkeep").write_text("")  # hidden files do not count
    assert run_cli(grey28, tmp_path / "empty", "--stage2-epochs", "0") == 0
    assert (tmp_path / "empty" / ".gitkeep").exists()
    out = tmp_path / "stopped"
    run_until_interrupted(grey28, out, 0, monkeypatch)  # stopped in the first epoch: settings only
    assert sorted(p.name for p in out.iterdir()) == ["distill_config.json"]
    assert run_cli(grey28, out, *SCHEDULE) == 0
    assert [r["epoch"] for r in read_log(out)] == [1, 2, 3]
    run_until_interrupted(grey28, tmp_path / "stopped2", 0, monkeypatch)
    assert run_cli(grey28, tmp_path / "stopped2", *SCHEDULE, "--resume") == 0
    shutil.rmtree(out / "checkpoints")  # a finished run without its checkpoint
    capsys.readouterr()
    assert run_cli(grey28, out, *SCHEDULE) == 2
    assert capsys.readouterr().err == (
        f"error: {out} already holds a finished run (model.safetensors) but no checkpoint "
        f"({out / 'checkpoints' / 'last.safetensors'}) to continue it from; pass --resume (resume=True) to train it "
        "again from scratch, or choose another --out (out=)\n"
    )
    assert run_cli(grey28, out, *SCHEDULE, "--resume") == 0
    assert "starting from scratch" in capsys.readouterr().err
    assert [r["epoch"] for r in read_log(out)] == [1, 2, 3]


VIT = "vit_tiny_patch16_224"  # a timm model made for 224x224 images only


def test_pool_model_that_cannot_take_the_images_is_refused_before_training(grey28, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Distiller, "run_epoch", lambda *a: pytest.fail("trained with a pool that cannot work"))
    out = tmp_path / "run"
    name = load_real(grey28).name
    expected = (
        f"model '{VIT}' cannot be used on {name}: it fails on a batch of 1x28x28 images (AssertionError: Input height "
        "(28) doesn't match model (224)); choose pool models that take 1x28x28 images, e.g. convnet3, resnet10, "
        "resnet18 (a timm model with a fixed input size, such as a ViT made for 224x224, needs images of that size; "
        "DiM generators make 28 or 32 px images)"
    )
    assert run_cli(grey28, out, "--pool", "convnet3", VIT) == 2
    assert capsys.readouterr().err.split("\r")[-1] == f"error: --pool {expected}\n"
    assert not out.exists()  # stage 1 did not run first
    with pytest.raises(distill_mod.ConfigError) as caught:
        Distiller(tiny_config(grey28, out, pool=[VIT]))
    assert str(caught.value) == f"DistillConfig.pool {expected}"
    # a run without stage 2 never builds a pool model
    monkeypatch.undo()
    assert run_cli(grey28, out, "--pool", VIT, "--stage2-epochs", "0") == 0


def test_pool_check_builds_each_model_once_and_suggests_another_size(grey28, monkeypatch):
    from synthsets import evaluate as evaluate_mod

    built = []
    original = evaluate_mod.create_model
    monkeypatch.setattr(evaluate_mod, "_INPUT_CHECKED", set())
    monkeypatch.setattr(evaluate_mod, "create_model",
                        lambda name, *a, **k: built.append((name, k)) or original(name, *a, **k))
    real = load_real(grey28)
    config = tiny_config(grey28, "unused", pool=["convnet3", "convnet3", "resnet10"], pool_width=4)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    distill_mod._check_pool(config, real)
    assert torch.equal(torch.rand(3), expected)  # the check leaves the random stream alone
    assert built == [("convnet3", {"width": 4}), ("resnet10", {})]
    distill_mod._check_pool(config, real)  # known to work: not built again
    assert len(built) == 2
    # a model that takes 32 px but not 28 px images: --image-size 32 is suggested
    monkeypatch.setattr(distill_mod, "_model_input_problem",
                        lambda name, classes, c, size, kw: "fails (too small)" if size == 28 else None)
    with pytest.raises(distill_mod.ConfigError,
                       match=r"or pass --image-size 32 \(image_size=32\) to train on 32x32 images"):
        distill_mod._check_pool(config, real)


def test_one_class_folder_is_refused_naming_the_data(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "one"
    for i in range(3):
        (folder / "train" / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("L", (28, 28), 40 * i).save(folder / "train" / "cat" / f"{i}.png")
    out = tmp_path / "run"
    assert run_cli(folder, out) == 2
    assert capsys.readouterr().err.split("\r")[-1] == (
        f"error: {folder} has 1 class (cat); a conditional generator needs at least 2: give an image folder with "
        "one sub-folder per class (train/<class>/<image>)\n"
    )
    assert not out.exists()


def test_resume_removes_files_half_written_by_a_killed_run(grey28, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_until_interrupted(grey28, out, 1, monkeypatch)
    stale = [out / "checkpoints" / ".last.safetensors.k1ll3d.tmp", out / ".model.safetensors.x7q2.tmp"]
    for path in stale:  # what a SIGKILL during an atomic write leaves
        path.write_bytes(b"partial")
    keep = out / "checkpoints" / "notes.tmp"  # not an atomic write's temporary: kept
    keep.write_text("mine")
    assert run_cli(grey28, out, *SCHEDULE, "--resume") == 0
    assert not any(path.exists() for path in stale) and keep.exists()
    assert not list(out.rglob(".*.tmp"))
    # a new run into a folder of hidden files only: not a run's folder, nothing is deleted
    mine = tmp_path / "fresh" / ".my-notes.tmp"
    mine.parent.mkdir()
    mine.write_text("mine")
    assert run_cli(grey28, mine.parent, "--stage2-epochs", "0") == 0
    assert mine.read_text() == "mine"


def test_errors_are_printed_once_under_torchrun_only(grey28, tmp_path, capsys, monkeypatch):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "foo.txt").write_text("x")
    expected = "error: " + str(tmp_path / "taken") + " already exists and is not empty (foo.txt)"
    for rank, world, printed in (("0", "2", True), ("1", "2", False), ("1", "1", True), ("", "", True)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        assert run_cli(grey28, tmp_path / "taken") == 2
        assert capsys.readouterr().err.startswith(expected) is printed, (rank, world)


def test_stage2_dsa_full_or_as_the_reference_code(grey28, tmp_path, capsys):
    full = Distiller(tiny_config(grey28, tmp_path / "full"))
    assert full.dsa.ops == full.match_dsa.ops == ("flip", "color", "crop", "scale", "rotate", "cutout")
    reference = Distiller(tiny_config(grey28, tmp_path / "reference", stage2_dsa="reference"))
    assert reference.dsa.ops == ("color", "crop") and reference.match_dsa.ops == ("color", "crop", "cutout")
    for trainer in (full, reference):
        trainer.close()
    for bad in ("paper", ["full"]):
        with pytest.raises(distill_mod.ConfigError, match=r"stage2_dsa must be one of \['full', 'reference'\], got "):
            tiny_config(grey28, tmp_path / "bad", stage2_dsa=bad)
    with pytest.raises(SystemExit):
        run_cli(grey28, tmp_path / "bad", "--stage2-dsa", "paper")
    assert "--stage2-dsa: invalid choice: 'paper'" in capsys.readouterr().err
    assert "stage2_dsa" in distill_mod.STAGE2_SETTINGS  # may change while stage 2 has not begun
    out = tmp_path / "reference-run"
    assert run_cli(grey28, out, "--stage2-dsa", "reference") == 0
    assert json.loads((out / "distill_config.json").read_text())["stage2_dsa"] == "reference"
    assert "| stage2_dsa | reference |" in (out / "README.md").read_text()  # the model card says so
