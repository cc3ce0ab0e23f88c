"""SyntheticDataset / SyntheticLoader: balance, freshness, seeds, normalisation, loaders, DDP."""

from __future__ import annotations

import copy
import os
import re
import time
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import synthsets
from synthsets import Generator, SyntheticDataset
from synthsets.augment import DSA
from synthsets.dataset import SyntheticLoader

pytestmark = pytest.mark.usefixtures("single_thread")

MNIST_MEAN, MNIST_STD = [0.1307], [0.3081]


@pytest.fixture
def gen(make_generator) -> Generator:
    """28x28 grey generator with MNIST statistics and named classes."""
    return make_generator(
        image_size=28,
        channels=1,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        dataset="toy-mnist",
        classes=[f"digit{i}" for i in range(10)],
    )


@pytest.fixture
def gen32(make_generator) -> Generator:
    return make_generator(image_size=32, channels=3, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])


class LabelPainter(Generator):
    """Paints every pixel with ``2 * label / (C - 1) - 1``, read back from the one-hot noise code."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        label = z[:, : self.num_classes].argmax(1).float()
        value = 2 * label / (self.num_classes - 1) - 1
        size = self.config.image_size
        return value.view(-1, 1, 1, 1).expand(-1, self.config.channels, size, size).contiguous()


def epoch_items(ds: SyntheticDataset) -> tuple[torch.Tensor, list]:
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), [y for _, y in items]


def pairwise_min_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each image of ``a``, the mean absolute difference to its closest image in ``b``."""
    return (a.flatten(1)[:, None] - b.flatten(1)[None]).abs().mean(-1).min(1).values


# -- size, balance, labels ------------------------------------------------------------------
@pytest.mark.parametrize("inpc", [1, 3])
def test_length_balance_and_item_format(tiny_generator, inpc):
    c = tiny_generator.config
    ds = SyntheticDataset(tiny_generator, inpc, device="cpu", seed=0)
    assert len(ds) == inpc * 10
    images, labels = epoch_items(ds)
    assert images.shape == (inpc * 10, c.channels, c.image_size, c.image_size)
    assert images.dtype == torch.float32 and images.device.type == "cpu"
    assert all(isinstance(y, int) for y in labels)
    assert Counter(labels) == {k: inpc for k in range(10)}
    assert labels == ds.targets


def test_targets_are_the_labels_the_images_were_generated_for(make_generator):
    painter = LabelPainter(make_generator().config)
    ds = SyntheticDataset(painter, 4, device="cpu", seed=1, augment=None, normalize=False, batch_size=7)
    images, labels = epoch_items(ds)
    expected = torch.tensor(labels, dtype=torch.float32) / 9  # pixel value after [-1,1] -> [0,1]
    assert torch.allclose(images.flatten(1), expected[:, None].expand(-1, images[0].numel()))
    loader_images, loader_labels = next(iter(ds.loader(batch_size=len(ds))))
    assert torch.allclose(loader_images.mean((1, 2, 3)), loader_labels.float() / 9)


def test_every_image_is_distinct_within_an_epoch(gen):
    ds = SyntheticDataset(gen, 5, device="cpu", seed=0, augment=None)
    images, _ = epoch_items(ds)
    d = (images.flatten(1)[:, None] - images.flatten(1)[None]).abs().mean(-1)
    assert (d[~torch.eye(len(ds), dtype=torch.bool)] > 1e-3).all()


# -- epochs -----------------------------------------------------------------------------------
def test_set_epoch_gives_fresh_images_and_is_reproducible(gen):
    ds = SyntheticDataset(gen, 3, device="cpu", seed=11, augment=None)
    epoch0, labels0 = epoch_items(ds)
    ds.set_epoch(1)
    epoch1, labels1 = epoch_items(ds)
    assert labels0 == labels1  # same class layout every epoch
    assert (pairwise_min_distance(epoch1, epoch0) > 1e-3).all()  # all images are new
    ds.set_epoch(0)
    assert torch.equal(epoch_items(ds)[0], epoch0)  # an epoch can be replayed exactly
    with pytest.raises(ValueError, match="non-negative int"):
        ds.set_epoch(-1)
    with pytest.raises(ValueError, match="non-negative int"):
        ds.set_epoch(1.0)


def test_epoch_advances_automatically_after_a_full_pass(gen):
    ds = SyntheticDataset(gen, 2, device="cpu", seed=5)
    reference = SyntheticDataset(gen, 2, device="cpu", seed=5)
    first, _ = epoch_items(ds)
    assert ds.epoch == 0
    second, _ = epoch_items(ds)  # the first access of this pass starts epoch 1
    assert ds.epoch == 1
    reference.set_epoch(1)
    assert torch.equal(second, epoch_items(reference)[0])
    assert not torch.equal(first, second)


def test_items_are_copies_of_the_cached_epoch(gen):
    ds = SyntheticDataset(gen, 2, device="cpu", seed=0)
    x, _ = ds[3]
    kept = x.clone()
    x.zero_()  # an in-place transform must not alter what the dataset serves
    assert torch.equal(ds[3][0], kept)


def test_epoch_tensors_match_items(gen):
    ds = SyntheticDataset(gen, 3, device="cpu", seed=2, batch_size=4)
    images, labels = ds.epoch_tensors()
    items, item_labels = epoch_items(ds)
    assert torch.equal(images, items)
    assert labels.tolist() == item_labels


