"""``materialize`` never mixes a new fixed set with an old one, and replaces only its own sets."""

from __future__ import annotations

import pytest
import torch

from synthsets import SyntheticDataset
from synthsets.export import load_materialized


@pytest.fixture
def dataset(make_generator):
    return SyntheticDataset(make_generator(image_size=28, channels=1, num_classes=3), 2, seed=0, device="cpu")


def _pngs(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))


def test_materialize_refuses_a_non_empty_folder_and_replaces_its_own_set(tmp_path, dataset):
    from torchvision.datasets import ImageFolder

    path = dataset.materialize(4, path=tmp_path / "fixed")
    assert len(ImageFolder(str(path))) == 12
    with pytest.raises(FileExistsError, match="not empty.*overwrite=True"):
        dataset.materialize(1, path=path)
    assert len(_pngs(path)) == 12  # untouched
    dataset.materialize(1, path=path, overwrite=True)  # replaced, not mixed: 1 image per class
    assert _pngs(path) == ["0/0.png", "1/0.png", "2/0.png"]
    assert len(ImageFolder(str(path))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed"]  # no temporary folder left


def test_materialize_never_replaces_foreign_files(tmp_path, dataset):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="mine"):
            dataset.materialize(1, path=folder, overwrite=overwrite)
    assert (folder / "keep.txt").read_text() == "precious" and _pngs(folder) == []
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        dataset.materialize(1, path=afile, fmt="folder")
    with pytest.raises(FileExistsError, match="is a folder"):
        dataset.materialize(1, path=folder, fmt="safetensors")


def test_materialize_into_an_empty_folder_and_a_safetensors_file(tmp_path, dataset):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(_pngs(dataset.materialize(1, path=empty))) == 3
    target = tmp_path / "set.safetensors"
    dataset.materialize(2, path=target)
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        dataset.materialize(1, path=target)
    assert load_materialized(target)[0].shape[0] == 6
    dataset.materialize(1, path=target, overwrite=True)
    images, labels, _ = load_materialized(target)
    assert images.shape[0] == 3 and torch.equal(labels, torch.arange(3))


def test_load_materialized_explains_folders_and_missing_paths(tmp_path, dataset):
    folder = dataset.materialize(1, path=tmp_path / "mfold")
    with pytest.raises(IsADirectoryError) as caught:
        load_materialized(folder)
    assert str(caught.value) == (
        f"{folder} is an image folder (<class>/<i>.png, as materialize() writes for a path without .safetensors), "
        f"not a safetensors file; read it with torchvision.datasets.ImageFolder({str(folder)!r})"
    )
    assert "does not exist" not in str(caught.value)
    other = tmp_path / "other"
    other.mkdir()
    dataset.materialize(1, path=other / "set.safetensors")
    with pytest.raises(IsADirectoryError, match=r"other is a folder, not a safetensors file written by materialize\(\); "
                                                r"give the path of the .safetensors file \(it holds set.safetensors\)"):
        load_materialized(other)
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError) as caught:
        load_materialized(missing)
    assert str(caught.value) == f"{missing} does not exist; give the .safetensors file that materialize() wrote"


def test_materialize_names_paths_it_cannot_write(tmp_path, dataset):
    """A path under a file, or one named like another file format, is refused before any
    generation, with a message that says what to do."""
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    with pytest.raises(FileExistsError, match=rf"cannot write {blocker}/sub: {blocker} is a file, not a folder"):
        dataset.materialize(1, path=blocker / "sub")
    for name in ("x.npz", "set.pt", "images.png"):
        with pytest.raises(ValueError, match=r"format materialize does not write: give a path ending in \.safetensors"):
            dataset.materialize(1, path=tmp_path / name)
        assert not (tmp_path / name).exists()
    written = dataset.materialize(1, path=tmp_path / "x.npz", fmt="folder")  # asked for: a folder of that name
    assert written.is_dir() and len(list(written.rglob("*.png"))) == dataset.num_classes
    assert dataset.materialize(1, path=tmp_path / "set.v2").is_dir()  # other suffixes: folder names


def test_materialize_overwrites_only_its_own_safetensors_files(tmp_path, dataset):
    from synthsets.hub import save_weights

    weights = tmp_path / "model.safetensors"
    save_weights({"body.0.weight": torch.ones(3)}, weights)
    garbage = tmp_path / "junk.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    for path in (weights, garbage):
        before = path.read_bytes()
        with pytest.raises(FileExistsError, match=r"is not a set written by materialize\(\).*remove the file yourself"):
            dataset.materialize(1, path=path, overwrite=True)
        assert path.read_bytes() == before


def test_materialize_checks_the_path_argument(tmp_path, dataset, monkeypatch):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike .* got int"):
        dataset.materialize(1, path=123)
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="path is empty"):
            dataset.materialize(1, path=empty)
    import synthsets.export as export

    monkeypatch.setattr(export.os, "access", lambda path, mode: False)  # as on a read-only mount
    with pytest.raises(PermissionError, match=rf"cannot write {tmp_path}/new/set: {tmp_path} is not writable"):
        dataset.materialize(1, path=tmp_path / "new" / "set")
