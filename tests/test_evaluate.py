"""Tests of synthsets.evaluate (the deployment protocol, baselines, outputs, CLI) and synthsets.export."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from synthsets import Generator, SyntheticDataset
from synthsets.data import RealData, RealSplit
from synthsets.evaluate import (
    ProtocolConfig,
    Source,
    evaluate,
    evaluate_source,
    fixed_batches,
    generator_batches,
    images_per_epoch,
    lr_at,
    main,
    markdown_table,
    merge,
    parse_shard,
    plot_accuracy,
    random_subset,
    read_results,
    run_protocol,
    sampled_batches,
    summarize,
    update_cards,
    write_outputs,
)
from synthsets.export import load_materialized, materialize

CLASSES = ["a", "b", "c", "d"]
MEAN, STD = [0.3], [0.4]
TINY = {"width": 8}  # ConvNet width for fast CPU runs


def quadrants(per_class: int, seed: int, channels: int = 1, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """A trivially separable toy set: class c has a bright quadrant c, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat(per_class)
    images = torch.randn(len(labels), channels, size, size, generator=g) * 0.3
    half = size // 2
    for i, c in enumerate(labels.tolist()):
        r, k = divmod(c, 2)
        images[i, :, r * half : (r + 1) * half, k * half : (k + 1) * half] += 2.0
    return images, labels


def toy_real(per_class: int = 8, test_per_class: int = 5) -> RealData:
    xtr, ytr = quadrants(per_class, 0)
    xte, yte = quadrants(test_per_class, 1)
    return RealData(
        name="toy", train=RealSplit(xtr, ytr), test=RealSplit(xte, yte), classes=list(CLASSES),
        channels=1, image_size=28, mean=list(MEAN), std=list(STD),
    )


def tiny_generator(seed: int = 0, **overrides) -> Generator:
    torch.manual_seed(seed)
    kwargs = dict(num_classes=4, channels=1, image_size=28, width=16, dataset="toy", classes=list(CLASSES), mean=MEAN, std=STD)
    kwargs.update(overrides)
    return Generator(**kwargs).eval()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread (and do not fight parallel test runs for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real() -> RealData:
    return toy_real()


@pytest.fixture(scope="module")
def gen() -> Generator:
    return tiny_generator()


def fast(**kw):
    base = dict(epochs=2, epoch_images="exact", batch_size=16)
    base.update(kw)
    return ProtocolConfig(**base)


# ----------------------------------------------------------------------------- protocol pieces
def test_images_per_epoch_reference_and_exact():
    # reference: 10 * ipc // 128 + 1 batches of 128 for ten classes
    assert images_per_epoch(10, 1) == 128
    assert images_per_epoch(10, 10) == 128
    assert images_per_epoch(10, 50) == 4 * 128
    assert images_per_epoch(10, 50, mode="exact") == 500
    assert images_per_epoch(100, 10, batch_size=256) == (1000 // 256 + 1) * 256
    with pytest.raises(ValueError, match="epoch_images"):
        images_per_epoch(10, 1, mode="twice")


def test_lr_schedules():
    step = ProtocolConfig(epochs=10, lr=0.01)
    assert lr_at(step, 0) == lr_at(step, 4) == 0.01
    assert lr_at(step, 5) == pytest.approx(0.001) and lr_at(step, 9) == pytest.approx(0.001)
    cos = ProtocolConfig(epochs=10, lr=0.01, schedule="cosine")
    assert lr_at(cos, 0) == pytest.approx(0.01) and lr_at(cos, 5) == pytest.approx(0.005)
    assert lr_at(ProtocolConfig(epochs=10, schedule="none"), 9) == 0.01
    with pytest.raises(ValueError, match="schedule"):
        ProtocolConfig(schedule="linear")
    with pytest.raises(ValueError, match="unknown DSA op"):
        ProtocolConfig(augment="color_wobble")


def test_random_subset_is_class_balanced_and_fixed(real):
    idx = random_subset(real, 3, seed=5)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12
    assert torch.bincount(real.train.labels[idx], minlength=4).tolist() == [3, 3, 3, 3]
    assert torch.equal(idx, random_subset(real.train.labels, 3, seed=5, num_classes=4))
    assert not torch.equal(idx, random_subset(real, 3, seed=6))
    with pytest.raises(ValueError, match="fewer than"):
        random_subset(real, 9)


def test_fixed_and_sampled_batches(real):
    x, y = real.train.images[:6], real.train.labels[:6]
    batches = fixed_batches(x, y, 16, batch_size=5, seed=1, device="cpu")
    epoch0 = batches(0)
    assert [len(b[1]) for b in epoch0] == [5, 5, 5, 1]
    labels = torch.cat([b[1] for b in epoch0])
    assert torch.bincount(labels, minlength=4).sum() == 16
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch0, batches(0)))  # epoch e is reproducible
    one_pass = fixed_batches(x, y, batch_size=4, device="cpu")(0)
    assert sorted(torch.cat([b[1] for b in one_pass]).tolist()) == sorted(y.tolist())

    whole = sampled_batches(real.train, 4, 12, batch_size=8, seed=0, device="cpu")
    got = torch.cat([b[1] for b in whole(0)])
    assert len(got) == 12 and torch.bincount(got, minlength=4).tolist() == [3, 3, 3, 3]


def test_generator_batches_fresh_normalised_and_reproducible(gen):
    batches = generator_batches(gen, 3, mean=[0.5], std=[0.25], batch_size=5, epoch_images="exact", seed=3, device="cpu")
    epoch0 = batches(0)
    assert [len(b[1]) for b in epoch0] == [5, 5, 2]
    x = torch.cat([b[0] for b in epoch0])
    y = torch.cat([b[1] for b in epoch0])
    assert x.shape == (12, 1, 28, 28) and torch.bincount(y, minlength=4).tolist() == [3, 3, 3, 3]
    # normalised with the given stats: [0, 1] images map into [-2, 2]
    assert x.min() >= -2 - 1e-5 and x.max() <= 2 + 1e-5
    again = torch.cat([b[0] for b in batches(0)])
    assert torch.equal(x, again)
    assert not torch.allclose(torch.cat([b[0] for b in batches(1)]), x)  # fresh images every epoch
    ref = generator_batches(gen, 3, batch_size=16, epoch_images="reference", seed=3, device="cpu")
    assert sum(len(b[1]) for b in ref(0)) == images_per_epoch(4, 3, 16)


def test_protocol_learns_a_separable_toy_problem(real):
    xtr, ytr = quadrants(16, 2)
    result = run_protocol(
        fixed_batches(xtr, ytr, batch_size=32, seed=0, device="cpu"), real.test, "convnet3", 4, 1, 28,
        epochs=12, lr=0.05, model_kwargs={"width": 16}, device="cpu", seed=0, test_interval=4,
    )
    assert result["final_acc"] >= 90.0
    assert [h[0] for h in result["history"]] == [4, 8, 12]
    assert result["best_acc"] >= result["final_acc"]
    assert result["steps"] == 12 * 2 and result["images_seen"] == 12 * 64
    assert math.isfinite(result["final_loss"])


def test_protocol_trains_resnets_channels_last_on_cpu(real, monkeypatch):
    """run_protocol trains in the layout preferred_memory_format picks: channels_last for a
    BatchNorm ResNet on a CPU (faster there), and the toy problem is still learnt."""
    import synthsets.evaluate as evaluate_mod

    layouts = []
    real_create = evaluate_mod.create_model

    def spy(*args, **kwargs):
        model = real_create(*args, **kwargs)
        forward = model.forward

        def recording_forward(x):
            conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            layouts.append(conv.weight.is_contiguous(memory_format=torch.channels_last))
            return forward(x)

        model.forward = recording_forward
        return model

    monkeypatch.setattr(evaluate_mod, "create_model", spy)
    xtr, ytr = quadrants(16, 2)
    result = run_protocol(
        fixed_batches(xtr, ytr, batch_size=32, seed=0, device="cpu"), real.test, "resnet10", 4, 1, 28,
        epochs=8, lr=0.05, device="cpu", seed=0,
    )
    assert layouts and all(layouts)
    assert result["final_acc"] >= 90.0


