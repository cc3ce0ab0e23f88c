"""Distil a dataset into a DiM generator (paper Sec. 3), as a library call and a CLI.

Stage 1 trains a conditional AC-WGAN-GP. Stage 2 continues the GAN and adds logits
matching: every epoch a fresh model is drawn from the models pool; before each
generator step it is trained for 16 SGD steps on DSA-augmented real images, then real
and generated images with the same labels are augmented with one shared (siamese) DSA
draw and ``L_m = mean((log_softmax(m(real)) - log_softmax(m(fake)))^2)`` is added to
the generator loss with weight ``lambda`` (0.01). Both augmentations use every DSA op;
``--stage2-dsa reference`` (``stage2_dsa="reference"``) uses the reference code's
colour+crop to train the pool model and colour+crop+cutout to match.

    python -m synthsets.distill --data mnist --root DATA --out runs/mnist
    torchrun --nproc_per_node 4 -m synthsets.distill --data cifar10 --root DATA --out runs/c10

The output folder holds ``config.json`` + ``model.safetensors`` (the generator, loadable
with ``synthsets.DiM(out)``), ``README.md`` (model card), ``samples/`` (a grid per
epoch), ``log.jsonl`` (losses), ``stage1/`` (the generator after stage 1) and
``checkpoints/last.safetensors`` (resume with ``--resume``). It must be new or empty, or
a folder of an earlier run (continued with ``--resume``): a folder holding other files, such
as a downloaded generator, is refused rather than overwritten.

On a single CUDA device every training step is replayed as one CUDA graph after three
eager warm-up steps per epoch (``synthsets.cuda_graphs``; ``--no-cuda-graphs`` turns it
off): the same maths without the cost of launching hundreds of small kernels per step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import card
from .allocator import tune_cpu_allocator
from .augment import DSA
from .checkpoint import load_checkpoint, optimizer_state, save_checkpoint
from .cuda_graphs import GraphedStep
from .data import RealData, load_real
from .dataset import SEED_BOUND, _mix_seed, resolve_device
from .discriminator import Discriminator, gradient_penalty
from .evaluate import _distributed_env, _model_input_problem
from .generator import Generator, GeneratorConfig
from .hub import (
    UploadError,
    WeightsError,
    atomic_write_text,
    error_detail,
    file_in_the_way,
    hub_unreachable,
    remove_stale_temporaries,
    upload_folder_or_explain,
)
from .models import POOL, create_model, is_model, list_models, preferred_memory_format

PRESETS: dict[str, dict[str, Any]] = {
    # the paper / reference code
    "paper": {},
    # a reduced run that finishes on a 2-core CPU in well under an hour for MNIST
    "cpu-small": {
        "width": 64,
        "disc_width": 32,
        "stage1_epochs": 14,
        "stage2_epochs": 2,
        "steps_per_epoch": 200,
        "stage2_steps_per_epoch": 30,
        "lr": 2e-4,
        "inner_steps": 16,
        "pool": ["convnet3"],
        "pool_width": 32,
        "stage2_lr": 1e-4,
    },
    # a seconds-long smoke run (tests, CI)
    "tiny": {
        "width": 16,
        "disc_width": 16,
        "stage1_epochs": 1,
        "stage2_epochs": 1,
        "steps_per_epoch": 2,
        "stage2_steps_per_epoch": 2,
        "inner_steps": 2,
        "batch_size": 8,
        "pool": ["convnet3"],
        "pool_width": 8,
        "samples_per_class": 2,
    },
}


@dataclass
class DistillConfig:
    """Every setting of a distillation run (defaults are the paper's).

    A ``preset`` fills the fields left at their defaults when the run starts
    (:class:`Distiller`, :func:`distill`); :func:`apply_preset` fills them in earlier. A
    field set to its default value cannot be told from one left alone, so the preset
    fills it too (``DistillConfig(preset="tiny", width=196)`` trains width 16). To keep
    such a value, pass it to :func:`distill` as a keyword (``distill(preset="tiny",
    width=196)``) or call ``apply_preset(config, explicit=["width"])`` first."""

    data: str = "mnist"
    root: str | None = None
    out: str = "runs/dim"
    image_size: int | None = None
    download: bool = False
    # architecture
    width: int = 196
    disc_width: int = 196
    noise_dim: int = 100
    # schedule
    stage1_epochs: int = 120
    stage2_epochs: int = 100
    steps_per_epoch: int | None = None  # default: one pass over the real training set
    stage2_steps_per_epoch: int | None = None
    batch_size: int = 64
    lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.9)
    gp_weight: float = 10.0
    # stage 2
    stage2_lr: float = 5e-6
    match_weight: float = 0.01
    pool: list[str] = field(default_factory=lambda: list(POOL))
    pool_width: int | None = None  # ConvNet width override (None: 128)
    inner_steps: int = 16
    inner_lr: float = 0.01
    inner_momentum: float = 0.9
    inner_weight_decay: float = 5e-4
    siamese: bool = True
    stage2_dsa: str = "full"  # "full": every DSA op for both uses; "reference": as DiM's reference code
    # speed: on a single CUDA device, replay each training step as one CUDA graph
    cuda_graphs: bool = True
    # run control
    seed: int = 0
    device: str | None = None
    stage1_minutes: float | None = None
    stage2_minutes: float | None = None
    samples_per_class: int = 10
    push_to_hub: str | None = None
    preset: str | None = None
    progress: bool = True
    # the preset whose values are filled in already (set by apply_preset; kept by
    # dataclasses.replace and in the saved JSON, so a preset is never applied twice)
    _preset_applied: str | None = field(default=None, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        for name in ("data", "root", "out"):  # paths as str (the config is saved as JSON)
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` (a ``ValueError``) for the first bad setting.

        Called on construction and again by :class:`Distiller` (fields may be changed in
        between), so a bad value fails before any data is loaded or any step is run."""
        for name in ("width", "disc_width", "noise_dim", "batch_size", "inner_steps", "samples_per_class"):
            _check_int(self, name, minimum=1)
        for name in ("steps_per_epoch", "stage2_steps_per_epoch"):
            hint = "leave it unset for one pass over the training set" if name == "steps_per_epoch" else (
                "leave it unset for the stage-1 number of steps"
            )
            _check_int(self, name, minimum=1, optional=True, hint=hint)
        _check_int(self, "pool_width", minimum=1, optional=True, hint="leave it unset for ConvNet width 128")
        for name in ("stage1_epochs", "stage2_epochs"):
            _check_int(self, name, minimum=0, hint="0 skips the stage")
        if self.stage1_epochs == 0 and self.stage2_epochs == 0:
            raise ConfigError(
                ("stage1_epochs", "stage2_epochs"),
                "{} and {} are both 0, which would publish an untrained generator: "
                "give at least one stage a positive number of epochs",
            )
        _check_int(self, "seed", minimum=0)
        if self.seed >= SEED_BOUND:
            raise _bad("seed", f"must lie in [0, 2**63), got {self.seed}")
        for name in ("lr", "stage2_lr", "inner_lr"):
            _check_float(self, name, positive=True)
        for name in ("gp_weight", "inner_weight_decay"):
            _check_float(self, name)
        _check_float(self, "match_weight", hint="0 leaves the GAN loss alone")
        for name in ("stage1_minutes", "stage2_minutes"):
            _check_float(self, name, positive=True, optional=True, finite=False,
                         hint="leave it unset for no time limit; set the stage's epochs to 0 to skip it")
        _check_float(self, "inner_momentum", below_one=True)
        betas = self.betas
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(_is_real(b) and 0 <= b < 1 for b in betas)
        ):
            raise _bad("betas", f"must be two Adam betas in [0, 1), got {betas!r}")
        if self.image_size not in (None, 28, 32):
            raise _bad("image_size", f"must be 28 or 32 (or unset to keep the data's size), got {self.image_size!r}")
        if not isinstance(self.data, str) or not self.data.strip():
            raise _bad("data", f"must be a str naming a dataset or an image folder, got {self.data!r}")
        if not isinstance(self.out, str) or not self.out.strip():
            raise _bad("out", f"must be a str naming the output folder, got {self.out!r}")
        if not isinstance(self.stage2_dsa, str) or self.stage2_dsa not in STAGE2_DSA:
            raise _bad("stage2_dsa", f"must be one of {sorted(STAGE2_DSA)}, got {self.stage2_dsa!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise _bad("preset", f"names an unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        pool = self.pool
        if isinstance(pool, str) or not isinstance(pool, (list, tuple)) or not pool:
            raise _bad("pool", f"must be a non-empty list of model names (e.g. {list(POOL)}), got {pool!r}")
        unknown = [name for name in pool if not is_model(name)]
        if unknown:
            raise _bad(
                "pool",
                f"has unknown models {unknown}: use synthsets models ({list_models()}) or timm model names",
            )

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


#: settings a resumed run may change: what it reads the data from (the data themselves
#: must be the same), where and how it reports, how long it runs and on what device; all
#: others must equal the checkpoint's (``stage1_epochs`` may move while still in stage 1)
RESUME_MAY_CHANGE = frozenset({
    "data", "root", "image_size", "download", "out", "stage2_epochs", "stage1_minutes", "stage2_minutes",
    "samples_per_class", "push_to_hub", "preset", "progress", "device", "cuda_graphs",
})
#: settings that only stage 2 uses: they may change too while stage 2 has not begun
STAGE2_SETTINGS = frozenset({
    "stage2_lr", "match_weight", "pool", "pool_width", "inner_steps", "inner_lr", "inner_momentum",
    "inner_weight_decay", "siamese", "stage2_steps_per_epoch", "stage2_dsa",
})
#: stage 2's DSA strategies, by ``stage2_dsa``: (training the pool model, matching)
STAGE2_DSA = {
    "full": ("flip_color_crop_scale_rotate_cutout", "flip_color_crop_scale_rotate_cutout"),
    "reference": ("color_crop", "color_crop_cutout"),  # DiM's reference code (CutMix off in stage 2)
}


def _dataset_identity(real: RealData) -> dict[str, Any]:
    """What a checkpoint records of its training data, to recognise them on resume (also
    when read from another folder): classes, image shape, size and a fingerprint of a
    sample of the images; the name is for messages only."""
    images = real.train.images
    sample = images[:: max(1, len(images) // 64)][:64].contiguous()
    return {"name": real.name, "classes": list(real.classes), "channels": real.channels,
            "image_size": real.image_size, "train_images": len(real.train.labels),
            "fingerprint": hashlib.sha1(sample.cpu().numpy().tobytes()).hexdigest()[:16]}


def _same_data(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    return {k: v for k, v in saved.items() if k != "name"} == {k: v for k, v in now.items() if k != "name"}


def _describe_dataset(identity: dict[str, Any]) -> str:
    size = identity.get("image_size")
    return (f"{identity.get('name')!r} ({len(identity.get('classes') or [])} classes, "
            f"{identity.get('channels')}x{size}x{size}, {identity.get('train_images')} training images)")


class ConfigError(ValueError):
    """A bad :class:`DistillConfig` setting. ``str(err)`` names the fields as
    ``DistillConfig.<field>``; :meth:`render` names them another way (the CLI's options)."""

    def __init__(self, fields: Sequence[str], template: str) -> None:
        self.fields = tuple(fields)
        self.template = template  # a str.format template with one ``{}`` per field
        super().__init__(self.render(lambda name: f"DistillConfig.{name}"))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each field shown as ``name(field)``."""
        return self.template.format(*(name(f) for f in self.fields))


def _escape(text: str) -> str:
    """``text`` as literal text of a ``str.format`` template."""
    return text.replace("{", "{{").replace("}", "}}")


def _bad(field_name: str, problem: str) -> ConfigError:
    """``ConfigError`` for one field: "<field> <problem>" (``problem`` is literal text)."""
    return ConfigError((field_name,), "{} " + _escape(problem))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(config: DistillConfig, name: str, minimum: int | None = None, optional: bool = False, hint: str = "") -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    kind = "an int" if minimum is None else ("a positive int" if minimum == 1 else f"an int >= {minimum}")
    if not isinstance(value, int) or isinstance(value, bool) or (minimum is not None and value < minimum):
        raise _bad(name, f"must be {kind}, got {value!r}" + (f" ({hint})" if hint else ""))


def _check_float(
    config: DistillConfig,
    name: str,
    positive: bool = False,
    optional: bool = False,
    finite: bool = True,
    below_one: bool = False,
    hint: str = "",
) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    ok = _is_real(value) and not math.isnan(value) and (not finite or math.isfinite(value))
    ok = ok and (value > 0 if positive else value >= 0) and (not below_one or value < 1)
    if not ok:
        kind = "a number > 0" if positive else ("a number in [0, 1)" if below_one else "a number >= 0")
        raise _bad(name, f"must be {kind}, got {value!r}" + (f" ({hint})" if hint else ""))


# -- distributed helpers ----------------------------------------------------------------
def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _average_grads(module: nn.Module, world: int) -> None:
    """Average gradients across ranks (used for the discriminator, whose gradient-penalty
    double backward does not fit DDP's one-forward-one-backward reducer)."""
    if world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    _all_reduce_mean(grads, world)


def _all_reduce_mean(tensors: list[Tensor], world: int) -> None:
    """Average ``tensors`` in place across ranks with one collective (one flat buffer)."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def _average_buffers(module: nn.Module, world: int) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across ranks."""
    if world == 1:
        return
    _all_reduce_mean([b for b in module.buffers() if b.is_floating_point()], world)


def _setup_distributed(device: str | None) -> tuple[torch.device, int, int, bool]:
    """Initialise torch.distributed under torchrun; pick the device."""
    started = False
    dev = resolve_device(device)  # a bad device fails before joining the process group
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        started = True
    rank, world = _dist()
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    return dev, rank, world, started


@contextlib.contextmanager
def _cudnn_benchmark() -> Iterator[None]:
    """cuDNN picks the fastest kernels for the step's fixed shapes, within the block only
    (the process-wide setting is restored after it)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Switch an Adam optimiser (after ``load_state_dict``) to or from capturable mode:
    capturable Adam keeps its step counters on the parameters' device."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                device = p.device if capturable else torch.device("cpu")
                state["step"] = state["step"].to(device)


@contextlib.contextmanager
def _running_stats_as_two_passes(module: nn.Module) -> Iterator[None]:
    """Within the block, one train-mode forward moves every BatchNorm's running statistics
    (and batch counter) as two forwards of the same batch would: an exponential average
    with momentum ``m`` applied twice to one value is one step with ``1 - (1 - m)^2``."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms = [m for m in norms if m.training and m.track_running_stats]
    if any(m.momentum is None for m in norms):
        raise ValueError("BatchNorm with momentum=None (a cumulative average) is not supported here")
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1 - (1 - m.momentum) ** 2
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
    for m in norms:
        m.num_batches_tracked.add_(1)  # the second forward's count


def _check_out(out: Path) -> None:
    """The output folder must be a folder (or not exist yet), as must every existing parent."""
    blocker = file_in_the_way(out)
    if blocker is not None:
        where = f"{out} is a file" if blocker == out else f"{out}: {blocker} is a file"
        raise _bad("out", f"{where}; give a folder path")


#: where a run keeps its training checkpoint, inside its output folder
CHECKPOINT = Path("checkpoints") / "last.safetensors"
#: the file a run writes into its output folder first (its settings)
RUN_CONFIG = "distill_config.json"


def _check_out_contents(out: Path, resume: bool) -> None:
    """Refuse an output folder a run would overwrite or mix with (``FileExistsError``).

    A new or empty folder is fine, and so is a run of this command: one holding its
    checkpoint is continued with ``resume`` (and refused without it); one holding its
    settings file but no checkpoint (stopped in its first epoch, or its checkpoint
    deleted) starts over, which a finished one (holding its generator) does only with
    ``resume``. Any other folder with files in it (e.g. a downloaded generator folder) is
    refused: a run never overwrites files it did not write."""
    if not out.is_dir():
        return
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file():
        if resume:
            return
        raise FileExistsError(
            f"{out} already holds a run (checkpoint {checkpoint}); "
            "pass --resume (resume=True) to continue it, or choose another --out (out=)"
        )
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # .gitkeep, .DS_Store: kept
    if not entries:
        return
    if (out / RUN_CONFIG).is_file():  # a run of this command without its checkpoint: it starts over
        if resume or not (out / "model.safetensors").exists():
            return  # stopped in its first epoch (nothing finished to lose), or told to by --resume
        raise FileExistsError(
            f"{out} already holds a finished run (model.safetensors) but no checkpoint ({checkpoint}) to continue it "
            "from; pass --resume (resume=True) to train it again from scratch, or choose another --out (out=)"
        )
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    raise FileExistsError(
        f"{out} already exists and is not empty ({shown}), and holds no synthsets.distill run to resume "
        f"(no {CHECKPOINT.as_posix()}): a new run would overwrite those files or mix with them; "
        "choose a new or empty --out (out=)"
    )


def _pool_kwargs(config: DistillConfig, name: str) -> dict[str, Any]:
    """Keyword arguments of pool model ``name`` (``pool_width`` applies to ConvNets)."""
    return {"width": config.pool_width} if config.pool_width and name.startswith("convnet") else {}


def _check_pool(config: DistillConfig, real: RealData) -> None:
    """Refuse (``ConfigError``) pool models that cannot take the data's images: each is
    built once and run on a dummy batch on the CPU, before any training."""
    c, size = real.channels, real.image_size
    for name in dict.fromkeys(config.pool):
        problem = _model_input_problem(name, real.num_classes, c, size, _pool_kwargs(config, name))
        if problem is None:
            continue
        other = 32 if size == 28 else 28  # the other size DiM generators make
        resize = ""
        if _model_input_problem(name, real.num_classes, c, other, _pool_kwargs(config, name)) is None:
            resize = f", or pass --image-size {other} (image_size={other}) to train on {other}x{other} images"
        raise _bad(
            "pool",
            f"model {name!r} cannot be used on {real.name}: it {problem}; choose pool models that take "
            f"{c}x{size}x{size} images, e.g. {', '.join(POOL[:3])}{resize} (a timm model with a fixed input size, "
            f"such as a ViT made for 224x224, needs images of that size; DiM generators make 28 or 32 px images)",
        )


GRAPH_WARMUP_STEPS = 3  # eager steps per epoch before the step is captured as a CUDA graph


# -- the trainer -------------------------------------------------------------------------
def _check_hub_reachable(config: DistillConfig) -> None:
    """Refuse ``push_to_hub`` before training when it cannot work: huggingface_hub is
    offline, or there is no network at all (the Hub's host name does not resolve)."""
    unreachable = hub_unreachable()
    if unreachable is None:
        return
    why, fix = unreachable
    raise _bad("push_to_hub", f"{config.push_to_hub!r} needs the network, but {why}: {fix}, or leave the option "
                              f"out and upload the finished folder later with: hf upload {config.push_to_hub} "
                              f"{config.out} . --exclude 'checkpoints/*'")


class Distiller:
    """Runs stage 1 and stage 2 with checkpoints, logs, sample grids and a model card.

    A ``config.preset`` not applied yet (see :func:`apply_preset`) is applied here: it
    fills the fields left at their defaults, and ``self.cfg`` is the filled-in copy."""

    def __init__(self, config: DistillConfig, real: RealData | None = None) -> None:
        config.validate()  # again: fields may have been changed since construction
        config = apply_preset(config, explicit=_explicit_fields(config))  # a no-op if applied already
        _check_out(Path(config.out))
        if config.push_to_hub:  # found out now, not after hours of training
            _check_hub_reachable(config)
        self.cfg = config
        self.device, self.rank, self.world, self._started_dist = _setup_distributed(config.device)
        try:
            self._build(config, real)
        except BaseException:
            self.close()
            raise

    def _build(self, config: DistillConfig, real: RealData | None) -> None:
        self.out = Path(config.out)
        self.is_main = self.rank == 0
        if real is None:
            real = load_real(config.data, config.root, image_size=config.image_size, download=config.download,
                             progress=config.progress and self.is_main)
        if real.image_size not in (28, 32):
            raise ValueError(
                f"{config.data} has {real.image_size}x{real.image_size} images; DiM generators make 28 or 32 px: "
                "pass --image-size 32 (or 28) to resize"
            )
        if real.num_classes < 2:
            raise ValueError(
                f"{config.data} has {real.num_classes} class ({', '.join(real.classes)}); a conditional generator "
                "needs at least 2: give an image folder with one sub-folder per class (train/<class>/<image>)"
            )
        if config.stage2_epochs > 0:  # the pool is stage 2's: found out now, not after stage 1
            _check_pool(config, real)
        self.real = real
        self.num_classes = real.num_classes
        # real images in [-1, 1] for the discriminator; the classifier sees normalised ones
        self.mean = torch.tensor(real.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(real.std, device=self.device).view(1, -1, 1, 1)
        shard = slice(self.rank, None, self.world)
        self.train_x = real.train.images[shard].to(self.device)
        self.train_y = real.train.labels[shard].to(self.device)
        self.by_class = [torch.nonzero(self.train_y == c).flatten() for c in range(self.num_classes)]
        if any(len(idx) == 0 for idx in self.by_class):
            missing = [real.classes[c] for c, idx in enumerate(self.by_class) if len(idx) == 0]
            raise ValueError(f"no training images for classes {missing} (on rank {self.rank})")

        torch.manual_seed(config.seed)
        gen_config = GeneratorConfig(
            num_classes=self.num_classes,
            channels=real.channels,
            image_size=real.image_size,
            noise_dim=config.noise_dim,
            width=config.width,
            dataset=real.name,
            classes=real.classes,
            mean=real.mean,
            std=real.std,
        )
        self.G = Generator(gen_config).to(self.device)
        self.G.to(memory_format=preferred_memory_format(self.G, self.device))  # channels_last on CPU
        self.D = Discriminator(self.num_classes, real.channels, real.image_size, config.disc_width).to(self.device)
        self.D.to(memory_format=preferred_memory_format(self.D, self.device))  # channels_last on CPU
        # CUDA graphs need the optimisers' step counters on the device (capturable Adam)
        self.use_cuda_graphs = config.cuda_graphs and self.device.type == "cuda" and self.world == 1
        extra = {"capturable": True} if self.use_cuda_graphs else {}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=tuple(config.betas), **extra)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=tuple(config.betas), **extra)
        for opt in (self.opt_g, self.opt_d):  # the eager warm-up steps of every epoch are expected
            opt._warned_capturable_if_run_uncaptured = True
        self.graph_failure: str | None = None
        self.G_train: nn.Module = self.G
        if self.world > 1:
            self.G_train = nn.parallel.DistributedDataParallel(
                self.G, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        pool_strategy, match_strategy = STAGE2_DSA[config.stage2_dsa]
        self.dsa = DSA(pool_strategy)  # training the pool model, one draw per image
        self.match_dsa = DSA(match_strategy)  # matching: one shared (siamese) draw per batch pair
        self.epoch = 0  # epochs completed over both stages
        self.total_epochs = config.stage1_epochs + config.stage2_epochs
        self.stage_started: float | None = None
        self.wall_before = 0.0  # wall-clock seconds of earlier sessions (from the checkpoint)
        self.session_started: float | None = None  # set by fit
        fixed = torch.Generator(device="cpu").manual_seed(1234)
        labels = torch.arange(self.num_classes).repeat_interleave(config.samples_per_class)
        self.sample_noise = self.G.make_noise(labels, noise=torch.randn(len(labels), config.noise_dim, generator=fixed).to(self.device))

    # paths
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    # -- helpers -----------------------------------------------------------------------
    def to_classifier(self, x_pm: Tensor) -> Tensor:
        """Map generator-space images ([-1, 1]) to normalised classifier input."""
        return ((x_pm + 1) / 2 - self.mean) / self.std

    def to_gan(self, x_norm: Tensor) -> Tensor:
        """Map normalised real images to the generator's [-1, 1] range."""
        return (x_norm * self.std + self.mean) * 2 - 1

    def _steps(self, stage: int) -> int:
        # from the size of the smallest shard, so that every rank runs the same number of
        # steps (DDP needs matching collectives)
        full = max(1, (len(self.real.train) // self.world) // self.cfg.batch_size)
        if stage == 2 and self.cfg.stage2_steps_per_epoch is not None:
            return self.cfg.stage2_steps_per_epoch
        return full if self.cfg.steps_per_epoch is None else min(full, self.cfg.steps_per_epoch)

    def _batches(self, steps: int) -> list[Tensor]:
        """Index batches for one epoch, drawn on the device (shuffled passes over the shard)."""
        n, b = len(self.train_y), self.cfg.batch_size
        order = torch.cat([torch.randperm(n, device=self.device) for _ in range(math.ceil(steps * b / n))])
        return list(order[: steps * b].view(steps, b))

    # -- one training step (both stages) ------------------------------------------------
    def _train_step(self, idx: Tensor, matcher: nn.Module | None, opt_m: torch.optim.Optimizer | None) -> dict[str, Tensor]:
        """One generator step with everything around it, on the real batch ``idx``.

        It never synchronises with the host, so on CUDA it can be captured as a graph."""
        real, labels = self.to_gan(self.train_x[idx]), self.train_y[idx]
        z = self.G.make_noise(labels)
        # The D step and the G step see the same generated batch: G does not change in
        # between, so one forward serves both (the D step gets it detached), with
        # BatchNorm's running statistics updated as by the two forwards of the reference.
        with _running_stats_as_two_passes(self.G):
            fake = self.G_train(z)
        stats = self._discriminator_step(real, labels, fake.detach())
        if matcher is not None:
            assert opt_m is not None
            stats["pool_ce"] = self._train_pool_model(matcher, opt_m, self.cfg.inner_steps)
        stats.update(self._generator_step(real, labels, fake, matcher))
        return stats

    def _discriminator_step(self, real: Tensor, labels: Tensor, fake: Tensor) -> dict[str, Tensor]:
        self.D.requires_grad_(True)
        if self.device.type == "cuda":  # one launch-efficient forward (LayerNorm is per sample)
            score, logits = self.D(torch.cat([real, fake]))
            n = real.shape[0]
            score_real, score_fake, logits_real, logits_fake = score[:n], score[n:], logits[:n], logits[n:]
        else:  # on the CPU one pass gains nothing (52 ms either way at width 32; slower in NCHW)
            (score_real, logits_real), (score_fake, logits_fake) = self.D(real), self.D(fake)
        gp = gradient_penalty(self.D, real, fake)
        loss = (
            score_fake.mean()
            - score_real.mean()
            + F.cross_entropy(logits_real, labels)
            + F.cross_entropy(logits_fake, labels)
            + self.cfg.gp_weight * gp
        )
        self.opt_d.zero_grad(set_to_none=True)
        # the parameters only: not the gradient of the penalty's interpolated images
        loss.backward(inputs=list(self.D.parameters()))
        _average_grads(self.D, self.world)
        self.opt_d.step()
        # losses stay on the device (no host sync per step); run_epoch reads them once per epoch
        return {"d_loss": loss.detach(), "gp": gp.detach(), "wdist": (score_real.mean() - score_fake.mean()).detach()}

    def _generator_step(
        self, real: Tensor, labels: Tensor, fake: Tensor, matcher: nn.Module | None
    ) -> dict[str, Tensor]:
        """Update G through ``fake = G(z)`` (not detached)."""
        self.D.requires_grad_(False)
        score, logits = self.D(fake)
        g_gan = -score.mean() + F.cross_entropy(logits, labels)
        loss, stats = g_gan, {"g_loss": g_gan.detach()}
        if matcher is not None:
            match = self.matching_loss(matcher, self.to_classifier(real), self.to_classifier(fake))
            loss = loss + self.cfg.match_weight * match
            stats["match"] = match.detach()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return stats

    def matching_loss(self, model: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        """Logits matching on one shared (siamese) DSA draw of the real/fake pair."""
        real_aug, fake_aug = self.match_dsa.pair(real, fake, siamese=self.cfg.siamese)
        with torch.no_grad():
            target = F.log_softmax(model(real_aug), dim=1)
        return (target - F.log_softmax(model(fake_aug), dim=1)).pow(2).mean()

    def _train_pool_model(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> Tensor:
        model.train()
        model.requires_grad_(True)
        loss = torch.zeros((), device=self.device)
        for _ in range(steps):
            idx = torch.randint(len(self.train_y), (self.cfg.batch_size,), device=self.device)
            x = self.dsa(self.train_x[idx])
            loss = F.cross_entropy(model(x), self.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _average_grads(model, self.world)  # keep the pool model identical on every rank
            optimizer.step()
        _average_buffers(model, self.world)
        # matching runs in training mode, as in the reference: a BatchNorm pool model
        # normalises the real and the generated batch each with its own statistics
        model.requires_grad_(False)
        return loss.detach()

    def _new_pool_model(self, epoch: int) -> tuple[nn.Module, torch.optim.Optimizer, str]:
        # identical on every rank: the choice and the init depend on (seed, epoch) only
        torch.manual_seed(_mix_seed(self.cfg.seed, epoch, 7))
        name = self.cfg.pool[int(torch.randint(len(self.cfg.pool), (1,)).item())]
        kwargs = _pool_kwargs(self.cfg, name)
        model = create_model(name, self.num_classes, self.real.channels, self.real.image_size, **kwargs).to(self.device)
        model.to(memory_format=preferred_memory_format(model, self.device))
        opt = torch.optim.SGD(
            model.parameters(), lr=self.cfg.inner_lr, momentum=self.cfg.inner_momentum, weight_decay=self.cfg.inner_weight_decay
        )
        return model, opt, name

    # -- epochs ------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Run epoch ``epoch`` (0-based over both stages); deterministic given the state."""
        cfg = self.cfg
        stage = 1 if epoch < cfg.stage1_epochs else 2
        for opt in (self.opt_g, self.opt_d):  # stage 2: the reference's smaller rate, for both
            for group in opt.param_groups:
                group["lr"] = cfg.lr if stage == 1 else cfg.stage2_lr
        torch.manual_seed(_mix_seed(cfg.seed, epoch, self.rank))
        matcher = opt_m = None
        pool_name = None
        if stage == 2:
            matcher, opt_m, pool_name = self._new_pool_model(epoch)
            torch.manual_seed(_mix_seed(cfg.seed, epoch, self.rank, 1))
        self.G_train.train()
        self.D.train()
        steps = self._steps(stage)
        totals: dict[str, Tensor] = {}
        bar = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"stage {stage} epoch {epoch + 1}/{self.total_epochs}", leave=False, mininterval=0.5)
        # a new graph every epoch: the learning rate and the pool model are baked into it
        train_step = GraphedStep(
            lambda idx: self._train_step(idx, matcher, opt_m),
            warmup=GRAPH_WARMUP_STEPS,
            enabled=self.use_cuda_graphs and self.graph_failure is None and steps > GRAPH_WARMUP_STEPS,
        )
        try:
            with _cudnn_benchmark():
                for step, idx in enumerate(self._batches(steps)):
                    stats = train_step(idx)
                    for k, v in stats.items():
                        totals[k] = totals[k] + v if k in totals else v.double()
                    if bar is not None:
                        bar.update(1)
                        if step % 10 == 0:
                            bar.set_postfix({k: f"{float(v):.3f}" for k, v in stats.items()})
        finally:  # also on Ctrl-C: the next line printed starts on a clean line
            if bar is not None:
                bar.close()
        if train_step.failure is not None:
            self.graph_failure = train_step.failure  # do not try again in later epochs
        keys = sorted(totals)  # one host sync per epoch
        values = torch.stack([totals[k] for k in keys])
        if self.world > 1:  # log the mean over ranks
            torch.distributed.all_reduce(values)
            values = values / self.world
        totals = dict(zip(keys, values.tolist()))
        record: dict[str, Any] = {"epoch": epoch + 1, "stage": stage, "steps": steps}
        record.update({k: v / steps for k, v in totals.items()})
        if pool_name:
            record["pool_model"] = pool_name
        if self.use_cuda_graphs:
            record["cuda_graph"] = train_step.captured
        return record

    # -- outputs -----------------------------------------------------------------------
    def save_samples(self, name: str) -> Path:
        from torchvision.utils import save_image

        was_training = self.G.training
        self.G.eval()
        with torch.no_grad():
            images = (self.G(self.sample_noise) + 1) / 2
        self.G.train(was_training)
        path = self.out / "samples" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images.clamp(0, 1), path, nrow=self.cfg.samples_per_class, padding=1)
        return path

    def save_checkpoint(self) -> None:
        parts = {
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }
        meta = {
            "epoch": self.epoch,
            "config": self.cfg.to_json(),
            "world_size": self.world,
            "wall_seconds": round(self.wall_seconds(), 3),
            "dataset": _dataset_identity(self.real),
        }
        save_checkpoint(self.checkpoint_path, parts, meta)

    def _check_resumable(self, meta: dict[str, Any]) -> None:
        """Refuse a checkpoint made with other data or other settings than this run's
        (only those in ``RESUME_MAY_CHANGE`` may differ), naming each difference."""
        saved = meta.get("config", {}) if isinstance(meta.get("config"), dict) else {}
        now = self.cfg.to_json()
        epoch = meta.get("epoch") if _is_real(meta.get("epoch")) else None
        in_stage1 = epoch is not None and epoch <= min(saved.get("stage1_epochs", 0), self.cfg.stage1_epochs)
        may_change = RESUME_MAY_CHANGE | (STAGE2_SETTINGS | {"stage1_epochs"} if in_stage1 else set())
        changed = {
            k: (saved[k], now[k])
            for k in now
            if k in saved and k not in may_change and not k.startswith("_") and saved[k] != now[k]
        }
        fields, parts = [], []
        identity = _dataset_identity(self.real)
        if isinstance(meta.get("dataset"), dict) and not _same_data(meta["dataset"], identity):
            fields.append("data")
            parts.append("{}: " + _escape(f"{_describe_dataset(meta['dataset'])} in the checkpoint, "
                                          f"{_describe_dataset(identity)} now"))
        for name, (before, after) in changed.items():
            fields.append(name)
            parts.append("{}: " + _escape(f"{before!r} in the checkpoint, {after!r} now"))
        if fields:
            preset = saved.get("preset")
            made_with = f", --preset {preset}" if preset and preset != now.get("preset") else ""
            raise ConfigError(fields, _escape(f"cannot resume {self.checkpoint_path}: this run differs from it (")
                              + "; ".join(parts)
                              + _escape(f"); resume with the settings it was made with ({self.out / 'distill_config.json'} "
                                        f"lists them{made_with}), or choose another --out (out=)"))

    def load_checkpoint(self) -> None:
        parts, meta = load_checkpoint(self.checkpoint_path)
        self._check_resumable(meta)
        try:
            epoch = int(meta["epoch"])
            self.G.load_state_dict(parts["generator"])
            self.D.load_state_dict(parts["discriminator"])
            self.opt_g.load_state_dict(optimizer_state(parts["opt_g"]))
            self.opt_d.load_state_dict(optimizer_state(parts["opt_d"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:  # e.g. a run on other data
            raise ValueError(
                f"cannot resume {self.checkpoint_path}: it does not fit this run ({error_detail(err)}); "
                "resume with the data and settings it was made with, delete it to start over, or choose another "
                "--out (out=)"
            ) from None
        for opt in (self.opt_g, self.opt_d):  # the checkpoint may come from a run on another device
            _set_capturable(opt, self.use_cuda_graphs)
        self.epoch = epoch
        wall = meta.get("wall_seconds", 0.0)  # absent in checkpoints of older versions
        self.wall_before = float(wall) if _is_real(wall) and math.isfinite(wall) and wall >= 0 else 0.0

    def wall_seconds(self) -> float:
        """Wall-clock seconds of the run so far, over every session (resumes included)."""
        if self.session_started is None:
            return self.wall_before
        return self.wall_before + max(0.0, time.time() - self.session_started)

    def save_generator(self, folder: Path, card_text: str | None = None) -> None:
        self.G.eval()
        self.G.save_pretrained(folder)
        self.G.train()
        if card_text is not None:
            (folder / "README.md").write_text(card_text, encoding="utf-8")

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _trim_log(self) -> None:
        """Drop log records of epochs after the checkpoint (an interrupted epoch may have
        been logged before its checkpoint was written)."""
        path = self.out / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["epoch"]) <= self.epoch:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _agree(self, flag: bool) -> bool:
        """True on every rank if it is true on rank 0 (time limits must not split ranks)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        torch.distributed.broadcast(value, src=0)
        return bool(value.item())

    # -- main loop -----------------------------------------------------------------------
    def fit(self, resume: bool = False) -> Path:
        cfg = self.cfg
        _check_out_contents(self.out, resume)  # on every rank, before any rank writes into it
        if self.world > 1:
            torch.distributed.barrier()
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if (self.out / RUN_CONFIG).is_file():  # a run's folder: its files half-written when it was killed
                for folder in (self.out, self.checkpoint_path.parent, self.out / "stage1", self.out / "samples"):
                    remove_stale_temporaries(folder)
        if resume and self.checkpoint_path.is_file():
            self.load_checkpoint()
            if self.is_main:
                self._trim_log()
        elif resume and self.is_main:
            print(f"--resume: no checkpoint at {self.checkpoint_path}; starting from scratch", file=sys.stderr)
        if self.is_main:
            if self.epoch == 0:
                (self.out / "log.jsonl").unlink(missing_ok=True)
            # this session's settings (a resume may change only RESUME_MAY_CHANGE)
            atomic_write_text(self.out / RUN_CONFIG, json.dumps(cfg.to_json(), indent=2) + "\n")
        if resume and 0 < self.epoch == cfg.stage1_epochs:  # resumed exactly at the stage boundary
            self._finish_stage1()
        self.session_started = time.time()
        stage_clock = {1: None, 2: None}
        while self.epoch < self.total_epochs:
            stage = 1 if self.epoch < cfg.stage1_epochs else 2
            stage_clock[stage] = stage_clock[stage] or time.time()
            limit = cfg.stage1_minutes if stage == 1 else cfg.stage2_minutes
            if limit is not None and self._agree(time.time() - stage_clock[stage] > limit * 60):
                if stage == 1:  # stage budget spent: move on to stage 2
                    self._finish_stage1()
                    self.epoch = cfg.stage1_epochs
                    if self.is_main:
                        self.save_checkpoint()
                    continue
                break
            t0 = time.time()
            record = self.run_epoch(self.epoch)
            self.epoch += 1
            record["seconds"] = round(time.time() - t0, 3)
            if self.epoch == cfg.stage1_epochs:
                self._finish_stage1()  # before the checkpoint, so a resume never skips it
            if self.is_main:
                self._log(record)
                self.save_samples(f"epoch_{self.epoch:04d}")
                self.save_checkpoint()
                if cfg.progress:
                    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
                    print(shown, file=sys.stderr, flush=True)
        wall = self.wall_seconds()  # earlier sessions included
        if self.is_main:
            self.save_generator(self.out, card.distill_card(cfg, self.real, self.epoch, wall))
            self.save_samples("final")
            if cfg.push_to_hub:
                url = upload_folder_or_explain(self.out, cfg.push_to_hub, "Upload DiM generator (synthsets.distill)")
                print(f"pushed to {url}", file=sys.stderr)
        if self.world > 1:
            torch.distributed.barrier()
        return self.out

    def _finish_stage1(self) -> None:
        if self.is_main:
            self.save_generator(self.out / "stage1", card.distill_card(self.cfg, self.real, self.epoch, None, stage1=True))

    def close(self) -> None:
        """Release the DDP wrapper and the process group this trainer started (if any)."""
        if getattr(self, "G_train", None) is not None and self.G_train is not self.G:
            # the DDP reducer holds the process group: free it first (a gloo reducer that
            # outlives its group aborts the process at exit)
            self.G_train = self.G
            import gc

            gc.collect()
        if self._started_dist and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._started_dist = False


def distill(config: DistillConfig | None = None, resume: bool = False, real: RealData | None = None, **kwargs: Any) -> Path:
    """Run a distillation; returns the output folder (loadable with ``synthsets.DiM``).

    Pass a :class:`DistillConfig` or its fields as keyword arguments. With a ``preset``,
    the preset fills every field that is left at its default (fields given as keyword
    arguments, or set to a non-default value in ``config``, win over the preset).
    """
    if config is None:
        config = apply_preset(DistillConfig(**kwargs), explicit=list(kwargs))
    else:
        if kwargs:
            raise TypeError("pass either a DistillConfig or keyword arguments, not both")
        config = apply_preset(config, explicit=_explicit_fields(config))  # a no-op if applied already
    return _run(config, resume, real)


def _run(config: DistillConfig, resume: bool, real: RealData | None = None) -> Path:
    config.validate()
    _check_out_contents(Path(config.out), resume)  # before the data are loaded (fit checks again)
    trainer = Distiller(config, real=real)
    try:
        return trainer.fit(resume=resume)
    finally:
        trainer.close()


def apply_preset(config: DistillConfig, explicit: Sequence[str] = ()) -> DistillConfig:
    """Fill in a preset's values, keeping fields named in ``explicit`` as given.

    Returns a copy marked as applied; a config whose preset is applied already is
    returned as it is (so explicit values are never overwritten by a second call)."""
    if not config.preset or config._preset_applied == config.preset:
        return config
    if config.preset not in PRESETS:
        raise ValueError(f"unknown preset {config.preset!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[config.preset]
    values = {k: (list(v) if isinstance(v, list) else v) for k, v in preset.items() if k not in explicit}  # own lists
    return dataclasses.replace(config, **values, _preset_applied=config.preset)


def _explicit_fields(config: DistillConfig) -> list[str]:
    """Fields of ``config`` that differ from :class:`DistillConfig`'s defaults (taken as set
    by the user when the preset is applied without a list of explicit fields)."""
    defaults = DistillConfig()
    return [f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(defaults, f.name)]


# -- CLI -----------------------------------------------------------------------------------
def _preset_help() -> str:
    """``--preset`` help: every preset, with the main values it sets."""
    def shown(name: str) -> str:
        v = PRESETS[name]
        return (
            f"width {v['width']}/{v['disc_width']}, {v['stage1_epochs']}+{v['stage2_epochs']} epochs of "
            f"{v['steps_per_epoch']}/{v['stage2_steps_per_epoch']} steps, {v['inner_steps']} inner steps, "
            f"pool {' '.join(v['pool'])} at width {v['pool_width']}"
        )

    return (
        "fill every option not given on the command line from a preset: "
        "paper: the paper's settings (the defaults shown here); "
        f"cpu-small: MNIST on a 2-core CPU in well under an hour ({shown('cpu-small')}); "
        f"tiny: a seconds-long smoke run for tests and CI ({shown('tiny')}, batch {PRESETS['tiny']['batch_size']})"
    )


def build_parser() -> argparse.ArgumentParser:
    d = DistillConfig()
    p = argparse.ArgumentParser(
        prog="python -m synthsets.distill",
        description="Distil a dataset into a DiM generator (stage 1: AC-WGAN-GP; stage 2: logits matching).",
    )
    a = p.add_argument
    a("--data", required=True, help="mnist, fashion-mnist, svhn, cifar10, cifar100, or an image folder (train/, test/)")
    a("--root", help="folder holding the torchvision dataset (e.g. ROOT/MNIST/raw)")
    a("--download", action="store_true", help="let torchvision download the named dataset into --root")
    a("--out", required=True, help="output folder (generator, model card, samples, log, checkpoints): a new or "
      "empty folder, or an earlier run's folder with --resume; a folder holding other files is refused")
    a("--image-size", type=int, choices=(28, 32), help="resize images to this size")
    a("--preset", choices=sorted(PRESETS), help=_preset_help())
    a("--width", type=int, default=d.width, help="generator width (paper: 196)")
    a("--disc-width", type=int, default=d.disc_width, help="discriminator width (paper: 196)")
    a("--noise-dim", type=int, default=d.noise_dim,
      help="length of the generator's input vector z; its first (number of classes) entries carry the one-hot label "
      "(default: %(default)s)")
    a("--stage1-epochs", type=int, default=d.stage1_epochs,
      help="epochs of stage 1, the conditional AC-WGAN-GP alone; 0 skips it (default: %(default)s)")
    a("--stage2-epochs", type=int, default=d.stage2_epochs,
      help="epochs of stage 2, the GAN plus logits matching against a fresh pool model per epoch; 0 skips it "
      "(default: %(default)s)")
    a("--steps-per-epoch", type=int, help="cap generator steps per epoch (default: a pass over the data)")
    a("--stage2-steps-per-epoch", type=int,
      help="generator steps per stage-2 epoch (default: as in stage 1)")
    a("--batch-size", type=int, default=d.batch_size,
      help="real and generated images per step, and per step of the pool model (default: %(default)s)")
    a("--lr", type=float, default=d.lr, help="Adam learning rate of G and D (stage 1)")
    a("--stage2-lr", type=float, default=d.stage2_lr, help="learning rate of the generator and the discriminator in stage 2 (reference: 5e-6)")
    a("--match-weight", "--lambda", dest="match_weight", type=float, default=d.match_weight,
      help="weight lambda of the logits-matching loss L_m in the stage-2 generator loss; 0 leaves the GAN loss alone "
      "(default: %(default)s)")
    a("--pool", nargs="+", default=d.pool, help="models pool (synthsets or timm names)")
    a("--pool-width", type=int, help="width of ConvNet pool models (default 128)")
    a("--inner-steps", type=int, default=d.inner_steps, help="SGD steps of the pool model per generator step")
    a("--no-siamese", dest="siamese", action="store_false", help="per-index instead of one shared DSA draw")
    a("--stage2-dsa", choices=sorted(STAGE2_DSA), default=d.stage2_dsa,
      help="stage 2's DSA: 'full' (default: every op, to train the pool model and to match) or 'reference' "
           "(DiM's reference code: colour+crop to train the pool model, colour+crop+cutout to match)")
    a("--seed", type=int, default=d.seed,
      help="random seed of the initialisation, the batches, the noise and the pool-model draws (default: %(default)s)")
    a("--device", help="cuda, cuda:1, cpu (default: CUDA when present)")
    a("--stage1-minutes", type=float, help="stop stage 1 after this many minutes (at an epoch boundary)")
    a("--stage2-minutes", type=float, help="stop stage 2 after this many minutes (at an epoch boundary)")
    a("--samples-per-class", type=int, default=d.samples_per_class,
      help="images per class in the sample grid saved to OUT/samples/ after every epoch (default: %(default)s)")
    a("--resume", action="store_true", help="continue from OUT/checkpoints/last.safetensors")
    a("--push-to-hub", metavar="REPO_ID", help="upload the output folder to this Hub repo at the end")
    a("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
      help="run every step eagerly on CUDA (default: replay each step as a CUDA graph)")
    a("--no-progress", dest="progress", action="store_false",
      help="no progress bar and no per-epoch loss line on stderr (OUT/log.jsonl is written either way)")
    return p


def _option_names(parser: argparse.ArgumentParser) -> Callable[[str], str]:
    """Map a DistillConfig field to its command-line option(s), e.g. ``--match-weight/--lambda``."""
    options = {action.dest: "/".join(action.option_strings) for action in parser._actions if action.option_strings}
    return lambda name: options.get(name, f"DistillConfig.{name}")


def _explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations of the options actually given on the command line (abbreviations and
    ``--opt=value`` included): parse again with every default suppressed."""
    shadow = build_parser()
    for action in shadow._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(shadow.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    rank, world, _ = _distributed_env()
    reports = rank == 0 or world == 1  # under torchrun, rank 0 reports what every rank finds alike
    parser = build_parser()
    if not reports:  # torchrun: every rank parses the same command line
        parser.error = lambda message: sys.exit(2)  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    given = _explicit_flags(parser, argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DistillConfig) if hasattr(args, f.name)}
    try:
        config = apply_preset(DistillConfig(**values), explicit=given)  # checks every setting
        if resolve_device(config.device).type == "cpu":
            tune_cpu_allocator()  # a command line owns its process: keep freed memory for reuse
        out = _run(config, resume=args.resume)  # the preset is applied already (explicit flags win)
    except ConfigError as err:  # name the command-line option, not the DistillConfig field
        if reports:  # the same settings on every rank
            print(f"error: {err.render(_option_names(parser))}", file=sys.stderr)
        return 2
    except FileExistsError as err:  # the output folder, the same for every rank
        if reports:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, WeightsError, UploadError) as err:
        print(f"error{f' (rank {rank})' if rank and world > 1 else ''}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if reports:
            print(f"interrupted; add --resume to the same command to continue from the last finished epoch "
                  f"(checkpointed in {values.get('out')})", file=sys.stderr)
        return 130
    if reports:
        print(f"generator written to {out}; load it with synthsets.DiM({str(out)!r}, inpc=10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
