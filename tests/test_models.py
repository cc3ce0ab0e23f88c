import pytest
import torch
import torch.nn as nn

import synthsets.models as models
from synthsets.models import (
    POOL,
    AvgPool2x2,
    BasicBlock,
    ConvNet,
    create_model,
    list_models,
    preferred_memory_format,
    register_model,
)

ALL = list_models()
CONFIGS = [(1, 28), (3, 32)]


def test_expected_models_registered():
    for name in ("convnet3", "resnet10", "resnet18", "resnet10_ap", "resnet18_ap", "vgg11", "alexnet"):
        assert name in ALL


@pytest.mark.parametrize("channels,image_size", CONFIGS)
@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name, channels, image_size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, channels=channels, image_size=image_size)
    assert model.num_classes == 7
    params = list(model.parameters())
    assert params and all(torch.isfinite(p).all() for p in params)

    x = torch.randn(2, channels, image_size, image_size)
    y = torch.tensor([0, 6])
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no grad for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite grad for {pname}"
    assert any(p.grad.abs().sum() > 0 for p in params)


def test_name_normalisation():
    a = create_model("ConvNet-3", num_classes=10)
    b = create_model("RESNET18_AP", num_classes=10)
    c = create_model("ResNet18-AP", num_classes=10)
    assert isinstance(a, ConvNet)
    assert type(b) is type(c)
    assert sum(isinstance(m, nn.AvgPool2d) for m in b.modules()) > 0
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(b) == n(c) == n(create_model("resnet18_ap", num_classes=10))


def test_pool():
    assert set(POOL) <= set(list_models())
    assert list_models(pool_only=True) == list(POOL)
    assert POOL == ("convnet3", "resnet10", "resnet18", "resnet10_ap", "resnet18_ap")
    assert list_models() == sorted(list_models())


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet_depths():
    r10 = create_model("resnet10", num_classes=10)
    r18 = create_model("resnet18", num_classes=10)
    assert _n_params(r10) < _n_params(r18)
    assert sum(isinstance(m, BasicBlock) for m in r18.modules()) == 8
    assert sum(isinstance(m, BasicBlock) for m in r10.modules()) == 4
    # widths 32, 64, 128, 256 with a stem of 32 channels
    assert r18.stem[0].out_channels == 32
    assert r18.classifier.in_features == 256
    assert isinstance(r18.stem[1], nn.BatchNorm2d)


@pytest.mark.parametrize("name", ["resnet10_ap", "resnet18_ap"])
def test_ap_variants(name):
    model = create_model(name, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.stride == (1, 1) for c in convs)
    # one AvgPool2d in the main path and one in the shortcut for each of 3 downsamplings
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 6
    # spatial size still shrinks 32 -> 4 before the global pool
    feats = model.layers(model.stem(torch.randn(1, 3, 32, 32)))
    assert feats.shape == (1, 256, 4, 4)


def test_plain_resnet_uses_strided_convs():
    model = create_model("resnet18", num_classes=10)
    assert any(m.stride == (2, 2) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.AvgPool2d) for m in model.modules())


def test_convnet3_feature_size():
    m28 = create_model("convnet3", num_classes=10, channels=1, image_size=28)
    assert m28.classifier.in_features == 128 * 4 * 4
    assert m28.embed(torch.randn(2, 1, 28, 28)).shape == (2, 128 * 16)
    m32 = create_model("convnet3", num_classes=10)
    assert m32.classifier.in_features == 128 * 16
    assert sum(isinstance(m, nn.GroupNorm) for m in m32.modules()) == 3
    m64 = create_model("convnet3", num_classes=10, image_size=64)
    assert m64.classifier.in_features == 128 * 8 * 8
    assert m64(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_convnet_options():
    m = create_model("convnet3", num_classes=5, width=16, depth=4, norm="batchnorm")
    assert m.classifier.in_features == 16 * 2 * 2
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == 4
    m = create_model("convnet3", num_classes=5, width=8, norm="none")
    assert not any(isinstance(x, (nn.BatchNorm2d, nn.GroupNorm)) for x in m.modules())
    with pytest.raises(ValueError, match="norm"):
        create_model("convnet3", num_classes=5, norm="whatever")


def test_vgg_and_alexnet_heads():
    assert create_model("vgg11", num_classes=10, channels=1, image_size=28).classifier.in_features == 512
    assert create_model("alexnet", num_classes=10).classifier.in_features == 192 * 4 * 4


def test_timm_fallback():
    timm = pytest.importorskip("timm")
    model = create_model("mobilenetv3_small_050", num_classes=10, channels=1)
    assert not isinstance(model, (ConvNet,))
    assert type(model).__module__.startswith("timm.")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)
    assert timm.is_model("mobilenetv3_small_050")


