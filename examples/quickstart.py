"""The main job: train a classifier on images drawn from a pretrained DiM generator.

    python examples/quickstart.py                      # MNIST generator, ConvNet-3, CPU-friendly
    python examples/quickstart.py --generator cifar10 --model resnet18 --epochs 300
    python examples/quickstart.py --generator cifar10 --data path/to/cifar10-imagefolder

The bundled generator needs no network. The real test set (for the final accuracy) is
read from --root, or downloaded there by torchvision when missing and online; --data
points at another copy (an image folder with train/ and test/).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import synthsets
from synthsets.data import load_real


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(
        (model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
        for i in range(0, len(labels), batch)
    )
    model.train()
    return 100.0 * correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="mnist", help="bundled name, local folder or Hub repo id")
    parser.add_argument("--inpc", type=int, default=10, help="images per class per epoch")
    parser.add_argument("--model", default="convnet3", help="synthsets or timm model name")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--root", default="data", help="real data folder (for the test set)")
    parser.add_argument("--data", help="real dataset to test on: a torchvision name under --root or an image "
                        "folder with train/ and test/ (default: the generator's dataset)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    for flag in ("inpc", "epochs", "batch_size"):  # before any work: a typo should not cost a load
        if getattr(args, flag) < 1:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not synthsets.is_model(args.model):
        raise SystemExit(f"error: unknown model {args.model!r}; synthsets models: {synthsets.list_models()}, "
                         "or any timm model name (timm.list_models('*name*') lists them)")
    torch.manual_seed(args.seed)
    if not torch.cuda.is_available():
        synthsets.tune_cpu_allocator()  # CPU training: keep freed activation memory for reuse (2x faster steps)
    try:
        train = synthsets.DiM(args.generator, inpc=args.inpc, seed=args.seed)  # fresh DSA-augmented images every epoch
    except (FileNotFoundError, ValueError, synthsets.WeightsError) as err:  # unknown name, missing or broken files
        raise SystemExit(f"error: {err}") from None
    print(train)
    dataset = args.data or train.generator.config.dataset
    try:
        real = load_real(dataset, args.root, download=True, image_size=train.image_size, channels=train.channels)
    except (FileNotFoundError, ValueError) as err:  # missing or unreadable data: say so, no traceback
        raise SystemExit(f"error: {err}") from None
    test_x, test_y = real.test.images.to(train.device), real.test.labels.to(train.device)

    model = synthsets.create_model(args.model, train.num_classes, train.channels, train.image_size).to(train.device)
    model = model.to(memory_format=synthsets.preferred_memory_format(model, train.device))  # channels_last on CPU where faster
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [args.epochs // 2], 0.1)
    loader = train.loader(batch_size=args.batch_size, shuffle=True)  # fast path: whole device batches
    start = time.time()
    for _ in tqdm(range(args.epochs), desc=f"training {args.model} on DiM({args.generator!r})"):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    acc = accuracy(model, test_x, test_y)
    print(f"{args.model} trained {args.epochs} epochs on {args.inpc} generated images/class "
          f"({time.time() - start:.0f} s): real {dataset} test accuracy {acc:.2f}%")


if __name__ == "__main__":
    main()
