"""Step time of ``synthsets.distill.Distiller`` (stage 1 and stage 2) against a naive loop.

Variants, both built from the same in-memory synthetic ``RealData`` and the same config:

* ``library``: :class:`synthsets.distill.Distiller` as shipped. It keeps the real data on
  the device and draws batch indices and noise there, runs the discriminator once on
  ``cat([real, fake])`` (valid: the discriminator's LayerNorm normalises each sample on
  its own, so a sample's output does not depend on the rest of the batch) on CUDA,
  returns the step losses as detached device tensors and sums them on the device, with
  one host synchronisation per epoch; on CPU its generator, discriminator and BatchNorm
  pool models run in channels_last, where oneDNN is faster;
* ``naive``: :class:`benchmarks.naive_distill.NaiveDistiller`, the same maths written
  research-code style: real data indexed on the CPU and copied, noise and other random
  draws made on the CPU and copied, small tensors re-created each step, separate
  discriminator passes for real and fake, ``.item()`` on every logged loss every step;
* ``library-stock-conv``: the library with ``nn.Conv2d`` in the discriminator instead of
  ``PenaltyConv2d`` (reported as ``penalty_conv_speedup``);
* ``library-stock-norm``: the library with torch's second derivative of the
  discriminator's layer norms instead of ``SampleLayerNorm``'s (reported as
  ``norm_second_order_speedup``);
* CUDA only: ``library-eager`` (no CUDA graphs, as with several GPUs: the
  discriminator's custom second-derivative layers then stand aside for torch's own),
  ``library-eager-custom`` (the same with those layers forced on) and ``library-cl``
  (generator and discriminator in channels_last, reported as ``channels_last_speedup``).

A step is one generator step with everything around it: the discriminator step, and in
stage 2 the pool model's inner SGD steps and the logits-matching loss. Its time is the
time of ``run_epoch`` (a few steps, the pool model's creation included) over the steps.

Before timing, the script checks on CPU (tiny sizes, in float64) that one stage-1 and one
stage-2 step of each variant from the same seed give the same losses, gradients and
weights, up to float64 rounding (the channels_last generator sums in a different order).

Sizes: ``--preset`` tiny (``--tiny``), cpu-small (default on CPU: width 64, batch 64,
1x28x28 data, ConvNet-3 pool) or paper (default on CUDA: width 196, batch 64, 3x32x32,
the full models pool).

``--breakdown`` (CPU) splits each variant's step into matrix products (convolutions and
matrix multiplies, timed operator by operator) and everything else, and reports the
bound that follows: the library's speed-up if everything but its matrix products were
free, and how much of its other work it may keep at 1.5x.

    python -m benchmarks.distill_step [--device cpu] [--preset cpu-small] [--tiny] [--breakdown]
"""

from __future__ import annotations

import sys

if not __package__:  # run as a file (python benchmarks/distill_step.py): import as the package, from this checkout
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import contextlib
import dataclasses
import time
import unittest.mock
from typing import Any, Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from synthsets import distill
from synthsets.data import RealData, RealSplit
from synthsets.distill import Distiller, DistillConfig, apply_preset

from . import _common as C
from .naive_distill import NaiveDistiller

NUM_CLASSES = 10


def _eager_distiller(config: DistillConfig, real: RealData) -> Distiller:
    return Distiller(dataclasses.replace(config, cuda_graphs=False), real)


def _channels_last_distiller(config: DistillConfig, real: RealData) -> Distiller:
    """The library with its generator and discriminator in channels_last on CUDA as well
    (an experiment: the library uses that layout on CPU only, where it was measured to be
    faster)."""
    trainer = Distiller(config, real)
    for model in (trainer.G, trainer.D):  # Adam's state is created lazily, in the same layout
        model.to(memory_format=torch.channels_last)
    return trainer


def _stock_conv_distiller(config: DistillConfig, real: RealData) -> Distiller:
    """The library with torch's own ``nn.Conv2d`` in the discriminator instead of
    ``PenaltyConv2d``: what that layer's double backward gains, in the same run."""
    trainer = Distiller(config, real)
    C.stock_convolutions(trainer.D)
    return trainer


