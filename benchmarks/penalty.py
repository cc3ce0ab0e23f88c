"""The discriminator step with the WGAN-GP gradient penalty: the library's second derivatives against torch's.

The discriminator of ``synthsets.distill`` is built from three layers with their own
second derivative (the gradient penalty's double backward):

* ``synthsets.discriminator.PenaltyConv2d``: an ``nn.Conv2d`` whose second derivative uses
  ordinary convolution kernels, and which skips the weight gradients in the penalty's own
  ``autograd.grad`` pass. torch differentiates its convolution backward with a
  convolution of batch-transposed tensors whose kernel is as large as the feature map;
* ``synthsets.discriminator.SampleLayerNorm``: a layer norm whose second derivative takes
  about half the passes over memory of torch's generic formula;
* ``synthsets.discriminator.PenaltyLeakyReLU``: a leaky ReLU whose second derivative
  leaves out the zero tensor torch's formula builds and adds at every layer.

Three discriminators, each timed in the same run, round by round: ``torch`` (nn.Conv2d,
torch's layer-norm second derivative and nn.LeakyReLU), ``PenaltyConv2d`` (the fast
convolutions only) and ``library`` (all three, as the library trains on a CPU and in
CUDA graphs). Two workloads:

* ``penalty``: ``gradient_penalty(D, real, fake)`` and its backward;
* ``D step``: the whole discriminator loss of a distillation step (scores of real and
  fake, both class losses, 10 x the penalty) and its backward.

Each backward asks for the parameters' gradients only (``backward(inputs=...)``), as the
distillation's D step does, so no variant computes the gradient of the interpolated images.

Two discriminator sizes: ``cpu-small`` (width 32, 1x28x28, batch 64) and ``paper`` (width
196, 3x32x32, batch 64 on CUDA, 16 on CPU to keep the run short; ``--batch`` sets both).
The discriminators are in the layout the library trains them in (channels_last on CPU);
on CUDA the script times both layouts (``--layouts``), to inform the library's choice there.
On CUDA the library uses the three layers only in steps replayed as CUDA graphs (eagerly,
their Python overhead outweighs what they save); this script times them eagerly, with
``synthsets.discriminator.CUSTOM_SECOND_ORDER_IN_CUDA_EAGER`` switched on while it runs.
Before timing, the script compares one D step of both layers from the same weights and
inputs (gradients within float noise).

    python -m benchmarks.penalty [--device cpu] [--threads 1] [--tune-malloc] [--tiny]
"""

from __future__ import annotations

import sys

if not __package__:  # run as a file (python benchmarks/penalty.py): import as the package, from this checkout
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from synthsets.discriminator import Discriminator, gradient_penalty
from synthsets.models import preferred_memory_format

from . import _common as C

#: discriminator variants -> (fast convolutions, fast layer-norm and leaky-ReLU second derivatives)
LAYERS = {"torch": (False, False), "PenaltyConv2d": (True, False), "library": (True, True)}
#: name -> (width, channels, image size)
SIZES = {"cpu-small": (32, 1, 28), "paper": (196, 3, 32), "tiny": (8, 1, 28)}


LAYOUTS = {"standard": torch.contiguous_format, "channels_last": torch.channels_last}


def discriminator(layer: str, size: str, device: torch.device | str, seed: int = 0, layout: str | None = None) -> nn.Module:
    """The distillation's discriminator, variant ``layer`` (see ``LAYERS``), in ``layout``
    (default: the library's layout for the device)."""
    width, channels, image_size = SIZES[size]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        D = Discriminator(10, channels, image_size, width).to(device)
    fast_convolutions, fast_norms = LAYERS[layer]
    if not fast_convolutions:
        C.stock_convolutions(D)
    if not fast_norms:
        C.torch_norm_second_order(D)
        C.stock_activations(D)
    return D.to(memory_format=LAYOUTS[layout] if layout else preferred_memory_format(D, device))


def batch_of(size: str, batch: int, device: torch.device | str, seed: int = 0, layout: str | None = None) -> tuple[torch.Tensor, ...]:
    _, channels, image_size = SIZES[size]
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(batch, channels, image_size, image_size, generator=gen).clamp_(-1, 1)
    fake = torch.randn(batch, channels, image_size, image_size, generator=gen).clamp_(-1, 1)
    labels = torch.arange(batch) % 10
    memory_format = LAYOUTS[layout] if layout else torch.preserve_format
    return (real.to(device, memory_format=memory_format), fake.to(device, memory_format=memory_format),
            labels.to(device))


