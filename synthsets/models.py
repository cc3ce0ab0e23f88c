"""Classifier architectures used by DiM and a small timm-like model registry.

The models are the small networks of the dataset-condensation literature that DiM
uses for its stage-2 "models pool" (ConvNet-3, ResNet-10/18 and their average-pool
variants) and for cross-architecture evaluation (VGG-11, AlexNet).

    >>> from synthsets.models import create_model, list_models, POOL
    >>> net = create_model("ConvNet-3", num_classes=10, channels=1, image_size=28)
    >>> net = create_model("resnet18_ap", num_classes=10)
    >>> net = create_model("mobilenetv3_small_050", num_classes=10)   # any timm name

Names are case-insensitive and ignore ``-`` / ``_`` ("ResNet18-AP" == "resnet18_ap").
Names not registered here are passed on to ``timm.create_model`` (never pretrained).

All models accept images of ``image_size`` pixels. ConvNet, VGG and AlexNet
zero-pad inputs smaller than 32 pixels (e.g. 28x28 MNIST) to 32x32 inside
``forward``, so their 32x32 classifier heads apply unchanged; the ResNets end in
global average pooling and take any size as is (the average-pool variants 8 pixels or
more).
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _nn_module

__all__ = [
    "POOL",
    "register_model",
    "create_model",
    "is_model",
    "list_models",
    "preferred_memory_format",
    "AvgPool2x2",
    "ReLUPoolSequential",
    "ConvNet",
    "BasicBlock",
    "ResNet",
    "VGG",
    "AlexNet",
]

#: The DiM models pool (paper Sec. 3.3): ConvNet-3, ResNet-10, ResNet-18 and the
#: average-pooling variants of the ResNets.
POOL: Tuple[str, ...] = ("convnet3", "resnet10", "resnet18", "resnet10_ap", "resnet18_ap")

_MIN_SIZE = 32  # the architectures below are designed for 32x32 inputs

# --------------------------------------------------------------------------- helpers


def _check_positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def _check_args(num_classes, channels, image_size) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    _check_positive_int(channels, "channels (1 for grayscale, 3 for RGB)")
    _check_positive_int(image_size, "image_size")


def _padded_size(image_size: int) -> int:
    return max(image_size, _MIN_SIZE)


def _pad_to_min(x: torch.Tensor, size: int = _MIN_SIZE) -> torch.Tensor:
    """Zero-pad the spatial dims of ``x`` (N, C, H, W) symmetrically up to ``size``."""
    h, w = x.shape[-2:]
    if h >= size and w >= size:
        return x
    dh, dw = max(size - h, 0), max(size - w, 0)
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


# one node in a torch.fx graph (its size test cannot be traced symbolically)
torch.fx.wrap("_pad_to_min")


def _avg_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)`` of a contiguous (N, C, H, W) tensor of even height and width,
    as sums of neighbouring rows, then columns (vectorised adds over whole rows)."""
    n, c, h, w = x.shape
    v = x.view(n, c, h // 2, 2, w)
    rows = v[:, :, :, 0] + v[:, :, :, 1]
    return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)


@functools.lru_cache(maxsize=None)
def _window_columns(half_width: int) -> torch.Tensor:
    """For each of the ``4 * half_width`` values of a window row pair (two input rows laid
    end to end), the column of the pooled row it came from: ``[0, 0, 1, 1, ..., 0, 0, 1, 1, ...]``."""
    with torch.inference_mode(False):  # an ordinary tensor, which backward may save
        return torch.arange(2 * half_width).div(2, rounding_mode="floor").repeat(2)


