"""Tests for synthsets.augment (DSA and CutMix)."""

from __future__ import annotations

import pytest
import torch

from synthsets.augment import DSA, VALID_OPS, DSAParams, _draw, cutmix, parse_strategy

FULL = "color_crop_cutout_flip_scale_rotate"


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def rand_images(n: int = 8, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed)) * 2 - 1


# ----------------------------------------------------------------------------- basics


@pytest.mark.parametrize("strategy", [FULL, "color_crop", "flip", "cutout", "scale_rotate"])
@pytest.mark.parametrize("siamese", [False, True])
def test_shape_dtype_device_preserved(strategy: str, siamese: bool) -> None:
    for dtype in (torch.float32, torch.float64):
        x = rand_images(5, 3, 12, 20).to(dtype)
        out = DSA(strategy)(x, generator=gen(1), siamese=siamese)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("strategy", ["none", "None", "", "  "])
def test_identity_strategies(strategy: str) -> None:
    x = rand_images()
    dsa = DSA(strategy)
    assert dsa.ops == ()
    assert torch.equal(dsa(x), x)
    a, b = dsa.pair(x, x + 1)
    assert torch.equal(a, x) and torch.equal(b, x + 1)


def test_parse_strategy_order_and_errors() -> None:
    assert DSA().ops == ("flip", "color", "crop", "scale", "rotate", "cutout")
    assert parse_strategy("crop_color") == ("color", "crop")
    assert parse_strategy("cutout_flip") == ("flip", "cutout")
    assert DSA("rotate_color").strategy == "color_rotate"
    with pytest.raises(ValueError, match="blur") as info:
        DSA("color_blur_crop")
    for op in VALID_OPS:
        assert op in str(info.value)
    with pytest.raises(TypeError):
        DSA(["color"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown DSA op 'colour' in strategy 'colour' \(did you mean 'color'\?\)"):
        DSA("colour")
    for joined in ("color,crop", "color-crop", "color crop"):
        with pytest.raises(ValueError, match=r"\(join ops with '_', as in 'color_crop'\)"):
            DSA(joined)


def test_params_validation_and_repr() -> None:
    with pytest.raises(ValueError):
        DSAParams(scale=0.9)
    with pytest.raises(ValueError):
        DSAParams(flip_p=1.5)
    with pytest.raises(ValueError):
        DSAParams(brightness=-0.1)
    assert "strategy='color_crop'" in repr(DSA("crop_color"))
    assert "rotate=5.0" in repr(DSA(params=DSAParams(rotate=5.0)))


def test_bad_inputs() -> None:
    dsa = DSA()
    with pytest.raises(ValueError):
        dsa(torch.rand(3, 8, 8))
    with pytest.raises(TypeError):
        dsa(torch.ones(2, 3, 8, 8, dtype=torch.long))


# ----------------------------------------------------------------------------- flip


def test_flip_probability() -> None:
    n = 4000
    img = torch.arange(4.0).view(1, 1, 1, 4).expand(n, 1, 2, 4).contiguous()  # asymmetric
    out = DSA("flip")(img, generator=gen(0))
    flipped = (out == img.flip(-1)).flatten(1).all(1)
    kept = (out == img).flatten(1).all(1)
    assert bool((flipped ^ kept).all()), "every output is either the image or its mirror"
    assert abs(flipped.float().mean().item() - 0.5) < 0.05
    # flip_p is honoured
    out = DSA("flip", DSAParams(flip_p=0.2))(img, generator=gen(1))
    rate = (out == img.flip(-1)).flatten(1).all(1).float().mean().item()
    assert abs(rate - 0.2) < 0.05


# ----------------------------------------------------------------------------- colour


def test_brightness_range_and_spread() -> None:
    # constant single-channel images: saturation and contrast are exact identities
    n = 2000
    x = torch.full((n, 1, 4, 4), 0.25)
    out = DSA("color")(x, generator=gen(0))
    shift = out - x
    per_image = shift.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    b = per_image[:, 0]
    assert b.min() >= -0.5 - 1e-6 and b.max() <= 0.5 + 1e-6
    assert b.min() < -0.45 and b.max() > 0.45
    assert abs(b.mean().item()) < 0.03
    # custom strength
    b2 = (DSA("color", DSAParams(brightness=0.1))(x, generator=gen(0)) - x).flatten(1)[:, 0]
    assert b2.abs().max() <= 0.1 + 1e-6 and b2.abs().max() > 0.09


def test_saturation_range() -> None:
    n = 1000
    x = rand_images(n, 3, 4, 4, seed=3)
    dsa = DSA("color", DSAParams(brightness=0.0, contrast=0.0))
    out = dsa(x, generator=gen(0))
    m_in, m_out = x.mean(1, keepdim=True), out.mean(1, keepdim=True)
    assert torch.allclose(m_in, m_out, atol=1e-5), "saturation keeps the per-pixel mean"
    ratio = ((out - m_out).flatten(1) * (x - m_in).flatten(1)).sum(1) / (x - m_in).flatten(1).pow(2).sum(1)
    # out - mean == s * (x - mean) with one s per image
    assert torch.allclose(out - m_out, ratio.view(-1, 1, 1, 1) * (x - m_in), atol=1e-5)
    assert ratio.min() >= -1e-5 and ratio.max() <= 2 + 1e-5
    assert ratio.min() < 0.05 and ratio.max() > 1.95


def test_contrast_range() -> None:
    # single channel: saturation is the identity; brightness switched off
    n = 1000
    x = rand_images(n, 1, 4, 4, seed=4)
    out = DSA("color", DSAParams(brightness=0.0))(x, generator=gen(0))
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out.mean(dim=(1, 2, 3), keepdim=True), m, atol=1e-5)
    c = ((out - m) * (x - m)).flatten(1).sum(1) / (x - m).flatten(1).pow(2).sum(1)
    assert torch.allclose(out - m, c.view(-1, 1, 1, 1) * (x - m), atol=1e-5)
    assert c.min() >= 0.5 - 1e-5 and c.max() <= 1.5 + 1e-5
    assert c.min() < 0.55 and c.max() > 1.45


# ----------------------------------------------------------------------------- cutout


def test_cutout_quarter_square() -> None:
    n, h = 500, 32
    x = torch.ones(n, 2, h, h)
    out = DSA("cutout")(x, generator=gen(0))
    assert torch.equal(out[:, 0], out[:, 1]), "same square in every channel"
    zero = out[:, 0] == 0
    assert bool(((out == 0) | (out == 1)).all())
    counts = zero.flatten(1).sum(1)
    assert counts.max() == (h // 2) ** 2, "a fully inside square covers exactly 1/4"
    assert (counts == (h // 2) ** 2).float().mean() > 0.2  # centre in [8, 24]^2 for ~1/4 of draws
    # the zeros always form one axis-aligned rectangle (the clipped square)
    rows, cols = zero.any(2), zero.any(1)
    assert torch.equal(rows.sum(1) * cols.sum(1), counts)
    fraction = counts.float().mean().item() / h**2
    assert 0.12 < fraction < 0.25


# ----------------------------------------------------------------------------- geometric


def _shift_zero_pad(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_crop_is_integer_translation_up_to_one_eighth() -> None:
    n, h = 40, 16
    x = rand_images(n, 2, h, h, seed=5)
    out = DSA("crop")(x, generator=gen(0))
    limit = h // 8
    seen = set()
    for i in range(n):
        matches = [
            (dy, dx)
            for dy in range(-limit, limit + 1)
            for dx in range(-limit, limit + 1)
            if torch.allclose(out[i], _shift_zero_pad(x[i], dy, dx), atol=1e-5)
        ]
        assert len(matches) == 1, f"sample {i} is not a translation by <= {limit} px"
        seen.add(matches[0])
    assert len(seen) > 10, "shifts vary between samples"
    assert any(abs(dy) == limit or abs(dx) == limit for dy, dx in seen)


@pytest.mark.parametrize("op", ["scale", "rotate", "scale_rotate", "crop_scale_rotate"])
def test_geometric_keeps_constant_interior(op: str) -> None:
    n, h = 64, 32
    x = torch.full((n, 1, h, h), 0.7)
    out = DSA(op)(x, generator=gen(0))
    q = h // 4
    assert torch.allclose(out[..., q:-q, q:-q], x[..., q:-q, q:-q], atol=1e-5)
    assert out.min() >= -1e-6 and out.max() <= 0.7 + 1e-5
    assert (out - x).abs().amax(dim=(1, 2, 3)).max() > 0.1, "borders change (zero padding)"


def test_geometric_draw_ranges() -> None:
    x = torch.zeros(1, 1, 16, 16)
    p = DSAParams()
    scale = _draw("scale", 5000, x, gen(0), p)
    sx, sy = scale[:, 0, 0], scale[:, 1, 1]
    for s in (sx, sy):
        assert s.min() >= 1 / 1.2 - 1e-6 and s.max() <= 1.2 + 1e-6
        assert s.min() < 1 / 1.2 + 0.01 and s.max() > 1.2 - 0.01
    assert not torch.allclose(sx, sy), "axes scale independently"
    rot = _draw("rotate", 5000, x, gen(0), p)
    angle = torch.rad2deg(torch.atan2(rot[:, 1, 0], rot[:, 0, 0]))
    assert angle.abs().max() <= 15 + 1e-4 and angle.abs().max() > 14.5
    crop = _draw("crop", 5000, x, gen(0), p)
    shift_px = crop[:, :, 2] * 16 / 2
    assert torch.allclose(shift_px, shift_px.round(), atol=1e-5)
    assert shift_px.abs().max() == 2


def test_rotate_moves_off_centre_point_on_circle() -> None:
    # a point rotated about the centre keeps its distance and turns by <= 15 degrees
    h = 33
    x = torch.zeros(200, 1, h, h)
    x[:, :, 16, 28] = 1.0  # 12 px right of the centre pixel (16, 16)
    out = DSA("rotate")(x, generator=gen(0))
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(h, dtype=torch.float32).view(1, 1, h)
    mass = out[:, 0].sum((1, 2))
    cy = (out[:, 0] * ys).sum((1, 2)) / mass - 16
    cx = (out[:, 0] * xs).sum((1, 2)) / mass - 16
    radius = torch.sqrt(cx**2 + cy**2)
    angle = torch.rad2deg(torch.atan2(cy, cx))
    assert ((radius - 12).abs() < 0.5).all()
    assert angle.abs().max() <= 15.5 and angle.abs().max() > 12


def test_rotate_is_rigid_on_non_square_images() -> None:
    h, w = 33, 57
    x = torch.zeros(100, 1, h, w)
    x[:, :, 16 + 10, 28] = 1.0  # 10 px below the centre pixel (16, 28)
    out = DSA("rotate")(x, generator=gen(1))
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    mass = out[:, 0].sum((1, 2))
    cy = (out[:, 0] * ys).sum((1, 2)) / mass - 16
    cx = (out[:, 0] * xs).sum((1, 2)) / mass - 28
    assert ((torch.sqrt(cx**2 + cy**2) - 10).abs() < 0.5).all()


# ----------------------------------------------------------------------------- modes


def test_siamese_shares_one_draw() -> None:
    x = rand_images(1, 3, 16, 16).expand(16, -1, -1, -1).contiguous()
    out = DSA()(x, generator=gen(0), siamese=True)
    assert torch.equal(out, out[:1].expand_as(out))


def test_per_sample_differs() -> None:
    x = rand_images(1, 3, 16, 16).expand(16, -1, -1, -1).contiguous()
    out = DSA()(x, generator=gen(0))
    flat = out.flatten(1)
    dist = torch.cdist(flat, flat) + torch.eye(16) * 1e3
    assert dist.min() > 1e-3, "identical inputs get different per-sample outputs"


@pytest.mark.parametrize("siamese", [True, False])
def test_pair_identical_inputs(siamese: bool) -> None:
    x = rand_images(8, 3, 16, 16)
    a, b = DSA().pair(x, x.clone(), generator=gen(0), siamese=siamese)
    assert torch.equal(a, b)
    if not siamese:
        assert not torch.allclose(a[0], a[1])


@pytest.mark.parametrize("siamese", [True, False])
def test_pair_matches_forward_with_same_seed(siamese: bool) -> None:
    dsa = DSA()
    a, b = rand_images(6, seed=1), rand_images(6, seed=2)
    pa, pb = dsa.pair(a, b, generator=gen(7), siamese=siamese)
    assert torch.equal(pa, dsa(a, generator=gen(7), siamese=siamese))
    assert torch.equal(pb, dsa(b, generator=gen(7), siamese=siamese))


def test_pair_siamese_shares_geometric_choice() -> None:
    # several seeds so that every crop/scale/rotate choice is exercised
    for seed in range(8):
        img = rand_images(1, 1, 16, 16, seed=seed)
        a, b = DSA("crop_scale_rotate").pair(img, img.expand(3, -1, -1, -1), generator=gen(seed))
        assert torch.equal(a.expand(3, -1, -1, -1), b)


def test_pair_errors() -> None:
    dsa = DSA()
    with pytest.raises(ValueError):
        dsa.pair(rand_images(4), rand_images(5), siamese=False)
    a, b = dsa.pair(rand_images(4), rand_images(5), siamese=True)  # allowed
    assert a.shape[0] == 4 and b.shape[0] == 5
    with pytest.raises(ValueError):
        dsa.pair(rand_images(4, h=16), rand_images(4, h=8))


# ----------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("siamese", [False, True])
def test_seed_reproducibility(siamese: bool) -> None:
    x = rand_images()
    dsa = DSA()
    o1 = dsa(x, generator=gen(123), siamese=siamese)
    o2 = dsa(x, generator=gen(123), siamese=siamese)
    o3 = dsa(x, generator=gen(124), siamese=siamese)
    assert torch.equal(o1, o2)
    assert not torch.allclose(o1, o3)
    torch.manual_seed(5)
    g1 = dsa(x)
    torch.manual_seed(5)
    assert torch.equal(g1, dsa(x)), "the global RNG is used without a generator"


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("op", [*VALID_OPS, FULL])
@pytest.mark.parametrize("siamese", [False, True])
def test_gradients_flow(op: str, siamese: bool) -> None:
    x = rand_images(4, 3, 16, 16).requires_grad_(True)
    out = DSA(op)(x, generator=gen(0), siamese=siamese)
    (out * torch.linspace(0.5, 1.5, out.numel()).view_as(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all(), "every sample receives gradient"


def test_gradients_flow_pair() -> None:
    a = rand_images(4, seed=1).requires_grad_(True)
    b = rand_images(4, seed=2).requires_grad_(True)
    pa, pb = DSA().pair(a, b, generator=gen(0))
    (pa - pb).pow(2).sum().backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- cutmix


def test_cutmix_mixes_consistently() -> None:
    n, h = 16, 32
    y = torch.arange(n)
    x = y.float().view(n, 1, 1, 1).expand(n, 3, h, h).contiguous()  # image i is constant i
    for seed in range(20):
        mixed, ya, yb, lam = cutmix(x, y, beta=1.0, generator=gen(seed))
        assert mixed.shape == x.shape and 0.0 <= lam <= 1.0
        assert torch.equal(ya, y)
        assert sorted(yb.tolist()) == list(range(n)), "y_b is a permutation of y"
        from_a = (mixed == ya.float().view(n, 1, 1, 1)).flatten(1)
        from_b = (mixed == yb.float().view(n, 1, 1, 1)).flatten(1)
        assert bool((from_a | from_b).all())
        # pixels pasted from the partner image: exactly the fraction 1 - lam
        differs = ya != yb
        pasted = (~from_a[differs]).float().mean(1)
        assert torch.allclose(pasted, torch.full_like(pasted, 1 - lam), atol=1e-6)


def test_cutmix_reproducible_and_grad() -> None:
    x = rand_images(8).requires_grad_(True)
    y = torch.arange(8)
    m1, _, yb1, l1 = cutmix(x, y, generator=gen(3))
    m2, _, yb2, l2 = cutmix(x, y, generator=gen(3))
    assert torch.equal(m1, m2) and torch.equal(yb1, yb2) and l1 == l2
    m1.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.sum().item() == pytest.approx(x.numel())


def test_cutmix_lam_distribution() -> None:
    x, y = torch.zeros(2, 1, 32, 32), torch.arange(2)
    lams = [cutmix(x, y, beta=1.0, generator=gen(s))[3] for s in range(300)]
    mean = sum(lams) / len(lams)
    assert 0.4 < mean < 0.75  # Beta(1,1) has mean 0.5; box clipping raises lam a little
    assert min(lams) < 0.2 and max(lams) > 0.9
    with pytest.raises(ValueError):
        cutmix(x, y, beta=0.0)
    with pytest.raises(ValueError):
        cutmix(x, torch.arange(3))


# ----------------------------------------------------------------------------- device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_and_device() -> None:
    x = rand_images().cuda()
    dsa = DSA()
    o1 = dsa(x, generator=gen(0, "cuda"))
    o2 = dsa(x, generator=gen(0, "cuda"))
    assert o1.device == x.device and torch.equal(o1, o2)
    a, b = dsa.pair(x, x.clone(), generator=gen(1, "cuda"), siamese=False)
    assert torch.equal(a, b)
    m, ya, yb, lam = cutmix(x, torch.arange(8, device="cuda"), generator=gen(2, "cuda"))
    assert m.device == x.device and yb.device == x.device and 0 <= lam <= 1
    with pytest.raises(ValueError, match="generator"):
        dsa(x, generator=gen(0, "cpu"))


def test_cpu_grid_matches_torch_affine_grid() -> None:
    import torch.nn.functional as F

    from synthsets.augment import _affine_grid

    theta = torch.randn(7, 2, 3)
    for h, w in ((32, 32), (28, 28), (16, 24)):
        ours = _affine_grid(theta, h, w)
        ref = F.affine_grid(theta, [7, 1, h, w], align_corners=False)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("siamese", [False, True])
def test_cpu_chunks_give_the_same_images_and_gradients(siamese: bool, monkeypatch) -> None:
    import synthsets.augment as augment

    x = torch.randn(150, 3, 16, 16, requires_grad=True)  # 64 + 64 + 22 images
    outputs = {}
    for chunk in (10**9, 64):
        monkeypatch.setattr(augment, "CPU_CHUNK", chunk)
        x.grad = None
        out = DSA()(x, generator=torch.Generator().manual_seed(4), siamese=siamese)
        (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        outputs[chunk] = (out.detach(), x.grad.clone())
    torch.testing.assert_close(outputs[64][0], outputs[10**9][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(outputs[64][1], outputs[10**9][1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("field, value", [("brightness", float("nan")), ("rotate", "15"), ("scale", float("inf")),
                                          ("flip_p", None), ("cutout", True)])
def test_dsa_params_must_be_finite_numbers(field, value):
    with pytest.raises(ValueError, match=rf"DSAParams\.{field} must be a finite number, got {value!r}"):
        DSAParams(**{field: value})


def test_cutmix_labels_must_be_a_tensor():
    with pytest.raises(TypeError, match=r"y must be a tensor of labels \(torch.as_tensor\(y\)\), got list"):
        cutmix(torch.rand(4, 3, 8, 8), [0, 1, 2, 3])
