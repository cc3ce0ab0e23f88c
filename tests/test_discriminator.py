"""The AC-WGAN-GP discriminator: its layout-agnostic LayerNorm and the gradient penalty."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synthsets import discriminator as discriminator_module
from synthsets import preferred_memory_format
from synthsets.cuda_graphs import _graphed
from synthsets.discriminator import (
    Discriminator,
    PenaltyConv2d,
    PenaltyLeakyReLU,
    SampleLayerNorm,
    _conv_backward,
    _ConvGradients,
    _LayerNormGradients,
    _PenaltyConv,
    _RowLayerNorm,
    _second_order_pays,
    gradient_penalty,
)

CL = torch.channels_last


def test_sample_layer_norm_is_layer_norm_in_either_layout():
    torch.manual_seed(0)
    norm = SampleLayerNorm([6, 4, 5]).double()
    with torch.no_grad():  # non-trivial affine parameters
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    reference = nn.LayerNorm([6, 4, 5]).double()
    reference.load_state_dict(norm.state_dict())  # the same parameter names and shapes
    x = torch.randn(3, 6, 4, 5, dtype=torch.double)
    for layout in (torch.contiguous_format, CL):
        xi = x.contiguous(memory_format=layout).requires_grad_()
        out = norm(xi)
        assert out.is_contiguous(memory_format=layout)  # channels_last in, channels_last out
        torch.testing.assert_close(out, reference(x), rtol=0, atol=1e-12)
        assert torch.autograd.gradcheck(norm, (xi,)) and torch.autograd.gradgradcheck(norm, (xi,))
    g = torch.randn_like(x)
    grads = []
    for layout in (torch.contiguous_format, CL):
        norm.zero_grad()
        xi = x.contiguous(memory_format=layout).requires_grad_()
        (gx,) = torch.autograd.grad(norm(xi), xi, g, create_graph=True)
        gx.square().sum().backward()  # a double backward, as the gradient penalty's
        assert norm.bias.grad is None  # the input gradient does not depend on the bias
        grads.append((gx.detach(), norm.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _norm_backward(out: torch.Tensor) -> str:
    """The name of the autograd node that made ``out``, behind its views and permutes."""
    node = out.grad_fn
    while node is not None and type(node).__name__.startswith(("View", "Permute", "Unsafe")):
        node = node.next_functions[0][0]
    return type(node).__name__


@pytest.mark.parametrize("affine", ["weight-and-bias", "weight-only", "none"])
def test_row_layer_norm_passes_gradcheck_and_gradgradcheck(affine):
    torch.manual_seed(0)
    x = (torch.randn(3, 10, dtype=torch.double) * 3 + 1).requires_grad_()
    weight = torch.randn(10, dtype=torch.double, requires_grad=True)
    bias = torch.randn(10, dtype=torch.double, requires_grad=True)
    params = {"weight-and-bias": (x, weight, bias), "weight-only": (x, weight), "none": (x,)}[affine]

    def f(x, weight=None, bias=None):
        return _RowLayerNorm.apply(x, weight, bias, 1e-5)

    assert torch.autograd.gradcheck(f, params)
    assert torch.autograd.gradgradcheck(f, params)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_sample_layer_norm_matches_layer_norm_to_second_order(layout):
    """Output, first derivatives and the gradients of a penalty on all of them (so every
    second-order term is used) equal nn.LayerNorm's."""
    torch.manual_seed(0)
    x = (torch.randn(3, 4, 5, 6, dtype=torch.double) * 2 + 0.5).contiguous(memory_format=layout)
    g = torch.randn(3, 4, 5, 6, dtype=torch.double)
    reference = nn.LayerNorm([4, 5, 6]).double()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    norm = SampleLayerNorm([4, 5, 6]).double()
    norm.load_state_dict(reference.state_dict())
    results = []
    for module in (norm, reference):
        xi = x.clone().requires_grad_()
        gi = g.clone().requires_grad_()  # the incoming gradient depends on parameters in a penalty
        out = module(xi)
        gx, gw, gb = torch.autograd.grad(out, (xi, module.weight, module.bias), gi, create_graph=True)
        (gx.square().sum() + (gx * x).sum() + gw.square().sum() + gb.pow(3).sum() + out.sum()).backward()
        results.append([out, gx, gw, gb, xi.grad, gi.grad, module.weight.grad, module.bias.grad])
    assert _norm_backward(results[0][1]) == "_LayerNormGradientsBackward"  # the fast path ran
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_sample_layer_norm_third_derivative_is_correct():
    """Under create_graph the second-order formula is itself differentiated correctly:
    checked numerically (torch's own layer norm fails this check in torch 2.14: its
    second-order formula takes the row statistics as constants)."""
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 2, 2, dtype=torch.double) * 2).requires_grad_()
    norm = SampleLayerNorm([3, 2, 2]).double()
    weight = torch.empty(3, 2, 2, dtype=torch.double).uniform_(0.5, 1.5).requires_grad_()

    def first_derivative(x, weight):
        out = torch.func.functional_call(norm, {"weight": weight, "bias": norm.bias}, (x,))
        return torch.autograd.grad(out.pow(3).sum(), (x, weight), create_graph=True)

    assert torch.autograd.gradgradcheck(first_derivative, (x, weight))


