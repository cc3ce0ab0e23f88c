"""``SyntheticDataset``: a torchvision-style dataset whose images come from a DiM generator.

Every epoch holds exactly ``inpc`` images of each class, freshly generated (in batches,
on the chosen device) and, by default, DSA-augmented per sample. Images are returned
normalised for a classifier::

    x = ((g + 1) / 2 - mean) / std        # g: generator output in [-1, 1]

with the real dataset's per-channel ``mean``/``std`` stored in the generator's config,
i.e. exactly what ``torchvision.transforms.Normalize(mean, std)`` gives for real images.
"""

from __future__ import annotations

import atexit
import math
import operator
import os
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate, get_worker_info

from .augment import DSA
from .generator import Generator, fold_batchnorm
from .hub import _caller_stacklevel
from .models import preferred_memory_format

#: DSA strategy used at deployment (paper Sec. 4.1: colour and crop; CutMix is applied by
#: the training loop, see ``synthsets.evaluate``).
DEPLOYMENT_STRATEGY = "color_crop"

AugmentSpec = str | Callable[[Tensor], Tensor] | None


def _cpu_runs_natively(dtype: torch.dtype) -> bool:
    """Whether this CPU has instructions for ``dtype`` convolutions (else oneDNN emulates
    them, far slower than float32: fp16 took 22x as long as fp32 on a CPU without them)."""
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    try:
        return probe is None or bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # torch without the probe: assume it is fine
        return True


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``device`` checked, or :func:`default_device` when ``None``.

    Raises ``ValueError`` naming the problem and the fix for a name torch does not know,
    for CUDA on a machine without it, and for a CUDA index the machine does not have.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N' (or leave it unset for CUDA when present, else CPU)"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} was asked for but CUDA is not available on this machine: "
                "use 'cpu' (or leave the device unset)"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(device)!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif dev.type == "meta":
        raise ValueError("device 'meta' holds no data, so it cannot generate images: use 'cpu' or 'cuda'")
    elif dev.type != "cpu":  # mps, xpu, hpu, xla...: usable only if torch can put a tensor there
        try:
            backend = getattr(torch, dev.type, None)
            available = not hasattr(backend, "is_available") or backend.is_available()
            if available:
                torch.empty(0, device=dev)
        except Exception:  # noqa: BLE001 - a missing backend fails in many ways
            available = False
        if not available:
            raise ValueError(
                f"device {str(device)!r} was asked for but {dev.type} is not available in this torch on this "
                "machine: use 'cpu' or 'cuda' (or leave the device unset)"
            )
    return dev


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _usable_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _weights_key(generator: nn.Module) -> tuple:
    """Changes whenever the generator's weights or buffers do (in place or replaced), or
    its mode: what the images depend on besides (seed, epoch, chunk)."""
    tensors = [*generator.parameters(), *generator.buffers()]
    return (id(generator), generator.training, *((t.data_ptr(), _version(t)) for t in tensors))


def _core_to_spare() -> bool:
    """Whether torch trains on fewer threads than there are cores (a core is free to generate on)."""
    return torch.get_num_threads() < _usable_cpus()


def _version(tensor: Tensor) -> int:
    """The tensor's in-place modification counter (-1 for inference tensors, which have none)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


#: seeds lie in [0, SEED_BOUND): torch's are 64-bit, and larger ones would alias smaller seeds
SEED_BOUND = 2**63


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and processes)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value ^= (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2)) & 0xFFFFFFFFFFFFFFFF
        value = (value * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return value & 0x7FFFFFFFFFFFFFFF


_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (for messages, reprs and result records)."""
    return str(dtype).removeprefix("torch.")


def _generation_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """None (full precision) or the lower-precision dtype to autocast the generator to."""
    if value is None or value == torch.float32:
        return None
    if value in (torch.bfloat16, torch.float16):
        return value  # type: ignore[return-value]
    if isinstance(value, str) and value.lower() in _DTYPES:
        return _DTYPES[value.lower()]
    raise ValueError(
        f"generation_dtype must be None/'fp32', 'bf16' (torch.bfloat16) or 'fp16' (torch.float16), got {value!r}"
    )


#: the shared epoch word: ``epoch << _EPOCH_SHIFT | generation`` (generations wrap at 2**32)
_EPOCH_SHIFT = 32
_GENERATION_MASK = (1 << _EPOCH_SHIFT) - 1
_MAX_EPOCH = 1 << 31