def _window_grad(grad: torch.Tensor) -> torch.Tensor:
    """``(N, C, H/2, W/2) -> (N, C, H, W)``: every pixel gets a quarter of its 2x2 window's
    gradient (the backward of :func:`_avg_pool2x2`).

    One ``index_select`` over rows of the pooled gradient, each of which gives the two
    input rows of its windows, laid end to end as they are in memory: 1.1-2.3x faster on
    a CPU than widening the columns and then the rows with broadcast copies, whose
    innermost loops run over 2 or ``W`` values (measured on one core, batch 64-128,
    32-128 channels, 8-32 pixels)."""
    n, c, h2, w2 = grad.shape
    rows = grad.mul(0.25).reshape(n * c * h2, w2)
    return rows.index_select(1, _window_columns(w2)).view(n, c, 2 * h2, 2 * w2)


class _AvgPool2x2Cpu(torch.autograd.Function):
    """2x2 average pooling with stride 2 of a contiguous (NCHW) CPU tensor of even height
    and width, written as sums of neighbouring rows, then columns.

    The same maths as ``F.avg_pool2d(x, 2)`` (the four terms are added in another order,
    so results can differ in the last bit; gradients are identical), 2.5-5x faster than
    torch's NCHW CPU kernels on activations of 32k elements or more. The backward is made
    of differentiable operations, so double backward works.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _avg_pool2x2(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _window_grad(grad)


#: whether torch.fx.symbolic_trace is running (its older name also covers torch.export)
_fx_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", torch.fx._symbolic_trace.is_fx_tracing)


def _capturing_graph() -> bool:
    """Whether the model is being traced (``torch.jit.trace``, ``torch.fx``), compiled or
    exported: these should see torch's own ops."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or _fx_tracing()


def _transformed() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jacrev...) or forward-mode AD is
    active: custom autograd functions without ``setup_context``/``jvp`` cannot run there."""
    from torch.autograd import forward_ad

    active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
    return bool(active()) or getattr(forward_ad, "_current_level", -1) >= 0


def _custom_autograd_applies(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether plain autograd records this call, so a custom autograd function may stand in
    for torch's op: grad mode on, something requires grad, and no tracing, compiling,
    ``torch.func`` transform, forward-mode AD or autocast (whose backward would see mixed
    dtypes)."""
    return (
        torch.is_grad_enabled()
        and not _capturing_graph()
        and not _transformed()
        and (x.requires_grad or any(p is not None and p.requires_grad for p in params))
        and not torch.is_autocast_enabled(x.device.type)
    )


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)``, faster on CPU for NCHW activations (see
    :class:`_AvgPool2x2Cpu`). On other devices, in channels_last (where torch's own CPU
    kernel is fast), for small or odd-sized inputs, and while the model is traced,
    compiled, exported or transformed (``torch.func``, forward-mode AD), it is
    ``nn.AvgPool2d`` itself."""

    MIN_ELEMENTS = 1 << 15  # below this, one kernel call beats the few small operations

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._cpu_path_applies(x):
            return _AvgPool2x2Cpu.apply(x)
        return super().forward(x)

    def _cpu_path_applies(self, x: torch.Tensor) -> bool:
        return (
            not _capturing_graph()  # first: no shape guards for a graph that will not use this path
            and x.device.type == "cpu"
            and not _transformed()
            and x.dim() == 4
            and x.shape[2] % 2 == 0
            and x.shape[3] % 2 == 0
            and x.numel() >= self.MIN_ELEMENTS
            and x.is_floating_point()
            and x.is_contiguous()  # NCHW; channels_last goes to torch's own (fast) kernel
        )


class _ReLUAvgPool2x2Cpu(torch.autograd.Function):
    """``avg_pool2d(relu_(x), 2)`` as one autograd node, for the inputs of
    :class:`_AvgPool2x2Cpu`: the ReLU in place (as ``nn.ReLU(inplace=True)``), then that
    pooling. Its backward spreads each window's gradient over the window (:func:`_window_grad`)
    and applies the ReLU's mask to that buffer in place, where the two layers' backwards
    write a second full-size buffer for the ReLU's gradient. Same numbers as the two layers;
    differentiable to any order (under ``create_graph`` the mask is applied out of place).

    The second output is ``x`` itself, now activated (in place, as the ReLU leaves it): a
    gradient that reaches it through another use (a hook that kept the tensor, a loss on
    it) joins the pooling's before the ReLU's mask.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x.relu_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)
        return _avg_pool2x2(x), x

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, grad_activated: torch.Tensor | None) -> torch.Tensor | None:  # type: ignore[override]
        if grad is None and grad_activated is None:
            return None
        (activated,) = ctx.saved_tensors
        if grad is None:
            total = grad_activated
        else:
            total = _window_grad(grad)
            if grad_activated is not None:
                total = total + grad_activated
        # ReLU's own backward, on two tensors of the same layout: a broadcast operand
        # would make its innermost loop as short as a row (0.8 ms instead of 0.02 ms at 8x8)
        if torch.is_grad_enabled() or total is grad_activated:  # differentiable, or not ours to change
            return torch.ops.aten.threshold_backward(total, activated, 0)
        return torch.ops.aten.threshold_backward.grad_input(total, activated, 0, grad_input=total)


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _has_hooks(*modules: nn.Module) -> bool:
    """Whether any of ``modules``, or every module (global hooks), has forward or backward hooks."""
    return any(getattr(_nn_module, name, None) for name in _GLOBAL_HOOKS) or any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in modules
    )


