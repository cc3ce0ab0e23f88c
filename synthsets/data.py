"""Real datasets for distillation and evaluation: torchvision names or image folders.

Everything is loaded once into memory as normalised float tensors (the datasets DiM
targets are small), so training loops index tensors on the device instead of decoding
files. ``mean``/``std`` are the training set's per-channel statistics in ``[0, 1]`` units.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

#: torchvision datasets we know how to load: (class name, channels, size, train kwarg style)
TORCHVISION_DATASETS = {
    "mnist": ("MNIST", 1, 28),
    "fashion-mnist": ("FashionMNIST", 1, 28),
    "svhn": ("SVHN", 3, 32),
    "cifar10": ("CIFAR10", 3, 32),
    "cifar100": ("CIFAR100", 3, 32),
}
_ALIASES = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}
#: what torchvision looks for under ROOT, per dataset (for the "not found" hints)
TORCHVISION_LAYOUTS = {
    "mnist": "ROOT/MNIST/raw/ holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
    "and t10k-labels-idx1-ubyte (uncompressed)",
    "fashion-mnist": "ROOT/FashionMNIST/raw/ holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (uncompressed)",
    "svhn": "ROOT/train_32x32.mat and ROOT/test_32x32.mat (the cropped-digits format; checksums are verified)",
    "cifar10": "ROOT/cifar-10-batches-py/ holding data_batch_1 ... data_batch_5, test_batch and batches.meta "
    "(the python version of CIFAR-10, as extracted from cifar-10-python.tar.gz; checksums are verified)",
    "cifar100": "ROOT/cifar-100-python/ holding train, test and meta "
    "(the python version of CIFAR-100, as extracted from cifar-100-python.tar.gz; checksums are verified)",
}


class DataNotFoundError(FileNotFoundError):
    """The requested real data is not where we looked."""


@dataclass
class RealSplit:
    """One split as tensors: ``images`` normalised float ``(N, C, H, W)``, ``labels`` long ``(N,)``."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: str | torch.device) -> "RealSplit":
        return RealSplit(self.images.to(device), self.labels.to(device))


@dataclass
class RealData:
    """A real dataset: train (and optionally test) split plus its metadata."""

    name: str
    train: RealSplit
    test: RealSplit | None
    classes: list[str]
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def indices_by_class(self) -> list[Tensor]:
        """Train indices of each class (for class-conditional sampling)."""
        labels = self.train.labels
        return [torch.nonzero(labels == c).flatten() for c in range(self.num_classes)]


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return _ALIASES.get(key.replace("-", ""), _ALIASES.get(key, key))


def _torchvision_name(data: str | Path, root: str | Path | None) -> str | None:
    """The torchvision dataset :func:`load_real` reads for ``data``/``root``, or ``None``
    (an image folder, or an unknown name): a known name is the torchvision dataset when a
    root is given or no such folder exists."""
    name = canonical_name(str(data))
    if name in TORCHVISION_DATASETS and (root is not None or not Path(data).expanduser().is_dir()):
        return name
    return None


def torchvision_channels(data: str | Path, root: str | Path | None = None) -> int | None:
    """Channels of the torchvision dataset :func:`load_real` would load for ``data``/``root``
    (``None`` when ``data`` is an image folder or unknown)."""
    name = _torchvision_name(data, root)
    return TORCHVISION_DATASETS[name][1] if name is not None else None


def _image_folders_under(root: Path, name: str) -> list[Path]:
    """Sub-folders of ``root`` named like dataset ``name`` (``cifar10-jpg``, not ``cifar100``) with a ``train/`` inside."""
    pattern = re.compile(rf"(?<![a-z0-9]){re.escape(name.replace('-', ''))}(?![0-9])")
    try:
        return [
            p for p in sorted(root.iterdir())
            if pattern.search(re.sub(r"[-_ .]", "", p.name.lower())) and (p / "train").is_dir()
        ]
    except OSError:
        return []


def _not_found_message(name: str, root: Path, download: bool = False) -> str:
    """Why ``name`` could not be loaded from ``root`` and the ways to fix it (one line)."""
    cls_name = TORCHVISION_DATASETS[name][0]
    where = f"{root}" if root.is_dir() else f"{root} (no such folder)"
    folders = _image_folders_under(root, name) if root.is_dir() else []
    example = f" (e.g. --data {folders[0]})" if folders else ""
    failed = " The download into --root failed too (is there a network connection?)." if download else ""
    fetch = "" if download else "add --download (download=True) to fetch it into --root (needs a network connection), "
    return (
        f"{cls_name} not found (or incomplete) under --root (root=) {where}: torchvision expects "
        f"{TORCHVISION_LAYOUTS[name]}."
        f"{failed} Point --root at the folder that holds that layout, {fetch}or pass an image folder with train/ "
        f"and test/ class sub-folders as --data (data=){example}"
    )