def as_int(value: Any) -> int | None:
    """``value`` as an int if it is an integer (numpy integers and 0-d integer tensors
    too, not bools), else ``None``."""
    if isinstance(value, (bool, float)) or getattr(value, "dtype", None) == torch.bool:
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def images_per_class(value: Any, name: str = "inpc") -> int:
    """``value`` as a positive int (numpy integers too), else a ``ValueError`` naming ``name``."""
    number = as_int(value)
    if number is not None and number > 0:
        return number
    raise ValueError(f"{name} (images per class) must be a positive int, got {value!r}")


def _check_flag(value: Any, name: str, none: bool = False) -> None:
    """A ``TypeError`` unless ``value`` is True or False (or None, when ``none``)."""
    if not (isinstance(value, bool) or (none and value is None)):
        raise TypeError(f"{name} must be True or False{' (or None)' if none else ''}, got {value!r}")


def _checked_augment_output(out: Any, images: Tensor) -> Tensor:
    """What a custom ``augment`` callable returned, if it is a batch like ``images``."""
    if not isinstance(out, Tensor) or out.dim() != 4 or len(out) != len(images) or not out.is_floating_point():
        got = f"a {dtype_name(out.dtype)} tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else repr(out)[:80]
        raise ValueError(
            f"the augment callable must return the augmented image batch, a float tensor (N, C, H, W) with N = "
            f"{len(images)} as given, got {got}"
        )
    return out.float()  # float32, as without augmentation (a half-precision callable's output too)


def _make_augment(augment: AugmentSpec) -> Callable[..., Tensor] | None:
    if augment is None or augment is False:
        return None
    if augment is True:
        augment = "dsa"
    if isinstance(augment, str):
        key = augment.strip().lower()
        if key in ("", "none", "off"):
            return None
        if key == "dsa":
            return DSA(DEPLOYMENT_STRATEGY)
        if key in ("dsa-full", "dsa_full"):
            return DSA()
        return DSA(key)  # a DSA strategy string such as "color_crop_cutout"
    if callable(augment):
        return augment
    raise TypeError(
        f"augment must be 'dsa', a DSA strategy string, a callable on image batches or None, got {augment!r}"
    )