class ReLUPoolSequential(nn.Sequential):
    """``nn.Sequential`` that runs each ``nn.ReLU(inplace=True)`` directly followed by an
    :class:`AvgPool2x2` as one autograd node (:class:`_ReLUAvgPool2x2Cpu`) where the
    pooling takes its CPU path and autograd records the call. The backward then allocates
    one full-size buffer less per block: a ConvNet-3 training step on one CPU core (width
    32, batch 64) is about 1.01x faster than with the two layers, with the tuned allocator
    (:func:`synthsets.tune_cpu_allocator`), and up to 1.2x with glibc's default one. The
    layers stay in the container, so state dicts and layer swaps see them as before; a
    pair with hooks runs layer by layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        layers = list(self._modules.values())
        i = 0
        while i < len(layers):
            if i + 1 < len(layers) and self._fuses(layers[i], layers[i + 1], x):
                x = _ReLUAvgPool2x2Cpu.apply(x)[0]
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x

    @staticmethod
    def _fuses(relu: nn.Module, pool: nn.Module, x: torch.Tensor) -> bool:
        return (
            type(relu) is nn.ReLU
            and type(pool) is AvgPool2x2
            and relu.inplace
            and _custom_autograd_applies(x)  # first of the tensor checks: no shape guards while tracing
            and not x.is_leaf  # a leaf that requires grad: ReLU's in-place error, before any change
            and not x._is_view()  # autograd allows one output when a view is changed in place
            and pool._cpu_path_applies(x)
            and not _has_hooks(relu, pool)
        )


#: the offset (dh, dw) of each tap k = 3 dh' + dw' of a 3x3 kernel from its centre
_TAPS = [(k // 3 - 1, k % 3 - 1) for k in range(9)]


def _shift_sum(taps: torch.Tensor) -> torch.Tensor:
    """``(N, 9, H, W) -> (N, 1, H, W)``: ``out[q] = sum_k taps[k][q - s_k]``, each tap plane
    moved by its offset ``s_k`` (zeros enter at the border) and summed."""
    n, _, h, w = taps.shape
    out = taps[:, 4:5].clone()
    for k, (dh, dw) in enumerate(_TAPS):
        if k != 4:
            h0, h1, w0, w1 = max(dh, 0), h + min(dh, 0), max(dw, 0), w + min(dw, 0)
            out[:, :, h0:h1, w0:w1] += taps[:, k : k + 1, h0 - dh : h1 - dh, w0 - dw : w1 - dw]
    return out


def _shift_stack(y: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W) -> (N, 9, H, W)``, the adjoint of :func:`_shift_sum`: plane k is ``y``
    moved by ``-s_k``."""
    n, _, h, w = y.shape
    taps = y.new_zeros(n, 9, h, w)
    for k, (dh, dw) in enumerate(_TAPS):
        h0, h1, w0, w1 = max(-dh, 0), h - max(dh, 0), max(-dw, 0), w - max(dw, 0)
        taps[:, k, h0:h1, w0:w1] = y[:, 0, h0 + dh : h1 + dh, w0 + dw : w1 + dw]
    return taps