def test_unknown_model():
    with pytest.raises(ValueError) as info:
        create_model("definitely_not_a_model_xyz", num_classes=10)
    msg = str(info.value)
    assert "definitely_not_a_model_xyz" in msg
    for name in POOL:
        assert name in msg
    assert "timm" in msg


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, "10", True, None])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("convnet3", num_classes=bad)


@pytest.mark.parametrize("kw,word", [({"channels": 0}, "channels"), ({"channels": 1.0}, "channels"),
                                     ({"image_size": 0}, "image_size"), ({"image_size": "32"}, "image_size")])
def test_bad_channels_image_size(kw, word):
    with pytest.raises(ValueError, match=word):
        create_model("resnet10", num_classes=10, **kw)


def test_bad_name_type():
    with pytest.raises(ValueError):
        create_model("", num_classes=10)
    with pytest.raises(ValueError):
        create_model(None, num_classes=10)


def test_register_model():
    @register_model("Tiny-Test_Net")
    def tiny(num_classes, channels=3, image_size=32, **kw):
        return ConvNet(num_classes, channels, image_size, width=4, depth=1, **kw)

    try:
        assert "tiny_test_net" in list_models()
        m = create_model("TINYTESTNET", num_classes=3, channels=1, image_size=28, norm="none")
        assert m(torch.randn(1, 1, 28, 28)).shape == (1, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny-test-net")(lambda **kw: None)
    finally:
        import synthsets.models as sm

        sm._REGISTRY.pop("tiny_test_net", None)
        sm._KEYS.pop("tinytestnet", None)
    assert "tiny_test_net" not in list_models()


# -- memory layout ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [("resnet18", torch.channels_last), ("resnet10_ap", torch.channels_last), ("alexnet", torch.channels_last),
     ("convnet3", torch.contiguous_format), ("vgg11", torch.contiguous_format)],
)
def test_preferred_memory_format_on_cpu(name, expected):
    # BatchNorm / no-norm models run faster in channels_last on a CPU; GroupNorm ones do not
    model = create_model(name, num_classes=10)
    assert preferred_memory_format(model, "cpu") is expected
    assert preferred_memory_format(model, torch.device("cpu")) is expected


def test_preferred_memory_format_elsewhere():
    assert preferred_memory_format(create_model("resnet18", num_classes=10), "cuda") is torch.contiguous_format
    assert preferred_memory_format(nn.Sequential(nn.Linear(4, 2)), "cpu") is torch.contiguous_format  # no convs
    assert preferred_memory_format(create_model("convnet3", 10, norm="batchnorm"), "cpu") is torch.channels_last