def test_sample_layer_norm_is_torch_layer_norm_off_its_fast_path():
    norm = SampleLayerNorm([2, 3, 3])
    x = torch.randn(4, 2, 3, 3)
    assert _norm_backward(norm(x)) == "_RowLayerNormBackward"
    with torch.no_grad():
        assert norm(x).grad_fn is None
    for dtype in (torch.bfloat16, torch.float16):  # mixed dtypes: torch's own kernels
        assert _norm_backward(norm.to(dtype)(x.to(dtype))) == "NativeLayerNormBackward0"
    norm.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _norm_backward(norm(x)) == "NativeLayerNormBackward0"
    last_dim = SampleLayerNorm(3)  # normalising part of a sample: torch's layer norm
    assert _norm_backward(last_dim(x)) == "NativeLayerNormBackward0"
    torch.testing.assert_close(last_dim(x), nn.functional.layer_norm(x, (3,)))
    with pytest.raises(RuntimeError, match="normalized_shape"):  # a wrong shape: torch's own error
        norm(torch.randn(4, 2, 3, 4))


def test_discriminator_prefers_channels_last_on_cpu_only():
    D = Discriminator(10, 3, 32, width=8)
    assert all(type(m) is SampleLayerNorm for m in D.modules() if isinstance(m, nn.LayerNorm))
    assert preferred_memory_format(D, "cpu") is CL
    assert preferred_memory_format(D, "cuda") is torch.contiguous_format
    # an ordinary LayerNorm still keeps a model in the standard layout
    assert preferred_memory_format(nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 30, 30])), "cpu") is torch.contiguous_format


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_gradient_penalty_is_the_same_in_either_layout(channels, size, device, monkeypatch):
    """Same scores, penalty and parameter gradients whichever layout D and its inputs are in
    (float64, where the different summation orders leave no visible difference); on CUDA
    with the custom layers forced on outside CUDA graphs."""
    monkeypatch.setattr(discriminator_module, "CUSTOM_SECOND_ORDER_IN_CUDA_EAGER", True)
    torch.manual_seed(0)
    real = torch.randn(4, channels, size, size, dtype=torch.double, device=device)
    fake = torch.randn(4, channels, size, size, dtype=torch.double, device=device)
    results = []
    for layout in (torch.contiguous_format, CL):
        torch.manual_seed(1)
        D = Discriminator(10, channels, size, width=8).double().to(device, memory_format=layout)
        r, f = real.contiguous(memory_format=layout), fake.contiguous(memory_format=layout)
        gen = torch.Generator(device).manual_seed(2)  # the same mixing weights for both layouts
        score, logits = D(r)
        gp = gradient_penalty(D, r, f, generator=gen)
        (score.mean() + logits.square().mean() + 10 * gp).backward()
        results.append([score.detach(), gp.detach()] + [p.grad for p in D.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# -- where the custom second derivatives run ------------------------------------------------


def _on(device_type: str) -> object:
    """Something with a ``.device.type``, all that the policy reads of a tensor."""
    from types import SimpleNamespace

    return SimpleNamespace(device=SimpleNamespace(type=device_type))


def test_custom_second_order_runs_on_cpu_and_in_graphed_steps_only(monkeypatch):
    """Always on a CPU; on a GPU only in a step replayed as a CUDA graph (a GraphedStep's
    warm-up and capture, or any capture): eagerly, their Python overhead outweighs what
    they save there. Or when switched on for eager GPU work too."""
    capturing = []
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: bool(capturing))
    assert _second_order_pays(_on("cpu")) and _second_order_pays(torch.zeros(1))
    assert not _second_order_pays(_on("cuda")) and not _second_order_pays(_on("mps"))
    capturing.append(True)
    assert _second_order_pays(_on("cuda"))
    capturing.clear()
    with _graphed():
        assert _second_order_pays(_on("cuda")) and _second_order_pays(_on("xpu"))
    assert not _second_order_pays(_on("cuda"))
    monkeypatch.setattr(discriminator_module, "CUSTOM_SECOND_ORDER_IN_CUDA_EAGER", True)
    assert _second_order_pays(_on("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_layers_are_torchs_eagerly_and_custom_in_a_captured_graph():
    torch.manual_seed(0)
    layers = [PenaltyConv2d(3, 8, 3, 1, 1), SampleLayerNorm([8, 6, 6]), PenaltyLeakyReLU()]
    model = nn.Sequential(*layers).cuda()
    x = torch.randn(2, 3, 6, 6, device="cuda", requires_grad=True)

    def node_names(y: torch.Tensor) -> set[str]:
        seen, todo = set(), [y.grad_fn]
        while todo:
            fn = todo.pop()
            if fn is not None and fn not in seen:
                seen.add(fn)
                todo += [f for f, _ in fn.next_functions]
        return {fn.name() for fn in seen}

    custom = ("_PenaltyConvBackward", "_RowLayerNormBackward", "_LeakyReLUBackward")
    eager = node_names(model(x))
    assert not any(name in eager for name in custom), eager  # torch's own layers
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up before capture, as torch asks
        model(x)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        captured = node_names(model(x))
    assert all(name in captured for name in custom), captured


# -- PenaltyConv2d: nn.Conv2d with a fast double backward ---------------------------------


def _conv_pair(stride: int, bias: bool = True) -> tuple[PenaltyConv2d, nn.Conv2d]:
    fast = PenaltyConv2d(3, 4, 3, stride, 1, bias=bias).double()
    stock = nn.Conv2d(3, 4, 3, stride, 1, bias=bias).double()
    stock.load_state_dict(fast.state_dict())  # the same parameters
    return fast, stock


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_penalty_conv_passes_gradcheck_and_gradgradcheck(stride, bias):
    torch.manual_seed(0)
    fast, _ = _conv_pair(stride, bias)
    x = torch.randn(2, 3, 7, 7, dtype=torch.double, requires_grad=True)
    params = (x, fast.weight) + ((fast.bias,) if bias else ())

    def f(x, weight, b=None):
        return _PenaltyConv.apply(x, weight, b, [stride, stride], [1, 1])

    assert torch.autograd.gradcheck(f, params)
    assert torch.autograd.gradgradcheck(f, params)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_penalty_conv_matches_conv2d_to_second_order(stride, layout):
    """Output, first derivatives and the gradients of a penalty on them (input and weight
    gradients both penalised, so every second-order term is used) equal nn.Conv2d's."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 9, 9, dtype=torch.double).contiguous(memory_format=layout)
    size = (9 - 1) // stride + 1  # the output size (kernel 3, padding 1)
    g = torch.randn(3, 4, size, size, dtype=torch.double)
    results = []
    for conv in _conv_pair(stride):
        conv.to(memory_format=layout)
        xi = x.clone().requires_grad_()
        out = conv(xi)
        gx, gw, gb = torch.autograd.grad(out, (xi, conv.weight, conv.bias), g, create_graph=True)
        (gx.square().sum() + gw.square().sum() + gb.square().sum() + out.sum()).backward()
        results.append([out, gx, gw, gb, xi.grad, conv.weight.grad, conv.bias.grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_penalty_conv_is_conv2d_outside_recorded_autograd():
    fast, _ = _conv_pair(1)
    x = torch.randn(2, 3, 6, 6, dtype=torch.double)
    with torch.no_grad():
        assert fast(x).grad_fn is None
    fast.requires_grad_(False)
    assert fast(x).grad_fn is None  # nothing requires grad: the plain call
    fast.requires_grad_(True)
    assert type(fast(x).grad_fn).__name__ == "_PenaltyConvBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: torch's own convolution
        assert type(PenaltyConv2d(3, 4, 3)(x.float()).grad_fn).__name__ == "ConvolutionBackward0"
    # unsupported settings fall back to nn.Conv2d's own forward
    for kwargs in ({"groups": 3, "out_channels": 3}, {"dilation": 2}, {"padding": "same"}, {"padding_mode": "reflect"}):
        settings = {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1, **kwargs}
        conv = PenaltyConv2d(**settings).double()
        assert type(conv(x).grad_fn).__name__ == "ConvolutionBackward0", kwargs


def test_gradient_penalty_skips_weight_gradients_only_in_its_own_pass():
    """Inside the penalty's pass the convolutions compute input gradients only; a
    create_graph pass that asks for weight gradients (as meta-learning does) gets them."""
    torch.manual_seed(0)
    D = Discriminator(10, 1, 28, width=4).double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.double)
    gp = gradient_penalty(D, x, x.flip(0))
    assert torch.isfinite(gp)
    score, _ = D(x)
    conv = D.features[0]
    (gw,) = torch.autograd.grad(score.sum(), conv.weight, create_graph=True)
    (ggw,) = torch.autograd.grad(gw.square().sum(), conv.weight)
    # the same with the stock convolution
    reference = Discriminator(10, 1, 28, width=4).double()
    reference.load_state_dict(D.state_dict())
    reference.features[0].__class__ = nn.Conv2d
    (rw,) = torch.autograd.grad(reference(x)[0].sum(), reference.features[0].weight, create_graph=True)
    (rgw,) = torch.autograd.grad(rw.square().sum(), reference.features[0].weight)
    torch.testing.assert_close(gw, rw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ggw, rgw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_discriminator_penalty_equals_stock_layers(channels, size, device, monkeypatch):
    """The whole D loss with the penalty: the same gradients as with nn.Conv2d,
    nn.LayerNorm and nn.LeakyReLU layers. The penalty's own pass asked the convolutions and
    norms for no weight gradient, and a backward pass for the parameters only (as the
    distillation's D step runs it) asked the first convolution for no gradient of the
    interpolated images. Width 16: grey images take the one-channel input-gradient path.
    On CUDA the custom layers are forced on outside graph capture, to compare them."""
    monkeypatch.setattr(discriminator_module, "CUSTOM_SECOND_ORDER_IN_CUDA_EAGER", True)
    torch.manual_seed(0)
    D = Discriminator(10, channels, size, width=16).double().to(device)
    reference = Discriminator(10, channels, size, width=16).double().to(device)
    reference.load_state_dict(D.state_dict())
    stock = {PenaltyConv2d: nn.Conv2d, SampleLayerNorm: nn.LayerNorm, PenaltyLeakyReLU: nn.LeakyReLU}
    for m in reference.modules():
        m.__class__ = stock.get(type(m), type(m))
    real = torch.randn(3, channels, size, size, dtype=torch.double, device=device)
    fake = torch.randn(3, channels, size, size, dtype=torch.double, device=device)
    masks, norm_masks = [], []
    original, original_norm = _ConvGradients.forward, _LayerNormGradients.forward
    monkeypatch.setattr(
        _ConvGradients, "forward", staticmethod(lambda ctx, *a: masks.append((a[1].shape[1], a[-1])) or original(ctx, *a))
    )
    monkeypatch.setattr(
        _LayerNormGradients, "forward", staticmethod(lambda ctx, *a: norm_masks.append(a[-1]) or original_norm(ctx, *a))
    )
    results = []
    for model in (D, reference):
        masks.clear()
        norm_masks.clear()
        score, logits = model(real)
        gp = gradient_penalty(model, real, fake, generator=torch.Generator(device).manual_seed(1))
        if model is D:  # the 8 convolutions and norms of the penalty's pass: input gradients only
            assert [mask for _, mask in masks] == [[True, False, False]] * 8
            assert norm_masks == [[True, False, False]] * 8
            masks.clear()
        (score.mean() + logits.square().mean() + 10 * gp).backward(inputs=list(model.parameters()))
        if model is D:  # the first layer, on real and on interpolated images: no input gradient
            first = [mask for in_channels, mask in masks if in_channels == channels]
            assert len(first) == 2 and not any(mask[0] for mask in first)
        results.append([gp.detach()] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_one_channel_input_gradient_is_torchs(layout):
    """The input gradient of a convolution from one channel (shifted sums on a CPU) is
    torch's, alone or with the weight and bias gradients."""
    torch.manual_seed(0)
    x = torch.randn(3, 1, 9, 8, dtype=torch.double).to(memory_format=layout)
    w = torch.randn(16, 1, 3, 3, dtype=torch.double).to(memory_format=layout)
    g = torch.randn(3, 16, 9, 8, dtype=torch.double).to(memory_format=layout)
    for mask in ([True, False, False], [True, True, True], [False, True, False]):
        ours = _conv_backward(g, x, w, [1, 1], [1, 1], mask, has_bias=True)
        ref = torch.ops.aten.convolution_backward(g, x, w, [16], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
        for a, b in zip(ours, ref):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_penalty_leaky_relu_is_leaky_relu_to_third_order():
    """Same values and derivatives as nn.LeakyReLU, to the third order (the second
    derivative's zero term with respect to the activation is left out, not changed)."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    ours, ref = PenaltyLeakyReLU(), nn.LeakyReLU()
    w = torch.randn(4, 6, dtype=torch.double)

    def derivatives(layer):
        (g,) = torch.autograd.grad((layer(x * x) * w).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(3).sum(), x, create_graph=True)
        (ggg,) = torch.autograd.grad(gg.sin().sum(), x)
        return layer(x), g, gg, ggg

    for a, b in zip(derivatives(ours), derivatives(ref)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradgradcheck(ours, (x,))
    assert ours(x).grad_fn.name().endswith("_LeakyReLUBackward")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
    for slope in (-0.5, 0.0):  # any slope, as torch's
        (g,) = torch.autograd.grad(PenaltyLeakyReLU(slope)(x).sum(), x, create_graph=True)
        torch.testing.assert_close(g, torch.autograd.grad(nn.LeakyReLU(slope)(x).sum(), x)[0])
    out = ours(x * 1)
    out.mul_(2)  # like torch's, it keeps its input: its output may change in place
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g, 2 * torch.where(x > 0, 1.0, 0.01).double())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # inside torch's jvp
def test_custom_layers_work_under_torch_func_and_forward_ad():
    """vmap, func.grad/jacrev and forward-mode AD see torch's own layers (the custom
    autograd functions have no vmap/jvp rules), with the same results."""
    from torch.autograd import forward_ad

    from synthsets.models import AvgPool2x2

    torch.manual_seed(0)
    from synthsets.generator import _CpuFastConv2d

    norm = SampleLayerNorm([2, 4, 4]).double()
    conv = PenaltyConv2d(2, 3, 3, 1, 1).double()
    to_grey = _CpuFastConv2d(8, 1, 3, 1, 1).double()  # its one-output-channel path
    pool = AvgPool2x2()
    x = torch.randn(5, 2, 4, 4, dtype=torch.double)
    wide = torch.randn(3, 8, 5, 5, dtype=torch.double)
    big = torch.randn(2, 8, 64, 64, dtype=torch.double)  # large enough for AvgPool2x2's own CPU path
    for layer, inputs in ((norm, x), (conv, x), (PenaltyLeakyReLU(), x), (to_grey, wide), (pool, big)):
        expected = layer(inputs)
        torch.testing.assert_close(torch.func.vmap(layer)(inputs.unsqueeze(1)).squeeze(1), expected)
        jac = torch.func.jacrev(lambda t: layer(t).sum())(inputs)
        (grad,) = torch.autograd.grad(layer(inputs.requires_grad_()).sum(), inputs)
        inputs.requires_grad_(False)
        torch.testing.assert_close(jac, grad)
        tangent = torch.randn_like(inputs)
        with forward_ad.dual_level():
            out = layer(forward_ad.make_dual(inputs, tangent))
            jvp = forward_ad.unpack_dual(out).tangent
        _, reference = torch.func.jvp(layer, (inputs,), (tangent,))
        torch.testing.assert_close(jvp, reference)


def test_discriminator_matches_the_reference_layout():
    """Conv + LayerNorm(C,H,W) + LeakyReLU(0.01) x 8 with strides 1,2,1,2,1,1,1,2, MaxPool(4), two heads."""
    D = Discriminator(10, 3, 32, width=8)
    convs = [m for m in D.features if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 1, 1, 2]
    slopes = [m.negative_slope for m in D.features if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.01] * 8
    assert [tuple(m.normalized_shape) for m in D.features if isinstance(m, nn.LayerNorm)][:2] == [(8, 32, 32), (8, 16, 16)]
    score, logits = D(torch.randn(2, 3, 32, 32))
    assert score.shape == (2,) and logits.shape == (2, 10)


@pytest.mark.parametrize("bias", [True, False])
def test_convolution_computes_the_gradients_the_pass_uses(bias, monkeypatch):
    """PenaltyConv2d asks autograd which of its inputs' gradients the running pass uses,
    as torch's convolution does: autograd.grad for the input skips the weight (and bias),
    backward(inputs=[weight]) skips a leaf input, a plain backward computes everything,
    and autograd.grad for [input, bias] computes those two. With or without a bias (whose
    absence shifts autograd's list of inputs)."""
    masks = []
    original = _ConvGradients.forward
    monkeypatch.setattr(_ConvGradients, "forward", staticmethod(lambda ctx, *a: masks.append(a[-1]) or original(ctx, *a)))
    torch.manual_seed(0)
    conv = PenaltyConv2d(3, 4, 3, 1, 1, bias=bias).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.double, requires_grad=True)
    full = [True, True, bias]

    def mask_of(run):
        masks.clear()
        run(conv(x).square().sum())
        (mask,) = masks
        return mask

    assert mask_of(lambda y: torch.autograd.grad(y, x)) == [True, False, False]
    assert mask_of(lambda y: y.backward(inputs=[conv.weight])) == [False, True, False]
    assert mask_of(lambda y: y.backward()) == full
    if bias:
        assert mask_of(lambda y: torch.autograd.grad(y, [x, conv.bias])) == [True, False, True]
        assert mask_of(lambda y: y.backward(inputs=[conv.bias])) == [False, False, True]


def test_one_channel_first_layer_is_right_to_the_third_order():
    """The input gradient of a convolution from one channel (shifted sums on a CPU) stays
    differentiable: third derivatives through it are torch's."""
    torch.manual_seed(0)
    conv = PenaltyConv2d(1, 16, 3, 1, 1).double()
    reference = nn.Conv2d(1, 16, 3, 1, 1).double()
    reference.load_state_dict(conv.state_dict())
    a = torch.randn(2, 1, 5, 4, dtype=torch.double, requires_grad=True)
    results = []
    for layer in (conv, reference):
        (gw,) = torch.autograd.grad(layer(a).pow(2).sum(), layer.weight, create_graph=True)
        (gx,) = torch.autograd.grad(gw.pow(2).sum(), a, create_graph=True)
        (h,) = torch.autograd.grad(gx.sin().sum(), a)
        results.append((gw, gx, h))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_discriminator_traces_with_torch_fx():
    """torch.fx sees torch's own layers (no shape checks on traced values)."""
    torch.manual_seed(0)
    D = Discriminator(4, 1, 28, 16).double().to(memory_format=CL)
    x = torch.randn(2, 1, 28, 28, dtype=torch.double)
    traced = torch.fx.symbolic_trace(D)
    for a, b in zip(traced(x), D(x)):
        torch.testing.assert_close(a, b)
