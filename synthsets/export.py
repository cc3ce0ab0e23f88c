"""Write a fixed synthetic set drawn from a generator: an image folder or a safetensors file.

DiM's point is to draw fresh images every epoch, but a fixed set is handy for tools that
read files (or to compare with classic dataset-distillation methods at a given IPC)::

    train = synthsets.DiM("mnist", inpc=10, seed=0)
    train.materialize(path="mnist_ipc10")                   # mnist_ipc10/<class>/<i>.png
    train.materialize(50, path="mnist_ipc50.safetensors")   # tensors "images", "labels"
    images, labels = train.materialize()                    # in memory

Images are saved as the generator makes them, mapped from ``[-1, 1]`` to ``[0, 1]``,
without augmentation and without normalisation (apply ``Normalize(mean, std)`` when
training, as with any image folder; the safetensors metadata records mean/std).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .hub import file_in_the_way

if TYPE_CHECKING:  # pragma: no cover
    from .dataset import SyntheticDataset

__all__ = ["materialize", "load_materialized", "FORMATS"]

#: Accepted values of ``fmt`` (``None`` infers it from the path).
FORMATS = ("folder", "safetensors")
#: the ``format`` entry of the metadata of a safetensors file that materialize writes
MATERIALIZED_FORMAT = "synthsets-materialized"
_FMT_ALIASES = {"folder": "folder", "imagefolder": "folder", "png": "folder", "safetensors": "safetensors"}


def _fixed_images(dataset: "SyntheticDataset", ipc: int) -> tuple[Tensor, Tensor]:
    """``ipc`` un-augmented images per class in ``[0, 1]`` (class-major) and their labels, on CPU."""
    from .dataset import SyntheticDataset

    fresh = SyntheticDataset(
        dataset.generator,
        ipc,
        augment=None,
        device=dataset.device,
        seed=dataset.seed,
        batch_size=dataset.batch_size,
        normalize=False,
        distributed=False,
    )
    images, labels = fresh.epoch_tensors()
    return images.clamp(0, 1).cpu(), labels.cpu()


def _folder_names(classes: list[str]) -> list[str]:
    """Folder names for ``classes`` that ``ImageFolder`` maps back to the same indices.

    ``ImageFolder`` numbers classes in sorted folder-name order; when the class names do
    not sort in index order (or clash once made file-system safe), they get a
    zero-padded index prefix (``"03_dog"``).
    """
    safe = [re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", str(name)).strip().strip(".") or f"class{i}" for i, name in enumerate(classes)]
    if sorted(safe) == safe and len(set(safe)) == len(safe):
        return safe
    digits = len(str(len(classes) - 1))
    return [f"{i:0{digits}d}_{name}" for i, name in enumerate(safe)]


def _is_image_folder(path: Path) -> bool:
    """Whether ``path`` holds nothing but class folders of PNG files (as written here)."""
    return all(
        entry.is_dir() and all(f.is_file() and f.suffix.lower() == ".png" for f in entry.iterdir())
        for entry in path.iterdir()
    )


#: suffixes of data files in other formats: a path ending so is not taken for a folder name
_OTHER_FILE_SUFFIXES = frozenset({
    ".npz", ".npy", ".pt", ".pth", ".pkl", ".pickle", ".zip", ".tar", ".gz", ".h5", ".hdf5",
    ".png", ".jpg", ".jpeg", ".json", ".bin", ".csv",
})


def _is_materialized_file(path: Path) -> bool:
    """Whether ``path`` is a safetensors file that :func:`materialize` wrote."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == MATERIALIZED_FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


