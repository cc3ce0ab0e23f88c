"""synthsets: datasets distilled into generative models (DiM), usable like torchvision datasets.

>>> import synthsets
>>> train = synthsets.DiM("mnist", inpc=10)      # bundled generator, 10 images per class per epoch
>>> x, y = train[0]
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

from .allocator import tune_cpu_allocator
from .augment import DSA, DSAParams, cutmix
from .dataset import SyntheticDataset, SyntheticLoader, images_per_class
from .export import materialize
from .generator import Generator, GeneratorConfig
from .hub import PretrainedNotFoundError, WeightsError, list_pretrained
from .models import create_model, is_model, list_models, preferred_memory_format

__version__ = "0.1.0"

__all__ = [
    "DiM",
    "DSA",
    "DSAParams",
    "Generator",
    "GeneratorConfig",
    "PretrainedNotFoundError",
    "SyntheticDataset",
    "SyntheticLoader",
    "WeightsError",
    "create_model",
    "cutmix",
    "is_model",
    "list_models",
    "list_pretrained",
    "materialize",
    "preferred_memory_format",
    "tune_cpu_allocator",
    "__version__",
]


_HUB_ARGUMENTS = ("revision", "cache_dir", "local_files_only", "token", "force_download")


def DiM(
    name_or_repo: str | Path,
    inpc: int = 10,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    **dataset_kwargs: Any,
) -> SyntheticDataset:
    """A :class:`SyntheticDataset` over a pretrained DiM generator.

    ``name_or_repo`` is a bundled short name (see :func:`list_pretrained`), a local folder
    saved by ``Generator.save_pretrained`` / ``synthsets.distill``, or a Hub repo id.
    ``revision``, ``cache_dir``, ``local_files_only``, ``token`` and ``force_download``
    are passed to ``huggingface_hub`` for Hub repos. Extra keyword arguments go to
    :class:`SyntheticDataset` (``augment``, ``device``, ``seed``, ``transform``...).
    """
    inpc = images_per_class(inpc)  # before any loading
    if isinstance(name_or_repo, Generator):
        raise TypeError("DiM takes a generator's name, folder or Hub repo id; for a Generator object "
                        "use synthsets.SyntheticDataset(generator, inpc)")
    accepted = set(inspect.signature(SyntheticDataset).parameters) - {"generator", "inpc"}
    unknown = sorted(set(dataset_kwargs) - accepted)
    if unknown:
        close = difflib.get_close_matches(unknown[0], [*accepted, *_HUB_ARGUMENTS], n=1)
        raise TypeError(f"DiM() got an unexpected keyword argument {unknown[0]!r}"
                        + (f" (did you mean {close[0]!r}?)" if close else "")
                        + f"; it takes {', '.join(_HUB_ARGUMENTS)} and SyntheticDataset's {', '.join(sorted(accepted))}")
    generator = Generator.from_pretrained(
        name_or_repo,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
        force_download=force_download,
    )
    return SyntheticDataset(generator, inpc, **dataset_kwargs)
