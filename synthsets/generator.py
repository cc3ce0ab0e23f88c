"""The DiM conditional generator (paper Fig. 4) and its Hub-style save/load.

The generator maps a noise vector of ``noise_dim`` entries, whose first ``num_classes``
entries are overwritten with the one-hot label, to an image in ``[-1, 1]``.
A generator is stored as a folder laid out like a Hugging Face Hub model repo:
``config.json`` (a :class:`GeneratorConfig`) and ``model.safetensors`` (the weights).
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import hub
from .models import _conv3x3_to_one_channel, _custom_autograd_applies, _one_output_channel_applies

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "dim-generator"


def _is_finite_number(value: Any) -> bool:
    """A finite int or float (not a bool, a string or NaN)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a generator and to turn its output into classifier input.

    ``mean``/``std`` are the real dataset's per-channel statistics (in ``[0, 1]`` pixel
    units), used by :class:`~synthsets.SyntheticDataset` to normalise generated images.
    """

    num_classes: int = 10
    channels: int = 3
    image_size: int = 32
    noise_dim: int = 100
    width: int = 196
    dataset: str | None = None
    classes: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("num_classes", "channels", "image_size", "noise_dim", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GeneratorConfig.{name} must be a positive int, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"GeneratorConfig.num_classes must be >= 2, got {self.num_classes}")
        if self.image_size not in (28, 32):
            raise ValueError(
                f"GeneratorConfig.image_size must be 28 or 32 (the paper's sizes), got {self.image_size}; "
                "resize your data to one of them"
            )
        if self.noise_dim < self.num_classes:
            raise ValueError(
                f"noise_dim ({self.noise_dim}) must be >= num_classes ({self.num_classes}): "
                "the label is written one-hot over the first num_classes noise entries"
            )
        if self.classes is None:
            self.classes = [str(i) for i in range(self.num_classes)]
        if isinstance(self.classes, (str, bytes)) or not isinstance(self.classes, (list, tuple)):
            raise ValueError(f"GeneratorConfig.classes must be a list of class names, got {self.classes!r}")
        self.classes = [str(name) for name in self.classes]
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names given for num_classes={self.num_classes}")
        if len(set(self.classes)) != len(self.classes):
            duplicates = sorted({name for name in self.classes if self.classes.count(name) > 1})
            raise ValueError(f"GeneratorConfig.classes must be distinct, got duplicates {duplicates}")
        for name in ("mean", "std"):
            stats = getattr(self, name)
            if stats is None:
                setattr(self, name, [0.5] * self.channels)
                continue
            if not isinstance(stats, (list, tuple)) or not all(_is_finite_number(v) for v in stats):
                raise ValueError(f"GeneratorConfig.{name} must be a list of finite numbers, got {stats!r}")
            if len(stats) != self.channels:
                raise ValueError(f"GeneratorConfig.{name} needs {self.channels} values, got {stats!r}")
            setattr(self, name, [float(v) for v in stats])
        if any(s <= 0 for s in self.std):
            raise ValueError(f"GeneratorConfig.std must be positive, got {self.std}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"GeneratorConfig.extra must be a dict (JSON object), got {self.extra!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorConfig":
        """The config of a ``config.json``'s contents (unknown keys are kept in ``extra``)."""
        if not isinstance(data, dict):
            raise ValueError(f"a generator config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        model_type = data.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        extra = data.pop("extra", None) or {}
        if not isinstance(extra, dict):
            raise ValueError(f"GeneratorConfig.extra must be a dict (JSON object), got {extra!r}")
        extra = dict(extra)
        for key in unknown:  # keep unknown keys (newer versions) instead of failing
            extra[key] = data.pop(key)
        return cls(**data, extra=extra)


def _bias_added_after(layer: nn.Module, x: Tensor) -> bool:
    """Whether ``layer`` should add its bias after the convolution rather than inside it:
    on a CPU, for a batch (4-D input), when the bias is being trained and autograd records
    the call plainly (see :func:`~synthsets.models._custom_autograd_applies`). oneDNN
    computes a convolution's bias gradient slowly there (10 ms on its own for the
    generator's last transposed convolution at batch 64, 64 channels, 28x28, against 0.1 ms
    for the sum it is); added afterwards, autograd computes it as that sum. A generator's
    training step is 5-8% faster (widths 32-196)."""
    return (
        _custom_autograd_applies(x, layer.bias)  # first: no checks on traced values (x, and fx's parameters)
        and layer.bias is not None
        and layer.bias.requires_grad
        and x.device.type == "cpu"
        and x.dim() == 4
    )


class _CpuFastConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same sums) with two CPU fast paths: a 3x3, stride-1,
    padding-1 convolution from 16 or more channels to one (a grey image) is a matrix product
    and shifted sums (see :func:`~synthsets.models._one_output_channel_applies`); otherwise,
    while it trains, the bias is added after the convolution (see
    :func:`_bias_added_after`). Elsewhere, and in TorchScript, it is ``nn.Conv2d`` itself."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            out = self._cpu_fast_forward(x)
            if out is not None:
                return out
        return self._conv_forward(x, self.weight, self.bias)  # nn.Conv2d's (TorchScript has no super())

    @torch.jit.unused
    def _cpu_fast_forward(self, x: Tensor) -> Tensor | None:
        if self.padding_mode == "zeros" and _one_output_channel_applies(
            x, self.weight, self.stride, self.padding, self.dilation, self.groups
        ):
            return _conv3x3_to_one_channel(x, self.weight, self.bias)
        if _bias_added_after(self, x):
            return self._conv_forward(x, self.weight, None).add_(self.bias.view(1, -1, 1, 1))
        return None