def test_generation_is_batched(gen, monkeypatch):
    calls = []
    original = Generator.forward

    def counting(self, z):
        calls.append(z.shape[0])
        return original(self, z)

    monkeypatch.setattr(Generator, "forward", counting)
    ds = SyntheticDataset(gen, 5, device="cpu", seed=0, batch_size=16)
    epoch_items(ds)
    assert calls == [16, 16, 16, 2]


# -- seeds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("augment", ["dsa", None])
def test_same_seed_same_stream_different_seed_different_stream(gen, augment):
    a = SyntheticDataset(gen, 2, device="cpu", seed=123, augment=augment)
    b = SyntheticDataset(gen, 2, device="cpu", seed=123, augment=augment)
    c = SyntheticDataset(gen, 2, device="cpu", seed=124, augment=augment)
    for epoch in (0, 1):
        for ds in (a, b, c):
            ds.set_epoch(epoch)
        xa, xb, xc = (epoch_items(ds)[0] for ds in (a, b, c))
        assert torch.equal(xa, xb)
        assert (pairwise_min_distance(xa, xc) > 1e-3).all()


def test_seed_none_follows_torch_manual_seed(gen):
    torch.manual_seed(2024)
    a = SyntheticDataset(gen, 1, device="cpu")
    torch.manual_seed(2024)
    b = SyntheticDataset(gen, 1, device="cpu")
    assert isinstance(a.seed, int) and a.seed == b.seed
    assert torch.equal(epoch_items(a)[0], epoch_items(b)[0])


def test_augmentation_is_per_sample_and_seeded(gen):
    plain = SyntheticDataset(gen, 3, device="cpu", seed=9, augment=None, normalize=False)
    augmented = SyntheticDataset(gen, 3, device="cpu", seed=9, augment="dsa", normalize=False)
    assert isinstance(augmented.augment, DSA) and augmented.augment.ops == ("color", "crop")
    x, y = epoch_items(plain)[0], epoch_items(augmented)[0]
    assert x.shape == y.shape
    # colour draws differ per sample: per-image brightness shifts are not all equal
    shift = (y - x).mean((1, 2, 3))
    assert shift.std() > 0.05
    full = SyntheticDataset(gen, 1, device="cpu", seed=9, augment="dsa-full")
    assert full.augment.ops == ("flip", "color", "crop", "scale", "rotate", "cutout")
    assert SyntheticDataset(gen, 1, device="cpu", augment="flip_rotate").augment.ops == ("flip", "rotate")
    assert SyntheticDataset(gen, 1, device="cpu", augment=True).augment.ops == ("color", "crop")
    for off in (None, False, "none", ""):
        assert SyntheticDataset(gen, 1, device="cpu", augment=off).augment is None


def test_callable_augment_replaces_dsa(gen):
    seen = []

    def augment(batch):
        seen.append(batch.shape)
        return -batch

    ds = SyntheticDataset(gen, 2, device="cpu", seed=3, augment=augment, batch_size=8)
    plain = SyntheticDataset(gen, 2, device="cpu", seed=3, augment=None, batch_size=8)
    assert torch.equal(epoch_items(ds)[0], -epoch_items(plain)[0])
    assert seen == [(8, 1, 28, 28), (8, 1, 28, 28), (4, 1, 28, 28)]  # batches, not single images


# -- normalisation ----------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["gen", "gen32"])
def test_normalisation_formula(which, request):
    g = request.getfixturevalue(which)
    mean = torch.tensor(g.config.mean).view(-1, 1, 1)
    std = torch.tensor(g.config.std).view(-1, 1, 1)
    norm = SyntheticDataset(g, 3, device="cpu", seed=4, augment=None, normalize=True)
    raw = SyntheticDataset(g, 3, device="cpu", seed=4, augment=None, normalize=False)
    x_norm, _ = epoch_items(norm)
    x_raw, _ = epoch_items(raw)
    assert x_raw.min() >= 0 and x_raw.max() <= 1
    pixels = x_norm * std + mean  # documented inverse: back to [0, 1]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert torch.allclose(pixels, x_raw, atol=1e-6)
    # and it is what torchvision's Normalize(mean, std) does to [0, 1] images
    assert torch.allclose(x_norm, (x_raw - mean) / std, atol=1e-6)
    with torch.no_grad():
        assert x_raw.std() > 0.02  # not a constant image


# -- DataLoader and the fast loader -----------------------------------------------------------
def test_torch_dataloader_epochs_are_balanced_and_fresh(gen):
    ds = SyntheticDataset(gen, 4, device="cpu", seed=0, augment=None)
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=0)
    epochs = []
    for _ in range(2):
        xs, ys = zip(*loader)
        images, labels = torch.cat(xs), torch.cat(ys)
        assert images.shape == (40, 1, 28, 28)
        assert Counter(labels.tolist()) == {k: 4 for k in range(10)}
        epochs.append(images)
    assert ds.epoch == 1
    assert (pairwise_min_distance(epochs[1], epochs[0]) > 1e-3).all()


