"""The AC-WGAN-GP discriminator used to train DiM generators (stage 1 and stage 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cuda_graphs import in_graphed_step
from .models import _capturing_graph, _conv3x3_to_one_channel, _custom_autograd_applies, _one_output_channel_applies

STRIDES = (1, 2, 1, 2, 1, 1, 1, 2)

#: whether the custom second-derivative layers also run eagerly on a GPU (outside CUDA
#: graphs). Off: there each call's Python overhead outweighs the GPU work it saves (an
#: H200, paper sizes: a stage-1 step without graphs took 41.9-43.7 ms with them and
#: 29.7-32.9 ms without), while a graph replays their kernels alone (in stage 1 1.11x and
#: 1.05x faster than torch's convolution and layer norm). The benchmarks switch it on to
#: measure them eagerly.
CUSTOM_SECOND_ORDER_IN_CUDA_EAGER = False

#: whether the running backward pass will execute an autograd node (None: a torch without
#: it, where custom functions compute every gradient their inputs require)
_will_execute = getattr(torch._C, "_will_engine_execute_node", None)


def _second_order_pays(x: Tensor) -> bool:
    """Whether the discriminator's custom second-derivative layers are worth their Python
    cost for ``x``: always on a CPU; on a GPU only in a step that is replayed as a CUDA
    graph (a :class:`~synthsets.cuda_graphs.GraphedStep`'s warm-up calls and capture, or
    any other capture), unless :data:`CUSTOM_SECOND_ORDER_IN_CUDA_EAGER` is set."""
    return (
        x.device.type == "cpu"
        or CUSTOM_SECOND_ORDER_IN_CUDA_EAGER
        or in_graphed_step()
        or (x.device.type == "cuda" and torch.cuda.is_current_stream_capturing())
    )


def _tensor_positions(*args: object) -> tuple[int, ...]:
    """The positions of the tensor arguments of a custom function's ``forward`` (autograd
    lists its ``next_functions`` for those alone)."""
    return tuple(i for i, arg in enumerate(args) if isinstance(arg, Tensor))


def _gradients_wanted(ctx) -> list[bool]:
    """Which inputs of a custom autograd function the running backward pass needs
    gradients for: those that require grad and whose gradients the pass will use. The
    gradient penalty's ``autograd.grad(score, images)`` uses no weight's gradient, and a
    ``backward(inputs=parameters)`` no gradient of a leaf input such as the penalty's
    interpolated images: torch's own convolutions skip those, and so do the custom ones.
    An input ``autograd.grad`` was asked for gets its gradient. ``ctx.tensor_args`` holds
    :func:`_tensor_positions` of the forward's arguments."""
    wanted = list(ctx.needs_input_grad)
    if _will_execute is None:
        return wanted
    for position, (node, _) in zip(ctx.tensor_args, ctx.next_functions):
        if wanted[position] and node is not None:
            try:
                wanted[position] = bool(_will_execute(node))
            except RuntimeError:  # an input that autograd.grad was asked for (a leaf)
                pass
    return wanted


def _conv_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, stride: list[int], padding: list[int], mask: list[bool], has_bias: bool = False
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """torch's own ``(input, weight, bias)`` gradients of ``conv2d(x, weight)`` that
    received ``grad_out``, the ones ``mask`` asks for. The input gradient of a convolution
    from one channel (a grey image's first layer) is a convolution to one channel, which
    :func:`~synthsets.models._conv3x3_to_one_channel` computes faster on a CPU."""
    input_grad = None
    if mask[0] and x.shape[1] == 1:
        flipped = weight.transpose(0, 1).flip(2, 3)  # conv_transpose2d(g, w) == conv2d(g, flipped), stride 1
        if _one_output_channel_applies(grad_out, flipped, stride, padding, (1, 1), 1):
            input_grad = _conv3x3_to_one_channel(grad_out, flipped, None)  # differentiable: any order
            mask = [False, mask[1], mask[2]]
    if not any(mask):
        return input_grad, None, None
    bias_sizes = [weight.shape[0]] if has_bias else None
    grads = torch.ops.aten.convolution_backward(grad_out, x, weight, bias_sizes, stride, padding, [1, 1], False, [0, 0], 1, mask)
    return (input_grad if input_grad is not None else grads[0]), grads[1], grads[2]


