"""Write a PNG grid of generated images, one row per class.

    python examples/sample_grid.py --generator mnist --per-class 10 --out mnist_grid.png

The output's folder is created when missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from torchvision.utils import save_image

import synthsets
from synthsets.hub import WeightsError


def out_problem(out: Path) -> str | None:
    """Why ``out`` cannot be written as an image file (its parents may be missing), else ``None``."""
    Image.init()
    if out.suffix.lower() not in Image.registered_extensions():
        return f"--out {out} needs an image file extension such as .png"
    if out.is_dir():
        return f"--out {out} is a folder; give an image file path such as {out / 'grid.png'}"
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            return f"--out {out} lies under {parent}, which is a file, not a folder"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="mnist", help="bundled name, local folder or Hub repo id")
    parser.add_argument("--per-class", type=int, default=10, help="images per class: one row per class (at least 1)")
    parser.add_argument("--out", default="grid.png", help="the PNG to write (its folder is created if missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="show DSA-augmented images instead of raw ones")
    args = parser.parse_args(argv)

    if args.per_class < 1:
        raise SystemExit(f"error: --per-class must be at least 1, got {args.per_class}")
    out = Path(args.out).expanduser()
    problem = out_problem(out)
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    try:
        ds = synthsets.DiM(
            args.generator, inpc=args.per_class, seed=args.seed, normalize=False,
            augment="dsa" if args.augment else None,
        )
    except (FileNotFoundError, ValueError, WeightsError) as err:  # unknown name, missing or broken files
        raise SystemExit(f"error: {err}") from None
    images, labels = ds.epoch_tensors()  # class-major: row c holds class c
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(images.clamp(0, 1), out, nrow=args.per_class, padding=1)
    except OSError as err:  # e.g. no permission
        raise SystemExit(f"error: cannot write --out {out}: {err.strerror or err}") from None
    print(f"wrote {out}: {ds.num_classes} classes ({', '.join(ds.classes)}) x {args.per_class}")


if __name__ == "__main__":
    main()