def _to_uint8_tensor(dataset, size: int | None, desc: str, progress: bool = True) -> tuple[Tensor, Tensor]:
    """Decode a torchvision-style dataset of PIL images into uint8 (N, C, H, W) and labels
    (with a ``desc`` progress bar while decoding files, unless ``progress`` is false)."""
    import numpy as np
    from tqdm.auto import tqdm

    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = getattr(dataset, "labels", None)
    native = tuple(np.asarray(data).shape[1:3]) if isinstance(data, (Tensor, np.ndarray)) else None
    if targets is not None and native is not None and (size is None or native == (size, size)):
        array = torch.as_tensor(np.asarray(data))
        if array.dim() == 3:  # (N, H, W) grey
            array = array.unsqueeze(1)
        elif array.shape[-1] in (1, 3):  # (N, H, W, C)
            array = array.permute(0, 3, 1, 2)
        return array.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(targets), dtype=torch.long)
    images, labels = [], []
    first_size = None
    pairs = _decoded(dataset)
    if progress:
        pairs = tqdm(pairs, total=len(dataset), desc=desc, leave=False, mininterval=1.0)
    for image, label in pairs:
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), resample=_BICUBIC)
        first_size = first_size or image.size
        if image.size != first_size:
            raise ValueError(
                f"{desc}: images differ in size ({first_size[0]}x{first_size[1]} and {image.size[0]}x{image.size[1]}); "
                "pass image_size (--image-size 28 or 32) to resize them all"
            )
        array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        images.append(array.unsqueeze(0) if array.dim() == 2 else array.permute(2, 0, 1))
        labels.append(int(label))
    if not images:
        raise DataNotFoundError(f"{desc}: no images found")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _decoded(dataset):
    """Yield ``dataset``'s (image, label) pairs in order, decoding files on several threads."""
    samples = getattr(dataset, "samples", None)
    loader = getattr(dataset, "loader", None)
    if samples is None or loader is None or getattr(dataset, "transform", None) is not None:
        yield from dataset
        return
    from concurrent.futures import ThreadPoolExecutor

    workers = min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(samples), 4096):
            chunk = samples[start : start + 4096]
            yield from zip(pool.map(loader, [p for p, _ in chunk]), [y for _, y in chunk])


_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _bicubic():
    from PIL import Image

    return getattr(Image, "Resampling", Image).BICUBIC


_BICUBIC = _bicubic()


#: the folder torchvision keeps each dataset in, under its root (SVHN keeps files in the root itself)
_TORCHVISION_FOLDERS = {"MNIST": "mnist", "FashionMNIST": "fashion-mnist", "cifar-10-batches-py": "cifar10",
                        "cifar-100-python": "cifar100"}


def _torchvision_folder_hint(path: Path) -> str:
    """A hint when an image folder given as --data is really a torchvision dataset's folder."""
    for folder in (path, path.parent):  # MNIST/ itself, or the raw/ inside it
        name = _TORCHVISION_FOLDERS.get(folder.name)
        if name is not None:
            return (f" {folder} is torchvision's {name} folder, not an image folder: "
                    f"pass --data {name} --root {folder.parent} (data={name!r}, root=...)")
    return ""


def _image_folder(path: Path, size: int | None, channels: int | None):
    from torchvision.datasets import ImageFolder

    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None (detect), got {channels!r}")
    if not any(p.is_dir() for p in path.iterdir()):
        raise DataNotFoundError(
            f"{path} has no class sub-folders (expected {path}/<class>/<image>).{_torchvision_folder_hint(path)}"
        )
    try:
        folder = ImageFolder(str(path), loader=_open_image)
    except FileNotFoundError as err:  # class folders without any image file
        raise DataNotFoundError(f"{path}: {str(err).rstrip('.')}.{_torchvision_folder_hint(path)}") from None
    if channels is None:  # grey only if every image is grey (reads headers, not pixels)
        channels = 1 if all(_image_mode(p) in _GREY_MODES for p, _ in folder.samples) else 3
    mode = "L" if channels == 1 else "RGB"
    folder.loader = lambda p: _open_image(p, mode)
    return folder


def image_folder_format(folder: str | Path, per_class: int = 3) -> tuple[int, int] | None:
    """``(channels, size)`` of an image folder's images as stored, from the headers of the
    first few images of each class (of ``folder/train`` if present); ``None`` if ``folder``
    is not an image folder. ``size`` is the most common width."""
    path = Path(folder).expanduser()
    path = path / "train" if (path / "train").is_dir() else path
    if not path.is_dir():
        return None
    from PIL import Image

    modes, widths = [], []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(f for f in class_dir.iterdir() if f.is_file())[:per_class]:
            try:
                with Image.open(file) as image:
                    modes.append(image.mode)
                    widths.append(image.size[0])
            except OSError:  # not an image: only the format guess skips it (loading names the file)
                continue
    if not modes:
        return None
    return (1 if all(m in _GREY_MODES for m in modes) else 3), max(set(widths), key=widths.count)


