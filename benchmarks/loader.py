"""``SyntheticDataset`` read through a plain ``DataLoader`` vs its ``loader()`` batch iterator.

For INPC 50 and 500 (10 classes, 32x32 RGB, DSA on, batch 128, shuffled):

* ``DataLoader``: ``torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True)``
  (``num_workers=0``, per-item ``__getitem__`` and default collate);
* ``loader()``: ``dataset.loader(batch_size=128, prefetch=False)`` (whole device batches,
  no collate; without background generation, which would overlap nothing here and would
  run into the other path's timing).

A timed pass is a full epoch, generation included (each pass is a new epoch with new
images). The per-item cost of the DataLoader path is also measured alone, on an epoch
whose images are already generated (``__getitem__`` + collate only), next to the same
DataLoader over a plain ``TensorDataset`` for reference.

    python -m benchmarks.loader [--device cpu] [--width 64] [--tiny]
"""

from __future__ import annotations

import sys

if not __package__:  # run as a file (python benchmarks/loader.py): import as the package, from this checkout
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import time
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, TensorDataset

from synthsets import SyntheticDataset

from . import _common as C


def build_dataset(device: str, width: int, inpc: int, seed: int = 0, gen_batch: int | None = None) -> SyntheticDataset:
    extra = {"batch_size": gen_batch} if gen_batch else {}
    return SyntheticDataset(C.make_generator(width), inpc, augment="dsa", device=device, seed=seed, **extra)


def build_epoch(device: str, path: str, width: int, inpc: int, batch: int, seed: int = 0, gen_batch: int | None = None):
    """One full epoch through ``path`` ("dataloader" or "loader")."""
    dataset = build_dataset(device, width, inpc, seed, gen_batch)
    if path == "dataloader":
        iterable = DataLoader(dataset, batch_size=batch, shuffle=True)
    elif path == "loader":
        iterable = dataset.loader(batch_size=batch, prefetch=False)
    else:
        raise ValueError(path)

    def run() -> int:
        count = 0
        for x, _ in iterable:
            count += len(x)
        return count

    return run


def mem_epoch(**kw: Any):
    return build_epoch(**kw)


def per_item_cost(device: torch.device, dataset: SyntheticDataset, batch: int, repeats: int) -> dict[str, float]:
    """Seconds per item of a DataLoader pass over an already generated epoch."""
    synthetic, plain = [], []
    images, labels = dataset.epoch_tensors()
    tensors = DataLoader(TensorDataset(images.clone(), labels.clone()), batch_size=batch, shuffle=True)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    for r in range(repeats + 1):  # the first round warms up
        dataset.set_epoch(dataset.epoch + 1)
        dataset.epoch_tensors()  # generate outside the timed region
        pair = [("synthetic", loader), ("plain", tensors)]
        for name, dl in pair if r % 2 == 0 else reversed(pair):
            C.sync(device)
            start = time.perf_counter()
            for _ in dl:
                pass
            C.sync(device)
            if r:
                (synthetic if name == "synthetic" else plain).append((time.perf_counter() - start) / len(dataset))
    return {"synthetic": C.median(synthetic), "tensor": C.median(plain)}


def build_parser():
    p = C.base_parser("loader", __doc__.splitlines()[0])
    p.add_argument("--inpc", type=int, nargs="+", help="images per class per epoch (default 50 500; tiny 2 5)")
    p.add_argument("--width", type=int, help="generator width (default: 64 on CPU, the CPU preset; 196 on CUDA)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--gen-batch", type=int, help="SyntheticDataset batch_size (generation batch; default: the library's)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device = C.setup(args)
    cpu = device.type == "cpu"
    args.inpc = args.inpc or ([2, 5] if args.tiny else [50, 500])
    args.width = args.width or (8 if args.tiny else 64 if cpu else 196)
    if args.tiny:
        args.batch = min(args.batch, 8)
    args.repeats = args.repeats or (1 if args.tiny else 3 if cpu else 10)
    rows = []
    for i, inpc in enumerate(args.inpc):
        n = inpc * 10
        variants = {path: build_epoch(str(device), path, args.width, inpc, args.batch, args.seed, args.gen_batch)
                    for path in ("dataloader", "loader")}
        times = C.interleaved(variants, device, args.repeats, min_seconds=0.2 if not cpu else 0.0)
        dataset = build_dataset(str(device), args.width, inpc, args.seed, args.gen_batch)
        cost = per_item_cost(device, dataset, args.batch, args.repeats)
        for path, t in times.items():
            row = {
                "inpc": inpc,
                "images": n,
                "path": "DataLoader(dataset)" if path == "dataloader" else "dataset.loader()",
                "width": args.width,
                "gen_batch": dataset.batch_size,
                "ms_per_epoch": round(C.median(t) * 1000, 2),
                "images_per_s": round(n / C.median(t), 1),
                "speedup_of_loader": round(C.ratio(times["dataloader"], times["loader"]), 3),
                "per_item_us": round(cost["synthetic"] * 1e6, 2) if path == "dataloader" else None,
                "tensor_dataset_per_item_us": round(cost["tensor"] * 1e6, 2) if path == "dataloader" else None,
            }
            row.update(C.maybe_memory(args, not args.tiny or i == 0 and path == "loader", mem_epoch, path=path,
                                      width=args.width, inpc=inpc, batch=args.batch, gen_batch=args.gen_batch))
            rows.append(row)
    C.print_table(
        f"SyntheticDataset epochs (generator width {args.width}, generation batch {rows[0]['gen_batch']}, "
        f"10 classes, 32x32x3, DSA, batch {args.batch}, {device})",
        rows, [
            ("inpc", "INPC", ""), ("images", "images", ""), ("path", "path", ""), ("ms_per_epoch", "ms / epoch", ".0f"),
            ("images_per_s", "images/s", ".0f"), ("speedup_of_loader", "loader() speed-up", ".2f"),
            ("per_item_us", "us / item (getitem+collate)", ".1f"),
            ("tensor_dataset_per_item_us", "TensorDataset us / item", ".1f"), ("peak_mb", "peak MB", ".0f"),
        ])
    C.write_json(args.json, "loader", args, device, {"rows": rows})
    return {"rows": rows}


if __name__ == "__main__":
    main()
