"""Write a PNG grid of generated images, one row per class.

    python examples/sample_grid.py --generator mnist --per-class 10 --out mnist_grid.png
"""

from __future__ import annotations

import argparse

from torchvision.utils import save_image

import synthsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="mnist")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--out", default="grid.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="show DSA-augmented images instead of raw ones")
    args = parser.parse_args()

    ds = synthsets.DiM(
        args.generator, inpc=args.per_class, seed=args.seed, normalize=False,
        augment="dsa" if args.augment else None,
    )
    images, labels = ds.epoch_tensors()  # class-major: row c holds class c
    save_image(images.clamp(0, 1), args.out, nrow=args.per_class, padding=1)
    print(f"wrote {args.out}: {ds.num_classes} classes ({', '.join(ds.classes)}) x {args.per_class}")


if __name__ == "__main__":
    main()