class _ShiftSum(torch.autograd.Function):
    """:func:`_shift_sum` under autograd; its derivative is :class:`_ShiftStack` (and back),
    so derivatives of any order work."""

    @staticmethod
    def forward(ctx, taps: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _shift_sum(taps)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _ShiftStack.apply(grad)


class _ShiftStack(torch.autograd.Function):
    """:func:`_shift_stack` under autograd (see :class:`_ShiftSum`)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _shift_stack(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _ShiftSum.apply(grad.contiguous())


def _one_output_channel_applies(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups) -> bool:
    """Whether ``conv2d(x, weight)`` is a 3x3, stride-1, padding-1 convolution from 16 or
    more channels to one, in float32/64 on a CPU (not traced, compiled or transformed),
    which :func:`_conv3x3_to_one_channel` computes faster than oneDNN, whose kernels are
    slow with a single output channel: forward and backward 1.5x faster from 16 channels,
    1.9x from 64 and 2.0x from 196 (batch 64, 28x28, one thread); slower below 16."""
    return (
        not _capturing_graph()  # first: no shape guards for a graph that will not use this path
        and not _transformed()
        and x.device.type == "cpu"
        and x.dim() == 4
        and tuple(weight.shape[:1] + weight.shape[2:]) == (1, 3, 3)
        and x.shape[1] == weight.shape[1]
        and x.shape[1] >= 16
        and tuple(stride) == (1, 1)
        and tuple(padding) == (1, 1)
        and tuple(dilation) == (1, 1)
        and groups == 1
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and not torch.is_autocast_enabled("cpu")
    )


def _conv3x3_to_one_channel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)`` for a ``(1, C, 3, 3)`` weight (the same sums in
    another order): each pixel's ``C`` channels times the 9 taps in one matrix product, then
    the 9 tap planes moved into place and summed. Differentiable to any order."""
    n, c, h, w = x.shape
    taps = weight[0].flip(1, 2).reshape(c, 9)  # tap 8 - k: its plane is then moved by -s_k
    if x.stride(1) == 1 and not x.is_contiguous():  # channels_last: (N, HW, C) rows
        planes = torch.matmul(x.permute(0, 2, 3, 1).reshape(n, h * w, c), taps).transpose(1, 2)
    else:
        planes = torch.matmul(taps.t(), x.reshape(n, c, h * w))
    out = _ShiftSum.apply(planes.reshape(n, 9, h, w))
    return out + bias.view(1, 1, 1, 1) if bias is not None else out


def _norm2d(norm: str, c: int) -> nn.Module:
    """Normalisation layer by name, as in the dataset-condensation code."""
    key = norm.lower().replace("-", "").replace("_", "")
    if key == "instancenorm":
        # "instance norm" with learnable affine parameters, one group per channel
        return nn.GroupNorm(c, c, affine=True)
    if key == "batchnorm":
        return nn.BatchNorm2d(c)
    if key in ("none", ""):
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected 'instancenorm', 'batchnorm' or 'none'")


#: Normalisations whose CPU kernels work in the standard (NCHW) layout. channels_last
#: makes a model with one of them no faster on a CPU (ConvNet-3: 1.0x, VGG-11: 0.9x).
_NCHW_NORMS = (nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm, nn.LocalResponseNorm)


def preferred_memory_format(model: nn.Module, device: torch.device | str) -> torch.memory_format:
    """The memory layout in which ``model`` runs fastest on ``device``.

    On a CPU, oneDNN's convolutions are faster in channels_last (NHWC): a training step
    of the ResNets and AlexNet is 1.1-1.4x faster, a generator forward 1.4-1.6x (measured
    on 2 cores, batch 128). Models with GroupNorm/InstanceNorm/LayerNorm stay in the
    standard layout (except for norms marked ``layout_agnostic``, such as the DiM
    discriminator's :class:`~synthsets.discriminator.SampleLayerNorm`), and so does
    everything on CUDA, where the standard layout is what the GPU figures were measured
    with. Either layout computes the same function.

        >>> model = create_model("resnet18", num_classes=10)
        >>> model = model.to(memory_format=preferred_memory_format(model, "cpu"))
    """
    device = torch.device(device)
    modules = list(model.modules())
    if device.type != "cpu" or not any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in modules):
        return torch.contiguous_format
    if any(isinstance(m, _NCHW_NORMS) and not getattr(m, "layout_agnostic", False) for m in modules):
        return torch.contiguous_format
    return torch.channels_last