def _stock_norm_distiller(config: DistillConfig, real: RealData) -> Distiller:
    """The library with torch's own second derivative of the discriminator's layer norms:
    what ``SampleLayerNorm``'s gains, in the same run."""
    trainer = Distiller(config, real)
    C.torch_norm_second_order(trainer.D)
    return trainer


class _EagerCustomDistiller:
    """The library without CUDA graphs, with the custom layers forced on in every epoch:
    what leaving them to graph capture saves."""

    def __init__(self, config: DistillConfig, real: RealData) -> None:
        self.trainer = _eager_distiller(config, real)

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        with C.custom_layers_in_cuda_eager():
            return self.trainer.run_epoch(epoch)

    def __getattr__(self, name: str) -> Any:  # the rest is the trainer's
        if name == "trainer":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.trainer, name)


VARIANTS: dict[str, Callable[[DistillConfig, RealData], Any]] = {
    "library": Distiller,  # CUDA: every step replayed as a CUDA graph
    "library-eager": _eager_distiller,  # CUDA only: the same code without graphs
    "library-cl": _channels_last_distiller,  # CUDA only: generator and discriminator in channels_last
    "library-eager-custom": _EagerCustomDistiller,  # CUDA only: eager, D's custom layers forced on
    "library-stock-conv": _stock_conv_distiller,  # the discriminator with nn.Conv2d's double backward
    "library-stock-norm": _stock_norm_distiller,  # ... with torch's layer-norm double backward
    "naive": NaiveDistiller,
}
#: no graphs on CPU, where G and D are already channels_last and the custom layers always on
CUDA_ONLY = ("library-eager", "library-cl", "library-eager-custom")
#: variants compared with the library itself: JSON key, printed label, and whether the
#: library is the faster one when the ratio is > 1 (else the variant is)
EXPERIMENTS = {
    "library-cl": ("channels_last_speedup", "library-cl (G and D in channels_last) vs library", False),
    "library-stock-conv": (
        "penalty_conv_speedup", "library (PenaltyConv2d) vs library-stock-conv (nn.Conv2d in D)", True,
    ),
    "library-stock-norm": (
        "norm_second_order_speedup",
        "library (SampleLayerNorm) vs library-stock-norm (torch's layer-norm double backward in D)", True,
    ),
}


