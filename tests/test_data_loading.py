"""Tests of synthsets.data's loading options and messages (tiny synthetic image folders; no real data)."""

from __future__ import annotations

import pytest
import torch

from synthsets.data import (
    DataNotFoundError,
    _to_uint8_tensor,
    load_real,
    torchvision_channels,
)


def _image_folder(root, classes=("a", "b"), per_class=2, size=8):
    from PIL import Image

    for split in ("train", "test"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = torch.full((size, size, 3), 40 * c + 10 * i, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


class _PilList:
    """A torchvision-like dataset of PIL images without a ``data`` array (the decoding path)."""

    def __init__(self, n=3, size=8):
        from PIL import Image

        self.items = [(Image.new("L", (size, size), 20 * i), i % 2) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def test_progress_false_hides_the_reading_bars(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("SYNTHSETS_CACHE", "0")  # decode every time (a cache hit shows no bar)
    data = _image_folder(tmp_path / "toyset")
    capfd.readouterr()
    quiet = load_real(data, progress=False)
    assert "reading" not in capfd.readouterr().err
    loud = load_real(data)  # default: bars as before
    assert f"reading {data / 'train'}" in capfd.readouterr().err
    assert torch.equal(quiet.train.images, loud.train.images) and torch.equal(quiet.test.labels, loud.test.labels)


def test_decoding_progress_flag(capfd):
    capfd.readouterr()
    images, labels = _to_uint8_tensor(_PilList(), None, "reading toy train", progress=False)
    assert "reading toy train" not in capfd.readouterr().err
    assert images.shape == (3, 1, 8, 8) and labels.tolist() == [0, 1, 0]
    _to_uint8_tensor(_PilList(), None, "reading toy train")
    assert "reading toy train" in capfd.readouterr().err


@pytest.mark.parametrize("name, layout", [
    ("cifar10", "ROOT/cifar-10-batches-py/ holding data_batch_1 ... data_batch_5, test_batch and batches.meta"),
    ("cifar100", "ROOT/cifar-100-python/ holding train, test and meta"),
    ("mnist", "ROOT/MNIST/raw/ holding train-images-idx3-ubyte"),
    ("fashion-mnist", "ROOT/FashionMNIST/raw/ holding train-images-idx3-ubyte"),
])
def test_missing_torchvision_dataset_gives_its_own_layout(tmp_path, name, layout):
    (tmp_path / "cifar10-jpg" / "train").mkdir(parents=True)  # an image folder next to it
    with pytest.raises(DataNotFoundError) as info:
        load_real(name, tmp_path)
    message = str(info.value)
    assert layout in message and "\n" not in message
    assert f"under --root (root=) {tmp_path.resolve()}:" in message
    assert "--download" in message and "train/ and test/" in message
    assert "You can use download=True" not in message and "You can use" not in message  # no torchvision wording
    if name.startswith("cifar"):
        assert "MNIST" not in message  # no MNIST hint for CIFAR
    # the image folder is suggested for the dataset it is named after only
    assert (f"--data {tmp_path.resolve() / 'cifar10-jpg'}" in message) == (name == "cifar10")


def test_missing_root_folder_is_named(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"under --root \(root=\) .*nowhere \(no such folder\): torchvision expects ROOT/cifar-10"):
        load_real("cifar10", tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match=r"needs a root \(--root, root=\).*ROOT/cifar-10-batches-py/"):
        load_real("cifar10")


def test_channels_mismatch_message(tmp_path):
    with pytest.raises(ValueError, match=r"mnist has 1 channel\(s\); it cannot be loaded with channels=3 "
                                         r"\(pass channels=None or 1\)"):
        load_real("mnist", tmp_path, channels=3)


def test_torchvision_channels(tmp_path, monkeypatch):
    assert torchvision_channels("mnist", tmp_path) == 1
    assert torchvision_channels("CIFAR-10", tmp_path) == 3
    assert torchvision_channels(tmp_path) is None  # an image folder
    monkeypatch.chdir(tmp_path)
    assert torchvision_channels("svhn") == 3
    (tmp_path / "svhn").mkdir()  # without a root, an existing folder of that name is an image folder
    assert torchvision_channels("svhn") is None and torchvision_channels("svhn", tmp_path) == 3


def test_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    """An offline download attempt must not leave ROOT/MNIST/raw behind (torchvision makes it)."""
    import torchvision.datasets as tvd

    from synthsets.data import DataNotFoundError, load_real

    def offline(self, *args, **kwargs):
        (tmp_path / "data" / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(tvd.MNIST, "__init__", offline)
    with pytest.raises(DataNotFoundError, match="download into --root failed too"):
        load_real("mnist", tmp_path / "data", download=True)
    assert not (tmp_path / "data").exists()
    kept = tmp_path / "kept"
    (kept / "MNIST" / "raw").mkdir(parents=True)  # folders that were there before stay
    monkeypatch.setattr(tvd.MNIST, "__init__", lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("not found")))
    with pytest.raises(DataNotFoundError):
        load_real("mnist", kept)
    assert (kept / "MNIST" / "raw").is_dir()


@pytest.mark.parametrize("channels", [None, 3])  # the format guess reads headers; loading decodes pixels
def test_corrupt_image_is_named_with_the_fix(tmp_path, monkeypatch, channels):
    from synthsets.data import UnreadableImageError

    monkeypatch.setenv("SYNTHSETS_CACHE", "0")
    root = _image_folder(tmp_path / "folder")
    (root / "train" / "a" / "bad.png").write_bytes(b"notapng")
    with pytest.raises(UnreadableImageError, match=r"cannot read the image .*train/a/bad\.png .*remove or replace the file"):
        load_real(root, channels=channels, progress=False)
    assert issubclass(UnreadableImageError, ValueError)  # the command lines' error handling catches it


@pytest.mark.parametrize("inner", ["", "raw"])
def test_torchvision_folder_passed_as_image_folder_gets_the_right_flags(tmp_path, inner):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataNotFoundError, match=rf"torchvision's mnist folder, not an image folder: "
                                                rf"pass --data mnist --root {tmp_path}"):
        load_real(tmp_path / "MNIST" / inner)