class _ConvGradients(torch.autograd.Function):
    """The gradients ``(input, weight, bias)`` of ``conv2d(x, weight, bias)`` for an output
    gradient, itself differentiable with the usual convolution kernels.

    torch differentiates its own convolution backward (as a gradient penalty does) with a
    formula that computes the weight's gradient as a convolution of the batch-transposed
    tensors, whose kernel is as large as the feature map: slow on CPU and GPU alike. Here
    the three second-order terms are an ordinary convolution and the two ordinary
    convolution gradients:

    * gradient of ``grad_out``: ``conv(gg_input, weight) + conv(x, gg_weight) + gg_bias``;
    * gradient of ``weight``: the weight gradient of a convolution of ``gg_input`` that
      received ``grad_out``;
    * gradient of ``x``: the input gradient of a convolution with weight ``gg_weight``.
    """

    @staticmethod
    def forward(ctx, grad_out: Tensor, x: Tensor, weight: Tensor, has_bias: bool,  # type: ignore[override]
                stride: list[int], padding: list[int], mask: list[bool]):
        ctx.save_for_backward(grad_out, x, weight)
        ctx.set_materialize_grads(False)  # unused outputs stay None: no work on zeros
        ctx.conv = (stride, padding)
        ctx.tensor_args = _tensor_positions(grad_out, x, weight)
        return _conv_backward(grad_out, x, weight, stride, padding, mask, has_bias)

    @staticmethod
    def backward(ctx, gg_input: Tensor | None, gg_weight: Tensor | None, gg_bias: Tensor | None):  # type: ignore[override]
        grad_out, x, weight = ctx.saved_tensors
        stride, padding = ctx.conv
        need_grad_out, need_x, need_weight = _gradients_wanted(ctx)[:3]
        d_grad_out = d_x = d_weight = None
        if need_grad_out:
            terms = []
            if gg_input is not None:
                terms.append(F.conv2d(gg_input, weight, None, stride, padding))
            if gg_weight is not None:
                terms.append(F.conv2d(x, gg_weight, None, stride, padding))
            if gg_bias is not None:
                terms.append(gg_bias.view(1, -1, 1, 1).expand_as(grad_out))
            for term in terms:
                d_grad_out = term if d_grad_out is None else d_grad_out + term
        if need_weight and gg_input is not None:
            d_weight = _conv_backward(grad_out, gg_input, weight, stride, padding, [False, True, False])[1]
        if need_x and gg_weight is not None:
            d_x = _conv_backward(grad_out, x, gg_weight, stride, padding, [True, False, False])[0]
        return d_grad_out, d_x, d_weight, None, None, None, None


class _PenaltyConv(torch.autograd.Function):
    """``conv2d`` whose backward is :class:`_ConvGradients` (so its double backward is fast)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None,  # type: ignore[override]
                stride: list[int], padding: list[int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, bias is not None)
        ctx.tensor_args = _tensor_positions(x, weight, bias)
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.conv
        mask = _gradients_wanted(ctx)[:3]  # the penalty's own pass: the input's only
        return (*_ConvGradients.apply(grad_out, x, weight, has_bias, stride, padding, mask), None, None)


class PenaltyConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters) with a faster second derivative, for gradient
    penalties: see :class:`_ConvGradients`. Same results up to float rounding. It applies
    when autograd records the call, for ``groups=1``, no dilation and zero padding given
    as numbers, outside autocast, and on a GPU only in a step replayed as a CUDA graph (see
    :func:`_second_order_pays`); otherwise, and while the model is traced, compiled,
    exported or transformed (``torch.func``, forward-mode AD), it is ``nn.Conv2d`` itself."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            not _capturing_graph()  # first: no shape checks on a traced value
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and tuple(self.dilation) == (1, 1)
            and x.dim() == 4
            and _custom_autograd_applies(x, self.weight)
            and _second_order_pays(x)
        ):
            return _PenaltyConv.apply(x, self.weight, self.bias, list(self.stride), list(self.padding))
        return super().forward(x)


def _flat(t: Tensor | None) -> Tensor | None:
    return t.reshape(-1) if t is not None else None


def _row_dots(a: Tensor, b: Tensor) -> Tensor:
    """The dot product of each row of two ``(N, M)`` tensors, as ``(N, 1)``."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