def test_fast_loader_covers_a_balanced_fresh_epoch_per_iteration(gen):
    ds = SyntheticDataset(gen, 5, device="cpu", seed=7, augment=None)
    loader = ds.loader(batch_size=16)
    assert isinstance(loader, SyntheticLoader)
    assert len(loader) == 4  # ceil(50 / 16)
    epochs = []
    for expected_epoch in (0, 1, 2):
        batches = list(loader)
        assert ds.epoch == expected_epoch
        assert [len(y) for _, y in batches] == [16, 16, 16, 2]
        assert all(x.device == ds.device and y.device == ds.device for x, y in batches)
        assert all(y.dtype == torch.long for _, y in batches)
        labels = torch.cat([y for _, y in batches])
        images = torch.cat([x for x, _ in batches])
        assert Counter(labels.tolist()) == {k: 5 for k in range(10)}
        assert labels.tolist() != sorted(labels.tolist())  # shuffled
        epochs.append(images)
    assert (pairwise_min_distance(epochs[1], epochs[0]) > 1e-3).all()
    assert (pairwise_min_distance(epochs[2], epochs[1]) > 1e-3).all()
    # the fast path serves exactly the images of per-item access for the same epoch
    twin = SyntheticDataset(gen, 5, device="cpu", seed=7, augment=None)
    twin.set_epoch(2)
    assert (pairwise_min_distance(epochs[2], epoch_items(twin)[0]) == 0).all()


def test_fast_loader_options(gen):
    ds = SyntheticDataset(gen, 5, device="cpu", seed=7)
    ordered = list(ds.loader(batch_size=16, shuffle=False, drop_last=True))
    assert [len(y) for _, y in ordered] == [16, 16, 16]
    labels = torch.cat([y for _, y in ordered]).tolist()
    assert labels == sorted(labels)
    with pytest.raises(ValueError, match="batch_size"):
        ds.loader(batch_size=0)


def loader_epochs(ds: SyntheticDataset, n: int, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = ds.loader(batch_size=16, **kwargs)
    out = []
    for _ in range(n):
        batches = list(loader)
        out.append((torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])))
    return out


def test_prefetch_default_needs_a_free_core(gen, monkeypatch):
    import synthsets.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "_usable_cpus", lambda: torch.get_num_threads() + 1)
    assert SyntheticDataset(gen, 1, device="cpu").loader().prefetch is True
    assert SyntheticDataset(gen, 1, device="cpu", augment=None).loader().prefetch is True
    # a custom callable runs in the reading thread either way, so it does not matter
    assert SyntheticDataset(gen, 1, device="cpu", augment=lambda x: x).loader().prefetch is True
    assert SyntheticDataset(gen, 1, device="cpu").loader(prefetch=False).prefetch is False
    # every core already trains: no background generation unless asked for
    monkeypatch.setattr(dataset_module, "_usable_cpus", lambda: torch.get_num_threads())
    assert SyntheticDataset(gen, 1, device="cpu").loader().prefetch is False
    assert SyntheticDataset(gen, 1, device="cpu").loader(prefetch=True).prefetch is True


@pytest.mark.parametrize("augment", ["dsa", None])
def test_prefetched_epochs_equal_epochs_generated_on_demand(gen, augment):
    with_prefetch = loader_epochs(SyntheticDataset(gen, 5, device="cpu", seed=3, augment=augment), 3, prefetch=True)
    without = loader_epochs(SyntheticDataset(gen, 5, device="cpu", seed=3, augment=augment), 3, prefetch=False)
    for (xa, ya), (xb, yb) in zip(with_prefetch, without):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(with_prefetch[0][0], with_prefetch[1][0])  # still fresh epochs


def test_prefetch_generates_the_next_epoch_in_a_background_thread(gen, monkeypatch):
    import threading

    ds = SyntheticDataset(gen, 5, device="cpu", seed=3)
    threads = []
    original = SyntheticDataset._render

    def spy(self, noise, chunk_id, epoch, *rest):
        threads.append((epoch, threading.current_thread().name))
        return original(self, noise, chunk_id, epoch, *rest)

    monkeypatch.setattr(SyntheticDataset, "_render", spy)
    loader = ds.loader(batch_size=16, prefetch=True)
    list(loader)
    ds._prefetched.result()  # let the background epoch finish
    list(loader)
    ds._prefetched.result()
    main = threading.current_thread().name
    assert {t for e, t in threads if e == 0} == {main}  # the first epoch: on demand
    assert {t for e, t in threads if e == 1} == {"synthsets-prefetch-epoch-1"}  # then ahead of time
    assert {t for e, t in threads if e == 2} == {"synthsets-prefetch-epoch-2"}
    assert len([1 for e, _ in threads if e == 1]) == ds._num_chunks  # each chunk generated once


def test_set_epoch_elsewhere_discards_the_prefetched_epoch(gen):
    ds = SyntheticDataset(gen, 5, device="cpu", seed=3)
    loader = ds.loader(batch_size=16, shuffle=False, prefetch=True)
    list(loader)  # epoch 0; epoch 1 is prefetched
    ds.set_epoch(5)
    images, _ = ds.epoch_tensors()
    twin = SyntheticDataset(gen, 5, device="cpu", seed=3)
    twin.set_epoch(5)
    assert torch.equal(images, twin.epoch_tensors()[0])
    assert ds._prefetched is None


def test_prefetch_errors_reach_the_training_loop(gen, monkeypatch):
    ds = SyntheticDataset(gen, 5, device="cpu", seed=3)
    loader = ds.loader(batch_size=16, prefetch=True)
    list(loader)
    ds._prefetched.result()

    def broken(self, epoch, cancel=None):
        raise RuntimeError("generator exploded")

    monkeypatch.setattr(SyntheticDataset, "_generate_epoch", broken)
    ds.prefetch(7)
    ds.set_epoch(7)
    with pytest.raises(RuntimeError, match="generator exploded"):
        ds.epoch_tensors()


