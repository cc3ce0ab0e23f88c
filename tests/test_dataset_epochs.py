"""SyntheticDataset epochs under torch DataLoader passes: every pass is one epoch of new
images, also when a pass leaves items out (drop_last, Subset, an early break)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset

import synthsets
from synthsets import Generator, SyntheticDataset

pytestmark = pytest.mark.usefixtures("single_thread")

WORKERS = [0, 2]


@pytest.fixture
def gen(make_generator) -> Generator:
    return make_generator(image_size=28, channels=1, mean=[0.1307], std=[0.3081])


def make(gen: Generator, inpc: int = 3) -> SyntheticDataset:
    return SyntheticDataset(gen, inpc, device="cpu", seed=0, augment=None)


def loader_kwargs(workers: int) -> dict:
    return {"num_workers": workers, "multiprocessing_context": "fork"} if workers else {}


def reference_epochs(gen: Generator, n: int, inpc: int = 3) -> list[torch.Tensor]:
    reference = make(gen, inpc)
    out = []
    for epoch in range(n):
        reference.set_epoch(epoch)
        out.append(reference.epoch_tensors()[0])
    return out


def epochs_of(images: torch.Tensor, references: list[torch.Tensor]) -> list[set[int]]:
    """For each image, the epochs whose images it is (an empty set: none)."""
    return [
        {e for e, ref in enumerate(references) if ((ref - image).abs().flatten(1).amax(1) < 1e-5).any()}
        for image in images
    ]


def one_pass(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("shuffle", [False, True])
def test_each_drop_last_pass_is_exactly_one_new_epoch(gen, shuffle, workers):
    """30 items, batches of 8, drop_last: every pass reads 24 items, all of the next epoch."""
    ds = make(gen)
    references = reference_epochs(gen, 3)
    loader = DataLoader(ds, batch_size=8, shuffle=shuffle, drop_last=True, **loader_kwargs(workers))
    seen = []
    for epoch in range(3):
        images, _ = one_pass(loader)
        assert images.shape[0] == 24
        assert ds.epoch == epoch
        assert epochs_of(images, references) == [{epoch}] * 24  # moved on once, at the pass start
        for earlier in seen:  # no image comes back
            assert not torch.cdist(images.flatten(1), earlier.flatten(1)).lt(1e-3).any()
        seen.append(images)


def test_persistent_workers_move_on_each_drop_last_pass(gen):
    ds = make(gen)
    references = reference_epochs(gen, 3)
    loader = DataLoader(ds, batch_size=8, shuffle=True, drop_last=True, persistent_workers=True,
                        **loader_kwargs(2))
    for epoch in range(3):
        images, _ = one_pass(loader)
        assert ds.epoch == epoch and epochs_of(images, references) == [{epoch}] * 24


@pytest.mark.parametrize("workers", WORKERS)
def test_subset_passes_are_new_epochs(gen, workers):
    ds = make(gen)
    references = reference_epochs(gen, 3)
    loader = DataLoader(Subset(ds, range(10)), batch_size=4, **loader_kwargs(workers))
    for epoch in range(3):
        images, _ = one_pass(loader)
        assert ds.epoch == epoch
        assert torch.allclose(images, references[epoch][:10], atol=1e-5)


@pytest.mark.parametrize("workers", WORKERS)
def test_a_pass_after_an_early_break_is_a_new_epoch(gen, workers):
    ds = make(gen)
    references = reference_epochs(gen, 2)
    loader = DataLoader(ds, batch_size=8, **loader_kwargs(workers))
    for x, _ in loader:  # one batch, then stop
        assert torch.allclose(x, references[0][:8], atol=1e-5)
        break
    images, _ = one_pass(loader)
    assert ds.epoch == 1 and torch.allclose(images, references[1], atol=1e-5)


def test_train_and_val_splits_of_one_dataset(gen):
    """random_split: the two loaders together read one epoch; each train pass is new."""
    ds = make(gen)
    references = reference_epochs(gen, 3)
    train, val = torch.utils.data.random_split(ds, [24, 6], generator=torch.Generator().manual_seed(0))
    train_loader = DataLoader(train, batch_size=8, shuffle=True)
    val_loader = DataLoader(val, batch_size=8)
    for epoch in range(3):
        train_images, _ = one_pass(train_loader)
        val_images, _ = one_pass(val_loader)
        assert ds.epoch == epoch
        assert epochs_of(train_images, references) == [{epoch}] * 24
        assert epochs_of(val_images, references) == [{epoch}] * 6


def test_items_looked_at_around_partial_passes(gen):
    """ds[i] is a look: the same image twice, and it does not shift the next pass; reading an
    item that a pass has read in this epoch shows the next epoch."""
    ds = make(gen)
    references = reference_epochs(gen, 3)
    loader = DataLoader(ds, batch_size=8, drop_last=True)  # reads items 0..23
    first, _ = ds[29]
    assert torch.equal(ds[29][0], first) and torch.allclose(first, references[0][29], atol=1e-5)
    images, _ = one_pass(loader)
    assert ds.epoch == 0 and torch.allclose(images, references[0][:24], atol=1e-5)
    unread, _ = ds[28]  # left out by drop_last: still epoch 0
    assert ds.epoch == 0 and torch.allclose(unread, references[0][28], atol=1e-5)
    again, _ = ds[3]  # read by the pass: the next epoch
    assert ds.epoch == 1 and torch.allclose(again, references[1][3], atol=1e-5)
    images, _ = one_pass(loader)  # the look did not consume epoch 1
    assert ds.epoch == 1 and torch.allclose(images, references[1][:24], atol=1e-5)
    images, _ = one_pass(loader)
    assert ds.epoch == 2 and torch.allclose(images, references[2][:24], atol=1e-5)


def test_set_epoch_before_each_pass_selects_it(gen):
    ds = make(gen)
    references = reference_epochs(gen, 3)
    loader = DataLoader(ds, batch_size=8, shuffle=True, drop_last=True)
    for epoch in (0, 2, 2, 1):  # the same epoch twice: two passes over it
        ds.set_epoch(epoch)
        images, _ = one_pass(loader)
        assert ds.epoch == epoch and epochs_of(images, references) == [{epoch}] * 24


def test_fast_loader_after_a_drop_last_pass_serves_the_next_epoch(gen):
    ds = make(gen)
    references = reference_epochs(gen, 3)
    one_pass(DataLoader(ds, batch_size=8, drop_last=True))
    images, _ = one_pass(ds.loader(batch_size=100, shuffle=False))
    assert ds.epoch == 1 and torch.allclose(images, references[1], atol=1e-5)
    images, _ = one_pass(DataLoader(ds, batch_size=8, drop_last=True))  # the loader consumed epoch 1
    assert ds.epoch == 2 and torch.allclose(images, references[2][:24], atol=1e-5)


def test_a_repeated_item_within_a_pass_starts_the_next_epoch(gen):
    """What samplers with replacement get: the batch that repeats an item is a new epoch."""
    ds = make(gen)
    references = reference_epochs(gen, 3)
    loader = DataLoader(ds, batch_sampler=[[0, 1], [2, 3], [3, 4], [5, 0]])
    batches = [x for x, _ in loader]
    assert ds.epoch == 1
    assert [epochs_of(x, references) for x in batches] == [[{0}] * 2, [{0}] * 2, [{1}] * 2, [{1}] * 2]


def test_bundled_mnist_drop_last_passes_never_repeat_an_image():
    """The reported case: DiM('mnist', inpc=3), batches of 8 with drop_last, shuffled."""
    ds = synthsets.DiM("mnist", inpc=3, seed=0, device="cpu")
    loader = DataLoader(ds, batch_size=8, shuffle=True, drop_last=True)
    seen = torch.empty(0, ds.channels * ds.image_size**2)
    for epoch in range(3):
        images, _ = one_pass(loader)
        flat = images.flatten(1)
        assert ds.epoch == epoch and len(flat) == 24
        if len(seen):
            assert not torch.cdist(flat, seen).lt(1e-3).any()
        seen = torch.cat([seen, flat])


@pytest.mark.parametrize("copy_with", ["deepcopy", "pickle"])
def test_a_copied_dataset_keeps_its_epochs_shared_with_its_workers(gen, copy_with):
    import copy
    import pickle

    ds = make(gen)
    ds.set_epoch(1)
    copied = copy.deepcopy(ds) if copy_with == "deepcopy" else pickle.loads(pickle.dumps(ds))
    assert copied._epoch_state.is_shared() and copied._pass_reads.is_shared()
    assert copied.epoch == 1
    references = reference_epochs(gen, 4)
    loader = DataLoader(copied, batch_size=8, **loader_kwargs(2))
    for epoch in (1, 2, 3):  # the workers' reads reach the copy: each pass moves on
        images, _ = one_pass(loader)
        assert epochs_of(images, references) == [{epoch}] * 30
    assert copied.epoch == 3 and ds.epoch == 1  # the copy is independent of the original


def test_the_epoch_changes_in_one_store(gen):
    """A worker reading the epoch while set_epoch changes it sees the old or the new one, never a mix."""
    import multiprocessing

    ds = make(gen)
    ds.set_epoch(5)
    ctx = multiprocessing.get_context("fork")
    seen = ctx.Queue()

    def reader():
        epochs = set()
        for _ in range(50_000):
            epochs.add(ds.epoch)
        seen.put(sorted(epochs))

    process = ctx.Process(target=reader)
    process.start()
    while process.is_alive():
        for epoch in (0, 5):
            ds.set_epoch(epoch)
        process.join(0)
    assert set(seen.get(timeout=10)) <= {0, 5}


def test_set_epoch_takes_numpy_integers_and_refuses_out_of_range(gen):
    import numpy as np

    ds = make(gen)
    ds.set_epoch(np.int64(4))
    assert ds.epoch == 4 and type(ds.epoch) is int
    ds.set_epoch(2**31 - 1)  # the last epoch: served, and moving past it says so
    assert ds.epoch == 2**31 - 1
    one_pass(DataLoader(ds, batch_size=8))
    with pytest.raises(OverflowError, match=r"epoch 2147483647 is the last one \(epochs stay below 2\*\*31\); call set_epoch"):
        one_pass(DataLoader(ds, batch_size=8))
    for bad in (-1, 2**31, 1.0, True):
        with pytest.raises(ValueError, match="epoch must be a non-negative int below 2\\*\\*31"):
            ds.set_epoch(bad)