class _CpuFastConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters) whose bias is added after the convolution
    while it trains on a CPU (see :func:`_bias_added_after`). Elsewhere, and in TorchScript,
    it is ``nn.ConvTranspose2d`` itself."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if not torch.jit.is_scripting() and output_size is None:
            out = self._cpu_fast_forward(x)
            if out is not None:
                return out
        # nn.ConvTranspose2d's own forward (TorchScript has no super())
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation  # type: ignore[arg-type]
        )
        return F.conv_transpose2d(
            x, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
        )

    @torch.jit.unused
    def _cpu_fast_forward(self, x: Tensor) -> Tensor | None:
        if self.padding_mode == "zeros" and _bias_added_after(self, x):
            out = F.conv_transpose2d(
                x, self.weight, None, self.stride, self.padding, self.output_padding, self.groups, self.dilation
            )
            return out.add_(self.bias.view(1, -1, 1, 1))
        return None


def _block(conv: nn.Module, width: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]


class Generator(nn.Module):
    """Conditional DCGAN-style generator of DiM (an AC-GAN generator, 28x28 or 32x32 output)."""

    def __init__(self, config: GeneratorConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = GeneratorConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a GeneratorConfig or keyword arguments, not both")
        elif not isinstance(config, GeneratorConfig):
            raise TypeError(
                f"config must be a GeneratorConfig, got {type(config).__name__}; pass GeneratorConfig(...), "
                "GeneratorConfig.from_dict(d) or keyword arguments (Generator(width=64, ...))"
            )
        self.config = config
        w, c = config.width, config.channels
        first_up = 4 if config.image_size == 32 else 3  # 4 -> 8 (32px) or 4 -> 7 (28px)
        self.fc = nn.Sequential(
            nn.Linear(config.noise_dim, w * 4 * 4), nn.BatchNorm1d(w * 4 * 4), nn.ReLU(inplace=True)
        )
        self.body = nn.Sequential(
            *_block(_CpuFastConvTranspose2d(w, w, first_up, 2, 1), w),
            *_block(_CpuFastConv2d(w, w, 3, 1, 1), w),
            *_block(_CpuFastConv2d(w, w, 3, 1, 1), w),
            *_block(_CpuFastConv2d(w, w, 3, 1, 1), w),
            *_block(_CpuFastConvTranspose2d(w, w, 4, 2, 1), w),
            *_block(_CpuFastConv2d(w, w, 3, 1, 1), w),
            *_block(_CpuFastConvTranspose2d(w, w, 4, 2, 1), w),
            _CpuFastConv2d(w, c, 3, 1, 1),
            nn.Tanh(),
        )

    # -- properties -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def noise_dim(self) -> int:
        return self.config.noise_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- generation -------------------------------------------------------------------
    def _labels(self, labels: Tensor | Sequence[int]) -> Tensor:
        """``labels`` as a 1-D long tensor on the model's device; a ``ValueError`` for
        anything but a 1-D sequence of integer class indices (floats are not truncated)."""
        if isinstance(labels, Tensor):
            if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
                raise ValueError(f"labels must be integer class indices, got a {labels.dtype} tensor")
            tensor = labels
        else:
            single = isinstance(labels, (int, np.integer)) and not isinstance(labels, bool)
            if single or getattr(labels, "ndim", 1) == 0:  # 3, np.int64(3), np.array(3)
                raise ValueError(f"labels must be a 1-D sequence of class indices, got the single value {labels!r}; "
                                 f"for one image pass [label]")
            if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) and not hasattr(labels, "__array__"):
                raise ValueError(
                    f"labels must be a 1-D sequence of class indices such as [0, 1, 2], got {labels!r} "
                    "(for one image: [label])"
                )
            values = list(labels)
            for value in values:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ValueError(f"labels must be integer class indices, got {value!r} in {values!r}")
            tensor = torch.as_tensor([int(v) for v in values], dtype=torch.long)
        if tensor.dim() != 1:
            raise ValueError(f"labels must be 1-D (one class index per image), got shape {tuple(tensor.shape)}")
        return tensor.to(self.device, torch.long)

    def make_noise(
        self, labels: Tensor | Sequence[int], generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """Noise vectors for ``labels`` with the one-hot label written over the first C
        entries, in the model's dtype (``noise``: given vectors to label instead of fresh ones).

        It does not check that the labels lie in ``[0, num_classes)`` (that would wait for
        the device); :meth:`generate` does."""
        labels = self._labels(labels)
        if noise is None:
            noise = torch.randn(
                labels.shape[0], self.noise_dim, device=self.device, dtype=self.fc[0].weight.dtype, generator=generator
            )
        elif noise.shape != (labels.shape[0], self.noise_dim):
            raise ValueError(
                f"noise must have shape ({labels.shape[0]}, {self.noise_dim}) for {labels.shape[0]} labels, "
                f"got {tuple(noise.shape)}"
            )
        noise = noise.to(self.device).clone()
        noise[:, : self.num_classes] = nn.functional.one_hot(labels, self.num_classes).to(noise.dtype)
        return noise

    def forward(self, z: Tensor) -> Tensor:
        """Map label-coded noise ``(N, noise_dim)`` to images ``(N, C, H, W)`` in ``[-1, 1]``."""
        if z.dim() != 2 or z.shape[1] != self.noise_dim:
            raise ValueError(f"expected noise of shape (N, {self.noise_dim}), got {tuple(z.shape)}")
        x = self.fc(z).view(z.shape[0], self.config.width, 4, 4)
        return self.body(x)

    @torch.no_grad()
    def generate(self, labels: Tensor | Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        """Images in ``[-1, 1]`` for the given labels (no augmentation, no normalisation).

        Runs without autograd (the images carry no graph) and in eval mode (BatchNorm uses,
        and keeps, its running statistics; the module's mode is restored after). To
        backpropagate through the generator (training), call it instead:
        ``generator(generator.make_noise(labels))``.
        """
        labels = self._labels(labels)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}]")
        was_training = self.training
        self.eval()
        try:
            return self(self.make_noise(labels, generator))
        finally:
            self.train(was_training)

    def _weights_hints(self, state: dict[str, Tensor]) -> list[str]:
        """Config values that the shapes in ``state`` contradict, as hints for a load error.

        E.g. ``["the weights look like width 196 but config.json says 128"]``; num_classes
        cannot be read from the weights (the label is coded in the noise).
        """
        c = self.config
        implied: dict[str, int | None] = {}
        fc = state.get("fc.0.weight")  # Linear (width * 16, noise_dim)
        if fc is not None and fc.dim() == 2:
            implied["noise_dim"] = fc.shape[1]
            implied["width"] = fc.shape[0] // 16 if fc.shape[0] % 16 == 0 else None
        bn = state.get("body.1.weight")  # the first BatchNorm2d (width,)
        if bn is not None and bn.dim() == 1:
            implied["width"] = bn.shape[0]
        first = state.get("body.0.weight")  # ConvTranspose2d (width, width, k, k): k 4 -> 32px, 3 -> 28px
        if first is not None and first.dim() == 4:
            implied["image_size"] = {4: 32, 3: 28}.get(first.shape[-1])
        last = len(self.body) - 2  # the output Conv2d (channels, width, 3, 3), before Tanh
        out = state.get(f"body.{last}.weight")
        if out is not None and out.dim() == 4:
            implied["channels"] = out.shape[0]
        return [
            f"the weights look like {name} {value} but config.json says {getattr(c, name)}"
            for name, value in implied.items()
            if value is not None and value != getattr(c, name)
        ]

    # -- persistence ------------------------------------------------------------------
    def save_pretrained(
        self, save_directory: str | Path, dtype: torch.dtype | str | None = None, *, repo_id: str | None = None
    ) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (optionally cast to a floating
        ``dtype``: ``torch.float16``, ``torch.bfloat16`` or their names) atomically.

        With ``repo_id``, also write the model card that :meth:`push_to_hub` would upload
        (``README.md``, naming that Hub repo), unless the folder has one: the folder is then
        ready for ``hf upload``. The config is checked first, so a saved folder always loads.
        """
        if not isinstance(save_directory, (str, os.PathLike)) or not str(save_directory).strip():
            raise TypeError(f"save_directory must be a folder path (str or os.PathLike), got {save_directory!r}")
        config_text = self._config_json()
        if dtype is not None:
            if isinstance(dtype, str):  # "fp16", "bfloat16", ...
                from .dataset import _DTYPES  # (dataset imports this module)

                dtype = (_DTYPES[dtype.lower()] or torch.float32) if dtype.lower() in _DTYPES else dtype
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise ValueError(
                    f"dtype must be a floating dtype such as torch.float16 or torch.bfloat16 (or 'fp16', 'bf16'), "
                    f"got {dtype!r}: other dtypes could not be loaded back"
                )
        directory = Path(save_directory).expanduser()
        blocker = hub.file_in_the_way(directory)
        if blocker is not None:
            where = f"{directory} is a file" if blocker == directory else f"{directory} lies under {blocker}, a file"
            raise FileExistsError(f"cannot save the generator: {where}; give a folder path")
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        hub.atomic_write_text(directory / CONFIG_NAME, config_text)
        hub.save_weights(state, directory / WEIGHTS_NAME, metadata={"format": "pt", "model_type": MODEL_TYPE})
        if repo_id is not None and not (directory / "README.md").exists():
            from .card import generator_card

            hub.atomic_write_text(directory / "README.md", generator_card(self.config, repo_id))
        return directory

    def _config_json(self) -> str:
        """``config.json``'s text, checked: it must load back, and describe these weights."""
        try:
            text = json.dumps(self.config.to_dict(), indent=2, allow_nan=False) + "\n"
            GeneratorConfig.from_dict(json.loads(text))
        except (TypeError, ValueError) as err:  # a non-JSON value in extra, or a field changed by hand
            raise ValueError(f"cannot save the generator: its config is invalid ({err}); fix generator.config") from None
        contradictions = self._weights_hints(self.state_dict())
        if contradictions:
            raise ValueError(
                "cannot save the generator: its config does not describe its weights ("
                + "; ".join(contradictions).replace("config.json says", "the config says")
                + "); fix generator.config"
            )
        return text

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        map_location: str | torch.device = "cpu",
    ) -> "Generator":
        """Load from a short name (``"mnist"``), a local folder or a Hub repo id, strictly.

        ``map_location`` is checked first (``"cuda"`` without CUDA is a ``ValueError``).
        """
        from .dataset import resolve_device  # (dataset imports this module)

        device = resolve_device(map_location) if map_location is not None else torch.device("cpu")
        folder = hub.resolve(
            pretrained,
            filenames=(CONFIG_NAME, WEIGHTS_NAME),
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
        )
        config_path = folder / CONFIG_NAME
        data = hub.read_json(config_path)
        try:
            absent = [name for name in _REQUIRED_IN_FILES if name not in data] if isinstance(data, dict) else []
            if isinstance(data, dict) and "num_classes" not in data and "classes" not in data:
                absent.append("num_classes (or classes)")
            if absent:
                raise ValueError(f"it has no {', '.join(absent)}: it is not a synthsets generator config, or is damaged")
            config = GeneratorConfig.from_dict(data)
        except (TypeError, ValueError) as err:  # e.g. "width": "196", or 10 names for 5 classes
            raise ValueError(f"invalid {config_path}: {err}; fix that value or re-save the generator") from None
        newer = sorted(set(data) - {f.name for f in fields(GeneratorConfig)} - {"model_type"})
        if newer:
            warnings.warn(
                f"{config_path} has settings this version of synthsets does not know ({', '.join(newer)}), "
                "perhaps from a newer version: they are ignored; upgrade synthsets if the generator needs them",
                stacklevel=hub._caller_stacklevel(),
            )
        model = cls(config)
        hub.load_weights_strict(model, folder / WEIGHTS_NAME, hints=model._weights_hints)
        model.source = str(pretrained)
        return model.to(device).eval()

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str = "Upload DiM generator",
        extra_files: Sequence[str | Path] = (),
    ) -> str:
        """Upload ``config.json``, ``model.safetensors`` and a model card (``README.md``: the
        one in ``extra_files``, else a card made from the config, naming the repo) to a Hub
        model repo, with any other ``extra_files``. Returns the commit URL.

        Raises ``ValueError`` for an invalid ``repo_id`` or ``extra_files`` (before any
        upload) and :class:`~synthsets.hub.UploadError` when the upload fails."""
        import tempfile

        from .card import generator_card

        hub.check_repo_id(repo_id)
        extras = _extra_files(extra_files)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(tmp)
            for src in extras:
                (folder / src.name).write_bytes(src.read_bytes())
            card = folder / "README.md"

            def write_card(full_repo_id: str) -> None:  # "name" alone becomes "user/name" on the Hub
                if not card.exists():
                    card.write_text(generator_card(self.config, full_repo_id), encoding="utf-8")

            return hub.upload_folder(folder, repo_id, token=token, private=private, commit_message=commit_message,
                                     before_upload=write_card)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"dataset={c.dataset!r}, classes={c.num_classes}, channels={c.channels}, "
            f"size={c.image_size}, width={c.width}, noise_dim={c.noise_dim}"
        )