def test_pending_prefetches_stop_at_exit(gen, monkeypatch):
    from synthsets.dataset import _stop_prefetch_threads

    ds = SyntheticDataset(gen, 200, device="cpu", seed=3, batch_size=8)  # 250 chunks
    original = SyntheticDataset._render_chunk

    def slow(self, noise, chunk_id, epoch, *rest, **options):  # 250 x 10 ms: the cancel comes long before the end
        time.sleep(0.01)
        return original(self, noise, chunk_id, epoch, *rest, **options)

    monkeypatch.setattr(SyntheticDataset, "_render_chunk", slow)
    ds.prefetch(1)
    pending = ds._prefetched
    _stop_prefetch_threads()
    assert not pending._thread.is_alive()
    assert pending.result() is None  # cancelled before the last chunk
    monkeypatch.setattr(SyntheticDataset, "_render_chunk", original)
    ds.set_epoch(1)
    twin = SyntheticDataset(gen, 200, device="cpu", seed=3, batch_size=8)
    twin.set_epoch(1)
    assert torch.equal(ds.epoch_tensors()[0], twin.epoch_tensors()[0])  # generated again on demand


def test_dataset_with_pending_prefetch_pickles(gen):
    import pickle

    ds = SyntheticDataset(gen, 5, device="cpu", seed=3)
    list(ds.loader(batch_size=16, prefetch=True))
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._prefetched is None
    copy.set_epoch(1)
    ds._prefetched.result()
    ds.set_epoch(1)
    assert torch.equal(copy.epoch_tensors()[0], ds.epoch_tensors()[0])


@pytest.mark.parametrize("dtype", ["bf16", torch.bfloat16, "fp16"])
@pytest.mark.filterwarnings("ignore:generation_dtype float16:RuntimeWarning")  # a CPU without fp16 instructions
def test_lower_precision_generation_is_close_and_returns_float32(gen, dtype):
    full = SyntheticDataset(gen, 10, device="cpu", seed=2, augment=None, normalize=False)
    low = SyntheticDataset(gen, 10, device="cpu", seed=2, augment=None, normalize=False, generation_dtype=dtype)
    a, b = full.epoch_tensors()[0], low.epoch_tensors()[0]
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert not torch.equal(a, b)  # the generator really ran in lower precision
    assert (a - b).abs().mean() < 0.01  # images in [0, 1]
    assert "generation dtype" in repr(low) and "generation dtype" not in repr(full)


def test_half_precision_weights_are_refused_with_the_fix(gen):
    with pytest.raises(ValueError, match=r"float16.*generator.float\(\).*generation_dtype"):
        SyntheticDataset(gen.half(), 2, device="cpu")


@pytest.mark.parametrize("dtype", [None, "fp32", torch.float32])
def test_full_precision_generation_spellings(gen, dtype):
    ds = SyntheticDataset(gen, 2, device="cpu", seed=2, generation_dtype=dtype)
    assert ds.generation_dtype is None


@pytest.mark.parametrize("dtype", ["int8", torch.float64, 16])
def test_bad_generation_dtype(gen, dtype):
    with pytest.raises(ValueError, match="generation_dtype"):
        SyntheticDataset(gen, 2, device="cpu", generation_dtype=dtype)


def test_fold_batchnorm_keeps_the_images_and_the_original(gen):
    from synthsets.generator import fold_batchnorm

    gen.eval()
    folded = fold_batchnorm(gen)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in gen.modules()) == 8
    assert all(p.requires_grad for p in gen.parameters())  # the original is untouched
    z = gen.make_noise(torch.arange(40) % 10)
    with torch.no_grad():
        torch.testing.assert_close(folded(z), gen(z), rtol=0, atol=1e-5)


def test_dataset_generates_with_the_current_weights(gen):
    ds = SyntheticDataset(gen, 3, device="cpu", seed=2, augment=None)
    before = ds.epoch_tensors()[0]
    with torch.no_grad():  # fine-tune in place: the folded copy must follow
        gen.body[0].weight.mul_(0.5)
    ds.set_epoch(0)
    ds._cache.clear()
    after = ds.epoch_tensors()[0]
    assert not torch.allclose(before, after)
    fresh = SyntheticDataset(gen, 3, device="cpu", seed=2, augment=None)
    torch.testing.assert_close(after, fresh.epoch_tensors()[0], rtol=0, atol=1e-6)


def test_dataset_honours_a_generator_in_training_mode(gen):
    ds = SyntheticDataset(gen, 3, device="cpu", seed=2)
    assert ds._inference_generator() is not ds.generator  # folded copy in eval mode
    ds.generator.train()
    assert ds._inference_generator() is ds.generator  # batch statistics, as asked


def test_folded_copy_follows_the_generator_layout(gen):
    ds = SyntheticDataset(gen, 3, device="cpu", seed=2)
    conv = lambda m: next(p for p in m.parameters() if p.dim() == 4)  # noqa: E731
    assert conv(ds._inference_generator()).is_contiguous(memory_format=torch.channels_last)
    ds.generator = ds.generator.to(memory_format=torch.contiguous_format)
    assert conv(ds._inference_generator()).is_contiguous()


def test_fast_loader_serves_a_peeked_epoch_then_moves_on(gen):
    """Looking at an item first does not shift the stream: the loader serves that epoch
    (the same image), and an epoch read in full is followed by the next one."""
    ds = SyntheticDataset(gen, 1, device="cpu", seed=0, augment=None)
    peeked, _ = ds[0]
    x, _ = next(iter(ds.loader(batch_size=100, shuffle=False)))
    assert ds.epoch == 0 and torch.equal(x[0], peeked)
    list(ds.loader())
    assert ds.epoch == 1
    full = SyntheticDataset(gen, 1, device="cpu", seed=0, augment=None)
    epoch_items(full)  # every item read: the loader's pass is the next epoch
    list(full.loader())
    assert full.epoch == 1


