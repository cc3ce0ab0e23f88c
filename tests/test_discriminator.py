"""The AC-WGAN-GP discriminator: its layout-agnostic LayerNorm and the gradient penalty."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from synthsets import preferred_memory_format
from synthsets.discriminator import Discriminator, SampleLayerNorm, gradient_penalty

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
def test_gradient_penalty_is_the_same_in_either_layout(channels, size, device):
    """Same scores, penalty and parameter gradients whichever layout D and its inputs are in
    (float64, where the different summation orders leave no visible difference)."""
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
