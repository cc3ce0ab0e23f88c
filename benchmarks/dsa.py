"""Batched on-device DSA against a per-sample torchvision.transforms.v2 pipeline.

``synthsets.augment.DSA`` (per-sample parameters, one call per batch of 256) is timed
on batches already on the device, as in ``SyntheticDataset`` where the images are
generated there. The baseline is the usual CPU pipeline: a ``TensorDataset``-like
dataset applying a torchvision v2 transform to each image, read by a ``DataLoader``
(batch 256, ``num_workers`` 0 and 2, persistent workers, default collate; on CUDA the
batch is then copied to the device). Roughly equivalent transforms:

=====================  ===========================================================
DSA op                 torchvision v2
=====================  ===========================================================
flip                   RandomHorizontalFlip(0.5)
color                  ColorJitter(brightness=0.5, contrast=0.5, saturation=(0, 2))
crop / scale / rotate  RandomChoice of RandomAffine(translate=1/8), RandomAffine(
                       scale=(1/1.2, 1.2)), RandomAffine(degrees=15)
cutout                 RandomErasing(p=1, scale=(1/4, 1/4), ratio=1, value=0)
=====================  ===========================================================

for the strategies ``color_crop_cutout_flip_scale_rotate`` (all ops) and ``color_crop``
(deployment). Reported: microseconds per image and the speed-up of DSA.

    python -m benchmarks.dsa [--device cpu] [--tiny]
"""

from __future__ import annotations

import sys

if not __package__:  # run as a file (python benchmarks/dsa.py): import as the package, from this checkout
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from synthsets import DSA

from . import _common as C

STRATEGIES = ("color_crop_cutout_flip_scale_rotate", "color_crop")


def torchvision_pipeline(strategy: str) -> v2.Compose:
    ops = set(strategy.split("_"))
    steps = []
    if "flip" in ops:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if "color" in ops:
        steps.append(v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=(0.0, 2.0)))
    geometric = []
    if "crop" in ops:
        geometric.append(v2.RandomAffine(degrees=0, translate=(0.125, 0.125)))
    if "scale" in ops:
        geometric.append(v2.RandomAffine(degrees=0, scale=(1 / 1.2, 1.2)))
    if "rotate" in ops:
        geometric.append(v2.RandomAffine(degrees=15))
    if len(geometric) == 1:
        steps.append(geometric[0])
    elif geometric:
        steps.append(v2.RandomChoice(geometric))
    if "cutout" in ops:
        steps.append(v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0))
    return v2.Compose(steps)


class TransformedTensors(Dataset):
    """A ``TensorDataset`` of images and labels whose images go through ``transform``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def _data(n: int, size: int, device: str | torch.device = "cpu"):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=gen)  # [0, 1], as torchvision expects
    labels = torch.randint(0, 10, (n,), generator=gen)
    return images.to(device), labels.to(device)


# -- workloads -----------------------------------------------------------------------------
def build_dsa(device: str, strategy: str, n: int, batch: int, size: int = 32) -> Callable[[], None]:
    """One pass of per-sample DSA over ``n`` on-device images, ``batch`` at a time."""
    dsa = DSA(strategy)
    images, _ = _data(n, size, device)

    def run() -> None:
        with torch.no_grad():
            for start in range(0, n, batch):
                dsa(images[start : start + batch])

    return run


def build_torchvision(device: str, strategy: str, n: int, batch: int, workers: int, size: int = 32):
    """One epoch of a DataLoader applying the torchvision pipeline per image."""
    device = torch.device(device)
    images, labels = _data(n, size)
    dataset = TransformedTensors(images, labels, torchvision_pipeline(strategy))
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )

    def run() -> None:
        for x, y in loader:
            if device.type == "cuda":
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def memory_info() -> dict[str, int]:
        """Peak RSS (KiB) of the largest worker process, read while the workers live."""
        iterator = getattr(loader, "_iterator", None)
        peaks = []
        for worker in getattr(iterator, "_workers", []) or []:
            try:
                with open(f"/proc/{worker.pid}/status", encoding="ascii") as handle:
                    peaks += [int(line.split()[1]) for line in handle if line.startswith("VmHWM:")]
            except OSError:
                pass
        return {"workers_kb": max(peaks)} if peaks else {}

    run.loader = loader  # keep the workers alive with the closure
    run.memory_info = memory_info
    return run


def mem_dsa(**kw: Any):
    return build_dsa(**kw)


def mem_torchvision(**kw: Any):
    return build_torchvision(**kw)


def build_parser():
    p = C.base_parser("dsa", __doc__.splitlines()[0])
    p.add_argument("--images", type=int, help="images per timed pass (default 2048; tiny 64)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers values")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device = C.setup(args)
    if args.tiny:
        args.batch = min(args.batch, 32)
    args.images = args.images or (64 if args.tiny else 2048)
    args.repeats = args.repeats or (1 if args.tiny else 5)
    rows: list[dict[str, Any]] = []
    for si, strategy in enumerate(args.strategies):
        variants = {"dsa": build_dsa(str(device), strategy, args.images, args.batch)}
        for w in args.workers:
            variants[f"torchvision w{w}"] = build_torchvision(str(device), strategy, args.images, args.batch, w)
        min_s = 0.2 if device.type == "cuda" else 0.0
        times = C.interleaved(variants, device, args.repeats, min_seconds=min_s)
        for name, t in times.items():
            row = {
                "strategy": strategy,
                "variant": name,
                "workers": None if name == "dsa" else int(name.split("w")[-1]),
                "us_per_image": round(C.median(t) / args.images * 1e6, 2),
                "images_per_s": round(args.images / C.median(t), 1),
                "dsa_speedup": round(C.ratio(t, times["dsa"]), 2),
            }
            if name == "dsa":
                row.update(C.maybe_memory(args, not args.tiny or si == 0, mem_dsa, strategy=strategy,
                                          n=args.images, batch=args.batch))
            else:
                row.update(C.maybe_memory(args, not args.tiny, mem_torchvision, strategy=strategy,
                                          n=args.images, batch=args.batch, workers=row["workers"]))
            rows.append(row)
        del variants  # shuts the persistent workers down
    C.print_table(f"DSA per-sample vs torchvision v2 per image ({args.images} images 3x32x32, batch {args.batch}, {device})", rows, [
        ("strategy", "strategy", ""), ("variant", "augmentation", ""), ("us_per_image", "us / image", ".1f"),
        ("images_per_s", "images/s", ".0f"), ("dsa_speedup", "DSA speed-up", ".1f"), ("peak_mb", "peak MB", ".0f"),
        ("workers_mb", "worker RSS MB", ".0f"),
    ])
    speedups = {
        f"{r['strategy']} vs {r['variant']}": r["dsa_speedup"] for r in rows if r["variant"] != "dsa"
    }
    C.write_json(args.json, "dsa", args, device, {"rows": rows, "speedups": speedups})
    return {"rows": rows, "speedups": speedups}


if __name__ == "__main__":
    main()