def test_a_reused_loader_follows_set_epoch(gen):
    ds = SyntheticDataset(gen, 1, device="cpu", seed=0, augment=None)
    reference = SyntheticDataset(gen, 1, device="cpu", seed=0, augment=None)
    loader = ds.loader(batch_size=100, shuffle=False)
    for epoch in (0, 1, 2, 7, 7):
        ds.set_epoch(epoch)
        (x, _), = list(loader)
        reference.set_epoch(epoch)
        assert ds.epoch == epoch and torch.equal(x, reference.epoch_tensors()[0])
    list(loader)  # without set_epoch: the next epoch
    assert ds.epoch == 8


def test_fast_loader_collates_transforms_like_a_dataloader(gen):
    """Per-item transforms that return other shapes, tuples or non-tensors are batched
    with default_collate, as DataLoader batches them."""
    import torch.nn.functional as F

    ds = SyntheticDataset(
        gen, 1, device="cpu", seed=0,
        transform=lambda x: (x, x.flip(-1)),  # two views
        target_transform=lambda y: F.one_hot(torch.tensor(y), 10).float(),
    )
    (a, b), y = next(iter(ds.loader(batch_size=8)))
    assert a.shape == b.shape == (8, 1, 28, 28) and torch.equal(b, a.flip(-1))
    assert y.shape == (8, 10) and torch.equal(y.sum(1), torch.ones(8))
    named = SyntheticDataset(gen, 1, device="cpu", seed=0, target_transform=lambda y: ds.classes[y])
    _, names = next(iter(named.loader(batch_size=4)))
    assert len(names) == 4 and set(names) <= set(ds.classes)  # strings stay strings, as in a DataLoader


def test_pickled_dataset_stays_small_after_use(gen):
    import pickle

    ds = SyntheticDataset(gen, 2, device="cpu", seed=0)
    before = len(pickle.dumps(ds))
    epoch_items(ds)  # fills the image cache, the noise and the BatchNorm-folded copy
    after = len(pickle.dumps(ds))
    assert after <= before * 1.05


def test_transform_and_target_transform(gen):
    plain = SyntheticDataset(gen, 2, device="cpu", seed=1)
    ds = SyntheticDataset(
        gen,
        2,
        device="cpu",
        seed=1,
        transform=lambda x: x.flip(-1),
        target_transform=lambda y: y + 100,
    )
    x_plain, y_plain = epoch_items(plain)
    x, y = epoch_items(ds)
    assert torch.equal(x, x_plain.flip(-1))
    assert y == [t + 100 for t in y_plain]
    ds.set_epoch(0)
    plain.set_epoch(0)
    batch_x, batch_y = next(iter(ds.loader(batch_size=len(ds), shuffle=False)))
    assert torch.equal(batch_x, x_plain.flip(-1))
    assert batch_y.tolist() == [t + 100 for t in y_plain]
    named = SyntheticDataset(gen, 1, device="cpu", target_transform=lambda t: gen.config.classes[t])
    assert named[0][1] == "digit0"


# -- torchvision-style attributes ---------------------------------------------------------------
def test_classes_and_attributes(gen):
    ds = SyntheticDataset(gen, 2, device="cpu", seed=0)
    assert ds.classes == [f"digit{i}" for i in range(10)]
    assert ds.class_to_idx == {f"digit{i}": i for i in range(10)}
    assert (ds.num_classes, ds.channels, ds.image_size) == (10, 1, 28)
    assert ds.inpc == 2 and ds.seed == 0 and ds.device == torch.device("cpu")
    assert ds.generator is gen and not gen.training


def test_repr(gen):
    ds = SyntheticDataset(gen, 3, device="cpu", seed=42, transform=torch.nn.Identity())
    text = repr(ds)
    for part in (
        "Dataset SyntheticDataset",
        "toy-mnist",
        "Number of datapoints: 30",
        "3 per class x 10 classes",
        "1x28x28",
        "mean [0.1307], std [0.3081]",
        "DSA(strategy='color_crop')",
        "seed: 42",
        "epoch: 0",
        "Transform: Identity()",
    ):
        assert part in text, part
    assert "in [0, 1]" in repr(SyntheticDataset(gen, 1, device="cpu", normalize=False, augment=None))


def test_indexing(gen):
    ds = SyntheticDataset(gen, 2, device="cpu", seed=0)
    last = ds[19]
    assert torch.equal(ds[-1][0], last[0]) and ds[-1][1] == last[1] == 9
    assert torch.equal(ds[np.int64(19)][0], last[0])
    assert torch.equal(ds[torch.tensor(19)][0], last[0])
    for bad in (20, -21):
        with pytest.raises(IndexError, match="out of range"):
            ds[bad]
    for bad in ("0", 1.0, None):
        with pytest.raises(TypeError, match="index must be an int"):
            ds[bad]


# -- argument checking ---------------------------------------------------------------------------
@pytest.mark.parametrize("inpc", [0, -1, 2.5, "10", True, None])
def test_bad_inpc(gen, inpc):
    with pytest.raises(ValueError, match="inpc .* positive int"):
        SyntheticDataset(gen, inpc)
    with pytest.raises(ValueError, match="inpc .* positive int"):
        synthsets.DiM("does-not-matter", inpc=inpc)