# -- setup ---------------------------------------------------------------------------------
def synthetic_real(n: int, channels: int, size: int, seed: int = 0) -> RealData:
    """A RealData of random normalised images (10 balanced classes), kept on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, size, size, generator=gen).clamp_(-2, 2)
    labels = torch.arange(n) % NUM_CLASSES
    return RealData(
        name="synthetic",
        train=RealSplit(images, labels),
        test=None,
        classes=[str(i) for i in range(NUM_CLASSES)],
        channels=channels,
        image_size=size,
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )


def make_config(preset: str, device: str, steps1: int, steps2: int, seed: int = 0) -> DistillConfig:
    base = DistillConfig(preset=preset, device=device, progress=False, out="unused-benchmark-run", seed=seed)
    config = apply_preset(base)
    # stage 1 = epochs [0, 10000), stage 2 after; few steps per epoch
    return dataclasses.replace(
        config, stage1_epochs=10_000, stage2_epochs=10_000, steps_per_epoch=steps1, stage2_steps_per_epoch=steps2
    )


def data_shape(preset: str) -> tuple[int, int]:
    return (3, 32) if preset == "paper" else (1, 28)


def build_variant(variant: str, device: str, preset: str, steps1: int, steps2: int, n: int, seed: int = 0):
    channels, size = data_shape(preset)
    config = make_config(preset, device, steps1, steps2, seed)
    return VARIANTS[variant](config, synthetic_real(n, channels, size, seed)), config


def mem_epoch(device: str, variant: str, stage: int, preset: str, steps1: int, steps2: int, n: int):
    trainer, config = build_variant(variant, device, preset, steps1, steps2, n)
    epoch = 0 if stage == 1 else config.stage1_epochs

    def run() -> None:
        trainer.run_epoch(epoch)

    return run


# -- equivalence -------------------------------------------------------------------------------
def _compare(a, b) -> dict[str, float]:
    """Largest weight difference (absolute) and gradient difference (relative, per network:
    ``||g_a - g_b|| / ||g_a||``; a per-tensor ratio would be meaningless for the biases
    that BatchNorm cancels, whose gradient is pure rounding noise)."""
    weights, grads, buffers = 0.0, 0.0, 0.0
    for module_a, module_b in ((a.G, b.G), (a.D, b.D)):
        for ba, bb in zip(module_a.buffers(), module_b.buffers()):  # BatchNorm statistics and counters
            buffers = max(buffers, (ba.double() - bb.double()).abs().max().item())
        num = den = 0.0
        for pa, pb in zip(module_a.parameters(), module_b.parameters()):
            weights = max(weights, (pa - pb).abs().max().item())
            if pa.grad is not None and pb.grad is not None:
                num += (pa.grad - pb.grad).double().pow(2).sum().item()
                den += pa.grad.double().pow(2).sum().item()
        grads = max(grads, (num / den) ** 0.5 if den > 0 else 0.0)
    return {"weights_max_abs": weights, "grads_max_rel": grads, "buffers_max_abs": buffers}


def check_equivalence(seed: int = 0) -> dict[str, Any]:
    """One stage-1 and one stage-2 step of each variant from the same seed, on CPU, in
    float64: there the comparison sees the maths, not float32 rounding (which a
    LeakyReLU's kink in the gradient penalty can turn into a visible difference)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # data, models, noise and random draws alike
    try:
        return _check_equivalence(seed)
    finally:
        torch.set_default_dtype(previous)


def _check_equivalence(seed: int) -> dict[str, Any]:
    config = dataclasses.replace(
        make_config("tiny", "cpu", 1, 1, seed), stage1_epochs=1, batch_size=16, width=16, disc_width=16
    )
    real = synthetic_real(64, 1, 28, seed)
    with torch.random.fork_rng(devices=[]):
        trainers = {name: VARIANTS[name](config, real) for name in ("library", "naive")}
        out: dict[str, Any] = {"lr": config.lr}
        records: dict[str, list[dict[str, Any]]] = {name: [] for name in trainers}
        for epoch in (0, 1):  # stage 1, then stage 2
            for name, trainer in trainers.items():
                records[name].append(trainer.run_epoch(epoch))
            ref = trainers["library"]
            for name, trainer in trainers.items():
                if name == "library":
                    continue
                diff = _compare(ref, trainer)
                losses = 0.0
                for key, value in records["library"][-1].items():
                    if key in ("epoch", "stage", "steps", "pool_model"):
                        continue
                    other = records[name][-1][key]
                    losses = max(losses, abs(value - other) / max(abs(value), 1e-6))
                diff["losses_max_rel"] = losses
                out[f"{name}_stage{epoch + 1}"] = diff
    # same random draws on CPU: the two differ by float64 rounding only (the library runs its
    # generator and discriminator in channels_last on CPU, with its own layers' formulas;
    # the naive loop in the standard layout with torch's layers: the same sums in another
    # order). Measured: about 1e-14 relative on losses and gradients, 1e-11 on weights
    ok = all(
        d["losses_max_rel"] < 1e-9 and d["grads_max_rel"] < 1e-9 and d["weights_max_abs"] < 1e-9
        and d["buffers_max_abs"] < 1e-9
        for k, d in out.items()
        if isinstance(d, dict)
    )
    out["match"] = ok
    return out


#: check_graphs: the largest difference of a logged loss, relative to the loss or to 1,
#: whichever is larger (the Wasserstein estimate is a difference of two means near 0, so
#: its relative error means little)
GRAPH_TOLERANCE = 1e-3


def check_graphs(device: torch.device, steps: int = 8, seed: int = 0) -> dict[str, Any]:
    """CUDA: a stage-1 and a stage-2 epoch of the library with and without CUDA graphs from
    the same seed (tiny sizes), both with the discriminator's custom layers (eagerly they
    are forced on: ``library-eager-custom``). Same kernels and random draws, so the logged
    losses agree up to float noise, which Adam carries through the epoch (and
    grid_sample's backward adds with atomics). A replay bug shows as 1e-2 or more. cuDNN
    runs plain fp32 with fixed algorithms here (``cudnn.benchmark`` off, also inside the
    epochs) and cuBLAS plain fp32: with TF32 and timed algorithm choice, rounding
    differs by more."""
    config = dataclasses.replace(make_config("tiny", str(device), steps, steps, seed), stage1_epochs=1)
    real = synthetic_real(256, 1, 28, seed)
    records = {}
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = False, True, False, False
        with unittest.mock.patch.object(distill, "_cudnn_benchmark", contextlib.nullcontext):
            for name in ("library", "library-eager-custom"):
                records[name] = [VARIANTS[name](config, real).run_epoch(e) for e in (0, 1)]
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved
    worst, worst_key = 0.0, None
    for stage, (graphed, eager) in enumerate(zip(records["library"], records["library-eager-custom"]), 1):
        for key, value in eager.items():
            if isinstance(value, float) and key != "seconds":
                diff = abs(graphed[key] - value) / max(abs(value), 1.0)
                if diff >= worst:
                    worst, worst_key = diff, f"stage{stage}.{key}"
    captured = all(r.get("cuda_graph", False) for r in records["library"])
    return {"captured": captured, "losses_max_diff": worst, "worst": worst_key,
            "match": captured and worst < GRAPH_TOLERANCE}


def build_parser():
    p = C.base_parser("distill_step", __doc__.splitlines()[0])
    p.add_argument("--preset", choices=("tiny", "cpu-small", "paper"),
                   help="sizes (default: tiny with --tiny, cpu-small on CPU, paper on CUDA)")
    p.add_argument("--steps1", type=int, help="generator steps per timed stage-1 epoch")
    p.add_argument("--steps2", type=int, help="generator steps per timed stage-2 epoch")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--profile", action="store_true",
                   help="also profile one stage-1 epoch of the library without CUDA graphs and report "
                        "the operators that take the most time (self time, on the device on CUDA)")
    p.add_argument("--breakdown", action="store_true",
                   help="CPU: also split the library's and the naive loop's steps into matrix products and "
                        "everything else, and report the speed-up bound that follows")
    return p


