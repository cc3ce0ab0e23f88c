"""2x2 average pooling: ``synthsets.models.AvgPool2x2`` against ``torch.nn.AvgPool2d(2)``.

``AvgPool2x2`` is the pooling layer of ConvNet and of the average-pool ResNets. On CPU it
pools by adding neighbouring rows, then neighbouring columns, instead of calling torch's
pooling kernels; elsewhere it is ``nn.AvgPool2d``. Three measurements, each variant
timed in the same run, round by round:

* the layer alone, forward and forward + backward, on the activations of ConvNet-3
  (width 128, batch 128) at 32, 16 and 8 pixels, in the standard layout and in
  channels_last;
* a ConvNet-3 training step (batch 128, 3x32x32, SGD), the model as ``create_model``
  builds it (``AvgPool2x2``, each ReLU + pooling pair one autograd node while it trains)
  vs the same model with ``nn.AvgPool2d`` layers, and with ``AvgPool2x2`` layers run one
  by one (``AvgPool2x2, unfused``);
* a test pass of ConvNet-3 over 10,000 1x28x28 images in batches of 1000, as
  ``synthsets.evaluate`` runs it.

The script also checks that both give the same outputs (up to the order of the four
additions) and the same gradients.

    python -m benchmarks.pooling [--device cpu] [--threads 1] [--tune-malloc] [--tiny]
"""

from __future__ import annotations

import sys

if not __package__:  # run as a file (python benchmarks/pooling.py): import as the package, from this checkout
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from typing import Any, Callable, Sequence

import torch
from torch import nn

from synthsets.evaluate import test_accuracy
from synthsets.data import RealSplit
from synthsets.models import AvgPool2x2

from . import _common as C

LAYOUTS = {"standard": torch.contiguous_format, "channels_last": torch.channels_last}


def layer_fns(shape: Sequence[int], layout: str, device: torch.device) -> dict[str, dict[str, Callable[[], Any]]]:
    """Forward and forward+backward closures of both layers on one activation."""
    x = torch.randn(*shape, device=device).contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, device=device)
    grad = grad.contiguous(memory_format=LAYOUTS[layout])
    layers = {"nn.AvgPool2d": nn.AvgPool2d(2, 2), "AvgPool2x2": AvgPool2x2()}

    def forward(layer: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return layer(x)
        return run

    def forward_backward(layer: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            return torch.autograd.grad(layer(x), x, grad)
        return run

    return {
        "forward": {name: forward(layer) for name, layer in layers.items()},
        "forward+backward": {name: forward_backward(layer) for name, layer in layers.items()},
    }


def check_same(device: torch.device) -> dict[str, float]:
    """Largest output and gradient differences between the two layers, both layouts."""
    worst = {"output_max_abs": 0.0, "grad_max_abs": 0.0}
    for layout in LAYOUTS.values():
        x = torch.randn(8, 16, 32, 32, device=device).contiguous(memory_format=layout).requires_grad_()
        a, b = nn.AvgPool2d(2, 2)(x), AvgPool2x2()(x)
        g = torch.randn_like(a)
        worst["output_max_abs"] = max(worst["output_max_abs"], (a - b).abs().max().item())
        ga, gb = torch.autograd.grad(a, x, g)[0], torch.autograd.grad(b, x, g)[0]
        worst["grad_max_abs"] = max(worst["grad_max_abs"], (ga - gb).abs().max().item())
    return worst


def convnet(device: torch.device, pooling: str, channels: int = 3, size: int = 32) -> nn.Module:
    """ConvNet-3 pooling with ``nn.AvgPool2d``, ``AvgPool2x2`` (as built) or ``AvgPool2x2, unfused``."""
    torch.manual_seed(0)
    model = C.training_model("convnet3", 10, device, channels, size)
    if pooling == "nn.AvgPool2d":
        return C.stock_layers(model)
    return C.unfused_blocks(model) if pooling == "AvgPool2x2, unfused" else model


def build_parser():
    p = C.base_parser("pooling", __doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="batch of the layer and training-step rows (default 128)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device = C.setup(args)
    batch = args.batch or (8 if args.tiny else 128)
    width = 16 if args.tiny else 128
    repeats = args.repeats or (1 if args.tiny else 7)
    min_seconds = 0.0 if args.tiny else 0.2

    same = check_same(device)
    print(f"same outputs (max abs difference {same['output_max_abs']:.2g}) and gradients ({same['grad_max_abs']:.2g})")

    layer_rows = []
    for size in (32, 16, 8):
        for layout in LAYOUTS:
            for direction, variants in layer_fns((batch, width, size, size), layout, device).items():
                times = C.interleaved(variants, device, repeats, min_seconds=min_seconds)
                base = times["nn.AvgPool2d"]
                for name, t in times.items():
                    layer_rows.append({
                        "size": size, "layout": layout, "direction": direction, "layer": name,
                        "ms": round(C.median(t) * 1000, 3), "speedup": round(C.ratio(base, t), 2),
                    })
    C.print_table(f"Average pooling 2x2, activations ({batch}, {width}, size, size), {device}", layer_rows, [
        ("size", "size", ""), ("layout", "layout", ""), ("direction", "pass", ""), ("layer", "layer", ""),
        ("ms", "ms", ".2f"), ("speedup", "speed-up", ".2f"),
    ])

    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steps = {
        name: (lambda step: (lambda: step(x, y)))(C.train_step_fn(model, C.sgd(model)))
        for name, model in ((name, convnet(device, name)) for name in ("nn.AvgPool2d", "AvgPool2x2", "AvgPool2x2, unfused"))
    }
    times = C.interleaved(steps, device, repeats)
    n_test = 200 if args.tiny else 10_000
    test = RealSplit(torch.randn(n_test, 1, 28, 28), torch.randint(0, 10, (n_test,)))
    tests = {
        name: (lambda model: (lambda: test_accuracy(model, test, 1000)))(model)
        for name, model in ((name, convnet(device, name, 1, 28)) for name in ("nn.AvgPool2d", "AvgPool2x2"))
    }
    test_times = C.interleaved(tests, device, max(1, repeats // 2))
    model_rows = []
    for what, measured in (("ConvNet-3 training step (batch %d, 3x32x32)" % batch, times),
                           ("ConvNet-3 test pass (%d images 1x28x28, batch 1000)" % n_test, test_times)):
        for name, t in measured.items():
            model_rows.append({
                "workload": what, "layer": name, "ms": round(C.median(t) * 1000, 1),
                "speedup": round(C.ratio(measured["nn.AvgPool2d"], t), 2),
            })
    C.print_table(f"ConvNet-3 with either pooling layer, {device}", model_rows, [
        ("workload", "workload", ""), ("layer", "pooling layer", ""), ("ms", "ms", ".1f"), ("speedup", "speed-up", ".2f"),
    ])
    results = {"layer": layer_rows, "models": model_rows, "same": same}
    C.write_json(args.json, "pooling", args, device, results)
    return results


if __name__ == "__main__":
    main()