def _toy_protocol(real, **kwargs):
    xtr, ytr = quadrants(16, 2)
    return run_protocol(
        fixed_batches(xtr, ytr, batch_size=32, seed=0, device="cpu"), real.test, "convnet3", 4, 1, 28,
        epochs=6, lr=0.05, model_kwargs=TINY, device="cpu", seed=0, **kwargs,
    )


def test_compile_failure_falls_back_to_the_same_eager_run(real, gen, monkeypatch):
    import synthsets.evaluate as evaluate_mod

    class Broken(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            raise RuntimeError("no C++ compiler found\nlong details")

    eager = _toy_protocol(real)
    monkeypatch.setattr(evaluate_mod.torch, "compile", Broken)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed for convnet3 \(RuntimeError: no C\+\+ compiler found\)"):
        fallback = _toy_protocol(real, compile=True)
    assert fallback["final_loss"] == eager["final_loss"] and fallback["history"] == eager["history"]
    # evaluate_source records the option, outside the settings runs are compared on
    with pytest.warns(RuntimeWarning):
        (record,) = evaluate_source(gen, real, 2, "convnet3", config=ProtocolConfig(epochs=1), device="cpu",
                                    model_kwargs=TINY, compile=True)
    assert record["settings"]["compile"] is True


def test_compile_trains_the_same_model(real):
    """A real torch.compile run learns what the eager run learns (float noise apart)."""
    import warnings

    eager = _toy_protocol(real)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = _toy_protocol(real, compile=True)
    if any("torch.compile failed" in str(w.message) for w in caught):
        pytest.skip("torch.compile does not work on this machine (the fallback is tested above)")
    assert compiled["final_acc"] == pytest.approx(eager["final_acc"], abs=1.0)
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-2, abs=1e-3)


def test_generation_dtype_is_used_and_recorded(real, gen, monkeypatch):
    import synthsets.evaluate as evaluate_mod

    seen = []
    original = evaluate_mod.SyntheticDataset

    def spy(*args, **kwargs):
        seen.append(kwargs.get("generation_dtype"))
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "SyntheticDataset", spy)
    config = ProtocolConfig(epochs=1)
    (fp32,) = evaluate_source(gen, real, 2, "convnet3", config=config, device="cpu", model_kwargs=TINY)
    (bf16,) = evaluate_source(gen, real, 2, "convnet3", config=config, device="cpu", model_kwargs=TINY, generation_dtype="bf16")
    (baseline,) = evaluate_source("random-real", real, 2, "convnet3", config=config, device="cpu", model_kwargs=TINY,
                                  generation_dtype="bf16")
    assert seen == [None, torch.bfloat16]  # the baseline generates nothing
    assert "generation_dtype" not in fp32["settings"] and "generation_dtype" not in baseline["settings"]
    assert bf16["settings"]["generation_dtype"] == "bfloat16"
    assert bf16["final_loss"] != fp32["final_loss"]  # other images, another run
    assert "images generated in bfloat16, not float32" in markdown_table([bf16, baseline])
    assert "generated in" not in markdown_table([fp32, baseline])
    with pytest.warns(UserWarning, match="used different settings"):  # never averaged with float32 runs unnoticed
        markdown_table([fp32, {**bf16, "run": 1}])
    with pytest.raises(ValueError, match="generation_dtype must be"):
        evaluate([gen], real=real, inpc=[2], runs=1, config=config, device="cpu", progress=False, generation_dtype="int8")


def test_cli_passes_generation_dtype(monkeypatch, tmp_path):
    import synthsets.evaluate as evaluate_mod

    captured = {}
    monkeypatch.setattr(evaluate_mod, "evaluate", lambda *a, **kw: captured.update(kw) or [])
    gen_dir = tmp_path / "g"
    tiny_generator().save_pretrained(gen_dir)
    assert main(["--generator", str(gen_dir), "--device", "cpu", "--no-progress", "--generation-dtype", "bf16"]) == 0
    assert captured["generation_dtype"] == "bf16"
    assert main(["--generator", str(gen_dir), "--device", "cpu", "--no-progress"]) == 0
    assert captured["generation_dtype"] == "fp32"  # the protocol's default


def test_run_is_reproducible_with_a_seed(real, gen):
    def once(seed):
        batches = generator_batches(gen, 2, mean=real.mean, std=real.std, batch_size=8, epoch_images="exact", seed=seed, device="cpu")
        return run_protocol(batches, real.test, "convnet3", 4, 1, 28, epochs=3, model_kwargs=TINY, device="cpu", seed=seed,
                            test_interval=1, lr=0.05)
    a, b = once(7), once(7)
    assert a["final_acc"] == b["final_acc"] and a["history"] == b["history"] and a["final_loss"] == b["final_loss"]
    assert once(8)["final_loss"] != a["final_loss"]


def test_cutmix_and_augment_options(real):
    x, y = quadrants(4, 3)
    for kw in ({"augment": "none", "cutmix": False}, {"augment": "dsa", "cutmix_prob": 0.5}, {"augment": lambda t: t.flip(-1)}):
        out = run_protocol(fixed_batches(x, y, device="cpu"), real.test, "convnet3", 4, 1, 28, epochs=1,
                           model_kwargs=TINY, device="cpu", **kw)
        assert 0 <= out["final_acc"] <= 100


# ----------------------------------------------------------------------------- sources and records
def test_evaluate_source_records(real, gen):
    records = evaluate_source(Source.from_spec(gen, label="g"), real, 2, "convnet3", runs=2, seed=10, config=fast(),
                              device="cpu", model_kwargs=TINY)
    assert [r["run"] for r in records] == [0, 1] and [r["seed"] for r in records] == [10, 11]
    r = records[0]
    for key in ("source", "dataset", "inpc", "model", "run", "seed", "final_acc", "best_acc", "epochs", "seconds", "settings"):
        assert key in r
    assert (r["source"], r["dataset"], r["inpc"], r["model"], r["epochs"]) == ("g", "toy", 2, "convnet3", 2)
    assert r["settings"]["images_per_epoch"] == 8 and r["settings"]["augment"] == "color_crop"
    baseline = evaluate_source("random-real", real, 2, "convnet3", config=fast(), device="cpu", model_kwargs=TINY)
    assert baseline[0]["source"] == "random-real" and baseline[0]["kind"] == "random-real"


def test_generator_must_fit_the_real_data(real):
    with pytest.raises(ValueError, match="channels"):
        evaluate_source(tiny_generator(channels=3, mean=[0.5] * 3, std=[0.5] * 3), real, 1, config=fast(), device="cpu")
    odd = tiny_generator(mean=[0.9], std=[0.1])
    with pytest.warns(UserWarning, match="normalisation"):
        evaluate_source(odd, real, 1, config=fast(epochs=1), device="cpu", model_kwargs=TINY)
    no_test = RealData("x", real.train, None, CLASSES, 1, 28, MEAN, STD)
    with pytest.raises(ValueError, match="test split"):
        evaluate_source("whole", no_test, 1, config=fast(), device="cpu")