def test_numpy_integer_inpc_is_taken(gen):
    assert SyntheticDataset(gen, np.int64(3), augment=None).inpc == 3
    assert type(SyntheticDataset(gen, np.int32(2), augment=None).inpc) is int


@pytest.mark.parametrize("returned, got", [
    (lambda b: b[:3], "got a float32 tensor of shape (3, "),
    (lambda b: None, "got None"),
    (lambda b: b[0], "got a float32 tensor of shape (1, "),
    (lambda b: b.long(), "got a int64 tensor of shape (8, "),
])
def test_custom_augment_must_return_the_batch(gen, returned, got):
    ds = SyntheticDataset(gen, 2, device="cpu", augment=returned, batch_size=8)
    with pytest.raises(ValueError, match=r"the augment callable must return the augmented image batch, a float tensor "
                                         r"\(N, C, H, W\) with N = \d+ as given, " + re.escape(got)):
        ds[0]


def test_custom_augment_output_is_float32(gen):
    ds = SyntheticDataset(gen, 2, device="cpu", augment=lambda b: b.half(), batch_size=8)
    assert ds[0][0].dtype == torch.float32


def random_flip(batch):
    """A custom augment drawing from torch's global RNG, as torchvision transforms do."""
    flip = torch.rand(len(batch)) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch) + 0.01 * torch.randn(1)


def test_custom_augment_is_reproducible_and_leaves_the_global_rng_alone(gen):
    make = lambda seed: SyntheticDataset(gen, 4, device="cpu", seed=seed, augment=random_flip, batch_size=16)
    first = make(5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    epochs = [epoch_items(first)[0] for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), before)  # the training loop's random stream is untouched
    torch.rand(7)  # another state of the global RNG: the images do not depend on it
    again = make(5)
    assert all(torch.equal(x, epoch_items(again)[0]) for x in epochs)
    first.set_epoch(0)
    assert torch.equal(epoch_items(first)[0], epochs[0])  # an epoch revisited: the same draws
    assert not torch.equal(epochs[0], epochs[1])
    assert not torch.equal(epoch_items(make(6))[0], epochs[0])


def test_prefetch_with_a_custom_augment_gives_the_same_images(gen):
    with_prefetch = loader_epochs(SyntheticDataset(gen, 5, device="cpu", seed=3, augment=random_flip), 3, prefetch=True)
    without = loader_epochs(SyntheticDataset(gen, 5, device="cpu", seed=3, augment=random_flip), 3, prefetch=False)
    for (xa, ya), (xb, yb) in zip(with_prefetch, without):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("prefetch", [True, False])
def test_images_follow_the_generators_weights(gen, prefetch):
    ds = SyntheticDataset(copy.deepcopy(gen), 4, device="cpu", seed=1, augment=None)
    loader = ds.loader(batch_size=8, shuffle=False, prefetch=prefetch)
    list(loader)  # epoch 0; with prefetch, epoch 1 is generated in the background
    if ds._prefetched is not None:
        ds._prefetched.result()  # finished before the change
    with torch.no_grad():
        for p in ds.generator.parameters():
            p.mul_(0.5)
    changed = torch.cat([x for x, _ in loader])
    reference = SyntheticDataset(copy.deepcopy(ds.generator), 4, device="cpu", seed=1, augment=None)
    reference.set_epoch(1)
    assert torch.equal(changed, torch.cat([x for x, _ in reference.loader(batch_size=8, shuffle=False, prefetch=False)]))
    # the same epoch again after another change: set_epoch regenerates it
    with torch.no_grad():
        for p in ds.generator.parameters():
            p.mul_(2.0)
    ds.set_epoch(1)
    again = torch.cat([x for x, _ in loader])
    assert not torch.equal(again, changed)


def test_loader_flags_and_integer_arguments(gen):
    ds = SyntheticDataset(gen, 2, device="cpu", seed=np.int64(3), batch_size=np.int64(8))
    assert (ds.seed, ds.batch_size) == (3, 8) and type(ds.seed) is int
    assert SyntheticDataset(gen, torch.tensor(2), device="cpu").inpc == 2
    assert ds.loader(batch_size=np.int64(4)).batch_size == 4
    for name in ("shuffle", "drop_last", "prefetch"):
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            ds.loader(**{name: "no"})
    with pytest.raises(TypeError, match="index must be an int, got bool"):
        ds[True]
    with pytest.raises(AttributeError, match=r"epoch is read-only; call set_epoch\(3\)"):
        ds.epoch = 3


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"normalize": "no"}, TypeError, "normalize must be True or False, got 'no'"),
        ({"seed": "x"}, TypeError, "seed must be an int"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"augment": 42}, TypeError, "augment must be 'dsa'"),
        ({"augment": "color_blur"}, ValueError, "unknown DSA op 'blur'"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"transform": "flip"}, TypeError, "transform must be callable"),
        ({"target_transform": 3}, TypeError, "target_transform must be callable"),
        ({"distributed": "yes"}, ValueError, "distributed must be"),
    ],
)
def test_bad_arguments(gen, kwargs, error, match):
    with pytest.raises(error, match=match):
        SyntheticDataset(gen, 1, **kwargs)


def test_generation_dtype_without_cpu_support_warns(gen, monkeypatch):
    import synthsets.dataset as dataset_mod

    monkeypatch.setattr(dataset_mod, "_cpu_runs_natively", lambda dtype: dtype != torch.float16)
    with pytest.warns(RuntimeWarning, match="no float16 instructions.*much slower than float32"):
        SyntheticDataset(gen, 1, device="cpu", generation_dtype="fp16")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SyntheticDataset(gen, 1, device="cpu", generation_dtype="bf16")  # supported: silent
        SyntheticDataset(gen, 1, device="cpu")