def _check_target(path: Path, folder: bool, overwrite: bool) -> None:
    """Refuse to mix a new set with an old one, or to replace anything but an earlier set."""
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        raise FileExistsError(f"cannot write {path}: {blocker} is a file, not a folder; choose another path")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())  # where it will be created
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: {existing} is not writable; choose another path")
    if folder and path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another path")
    if not folder and path.is_dir():
        raise FileExistsError(f"{path} is a folder; give a file path ending in .safetensors")
    if not path.exists() or (folder and not any(path.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(
            f"{path} already exists{' and is not empty' if folder else ''}; choose a new path, "
            "or pass overwrite=True to replace it"
        )
    if folder and not _is_image_folder(path):
        raise FileExistsError(
            f"{path} holds files other than class folders of PNG images; overwrite=True only "
            "replaces an earlier materialised set: remove the folder yourself or choose another path"
        )
    if not folder and not _is_materialized_file(path):
        raise FileExistsError(
            f"{path} is not a set written by materialize() (a generator's weights, or another file); "
            "overwrite=True only replaces an earlier materialised set: remove the file yourself or choose another path"
        )


def _write_folder(images: Tensor, labels: Tensor, classes: list[str], path: Path) -> Path:
    """Write the image folder next to ``path`` first, then swap it in: a crash leaves no
    half-written set, and a replaced set keeps none of its old images."""
    import numpy as np
    from PIL import Image

    names = _folder_names(classes)
    pixels = images.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    counters = [0] * len(classes)
    target = path
    path = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    for image, label in zip(pixels, labels.tolist()):
        folder = path / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        array = image.permute(1, 2, 0).numpy()
        if array.shape[2] == 1:
            picture = Image.fromarray(np.ascontiguousarray(array[:, :, 0]))  # 8-bit grey ("L")
        elif array.shape[2] == 3:
            picture = Image.fromarray(np.ascontiguousarray(array))  # "RGB"
        else:
            raise ValueError(f"cannot write {array.shape[2]}-channel images as PNG; use fmt='safetensors'")
        picture.save(folder / f"{counters[label]}.png")
        counters[label] += 1
    if target.exists():  # an empty folder, or an earlier set that overwrite=True replaces
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        path.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        path.rename(target)
    return target


def _write_safetensors(images: Tensor, labels: Tensor, dataset: "SyntheticDataset", path: Path) -> Path:
    from .hub import save_weights

    config = dataset.generator.config
    metadata = {
        "format": MATERIALIZED_FORMAT,
        "classes": json.dumps(list(dataset.classes)),
        "mean": json.dumps(list(config.mean)),
        "std": json.dumps(list(config.std)),
        "dataset": str(config.dataset or ""),
        "seed": str(dataset.seed),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(
        {"images": images.float().contiguous(), "labels": labels.to(torch.int64).contiguous()}, path, metadata=metadata
    )
    return path


def materialize(
    dataset: "SyntheticDataset",
    ipc: int | None = None,
    path: str | Path | None = None,
    fmt: str | None = None,
    overwrite: bool = False,
) -> Path | tuple[Tensor, Tensor]:
    """Generate a fixed set of ``ipc`` images per class (default ``dataset.inpc``).

    The images come from a fresh, un-augmented :class:`~synthsets.SyntheticDataset` over the
    same generator and seed (so the same dataset always materialises the same set), in
    ``[0, 1]`` and not normalised.

    Args:
        dataset: the synthetic dataset (its generator, seed and device are used).
        ipc: images per class; default ``dataset.inpc``.
        path: where to write. ``None`` returns ``(images, labels)`` CPU tensors instead:
            float ``(N, C, H, W)`` in ``[0, 1]`` and int64 ``(N,)``, class-major.
        fmt: ``"folder"`` (``path/<class>/<i>.png``, readable by
            ``torchvision.datasets.ImageFolder``) or ``"safetensors"`` (tensors ``images``
            and ``labels``; metadata ``classes``, ``mean``, ``std`` as JSON). ``None``:
            safetensors when ``path`` ends with ``.safetensors``, else a folder.
        overwrite: replace an existing set at ``path`` (a safetensors file, or a folder
            holding only class folders of PNGs). Without it, an existing file or a
            non-empty folder is an error: a new set is never mixed with an old one.

    Returns:
        the path written, or ``(images, labels)`` when ``path`` is ``None``.
    """
    if ipc is None:
        ipc = dataset.inpc
    from .dataset import images_per_class  # (dataset imports this module)

    ipc = images_per_class(ipc, "ipc")
    if fmt is not None:
        key = str(fmt).strip().lower()
        if key not in _FMT_ALIASES:
            raise ValueError(f"unknown fmt {fmt!r}; choose one of {', '.join(FORMATS)} (or None to infer from path)")
        fmt = _FMT_ALIASES[key]
    if path is None:
        if fmt is not None:
            raise ValueError(f"fmt={fmt!r} needs a path to write to")
        return _fixed_images(dataset, ipc)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path must be a str or os.PathLike (a folder, or a file ending in .safetensors), or None for "
            f"in-memory tensors; got {type(path).__name__}"
        )
    if not str(path).strip():
        raise ValueError("path is empty: give a folder, a file ending in .safetensors, or None for in-memory tensors")
    path = Path(path).expanduser()
    if fmt is None and path.suffix.lower() in _OTHER_FILE_SUFFIXES:
        raise ValueError(
            f"{path} names a {path.suffix} file, a format materialize does not write: give a path ending in "
            ".safetensors, a folder path, or fmt='folder' to write an image folder of that name"
        )
    if fmt is None:
        fmt = "safetensors" if path.suffix.lower() == ".safetensors" else "folder"
    _check_target(path, fmt == "folder", overwrite)  # before the generation work
    images, labels = _fixed_images(dataset, ipc)
    if fmt == "safetensors":
        return _write_safetensors(images, labels, dataset, path)
    return _write_folder(images, labels, list(dataset.classes), path)


def load_materialized(path: str | Path) -> tuple[Tensor, Tensor, dict]:
    """Read a safetensors file written by :func:`materialize`: ``(images, labels, metadata)``.

    ``metadata`` holds ``classes``, ``mean`` and ``std`` decoded from JSON, plus the other
    string entries as written. An image folder (what :func:`materialize` writes for a path
    without ``.safetensors``) is read with ``torchvision.datasets.ImageFolder`` instead:
    given one, this raises :class:`IsADirectoryError` saying so; a missing path raises
    :class:`FileNotFoundError`.
    """
    from safetensors import safe_open

    from .hub import load_safetensors

    path = Path(path).expanduser()
    if path.is_dir():
        if any(path.iterdir()) and _is_image_folder(path):
            raise IsADirectoryError(
                f"{path} is an image folder (<class>/<i>.png, as materialize() writes for a path without "
                f".safetensors), not a safetensors file; read it with torchvision.datasets.ImageFolder({str(path)!r})"
            )
        inside = sorted(f.name for f in path.glob("*.safetensors"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise IsADirectoryError(
            f"{path} is a folder, not a safetensors file written by materialize(); give the path of the "
            f".safetensors file{hint}"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give the .safetensors file that materialize() wrote")
    tensors = load_safetensors(path)
    if "images" not in tensors or "labels" not in tensors:
        raise ValueError(f"{path} does not hold 'images' and 'labels' tensors; was it written by materialize()?")
    with safe_open(str(path), framework="pt") as handle:
        raw = dict(handle.metadata() or {})
    meta: dict = dict(raw)
    for key in ("classes", "mean", "std"):
        if key in raw:
            meta[key] = json.loads(raw[key])
    return tensors["images"], tensors["labels"], meta