class UnreadableImageError(ValueError):
    """A file in an image folder is not an image PIL can decode (corrupt, truncated or another format)."""


def _unreadable(path: str, err: OSError) -> UnreadableImageError:
    return UnreadableImageError(
        f"cannot read the image {path} ({type(err).__name__}: {err}); "
        "remove or replace the file (every file in a class folder must be an image)"
    )


def _image_mode(path: str) -> str:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode
    except OSError as err:  # PIL's UnidentifiedImageError included
        raise _unreadable(path, err) from None


def _open_image(path: str, mode: str = "RGB"):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except OSError as err:  # unidentified or truncated image data
        raise _unreadable(path, err) from None


def _stats(images: Tensor) -> tuple[list[float], list[float]]:
    x = images.float().div_(255)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def _normalise(images: Tensor, mean: list[float], std: list[float]) -> Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (images.float().div_(255) - m) / s


def load_real(
    data: str | Path,
    root: str | Path | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = False,
    with_test: bool = True,
    progress: bool = True,
) -> RealData:
    """Load a torchvision dataset by name (``mnist``, ``fashion-mnist``, ``svhn``, ``cifar10``,
    ``cifar100``) from ``root``, or an image folder (``train/`` and optional ``test/``, one
    sub-folder per class). ``image_size`` resizes (the generator needs 28 or 32 px);
    ``progress`` false hides the "reading ..." progress bars."""
    path = Path(data).expanduser()
    name = _torchvision_name(data, root)
    if name is not None:
        return _load_torchvision(name, root, image_size, download, with_test, channels, folder=path, progress=progress)
    if not path.is_dir():
        known = ", ".join(TORCHVISION_DATASETS)
        raise DataNotFoundError(
            f"--data {data!r} is neither a known dataset name ({known}) nor an existing image folder "
            f"(looked for the folder {path.resolve()})"
        )
    train_dir = path / "train" if (path / "train").is_dir() else path
    test_dir = path / "test" if (path / "test").is_dir() else None
    cache_file = _cache_file(path, image_size, channels, with_test)
    cached = _read_cache(cache_file) if cache_file is not None else None
    if cached is not None:
        classes, x_train, y_train, test = cached
        return _assemble(path.name, str(path), classes, x_train, y_train, test, image_folder=True)
    train_set = _image_folder(train_dir, image_size, channels)
    classes = list(train_set.classes)
    x_train, y_train = _to_uint8_tensor(train_set, image_size, f"reading {train_dir}", progress)
    test = None
    if with_test and test_dir is not None:
        test_set = _image_folder(test_dir, image_size, int(x_train.shape[1]))  # the train split's channels
        if list(test_set.classes) != classes:
            raise DataNotFoundError(
                f"class folders differ between {train_dir} and {test_dir}: {classes} vs {test_set.classes}"
            )
        test = _to_uint8_tensor(test_set, image_size, f"reading {test_dir}", progress)
    if cache_file is not None:
        _write_cache(cache_file, classes, x_train, y_train, test)
    return _assemble(path.name, str(path), classes, x_train, y_train, test, image_folder=True)