#: aten operators that are matrix products (oneDNN / BLAS arithmetic), the work both loops share
MATRIX_OPS = frozenset({"convolution", "_convolution", "mkldnn_convolution", "convolution_backward",
                        "mm", "bmm", "addmm", "baddbmm", "addbmm"})


class _OpTimer(TorchDispatchMode):
    """The summed host time of the matrix-product calls (:data:`MATRIX_OPS`) run under it;
    other calls run untimed. Meaningful on a CPU only, where a call's host time is its
    cost. (The mode sees each call as dispatched: a convolution once, not also the oneDNN
    kernel it runs.)"""

    def __init__(self) -> None:
        super().__init__()
        self.matrix_ms = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in MATRIX_OPS:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.matrix_ms += (time.perf_counter() - start) * 1000
        return out


def breakdown(preset: str, steps1: int, steps2: int, n: int, seed: int, rounds: int = 5) -> dict[str, Any]:
    """Per stage, for the library and the naive loop on CPU: wall ms per step, and how many
    of them go to matrix products (each such call timed on its own; the rest is the
    difference). Each round runs, for both variants in alternating order, one epoch timed
    whole and one operator by operator; figures are medians over rounds, ratios medians of
    per-round ratios. From these: the most the library could gain if all its other work
    were free (``bound``), and how much of that other work it may keep at 1.5x."""
    rows, summary = [], {}
    for stage, steps in ((1, steps1), (2, steps2)):
        trainers = {v: build_variant(v, "cpu", preset, steps1, steps2, n, seed) for v in ("library", "naive")}
        first = 0 if stage == 1 else trainers["library"][1].stage1_epochs
        for trainer, _ in trainers.values():  # warm-up
            for e in range(2):
                trainer.run_epoch(first + e)
        wall: dict[str, list[float]] = {v: [] for v in trainers}
        matrix: dict[str, list[float]] = {v: [] for v in trainers}
        for r in range(rounds):
            for variant in trainers if r % 2 == 0 else reversed(list(trainers)):
                trainer = trainers[variant][0]
                start = time.perf_counter()
                trainer.run_epoch(first + 2 + 2 * r)
                wall[variant].append((time.perf_counter() - start) * 1000 / steps)
                with _OpTimer() as timer:
                    trainer.run_epoch(first + 3 + 2 * r)
                matrix[variant].append(min(timer.matrix_ms / steps, wall[variant][-1]))
        med = {v: (C.median(wall[v]), C.median(matrix[v])) for v in trainers}
        for variant, (w, m) in med.items():
            rows.append({"stage": stage, "variant": variant, "ms_per_step": round(w, 1), "matrix_ms": round(m, 1),
                         "other_ms": round(w - m, 1), "matrix_share": round(m / w, 3)})
        (lib_wall, lib_matrix), (naive_wall, _) = med["library"], med["naive"]
        other, keep = lib_wall - lib_matrix, naive_wall / 1.5 - lib_matrix
        summary[f"stage{stage}"] = {
            "speedup": round(C.ratio(wall["naive"], wall["library"]), 3),
            "bound": round(C.ratio(wall["naive"], matrix["library"]), 3),
            "library_other_ms": round(other, 1),
            "other_ms_at_1_5x": round(keep, 1),
            "other_cut_needed_pct": round(100 * max(0.0, 1 - keep / other), 1) if other > 0 else 0.0,
        }
    return {"rows": rows, "summary": summary}


