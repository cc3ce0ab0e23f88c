"""The AC-WGAN-GP discriminator used to train DiM generators (stage 1 and stage 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STRIDES = (1, 2, 1, 2, 1, 1, 1, 2)


class SampleLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm([C, H, W])``: each sample normalised over all its values, with an
    elementwise affine map. It also takes channels_last input as it is, without copying
    it to the standard layout: the mean and variance of a sample do not depend on the
    order of its values, so it normalises the (N, H, W, C) view with the affine
    parameters permuted to match, and returns a channels_last result."""

    layout_agnostic = True  # synthsets.preferred_memory_format may pick channels_last

    def forward(self, x: Tensor) -> Tensor:
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if channels_last and len(self.normalized_shape) == 3:
            c, h, w = self.normalized_shape
            weight = self.weight.permute(1, 2, 0) if self.weight is not None else None
            bias = self.bias.permute(1, 2, 0) if self.bias is not None else None
            out = F.layer_norm(x.permute(0, 2, 3, 1), (h, w, c), weight, bias, self.eps)
            return out.permute(0, 3, 1, 2)
        return super().forward(x)


def _out_size(size: int, stride: int) -> int:
    return (size + 2 - 3) // stride + 1


class Discriminator(nn.Module):
    """Eight Conv(k3) + LayerNorm(C,H,W) + LeakyReLU layers (strides 1,2,1,2,1,1,1,2),
    MaxPool(4), then a realness head (1) and a class head (``num_classes``)."""

    def __init__(self, num_classes: int, channels: int = 3, image_size: int = 32, width: int = 196) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, in_ch = image_size, channels
        for stride in STRIDES:
            size = _out_size(size, stride)
            layers += [nn.Conv2d(in_ch, width, 3, stride, 1), SampleLayerNorm([width, size, size]), nn.LeakyReLU(0.2)]
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
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