# -- decoded image-folder cache ----------------------------------------------------------
def cache_dir() -> Path | None:
    """Where decoded image folders are cached (``SYNTHSETS_CACHE``; ``0``/``off`` disables)."""
    value = os.environ.get("SYNTHSETS_CACHE")
    if value is not None and value.strip().lower() in ("", "0", "off", "false", "no"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "synthsets" / "data"


def _cache_file(path: Path, image_size: int | None, channels: int | None, with_test: bool) -> Path | None:
    """A cache file name that changes whenever a file under ``path`` is added, removed or
    modified: ``<folder name>-<settings key>-<file count>-<content key>.safetensors``."""
    folder = cache_dir()
    if folder is None:
        return None
    settings = hashlib.sha1(json.dumps([str(path.resolve()), image_size, channels, with_test, 1]).encode())
    digest = settings.copy()
    count = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            stat = os.stat(os.path.join(dirpath, name))
            digest.update(f"{dirpath}/{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            count += 1
    return folder / f"{path.name}-{settings.hexdigest()[:8]}-{count}-{digest.hexdigest()[:16]}.safetensors"


def _stale_cache_files(file: Path) -> list[Path]:
    """Earlier cache files of the same folder and settings as ``file`` (its files changed since)."""
    prefix = file.name.rsplit("-", 2)[0] + "-"  # <folder name>-<settings key>-
    return [p for p in file.parent.glob(f"{glob.escape(prefix)}*.safetensors") if p != file and
            re.fullmatch(re.escape(prefix) + r"\d+-[0-9a-f]{16}\.safetensors", p.name)]


def _read_cache(file: Path):
    if not file.is_file():
        return None
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        tensors = load_file(str(file))
        with safe_open(str(file), framework="pt") as handle:
            classes = json.loads((handle.metadata() or {})["classes"])
    except Exception:  # a broken cache entry is rebuilt, never trusted
        return None
    test = (tensors["test_images"], tensors["test_labels"]) if "test_images" in tensors else None
    return classes, tensors["train_images"], tensors["train_labels"], test


def _write_cache(file: Path, classes, x_train, y_train, test) -> None:
    from safetensors.torch import save

    from .hub import atomic_write_bytes

    tensors = {"train_images": x_train.contiguous(), "train_labels": y_train.contiguous()}
    if test is not None:
        tensors.update(test_images=test[0].contiguous(), test_labels=test[1].contiguous())
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(file, save(tensors, metadata={"classes": json.dumps(classes)}))
        for stale in _stale_cache_files(file):  # one copy per folder and settings, not one per change
            stale.unlink(missing_ok=True)
    except OSError:  # a read-only home must not stop training
        pass


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that exist and are empty."""
    for folder in folders:
        try:
            folder.rmdir()  # only succeeds on an empty folder
        except OSError:
            pass


def _load_torchvision(
    name: str, root, image_size, download: bool, with_test: bool, channels=None, folder: Path | None = None,
    progress: bool = True,
) -> RealData:
    import torchvision.datasets as tvd

    cls_name, native_channels, _ = TORCHVISION_DATASETS[name]
    cls = getattr(tvd, cls_name)
    if root is None:
        raise DataNotFoundError(
            f"dataset {name!r} needs a root (--root, root=): the folder that holds it in torchvision layout "
            f"({TORCHVISION_LAYOUTS[name]}); add --download (download=True) to fetch it there. No root was given, "
            f"and there is no image folder {(folder or Path(name)).resolve()} either"
        )
    if channels is not None and channels != native_channels:
        raise ValueError(
            f"{name} has {native_channels} channel(s); it cannot be loaded with channels={channels} "
            f"(pass channels=None or {native_channels})"
        )
    root = Path(root).expanduser().resolve()

    def make(train: bool):
        kwargs = {"split": "train" if train else "test"} if cls_name == "SVHN" else {"train": train}
        # the folders a failed download attempt may leave behind, empty
        scratch = [folder for folder in (root / cls_name / "raw", root / cls_name, root) if not folder.exists()]
        try:
            return cls(str(root), download=download, **kwargs)
        except RuntimeError:  # torchvision: "Dataset not found or corrupted. You can use download=True..."
            _remove_if_empty(scratch)
            raise DataNotFoundError(_not_found_message(name, root, download)) from None
        except OSError as err:
            _remove_if_empty(scratch)
            raise DataNotFoundError(f"could not read or download {cls_name} into {root}: {err}") from None

    train_set = make(True)
    classes = [str(c) for c in getattr(train_set, "classes", [])] or [str(i) for i in range(10)]
    x_train, y_train = _to_uint8_tensor(train_set, image_size, f"reading {cls_name} train", progress)
    test = _to_uint8_tensor(make(False), image_size, f"reading {cls_name} test", progress) if with_test else None
    return _assemble(name, str(root), classes, x_train, y_train, test)


def _assemble(name, source, classes, x_train, y_train, test, image_folder: bool = False) -> RealData:
    height, size = x_train.shape[-2:]
    if height != size:
        raise ValueError(f"{source}: images are {size}x{height} (not square); pass image_size (--image-size) to resize")
    if test is not None and test[0].shape[1:] != x_train.shape[1:]:
        raise ValueError(
            f"{source}: test images are {tuple(test[0].shape[1:])}, train images {tuple(x_train.shape[1:])}; "
            "pass image_size (--image-size) to resize both"
        )
    mean, std = (list(map(lambda v: round(v, 4), stats)) for stats in _stats(x_train))
    std = [max(s, 1e-3) for s in std]  # a constant channel must not give a zero std
    return RealData(
        name=name,
        train=RealSplit(_normalise(x_train, mean, std), y_train),
        test=RealSplit(_normalise(test[0], mean, std), test[1]) if test is not None else None,
        classes=classes,
        channels=x_train.shape[1],
        image_size=size,
        mean=mean,
        std=std,
        source=source,
        extra={"image_folder": True} if image_folder else {},
    )