def profile_stage1(device: torch.device, preset: str, steps: int, n: int, seed: int, top: int = 15) -> list[dict[str, Any]]:
    """The ``top`` operators of one stage-1 epoch of the library without graphs, by self
    time; on CUDA with the discriminator's custom layers on, as the graphs replay them."""
    from torch.profiler import ProfilerActivity, profile

    trainer, _ = build_variant("library-eager-custom", str(device), preset, steps, 1, n, seed)
    trainer.run_epoch(0)  # warm-up: algorithm choice, allocator
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        trainer.run_epoch(1)
        C.sync(device)
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    self_us = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(self_us(e) for e in events) or 1.0
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    return [
        {"op": e.key[:60], "calls": e.count, "self_ms_per_step": round(self_us(e) / 1000 / steps, 3),
         "share_pct": round(100 * self_us(e) / total, 1)}
        for e in ranked
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device = C.setup(args)
    cpu = device.type == "cpu"
    args.preset = args.preset or ("tiny" if args.tiny else "cpu-small" if cpu else "paper")
    args.steps1 = args.steps1 or (2 if args.tiny else 3 if cpu else 40)
    args.steps2 = args.steps2 or (1 if args.tiny else 2 if cpu else 12)
    args.repeats = args.repeats or (1 if args.tiny else 5 if cpu else 4)
    if "library" not in args.variants:
        args.variants.insert(0, "library")
    if cpu:  # without CUDA these are the library itself
        args.variants = [v for v in args.variants if v not in CUDA_ONLY]

    equivalence = check_equivalence(args.seed)
    print(f"same losses/gradients/weights after one step from the same seed (CPU): {equivalence['match']}")
    if not cpu:
        equivalence["cuda_graphs"] = check_graphs(device, seed=args.seed)
        print(f"CUDA graphs vs eager, same seed: {equivalence['cuda_graphs']}")

    config = make_config(args.preset, str(device), args.steps1, args.steps2, args.seed)
    n = max(2048, 2 * config.batch_size * args.steps1)
    trainers = {
        name: build_variant(name, str(device), args.preset, args.steps1, args.steps2, n, args.seed)[0]
        for name in args.variants
    }
    stage2 = config.stage1_epochs
    rounds = {"epoch": 0}

    def epoch_fn(trainer, stage):
        def run() -> None:
            # every variant runs the same epoch numbers (same pool model in stage 2)
            trainer.run_epoch(rounds["epoch"] + (0 if stage == 1 else stage2))
        return run

    rows = []
    experiment_ratios: dict[str, dict[str, float]] = {}  # variant -> stage -> speed-up
    for stage, steps in ((1, args.steps1), (2, args.steps2)):
        variants = {name: epoch_fn(trainer, stage) for name, trainer in trainers.items()}
        for fn in variants.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.repeats):
            rounds["epoch"] = r + 1
            for name in variants if r % 2 == 0 else reversed(list(variants)):
                times[name].append(C.time_call(variants[name], device))
        for name, (_, _, library_faster) in EXPERIMENTS.items():
            if name in times:
                slow, fast = (times[name], times["library"]) if library_faster else (times["library"], times[name])
                experiment_ratios.setdefault(name, {})[f"stage{stage}"] = round(C.ratio(slow, fast), 3)
        for name in variants:
            t = times[name]
            row = {
                "stage": stage,
                "variant": name,
                "preset": args.preset,
                "ms_per_step": round(C.median(t) / steps * 1000, 2),
                "speedup_vs_naive": round(C.ratio(times["naive"], t), 3) if "naive" in times else None,
            }
            row.update(C.maybe_memory(args, not args.tiny or (stage == 1 and name == "library"), mem_epoch,
                                      variant=name, stage=stage, preset=args.preset, steps1=args.steps1,
                                      steps2=args.steps2, n=n))
            if name == "library" and not cpu:
                row["cuda_graph"] = trainers[name].graph_failure is None
            rows.append(row)
        if stage == 1:  # stage 1 is kept even if a time limit stops the run during stage 2
            C.write_json(args.json, "distill_step", args, device,
                         {"rows": rows, "equivalence": equivalence, "config": config.to_json(), "partial": "stage 1 only"})
    cfg = config
    C.print_table(
        f"Distillation step time ({args.preset}: G width {cfg.width}, D width {cfg.disc_width}, batch {cfg.batch_size}, "
        f"{cfg.inner_steps} inner steps, pool {cfg.pool}, {device})", rows, [
            ("stage", "stage", ""), ("variant", "implementation", ""), ("ms_per_step", "ms / step", ".1f"),
            ("speedup_vs_naive", "speed-up vs naive", ".2f"), ("peak_mb", "peak MB", ".0f"),
        ])
    results = {"rows": rows, "equivalence": equivalence, "config": cfg.to_json()}
    for name, ratios in experiment_ratios.items():
        key, label, _ = EXPERIMENTS[name]
        results[key] = ratios
        print(f"{label}, speed-up: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    if args.profile:
        C.write_json(args.json, "distill_step", args, device, results)  # the timings are safe if profiling is cut short
        try:
            results["profile_stage1"] = profile_stage1(device, args.preset, args.steps1, n, args.seed)
        except Exception as err:  # a profiler that cannot start must not cost the timings above
            results["profile_error"] = f"{type(err).__name__}: {err}"
            print(f"profiling failed, timings kept: {results['profile_error']}")
    if args.breakdown and cpu:
        C.write_json(args.json, "distill_step", args, device, results)
        results["breakdown"] = breakdown(args.preset, args.steps1, args.steps2, n, args.seed, 1 if args.tiny else 5)
        C.print_table("Where a step's time goes (matrix products: convolutions and matrix multiplies, each call timed)",
                      results["breakdown"]["rows"], [
                          ("stage", "stage", ""), ("variant", "implementation", ""), ("ms_per_step", "ms / step", ".1f"),
                          ("matrix_ms", "matrix products ms", ".1f"), ("other_ms", "other ms", ".1f"),
                          ("matrix_share", "matrix share", ".0%"),
                      ])
        for stage, b in results["breakdown"]["summary"].items():
            print(f"{stage}: {b['speedup']:.2f}x; at most {b['bound']:.2f}x if all but the library's matrix products "
                  f"were free; 1.5x needs its other work at {b['other_ms_at_1_5x']:.1f} ms per step "
                  f"(now {b['library_other_ms']:.1f}: {b['other_cut_needed_pct']:.0f}% less)")
    elif args.breakdown:
        print("--breakdown times operators on the host: CPU only, skipped")
    if "profile_stage1" in results:
        where = "device" if not cpu else "CPU"
        C.print_table(f"Stage-1 step of the library without CUDA graphs: top operators by {where} self time",
                      results["profile_stage1"], [
                          ("op", "operator", ""), ("calls", "calls", ""), ("self_ms_per_step", "self ms / step", ".2f"),
                          ("share_pct", "% of self time", ".1f"),
                      ])
    C.write_json(args.json, "distill_step", args, device, results)
    return results


if __name__ == "__main__":
    main()