# --------------------------------------------------------------------------- models


class _PaddedConvClassifier(nn.Module):
    """Shared tail of ConvNet, VGG and AlexNet: pad small inputs, ``features``, flatten, ``classifier``."""

    features: nn.Module
    classifier: nn.Linear

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features fed to the classifier."""
        return torch.flatten(self.features(_pad_to_min(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ConvNet(_PaddedConvClassifier):
    """ConvNet-D: ``depth`` blocks of Conv3x3(width) + norm + ReLU + AvgPool(2), then Linear.

    The standard model of dataset condensation (ConvNet-3 with width 128 and instance
    norm). Inputs smaller than 32 px are zero-padded to 32, so 28x28 images give the
    same 4x4 final feature map as 32x32 ones.
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        image_size: int = 32,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        _check_args(num_classes, channels, image_size)
        _check_positive_int(width, "width")
        _check_positive_int(depth, "depth")
        self.num_classes = num_classes
        self.channels = channels
        self.image_size = image_size

        size = _padded_size(image_size)
        layers: List[nn.Module] = []
        c_in = channels
        for _ in range(depth):
            if size < 2:
                raise ValueError(
                    f"ConvNet depth {depth} is too deep for image_size {image_size}"
                )
            layers += [
                nn.Conv2d(c_in, width, kernel_size=3, padding=1),
                _norm2d(norm, width),
                nn.ReLU(inplace=True),
                AvgPool2x2(),
            ]
            c_in = width
            size //= 2
        self.features = ReLUPoolSequential(*layers)
        self.feature_size = size
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + identity/projection shortcut).

    With ``avgpool=True`` a downsampling block uses stride-1 convolutions followed by
    ``AvgPool2d(2)`` instead of stride-2 convolutions, in both the main path and the
    shortcut (the "AP" ResNets of the dataset-condensation literature).
    """

    expansion = 1

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, norm: str = "batchnorm", avgpool: bool = False
    ) -> None:
        super().__init__()
        down = stride != 1
        if avgpool and down:
            self.conv1 = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=False),
                AvgPool2x2(),
            )
        else:
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm2d(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm2d(norm, c_out)

        if down or c_in != c_out:
            if avgpool and down:
                proj: List[nn.Module] = [
                    nn.Conv2d(c_in, c_out, 1, stride=1, bias=False),
                    AvgPool2x2(),
                ]
            else:
                proj = [nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)]
            self.shortcut = nn.Sequential(*proj, _norm2d(norm, c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Small CIFAR-style ResNet (ResNet-10 / ResNet-18 of the condensation literature).

    Stem Conv3x3(channels -> widths[0], stride 1) + norm + ReLU, four stages of
    ``blocks[i]`` BasicBlocks with ``widths`` (default 32, 64, 128, 256) and strides
    1, 2, 2, 2, global average pooling and a linear classifier. ``avgpool=True`` gives
    the "AP" variant, downsampling with average pooling instead of strided convs.
    Any input size works (no padding needed thanks to the global pooling).
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        image_size: int = 32,
        blocks: Tuple[int, ...] = (2, 2, 2, 2),
        widths: Tuple[int, ...] = (32, 64, 128, 256),
        norm: str = "batchnorm",
        avgpool: bool = False,
    ) -> None:
        super().__init__()
        _check_args(num_classes, channels, image_size)
        if len(blocks) != len(widths) or not blocks:
            raise ValueError("blocks and widths must be non-empty and of equal length")
        smallest = 2 ** (len(blocks) - 1)  # 2x2 average pooling halves the size at every stage after the first
        if avgpool and image_size < smallest:
            raise ValueError(
                f"the average-pool ResNet halves the image {len(blocks) - 1} times; it needs image_size >= "
                f"{smallest}, got {image_size} (the strided ResNet takes any size)"
            )
        self.num_classes = num_classes
        self.channels = channels
        self.image_size = image_size

        self.stem = nn.Sequential(
            nn.Conv2d(channels, widths[0], 3, stride=1, padding=1, bias=False),
            _norm2d(norm, widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        c_in = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            _check_positive_int(n, "blocks per stage")
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(n):
                layer.append(BasicBlock(c_in, w, stride if j == 0 else 1, norm, avgpool))
                c_in = w
            stages.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c_in
        self.classifier = nn.Linear(c_in, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features fed to the classifier."""
        x = self.layers(self.stem(x))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


_VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(_PaddedConvClassifier):
    """VGG-11 for 32x32 images: Conv3x3 + instance norm + ReLU blocks with MaxPool(2).

    Five max-pools take a 32x32 input to 1x1x512, followed by Linear(512 -> classes).
    Inputs smaller than 32 px are zero-padded to 32.
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        image_size: int = 32,
        cfg: Tuple = _VGG11_CFG,
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        _check_args(num_classes, channels, image_size)
        self.num_classes = num_classes
        self.channels = channels
        self.image_size = image_size

        size = _padded_size(image_size)
        layers: List[nn.Module] = []
        c_in = channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), _norm2d(norm, v), nn.ReLU(inplace=True)]
                c_in = v
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for this VGG")
        self.features = nn.Sequential(*layers)
        self.feature_dim = c_in * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)


class AlexNet(_PaddedConvClassifier):
    """AlexNet sized for 32x32 images (as in the dataset-condensation literature).

    Conv5(128) MaxPool, Conv5(192) MaxPool, Conv3(256), Conv3(192), Conv3(192) MaxPool,
    then Linear(192*4*4 -> classes). Inputs smaller than 32 px are zero-padded to 32.
    """

    def __init__(self, num_classes: int, channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        _check_args(num_classes, channels, image_size)
        self.num_classes = num_classes
        self.channels = channels
        self.image_size = image_size

        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, kernel_size=5, stride=1, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(128, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(192, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        size = _padded_size(image_size) // 8
        self.feature_dim = 192 * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)


# --------------------------------------------------------------------------- registry

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}  # registered name -> builder
_KEYS: Dict[str, str] = {}  # normalised key -> registered name


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``fn(num_classes, channels, image_size, **kw) -> nn.Module``.

    ``name`` is stored lower-case with ``-`` turned into ``_``; lookups ignore case
    and ``-``/``_``. Registering a new builder under a name that is taken raises
    ``ValueError``.
    """
    if not isinstance(name, str) or not _key(name):
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    canonical = name.lower().replace("-", "_")
    key = _key(name)

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(fn):
            raise TypeError(f"register_model({name!r}) must decorate a callable")
        old_name = _KEYS.get(key)
        if old_name is not None:
            old = _REGISTRY[old_name]
            same = (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) == (
                getattr(fn, "__module__", None),
                getattr(fn, "__qualname__", None),
            )
            if not same:  # re-registration of the same function (module reload) is fine
                raise ValueError(f"model name {name!r} is already registered as {old_name!r}")
            del _REGISTRY[old_name]
        _REGISTRY[canonical] = fn
        _KEYS[key] = canonical
        return fn

    return decorator