def test_evaluate_writes_json_markdown_and_plot(tmp_path, real, gen):
    records = evaluate([Source.from_spec(gen, label="gen")], baselines=["random-real", "whole"], real=real, inpc=[1, 2],
                       runs=2, config=fast(test_interval=1), device="cpu", model_kwargs=TINY, progress=False, out=tmp_path)
    assert len(records) == 3 * 2 * 2
    paths = write_outputs(records, tmp_path)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert len(payload["runs"]) == 12
    md = (tmp_path / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| toy |")]
    assert len(rows) == 6
    assert rows[0].startswith("| toy | gen | 1 | convnet3 |") and rows[-1].startswith("| toy | whole | 2 | convnet3 |")
    assert "best (periodic)" in md and "±" in rows[0] and rows[0].rstrip().endswith("| 2 |")
    assert paths["plot"] is not None and paths["plot"].stat().st_size > 0
    summary = summarize(records)
    assert [(s["source"], s["inpc"]) for s in summary][:3] == [("gen", 1), ("gen", 2), ("random-real", 1)]


def test_best_column_only_with_periodic_tests(real):
    records = evaluate(baselines=["random-real"], real=real, inpc=[1], runs=1, config=fast(), device="cpu",
                       model_kwargs=TINY, progress=False)
    row = markdown_table(records).splitlines()[-1]
    assert row.endswith("| — | 1 |") and "±" not in row


def test_shards_merge_into_the_unsharded_result(tmp_path, real, gen):
    kw = dict(baselines=["random-real"], real=real, inpc=[1, 2], runs=2, config=fast(), device="cpu",
              model_kwargs=TINY, progress=False)
    full = evaluate([Source.from_spec(gen, label="gen")], **kw)
    parts = tmp_path / "parts"
    for i in range(3):
        evaluate([Source.from_spec(gen, label="gen")], shard=f"{i}/3", out=parts, **kw)
    assert sorted(p.name for p in parts.iterdir()) == [f"results.rank{i}.json" for i in range(3)]
    merged = merge([parts])
    assert (parts / "results.md").is_file() and (parts / "results.json").is_file()

    def key(r):
        return (r["source"], r["inpc"], r["model"], r["run"])
    assert sorted(map(key, merged)) == sorted(map(key, full))
    by_key = {key(r): r["final_acc"] for r in full}
    assert all(by_key[key(r)] == r["final_acc"] for r in merged)  # per-job seeds: sharding changes nothing
    # CLI merge of JSON files into another folder
    assert main(["merge", *map(str, sorted(parts.glob("results.rank*.json"))), "--out", str(tmp_path / "m")]) == 0
    assert len(read_results([tmp_path / "m"])) == len(full)
    assert main(["--merge", str(parts), "--out", str(tmp_path / "m2")]) == 0
    # merged in place: an unsharded --resume continues from the merged results (more runs)
    more = evaluate([Source.from_spec(gen, label="gen")], out=parts, resume=True, **{**kw, "runs": 3})
    assert len(more) == len(full) * 3 // 2 and len(read_results([parts / "results.json"])) == len(more)


def test_unsharded_resume_of_unmerged_rank_results_names_them(tmp_path, real, gen):
    kw = dict(baselines=["random-real"], real=real, inpc=[1], runs=2, config=fast(), device="cpu",
              model_kwargs=TINY, progress=False)
    parts = tmp_path / "parts"
    evaluate([Source.from_spec(gen, label="gen")], shard="0/2", out=parts, **kw)
    with pytest.raises(FileExistsError, match=r"holds the per-rank results of a sharded or torchrun evaluation "
                                              r"\(results.rank0.json\); resume it with the same number of processes"):
        evaluate([Source.from_spec(gen, label="gen")], out=parts, resume=True, **kw)


def test_parse_shard(monkeypatch):
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard(None) == (2, 3)


def test_resume_skips_finished_runs(tmp_path, real):
    kw = dict(baselines=["random-real"], real=real, inpc=[1], config=fast(), device="cpu", model_kwargs=TINY,
              progress=False, out=tmp_path)
    first = evaluate(runs=1, **kw)
    again = evaluate(runs=2, resume=True, **kw)
    assert len(again) == 2 and again[0] == first[0]


def _rewrite_settings(path, **changes):
    payload = json.loads(path.read_text())
    for record in payload["runs"]:
        record["settings"].update(changes)
    path.write_text(json.dumps(payload))


def test_resume_refuses_runs_made_with_other_settings(tmp_path, real, gen):
    kw = dict(baselines=["random-real"], real=real, inpc=[1], runs=1, device="cpu", model_kwargs=TINY, progress=False,
              out=tmp_path)
    first = evaluate([Source.from_spec(gen, label="gen")], config=fast(epochs=2), **kw)
    results = tmp_path / "results.json"
    before = results.read_text()
    cases = [
        (dict(config=fast(epochs=3)), "epochs=2; this run asks for epochs=3"),
        (dict(config=fast(lr=0.05, schedule="cosine")), "lr=0.01, schedule=step; this run asks for lr=0.05, schedule=cosine"),
        (dict(config=fast(epoch_images="reference")), "epoch_images=exact; this run asks for epoch_images=reference"),
        (dict(config=fast(test_interval=1)), "test_interval=0; this run asks for test_interval=1"),
        (dict(config=fast(), seed=5), "seed=0; this run asks for seed=5"),
        (dict(config=fast(), generation_dtype="bf16"),
         "generation_dtype=float32; this run asks for generation_dtype=bfloat16"),  # only the generator's runs
    ]
    for changes, expected in cases:
        with pytest.raises(ValueError) as caught:
            evaluate([Source.from_spec(gen, label="gen")], resume=True, **{**kw, **changes})
        assert str(caught.value) == (
            f"{results} holds runs made with {expected}: use another --out (out=), or drop --resume (resume=False) to start over"
        )
    assert results.read_text() == before  # refused before running anything
    with pytest.raises(ValueError, match=r'model_kwargs={"width": 8}; this run asks for model_kwargs={"width": 4}'):
        evaluate([Source.from_spec(gen, label="gen")], resume=True, config=fast(epochs=2), **{**kw, "model_kwargs": {"width": 4}})

    # settings that do not change results (or name the machine) may differ: nothing is rerun
    _rewrite_settings(results, device="cuda:3", compile=True, test_batch_size=500)
    again = evaluate([Source.from_spec(gen, label="gen")], resume=True, config=fast(epochs=2, test_interval=0), **kw)
    assert [r["final_loss"] for r in again] == [r["final_loss"] for r in first]
    assert {r["settings"]["device"] for r in again} == {"cuda:3"}
    # without --resume a folder holding results is refused, not replaced
    before = results.read_text()
    with pytest.raises(FileExistsError) as caught:
        evaluate([Source.from_spec(gen, label="gen")], config=fast(epochs=3), **kw)
    assert str(caught.value) == (
        f"{tmp_path} already holds results ({results}); pass --resume (resume=True) to continue them, "
        "or choose another --out (out=)"
    )
    assert results.read_text() == before


def test_out_without_results_is_used_without_resume(tmp_path, real):
    """Only a results file holding runs is refused: a folder with just a plot or table, or with
    an empty results file (a shard that had no jobs), loses nothing when written into."""
    kw = dict(baselines=["random-real"], real=real, inpc=[1], runs=1, config=fast(epochs=1), device="cpu",
              model_kwargs=TINY, progress=False, out=tmp_path)
    (tmp_path / "accuracy_vs_inpc.png").write_bytes(b"old plot")
    (tmp_path / "results.md").write_text("old table\n")
    assert len(evaluate(**kw)) == 1
    assert evaluate(shard="1/2", **kw) == []  # writes an empty results.rank1.json
    assert evaluate(shard="1/2", **kw) == []  # which is replaced without a word


def test_cli_refuses_an_out_holding_results_without_resume(tmp_path, capsys, monkeypatch, real):
    import synthsets.evaluate as evaluate_mod

    monkeypatch.setattr(evaluate_mod, "load_real", lambda *a, **kw: real)
    out = tmp_path / "ev"
    args = ["--baselines", "random-real", "--data", "toy", "--inpc", "1", "--runs", "1", "--epochs", "1",
            "--batch-size", "16", "--epoch-images", "exact", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    before = (out / "results.json").read_text()
    capsys.readouterr()
    assert main(args) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {out} already holds results ({out / 'results.json'}); pass --resume (resume=True) to continue them, "
        "or choose another --out (out=)"
    )
    assert (out / "results.json").read_text() == before
    assert main([*args, "--resume"]) == 0


def test_cli_resume_with_other_settings_is_a_one_line_error(tmp_path, capsys, monkeypatch, real):
    import synthsets.evaluate as evaluate_mod

    monkeypatch.setattr(evaluate_mod, "load_real", lambda *a, **kw: real)
    out = tmp_path / "ev"
    args = ["--baselines", "random-real", "--data", "toy", "--inpc", "1", "--runs", "1", "--batch-size", "16",
            "--epoch-images", "exact", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main([*args, "--epochs", "2"]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "3", "--resume"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {out / 'results.json'} holds runs made with epochs=2; this run asks for epochs=3: "
        "use another --out (out=), or drop --resume (resume=False) to start over"
    )
    assert main([*args, "--epochs", "2", "--resume"]) == 0  # the same settings resume (nothing left to run)
    assert len(read_results([out])) == 1


def test_an_empty_shard_writes_an_empty_results_file_that_merges(tmp_path, real):
    kw = dict(baselines=["random-real"], real=real, inpc=[1], runs=1, config=fast(epochs=1), device="cpu",
              model_kwargs=TINY, progress=False)  # one job: shard 1/2 has none
    assert evaluate(shard="1/2", out=tmp_path / "ev1", **kw) == []
    payload = json.loads((tmp_path / "ev1" / "results.rank1.json").read_text())
    assert payload["runs"] == [] and payload["format"] == "synthsets-evaluate"
    assert read_results([tmp_path / "ev1"]) == []
    evaluate(shard="0/2", out=tmp_path / "ev0", **kw)
    merged = merge([tmp_path / "ev0", tmp_path / "ev1"], tmp_path / "all")
    assert len(merged) == 1 and (tmp_path / "all" / "results.md").is_file()
    assert merge([tmp_path / "ev1"]) == []  # a merge of empty shards alone is valid too


def test_cli_shards_print_how_to_merge_every_shard(tmp_path, capsys, monkeypatch, real):
    import synthsets.evaluate as evaluate_mod

    monkeypatch.setattr(evaluate_mod, "load_real", lambda *a, **kw: real)
    args = ["--baselines", "random-real", "--data", "toy", "--inpc", "1", "--runs", "1", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--no-progress"]
    ev0, ev1 = tmp_path / "ev0", tmp_path / "ev1"
    assert main([*args, "--shard", "0/2", "--out", str(ev0)]) == 0
    # no sibling folder yet: this shard's folder in its place, placeholders for the others
    assert capsys.readouterr().err.strip() == (
        f"shard 0/2 done (this shard's --out: {ev0}); combine the shards by passing every shard's --out folder "
        f"(a folder the shards share, once): python -m synthsets.evaluate merge {ev0} OUT_SHARD1"
    )
    assert main([*args, "--shard", "1/2", "--out", str(ev1)]) == 0  # no jobs: still writes its file
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"python -m synthsets.evaluate merge {ev0} {ev1}")  # the ev{i} pattern, with ev0 there
    assert main(["merge", str(ev0), str(ev1)]) == 0
    assert "| toy | random-real | 1 | convnet3 |" in capsys.readouterr().out
    assert len(read_results([ev0])) == 1  # merged into the first folder

    shared = tmp_path / "shared"
    for i in (0, 1):
        assert main([*args, "--shard", f"{i}/2", "--out", str(shared)]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"shard 1/2 done; all 2 shards' results are in {shared}; combine them with: "
        f"python -m synthsets.evaluate merge {shared}"
    )


def test_shard_merge_hint_patterns(tmp_path):
    from synthsets.evaluate import _merge_hint

    (tmp_path / "run00").mkdir()
    assert _merge_hint(tmp_path / "run02", (2, 3)).endswith(
        f"merge {tmp_path / 'run00'} {tmp_path / 'run01'} {tmp_path / 'run02'}")
    assert _merge_hint(tmp_path / "exp1", (1, 2)).endswith("merge OUT_SHARD0 " + str(tmp_path / "exp1"))  # no exp0
    (tmp_path / "ev_20261").mkdir()  # the digits that spell the shard index end the name
    assert _merge_hint(tmp_path / "ev_20260", (0, 2)).endswith(f"merge {tmp_path / 'ev_20260'} {tmp_path / 'ev_20261'}")
    (tmp_path / "p3").mkdir()
    assert _merge_hint(tmp_path / "p12", (12, 13)).endswith(f"merge {tmp_path / 'p0'} {tmp_path / 'p1'} ... {tmp_path / 'p12'}")
    assert _merge_hint(tmp_path / "x", (0, 12)).endswith(f"merge {tmp_path / 'x'} OUT_SHARD1 ... OUT_SHARD11")
    assert "nothing was saved to merge (no --out)" in _merge_hint(None, (0, 2))


def test_small_inpcs_of_a_generator_are_the_same_run_in_reference_mode(real, gen):
    """4 classes, batch 16: INPC 1..3 all train on 16 images per epoch, the same ones."""
    config = fast(epoch_images="reference", epochs=2)
    kw = dict(config=config, device="cpu", model_kwargs=TINY)
    one, three = (evaluate_source(gen, real, v, **kw)[0] for v in (1, 3))
    assert one["settings"]["images_per_epoch"] == three["settings"]["images_per_epoch"] == 16
    for key in ("final_acc", "final_loss", "history", "steps", "images_seen"):
        assert one[key] == three[key], key
    whole = [evaluate_source("whole", real, v, **kw)[0] for v in (1, 3)]
    assert whole[0]["final_loss"] == whole[1]["final_loss"]
    subset = [evaluate_source("random-real", real, v, **kw)[0] for v in (1, 3)]
    assert subset[0]["final_loss"] != subset[1]["final_loss"]  # a fixed subset of INPC images per class


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch, real):
    records = evaluate(baselines=["random-real"], real=real, inpc=[1], runs=1, config=fast(epochs=1), device="cpu",
                       model_kwargs=TINY, progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(UserWarning, match="matplotlib"):
        assert plot_accuracy(records, tmp_path / "p.png") is None
    with pytest.warns(UserWarning, match="matplotlib"):
        paths = write_outputs(records, tmp_path)
    assert paths["plot"] is None and (tmp_path / "results.md").is_file()


def test_update_cards_writes_the_table(tmp_path, real, gen):
    folder = tmp_path / "gen"
    gen.save_pretrained(folder)
    (folder / "README.md").write_text("# my generator\n")
    source = Source.from_spec(str(folder))
    assert source.label == "gen" and source.folder == folder
    records = evaluate([source], baselines=["random-real"], real=real, inpc=[1], runs=1, config=fast(epochs=1),
                       device="cpu", model_kwargs=TINY, progress=False)
    assert update_cards(records, [source]) == [folder / "README.md"]
    card = (folder / "README.md").read_text()
    assert "# my generator" in card and "| toy | gen | 1 | convnet3 |" in card and "| toy | random-real | 1 |" in card
    # merge --update-card finds the generator folder from the records
    (folder / "README.md").write_text("# reset\n")
    write_outputs(records, tmp_path / "out")
    assert main(["merge", str(tmp_path / "out"), "--update-card"]) == 0
    assert "| toy | gen | 1 | convnet3 |" in (folder / "README.md").read_text()


def test_merge_update_card_leaves_read_only_generators_and_data_folders_alone(tmp_path, monkeypatch):
    """Records of a bundled generator name a spec like 'mnist': a data folder of that name
    in the working directory is not its card; the generator is named as not updated."""
    import synthsets.evaluate as evaluate_mod

    bundled = Source.from_spec("mnist")
    record = {"kind": "generator", "source": "mnist", "spec": "mnist", "dataset": "mnist", "model": "convnet3",
              "inpc": 1, "run": 0, "final_acc": 90.0}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist" / "raw").mkdir(parents=True)  # a torchvision data folder named like it
    with pytest.warns(UserWarning, match=r"--update-card: 'mnist' not updated: not a local generator folder"):
        assert evaluate_mod.update_cards([record]) == []
    assert not (tmp_path / "mnist" / "README.md").exists() and bundled.folder is None
    # the same through a loaded Generator (its source is the name it was loaded by)
    from synthsets import Generator

    assert Source.from_spec(Generator.from_pretrained("mnist")).folder is None


# ----------------------------------------------------------------------------- export
def test_materialize_in_memory_is_fixed_and_unaugmented(gen):
    ds = SyntheticDataset(gen, 3, seed=4, device="cpu")  # augmented by default
    images, labels = materialize(ds, ipc=2)
    assert images.shape == (8, 1, 28, 28) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert images.min() >= 0 and images.max() <= 1
    plain = SyntheticDataset(gen, 3, seed=4, device="cpu", augment=None)
    assert torch.equal(images, ds.materialize(2)[0]) and torch.equal(images, materialize(plain, 2)[0])
    expected = SyntheticDataset(gen, 2, seed=4, device="cpu", augment=None, normalize=False).epoch_tensors()[0]
    assert torch.allclose(images, expected.clamp(0, 1))
    assert len(materialize(ds)[1]) == 12  # default: dataset.inpc per class


def test_materialize_image_folder_loads_with_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import to_tensor

    rgb = tiny_generator(channels=3, image_size=32, mean=[0.5] * 3, std=[0.5] * 3, classes=["cat", "dog", "ant", "bee"])
    ds = SyntheticDataset(rgb, 1, seed=0, device="cpu")
    path = ds.materialize(3, path=tmp_path / "fixed")
    assert path == tmp_path / "fixed"
    folder = ImageFolder(str(path))
    assert len(folder) == 12
    assert torch.bincount(torch.tensor(folder.targets)).tolist() == [3, 3, 3, 3]
    # folder names keep the generator's label order for ImageFolder's sorted class indices
    assert [c.split("_", 1)[1] for c in folder.classes] == ["cat", "dog", "ant", "bee"]
    images, labels = ds.materialize(3)
    image, target = folder[0]
    assert image.size == (32, 32) and target == 0
    assert (to_tensor(image) - images[0]).abs().max() <= 1 / 255 + 1e-6
    grey = SyntheticDataset(tiny_generator(), 1, seed=0, device="cpu").materialize(2, path=tmp_path / "grey", fmt="folder")
    assert sorted(p.name for p in grey.iterdir()) == CLASSES
    assert sorted(p.name for p in (grey / "a").iterdir()) == ["0.png", "1.png"]


def test_materialize_safetensors_roundtrip(tmp_path, gen):
    ds = SyntheticDataset(gen, 2, seed=9, device="cpu")
    path = ds.materialize(path=tmp_path / "set.safetensors")
    images, labels, meta = load_materialized(path)
    ref_images, ref_labels = ds.materialize()
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    assert meta["classes"] == CLASSES and meta["mean"] == MEAN and meta["std"] == STD
    other = materialize(ds, 1, path=tmp_path / "data.bin", fmt="safetensors")
    assert load_materialized(other)[0].shape[0] == 4
    with pytest.raises(ValueError, match="fmt"):
        materialize(ds, path=tmp_path / "x", fmt="zip")
    with pytest.raises(ValueError, match="ipc"):
        materialize(ds, ipc=0)


# ----------------------------------------------------------------------------- CLI
def _write_image_folder(root, per_class_train=4, per_class_test=2):
    from PIL import Image

    for split, n, seed in (("train", per_class_train, 0), ("test", per_class_test, 1)):
        images, labels = quadrants(n, seed, channels=3, size=32)
        pixels = ((images.clamp(-1, 2) + 1) / 3 * 255).round().to(torch.uint8)
        for i, (img, label) in enumerate(zip(pixels, labels.tolist())):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")


def test_cli_end_to_end_on_an_image_folder(tmp_path, capsys):
    data = tmp_path / "toyset"
    _write_image_folder(data)
    from synthsets.data import load_real

    stats = load_real(data, with_test=False)
    gen_dir = tmp_path / "mygen"
    tiny_generator(channels=3, image_size=32, dataset=str(data), mean=stats.mean, std=stats.std).save_pretrained(gen_dir)
    out = tmp_path / "eval"
    rc = main([
        "--generator", f"mine={gen_dir}", str(gen_dir), "--baselines", "random-real", "--inpc", "1", "2",
        "--epochs", "2", "--epoch-images", "exact", "--runs", "1", "--device", "cpu", "--out", str(out),
        "--test-interval", "1", "--no-progress", "--update-card",
    ])
    assert rc == 0
    assert (out / "results.json").is_file() and (out / "results.md").is_file() and (out / "accuracy_vs_inpc.png").is_file()
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted({r["source"] for r in runs}) == ["mine", "mygen", "random-real"] and len(runs) == 6
    assert all(r["dataset"] == "toyset" and r["epochs"] == 2 and r["settings"]["epoch_images"] == "exact" for r in runs)
    printed = capsys.readouterr().out
    assert "| toyset | mine | 1 | convnet3 |" in printed
    assert "| toyset | mygen | 2 | convnet3 |" in (gen_dir / "README.md").read_text()


def test_cli_errors(tmp_path, capsys):
    assert main(["--epochs", "1"]) == 2
    assert "--generator" in capsys.readouterr().err
    assert main(["--baselines", "random-real", "--data", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert main(["merge", str(tmp_path / "nothing")]) == 2
    capsys.readouterr()
    assert main(["--baselines", "random-real", "--device", "foo", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown device 'foo'")


# ----------------------------------------------------------------------------- CLI error messages, help, tables
def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("damage, expected", [
    ("truncated weights", "is not a readable safetensors file"),
    ("wrong width", "do not match the model built from its config.json"),
    ("invalid json", "config.json is not valid JSON"),
    ("config value of the wrong type", "config.json"),
    ("bad config value", "GeneratorConfig.width must be a positive int"),
])
def test_cli_reports_broken_generator_files_in_one_line(tmp_path, capsys, damage, expected):
    gen_dir = tmp_path / "g"
    tiny_generator().save_pretrained(gen_dir)
    config_file, weights_file = gen_dir / "config.json", gen_dir / "model.safetensors"
    config = json.loads(config_file.read_text())
    if damage == "truncated weights":
        weights_file.write_bytes(weights_file.read_bytes()[:100])
    elif damage == "wrong width":
        config_file.write_text(json.dumps({**config, "width": 8}))
    elif damage == "invalid json":
        config_file.write_text('{"num_classes": 4,')
    elif damage == "config value of the wrong type":
        config_file.write_text(json.dumps({**config, "mean": 0.5}))
    else:
        config_file.write_text(json.dumps({**config, "width": -1}))
    assert main(["--generator", str(gen_dir), "--device", "cpu", "--no-progress"]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_cli_names_the_channel_mismatch_with_a_named_dataset(tmp_path, capsys):
    gen_dir = tmp_path / "colour"
    tiny_generator(channels=3, image_size=32, dataset="cifar10", mean=[0.5] * 3, std=[0.25] * 3).save_pretrained(gen_dir)
    # fails before reading any data: the (empty) root would otherwise give a not-found error
    assert main(["--generator", str(gen_dir), "--data", "mnist", "--root", str(tmp_path), "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "ev")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        "error: generator 'colour' makes 3-channel images but mnist has 1 channel; "
        "use a generator trained on mnist (e.g. --generator mnist)"
    )
    assert "channels=" not in line
    with pytest.raises(ValueError, match="makes 1-channel images but svhn has 3 channels; use a generator trained on svhn "
                                         r"\(train one with python -m synthsets.distill --data svhn\)"):
        evaluate([tiny_generator()], data="svhn", root=tmp_path, inpc=[1], runs=1, progress=False)


def test_cli_refuses_an_out_path_that_is_a_file(tmp_path, capsys, real):
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder")
    assert main(["--baselines", "random-real", "--data", "toy", "--out", str(afile), "--no-progress"]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: --out {afile} is a file; give a folder path"
    assert main(["--baselines", "random-real", "--data", "toy", "--out", str(afile / "sub"), "--no-progress"]) == 2
    assert "which is a file; give a folder path" in _one_error_line(capsys.readouterr().err)
    results = tmp_path / "res"
    write_outputs(evaluate(baselines=["random-real"], real=real, inpc=[1], runs=1, config=fast(epochs=1), device="cpu",
                           model_kwargs=TINY, progress=False), results)
    assert main(["merge", str(results), "--out", str(afile)]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: --out {afile} is a file; give a folder path"
    with pytest.raises(ValueError, match="is a file; give a folder path"):
        evaluate(baselines=["random-real"], real=real, inpc=[1], runs=1, out=afile, progress=False)


def test_help_shows_defaults_cutmix_and_the_merge_subcommand():
    from synthsets.evaluate import build_parser

    parser = build_parser()
    text = " ".join(parser.format_help().split())  # unwrap
    for flag_help in ("SGD learning rate (default 0.01", "SGD momentum (default 0.9", "SGD weight decay (default 0.0005",
                      "training batch size (default 128", "--no-cutmix turns it off", "(default 1.0)"):
        assert flag_help in text
    assert "python -m synthsets.evaluate merge RESULTS... [--out OUT] [--update-card]" in text
    assert text.count("merge RESULTS...") >= 2  # in the usage and in the epilog
    assert "small INPCs share that 128-image floor" in text
    assert ("with 10 classes INPC 1 and INPC 10 both train on the same 128 images per epoch, so they are the same run "
            "(up to GPU nondeterminism) for a generator and for the whole baseline") in text
    assert "fresh images" not in text
    assert "the same settings (protocol, --seed, --generation-dtype; --device and --compile may differ)" in text
    assert "each shard writes OUT/results.rank{i}.json (empty if it had no jobs): merge every shard's OUT" in text
    assert parser.parse_args([]).cutmix is True
    assert parser.parse_args(["--cutmix"]).cutmix is True and parser.parse_args(["--no-cutmix"]).cutmix is False


def _record(inpc: int, n_images: int | None, mode: str = "reference") -> dict:
    settings = {**ProtocolConfig(epoch_images=mode).to_json(), "device": "cpu"}
    if n_images is not None:
        settings["images_per_epoch"] = n_images
    return {"source": "gen", "kind": "generator", "dataset": "mnist", "inpc": inpc, "model": "convnet3", "run": 0,
            "final_acc": 90.0, "best_acc": 90.0, "epochs": 1000, "history": [[1000, 90.0]], "settings": settings}


def test_markdown_table_states_images_per_epoch():
    records = [_record(v, images_per_epoch(10, v)) for v in (1, 10, 50)]
    md = markdown_table(records)
    assert "| dataset | source | INPC | model | images/epoch | accuracy (%) | best (periodic) | runs |" in md
    assert "| mnist | gen | 1 | convnet3 | 128 | 90.00 | — | 1 |" in md
    assert "| mnist | gen | 10 | convnet3 | 128 | 90.00 | — | 1 |" in md
    assert "| mnist | gen | 50 | convnet3 | 512 | 90.00 | — | 1 |" in md
    assert (
        "batch 128, (C·INPC // 128 + 1) × 128 images per epoch as in the reference code (at least 128, so INPCs with "
        "C·INPC < 128 train on the same number of images: for a generator or the whole baseline the same images, so "
        "the same run up to GPU nondeterminism; see the images/epoch column)"
    ) in md
    exact = markdown_table([_record(1, 10, "exact")])
    assert "C·INPC images per epoch" in exact and "| mnist | gen | 1 | convnet3 | 10 |" in exact
    assert "| mnist | gen | 1 | convnet3 | — |" in markdown_table([_record(1, None)])  # older results files


def test_evaluated_rows_show_their_images_per_epoch(real):
    records = evaluate(baselines=["random-real"], real=real, inpc=[1, 8], runs=1, config=fast(epochs=1, epoch_images="reference"),
                       device="cpu", model_kwargs=TINY, progress=False)
    md = markdown_table(records)
    assert "| toy | random-real | 1 | convnet3 | 16 |" in md  # 4 classes, batch 16: (4 // 16 + 1) * 16
    assert "| toy | random-real | 8 | convnet3 | 48 |" in md  # (32 // 16 + 1) * 16


def test_evaluate_passes_progress_to_the_data_loader(monkeypatch, real):
    import synthsets.evaluate as evaluate_mod

    calls = []

    def fake_load_real(*args, **kwargs):
        calls.append(kwargs)
        return real

    monkeypatch.setattr(evaluate_mod, "load_real", fake_load_real)
    for progress in (False, True):
        evaluate(baselines=["random-real"], data="toy", inpc=[1], runs=1, config=fast(epochs=1), device="cpu",
                 model_kwargs=TINY, progress=progress)
    assert [c["progress"] for c in calls] == [False, True]
    calls.clear()
    assert main(["--baselines", "random-real", "--data", "toy", "--inpc", "1", "--runs", "1", "--epochs", "1",
                 "--batch-size", "16", "--device", "cpu", "--no-progress", "--models", "convnet3"]) == 0
    assert calls[0]["progress"] is False


def test_python_api_takes_single_values_and_refuses_fractional_inpc(real, gen, monkeypatch):
    """evaluate("name") and models="convnet3", inpc=1: a single value, not split into
    characters; a fractional INPC is refused rather than truncated."""
    import synthsets.evaluate as evaluate_mod

    seen = []
    monkeypatch.setattr(evaluate_mod, "evaluate_source", lambda source, real, inpc, model, **kw: seen.append(
        (source.label, inpc, model)) or [{"source": source.label, "inpc": inpc, "model": model, "final_acc": 0.0}])
    monkeypatch.setattr(evaluate_mod.Source, "from_spec", classmethod(
        lambda cls, spec, label=None: evaluate_mod.Source(label=str(spec), kind="generator", generator=gen)))
    evaluate_mod.evaluate("toy-gen", real=real, inpc=1, models="convnet3", runs=1, config=ProtocolConfig(epochs=1),
                          progress=False)
    assert [(s, i, m) for s, i, m in seen] == [("toy-gen", 1, "convnet3")]
    for bad in ([1.5], ["10"], [True], []):
        with pytest.raises(ValueError, match="inpc values must be positive ints"):
            evaluate_mod.evaluate([gen], real=real, inpc=bad, runs=1)


# ----------------------------------------------------------------------------- user review: merge, --out, --update-card
def _edit_runs(source, target, edit):
    """Copy results file ``source`` to ``target`` with ``edit(record)`` applied to every run."""
    payload = json.loads(source.read_text())
    for record in payload["runs"]:
        edit(record)
    target.write_text(json.dumps(payload))
    return target


def _assert_merge_refused(paths, out, expected, capsys):
    """merge() raises ValueError(expected); the merge command prints it as its one error line and exits 2."""
    with pytest.raises(ValueError) as caught:
        merge(paths, out)
    assert str(caught.value) == expected
    assert main(["merge", *map(str, paths), "--out", str(out)]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: {expected}"


def test_merge_refuses_runs_made_with_other_settings(tmp_path, capsys, real, gen):
    kw = dict(baselines=["random-real"], real=real, inpc=[1], runs=1, device="cpu", model_kwargs=TINY, progress=False)
    one, two = tmp_path / "one", tmp_path / "two"
    evaluate([Source.from_spec(gen, label="gen")], config=fast(epochs=1), out=one, **kw)
    evaluate(config=fast(epochs=2), out=two, **kw)
    expected = (
        f"{two / 'results.json'} holds runs made with epochs=2; {one / 'results.json'} holds runs made with epochs=1: "
        "results made with different settings cannot be merged into one table"
    )
    _assert_merge_refused([one, two], tmp_path / "m", expected, capsys)
    assert not (tmp_path / "m").exists() and not (one / "results.md").exists()  # nothing written
    # compared as --resume compares: the base seed too, but not the device
    seeded = _edit_runs(one / "results.json", tmp_path / "seeded.json", lambda r: r.update(seed=r["seed"] + 5))
    with pytest.raises(ValueError, match=r"seeded.json holds runs made with seed=5; .* holds runs made with seed=0"):
        merge([one, seeded], tmp_path / "m")
    elsewhere = _edit_runs(one / "results.json", tmp_path / "gpu.json",
                           lambda r: r.update(run=1, seed=1, settings={**r["settings"], "device": "cuda:0"}))
    assert len(merge([one, elsewhere], tmp_path / "m")) == 4
    # generation_dtype is compared between generator runs only (a baseline generates nothing)
    bf16 = _edit_runs(one / "results.json", tmp_path / "bf16.json", lambda r: r.update(
        run=2, seed=2, settings={**r["settings"], "generation_dtype": "bfloat16"} if r["kind"] == "generator" else r["settings"]))
    assert len(merge([bf16], tmp_path / "m")) == 2  # bf16 generator runs beside the baseline's, as evaluate writes them
    with pytest.raises(ValueError, match=r"holds runs made with generation_dtype=float32; .*bf16.json holds runs made "
                                         r"with generation_dtype=bfloat16"):
        merge([bf16, one], tmp_path / "m")


def test_merge_refuses_a_run_found_twice_with_different_results(tmp_path, capsys, real, gen):
    one = tmp_path / "one"
    evaluate([Source.from_spec(gen, label="gen")], real=real, inpc=[1], runs=1, config=fast(epochs=1), device="cpu",
             model_kwargs=TINY, progress=False, out=one)
    results = one / "results.json"
    rerun = _edit_runs(results, tmp_path / "rerun.json", lambda r: r.update(final_acc=r["final_acc"] + 1))
    expected = (
        f"{results} and {rerun} both hold run 0 of gen / toy / INPC 1 / convnet3, with different results: "
        "merge only one of them"
    )
    _assert_merge_refused([one, rerun], tmp_path / "m", expected, capsys)
    assert not (tmp_path / "m").exists()
    # the same record read twice is kept once, silently; so is a copy that differs only in
    # timing, device or paths (the same run, e.g. a stale rank file)
    assert merge([one, results], tmp_path / "m") == read_results([one])
    moved = _edit_runs(results, tmp_path / "moved.json",
                       lambda r: r.update(seconds=r["seconds"] + 5, spec="elsewhere", settings={**r["settings"], "device": "cuda:0"}))
    assert merge([one, moved], tmp_path / "m2") == read_results([one])


def test_cli_without_out_says_nothing_will_be_saved(tmp_path, capsys, monkeypatch):
    import synthsets.evaluate as evaluate_mod

    def fake_evaluate(*a, on_start=None, **kw):  # as evaluate(): on_start once everything is checked
        on_start()
        return []

    monkeypatch.setattr(evaluate_mod, "evaluate", fake_evaluate)
    args = ["--baselines", "random-real", "--data", "toy", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    assert capsys.readouterr().err == (
        "no --out: the results will not be saved, only printed at the end; pass --out DIR to save them "
        "(and to allow --resume)\n"
    )
    assert main([*args, "--out", str(tmp_path / "ev")]) == 0
    assert "no --out" not in capsys.readouterr().err


def test_cli_update_card_refuses_a_bundled_generator(capsys, monkeypatch, tmp_path):
    import synthsets.evaluate as evaluate_mod

    calls = []
    monkeypatch.setattr(evaluate_mod, "evaluate", lambda *a, **kw: calls.append(kw) or [])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist" / "raw").mkdir(parents=True)  # a data folder named like the bundled generator
    assert main(["--generator", "mnist", "--update-card", "--device", "cpu", "--no-progress"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "error: --update-card writes the results into each generator folder's README.md, but 'mnist' is not a folder: "
        "bundled generators (and Hub downloads) are read-only; save it to a folder first "
        "(Generator.from_pretrained('mnist').save_pretrained(FOLDER)) and pass --generator FOLDER"
    )
    assert calls == []  # refused before any training


def _png_folder(root, classes, mode: str, size: int, per_class: int = 3):
    """``root/{train,test}/<class>/<i>.png`` of random pixels."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    shape = (size, size) if mode == "L" else (size, size, 3)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels, mode).save(root / split / name / f"{i}.png")
    return root


def test_an_image_folder_of_other_data_is_refused(tmp_path, monkeypatch):
    """Other class names and another kind of stored image (RGB 32 px for a grey 28 px
    generator): refused, where converting them would have trained on the wrong data. Other
    names with images of the generator's size or channels still only warn: names are
    matched by index."""
    monkeypatch.setenv("SYNTHSETS_CACHE", "off")
    generator = tiny_generator()  # 1x28x28, classes a-d
    colour = _png_folder(tmp_path / "colour", ["cat", "dog", "ship", "car"], "RGB", 32)
    with pytest.raises(ValueError, match=rf"does not fit the image folder {colour}: its class names \['car', 'cat', 'dog'\]\.\.\. "
                                         r"differ from the generator's \['a', 'b', 'c'\]\.\.\. and its images are 3x32x32 "
                                         r"where the generator makes 1x28x28; test it on the data it was trained on \('toy'\)"):
        evaluate([generator], data=str(colour), image_size=28, inpc=[1], runs=1, epochs=1, progress=False)
    grey = _png_folder(tmp_path / "grey", ["w", "x", "y", "z"], "L", 28)
    digits_as_rgb = _png_folder(tmp_path / "rgb28", ["w", "x", "y", "z"], "RGB", 28)  # e.g. digits saved as RGB JPEGs
    with pytest.warns(UserWarning) as warned:
        evaluate([generator], data=str(digits_as_rgb), inpc=[1], runs=1, epochs=1, progress=False)
    assert any("labels are matched by index" in str(w.message) for w in warned)
    with pytest.warns(UserWarning) as warned:
        evaluate([generator], data=str(grey), inpc=[1], runs=1, epochs=1, progress=False)
    assert any("labels are matched by index" in str(w.message) for w in warned)


def test_read_results_and_merge_take_one_folder_as_a_string(tmp_path, real, gen):
    out = tmp_path / "ev"
    records = evaluate([Source.from_spec(gen, label="gen")], real=real, inpc=[1], runs=1, config=fast(epochs=1),
                       device="cpu", model_kwargs=TINY, progress=False, out=out)
    assert read_results(str(out)) == read_results([out]) == records
    assert merge(str(out), tmp_path / "m") == records


def test_a_generator_from_an_image_folder_needs_its_data_named(tmp_path):
    """config.json keeps only the image folder's name: the default data cannot be found,
    and the message says to pass the folder."""
    generator = tiny_generator(dataset="my-folder")
    with pytest.raises(ValueError, match=r"was distilled from 'my-folder', which is neither a torchvision dataset name "
                                         r"nor a folder here .*pass --data \(data=\) with the path of that image folder"):
        evaluate([generator], inpc=[1], runs=1, epochs=1, progress=False)


def test_torchrun_refuses_a_folder_with_an_unsharded_runs_results(tmp_path, capsys, monkeypatch, real):
    """A torchrun evaluation ends with rank 0 writing the ranks' merged results.json: into a
    folder that holds an unsharded run's results.json it would replace them, so every rank
    refuses before starting (and before joining the process group)."""
    import synthsets.evaluate as evaluate_mod
    from synthsets.evaluate import _unsharded_results_problem

    monkeypatch.setattr(evaluate_mod, "load_real", lambda *a, **kw: real)
    out = tmp_path / "ev"
    args = ["--baselines", "random-real", "--data", "toy", "--inpc", "1", "--runs", "1", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(args) == 0  # unsharded
    before = (out / "results.json").read_text()
    capsys.readouterr()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(evaluate_mod, "_init_distributed", lambda world: pytest.fail("must refuse before joining"))
    assert main(args) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {out} holds the results of an unsharded run ({out / 'results.json'}: 1 run), which this torchrun "
        f"evaluation would replace with its ranks' results; choose another --out, and combine both afterwards "
        f"with: python -m synthsets.evaluate merge {out} NEW_OUT --out COMBINED"
    )
    monkeypatch.setenv("RANK", "1")  # the other ranks refuse too, silently: rank 0 said it
    assert main(args) == 2
    assert capsys.readouterr().err == ""
    assert (out / "results.json").read_text() == before
    # a results.json merged from rank files, an empty folder and a missing one are no obstacle
    (out / "results.rank0.json").write_text(before)
    assert _unsharded_results_problem(out) is None
    # but a folder holding a torchrun run's results is refused without --resume, by every rank alike
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: {out} already holds results (results.json, results.rank0.json); pass --resume to continue them, "
        "or choose another --out\n"
    )
    # a rank file that is not a results file: one line, no traceback
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.rank1.json").write_text('{"runs": [{"dataset": "toy"}]}')
    monkeypatch.setenv("RANK", "0")
    assert main([*args[:-1], str(bad)]) == 2
    assert "is not a synthsets.evaluate results file" in _one_error_line(capsys.readouterr().err)
    # a --shard command of its own reports its errors whatever RANK says
    monkeypatch.setenv("RANK", "1")
    assert main([*args, "--shard", "1/2", "--inpc", "0"]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith("error: ")
    assert _unsharded_results_problem(tmp_path / "new") is None
    (tmp_path / "empty").mkdir()
    assert _unsharded_results_problem(tmp_path / "empty") is None


# ----------------------------------------------------------------------------- unusable models, bad results files
VIT = "vit_tiny_patch16_224"  # a timm model made for 224x224 images only
VIT_ON_TOY = (
    f"evaluation model '{VIT}' cannot be used on toy: it fails on a batch of 1x28x28 images (AssertionError: Input "
    "height (28) doesn't match model (224)); choose models that take 28x28 images (--models, models=), e.g. convnet3 "
    "or resnet18; a timm model with a fixed input size needs images of that size (from Python, "
    "model_kwargs={'img_size': 28} rebuilds timm models that take an img_size for 28x28)"
)


def test_model_that_cannot_take_the_images_is_refused_before_training(tmp_path, capsys, monkeypatch, real, gen):
    import synthsets.evaluate as evaluate_mod

    monkeypatch.setattr(evaluate_mod, "run_protocol", lambda *a, **k: pytest.fail("trained a model that cannot work"))
    kw = dict(inpc=[1], runs=1, config=fast(epochs=1), device="cpu", progress=False)
    for call in (
        lambda: evaluate([gen], real=real, models=["convnet3", VIT], out=tmp_path / "ev", **kw),
        lambda: evaluate(baselines=["random-real"], real=real, models=[VIT], **kw),
        lambda: evaluate_source(gen, real, 1, VIT, config=fast(epochs=1), device="cpu"),
    ):
        with pytest.raises(ValueError) as caught:
            call()
        assert str(caught.value) == VIT_ON_TOY
    assert not (tmp_path / "ev").exists()
    monkeypatch.setattr(evaluate_mod, "load_real", lambda *a, **k: real)
    assert main(["--baselines", "random-real", "--data", "toy", "--inpc", "1", "--runs", "1", "--epochs", "1",
                 "--models", VIT, "--device", "cpu", "--no-progress"]) == 2
    # one line: the error alone, without the "no --out" notice of a run that never starts
    assert _one_error_line(capsys.readouterr().err) == f"error: {VIT_ON_TOY}"


def test_model_input_check_is_cheap_and_leaves_the_random_stream_alone(monkeypatch):
    import synthsets.evaluate as evaluate_mod

    built = []
    original = evaluate_mod.create_model
    monkeypatch.setattr(evaluate_mod, "_INPUT_CHECKED", set())
    monkeypatch.setattr(evaluate_mod, "create_model", lambda *a, **k: built.append(a[0]) or original(*a, **k))
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    assert evaluate_mod._model_input_problem(VIT, 4, 1, 28, {"img_size": 28}) is None  # the fix the message names
    assert evaluate_mod._model_input_problem(VIT, 4, 1, 28, {"img_size": 28}) is None
    assert built == [VIT]  # built once
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ValueError, match="unknown model 'nosuchnet'"):  # its own error, as before
        evaluate_mod._model_input_problem("nosuchnet", 4, 1, 28)


def test_cli_validation_errors_come_before_the_no_out_notice(capsys, monkeypatch, real):
    import synthsets.evaluate as evaluate_mod

    monkeypatch.setattr(evaluate_mod, "load_real", lambda *a, **k: real)
    assert main(["--baselines", "random-real", "--data", "toy", "--inpc", "0", "--device", "cpu", "--no-progress"]) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: inpc values must be positive ints, got [0]"


@pytest.mark.parametrize("payload, problem", [
    ([1, 2], "run 0 is 1, not a record of one run"),
    ({"runs": ["x"]}, 'run 0 is "x", not a record of one run'),
    ([{"x": 1}], "run 0 has no 'dataset', 'source', 'inpc', 'model', 'run', 'final_acc', 'best_acc': {\"x\": 1}"),
    ({"runs": [{"dataset": "toy", "source": "g", "inpc": "1", "model": "convnet3", "run": 0, "final_acc": 1.0,
                "best_acc": 1.0}]},
     'run 0 has inpc "1", not a number'),
], ids=["list-of-ints", "runs-of-str", "no-fields", "wrong-type"])
def test_merge_names_a_file_that_is_not_a_results_file(payload, problem, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(payload))
    expected = f"{bad} is not a synthsets.evaluate results file ({problem})"
    _assert_merge_refused([bad], tmp_path / "m", expected, capsys)
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError) as caught:
        read_results([bad])
    assert str(caught.value) == expected