def _rows_scaled(v: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``v * scale + shift`` with per-row ``(N, 1)`` ``scale`` and ``shift``. On a GPU one
    fused ``addcmul``; on a CPU a multiply and an in-place add, 3x faster there than
    ``addcmul``, whose CPU kernel is slow when its first operand is broadcast along rows."""
    if v.device.type == "cpu":
        return v.mul(scale).add_(shift)
    return torch.addcmul(shift, v, scale)


def _layer_norm_second_order(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor,
    gg_x: Tensor | None, gg_weight: Tensor | None, gg_bias: Tensor | None, needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients ``(grad_out, x, weight)`` of ``<gg_x, dx> + <gg_weight, dw> + <gg_bias, db>``,
    where ``(dx, dw, db)`` are the gradients of a layer norm over the rows of ``x`` (``N, M``)
    that received ``grad_out``; ``needs`` says which of the three to compute.

    With ``r = rstd``, ``xh = (x - mean) r``, ``g = grad_out * weight`` and, per row,
    ``P(v) = v - mean(v) - xh mean(v xh)`` (a symmetric projection): ``dx = r P(g)``,
    ``dw = sum_rows grad_out xh``, ``db = sum_rows grad_out``. So the gradient reaching ``g``
    is ``r P(gg_x)``, and the one reaching ``x`` is the layer norm's own backward applied to
    what reaches ``xh``, plus the path through ``r`` itself. Each is a few fused passes
    over the rows (``addcmul``) with per-row scalars, where torch's generic formula takes
    about twice as many."""
    need_grad_out, need_x, need_weight = needs
    m = x.shape[1]
    d_grad_out = d_x = d_weight = None
    xh = _rows_scaled(x, rstd, -mean * rstd)
    g = grad_out * weight if weight is not None else grad_out
    if gg_x is not None:
        s_u, s_uxh = gg_x.sum(1, keepdim=True), _row_dots(gg_x, xh)
        if need_grad_out or need_weight:
            d_g = _rows_scaled(gg_x, rstd, -rstd * s_u / m).addcmul_(xh, -rstd * s_uxh / m)  # r P(gg_x)
            if need_grad_out:
                d_grad_out = d_g * weight if weight is not None else d_g
            if need_weight and weight is not None:
                d_weight = torch.linalg.vecdot(d_g, grad_out, dim=0)
        if need_x:
            mean_g, mean_gxh = g.mean(1, keepdim=True), _row_dots(g, xh) / m
            through_r = _row_dots(gg_x, g) - mean_g * s_u - mean_gxh * s_uxh  # <gg_x, P(g)>
            # what reaches xh: alpha gg_x + beta g, with its row means
            alpha, beta = -rstd * mean_gxh, -rstd * s_uxh / m
            mean_h = alpha * s_u / m + beta * mean_g
            mean_hxh = alpha * s_uxh / m + beta * mean_gxh
            d_x = (
                _rows_scaled(gg_x, rstd * alpha, -rstd * mean_h)
                .addcmul_(g, rstd * beta)
                .addcmul_(xh, -rstd * mean_hxh - rstd * rstd * through_r / m)
            )
    if gg_weight is not None:
        if need_grad_out:
            term = xh * gg_weight
            d_grad_out = term if d_grad_out is None else d_grad_out.add_(term)
        if need_x:  # the layer norm backward of grad_out * gg_weight, which reaches xh
            h = grad_out * gg_weight
            term = _rows_scaled(h, rstd, -rstd * h.mean(1, keepdim=True)).addcmul_(xh, -rstd * _row_dots(h, xh) / m)
            d_x = term if d_x is None else d_x.add_(term)
    if gg_bias is not None and need_grad_out:
        d_grad_out = gg_bias.expand_as(grad_out).clone() if d_grad_out is None else d_grad_out.add_(gg_bias)
    return d_grad_out, d_x, d_weight


class _LayerNormGradients(torch.autograd.Function):
    """The gradients ``(x, weight, bias)`` of a layer norm over the rows of ``x`` for an
    output gradient (torch's fused kernel), differentiable with
    :func:`_layer_norm_second_order` (to any order: under ``create_graph`` the row
    statistics are recomputed from ``x`` so that they are differentiated too)."""

    @staticmethod
    def forward(ctx, grad_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor,  # type: ignore[override]
                eps: float, has_bias: bool, mask: list[bool]):
        ctx.save_for_backward(grad_out, x, weight, mean, rstd)
        ctx.set_materialize_grads(False)  # unused outputs stay None: no work on zeros
        ctx.eps = eps
        ctx.tensor_args = _tensor_positions(grad_out, x, weight, mean, rstd)
        d_x, d_weight, _ = torch.ops.aten.native_layer_norm_backward(
            grad_out, x, [x.shape[1]], mean, rstd, weight, None, [mask[0], mask[1] and weight is not None, False]
        )
        return d_x, d_weight, grad_out.sum(0) if mask[2] and has_bias else None

    @staticmethod
    def backward(ctx, gg_x: Tensor | None, gg_weight: Tensor | None, gg_bias: Tensor | None):  # type: ignore[override]
        grad_out, x, weight, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # a higher derivative follows: statistics as functions of x
            mean = x.mean(1, keepdim=True)
            rstd = torch.rsqrt(x.var(1, correction=0, keepdim=True) + ctx.eps)
        grads = _layer_norm_second_order(
            grad_out, x, weight, mean, rstd, gg_x, gg_weight, gg_bias, tuple(_gradients_wanted(ctx)[:3])
        )
        return (*grads, None, None, None, None, None)


class _RowLayerNorm(torch.autograd.Function):
    """``layer_norm`` over the rows of an ``(N, M)`` tensor whose backward is
    :class:`_LayerNormGradients` (so its double backward is fast)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:  # type: ignore[override]
        out, mean, rstd = torch.native_layer_norm(x, [x.shape[1]], weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps, ctx.has_bias = eps, bias is not None
        ctx.tensor_args = _tensor_positions(x, weight, bias)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, weight, mean, rstd = ctx.saved_tensors
        mask = _gradients_wanted(ctx)[:3]  # the penalty's own pass: the input's only
        return (*_LayerNormGradients.apply(grad_out, x, weight, mean, rstd, ctx.eps, ctx.has_bias, mask), None)


class SampleLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm([C, H, W])``: each sample normalised over all its values, with an
    elementwise affine map. Two differences from ``nn.LayerNorm``, same results:

    * it takes channels_last input as it is, without copying it to the standard layout:
      the mean and variance of a sample do not depend on the order of its values, so it
      normalises the (N, H, W, C) view with the affine parameters permuted to match, and
      returns a channels_last result;
    * its second derivative (a gradient penalty's) takes about half the passes over
      memory of torch's generic one (see :func:`_layer_norm_second_order`). That path
      applies to float32/float64 under autograd, outside autocast, when the norm covers
      all of a sample, and on a GPU only in a step replayed as a CUDA graph; otherwise, and
      while the model is traced, compiled, exported or transformed (``torch.func``,
      forward-mode AD), it is torch's own layer norm.
    """

    layout_agnostic = True  # synthsets.preferred_memory_format may pick channels_last

    def forward(self, x: Tensor) -> Tensor:
        if _capturing_graph():  # torch's own layer norm for a traced, compiled or exported model
            return super().forward(x)
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        shape, weight, bias = tuple(self.normalized_shape), self.weight, self.bias
        if channels_last and len(shape) == 3:
            c, h, w = shape
            shape = (h, w, c)
            weight = weight.permute(1, 2, 0) if weight is not None else None
            bias = bias.permute(1, 2, 0) if bias is not None else None
            x = x.permute(0, 2, 3, 1)
        else:
            channels_last = False
        if self._fast_second_order(x, shape):  # one row per sample
            rows = _RowLayerNorm.apply(x.reshape(x.shape[0], -1), _flat(weight), _flat(bias), self.eps)
            out = rows.view(x.shape)
        else:
            out = F.layer_norm(x, shape, weight, bias, self.eps)
        return out.permute(0, 3, 1, 2) if channels_last else out

    def _fast_second_order(self, x: Tensor, shape: tuple[int, ...]) -> bool:
        return (
            x.dtype in (torch.float32, torch.float64)
            and tuple(x.shape[1:]) == shape  # all of a sample (a wrong shape gets torch's error)
            and x.shape[0] > 0
            and _custom_autograd_applies(x, self.weight, self.bias)
            and _second_order_pays(x)
        )


class _LeakyReLUGradient(torch.autograd.Function):
    """The gradient of a leaky ReLU of ``x`` for an output gradient. Its own derivative with
    respect to ``x`` is zero almost everywhere: torch's formula builds that zero tensor and
    adds it into the gradient penalty's backward at every layer; here it is left out."""

    @staticmethod
    def forward(ctx, grad: Tensor, x: Tensor, slope: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.slope = slope
        return torch.ops.aten.leaky_relu_backward(grad, x, slope, False)

    @staticmethod
    def backward(ctx, gg: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _LeakyReLUGradient.apply(gg, x, ctx.slope), None, None


class _LeakyReLU(torch.autograd.Function):
    """``leaky_relu`` whose backward is :class:`_LeakyReLUGradient`. Like torch's, it keeps
    its input (not its output) for the backward, so the output may be changed in place."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.slope = slope
        return F.leaky_relu(x, slope)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return _LeakyReLUGradient.apply(grad, x, ctx.slope), None


class PenaltyLeakyReLU(nn.LeakyReLU):
    """``nn.LeakyReLU`` whose second derivative skips a zero term (see
    :class:`_LeakyReLUGradient`): the same results, less work in a gradient penalty. In
    place, where custom autograd functions do not apply (see
    :func:`_custom_autograd_applies`), and on a GPU outside steps replayed as CUDA graphs,
    it is ``nn.LeakyReLU`` itself."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.inplace and _custom_autograd_applies(x) and _second_order_pays(x):
            return _LeakyReLU.apply(x, self.negative_slope)
        return super().forward(x)


def _out_size(size: int, stride: int) -> int:
    return (size + 2 - 3) // stride + 1


class Discriminator(nn.Module):
    """Eight Conv(k3) + LayerNorm(C,H,W) + LeakyReLU (torch's default slope 0.01, as the
    reference code) layers (strides 1,2,1,2,1,1,1,2),
    MaxPool(4), then a realness head (1) and a class head (``num_classes``)."""

    def __init__(self, num_classes: int, channels: int = 3, image_size: int = 32, width: int = 196) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, in_ch = image_size, channels
        for stride in STRIDES:
            size = _out_size(size, stride)
            layers += [PenaltyConv2d(in_ch, width, 3, stride, 1), SampleLayerNorm([width, size, size]), PenaltyLeakyReLU()]
            in_ch = width
        if size != 4:
            raise ValueError(f"image_size {image_size} gives {size}x{size} features; use 28 or 32")
        self.features = nn.Sequential(*layers, nn.MaxPool2d(4), nn.Flatten())
        self.source = nn.Linear(width, 1)
        self.classify = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (realness score ``(N,)``, class logits ``(N, C)``)."""
        h = self.features(x)
        return self.source(h).squeeze(1), self.classify(h)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """WGAN-GP penalty ``E[(||grad_x D(x_hat)||_2 - 1)^2]`` on random real/fake interpolates."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=generator)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    score, _ = critic(mixed)
    # this pass computes no weight gradient (see _gradients_wanted), as torch's layers do
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