@pytest.mark.parametrize("channels,image_size", CONFIGS)
def test_channels_last_trains_the_same_model(channels, image_size):
    """Three SGD steps of a ResNet in either layout: the same losses and weights up to
    rounding. In float64: in float32, BatchNorm over a batch of 8 amplifies the two
    layouts' different summation orders past any fixed tolerance on some CPUs (a first-layer
    weight 1.4% apart after three steps on one Xeon, within 1e-4 on another CPU)."""
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = create_model("resnet10", 10, channels, image_size).double().to(memory_format=layout)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(3):
            x = torch.randn(8, channels, image_size, image_size, generator=gen, dtype=torch.float64)
            y = torch.randint(10, (8,), generator=gen)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=layout)
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    (losses_a, params_a), (losses_b, params_b) = results
    assert losses_a == pytest.approx(losses_b, rel=1e-12)
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# -- AvgPool2x2: the CPU fast path of the 2x2 average pooling ------------------------------------
@pytest.mark.parametrize("shape", [(3, 4, 8, 6), (2, 5, 28, 28), (1, 1, 2, 2)])
def test_avgpool2x2_cpu_function_is_avg_pool2d(shape):
    from synthsets.models import _AvgPool2x2Cpu

    x = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(_AvgPool2x2Cpu.apply, (x,))
    assert torch.autograd.gradgradcheck(_AvgPool2x2Cpu.apply, (x,))
    xf = torch.randn(*shape, requires_grad=True)
    out, ref = _AvgPool2x2Cpu.apply(xf), nn.functional.avg_pool2d(xf, 2)
    assert out.shape == ref.shape and out.is_contiguous()
    assert (out - ref).abs().max() <= 2.5e-7  # the same four terms, added in another order
    g = torch.randn_like(ref)
    assert torch.equal(torch.autograd.grad(out, xf, g)[0], torch.autograd.grad(ref, xf, g)[0])