def list_models(pool_only: bool = False) -> List[str]:
    """Registered synthsets model names (sorted), or the DiM models pool in pool order."""
    if pool_only:
        return list(POOL)
    return sorted(_REGISTRY)


def create_model(
    name: str, num_classes: int, channels: int = 3, image_size: int = 32, **kwargs
) -> nn.Module:
    """Build a randomly initialised classifier by name.

    Registered synthsets models (see ``list_models()``) are built with
    ``(num_classes, channels, image_size, **kwargs)``. Any other name is handed to
    ``timm.create_model(name, pretrained=False, num_classes=num_classes,
    in_chans=channels, **kwargs)``; ``image_size`` is not passed to timm (give e.g.
    ``img_size=`` in ``kwargs`` for models that need it).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    _check_args(num_classes, channels, image_size)
    name = name.strip()
    found = _resolve(name)
    if found is None:
        raise ValueError(
            f"unknown model {name!r}; synthsets models: {list_models()}; or any timm model name (timm.list_models())"
        )
    library, resolved = found
    if library == "synthsets":
        return _REGISTRY[resolved](num_classes=num_classes, channels=channels, image_size=image_size, **kwargs)
    import timm

    return timm.create_model(resolved, pretrained=False, num_classes=num_classes, in_chans=channels, **kwargs)


def _resolve(name: str) -> tuple[str, str] | None:
    """``("synthsets", registered name)``, ``("timm", timm name)`` or ``None`` for ``name``."""
    registered = _KEYS.get(_key(name))
    if registered is not None:
        return "synthsets", registered
    import timm  # a dependency

    for candidate in dict.fromkeys((name, name.lower())):
        if timm.is_model(candidate):
            return "timm", candidate
    return None


def is_model(name: str) -> bool:
    """Whether :func:`create_model` knows ``name`` (a synthsets model or a timm name)."""
    return isinstance(name, str) and bool(name.strip()) and _resolve(name.strip()) is not None


@register_model("convnet3")
def convnet3(num_classes: int, channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """ConvNet-3 (width 128, instance norm, average pooling)."""
    kw.setdefault("depth", 3)
    return ConvNet(num_classes, channels, image_size, **kw)


@register_model("resnet10")
def resnet10(num_classes: int, channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """ResNet-10: one BasicBlock per stage, strided downsampling."""
    return ResNet(num_classes, channels, image_size, blocks=(1, 1, 1, 1), **kw)


@register_model("resnet18")
def resnet18(num_classes: int, channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """ResNet-18: two BasicBlocks per stage, strided downsampling."""
    return ResNet(num_classes, channels, image_size, blocks=(2, 2, 2, 2), **kw)


@register_model("resnet10_ap")
def resnet10_ap(num_classes: int, channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """ResNet-10-AP: downsampling by stride-1 convs + AvgPool2d(2)."""
    return ResNet(num_classes, channels, image_size, blocks=(1, 1, 1, 1), avgpool=True, **kw)


@register_model("resnet18_ap")
def resnet18_ap(num_classes: int, channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """ResNet-18-AP: downsampling by stride-1 convs + AvgPool2d(2)."""
    return ResNet(num_classes, channels, image_size, blocks=(2, 2, 2, 2), avgpool=True, **kw)


@register_model("vgg11")
def vgg11(num_classes: int, channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """VGG-11 with instance norm, for 32x32 images."""
    return VGG(num_classes, channels, image_size, **kw)


@register_model("alexnet")
def alexnet(num_classes: int, channels: int = 3, image_size: int = 32, **kw) -> nn.Module:
    """AlexNet sized for 32x32 images."""
    return AlexNet(num_classes, channels, image_size, **kw)