def test_cpu_dtype_probe():
    from synthsets.dataset import _cpu_runs_natively

    assert _cpu_runs_natively(torch.float32) is True
    assert _cpu_runs_natively(torch.bfloat16) in (True, False) and _cpu_runs_natively(torch.float16) in (True, False)


def test_resolve_device(monkeypatch):
    from synthsets.dataset import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"unknown device 'gpu0': use 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match=r"'cuda:1' was asked for but CUDA is not available .* use 'cpu'"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"'xpu' was asked for but xpu is not available .* use 'cpu'"):
        resolve_device("xpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' does not exist: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("device,match", [("foo", "unknown device 'foo'"), ("cuda:99", "cuda:99")])
def test_bad_device(gen, device, match):
    if device.startswith("cuda") and not torch.cuda.is_available():
        match = "CUDA is not available"
    with pytest.raises(ValueError, match=match):
        SyntheticDataset(gen, 1, device=device)


@pytest.mark.parametrize("generator", [None, "mnist", torch.nn.Linear(100, 10)])
def test_generator_must_be_a_generator(generator):
    with pytest.raises(TypeError, match="generator must be a synthsets.Generator"):
        SyntheticDataset(generator, 1)


def test_dataloader_workers_share_the_epoch_counter(gen):
    """With worker processes every pass is still a balanced, fresh epoch, the same images
    as the single-process reader gets."""
    ds = SyntheticDataset(gen, 4, device="cpu", seed=5, augment=None)
    reference = SyntheticDataset(gen, 4, device="cpu", seed=5, augment=None)
    loader = DataLoader(ds, batch_size=8, shuffle=False, num_workers=2, multiprocessing_context="fork")
    epochs = []
    for epoch in range(2):
        xs, ys = zip(*loader)
        images, labels = torch.cat(xs), torch.cat(ys)
        assert Counter(labels.tolist()) == {k: 4 for k in range(10)}
        reference.set_epoch(epoch)
        assert torch.allclose(images, reference.epoch_tensors()[0], atol=1e-6)
        epochs.append(images)
    assert ds.epoch == 1  # the main process sees the workers' progress
    assert (pairwise_min_distance(epochs[1], epochs[0]) > 1e-3).all()


def test_persistent_workers_follow_set_epoch(gen):
    """set_epoch reaches workers that outlive a pass (persistent_workers=True)."""
    ds = SyntheticDataset(gen, 2, device="cpu", seed=5, augment=None)
    reference = SyntheticDataset(gen, 2, device="cpu", seed=5, augment=None)
    loader = DataLoader(ds, batch_size=5, shuffle=False, num_workers=2, persistent_workers=True,
                        multiprocessing_context="fork")
    for epoch in (3, 4, 9):
        ds.set_epoch(epoch)
        images = torch.cat([x for x, _ in loader])
        reference.set_epoch(epoch)
        assert torch.allclose(images, reference.epoch_tensors()[0], atol=1e-6), epoch
    images = torch.cat([x for x, _ in loader])  # no set_epoch: the workers move on by themselves
    reference.set_epoch(10)
    assert torch.allclose(images, reference.epoch_tensors()[0], atol=1e-6)


def test_dataloader_workers_refuse_accelerator_generation(gen, monkeypatch):
    ds = SyntheticDataset(gen, 1, device="cpu", seed=0)
    ds.device = torch.device("meta")  # stands for CUDA: no accelerator on the test machine
    monkeypatch.setattr("synthsets.dataset.get_worker_info", lambda: type("W", (), {"id": 0})())
    with pytest.raises(RuntimeError, match="num_workers=0"):
        ds[0]


# -- distributed sharding ------------------------------------------------------------------------
def test_uneven_shards_have_equal_length_and_cover_the_epoch(gen, monkeypatch):
    full = SyntheticDataset(gen, 5, device="cpu", seed=3, augment=None, distributed=False)
    full_images, full_labels = epoch_items(full)
    seen = []
    for rank in range(3):
        monkeypatch.setattr("synthsets.dataset._dist_rank_world", lambda rank=rank: (rank, 3))
        shard = SyntheticDataset(gen, 5, device="cpu", seed=3, augment=None)
        assert len(shard) == 17  # ceil(50 / 3): equal lengths keep DDP ranks in step
        assert "rank %d of 3" % rank in repr(shard)
        images, labels = epoch_items(shard)
        index = [(rank + 3 * i) % 50 for i in range(17)]
        assert torch.equal(images, full_images[index])
        assert labels == [full_labels[i] for i in index]
        seen += index
    assert set(seen) == set(range(50))
    # distributed=False ignores the process group
    monkeypatch.setattr("synthsets.dataset._dist_rank_world", lambda: (1, 3))
    assert len(SyntheticDataset(gen, 5, device="cpu", seed=3, distributed=False)) == 50


def _ddp_worker(rank: int, world_size: int, folder: str, init_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(1000 + rank)  # seed=None: rank 0's draw must be broadcast
        generator = Generator.from_pretrained(folder)
        ds = SyntheticDataset(generator, 3, device="cpu", augment=None)
        out = {"seed": ds.seed, "len": len(ds), "repr": repr(ds), "targets": list(ds.targets)}
        out["epoch0"] = torch.stack([ds[i][0] for i in range(len(ds))])
        out["labels0"] = [ds[i][1] for i in range(len(ds))]
        ds.set_epoch(1)
        out["epoch1"], out["labels1"] = (t.cpu() for t in ds.epoch_tensors())
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_ranks_get_disjoint_balanced_shards(make_generator, tmp_path):
    import torch.multiprocessing as mp

    folder = tmp_path / "gen"
    generator = make_generator(image_size=28, channels=1)
    generator.save_pretrained(folder)
    # fork: the children need not re-import torch (spawn costs seconds per process)
    context = mp.start_processes(
        _ddp_worker, args=(2, str(folder), str(tmp_path / "rendezvous")), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # re-raises a worker's exception
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish within 120 s")
    results = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]

    assert results[0]["seed"] == results[1]["seed"]  # shared stream
    assert [r["len"] for r in results] == [15, 15]
    assert "rank 1 of 2" in results[1]["repr"]
    for r in results:
        assert r["labels0"] == r["targets"]
    labels = results[0]["labels0"] + results[1]["labels0"]
    assert Counter(labels) == {k: 3 for k in range(10)}  # the union is exactly balanced
    assert (pairwise_min_distance(results[0]["epoch0"], results[1]["epoch0"]) > 1e-3).all()  # disjoint

    # each shard is the rank::2 slice of the single-process epoch with the same seed
    full = SyntheticDataset(Generator.from_pretrained(folder), 3, device="cpu", augment=None,
                            seed=results[0]["seed"], distributed=False)
    full_images, full_labels = epoch_items(full)
    for rank, r in enumerate(results):
        assert torch.equal(r["epoch0"], full_images[rank::2])
        assert r["labels0"] == full_labels[rank::2]
    # epoch 1 is fresh on both ranks and still balanced overall
    labels1 = results[0]["labels1"].tolist() + results[1]["labels1"].tolist()
    assert Counter(labels1) == {k: 3 for k in range(10)}
    for r in results:
        assert (pairwise_min_distance(r["epoch1"], r["epoch0"]) > 1e-3).all()


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64])
def test_seeds_outside_the_mixing_range_are_refused(gen, seed):
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*63\)"):
        SyntheticDataset(gen, 1, device="cpu", seed=seed)