def test_avgpool2x2_fast_path_and_fallback(monkeypatch):
    calls = []
    monkeypatch.setattr(nn.AvgPool2d, "forward", lambda self, x: calls.append(tuple(x.shape)) or torch.zeros(()))
    pool = AvgPool2x2()
    assert isinstance(pool, nn.AvgPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (2, 2, 0)
    big = (8, 16, 16, 16)  # 32k elements
    pool(torch.randn(*big))
    assert calls == []  # CPU, NCHW, even sizes, large enough: the fast path
    pool(torch.randn(*big).contiguous(memory_format=torch.channels_last))  # torch's CL kernel is fast
    pool(torch.randn(8, 16, 16, 15))  # odd width: nn.AvgPool2d (floor mode)
    pool(torch.randn(2, 3, 8, 8))  # small: one kernel call is cheaper
    pool(torch.randn(8, 16, 16, 32)[..., ::2])  # not contiguous
    pool(torch.randn(16, 16, 16))  # unbatched
    assert calls == [big, (8, 16, 16, 15), (2, 3, 8, 8), (8, 16, 16, 16), (16, 16, 16)]


def test_avgpool2x2_module_matches_avgpool2d_both_layouts():
    pool, ref_pool = AvgPool2x2(), nn.AvgPool2d(2, 2)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(8, 16, 16, 16).contiguous(memory_format=memory_format).requires_grad_()
        out, ref = pool(x), ref_pool(x)
        assert out.is_contiguous(memory_format=memory_format) and (out - ref).abs().max() <= 2.5e-7
        g = torch.randn_like(ref)
        assert torch.equal(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_avgpool2x2_leaves_graph_capture_to_torch(monkeypatch):
    """torch.export (and torch.compile, tracing) see the standard pooling operator."""
    import synthsets.models as models

    model = create_model("convnet3", 10, 3, 32).eval()
    x = torch.randn(4, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    assert sum("avg_pool2d" in str(node.target) for node in exported.graph.nodes) == 3
    torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=1e-6)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert models._capturing_graph()
    calls = []
    monkeypatch.setattr(nn.AvgPool2d, "forward", lambda self, x: calls.append(1) or nn.functional.avg_pool2d(x, 2))
    AvgPool2x2()(torch.randn(8, 16, 16, 16))
    assert calls == [1]


# -- ReLU + AvgPool2x2 as one autograd node (ConvNet's blocks) -----------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 2, 2)])
def test_relu_avgpool2x2_function_is_relu_then_avg_pool2d(shape):
    from synthsets.models import _ReLUAvgPool2x2Cpu

    def fused(x):  # on a copy: the function activates its input in place
        return _ReLUAvgPool2x2Cpu.apply(x * 1)[0]

    def both_outputs(x, weights):  # a gradient through the activated input itself as well
        pooled, activated = _ReLUAvgPool2x2Cpu.apply(x * 1)
        return pooled.sum() + (activated * weights).sum()

    x = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    weights = torch.randn(*shape, dtype=torch.double)
    assert torch.autograd.gradcheck(fused, (x,))
    assert torch.autograd.gradgradcheck(fused, (x,))
    assert torch.autograd.gradcheck(both_outputs, (x, weights))
    assert torch.autograd.gradgradcheck(both_outputs, (x, weights))
    ref = nn.functional.avg_pool2d(nn.functional.relu(x), 2)
    assert (fused(x) - ref).abs().max() < 1e-15
    y = x * 1
    before = y.detach().clone()
    _, activated = _ReLUAvgPool2x2Cpu.apply(y)
    assert activated.data_ptr() == y.data_ptr() and torch.equal(y, before.clamp(min=0))  # in place


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (4, 8, 32, 32), (3, 5, 2, 16)])
def test_window_grad_is_avg_pool2d_backward_bit_for_bit(shape):
    """The pooling's backward (an index_select over window rows) is torch's, exactly, for any
    layout of the incoming gradient."""
    from synthsets.models import _window_grad

    x = torch.randn(*shape)
    n, c, h, w = shape
    for grad in (
        torch.randn(n, c, h // 2, w // 2),
        torch.randn(n, c, h // 2, w // 2).contiguous(memory_format=torch.channels_last),
        torch.randn(n, c, h // 2, w).narrow(3, 1, w // 2),  # a strided view
        torch.randn(()).expand(n, c, h // 2, w // 2),  # what the backward of a sum hands in
    ):
        ref = torch.ops.aten.avg_pool2d_backward(grad, x, [2, 2], [2, 2], [0, 0], False, True, None)
        out = _window_grad(grad)
        assert out.shape == x.shape and out.is_contiguous() and torch.equal(out, ref)


def test_relu_avgpool2x2_backward_leaves_incoming_gradients_unchanged():
    """The ReLU's mask is applied in place only to a buffer the backward made itself: a
    gradient handed in for the activated tensor alone is read, not overwritten."""
    from synthsets.models import _ReLUAvgPool2x2Cpu

    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    _, activated = _ReLUAvgPool2x2Cpu.apply(x * 1)
    g = torch.randn(4, 8, 16, 16)
    before = g.clone()
    (dx,) = torch.autograd.grad(activated, x, g)
    assert torch.equal(g, before)
    assert torch.equal(dx, torch.where(x > 0, g, torch.zeros(())))
    pooled, activated = _ReLUAvgPool2x2Cpu.apply(x * 1)  # both outputs: a fresh sum, masked in place
    gp = torch.randn_like(pooled)
    (dx,) = torch.autograd.grad((pooled, activated), x, (gp, g))
    ref = torch.where(x > 0, g + torch.ops.aten.avg_pool2d_backward(gp, x, [2, 2], [2, 2], [0, 0], False, True, None), 0.0)
    assert torch.equal(g, before) and torch.equal(dx, ref)


def _convnet_loss_and_grads(model, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    return loss, torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_convnet_fuses_relu_and_pool_with_identical_numbers(monkeypatch, dtype):
    """ConvNet-3 runs ReLU + AvgPool2x2 as one node while it trains on a CPU: the same loss
    and gradients, bit for bit, as the layers one by one."""
    torch.manual_seed(0)
    model = create_model("convnet3", 10, 1, 28, width=16).to(dtype)
    assert isinstance(model.features, models.ReLUPoolSequential)
    x, y = torch.randn(8, 1, 28, 28, dtype=dtype), torch.randint(0, 10, (8,))
    calls = []
    apply = models._ReLUAvgPool2x2Cpu.apply
    monkeypatch.setattr(models._ReLUAvgPool2x2Cpu, "apply", lambda t: calls.append(tuple(t.shape)) or apply(t))
    loss, grads = _convnet_loss_and_grads(model, x, y)
    assert calls == [(8, 16, 32, 32), (8, 16, 16, 16)]  # 8x8 maps hold fewer than AvgPool2x2.MIN_ELEMENTS
    model.features.__class__ = nn.Sequential  # the layers one by one
    ref_loss, ref_grads = _convnet_loss_and_grads(model, x, y)
    assert len(calls) == 2 and torch.equal(loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_convnet_fused_gradients_include_other_uses_of_the_activation():
    """A hook that keeps the normalised maps (activated in place by the ReLU, as with the
    layers one by one) for a loss of its own: its gradient joins the pooling's."""
    torch.manual_seed(0)
    model = create_model("convnet3", 10, 1, 28, width=16).double()
    kept = []
    model.features[1].register_forward_hook(lambda m, i, o: kept.append(o))  # the GroupNorm
    x = torch.randn(8, 1, 28, 28, dtype=torch.double)
    results = []
    for container in (models.ReLUPoolSequential, nn.Sequential):
        model.features.__class__ = container
        kept.clear()
        loss = model(x).square().sum() + kept[0].square().sum()
        results.append(torch.autograd.grad(loss, list(model.parameters())))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_relu_pool_sequential_leaves_views_and_leaves_to_the_layers():
    """A view (autograd allows a single output when a function changes one in place) and a
    leaf that requires grad (ReLU's own in-place error, with the tensor unchanged) run
    layer by layer."""
    seq = models.ReLUPoolSequential(nn.ReLU(inplace=True), AvgPool2x2())
    base = torch.randn(16, 16, 16, 16, requires_grad=True) * 1
    view = base[:8]
    ref = nn.functional.avg_pool2d(view.detach().clamp(min=0), 2)
    out = seq(view)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    out.sum().backward()
    leaf = torch.randn(8, 16, 16, 16, requires_grad=True)
    before = leaf.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        seq(leaf)
    assert torch.equal(leaf.detach(), before)


def test_convnet_runs_layer_by_layer_where_fusing_would_change_something(monkeypatch):
    """Hooks on the ReLU or the pooling, no autograd, stock pooling and graph capture all
    see the layers one by one."""
    model = create_model("convnet3", 10, 1, 28, width=16)
    x = torch.randn(8, 1, 28, 28)
    calls = []
    apply = models._ReLUAvgPool2x2Cpu.apply
    monkeypatch.setattr(models._ReLUAvgPool2x2Cpu, "apply", lambda t: calls.append(1) or apply(t))
    seen = []
    handle = model.features[2].register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    model(x).sum().backward()
    assert seen == [32] and calls == [1]  # the hooked block alone ran layer by layer
    handle.remove()
    with torch.no_grad():
        model(x)
    assert calls == [1]
    model.features[3] = nn.AvgPool2d(2, 2)  # what benchmarks' stock layers do
    model(x).sum().backward()
    assert calls == [1, 1]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    model(x).sum().backward()
    assert calls == [1, 1]


@pytest.mark.parametrize("name", ["convnet3", "resnet10_ap"])
def test_models_pool_with_avgpool2x2(name):
    """The models that average-pool use AvgPool2x2, which holds no weights: state dicts
    keep the keys they had with nn.AvgPool2d."""
    model = create_model(name, 10, 3, 32)
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert pools and all(type(m) is AvgPool2x2 for m in pools)
    assert all(not list(m.parameters()) and not list(m.buffers()) for m in pools)


def test_is_model_knows_synthsets_and_timm_names():
    from synthsets import is_model

    assert is_model("convnet3") and is_model("ResNet-18") and is_model("resnet18_ap")
    assert is_model("mobilenetv3_small_050")  # a timm name
    assert not is_model("resnet81") and not is_model("") and not is_model(None)


def test_average_pool_resnets_name_their_smallest_image_size():
    from synthsets import create_model

    for name in ("resnet10_ap", "resnet18_ap"):
        with pytest.raises(ValueError, match="needs image_size >= 8, got 7"):
            create_model(name, 10, 1, 7)
        model = create_model(name, 10, 1, 8)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert create_model("resnet18", 10, 1, 4)(torch.randn(2, 1, 4, 4)).shape == (2, 10)


# -- the one-output-channel 3x3 convolution (grey images: the generator's last layer) ------------


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [True, False])
def test_conv3x3_to_one_channel_is_conv2d(layout, bias):
    """Matrix product plus shifted sums: conv2d's values and gradients (of any order) in
    float64, whichever layout the input is in, for odd and even sizes."""
    from synthsets.models import _conv3x3_to_one_channel

    torch.manual_seed(0)
    x = torch.randn(3, 16, 7, 6, dtype=torch.double).to(memory_format=layout).requires_grad_()
    w = torch.randn(1, 16, 3, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(1, dtype=torch.double, requires_grad=True) if bias else None
    out, ref = _conv3x3_to_one_channel(x, w, b), nn.functional.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    inputs = [x, w] + ([b] if bias else [])
    torch.testing.assert_close(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g), rtol=1e-12, atol=1e-12)
    if layout == torch.channels_last:  # the input gradient keeps the input's layout
        (gx,) = torch.autograd.grad(_conv3x3_to_one_channel(x, w, b), x, g)
        assert gx.is_contiguous(memory_format=torch.channels_last)
    small = (x[:1, :, :4, :5].detach().clone().requires_grad_(), w) + ((b,) if bias else ())
    fn = (lambda a, c, d: _conv3x3_to_one_channel(a, c, d)) if bias else (lambda a, c: _conv3x3_to_one_channel(a, c, None))
    assert torch.autograd.gradcheck(fn, small)
    assert torch.autograd.gradgradcheck(fn, small)
    # float32: rounding only
    x32, w32 = x.detach().float(), w.detach().float()
    b32 = b.detach().float() if bias else None
    torch.testing.assert_close(_conv3x3_to_one_channel(x32, w32, b32), nn.functional.conv2d(x32, w32, b32, padding=1),
                               rtol=1e-5, atol=1e-5)


def test_one_output_channel_path_applies_only_where_it_is_exact_and_faster():
    from synthsets.models import _one_output_channel_applies as applies

    x, w = torch.randn(2, 16, 6, 6), torch.randn(1, 16, 3, 3)
    assert applies(x, w, (1, 1), (1, 1), (1, 1), 1)
    assert not applies(x, torch.randn(2, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1)  # two output channels
    assert not applies(x[:, :8], w[:, :8], (1, 1), (1, 1), (1, 1), 1)  # few input channels: oneDNN is faster
    assert not applies(x[0], w, (1, 1), (1, 1), (1, 1), 1)  # unbatched
    assert not applies(x, w, (2, 2), (1, 1), (1, 1), 1)
    assert not applies(x, w, (1, 1), (0, 0), (1, 1), 1)
    assert not applies(x, w, (1, 1), "same", (1, 1), 1)
    assert not applies(x, w, (1, 1), (1, 1), (2, 2), 1)
    assert not applies(x, torch.randn(1, 16, 5, 5), (1, 1), (2, 2), (1, 1), 1)
    assert not applies(x.half(), w.half(), (1, 1), (1, 1), (1, 1), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies(x, w, (1, 1), (1, 1), (1, 1), 1)


@pytest.mark.parametrize("channels,image_size", CONFIGS)
@pytest.mark.parametrize("name", ["convnet3", "vgg11", "alexnet", "resnet18", "resnet10_ap"])
def test_models_trace_with_torch_fx(name, channels, image_size):
    """torch.fx traces every model (the padding of small inputs is one node), and the
    traced module computes what the model does (torch's own pooling: the same values up
    to the order of AvgPool2x2's four additions)."""
    import torch.fx

    torch.manual_seed(0)
    model = create_model(name, 10, channels, image_size).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, channels, image_size, image_size)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=1e-5)
    if name in ("convnet3", "vgg11", "alexnet"):
        assert sum(node.target is models._pad_to_min for node in traced.graph.nodes) == 1