def d_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The discriminator loss of a distillation step (as ``Distiller`` on CPU: two passes)."""
    (score_real, logits_real), (score_fake, logits_fake) = D(real), D(fake)
    return (
        score_fake.mean() - score_real.mean()
        + F.cross_entropy(logits_real, labels) + F.cross_entropy(logits_fake, labels)
        + 10 * gradient_penalty(D, real, fake)
    )


def workload(device: str, layer: str, size: str, batch: int, what: str, layout: str | None = None) -> Callable[[], Any]:
    """One call of the workload ``what`` ("penalty" or "D step"); module level for the memory probe."""
    D = discriminator(layer, size, device, layout=layout)
    real, fake, labels = batch_of(size, batch, device, layout=layout)
    parameters = list(D.parameters())

    def run() -> None:
        D.zero_grad(set_to_none=True)
        with C.custom_layers_in_cuda_eager():  # the layers themselves (a no-op off CUDA)
            loss = gradient_penalty(D, real, fake) if what == "penalty" else d_loss(D, real, fake, labels)
            loss.backward(inputs=parameters)  # the parameters' gradients only, as the Distiller's D step

    return run


def check_same(device: torch.device, size: str, batch: int) -> dict[str, float]:
    """Largest relative gradient difference (per tensor, by norm) between the library's
    discriminator and torch's after one D step from the same weights, inputs and mixing weights."""
    grads = []
    for layer in ("torch", "library"):
        D = discriminator(layer, size, device)
        real, fake, labels = batch_of(size, batch, device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), C.custom_layers_in_cuda_eager():
            torch.manual_seed(1)  # the same penalty mixing weights
            d_loss(D, real, fake, labels).backward()
        grads.append([p.grad for p in D.parameters()])
    worst = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(*grads))
    return {"grad_max_rel": worst}


def build_parser():
    p = C.base_parser("penalty", __doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", choices=("cpu-small", "paper"), default=None,
                   help="discriminator sizes (default: both)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64; the paper size on CPU: 16)")
    p.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=None,
                   help="memory layouts of the discriminator and its inputs (default: the library's for the "
                        "device; on CUDA both, to inform the layout choice there)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device = C.setup(args)
    cpu = device.type == "cpu"
    sizes = ["tiny"] if args.tiny else (args.sizes or ["cpu-small", "paper"])
    repeats = args.repeats or (1 if args.tiny else 7)
    layouts = args.layouts or (["channels_last"] if cpu else list(LAYOUTS))
    rows = []
    checks = {}
    for size in sizes:
        batch = args.batch or (4 if args.tiny else 16 if (cpu and size == "paper") else 64)
        checks[size] = check_same(device, size, min(batch, 8))
        print(f"{size}: same gradients after one D step (largest relative difference {checks[size]['grad_max_rel']:.2g})")
        for layout in layouts:
            for what in ("penalty", "D step"):
                variants = {layer: workload(str(device), layer, size, batch, what, layout) for layer in LAYERS}
                times = C.interleaved(variants, device, repeats, min_seconds=0.0 if args.tiny else 0.1 * (not cpu))
                for layer, t in times.items():
                    row = {
                        "size": size, "batch": batch, "layout": layout, "workload": what, "layer": layer,
                        "ms": round(C.median(t) * 1000, 2), "speedup": round(C.ratio(times["torch"], t), 3),
                    }
                    row.update(C.maybe_memory(args, what == "D step", workload, layer=layer, size=size, batch=batch,
                                              what=what, layout=layout))
                    rows.append(row)
    C.print_table(f"Discriminator with the gradient penalty, {device}", rows, [
        ("size", "size", ""), ("batch", "batch", ""), ("layout", "layout", ""), ("workload", "workload", ""),
        ("layer", "second derivatives", ""),
        ("ms", "ms", ".1f"), ("speedup", "speed-up", ".2f"), ("peak_mb", "peak MB", ".0f"),
    ])
    results = {"rows": rows, "same": checks}
    C.write_json(args.json, "penalty", args, device, results)
    return results


if __name__ == "__main__":
    main()