#: config.json fields a saved generator must have (defaults apply to configs built in code only)
_REQUIRED_IN_FILES = ("channels", "image_size", "noise_dim", "width", "mean", "std")


def _extra_files(extra_files: str | Path | Sequence[str | Path]) -> list[Path]:
    """``push_to_hub``'s ``extra_files`` checked: existing files that replace none of the
    generator's own."""
    if isinstance(extra_files, (str, os.PathLike)):
        extra_files = [extra_files]
    paths = [Path(f).expanduser() for f in extra_files]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"extra file {path} {'is a folder' if path.is_dir() else 'does not exist'}; "
                             "extra_files takes paths of existing files")
        if path.name in (CONFIG_NAME, WEIGHTS_NAME):
            raise ValueError(f"extra file {path} would replace the generator's own {path.name}, which push_to_hub "
                             "writes from the generator itself; rename it or leave it out")
    return paths


# -- inference -------------------------------------------------------------------------------
_FOLDABLE = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def _fold_pair(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """``layer`` followed by eval-mode ``bn`` as one layer (computed in float64)."""
    scale = bn.weight.detach().double() / (bn.running_var.double() + bn.eps).sqrt()
    shift = bn.bias.detach().double() - bn.running_mean.double() * scale
    weight = layer.weight.detach().double()
    if isinstance(layer, nn.ConvTranspose2d):  # weight: (in, out / groups, kh, kw)
        if layer.groups != 1:
            raise ValueError("cannot fold BatchNorm into a grouped transposed convolution")
        weight = weight * scale.view(1, -1, 1, 1)
    else:  # Linear (out, in) and Conv2d (out, in / groups, kh, kw)
        weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    folded = copy.deepcopy(layer)
    dtype = layer.weight.dtype
    folded.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    folded.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad=False)
    return folded


def _fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    modules, out, i = list(seq), [], 0
    while i < len(modules):
        layer = modules[i]
        following = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(layer, _FOLDABLE) and isinstance(following, (nn.BatchNorm1d, nn.BatchNorm2d)):
            out.append(_fold_pair(layer, following))
            i += 2
        else:
            out.append(copy.deepcopy(layer))  # nothing shared with the original
            i += 1
    return nn.Sequential(*out)


def fold_batchnorm(generator: Generator) -> Generator:
    """An inference-only copy of ``generator`` with every BatchNorm folded into the layer
    before it, using the running statistics (eval mode).

    It makes the same images up to float rounding (1e-5 at most on the bundled
    generators) with one pass less over each activation: 1.1-1.2x faster on a CPU.
    ``SyntheticDataset`` generates with it. Its weights have other names than a
    generator's, so save the original, not the copy.
    """
    folded = copy.copy(generator)  # shares config and attributes, not the module lists
    folded._modules = dict(generator._modules)
    folded.fc = _fold_sequential(generator.fc)
    folded.body = _fold_sequential(generator.body)
    return folded.eval().requires_grad_(False)