class SyntheticDataset(Dataset):
    """Labelled images drawn from a DiM generator, ``inpc`` per class, new every epoch.

    Args:
        generator: a :class:`~synthsets.Generator` (moved to ``device``, put in eval mode).
        inpc: images per class per epoch (the paper's INPC).
        transform: optional per-item callable on the normalised ``(C, H, W)`` tensor.
        target_transform: optional per-item callable on the integer label.
        augment: ``"dsa"`` (default; per-sample DSA colour+crop, on the device), ``"dsa-full"``,
            any DSA strategy string, a callable ``batch -> batch``, or ``None``. A callable
            gets each generation batch (``batch_size`` images: a transform that draws once
            per call draws once per batch), with torch's global RNG seeded from
            ``(seed, epoch, batch)`` and restored after, so ``seed`` fixes its draws too.
        device: where images are generated; default CUDA when present, else CPU.
        seed: makes the stream of epochs reproducible on the same device; ``None`` draws
            one from torch's global RNG (so ``torch.manual_seed`` also fixes it).
        batch_size: generation batch size (default: 500 on CUDA, 64 on the CPU, the fastest
            sizes measured; the augmentation stream depends on it).
        normalize: apply the dataset mean/std (default) or return images in ``[0, 1]``
            (before augmentation: DSA's brightness, saturation and contrast can take pixels
            out of that range, as in the paper; ``augment=None`` keeps them in it).
        generation_dtype: ``None`` (default, float32), or ``"bf16"`` / ``"fp16"`` to run the
            generator under autocast: faster on hardware with fast half-precision maths
            (bf16 on a CPU with AVX-512 BF16: 1.9x per image at the paper's width), at
            about 3 significant digits, close to the 1/256 step of 8-bit images. Images
            are still returned in float32, and DSA runs in float32.
        distributed: ``"auto"`` shards each epoch over torch.distributed ranks (each rank
            sees distinct samples; do not add a ``DistributedSampler``), ``False`` never.
            When ``inpc * num_classes`` is not a multiple of the world size, the last
            items wrap around (as ``DistributedSampler`` pads) so all ranks have equal length.

    Epochs advance with :meth:`set_epoch` (as ``DistributedSampler.set_epoch``; it also
    reaches DataLoader workers, persistent or not), at each pass of :meth:`loader`, and by
    themselves when an item is read again:

    * **DataLoader passes.** A ``DataLoader`` batch that holds an item already read by a
      ``DataLoader`` in the current epoch starts the next epoch. A sampler without
      replacement (``shuffle=True`` or not) reads each item at most once per pass, so every
      pass is one epoch of new images: also with ``drop_last=True``, over a ``Subset``
      (``random_split``) and with CPU ``num_workers > 0``, whose workers share the epoch
      state with this process. After a pass that read every item, or a ``drop_last`` pass
      (it leaves out fewer items than a batch holds), the next pass moves on at its first
      batch. After an early ``break``, the next pass moves on at its first batch that
      repeats an item; batches before that one serve items of the old epoch nobody has
      read yet (new images too, but not all of one epoch).
    * **Looking at items.** An item read on its own in this process (``ds[i]``) is looked
      at, not consumed: reading it again shows the same image, and a ``DataLoader`` pass
      after it still reads that epoch in full. Reading an item that a pass has read in
      this epoch, or any item once every item has been read one at a time, starts the
      next epoch. (A ``DataLoader`` in this process reads items one at a time with
      ``batch_size=None`` or through a wrapper such as ``ConcatDataset``: such passes only
      move on once every item has been read, and looks count among those reads: after
      ``ds[19]`` in an epoch of 20, such a pass serves items 0-18 of this epoch and item
      19 of the next.)
    * **Samplers with replacement** (``RandomSampler(replacement=True)``,
      ``WeightedRandomSampler``) repeat items within a pass, and each repeat starts a new
      epoch: images stay new, but are generated more often than once per pass.

    For exact control, call :meth:`set_epoch` at the start of every epoch (a pass then
    reads that epoch, whatever was read before), or iterate :meth:`loader`, which serves
    a whole epoch per pass (the current one when it was only looked at, else the next).
    One case escapes both: with ``persistent_workers=True``, the batches the workers had
    already prepared when a pass was left early (``break``) are still read when the next
    pass starts, and count as reads of its epoch, so that pass moves on partway. Leave
    passes early only with non-persistent workers (or none) when exact epochs matter.
    """

    def __init__(
        self,
        generator: Generator,
        inpc: int,
        transform: Callable[[Tensor], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        augment: AugmentSpec = "dsa",
        device: str | torch.device | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        normalize: bool = True,
        distributed: bool | str = "auto",
        generation_dtype: torch.dtype | str | None = None,
    ) -> None:
        if not isinstance(generator, Generator):
            raise TypeError(
                f"generator must be a synthsets.Generator, got {type(generator).__name__}; "
                "load one with synthsets.Generator.from_pretrained(...) or use synthsets.DiM(name)"
            )
        inpc = images_per_class(inpc)
        _check_flag(normalize, "normalize")
        if batch_size is not None:
            if as_int(batch_size) is None or as_int(batch_size) <= 0:
                raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
            batch_size = as_int(batch_size)
        if seed is not None:
            if as_int(seed) is None:
                raise TypeError(f"seed must be an int or None, got {seed!r}")
            seed = as_int(seed)
        if seed is not None and not 0 <= seed < SEED_BOUND:
            raise ValueError(f"seed must lie in [0, 2**63), got {seed}")
        for name, fn in (("transform", transform), ("target_transform", target_transform)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {fn!r}")
        if distributed not in ("auto", True, False):
            raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")

        dtypes = {dtype_name(t.dtype) for t in generator.parameters() if t.dtype != torch.float32}
        if dtypes:
            raise ValueError(
                f"the generator's weights are {', '.join(sorted(dtypes))}; keep them in float32 (generator.float()) "
                "and pass generation_dtype='bf16' or 'fp16' to generate in lower precision"
            )
        self.device = resolve_device(device)
        generator = generator.to(self.device).eval()
        # channels_last on CPU, where oneDNN generates 1.4-1.6x faster in it
        generator = generator.to(memory_format=preferred_memory_format(generator, self.device))
        self.generator = generator
        self.inpc = inpc
        self.transform = transform
        self.target_transform = target_transform
        self.augment = _make_augment(augment)
        # big CPU batches re-fault their activation buffers on every call: small ones are faster
        self.batch_size = batch_size or (500 if self.device.type == "cuda" else 64)
        self.normalize = normalize
        self.generation_dtype = _generation_dtype(generation_dtype)
        if self.device.type == "cpu" and self.generation_dtype and not _cpu_runs_natively(self.generation_dtype):
            name = dtype_name(self.generation_dtype)
            warnings.warn(
                f"generation_dtype {name}: this CPU has no {name} instructions, so generating in {name} is "
                "emulated and much slower than float32; use 'bf16' where supported, or leave it unset",
                RuntimeWarning, stacklevel=2,
            )
        config = generator.config
        self.classes: list[str] = list(config.classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.mean = torch.tensor(config.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(config.std, device=self.device).view(1, -1, 1, 1)

        self.rank, self.world_size = _dist_rank_world() if distributed else (0, 1)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            if self.world_size > 1:  # all ranks must share the epoch's noise
                box = [seed]
                torch.distributed.broadcast_object_list(box, src=0)
                seed = int(box[0])
        self.seed = seed
        # global layout: class-major labels, this rank takes indices rank::world_size. As
        # with DistributedSampler, the index list wraps around so that every rank gets the
        # same number of items (unequal lengths would make DDP ranks wait on each other).
        self._global_labels = torch.arange(self.num_classes).repeat_interleave(inpc)
        total = len(self._global_labels)
        per_rank = math.ceil(total / self.world_size)
        self._indices = torch.arange(self.rank, per_rank * self.world_size, self.world_size) % total
        self.targets: list[int] = self._global_labels[self._indices].tolist()
        # Epoch state, in shared memory: DataLoader worker copies (made at fork/spawn time,
        # persistent or not) and this process read and move on the same epochs.
        #   [0] the epoch and its generation (+1 at every change of epoch, whoever makes
        #       it), packed into one word (epoch << 32 | generation) so that a change is one
        #       store: no process reads half of one, and workers moving on at the same time
        #       each write the same value
        #   [1], [2] items read one at a time in this process ([1]) in generation [2]
        self._epoch_state = torch.zeros(3, dtype=torch.int64).share_memory_()
        # per item, generation + 1 of the epoch in which a DataLoader pass (a batch, or any
        # read in a worker process) / a read on its own in this process last read it
        self._pass_reads = torch.zeros(len(self._indices), dtype=torch.int64).share_memory_()
        self._item_reads = torch.zeros(len(self._indices), dtype=torch.int64).share_memory_()
        self._active_epoch = 0  # the epoch whose images are cached / being generated
        self._cache: dict[int, Tensor] = {}
        self._cache_weights: tuple = ()  # the generator's _weights_key when the cache was filled
        self._prefetched: _EpochPrefetch | None = None  # an epoch generated in the background
        self._folded: tuple[tuple, nn.Module] | None = None  # (weights key, BatchNorm-folded copy)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_prefetched"] = None  # a thread cannot be pickled (DataLoader workers with spawn)
        # caches are rebuilt on demand: a pickled dataset (spawned workers) stays small
        state["_folded"] = None
        state["_cache"] = {}
        state.pop("_noise", None)
        state.pop("_noise_epoch", None)
        state.pop("_views", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # a deep copy or an unpickled dataset gets its own epoch state: shared again, so that
        # its DataLoader workers keep counting with it (no-op for tensors already shared)
        for name in ("_epoch_state", "_pass_reads", "_item_reads"):
            getattr(self, name).share_memory_()

    def _shared_views(self) -> tuple[Any, Any, Any]:
        """NumPy views of the shared epoch state (cheap scalar access, per item), made once
        per process (they are not pickled: spawned workers make their own)."""
        views = self.__dict__.get("_views")
        if views is None:
            views = self._views = (self._epoch_state.numpy(), self._pass_reads.numpy(), self._item_reads.numpy())
        return views

    def _current(self) -> tuple[int, int]:
        """``(generation, epoch)`` now; reads are stamped ``generation + 1``."""
        word = int(self._shared_views()[0][0])  # one load: never half of a change
        return word & _GENERATION_MASK, word >> _EPOCH_SHIFT

    def _set_current(self, generation: int, epoch: int, expected: tuple[int, int] | None = None) -> None:
        """Store ``(generation, epoch)`` in one word (only if it still holds ``expected``, when given)."""
        state = self._shared_views()[0]
        if expected is None or int(state[0]) == expected[1] << _EPOCH_SHIFT | expected[0]:
            state[0] = epoch << _EPOCH_SHIFT | generation & _GENERATION_MASK

    def _move_on(self, generation: int, epoch: int) -> tuple[int, int]:
        """Start the epoch after ``epoch`` (of ``generation``); returns the new (generation, epoch).

        Workers that find a repeated item at the same time all write the same value, so the
        epoch moves on once."""
        if epoch + 1 >= _MAX_EPOCH:
            raise OverflowError(f"epoch {epoch} is the last one (epochs stay below 2**31); call set_epoch to go on")
        generation_after = (generation + 1) & _GENERATION_MASK
        self._set_current(generation_after, epoch + 1, expected=(generation, epoch))
        return generation_after, epoch + 1

    def _read_in_full_one_at_a_time(self, generation: int) -> bool:
        state = self._shared_views()[0]
        return int(state[2]) == generation and int(state[1]) >= len(self)

    def _begin_pass_read(self, rows: Any) -> int:
        """The epoch that serves ``rows`` (item positions, or ``slice(None)`` for all), read
        by a DataLoader pass: the next one if any of them was read by a pass in this epoch."""
        _, pass_reads, _ = self._shared_views()
        generation, epoch = self._current()
        if (pass_reads[rows] == generation + 1).any() or self._read_in_full_one_at_a_time(generation):
            generation, epoch = self._move_on(generation, epoch)
        pass_reads[rows] = generation + 1
        return epoch

    def _begin_single_read(self, row: int) -> int:
        """The epoch that serves item ``row``, read on its own in this process."""
        state, pass_reads, item_reads = self._shared_views()
        generation, epoch = self._current()
        if pass_reads[row] == generation + 1 or self._read_in_full_one_at_a_time(generation):
            generation, epoch = self._move_on(generation, epoch)
        if item_reads[row] != generation + 1:  # the first look at this item in this epoch
            item_reads[row] = generation + 1
            if int(state[2]) != generation:
                state[1], state[2] = 0, generation
            state[1] += 1
        return epoch

    # -- torchvision-style attributes --------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.generator.config.num_classes

    @property
    def channels(self) -> int:
        return self.generator.config.channels

    @property
    def image_size(self) -> int:
        return self.generator.config.image_size

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        config = self.generator.config
        lines = [
            f"Dataset {type(self).__name__}",
            f"    Generator: {getattr(self.generator, 'source', None) or config.dataset or 'custom'}",
            f"    Number of datapoints: {len(self)} per epoch ({self.inpc} per class x {self.num_classes} classes"
            + (f", rank {self.rank} of {self.world_size}" if self.world_size > 1 else "")
            + ")",
            f"    Image: {config.channels}x{config.image_size}x{config.image_size}, "
            f"{'normalised with mean ' + str(config.mean) + ', std ' + str(config.std) if self.normalize else 'in [0, 1]'}",
            f"    Augment: {self.augment!r}",
            f"    Device: {self.device}, seed: {self.seed}, epoch: {self.epoch}"
            + (f", generation dtype: {dtype_name(self.generation_dtype)}" if self.generation_dtype else ""),
        ]
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}")
        if self.target_transform is not None:
            lines.append(f"    Target transform: {self.target_transform!r}")
        return "\n".join(lines)

    # -- epochs ------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The current epoch: that of the items served last, or the one :meth:`set_epoch`
        chose. It moves on when the next pass starts (see the class docstring)."""
        return self._current()[1]

    @epoch.setter
    def epoch(self, value: int) -> None:
        raise AttributeError(f"epoch is read-only; call set_epoch({value!r}) to select an epoch")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose images are served (as ``DistributedSampler.set_epoch``):
        the next pass reads this epoch in full, whatever was read before."""
        number = as_int(epoch)
        if number is None or not 0 <= number < _MAX_EPOCH:
            raise ValueError(f"epoch must be a non-negative int below 2**31, got {epoch!r}")
        epoch = number
        self._start_epoch(epoch)
        self._activate(epoch)
        self._drop_stale_cache()

    def _start_epoch(self, epoch: int) -> None:
        """Make ``epoch`` current, with none of its items read yet."""
        generation, _ = self._current()
        self._set_current(generation + 1, epoch)  # earlier reads belong to older generations

    def _activate(self, epoch: int) -> None:
        if epoch != self._active_epoch:
            self._cache.clear()
            self._active_epoch = epoch

    def _rng(self, *parts: int, epoch: int | None = None) -> torch.Generator:
        rng = torch.Generator(device=self.device)
        rng.manual_seed(_mix_seed(self.seed, self._active_epoch if epoch is None else epoch, *parts))
        return rng

    # -- generation --------------------------------------------------------------------
    def _inference_generator(self) -> nn.Module:
        """The generator with its BatchNorms folded (same images up to rounding, faster),
        rebuilt whenever the generator's weights change; the generator itself if it was
        put back in training mode (batch statistics)."""
        generator = self.generator
        if generator.training:
            return generator
        key = _weights_key(generator)
        cached = self._folded
        if cached is None or cached[0] != key:
            folded = fold_batchnorm(generator)
            weight = next(p for p in generator.parameters() if p.dim() == 4)
            if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
                folded = folded.to(memory_format=torch.channels_last)  # keep the generator's layout
            cached = self._folded = (key, folded)
        return cached[1]

    # Images depend only on (seed, epoch, chunk): an epoch generated ahead in the
    # background is the same as one generated on demand.
    @torch.no_grad()
    def _render(self, noise: Tensor, chunk_id: int, epoch: int, custom_augment: bool = True) -> Tensor:
        """Chunk ``chunk_id`` of ``epoch``: generated, scaled, normalised and augmented
        (a custom ``augment`` callable only if ``custom_augment``: a background thread
        leaves it to the reading thread, see :meth:`_apply_custom_augment`)."""
        generator = self._inference_generator()
        with torch.autocast(self.device.type, dtype=self.generation_dtype or torch.float32,
                            enabled=self.generation_dtype is not None):
            images = generator(noise)
        images = (images.contiguous().float() + 1) / 2  # standard layout and float32 for users
        if self.normalize:
            images = (images - self.mean) / self.std
        if isinstance(self.augment, DSA):
            images = self.augment(images, generator=self._rng(1, self.rank, chunk_id, epoch=epoch))
        elif self.augment is not None and custom_augment:
            images = self._apply_custom_augment(images, chunk_id, epoch)
        return images

    @torch.no_grad()
    def _apply_custom_augment(self, images: Tensor, chunk_id: int, epoch: int) -> Tensor:
        """The ``augment`` callable on one chunk, with torch's global RNG (which torchvision
        transforms draw from) seeded from (seed, epoch, rank, chunk) and restored after: its
        draws are reproducible and leave the training loop's random stream alone. Call it
        from the reading thread only: the global RNG is shared by all threads."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            seed = _mix_seed(self.seed, epoch, 1, self.rank, chunk_id)
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.default_generators[self.device.index or torch.cuda.current_device()].manual_seed(seed)
            return _checked_augment_output(self.augment(images), images)

    def _epoch_noise(self, epoch: int) -> Tensor:
        """Label-coded noise for the whole (global) epoch, identical on every rank."""
        noise = torch.randn(
            len(self._global_labels), self.generator.noise_dim, device=self.device, generator=self._rng(0, epoch=epoch)
        )
        return self.generator.make_noise(self._global_labels, noise=noise)

    @property
    def _num_chunks(self) -> int:
        return math.ceil(len(self) / self.batch_size)

    def _render_chunk(self, noise: Tensor, chunk_id: int, epoch: int, custom_augment: bool = True) -> Tensor:
        start = chunk_id * self.batch_size
        local = self._indices[start : start + self.batch_size].to(self.device)
        return self._render(noise[local], chunk_id, epoch, custom_augment)

    def _chunk(self, chunk_id: int) -> Tensor:
        images = self._cache.get(chunk_id)
        if images is None:
            if getattr(self, "_noise_epoch", None) != self._active_epoch:
                self._noise = self._epoch_noise(self._active_epoch)
                self._noise_epoch = self._active_epoch
            images = self._render_chunk(self._noise, chunk_id, self._active_epoch)
            if not self._cache:
                self._cache_weights = _weights_key(self.generator)
            self._cache[chunk_id] = images
        return images

    def _generate_epoch(self, epoch: int, cancel: threading.Event) -> list[Tensor] | None:
        """Every chunk of ``epoch``, in a background thread (None if ``cancel`` was set
        first); touches no cache, and leaves a custom ``augment`` callable to the reader."""
        noise = self._epoch_noise(epoch)
        chunks = []
        for chunk_id in range(self._num_chunks):
            if cancel.is_set():
                return None
            chunks.append(self._render_chunk(noise, chunk_id, epoch, custom_augment=False))
        return chunks

    def prefetch(self, epoch: int) -> None:
        """Start generating ``epoch`` in a background thread; :meth:`epoch_tensors` takes it
        from there when that epoch comes. Generation releases the GIL, so on a CPU with a
        core to spare it overlaps with a training step (``SyntheticDataset.loader`` does
        this by default there). The images are the same as without prefetching."""
        pending = self._prefetched
        if pending is not None and pending.epoch == epoch:
            return
        if pending is not None:
            pending.cancel()
        self._prefetched = _EpochPrefetch(self, epoch)

    def _take_prefetched(self, epoch: int) -> None:
        """Fill the cache from the background epoch if it is ``epoch``; drop it otherwise."""
        pending, self._prefetched = self._prefetched, None
        if pending is None:
            return
        if pending.epoch != epoch or self._cache or pending.weights != _weights_key(self.generator):
            pending.cancel()  # another epoch, or made before the generator's weights changed
            return
        chunks = pending.result()
        if chunks is not None:
            if self.augment is not None and not isinstance(self.augment, DSA):  # here, not in the thread
                chunks = [self._apply_custom_augment(chunk, i, epoch) for i, chunk in enumerate(chunks)]
            self._cache, self._cache_weights = dict(enumerate(chunks)), pending.weights

    def _drop_stale_cache(self) -> None:
        """Forget the cached images if the generator's weights changed since they were made
        (checked at each :meth:`loader` pass and :meth:`set_epoch`, not per item)."""
        if self._cache and self._cache_weights != _weights_key(self.generator):
            self._cache.clear()

    def epoch_tensors(self) -> tuple[Tensor, Tensor]:
        """All images and labels of the current epoch (for this rank), on the device."""
        self._activate(self.epoch)
        self._drop_stale_cache()
        self._take_prefetched(self._active_epoch)
        chunks = [self._chunk(i) for i in range(self._num_chunks)]
        labels = self._global_labels[self._indices].to(self.device)
        return torch.cat(chunks), labels

    def _row(self, index: Any) -> int:
        """``index`` as an item position in ``[0, len)``."""
        row = as_int(index)  # ints, numpy integers, integer 0-d tensors
        if row is None:
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        asked = row
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"index {asked} out of range for {len(self)} items")
        return row

    def _in_worker(self) -> bool:
        """Whether this is a DataLoader worker process (which only CPU generation allows)."""
        worker = get_worker_info()
        if worker is not None and self.device.type != "cpu":
            raise RuntimeError(
                f"SyntheticDataset on {self.device} cannot be read from DataLoader worker {worker.id}: "
                "generation on an accelerator is not supported in worker processes. Use num_workers=0 "
                "(generation is already batched on the device) or dataset.loader()."
            )
        return worker is not None

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        in_worker = self._in_worker()
        row = self._row(index)
        # in a worker the read belongs to a DataLoader pass; here it is a look at one item
        self._activate(self._begin_pass_read(row) if in_worker else self._begin_single_read(row))
        return self._item(row)

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any]]:
        """One DataLoader batch (``DataLoader`` and ``Subset`` read batches through this)."""
        self._in_worker()
        rows = [self._row(index) for index in indices]
        if rows:
            self._activate(self._begin_pass_read(rows))
        return [self._item(row) for row in rows]

    def _item(self, index: int) -> tuple[Any, Any]:
        """Item ``index`` of the active epoch, transformed."""
        # a copy, so that an in-place transform cannot alter the cached epoch
        image = self._chunk(index // self.batch_size)[index % self.batch_size].clone()
        target: Any = self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    # -- fast path ---------------------------------------------------------------------
    def loader(
        self, batch_size: int = 128, shuffle: bool = True, drop_last: bool = False, prefetch: bool | None = None
    ) -> "SyntheticLoader":
        """Iterate whole device batches, one fresh epoch per pass (the fast path).

        ``prefetch`` generates the next epoch in a background thread while this one is
        trained on. The default turns it on where it pays: on CPU when torch uses fewer
        intra-op threads than there are cores (``torch.set_num_threads``), so that a core
        is free to generate on; with every core already training, overlapping only adds
        contention. A custom ``augment`` callable runs in this thread, as without prefetch
        (it may draw from torch's global RNG, which the training loop shares).
        """
        return SyntheticLoader(self, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, prefetch=prefetch)

    def _default_prefetch(self) -> bool:
        return self.device.type == "cpu" and _core_to_spare()

    def materialize(
        self, ipc: int | None = None, path: str | Path | None = None, fmt: str | None = None, overwrite: bool = False
    ):
        """Generate a fixed synthetic set; see :func:`synthsets.export.materialize`."""
        from .export import materialize

        return materialize(self, ipc=ipc, path=path, fmt=fmt, overwrite=overwrite)


class SyntheticLoader:
    """Batches of ``(images, labels)`` on the dataset's device; each ``iter()`` is a new epoch.

    Works like a ``DataLoader`` in a training loop but skips per-item indexing and
    collation: a whole epoch is generated in large batches, then sliced.
    """

    def __init__(
        self,
        dataset: SyntheticDataset,
        batch_size: int = 128,
        shuffle: bool = True,
        drop_last: bool = False,
        prefetch: bool | None = None,
    ):
        if as_int(batch_size) is None or as_int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        _check_flag(shuffle, "shuffle")
        _check_flag(drop_last, "drop_last")
        _check_flag(prefetch, "prefetch", none=True)
        batch_size = as_int(batch_size)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.prefetch = dataset._default_prefetch() if prefetch is None else bool(prefetch)
        if drop_last and batch_size > len(dataset):
            warnings.warn(
                f"drop_last=True with batch_size {batch_size} larger than an epoch ({len(dataset)} images): every "
                "epoch yields no batch; lower batch_size, raise inpc, or keep the last batch (drop_last=False)",
                stacklevel=_caller_stacklevel(),
            )

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        ds = self.dataset
        # a pass reads every item, so (as for a DataLoader) it starts the next epoch when a
        # pass has read any item of the current one, or every item has been read one at a
        # time; an epoch only looked at (ds[0]) or just chosen by set_epoch is served.
        ds._begin_pass_read(slice(None))  # this pass consumes the epoch
        images, labels = ds.epoch_tensors()
        if self.prefetch:  # the next pass's epoch, generated while this one is trained on
            ds.prefetch(ds.epoch + 1)
        if self.shuffle:
            order = torch.randperm(len(labels), device=ds.device, generator=ds._rng(2, ds.rank))
            images, labels = images[order], labels[order]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            x, y = images[start : start + self.batch_size], labels[start : start + self.batch_size]
            # per-item transforms, batched as a DataLoader would (default_collate)
            if ds.transform is not None:
                x = default_collate([ds.transform(img) for img in x])
            if ds.target_transform is not None:
                y = default_collate([ds.target_transform(int(t)) for t in y])
                y = y.to(ds.device) if isinstance(y, Tensor) else y
            yield x, y


class _EpochPrefetch:
    """One epoch of a :class:`SyntheticDataset`, generated in a daemon thread."""

    def __init__(self, dataset: SyntheticDataset, epoch: int) -> None:
        self.epoch = epoch
        self.weights = _weights_key(dataset.generator)  # its images are stale once these change
        self._cancel = threading.Event()
        self._chunks: list[Tensor] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(dataset,), name=f"synthsets-prefetch-epoch-{epoch}", daemon=True
        )
        _RUNNING.add(self)
        self._thread.start()

    def _run(self, dataset: SyntheticDataset) -> None:
        try:
            self._chunks = dataset._generate_epoch(self.epoch, self._cancel)
        except BaseException as err:  # noqa: BLE001 - re-raised in the reading thread
            self._error = err

    def cancel(self) -> None:
        """Stop at the next chunk boundary (the result is dropped)."""
        self._cancel.set()

    def result(self) -> list[Tensor] | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._chunks


_RUNNING: "weakref.WeakSet[_EpochPrefetch]" = weakref.WeakSet()


@atexit.register
def _stop_prefetch_threads(timeout: float = 10.0) -> None:
    """At interpreter exit, stop background epochs at their next chunk and wait for them,
    so that no thread is inside torch while the runtime shuts down."""
    pending = list(_RUNNING)
    for prefetch in pending:
        prefetch.cancel()
    for prefetch in pending:
        prefetch._thread.join(timeout)
