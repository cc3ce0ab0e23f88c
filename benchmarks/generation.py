"""Generator throughput, its share of a training step, and the synthetic loader's overhead.

Three tables:

1. ``throughput``: images/s and ms per batch of the DiM generator (32x32 RGB, 10
   classes) at the paper's width (196) and the CPU preset width (64), in fp32 and under
   bf16/fp16 autocast where the device runs them, with and without channels_last (and
   torch.compile with ``--compile``). Eval mode, no grad, a fixed noise batch.
2. ``fraction``: time of generation alone, of one training step (forward + backward +
   SGD on a batch) of ConvNet-3 and ResNet-18 alone, and of both together;
   ``gen / (gen + train)`` is the share of a step spent generating (paper Table 9:
   2-20% on a V100, with about 2 ms per batch of 128).
3. ``loader_overhead``: ResNet-18 epochs fed by ``SyntheticDataset(...).loader(128)``
   (generation + per-sample DSA colour/crop each epoch) against epochs over a
   pre-loaded tensor dataset (shuffled and sliced, no augmentation; and the same with
   per-sample DSA). ``overhead = t_synthetic / t_preloaded - 1``.

    python -m benchmarks.generation [--device cpu] [--compile] [--tiny]
"""

from __future__ import annotations

import sys

if not __package__:  # run as a file (python benchmarks/generation.py): import as the package, from this checkout
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from typing import Any, Callable, Sequence

import torch

from synthsets import DSA, SyntheticDataset
from synthsets.dataset import _core_to_spare
from synthsets.generator import fold_batchnorm

from . import _common as C

NUM_CLASSES = 10


def _noise(generator, batch: int, device: torch.device) -> torch.Tensor:
    labels = torch.arange(batch, device=device) % NUM_CLASSES
    return generator.make_noise(labels)


# -- workloads (also built in a fresh process for the memory measurements) ---------------
def build_generate(
    device: str, width: int, dtype: str, channels_last: bool, batch: int, compile: bool = False, fold: bool = False
) -> Callable[[], torch.Tensor]:
    """``fold``: BatchNorm folded into the layers before it, as ``SyntheticDataset`` generates."""
    device = torch.device(device)
    generator = C.make_generator(width).to(device)
    if fold:
        generator = fold_batchnorm(generator)
    if channels_last:
        generator = generator.to(memory_format=torch.channels_last)
    model = torch.compile(generator) if compile else generator
    z = _noise(generator, batch, device)

    def run() -> torch.Tensor:
        with torch.no_grad(), C.autocast(device, dtype):
            return model(z)

    return run


def mem_generate(**kw: Any) -> Callable[[], Any]:
    return build_generate(**kw)