def test_meta_device_is_refused(gen):
    with pytest.raises(ValueError, match="device 'meta' holds no data"):
        SyntheticDataset(gen, 1, device="meta")


@pytest.mark.parametrize("workers", [0, 2])
def test_items_looked_at_first_do_not_shift_dataloader_epochs(gen, workers):
    """ds[0] (twice) before training: every DataLoader pass is still exactly one epoch."""
    ds = SyntheticDataset(gen, 2, device="cpu", seed=3, augment=None)
    reference = SyntheticDataset(gen, 2, device="cpu", seed=3, augment=None)
    peeked, _ = ds[0]
    assert torch.equal(ds[0][0], peeked) and ds.epoch == 0  # looked at twice: the same image, the same epoch
    kwargs = {"multiprocessing_context": "fork"} if workers else {}
    loader = DataLoader(ds, batch_size=5, shuffle=False, num_workers=workers, **kwargs)
    for epoch in range(2):
        images = torch.cat([x for x, _ in loader])
        reference.set_epoch(epoch)
        assert torch.allclose(images, reference.epoch_tensors()[0], atol=1e-6), epoch
    assert ds.epoch == 1


def test_dataloader_passes_after_the_same_set_epoch(gen):
    ds = SyntheticDataset(gen, 2, device="cpu", seed=3, augment=None)
    reference = SyntheticDataset(gen, 2, device="cpu", seed=3, augment=None)
    loader = DataLoader(ds, batch_size=5, shuffle=True)
    for _ in range(2):  # the same epoch chosen twice: two full passes over it
        ds.set_epoch(0)
        labels = torch.cat([y for _, y in loader])
        assert Counter(labels.tolist()) == {k: 2 for k in range(10)} and ds.epoch == 0
    images = torch.cat([x for x, _ in DataLoader(ds, batch_size=5, shuffle=False)])
    reference.set_epoch(1)
    assert ds.epoch == 1 and torch.allclose(images, reference.epoch_tensors()[0], atol=1e-6)


def test_loader_warns_when_drop_last_leaves_no_batch(recwarn):
    """A batch larger than the epoch with drop_last=True would train on nothing."""
    import synthsets

    ds = synthsets.DiM("mnist", inpc=2, device="cpu")
    with pytest.warns(UserWarning, match=r"drop_last=True with batch_size 64 larger than an epoch \(20 images\)") as warned:
        loader = ds.loader(batch_size=64, drop_last=True)
    assert [w.filename for w in warned] == [__file__] and len(loader) == 0
    recwarn.clear()
    assert len(ds.loader(batch_size=64)) == 1 and not recwarn.list  # the last batch kept: no warning


def test_dim_checks_its_keyword_arguments_before_loading(gen, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded before the arguments were checked")

    monkeypatch.setattr(Generator, "from_pretrained", no_loading)
    with pytest.raises(TypeError, match=r"DiM\(\) got an unexpected keyword argument 'revison' \(did you mean "
                                        r"'revision'\?\); it takes revision, cache_dir"):
        synthsets.DiM("mnist", 2, revison="main")
    with pytest.raises(TypeError, match=r"for a Generator object use synthsets.SyntheticDataset\(generator, inpc\)"):
        synthsets.DiM(gen, 2)
