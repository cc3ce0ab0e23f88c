"""Evaluate generators (and real-data baselines) with DiM's deployment protocol.

The protocol (paper Sec. 4.1 and its reference validation): a fresh, randomly initialised
model is trained from scratch for ``epochs`` (1000) epochs on images drawn from the
source, with SGD (lr 0.01, momentum 0.9, weight decay 5e-4, batch 128), per-sample DSA
(colour + crop) and CutMix (beta 1), and tested on the real test set. Each epoch sees

* ``reference``: ``C * INPC // batch + 1`` batches (the reference code's
  ``10 * ipc // 128 + 1`` for ten classes and batch 128), or
* ``exact``: one pass over ``INPC * C`` images,

freshly generated every epoch for a generator, drawn from a fixed class-balanced random
subset of ``INPC`` real images per class for the ``random-real`` baseline, and drawn
fresh from the whole real training set for the ``whole`` baseline (what a perfect
generator would give under the same protocol). We report the final test accuracy, mean
+- std (population std, as in the dataset-condensation literature) over runs; the best
of the periodic test evaluations (``--test-interval``) is reported separately, labelled
"best (periodic)".

    python -m synthsets.evaluate --generator runs/mnist --inpc 1 10 50 --models convnet3 resnet18 \\
        --baselines random-real --root DATA --out eval/mnist
    torchrun --nproc_per_node 4 -m synthsets.evaluate --generator runs/c10 --data cifar10 --root DATA --out eval/c10
    python -m synthsets.evaluate merge eval/part1 eval/part2 --out eval/all

Library use::

    from synthsets.evaluate import evaluate, run_protocol, ProtocolConfig
    records = evaluate(["runs/mnist"], baselines=["random-real"], root="DATA", inpc=[10], runs=3)

Outputs (``--out``): ``results.json`` (one record per run), ``results.md`` (a Markdown
table, with the images each epoch held) and ``accuracy_vs_inpc.png``. From Python, ``evaluate(..., out=D)`` writes ``results.json`` as runs finish
(what ``resume`` reads); ``write_outputs(records, D)`` adds the table and the plot, as the
command line does at the end.

In reference mode, INPCs with ``C * INPC < batch`` all train on the same ``batch`` (128)
images per epoch: with ten classes, INPC 1 and INPC 10 of a generator (or of the ``whole``
baseline) are the same run, bit for bit on a CPU and up to GPU nondeterminism on a GPU.
Only ``random-real`` differs there, as its fixed subset holds INPC images per class.

``--resume`` continues an output folder only with the settings its runs were made with
(the protocol settings, ``--seed``, ``--generation-dtype``; ``device`` and ``--compile``
may differ), and refuses otherwise; without ``--resume``, an output folder that already
holds results is refused. Every ``--shard`` writes its results file, an empty one if the
shard had no jobs, so ``merge`` takes every shard's folder; ``merge`` refuses results made
with different settings (compared as ``--resume`` compares them). Under torchrun, rank 0
ends by writing every rank's results to ``results.json``, so a folder holding an unsharded
run's ``results.json`` is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import numbers
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .allocator import tune_cpu_allocator
from .augment import DSA, cutmix
from .data import (
    RealData,
    RealSplit,
    _torchvision_name,
    canonical_name,
    image_folder_format,
    load_real,
    torchvision_channels,
)
from .dataset import SyntheticDataset, _generation_dtype, _make_augment, _mix_seed, dtype_name, resolve_device
from .generator import Generator
from .hub import WeightsError, file_in_the_way, list_pretrained
from .models import create_model, preferred_memory_format

__all__ = [
    "BASELINES",
    "ProtocolConfig",
    "Source",
    "UNCOMPARED_SETTINGS",
    "evaluate",
    "evaluate_source",
    "fixed_batches",
    "generator_batches",
    "images_per_epoch",
    "markdown_table",
    "merge",
    "plot_accuracy",
    "random_subset",
    "read_results",
    "run_protocol",
    "sampled_batches",
    "summarize",
    "test_accuracy",
    "write_outputs",
    "main",
]

#: Real-data baselines evaluated with the same protocol.
BASELINES = ("random-real", "whole")
SCHEDULES = ("step", "cosine", "none")
EPOCH_IMAGES = ("reference", "exact")
RESULTS_FORMAT = "synthsets-evaluate"
PLOT_NAME = "accuracy_vs_inpc.png"

BatchFn = Callable[[int], Iterable[tuple[Tensor, Tensor]]]


# ----------------------------------------------------------------------------- settings
@dataclass
class ProtocolConfig:
    """Training and testing settings of the evaluation protocol (defaults: the paper's, and
    ``schedule="step"``, lr x0.1 at half the epochs, as the dataset-condensation evaluation
    code; DiM's reference code keeps the lr constant, ``schedule="none"``).

    ``augment`` is a DSA strategy string (``"color_crop"``; ``"dsa"`` means the same,
    ``"none"`` disables it) or a callable on image batches. ``test_interval`` ``None`` or
    ``0`` tests only after the last epoch. ``batch_size`` and ``epoch_images`` are used by
    the batch providers (:func:`generator_batches`...), the rest by :func:`run_protocol`.
    """

    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "step"
    augment: Any = "color_crop"
    cutmix: bool = True
    cutmix_beta: float = 1.0
    cutmix_prob: float = 1.0
    test_interval: int | None = None
    epoch_images: str = "reference"
    test_batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "test_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.epoch_images not in EPOCH_IMAGES:
            raise ValueError(f"epoch_images must be one of {', '.join(EPOCH_IMAGES)}, got {self.epoch_images!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.cutmix_prob <= 1:
            raise ValueError(f"cutmix_prob must be in [0, 1], got {self.cutmix_prob}")
        if not self.cutmix_beta > 0:
            raise ValueError(f"cutmix_beta must be > 0, got {self.cutmix_beta}")
        if self.test_interval is not None and (isinstance(self.test_interval, bool) or self.test_interval < 0):
            raise ValueError(f"test_interval must be a non-negative int or None, got {self.test_interval!r}")
        if isinstance(self.augment, str):
            _make_augment(self.augment)  # validates the strategy string early

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["augment"] = _augment_name(self.augment)
        return data


def _augment_name(augment: Any) -> str:
    module = _make_augment(augment)
    if module is None:
        return "none"
    return module.strategy if isinstance(module, DSA) else repr(module)


def _config_with(config: ProtocolConfig | None, **overrides: Any) -> ProtocolConfig:
    config = config or ProtocolConfig()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ProtocolConfig)}
    if unknown:
        raise TypeError(f"unknown protocol setting(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(config, **overrides) if overrides else config


def images_per_epoch(num_classes: int, inpc: int, batch_size: int = 128, mode: str = "reference") -> int:
    """Images one training epoch sees: ``(C*INPC // batch + 1) * batch`` (reference) or ``C*INPC`` (exact)."""
    if mode == "reference":
        return (num_classes * inpc // batch_size + 1) * batch_size
    if mode == "exact":
        return num_classes * inpc
    raise ValueError(f"epoch_images must be one of {', '.join(EPOCH_IMAGES)}, got {mode!r}")


def lr_at(config: ProtocolConfig, epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``: step (x0.1 from half-way), cosine or constant."""
    if config.schedule == "step":
        return config.lr * (0.1 if config.epochs > 1 and epoch >= config.epochs // 2 else 1.0)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    return config.lr


def _rng(device: torch.device, *parts: int) -> torch.Generator:
    rng = torch.Generator(device=device)
    rng.manual_seed(_mix_seed(*parts))
    return rng


def _split_batches(images: Tensor, labels: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    return [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(labels), batch_size)]


# ----------------------------------------------------------------------------- batch providers
def generator_batches(
    generator: Generator,
    inpc: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 128,
    epoch_images: str = "reference",
    seed: int = 0,
    device: str | torch.device | None = None,
    generation_dtype: torch.dtype | str | None = None,
) -> BatchFn:
    """``epoch -> batches`` of fresh generated images (un-augmented, normalised).

    Images come from a :class:`~synthsets.SyntheticDataset` (``augment=None``), mapped to
    ``[0, 1]`` and normalised with ``mean``/``std`` (default: the generator config's; pass
    the real data's so generated and real test images share one normalisation). Each
    epoch holds :func:`images_per_epoch` images, class-balanced up to the last partial
    draw (reference mode rounds up to whole batches, then shuffles and truncates).
    ``generation_dtype`` (``"bf16"``/``"fp16"``) generates in lower precision (see
    :class:`~synthsets.SyntheticDataset`); default float32, the protocol's.
    """
    config = generator.config
    n_images = images_per_epoch(config.num_classes, inpc, batch_size, epoch_images)
    per_class = math.ceil(n_images / config.num_classes)
    dataset = SyntheticDataset(
        generator, per_class, augment=None, seed=seed, device=device, normalize=False, distributed=False,
        generation_dtype=generation_dtype,
    )
    dev = dataset.device
    mean_t = torch.tensor(list(mean if mean is not None else config.mean), device=dev).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std if std is not None else config.std), device=dev).view(1, -1, 1, 1)

    def batches(epoch: int) -> list[tuple[Tensor, Tensor]]:
        dataset.set_epoch(epoch)
        images, labels = dataset.epoch_tensors()
        if dataset._default_prefetch():  # CPU with a free core: generate the next epoch meanwhile
            dataset.prefetch(epoch + 1)
        order = torch.randperm(len(labels), device=dev, generator=_rng(dev, seed, epoch, 11))[:n_images]
        images = (images[order] - mean_t) / std_t
        return _split_batches(images, labels[order], batch_size)

    batches.images_per_epoch = n_images  # type: ignore[attr-defined]
    return batches


def fixed_batches(
    images: Tensor,
    labels: Tensor,
    n_images: int | None = None,
    *,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> BatchFn:
    """``epoch -> batches`` over a fixed image set: shuffled passes until ``n_images`` (default: one pass)."""
    dev = resolve_device(device) if device is not None else images.device
    images, labels = images.to(dev), labels.to(dev)
    n = len(labels)
    if n == 0:
        raise ValueError("the fixed image set is empty")
    n_images = n if n_images is None else n_images

    def batches(epoch: int) -> list[tuple[Tensor, Tensor]]:
        rng = _rng(dev, seed, epoch, 12)
        order = torch.cat([torch.randperm(n, device=dev, generator=rng) for _ in range(math.ceil(n_images / n))])
        order = order[:n_images]
        return _split_batches(images[order], labels[order], batch_size)

    batches.images_per_epoch = n_images  # type: ignore[attr-defined]
    return batches


def sampled_batches(
    split: RealSplit,
    num_classes: int,
    n_images: int,
    *,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> BatchFn:
    """``epoch -> batches`` of ``n_images`` real images drawn fresh each epoch (class-balanced)."""
    dev = resolve_device(device) if device is not None else split.images.device
    images, labels = split.images.to(dev), split.labels.to(dev)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    if any(len(idx) == 0 for idx in by_class):
        raise ValueError("every class needs at least one training image")
    per_class = math.ceil(n_images / num_classes)

    def batches(epoch: int) -> list[tuple[Tensor, Tensor]]:
        rng = _rng(dev, seed, epoch, 13)
        picks = [idx[torch.randint(len(idx), (per_class,), device=dev, generator=rng)] for idx in by_class]
        chosen = torch.cat(picks)
        chosen = chosen[torch.randperm(len(chosen), device=dev, generator=rng)[:n_images]]
        return _split_batches(images[chosen], labels[chosen], batch_size)

    batches.images_per_epoch = n_images  # type: ignore[attr-defined]
    return batches


def random_subset(labels: Tensor | RealSplit | RealData, ipc: int, seed: int = 0, num_classes: int | None = None) -> Tensor:
    """Indices of a class-balanced random subset: ``ipc`` distinct images of every class.

    Deterministic given ``seed``; indices are class-major (class 0 first).
    """
    if isinstance(labels, RealData):
        num_classes = labels.num_classes if num_classes is None else num_classes
        labels = labels.train.labels
    elif isinstance(labels, RealSplit):
        labels = labels.labels
    labels = labels.cpu()
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    rng = torch.Generator().manual_seed(_mix_seed(seed, 14))
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < ipc:
            raise ValueError(f"class {c} has {len(idx)} training images, fewer than the {ipc} per class asked for")
        picks.append(idx[torch.randperm(len(idx), generator=rng)[:ipc]])
    return torch.cat(picks)


# ----------------------------------------------------------------------------- the protocol
@torch.no_grad()
def test_accuracy(model: nn.Module, test: RealSplit, batch_size: int = 1000) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``test`` (model left in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(test), batch_size):
        x = test.images[start : start + batch_size].to(device, non_blocking=True)
        y = test.labels[start : start + batch_size].to(device, non_blocking=True)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return 100.0 * correct / max(1, len(test))


def _forward_backward(
    net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, mix: tuple[Tensor, Tensor, Tensor, float] | None
) -> Tensor:
    """Loss (CutMix-weighted when ``mix`` is given) and its gradients; no optimiser step."""
    out = net(x)
    if mix is not None:
        _, y_a, y_b, lam = mix
        loss = lam * F.cross_entropy(out, y_a) + (1 - lam) * F.cross_entropy(out, y_b)
    else:
        loss = F.cross_entropy(out, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def _compile_failed(model: nn.Module, model_name: str, err: Exception) -> nn.Module:
    """Warn that ``torch.compile`` failed and return the eager model to go on with."""
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    warnings.warn(
        f"torch.compile failed for {model_name} ({type(err).__name__}: {first_line[:300]}); "
        "training without it (the results are the same, only slower)",
        RuntimeWarning,
        stacklevel=3,
    )
    return model


#: (name, classes, channels, size, kwargs) that passed :func:`_model_input_problem` in this process
_INPUT_CHECKED: set[tuple] = set()


def _model_input_problem(
    name: str, num_classes: int, channels: int, image_size: int, model_kwargs: dict[str, Any] | None = None
) -> str | None:
    """Why classifier ``name`` cannot take ``channels x image_size x image_size`` images,
    else ``None``: it is built once on the CPU and run on a batch of two blank images
    without gradients (the global random state is left as it was). A model that cannot be
    built at all (an unknown name) raises its own ``ValueError``. The answer "it can" is
    remembered for the process, so checking again costs nothing."""
    kwargs = dict(model_kwargs or {})
    key = (name, num_classes, channels, image_size, json.dumps(kwargs, sort_keys=True, default=repr))
    if key in _INPUT_CHECKED:
        return None
    shape = f"{channels}x{image_size}x{image_size}"
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the runs' random streams
        try:
            model = create_model(name, num_classes, channels, image_size, **kwargs)
        except ValueError:
            raise
        except Exception as err:
            return f"cannot be built for {shape} images ({_error_line(err)})"
        model.eval()
        try:
            with torch.no_grad():
                logits = model(torch.zeros(2, channels, image_size, image_size))
        except Exception as err:
            return f"fails on a batch of {shape} images ({_error_line(err)})"
    got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
    if got != (2, num_classes):
        return f"gives outputs of shape {got} for a batch of two {shape} images, not (2, {num_classes}) class scores"
    _INPUT_CHECKED.add(key)
    return None


def _error_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters of it)."""
    first = (str(err).strip().splitlines() or [""])[0][:300].rstrip(".")
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _check_models(models: Sequence[str], real: RealData, model_kwargs: dict[str, Any] | None) -> None:
    """Refuse (``ValueError``) evaluation models that cannot take ``real``'s images, before any training."""
    size = real.image_size
    for name in dict.fromkeys(models):
        problem = _model_input_problem(name, real.num_classes, real.channels, size, model_kwargs)
        if problem is not None:
            raise ValueError(
                f"evaluation model {name!r} cannot be used on {real.name}: it {problem}; "
                f"choose models that take {size}x{size} images (--models, models=), e.g. convnet3 or resnet18; a timm "
                f"model with a fixed input size needs images of that size (from Python, model_kwargs={{'img_size': "
                f"{size}}} rebuilds timm models that take an img_size for {size}x{size})"
            )


def run_protocol(
    train_batches: BatchFn,
    test: RealSplit,
    model_name: str,
    num_classes: int,
    channels: int,
    image_size: int,
    epochs: int | None = None,
    *,
    config: ProtocolConfig | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    desc: str | None = None,
    compile: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a fresh ``model_name`` on ``train_batches`` and test it on ``test``.

    Args:
        train_batches: ``epoch -> iterable of (images, labels)``: normalised, un-augmented
            batches (DSA and CutMix are applied here, per sample, on the device).
        test: the real test split (normalised like the training images).
        model_name: a :func:`synthsets.create_model` name (synthsets or timm).
        epochs: overrides ``config.epochs``; other settings may be overridden by keyword
            (``lr=``, ``schedule=``, ``augment=``, ``cutmix=``, ``test_interval=``...).
        seed: seeds the model's initialisation and the augmentation draws; with the same
            batches, a run is reproducible on the same device.
        compile: run the training steps through ``torch.compile`` (the same function up
            to float rounding). On a CPU, a ConvNet-3 step was 1.13x faster with
            :func:`~synthsets.tune_cpu_allocator` applied (1.7x without it), after about
            10 s of compiling; ResNet-18 did not gain. If compiling fails, the run warns
            and goes on without it.

    Returns:
        ``final_acc`` (percent, after the last epoch), ``best_acc`` / ``best_epoch`` (over
        the periodic tests, which include the last), ``history`` (``[epoch, acc]``
        pairs), ``epochs``, ``steps``, ``images_seen``, ``final_loss`` and ``seconds``.
    """
    cfg = _config_with(config, epochs=epochs, **overrides)
    dev = resolve_device(device)
    torch.manual_seed(_mix_seed(seed, 21))
    model = create_model(model_name, num_classes, channels, image_size, **(model_kwargs or {})).to(dev)
    model = model.to(memory_format=preferred_memory_format(model, dev))  # channels_last on CPU where faster
    net: nn.Module = torch.compile(model) if compile else model  # what training steps run through
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    augment = _make_augment(cfg.augment)
    rng = _rng(dev, seed, 22)
    if test.images.device != dev:
        test = test.to(dev)
    interval = cfg.test_interval or 0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, desc=desc or model_name, leave=False, mininterval=1.0)
    history: list[list[float]] = []
    steps = images_seen = 0
    loss_value = float("nan")
    started = time.perf_counter()
    try:
        for epoch in range(cfg.epochs):
            lr = lr_at(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            loss = None
            for x, y in train_batches(epoch):
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                if augment is not None:
                    x = augment(x, generator=rng) if isinstance(augment, DSA) else augment(x)
                use_cutmix = cfg.cutmix and len(y) > 1
                if use_cutmix and cfg.cutmix_prob < 1:
                    use_cutmix = float(torch.rand((), device=dev, generator=rng)) < cfg.cutmix_prob
                mix = cutmix(x, y, beta=cfg.cutmix_beta, generator=rng) if use_cutmix else None
                if mix is not None:
                    x = mix[0]
                if net is not model:  # compiled: the first step compiles, a new batch shape recompiles
                    try:
                        loss = _forward_backward(net, optimizer, x, y, mix)
                    except Exception as err:
                        net = _compile_failed(model, model_name, err)
                        loss = _forward_backward(net, optimizer, x, y, mix)
                else:
                    loss = _forward_backward(net, optimizer, x, y, mix)
                optimizer.step()
                steps += 1
                images_seen += len(y)
            if loss is not None:
                loss_value = float(loss.detach())
            last = epoch == cfg.epochs - 1
            if last or (interval and (epoch + 1) % interval == 0):
                # eagerly: an eval-mode graph would be compiled for a few test passes only
                history.append([epoch + 1, test_accuracy(model, test, cfg.test_batch_size)])
                if bar is not None:
                    bar.set_postfix(acc=f"{history[-1][1]:.2f}", loss=f"{loss_value:.3f}")
            if bar is not None:
                bar.update(1)
    finally:  # also on Ctrl-C or an error: the next line printed starts on a clean line
        if bar is not None:
            bar.close()
    best_epoch, best_acc = max(history, key=lambda item: (item[1], -item[0]))
    return {
        "final_acc": history[-1][1],
        "best_acc": best_acc,
        "best_epoch": int(best_epoch),
        "history": history,
        "epochs": cfg.epochs,
        "steps": steps,
        "images_seen": images_seen,
        "final_loss": loss_value,
        "seconds": round(time.perf_counter() - started, 3),
    }


# ----------------------------------------------------------------------------- sources
@dataclass
class Source:
    """Something to evaluate: a generator or a real-data baseline (``random-real``, ``whole``).

    ``spec`` is what the user gave (path, bundled name, Hub id); ``folder`` is set for
    local generator folders (their model card can be updated); ``dataset`` is the real
    dataset to test on (default: the generator config's).
    """

    label: str
    kind: str  # "generator" or one of BASELINES
    generator: Generator | None = None
    spec: str | None = None
    folder: Path | None = None
    dataset: str | None = None

    @classmethod
    def from_spec(cls, spec: str | Path | Generator, label: str | None = None) -> "Source":
        """A generator source from a path, bundled name or Hub id (``"LABEL=SPEC"`` sets the label)."""
        if isinstance(spec, Generator):
            origin = getattr(spec, "source", None)
            return cls(
                label=label or (Path(str(origin)).name if origin else spec.config.dataset or "generator"),
                kind="generator",
                generator=spec,
                spec=str(origin) if origin else None,
                folder=Path(origin) if origin and _is_generator_folder(Path(origin)) else None,
                dataset=spec.config.dataset,
            )
        text = str(spec)
        if label is None and "=" in text and not Path(text).exists():
            head, tail = text.split("=", 1)
            if head and "/" not in head:
                label, text = head, tail
        generator = Generator.from_pretrained(text)
        path = Path(text).expanduser()
        # a folder that holds the generator (a same-named data folder is not it: the bundled one was loaded)
        folder = path if _is_generator_folder(path) else None
        if label is None:
            label = path.resolve().name if folder is not None else text
        return cls(
            label=label, kind="generator", generator=generator, spec=str(folder.resolve()) if folder else text,
            folder=folder, dataset=generator.config.dataset,
        )

    @classmethod
    def baseline(cls, name: str, dataset: str | None = None) -> "Source":
        key = name.strip().lower().replace("_", "-")
        if key not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
        return cls(label=key, kind=key, dataset=dataset)


def _is_generator_folder(path: Path) -> bool:
    """Whether ``path`` is a saved generator (its model card may be updated)."""
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _check_compatible(source: Source, real: RealData) -> None:
    """Raise on shape/class mismatches between a generator and the real data; warn on stats."""
    if source.generator is None:
        return
    config = source.generator.config
    problems = []
    if config.num_classes != real.num_classes:
        problems.append(f"{config.num_classes} classes vs {real.num_classes}")
    if config.channels != real.channels:
        problems.append(f"{config.channels} channels vs {real.channels}")
    if config.image_size != real.image_size:
        problems.append(f"{config.image_size} px vs {real.image_size} px (pass --image-size {config.image_size})")
    if problems:
        raise ValueError(f"generator {source.label!r} does not fit the real data {real.name!r}: " + "; ".join(problems))
    if list(config.classes) != list(real.classes):
        stored = image_folder_format(real.source) if real.extra.get("image_folder") else None
        # other names and another kind of image altogether (not, say, grey digits saved as RGB)
        if stored is not None and stored[0] != config.channels and stored[1] != config.image_size:
            c, s = stored
            raise ValueError(
                f"generator {source.label!r} does not fit the image folder {real.source}: its class names "
                f"{list(real.classes)[:3]}... differ from the generator's {list(config.classes)[:3]}... and its "
                f"images are {c}x{s}x{s} where the generator makes {config.channels}x{config.image_size}x"
                f"{config.image_size}; test it on the data it was trained on ({config.dataset!r})"
            )
        warnings.warn(
            f"generator {source.label!r} class names {list(config.classes)[:4]}... differ from the real data's "
            f"{list(real.classes)[:4]}...; labels are matched by index",
            stacklevel=3,
        )
    diff = max(abs(a - b) for a, b in zip(list(config.mean) + list(config.std), list(real.mean) + list(real.std)))
    if diff > 0.01:
        warnings.warn(
            f"generator {source.label!r} normalisation (mean {config.mean}, std {config.std}) differs from the real "
            f"data's (mean {real.mean}, std {real.std}) by {diff:.3f}; generated images are normalised with the "
            "real data's mean/std, like the test set",
            stacklevel=3,
        )


def _channel_mismatch(source: Source, data: str, native: int) -> str:
    """The error for a generator source whose images have other channels than the named dataset's."""
    made = source.generator.config.channels
    name = canonical_name(data)
    bundled = [n for n in list_pretrained() if canonical_name(n) == name]
    fix = f"e.g. --generator {bundled[0]}" if bundled else f"train one with python -m synthsets.distill --data {data}"
    return (
        f"generator {source.label!r} makes {made}-channel images but {data} has {native} channel"
        f"{'s' if native != 1 else ''}; use a generator trained on {data} ({fix})"
    )


def _out_problem(out: str | Path, flag: str = "--out ") -> str | None:
    """Why ``out`` cannot be an output folder (it or a parent is a file), else ``None``."""
    path = Path(out).expanduser()
    blocker = file_in_the_way(path)
    if blocker is None:
        return None
    if blocker == path:
        return f"{flag}{out} is a file; give a folder path"
    return f"{flag}{out} lies under {blocker}, which is a file; give a folder path"


#: Record ``settings`` that do not change a run's results or legitimately differ between
#: machines: ``device``, ``compile`` (the same function up to float rounding),
#: ``test_batch_size`` (eval-mode testing is per image) and ``images_per_epoch`` (follows
#: from ``batch_size``, ``epoch_images``, the dataset and the INPC, all compared). Runs are
#: compared on everything else: resuming (:func:`evaluate`) and averaging (:func:`summarize`).
UNCOMPARED_SETTINGS = ("device", "compile", "test_batch_size", "images_per_epoch")
#: What an absent optional setting means (older records, or the protocol's default).
_SETTING_DEFAULTS: dict[str, Any] = {"generation_dtype": "float32", "model_kwargs": {}}


def _run_settings(
    cfg: ProtocolConfig,
    kind: str | None,
    gen_dtype: torch.dtype | None,
    model_kwargs: dict[str, Any] | None,
    *,
    n_images: int | None = None,
    device: torch.device | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """The ``settings`` a record of a ``kind`` run holds (``n_images``/``device`` when known)."""
    settings = cfg.to_json()
    if n_images is not None:
        settings["images_per_epoch"] = n_images
    if device is not None:
        settings["device"] = str(device)
    if compile:
        settings["compile"] = True
    if gen_dtype is not None and kind == "generator":
        settings["generation_dtype"] = dtype_name(gen_dtype)
    if model_kwargs:
        settings["model_kwargs"] = dict(model_kwargs)
    return settings


def _comparable_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The record ``settings`` two runs must share to be the same protocol (JSON-normalised,
    defaults filled in)."""
    kept = {k: v for k, v in (settings or {}).items() if k not in UNCOMPARED_SETTINGS}
    settings = {**_SETTING_DEFAULTS, **kept}
    settings = json.loads(json.dumps(settings, default=str))  # tuples -> lists, as read back from a file
    settings["test_interval"] = settings.get("test_interval") or 0  # None and 0 both mean "only at the end"
    if isinstance(settings.get("augment"), str):  # a callable's repr: compare its name, not its address
        settings["augment"] = re.sub(r" at 0x[0-9a-fA-F]+", "", settings["augment"])
    return settings


def _setting_text(name: str, value: Any) -> str:
    return f"{name}={value if isinstance(value, (str, int, float)) else json.dumps(value)}"


def _resume_mismatch(record: dict[str, Any], expected: dict[str, Any], seed: int | None) -> tuple[list[str], list[str]]:
    """The settings (``name=value`` texts: recorded, asked for) in which ``record`` differs
    from a run made now with ``expected`` settings and base ``seed`` (``None``: any); empty
    lists if none."""
    old, new = _comparable_settings(record.get("settings")), _comparable_settings(expected)
    names = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
    was = [_setting_text(k, old.get(k)) for k in names]
    now = [_setting_text(k, new.get(k)) for k in names]
    if seed is not None and "seed" in record and "run" in record and int(record["seed"]) - int(record["run"]) != seed:
        was.append(f"seed={int(record['seed']) - int(record['run'])}")
        now.append(f"seed={seed}")
    return was, now


def evaluate_source(
    source: Source | Generator | str,
    real: RealData,
    inpc: int,
    model_name: str = "convnet3",
    *,
    runs: int | Sequence[int] = 1,
    seed: int = 0,
    config: ProtocolConfig | None = None,
    device: str | torch.device | None = None,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    compile: bool = False,
    generation_dtype: torch.dtype | str | None = None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Evaluate one source at one INPC with one model; one record per run.

    ``source`` is a :class:`Source`, a :class:`~synthsets.Generator`, a baseline name
    (``"random-real"``, ``"whole"``) or a generator spec (path / bundled name / Hub id).
    ``runs`` is a count or a list of run indices; run ``r`` uses seed ``seed + r`` (for
    the model, the augmentation, the generated images and the random real subset), so
    run ``r`` of every source starts from the same model initialisation. ``compile``
    trains through ``torch.compile`` (see :func:`run_protocol`). ``generation_dtype``
    (``"bf16"``/``"fp16"``) makes a generator source generate in lower precision, which
    is faster on a CPU but not the protocol's float32: records note it in ``settings``.
    """
    gen_dtype = _generation_dtype(generation_dtype)
    if not isinstance(source, Source):
        source = Source.baseline(source) if isinstance(source, str) and source.strip().lower() in BASELINES else Source.from_spec(source)
    if real.test is None:
        raise ValueError(f"real data {real.name!r} has no test split (an image folder needs a test/ sub-folder)")
    _check_compatible(source, real)
    _check_models([model_name], real, model_kwargs)
    cfg = _config_with(config, **overrides)
    dev = resolve_device(device)
    run_ids = list(range(runs)) if isinstance(runs, int) else list(runs)
    test = real.test.to(dev)
    n_images = images_per_epoch(real.num_classes, inpc, cfg.batch_size, cfg.epoch_images)
    records = []
    for run in run_ids:
        run_seed = seed + run
        batch_seed = _mix_seed(run_seed, 31)
        if source.kind == "generator":
            batches = generator_batches(
                source.generator, inpc, mean=real.mean, std=real.std, batch_size=cfg.batch_size,
                epoch_images=cfg.epoch_images, seed=batch_seed, device=dev, generation_dtype=gen_dtype,
            )
        elif source.kind == "random-real":
            idx = random_subset(real.train.labels, inpc, seed=run_seed, num_classes=real.num_classes)
            batches = fixed_batches(
                real.train.images[idx], real.train.labels[idx], n_images,
                batch_size=cfg.batch_size, seed=batch_seed, device=dev,
            )
        elif source.kind == "whole":
            batches = sampled_batches(real.train, real.num_classes, n_images, batch_size=cfg.batch_size, seed=batch_seed, device=dev)
        else:
            raise ValueError(f"unknown source kind {source.kind!r}")
        result = run_protocol(
            batches, test, model_name, real.num_classes, real.channels, real.image_size,
            config=cfg, seed=run_seed, device=dev, model_kwargs=model_kwargs, progress=progress,
            desc=f"{source.label} inpc {inpc} {model_name} run {run}", compile=compile,
        )
        settings = _run_settings(cfg, source.kind, gen_dtype, model_kwargs, n_images=n_images, device=dev, compile=compile)
        record = {
            "source": source.label,
            "kind": source.kind,
            "spec": source.spec,
            "dataset": real.name,
            "inpc": inpc,
            "model": model_name,
            "run": run,
            "seed": run_seed,
            **{k: result[k] for k in ("final_acc", "best_acc", "best_epoch", "epochs", "seconds", "steps", "images_seen", "final_loss", "history")},
            "num_test": len(real.test),
            "settings": settings,
        }
        records.append(record)
    return records


# ----------------------------------------------------------------------------- jobs, sharding
def _distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 otherwise)."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError:
        return 0, 1, 0


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"i/n"`` (0-based i) -> ``(i, n)``; ``None`` -> torchrun's ``(RANK, WORLD_SIZE)`` or ``(0, 1)``."""
    if text is None:
        rank, world, _ = _distributed_env()
        return rank, world
    if isinstance(text, tuple):
        i, n = text
    else:
        try:
            i_text, n_text = str(text).split("/")
            i, n = int(i_text), int(n_text)
        except ValueError:
            raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {i}/{n}")
    return i, n


def _job_key(record: dict[str, Any]) -> tuple:
    return (record["dataset"], record["source"], int(record["inpc"]), record["model"], int(record["run"]))


#: what a run measured (a copy that differs only in timing, device or paths is the same run)
OUTCOME_FIELDS = ("final_acc", "best_acc", "best_epoch", "history", "final_loss", "epochs", "steps", "images_seen")


def _outcome(record: dict[str, Any]) -> tuple:
    return tuple(json.dumps(record.get(k)) for k in OUTCOME_FIELDS)


def _results_path(out: Path, shard: tuple[int, int]) -> Path:
    return out / ("results.json" if shard[1] == 1 else f"results.rank{shard[0]}.json")


def _rank_files(out: Path) -> list[Path]:
    """``out``'s ``results.rank*.json`` files, in rank order (rank 10 after rank 9)."""
    return sorted(out.glob("results.rank*.json"), key=lambda p: (len(p.name), p.name))


def _files_with_results(out: Path) -> list[Path]:
    """The results files in ``out`` (``results.json``, ``results.rank*.json``) holding runs."""
    return [f for f in (out / "results.json", *_rank_files(out)) if f.is_file() and read_results([f])]


def _write_json(path: Path, records: list[dict[str, Any]]) -> None:
    from .hub import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": RESULTS_FORMAT, "version": 1, "runs": records}
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def _check_resumable(
    records: Sequence[dict[str, Any]],
    path: Path,
    cfg: ProtocolConfig,
    gen_dtype: torch.dtype | None,
    model_kwargs: dict[str, Any] | None,
    seed: int,
) -> None:
    """Refuse to resume ``path`` when a run in it used other settings than this evaluation
    (see :data:`UNCOMPARED_SETTINGS` for those that may differ, and the base seed)."""
    for record in records:
        expected = _run_settings(cfg, record.get("kind", "generator"), gen_dtype, model_kwargs)
        was, now = _resume_mismatch(record, expected, seed)
        if was:
            raise ValueError(
                f"{path} holds runs made with {', '.join(was)}; this run asks for {', '.join(now)}: "
                "use another --out (out=), or drop --resume (resume=False) to start over"
            )


def evaluate(
    generators: Sequence[str | Path | Generator | Source] = (),
    *,
    baselines: Sequence[str] = (),
    data: str | Path | None = None,
    root: str | Path | None = None,
    real: RealData | None = None,
    image_size: int | None = None,
    download: bool = False,
    inpc: Sequence[int] = (10,),
    models: Sequence[str] = ("convnet3",),
    runs: int = 5,
    seed: int = 0,
    config: ProtocolConfig | None = None,
    device: str | torch.device | None = None,
    model_kwargs: dict[str, Any] | None = None,
    shard: str | tuple[int, int] | None = (0, 1),
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    compile: bool = False,
    generation_dtype: torch.dtype | str | None = None,
    on_start: Callable[[], None] | None = None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Evaluate generators and baselines over INPC values, models and runs (the CLI's engine).

    The real data is ``real`` if given, else loaded with :func:`synthsets.data.load_real`
    from ``data`` (default: each generator's config ``dataset``) and ``root``, resized to
    the generators' size unless ``image_size`` is given. Jobs (source x INPC x model x run)
    are split by ``shard`` (``(i, n)`` or ``"i/n"``; ``None``: torchrun's rank/world size).
    With ``out``, this shard's records are written to ``out/results.json`` (or
    ``results.rank{i}.json`` when sharded) after every job, and a shard with no jobs writes
    an empty results file. ``resume`` skips jobs already there, provided they were made with
    the same settings (the protocol settings, ``generation_dtype``, ``model_kwargs`` and
    ``seed``; not those in :data:`UNCOMPARED_SETTINGS`, such as ``device``): a run made with
    other settings raises ``ValueError`` before anything runs, rather than being mixed in.
    Without ``resume``, a results file there that holds runs raises ``FileExistsError``.
    The Markdown table and the plot come from :func:`write_outputs`.
    Returns this shard's records (including resumed ones). ``compile`` trains
    through ``torch.compile`` (see :func:`run_protocol`); ``generation_dtype`` is passed
    to :func:`evaluate_source`.

    Everything is checked before the first run trains: the settings, the output folder,
    the real data (loaded first) and every model, built once and run on a dummy batch of
    the data's image size (a model that cannot take it raises ``ValueError``). ``on_start``
    is then called once, before the first run (the command line prints its notices there).
    """
    cfg = _config_with(config, **overrides)
    _generation_dtype(generation_dtype)  # a bad value fails before any data is loaded
    # one name, path, generator or INPC stands for a list of one (a str is not split up)
    generators = [generators] if isinstance(generators, (str, Path, Generator, Source)) else list(generators)
    baselines = [baselines] if isinstance(baselines, str) else list(baselines)
    models = [models] if isinstance(models, str) else list(models)
    inpc = [inpc] if isinstance(inpc, numbers.Integral) else list(inpc)
    sources = [g if isinstance(g, Source) else Source.from_spec(g) for g in generators]
    labels = [s.label for s in sources]
    for i, s in enumerate(sources):  # unique labels
        if labels.count(s.label) > 1:
            s.label = f"{s.label}#{labels[: i + 1].count(s.label)}"
    if not sources and not baselines:
        raise ValueError("nothing to evaluate: give generators and/or baselines")
    if not inpc or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0 for v in inpc):
        raise ValueError(f"inpc values must be positive ints, got {inpc}")
    inpcs = [int(v) for v in inpc]
    if isinstance(runs, bool) or not isinstance(runs, int) or runs <= 0:
        raise ValueError(f"runs must be a positive int, got {runs!r}")

    # which real dataset each source is tested on
    real_cache: dict[str, RealData] = {}

    def dataset_key(source: Source) -> str:
        if real is not None:
            return real.name
        key = str(data) if data is not None else source.dataset
        if key is None:
            raise ValueError(f"generator {source.label!r} does not name its dataset in config.json: pass data= (--data)")
        if data is None and _torchvision_name(key, root) is None and not Path(key).expanduser().is_dir():
            raise ValueError(
                f"generator {source.label!r} was distilled from {key!r}, which is neither a torchvision dataset name nor "
                f"a folder here (an image folder's config.json keeps only its name): pass --data (data=) with the "
                "path of that image folder"
            )
        return key

    groups: dict[str, list[Source]] = {}
    for s in sources:
        groups.setdefault(dataset_key(s), []).append(s)
    if baselines:
        keys = list(groups) or ([real.name] if real is not None else ([str(data)] if data is not None else []))
        if not keys:
            raise ValueError("baselines need the real data: pass data= (--data) or a generator")
        for key in keys:
            groups.setdefault(key, []).extend(Source.baseline(b, key) for b in baselines)
    if real is None:  # a generator that cannot fit a named dataset fails before any data is read
        for key, group in groups.items():
            native = torchvision_channels(key, root)
            for s in group:
                if native is not None and s.generator is not None and s.generator.config.channels != native:
                    raise ValueError(_channel_mismatch(s, key, native))
    if out is not None and _out_problem(out) is not None:
        raise ValueError(_out_problem(out, "out="))

    def get_real(key: str) -> RealData:
        if real is not None:
            return real
        if key not in real_cache:
            gens = [s.generator.config for s in groups[key] if s.generator is not None]
            sizes = {c.image_size for c in gens}
            if image_size is None and len(sizes) > 1:
                raise ValueError(f"generators for {key!r} make images of different sizes {sorted(sizes)}; evaluate them separately")
            size = image_size if image_size is not None else (sizes.pop() if sizes else None)
            channels = {c.channels for c in gens}
            real_cache[key] = load_real(
                key, root, image_size=size, download=download, with_test=True,
                channels=channels.pop() if len(channels) == 1 else None, progress=progress,
            )
        return real_cache[key]

    # run-major order: a job list cut short (time limit, interruption) still covers every
    # setting once before repeating any
    jobs = [
        (key, s, v, m, r)
        for r in range(runs)
        for key, group in groups.items()
        for v in inpcs
        for m in models
        for s in group
    ]
    shard_i, shard_n = parse_shard(shard)
    mine = jobs[shard_i::shard_n]
    out_path = Path(out) if out is not None else None
    records: list[dict[str, Any]] = []
    done: set[tuple] = set()
    if out_path is not None:
        existing = _results_path(out_path, (shard_i, shard_n))
        held = read_results([existing]) if existing.is_file() else []
        if resume:
            rank_runs = {f: read_results([f]) for f in _rank_files(out_path)} if shard_n == 1 else {}
            merged = {_job_key(r) for r in held}
            if any(_job_key(r) not in merged for runs in rank_runs.values() for r in runs):
                names = ", ".join(f.name for f, runs in rank_runs.items() if runs)
                raise FileExistsError(
                    f"{out_path} holds the per-rank results of a sharded or torchrun evaluation ({names}); resume "
                    f"it with the same number of processes (shards), or merge them first: python -m "
                    f"synthsets.evaluate merge {out_path} --out MERGED, then --resume with --out MERGED"
                )
            records = held
            _check_resumable(records, existing, cfg, _generation_dtype(generation_dtype), model_kwargs, seed)
            done = {_job_key(r) for r in records}
        elif held:  # an empty results file (a shard with no jobs) loses nothing when replaced
            raise FileExistsError(
                f"{out_path} already holds results ({existing}); pass --resume (resume=True) to continue them, "
                "or choose another --out (out=)"
            )

    # load this shard's real data and try on it each model any shard trains on it (so that
    # shards of one command refuse alike), before anything trains
    for key in dict.fromkeys(job[0] for job in mine):
        _check_models([job[3] for job in jobs if job[0] == key], get_real(key), model_kwargs)
    if on_start is not None:
        on_start()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="evaluate" + (f" shard {shard_i}/{shard_n}" if shard_n > 1 else ""), unit="run")
    try:
        for key, s, v, m, r in mine:
            real_data = get_real(key)
            if (real_data.name, s.label, v, m, r) in done:
                if bar is not None:
                    bar.update(1)
                continue
            new = evaluate_source(
                s, real_data, v, m, runs=[r], seed=seed, config=cfg, device=device,
                model_kwargs=model_kwargs, progress=progress, compile=compile, generation_dtype=generation_dtype,
            )
            records.extend(new)
            if out_path is not None:
                _write_json(_results_path(out_path, (shard_i, shard_n)), records)
            if bar is not None:
                bar.set_postfix_str(f"{s.label} inpc {v} {m}: {new[-1]['final_acc']:.2f}%")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if out_path is not None and not mine:  # a shard with no jobs: a valid (empty) file, so merging every shard works
        _write_json(_results_path(out_path, (shard_i, shard_n)), records)
    return records


# ----------------------------------------------------------------------------- results
def read_results(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Records from results JSON files or folders (a folder: its ``results.rank*.json`` if any,
    else its ``results.json``). Duplicate runs (same dataset, source, INPC, model, run) keep
    the last one read."""
    merged: dict[tuple, dict[str, Any]] = {}
    for _, record in _results_runs(paths):
        merged[_job_key(record)] = record
    return list(merged.values())


def _results_runs(paths: Iterable[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """``(file, record)`` for every run in the results files or folders, as :func:`read_results` finds them."""
    if isinstance(paths, (str, os.PathLike)):  # one folder or file, not a sequence of letters
        paths = [paths]
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            ranks = _rank_files(path)
            if ranks:
                files.extend(ranks)
            elif (path / "results.json").is_file():
                files.append(path / "results.json")
            else:
                raise FileNotFoundError(f"{path} holds no results.json or results.rank*.json")
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such results file or folder: {path}")
    found = []
    for file in files:
        try:
            payload = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} is not valid JSON ({err})") from None
        runs = payload.get("runs") if isinstance(payload, dict) else payload
        if not isinstance(runs, list):
            raise ValueError(f"{file} is not a synthsets.evaluate results file (no 'runs' list)")
        for i, record in enumerate(runs):
            problem = _record_problem(record)
            if problem is not None:
                raise ValueError(f"{file} is not a synthsets.evaluate results file (run {i} {problem})")
        found.extend((file, record) for record in runs)
    return found


#: the fields every run of a results file has (what merging, resuming and the table read)
RECORD_FIELDS = ("dataset", "source", "inpc", "model", "run", "final_acc", "best_acc")


def _record_problem(record: Any) -> str | None:
    """Why ``record`` is not one run of a results file (the words after "run i"), else ``None``."""
    shown = json.dumps(record, default=repr)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if not isinstance(record, dict):
        return f"is {shown}, not a record of one run"
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        return f"has no {', '.join(repr(k) for k in missing)}: {shown}"
    for k in RECORD_FIELDS:
        value = record[k]
        if k in ("dataset", "source", "model"):
            if not isinstance(value, str):
                return f"has {k} {json.dumps(value, default=repr)[:40]}, not a str"
        elif not isinstance(value, numbers.Real) or isinstance(value, bool):
            return f"has {k} {json.dumps(value, default=repr)[:40]}, not a number"
    return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, source, INPC, model): mean/std of final and best accuracy.

    Rows keep the order in which datasets, sources and models first appear, INPC ascending.
    ``periodic`` is true when some run was tested more than once.
    """
    order: dict[str, dict[Any, int]] = {"dataset": {}, "source": {}, "model": {}}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        for name, seen in order.items():
            seen.setdefault(record[name], len(seen))
        groups.setdefault((record["dataset"], record["source"], int(record["inpc"]), record["model"]), []).append(record)
    rows = []
    for (dataset, source, inpc, model), group in groups.items():
        settings = [_comparable_settings(r.get("settings")) for r in group]
        if any(s != settings[0] for s in settings[1:]):
            warnings.warn(f"runs of {source} / {dataset} / INPC {inpc} / {model} used different settings", stacklevel=2)
        final_mean, final_std = _mean_std([float(r["final_acc"]) for r in group])
        best_mean, best_std = _mean_std([float(r["best_acc"]) for r in group])
        rows.append({
            "dataset": dataset, "source": source, "kind": group[0].get("kind"), "inpc": inpc, "model": model,
            "final_mean": final_mean, "final_std": final_std, "best_mean": best_mean, "best_std": best_std,
            "runs": len(group), "periodic": any(len(r.get("history") or []) > 1 for r in group),
            "epochs": group[0].get("epochs"), "settings": group[0].get("settings", {}),
        })
    rows.sort(key=lambda r: (order["dataset"][r["dataset"]], order["source"][r["source"]], r["inpc"], order["model"][r["model"]]))
    return rows


def _fmt(mean: float, std: float, runs: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if runs > 1 else f"{mean:.2f}"


def _epoch_images_text(settings: dict[str, Any]) -> str:
    """How many images an epoch holds, in words (for the protocol line)."""
    batch = settings.get("batch_size")
    if settings.get("epoch_images") == "reference":
        return (
            f"(C·INPC // {batch} + 1) × {batch} images per epoch as in the reference code (at least {batch}, so "
            f"INPCs with C·INPC < {batch} train on the same number of images: for a generator or the whole "
            "baseline the same images, so the same run up to GPU nondeterminism; see the images/epoch column)"
        )
    if settings.get("epoch_images") == "exact":
        return "C·INPC images per epoch"
    return f"{settings.get('epoch_images')} images per epoch"


def _protocol_line(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    s = rows[0]["settings"] or {}
    parts = [f"{rows[0]['epochs']} epochs"]
    if s:
        aug = s.get("augment", "none")
        parts.append(
            f"SGD lr {s.get('lr')} momentum {s.get('momentum')} wd {s.get('weight_decay')} ({s.get('schedule')} schedule), "
            f"batch {s.get('batch_size')}, {_epoch_images_text(s)}"
        )
        parts.append(f"DSA {aug}" if aug != "none" else "no DSA")
        if s.get("cutmix"):
            parts.append(f"CutMix (beta {s.get('cutmix_beta')}, p {s.get('cutmix_prob')})")
    dtypes = sorted({r["settings"]["generation_dtype"] for r in rows if (r["settings"] or {}).get("generation_dtype")})
    if dtypes:
        parts.append(f"images generated in {' / '.join(dtypes)}, not float32")
    return (
        "Test accuracy (%) on the real test set after the last epoch, mean ± std over runs "
        f"(protocol: {', '.join(parts)})."
    )


def markdown_table(records: Sequence[dict[str, Any]], *, header: bool = True) -> str:
    """A Markdown table: one row per dataset x source x INPC x model.

    Columns: images per training epoch (see :func:`images_per_epoch`), final accuracy
    (mean ± std), best of the periodic test evaluations (only when runs were tested
    periodically, else "—") and the number of runs.
    """
    rows = summarize(records)
    lines = []
    if header and rows:
        lines += [_protocol_line(rows), ""]
    lines += [
        "| dataset | source | INPC | model | images/epoch | accuracy (%) | best (periodic) | runs |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        best = _fmt(r["best_mean"], r["best_std"], r["runs"]) if r["periodic"] else "—"
        n_images = (r["settings"] or {}).get("images_per_epoch", "—")
        lines.append(
            f"| {r['dataset']} | {r['source']} | {r['inpc']} | {r['model']} | {n_images} | "
            f"{_fmt(r['final_mean'], r['final_std'], r['runs'])} | {best} | {r['runs']} |"
        )
    return "\n".join(lines) + "\n"


def _inpc_axis_label(rows: Sequence[dict[str, Any]]) -> str:
    """The plot's x label: in reference mode it gives the epoch size, which is not C*INPC."""
    settings = (rows[0]["settings"] or {}) if rows else {}
    if settings.get("epoch_images") == "reference":
        batch = settings.get("batch_size")
        return f"INPC (epochs of (C·INPC // {batch} + 1) × {batch} images)"
    return "images per class per epoch (INPC)"


def plot_accuracy(records: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Accuracy vs INPC (one panel per dataset x model, one line per source); ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: skipping the accuracy-vs-INPC plot (pip install matplotlib)", stacklevel=2)
        return None
    rows = summarize(records)
    panels = list(dict.fromkeys((r["dataset"], r["model"]) for r in rows))
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.6 * nrows), squeeze=False)
    for ax, (dataset, model) in zip(axes.flat, panels):
        panel = [r for r in rows if r["dataset"] == dataset and r["model"] == model]
        for source in dict.fromkeys(r["source"] for r in panel):
            line = sorted((r for r in panel if r["source"] == source), key=lambda r: r["inpc"])
            style = "--" if line[0]["kind"] in BASELINES else "-"
            ax.errorbar(
                [r["inpc"] for r in line], [r["final_mean"] for r in line], yerr=[r["final_std"] for r in line],
                linestyle=style, marker="o", capsize=3, label=source,
            )
        inpcs = sorted({r["inpc"] for r in panel})
        if len(inpcs) > 1 and inpcs[0] > 0:
            ax.set_xscale("log")
        ax.set_xticks(inpcs)
        ax.set_xticklabels([str(v) for v in inpcs])
        ax.minorticks_off()
        ax.set_title(f"{dataset} / {model}")
        ax.set_xlabel(_inpc_axis_label(panel))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(records: Sequence[dict[str, Any]], out: str | Path) -> dict[str, Path | None]:
    """Write ``results.json``, ``results.md`` and ``accuracy_vs_inpc.png`` into ``out``."""
    from .hub import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = list(records)
    _write_json(out / "results.json", records)
    atomic_write_text(out / "results.md", "# synthsets.evaluate results\n\n" + markdown_table(records))
    return {"json": out / "results.json", "markdown": out / "results.md", "plot": plot_accuracy(records, out / PLOT_NAME)}


def _merge_mismatch(record: dict[str, Any], other: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The settings (``name=value`` texts: ``record``'s, ``other``'s) in which two runs differ,
    compared as :func:`evaluate` compares them on resuming (``generation_dtype`` only between
    generator runs: a baseline generates nothing)."""
    expected = dict(other.get("settings") or {})
    if record.get("kind") != "generator" or other.get("kind") != "generator":
        record = {**record, "settings": {k: v for k, v in (record.get("settings") or {}).items() if k != "generation_dtype"}}
        expected.pop("generation_dtype", None)
    seed = int(other["seed"]) - int(other["run"]) if "seed" in other and "run" in other else None
    return _resume_mismatch(record, expected, seed)


def merge(paths: str | Path | Sequence[str | Path], out: str | Path | None = None) -> list[dict[str, Any]]:
    """Merge results files/folders (e.g. one per shard or rank) and write the outputs to ``out``
    (default: the first folder given).

    Refuses (``ValueError``, before writing anything) runs made with other settings than the
    first run read (compared as ``resume`` compares them) and a run (same dataset, source,
    INPC, model, run) found twice with different results; a run read twice unchanged is kept once.
    """
    firsts: dict[bool, tuple[Path, dict[str, Any]]] = {}  # the first generator and baseline runs read
    merged: dict[tuple, tuple[Path, dict[str, Any]]] = {}
    for file, record in _results_runs(paths):
        for first_file, first in firsts.values():
            was, now = _merge_mismatch(record, first)
            if was:
                raise ValueError(
                    f"{file} holds runs made with {', '.join(was)}; {first_file} holds runs made with "
                    f"{', '.join(now)}: results made with different settings cannot be merged into one table"
                )
        firsts.setdefault(record.get("kind") == "generator", (file, record))
        key = _job_key(record)
        if key in merged and _outcome(merged[key][1]) != _outcome(record):
            raise ValueError(
                f"{merged[key][0]} and {file} both hold run {record['run']} of {record['source']} / {record['dataset']} / "
                f"INPC {record['inpc']} / {record['model']}, with different results: merge only one of them"
            )
        merged.setdefault(key, (file, record))
    records = [record for _, record in merged.values()]
    if out is None:
        folders = [Path(p) for p in paths if Path(p).is_dir()]
        if not folders:
            raise ValueError("merge: pass out= (--out) when merging files rather than folders")
        out = folders[0]
    write_outputs(records, out)
    return records


def update_cards(records: Sequence[dict[str, Any]], sources: Sequence[Source] | None = None) -> list[Path]:
    """Write each local generator's rows (and the baselines on its dataset) into its README.md.

    ``sources`` default: the generators named by the records whose ``spec`` is a local folder.
    """
    from .card import update_results

    if sources is None:
        found: dict[str, Path | None] = {}
        for r in records:
            if r.get("kind") == "generator":
                spec = Path(r["spec"]) if r.get("spec") else None
                found.setdefault(r["source"], spec if spec is not None and _is_generator_folder(spec) else None)
        skipped = [label for label, folder in found.items() if folder is None]
        if skipped:
            warnings.warn(f"--update-card: {', '.join(map(repr, skipped))} not updated: not a local generator folder "
                          "(bundled and Hub generators are read-only)", stacklevel=2)
        sources = [Source(label=label, kind="generator", folder=folder) for label, folder in found.items()]
    written = []
    for source in sources:
        if source.kind != "generator" or source.folder is None:
            continue
        mine = [r for r in records if r["source"] == source.label]
        datasets = {r["dataset"] for r in mine}
        rows = mine + [r for r in records if r.get("kind") in BASELINES and r["dataset"] in datasets]
        if not rows:
            continue
        text = markdown_table(rows) + "\nMeasured with `python -m synthsets.evaluate`.\n"
        update_results(source.folder / "README.md", text)
        written.append(source.folder / "README.md")
    return written


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = ProtocolConfig()
    prog = "python -m synthsets.evaluate"
    p = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=(
            f"{prog} --generator SPEC... [--baselines NAME...] [options]\n"
            f"       {prog} --baselines NAME... --data DATA [options]\n"
            f"       {prog} merge RESULTS... [--out OUT] [--update-card]"
        ),
        description=(
            "Evaluate DiM generators with the paper's deployment protocol: train fresh models on images\n"
            "drawn from each generator (and from real-data baselines) and test them on the real test set."
        ),
        epilog=(
            "merging results:\n"
            f"  {prog} merge RESULTS... [--out OUT] [--update-card]\n"
            "      combines results folders or JSON files (e.g. one per --shard or torchrun rank) into one\n"
            "      results.json, results.md and accuracy_vs_inpc.png in OUT (default: the first folder);\n"
            f"      see: {prog} merge --help\n"
            f"  {prog} --merge RESULTS... --out OUT\n"
            "      does the same."
        ),
    )
    a = p.add_argument
    a("--generator", "--generators", dest="generators", nargs="+", default=[], metavar="SPEC",
      help="generator folders, bundled names or Hub ids (LABEL=SPEC sets the row label)")
    a("--baselines", nargs="+", default=[], choices=BASELINES,
      help="real-data baselines under the same protocol: random-real (a fixed random subset of INPC "
           "images per class), whole (fresh draws from the whole training set: the upper bound)")
    a("--data", help="real dataset: mnist, fashion-mnist, svhn, cifar10, cifar100 or an image folder with train/ "
      "and test/ (default: the generator's dataset)")
    a("--root", help="folder holding the torchvision dataset")
    a("--download", action="store_true", help="let torchvision download the named dataset into --root")
    a("--image-size", type=int, help="resize the real images (default: the generator's size)")
    a("--inpc", nargs="+", type=int, default=[1, 10, 50],
      help="images per class per epoch (default: 1 10 50). In reference mode (--epoch-images) an epoch holds "
      "(C*INPC//batch + 1)*batch images, at least one batch, so small INPCs share that 128-image floor (batch "
      "128): with 10 classes INPC 1 and INPC 10 both train on the same 128 images per epoch, so they are the same "
      "run (up to GPU nondeterminism) for a generator and for the whole baseline (random-real differs: its fixed "
      "subset holds INPC images per class); --epoch-images exact uses C*INPC. The results table lists the images "
      "per epoch of every row")
    a("--models", nargs="+", default=["convnet3"], help="evaluation models: convnet3, resnet10, resnet18(_ap), vgg11, "
      "alexnet or any timm name (default: convnet3)")
    a("--runs", type=int, default=5, help="independent runs per row (default 5)")
    a("--seed", type=int, default=0, help="run r uses seed SEED + r (default 0)")
    a("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    a("--epoch-images", choices=EPOCH_IMAGES, default=d.epoch_images,
      help="images per epoch: reference = (C*INPC//batch + 1) batches as in the paper's reference code "
      "(default); exact = C*INPC")
    a("--lr", type=float, default=d.lr, help=f"SGD learning rate (default {d.lr}, the paper's)")
    a("--momentum", type=float, default=d.momentum, help=f"SGD momentum (default {d.momentum}, the paper's)")
    a("--weight-decay", type=float, default=d.weight_decay, help=f"SGD weight decay (default {d.weight_decay}, the paper's)")
    a("--batch-size", type=int, default=d.batch_size, help=f"training batch size (default {d.batch_size}, the paper's)")
    a("--schedule", choices=SCHEDULES, default=d.schedule, help="step: lr x0.1 at half the epochs (default, as the dataset-condensation evaluation code); "
      "none: constant, as DiM's reference code; cosine")
    a("--augment", default=d.augment, help="DSA strategy applied per sample (default color_crop; none disables)")
    a("--cutmix", dest="cutmix", action="store_true", default=d.cutmix,
      help="CutMix after DSA, as in the paper (the default: this flag is kept for compatibility; --no-cutmix turns it off)")
    a("--no-cutmix", dest="cutmix", action="store_false", help="train without CutMix")
    a("--cutmix-beta", type=float, default=d.cutmix_beta, help=f"CutMix Beta(beta, beta) parameter (default {d.cutmix_beta})")
    a("--cutmix-prob", type=float, default=d.cutmix_prob, help=f"probability of CutMix per batch (default {d.cutmix_prob})")
    a("--test-interval", type=int, default=0, help="also test every N epochs (best periodic accuracy reported "
      "separately); default 0: test only after the last epoch")
    a("--device", help="cuda, cuda:1, cpu (default: CUDA when present; under torchrun cuda:LOCAL_RANK)")
    a("--compile", action="store_true", help="train through torch.compile: the same results, a little faster on "
      "long runs (ConvNet-3 on a CPU: 1.13x per step after ~10 s of compiling); falls back with a warning if it fails")
    a("--generation-dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
      help="generate in this precision (default fp32, the protocol's); bf16 generates about 1.8x faster on a "
      "CPU with bf16 instructions (a CPU without them, or fp16 on most CPUs, is far slower: it warns), and the "
      "results note it")
    a("--out", help="output folder for results.json, results.md and accuracy_vs_inpc.png (without it nothing is "
      "saved); a folder already holding results needs --resume")
    a("--resume", action="store_true", help="skip runs already in OUT's results file; they must have been made with "
      "the same settings (protocol, --seed, --generation-dtype; --device and --compile may differ), else it stops "
      "with an error naming the settings that differ")
    a("--shard", help="run only slice i of n of the job list (0-based i/n; default under torchrun: RANK/WORLD_SIZE); "
      "each shard writes OUT/results.rank{i}.json (empty if it had no jobs): merge every shard's OUT")
    a("--merge", nargs="+", metavar="RESULTS", help="merge results files/folders into --out instead of evaluating "
      "(the same as the merge subcommand, see below)")
    a("--update-card", action="store_true", help="write the results table into each local generator folder's README.md "
      "(not a bundled generator or Hub id: save it to a folder first)")
    a("--no-progress", dest="progress", action="store_false",
      help="no progress bars (runs, training epochs and reading the real data)")
    return p


def _error(problem: object, quiet: bool = False) -> None:
    """Print ``error: problem`` (unless ``quiet``: a torchrun rank other than 0, whose rank 0 says the same)."""
    if not quiet:
        print(f"error: {problem}", file=sys.stderr)


def _merge_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m synthsets.evaluate merge", description="Merge results into one table.")
    p.add_argument("paths", nargs="+", metavar="RESULTS", help="results folders or JSON files")
    p.add_argument("--out", help="output folder (default: the first folder given)")
    p.add_argument("--update-card", action="store_true", help="write the table into local generator folders' README.md")
    args = p.parse_args(argv)
    return _do_merge(args.paths, args.out, args.update_card)


def _do_merge(paths: Sequence[str], out: str | None, update_card: bool = False) -> int:
    problem = _out_problem(out) if out is not None else None
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        records = merge(paths, out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if update_card:
        for card in update_cards(records):
            print(f"updated {card}", file=sys.stderr)
    print(markdown_table(records))
    return 0


def _unsharded_results_problem(out: Path) -> str | None:
    """Why a torchrun evaluation may not write into ``out``: its rank 0 ends by writing the
    ranks' merged results to ``out/results.json``, which would replace the results of an
    unsharded run held there (a ``results.json`` with no ``results.rank*.json`` beside it)."""
    merged = out / "results.json"
    if not merged.is_file() or _rank_files(out):
        return None
    try:
        held = read_results([merged])
    except ValueError:  # not a results file: the run's own checks report it
        return None
    if not held:
        return None
    return (
        f"{out} holds the results of an unsharded run ({merged}: {len(held)} run{'s' * (len(held) != 1)}), which this torchrun "
        f"evaluation would replace with its ranks' results; choose another --out, and combine both afterwards "
        f"with: python -m synthsets.evaluate merge {out} NEW_OUT --out COMBINED"
    )


def _shard_folders(out: Path, shard: tuple[int, int]) -> list[str]:
    """The --out folders to merge, as far as this shard can tell: ``out`` alone when it holds
    every shard's file; ``ev0 ev1...`` when ``out`` ends in ``i`` (``ev1``, ``ev01``) and a
    sibling folder of that pattern exists; else ``out`` in this shard's place and
    ``OUT_SHARD{j}`` elsewhere."""
    i, n = shard
    if all(_results_path(out, (j, n)).is_file() for j in range(n)):
        return [str(out)]
    digits = re.search(r"\d*$", out.name).group()
    for k in range(len(digits), 0, -1):  # the trailing digits that spell i: "ev1", "ev01", "run_7_1"
        index = digits[-k:]
        if int(index) != i:
            continue
        stem, width = out.name[: len(out.name) - k], len(index) if index.startswith("0") else 1
        siblings = [out.with_name(stem + str(j).zfill(width)) for j in range(n)]
        if any(folder.is_dir() for j, folder in enumerate(siblings) if j != i):
            return [str(folder) for folder in siblings]
    return [str(out) if j == i else f"OUT_SHARD{j}" for j in range(n)]


def _merge_hint(out: Path | None, shard: tuple[int, int]) -> str:
    """What a finished shard prints: how to merge every shard's results."""
    i, n = shard
    if out is None:
        return f"shard {i}/{n} done; nothing was saved to merge (no --out): give every shard --out to combine them"
    folders = _shard_folders(out, shard)
    if len(folders) > 8:
        folders = [*folders[:2], "...", folders[-1]]
    command = f"python -m synthsets.evaluate merge {' '.join(folders)}"
    if len(folders) == 1:
        return f"shard {i}/{n} done; all {n} shards' results are in {out}; combine them with: {command}"
    return (
        f"shard {i}/{n} done (this shard's --out: {out}); combine the shards by passing every shard's --out "
        f"folder (a folder the shards share, once): {command}"
    )


def _init_distributed(world: int) -> bool:
    """Join torchrun's process group (gloo, for the final barrier only)."""
    if world <= 1 or not torch.distributed.is_available() or torch.distributed.is_initialized():
        return False
    if "MASTER_ADDR" not in os.environ:
        return False
    try:
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    except Exception as err:  # pragma: no cover - depends on the launcher
        warnings.warn(f"could not join the torchrun process group ({err}); merge the rank files afterwards")
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "merge":
        return _merge_main(argv[1:])
    env_rank, env_world, _ = _distributed_env()
    parser = build_parser()
    if env_world > 1 and env_rank != 0:  # torchrun: every rank parses the same command line; rank 0 reports
        parser.error = lambda message: sys.exit(2)  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    # torchrun (not a --shard command of its own): rank 0 reports what every rank finds alike
    quiet = args.shard is None and env_world > 1 and env_rank != 0
    if args.merge:
        return _do_merge(args.merge, args.out, args.update_card)
    if not args.generators and not args.baselines:
        _error("give --generator SPEC... and/or --baselines random-real whole", quiet)
        return 2
    problem = _out_problem(args.out) if args.out else None
    if problem is not None:
        _error(problem, quiet)
        return 2
    try:
        shard = parse_shard(args.shard)
        config = ProtocolConfig(
            epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
            batch_size=args.batch_size, schedule=args.schedule, augment=args.augment, cutmix=args.cutmix,
            cutmix_beta=args.cutmix_beta, cutmix_prob=args.cutmix_prob, test_interval=args.test_interval or None,
            epoch_images=args.epoch_images,
        )
        device = args.device
        rank, world, local_rank = _distributed_env()
        torchrun = args.shard is None and world > 1
        if device is None and torch.cuda.is_available():
            device = f"cuda:{local_rank}" if torchrun else "cuda"
        if resolve_device(device).type == "cpu":
            tune_cpu_allocator()  # a command line owns its process: keep freed memory for reuse
        sources = [Source.from_spec(spec) for spec in args.generators]
        read_only = [s.spec for s in sources if s.folder is None]
        if args.update_card and read_only:
            raise ValueError(
                f"--update-card writes the results into each generator folder's README.md, but {read_only[0]!r} is not "
                "a folder: bundled generators (and Hub downloads) are read-only; save it to a folder first "
                f"(Generator.from_pretrained({read_only[0]!r}).save_pretrained(FOLDER)) and pass --generator FOLDER"
            )
    except (ValueError, FileNotFoundError, WeightsError) as err:  # WeightsError: corrupt or mismatched files
        _error(err, quiet)  # settings and sources: the same on every rank
        return 2
    out = Path(args.out) if args.out else None
    if torchrun and out is not None:
        problem = _unsharded_results_problem(out)
        try:
            held = [] if args.resume else _files_with_results(out)
        except ValueError as err:  # a results file that is not one
            _error(err, quiet)
            return 2
        if problem is None and held:  # any rank's results: all ranks refuse alike, before any of them writes
            problem = (f"{out} already holds results ({', '.join(f.name for f in held)}); pass --resume to continue "
                       "them, or choose another --out")
        if problem is not None:  # every rank reads the same folder, so every rank stops here
            _error(problem, quiet)
            return 2
    joined = _init_distributed(world) if torchrun else False

    def notices() -> None:  # once everything is checked, before the first run trains
        if out is None and rank == 0:
            print("no --out: the results will not be saved, only printed at the end; pass --out DIR to save them "
                  "(and to allow --resume)", file=sys.stderr)

    try:
        records = evaluate(
            sources, baselines=args.baselines, data=args.data, root=args.root, image_size=args.image_size,
            download=args.download, inpc=args.inpc, models=args.models, runs=args.runs, seed=args.seed,
            config=config, device=device, shard=shard, out=out, resume=args.resume, progress=args.progress,
            compile=args.compile, generation_dtype=args.generation_dtype, on_start=notices,
        )
    except FileExistsError as err:  # the output folder: the same for every rank
        _error(err, quiet)
        return 2
    except (FileNotFoundError, ValueError, WeightsError) as err:  # may be this rank's own (its data, its models)
        print(f"error{f' (rank {rank})' if torchrun and rank else ''}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            how = (f"the finished runs are saved in {out}: add --resume to the same command to continue"
                   if out is not None else "nothing was saved (no --out)")
            print(f"interrupted; {how}", file=sys.stderr)
        return 130
    if shard[1] > 1:
        if joined:
            torch.distributed.barrier()  # every rank has written its results.rank{r}.json
        if joined and shard[0] == 0 and out is not None:
            records = read_results([_results_path(out, (r, shard[1])) for r in range(shard[1])])  # all ranks
        else:
            if not joined or shard[0] == 0:
                print(_merge_hint(out, shard), file=sys.stderr)
                if out is None:
                    print(markdown_table(records))
            if joined:
                torch.distributed.destroy_process_group()
            return 0
    if out is not None:
        paths = write_outputs(records, out)
        if args.update_card:
            for card in update_cards(records, sources):
                print(f"updated {card}", file=sys.stderr)
        shown = ", ".join(str(v) for v in paths.values() if v is not None)
        print(f"wrote {shown}", file=sys.stderr)
    elif args.update_card:
        for card in update_cards(records, sources):
            print(f"updated {card}", file=sys.stderr)
    if joined:
        torch.distributed.destroy_process_group()
    print(markdown_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