def build_epoch(
    device: str,
    kind: str,
    width: int,
    inpc: int,
    batch: int,
    model: str,
    seed: int = 0,
    gen_batch: int | None = None,
    contiguous: bool = False,
    prefetch: bool | None = None,
    generation_dtype: str | None = None,
):
    """One training epoch of ``model`` on INPC x 10 images: ``kind`` is ``preloaded``,
    ``preloaded+dsa`` or ``synthetic`` (SyntheticDataset.loader with DSA; ``gen_batch``
    is its generation batch size, default the library's; ``contiguous`` puts the
    generator back in the standard memory layout after SyntheticDataset converted it to
    channels_last, as it does on CPU; ``prefetch`` is the loader's, default the
    library's: on CPU the next epoch is generated in a background thread;
    ``generation_dtype`` the dataset's, e.g. "bf16"). The returned callable carries the generation
    batch size actually used as ``gen_batch``."""
    device = torch.device(device)
    torch.manual_seed(seed)
    net = C.training_model(model, NUM_CLASSES, device)
    step = C.train_step_fn(net, C.sgd(net))
    n = inpc * NUM_CLASSES
    if kind == "synthetic":
        extra = {"batch_size": gen_batch} if gen_batch else {}
        dataset = SyntheticDataset(C.make_generator(width), inpc, augment="dsa", device=device, seed=seed,
                                   generation_dtype=generation_dtype, **extra)
        if contiguous:
            dataset.generator = dataset.generator.to(memory_format=torch.contiguous_format)
        loader = dataset.loader(batch_size=batch, prefetch=prefetch)

        def run() -> None:
            for x, y in loader:
                step(x, y)
            # with prefetch, the next epoch is being generated: wait for it, so that this
            # call is one steady-state epoch and no work spills into the next variant's time
            if dataset._prefetched is not None:
                dataset._prefetched.result()

        run.gen_batch = dataset.batch_size  # type: ignore[attr-defined]
        run.prefetch = loader.prefetch  # type: ignore[attr-defined]
        return run
    images = torch.randn(n, 3, 32, 32, device=device)
    labels = torch.arange(n, device=device) % NUM_CLASSES
    dsa = DSA("color_crop") if kind == "preloaded+dsa" else None
    if kind not in ("preloaded", "preloaded+dsa"):
        raise ValueError(kind)

    def run() -> None:
        order = torch.randperm(n, device=device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            x = images[idx]
            step(dsa(x) if dsa is not None else x, labels[idx])

    return run


def mem_epoch(**kw: Any) -> Callable[[], Any]:
    return build_epoch(**kw)


# -- tables ------------------------------------------------------------------------------
def throughput(args, device: torch.device) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    min_s = 0.2 if device.type == "cuda" else 0.0
    for width in args.widths:
        variants: dict[tuple, Callable[[], Any]] = {}
        for dtype in args.dtypes:
            for cl in (False, True):
                variants[(dtype, cl, False, False)] = build_generate(str(device), width, dtype, cl, args.batch)
            # the library's layout on CPU, with BatchNorm folded as SyntheticDataset does
            cl = device.type == "cpu"
            variants[(dtype, cl, False, True)] = build_generate(str(device), width, dtype, cl, args.batch, fold=True)
        if args.compile:
            for dtype in args.dtypes:
                for cl in (False, True):
                    try:
                        fn = build_generate(str(device), width, dtype, cl, args.batch, compile=True)
                        fn()  # compiles here
                        variants[(dtype, cl, True, False)] = fn
                    except Exception as err:  # no compiler, unsupported backend...
                        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                        print(f"torch.compile skipped (width {width}, {dtype}, channels_last={cl}): {msg}", file=sys.stderr)
                        rows.append({"width": width, "dtype": dtype, "channels_last": cl, "compile": True,
                                     "skipped": msg})
        names = {key: f"{key}" for key in variants}
        times = C.interleaved({names[k]: v for k, v in variants.items()}, device, args.repeats, min_seconds=min_s)
        base = times[names[("fp32", False, False, False)]]
        for key in variants:
            dtype, cl, comp, fold = key
            t = times[names[key]]
            ms = C.median(t) * 1000
            row = {
                "width": width,
                "dtype": dtype,
                "channels_last": cl,
                "compile": comp,
                "bn_folded": fold,
                "ms_per_batch": round(ms, 3),
                "images_per_s": round(args.batch / (ms / 1000), 1),
                "speedup_vs_fp32": round(C.ratio(base, t), 3),
            }
            # memory: channels_last and compile do not change it much; measure the others
            wanted = (not cl and not comp and not fold) and (not args.tiny or not rows)
            row.update(C.maybe_memory(args, wanted, mem_generate, width=width, dtype=dtype,
                                      channels_last=cl, batch=args.batch, compile=comp))
            rows.append(row)
        del variants
    rows.sort(key=lambda r: (-r["width"], r.get("compile", False), r.get("bn_folded", False)))
    return rows


def fraction(args, device: torch.device) -> list[dict[str, Any]]:
    """Share of a training step spent generating, per generator width and model."""
    rows = []
    min_s = 0.2 if device.type == "cuda" else 0.0
    y = torch.arange(args.batch, device=device) % NUM_CLASSES
    for width in args.widths:
        generate = build_generate(str(device), width, args.fraction_dtype, False, args.batch)
        variants: dict[str, Callable[[], Any]] = {"gen": generate}
        for name in args.models:
            torch.manual_seed(args.seed)
            net = C.training_model(name, NUM_CLASSES, device)
            step = C.train_step_fn(net, C.sgd(net))
            x = torch.randn(args.batch, 3, 32, 32, device=device)
            variants[f"train:{name}"] = lambda step=step, x=x: step(x, y)
            variants[f"gen+train:{name}"] = lambda step=step: step(generate().float(), y)
        times = C.interleaved(variants, device, args.repeats, min_seconds=min_s)
        for name in args.models:
            gen, train, both = times["gen"], times[f"train:{name}"], times[f"gen+train:{name}"]
            rows.append({
                "width": width,
                "model": name,
                "gen_ms": round(C.median(gen) * 1000, 3),
                "train_ms": round(C.median(train) * 1000, 3),
                "gen_train_ms": round(C.median(both) * 1000, 3),
                # per-round gen / (gen + train), gen+train measured together
                "gen_fraction": round(C.ratio(gen, both), 4),
                "gen_fraction_sum": round(C.median(g / (g + t) for g, t in zip(gen, train)), 4),
            })
    return rows


def loader_overhead(args, device: torch.device) -> list[dict[str, Any]]:
    variants: dict[str, Callable[[], Any]] = {}
    spec: dict[str, dict[str, Any]] = {}
    common = dict(inpc=args.overhead_inpc, batch=args.batch, model=args.overhead_model, seed=args.seed)
    for kind in ("preloaded", "preloaded+dsa"):
        spec[kind] = dict(kind=kind, width=0, **common)
    for width in args.widths:
        spec[f"synthetic w{width}"] = dict(kind="synthetic", width=width, **common)
    if device.type == "cpu":  # the other side of the library's CPU prefetch default
        other = not _core_to_spare()
        for width in args.widths:
            label = "prefetch" if other else "no prefetch"
            spec[f"synthetic w{width} {label}"] = dict(kind="synthetic", width=width, prefetch=other, **common)
        width = max(args.widths)  # the paper's generator in bf16 (SyntheticDataset(generation_dtype="bf16"))
        spec[f"synthetic w{width} bf16"] = dict(kind="synthetic", width=width, generation_dtype="bf16", **common)
    if args.gen_batch_alt:  # the narrowest generator again, with another generation batch
        width = min(args.widths)
        layout = " contiguous" if device.type == "cpu" else ""
        spec[f"synthetic w{width} gen-batch {args.gen_batch_alt}{layout}"] = dict(
            kind="synthetic", width=width, gen_batch=args.gen_batch_alt, contiguous=device.type == "cpu",
            prefetch=False, **common
        )
    for name, kw in spec.items():
        variants[name] = build_epoch(str(device), **kw)
    # the overhead is a small difference of two long times: give it more rounds
    rounds = args.repeats if args.tiny else args.repeats + 2
    times = C.interleaved(variants, device, rounds, min_seconds=0.2 if device.type == "cuda" else 0.0)
    n = args.overhead_inpc * NUM_CLASSES
    rows = []
    for i, (name, kw) in enumerate(spec.items()):
        t = times[name]
        row = {
            "variant": name,
            "width": kw["width"] or None,
            "model": args.overhead_model,
            "inpc": args.overhead_inpc,
            "ms_per_epoch": round(C.median(t) * 1000, 2),
            "images_per_s": round(n / C.median(t), 1),
            "overhead_pct": round((C.ratio(t, times["preloaded"]) - 1) * 100, 1),
            "overhead_vs_dsa_pct": round((C.ratio(t, times["preloaded+dsa"]) - 1) * 100, 1),
        }
        row["gen_batch"] = getattr(variants[name], "gen_batch", None)
        row["prefetch"] = getattr(variants[name], "prefetch", None)
        row.update(C.maybe_memory(args, not args.tiny or i == 2, mem_epoch, **kw))
        rows.append(row)
    return rows


def build_parser():
    p = C.base_parser("generation", __doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", help="generator widths (default: 196 64)")
    p.add_argument("--batch", type=int, help="batch size (default 128)")
    p.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16", "fp16"),
                   help="precisions (default: fp32 plus the autocast dtypes the device supports)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants (skipped if compiling fails)")
    p.add_argument("--models", nargs="+", default=None, help="models of the fraction table (default convnet3 resnet18)")
    p.add_argument("--fraction-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--overhead-model", default="resnet18")
    p.add_argument("--overhead-inpc", type=int, help="images per class per epoch of the loader-overhead table "
                   "(default: 25 on CPU, 50 on CUDA)")
    p.add_argument("--gen-batch-alt", type=int, help="also run the narrowest synthetic loader with this "
                   "SyntheticDataset batch_size; on CPU with the generator in the standard layout, i.e. "
                   "the library's CPU behaviour before it defaulted to batches of 64 in channels_last "
                   "(default: 500 on CPU, none on CUDA; 0: none)")
    p.add_argument("--skip", nargs="*", default=[], choices=("throughput", "fraction", "loader_overhead"))
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device = C.setup(args)
    tiny = args.tiny
    args.widths = args.widths or ([16, 8] if tiny else [196, 64])
    args.batch = args.batch or (8 if tiny else 128)
    args.dtypes = args.dtypes or (["fp32"] if tiny else C.supported_dtypes(device))
    if "fp32" not in args.dtypes:
        args.dtypes.insert(0, "fp32")
    args.models = args.models or ["convnet3", "resnet18"]
    args.overhead_inpc = args.overhead_inpc or (2 if tiny else 25 if device.type == "cpu" else 50)
    args.repeats = args.repeats or (1 if tiny else 3 if device.type == "cpu" else 10)
    if args.gen_batch_alt is None:
        args.gen_batch_alt = 500 if device.type == "cpu" and not tiny else 0

    results: dict[str, Any] = {}
    if "throughput" not in args.skip:
        results["throughput"] = rows = throughput(args, device)
        C.print_table(f"Generator throughput (batch {args.batch}, 32x32x3, {device})", [r for r in rows if "skipped" not in r], [
            ("width", "width", ""), ("dtype", "dtype", ""), ("channels_last", "channels_last", ""),
            ("compile", "compile", ""), ("bn_folded", "BN folded", ""), ("ms_per_batch", "ms / batch", ".1f"), ("images_per_s", "images/s", ".0f"),
            ("speedup_vs_fp32", "vs fp32", ".2f"), ("peak_mb", "peak MB", ".0f"),
        ])
    if "fraction" not in args.skip:
        results["fraction"] = rows = fraction(args, device)
        C.print_table(f"Share of a training step spent generating (batch {args.batch}, {args.fraction_dtype}, {device})", rows, [
            ("width", "G width", ""), ("model", "model", ""), ("gen_ms", "gen ms", ".1f"),
            ("train_ms", "train-step ms", ".1f"), ("gen_train_ms", "gen+train ms", ".1f"),
            ("gen_fraction", "gen / (gen+train)", ".1%"),
        ])
    if "loader_overhead" not in args.skip:
        results["loader_overhead"] = rows = loader_overhead(args, device)
        C.print_table(
            f"{args.overhead_model} epoch: synthetic loader vs pre-loaded tensors "
            f"(INPC {args.overhead_inpc} x 10 classes, batch {args.batch}, {device})", rows, [
                ("variant", "data", ""), ("gen_batch", "generation batch", ""), ("prefetch", "prefetch", ""), ("ms_per_epoch", "ms / epoch", ".0f"), ("images_per_s", "images/s", ".0f"),
                ("overhead_pct", "overhead % vs pre-loaded", "+.1f"), ("overhead_vs_dsa_pct", "% vs pre-loaded+DSA", "+.1f"),
                ("peak_mb", "peak MB", ".0f"),
            ])
    C.write_json(args.json, "generation", args, device, results)
    return results


if __name__ == "__main__":
    main()
