"""Train any timm model on a DiM generator with a plain DataLoader, test on the real test set.

    python examples/train_timm.py --generator cifar10 --model resnet18 --epochs 200 --root data
"""

from __future__ import annotations

import argparse
import difflib

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import synthsets
from synthsets.data import load_real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="cifar10")
    parser.add_argument("--model", default="resnet18", help="any timm model name")
    parser.add_argument("--inpc", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--root", default="data", help="real data folder (for the test set)")
    parser.add_argument("--data", help="real dataset to test on: a torchvision name under --root or an image "
                        "folder with train/ and test/ (default: the generator's dataset)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if not timm.is_model(args.model):  # before any work: a typo should not cost a data load
        close = difflib.get_close_matches(args.model, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models('*name*') lists them"
        raise SystemExit(f"error: unknown timm model {args.model!r}{hint}")
    for flag in ("inpc", "epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    torch.manual_seed(args.seed)
    if not torch.cuda.is_available():
        synthsets.tune_cpu_allocator()  # CPU training: keep freed activation memory for reuse
    try:
        train = synthsets.DiM(args.generator, inpc=args.inpc, seed=args.seed)
    except (FileNotFoundError, ValueError, synthsets.WeightsError) as err:  # unknown name, missing or broken files
        raise SystemExit(f"error: {err}") from None
    try:  # the real test set first: a missing one should not cost a training run
        real = load_real(args.data or train.generator.config.dataset, args.root, download=True,
                         image_size=train.image_size, channels=train.channels)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    # the torchvision way: any DataLoader works; every pass brings fresh images
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    model = timm.create_model(args.model, pretrained=False, num_classes=train.num_classes, in_chans=train.channels)
    model = model.to(train.device)
    model = model.to(memory_format=synthsets.preferred_memory_format(model, train.device))  # channels_last on CPU where faster
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    bar = tqdm(range(args.epochs), desc=f"timm {args.model}")
    for _ in bar:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y.to(x.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(real.test), 500):
            x = real.test.images[i : i + 500].to(train.device)
            correct += (model(x).argmax(1).cpu() == real.test.labels[i : i + 500]).sum().item()
    print(f"timm {args.model}: real test accuracy {100 * correct / len(real.test):.2f}%")


if __name__ == "__main__":
    main()
