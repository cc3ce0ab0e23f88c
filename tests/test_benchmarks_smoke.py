"""Smoke test of the benchmark scripts: each runs its ``--tiny`` configuration on CPU.

The benchmarks themselves are not part of the test suite; this only checks that every
script runs, prints a table and writes JSON with the expected keys and positive numbers.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def one_thread():
    """Run single-threaded (fast and steady on a busy CPU) and restore torch's setting."""
    threads = torch.get_num_threads()
    yield ["--threads", "1"]
    torch.set_num_threads(threads)


def _run(name: str, tmp_path: Path, capsys, extra: list[str]) -> tuple[dict, str]:
    module = importlib.import_module(f"benchmarks.{name}")
    out = tmp_path / f"{name}.json"
    module.main(["--tiny", "--device", "cpu", "--json", str(out), *extra])
    printed = capsys.readouterr().out
    assert out.is_file(), f"{name} wrote no JSON"
    data = json.loads(out.read_text())
    assert data["benchmark"] == name
    assert data["machine"]["torch"] == torch.__version__
    assert data["args"]["tiny"] is True
    assert data["args"]["json"] == out.name  # outside the repository: the file name, no local folders
    return data, printed


def _table_rows(printed: str) -> list[str]:
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    return lines[1:] if lines else []  # drop a header line


def _positive(rows: list[dict], *keys: str) -> None:
    assert rows
    for row in rows:
        for key in keys:
            assert isinstance(row[key], (int, float)) and row[key] > 0, (key, row)


def _memory(rows: list[dict]) -> None:
    measured = [row for row in rows if "peak_mb" in row]
    assert measured, "no peak-memory figure"
    for row in measured:
        assert row["peak_mb"] >= 0 and row["rss_mb"] > 0, row


def test_generation(tmp_path, capsys, one_thread):
    data, printed = _run("generation", tmp_path, capsys, one_thread + ["--widths", "8", "--models", "convnet3"])
    assert any("| 8 " in line and "fp32" in line for line in _table_rows(printed))
    _positive(data["throughput"], "ms_per_batch", "images_per_s", "speedup_vs_fp32")
    _positive(data["fraction"], "gen_ms", "train_ms", "gen_train_ms", "gen_fraction")
    _positive(data["loader_overhead"], "ms_per_epoch", "images_per_s")
    variants = {r["variant"] for r in data["loader_overhead"]}
    # on CPU, also the other side of the prefetch default
    extra = {"synthetic w8 prefetch", "synthetic w8 no prefetch", "synthetic w8 bf16"}
    assert variants - extra == {"preloaded", "preloaded+dsa", "synthetic w8"}
    assert len(variants) == 5
    assert {r["prefetch"] for r in data["loader_overhead"] if r["variant"].startswith("synthetic")} == {True, False}
    assert all("overhead_pct" in r for r in data["loader_overhead"])
    _memory(data["throughput"] + data["loader_overhead"])


def test_dsa(tmp_path, capsys, one_thread):
    data, printed = _run("dsa", tmp_path, capsys, one_thread + ["--workers", "0", "--no-memory"])
    assert any("torchvision w0" in line for line in _table_rows(printed))
    _positive(data["rows"], "us_per_image", "images_per_s", "dsa_speedup")
    assert set(data["speedups"]) == {f"{s} vs torchvision w0" for s in ("color_crop_cutout_flip_scale_rotate", "color_crop")}


def test_distill_step(tmp_path, capsys, one_thread):
    data, printed = _run("distill_step", tmp_path, capsys, one_thread + ["--no-memory", "--profile"])
    assert any("naive" in line for line in _table_rows(printed))
    # --profile: the top operators of a stage-1 epoch, convolutions among them, by falling self time
    profile = data["profile_stage1"]
    assert 5 <= len(profile) <= 15 and any("convolution" in row["op"] for row in profile)
    shares = [row["share_pct"] for row in profile]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.5
    assert "top operators by CPU self time" in printed
    _positive(data["rows"], "ms_per_step", "speedup_vs_naive")
    assert {(r["stage"], r["variant"]) for r in data["rows"]} == {
        (s, v) for s in (1, 2) for v in ("library", "library-stock-conv", "library-stock-norm", "naive")
    }
    assert data["equivalence"]["match"] is True
    # the discriminator-convolution experiment: the library against itself with nn.Conv2d
    assert set(data["penalty_conv_speedup"]) == {"stage1", "stage2"}
    assert all(v > 0 for v in data["penalty_conv_speedup"].values())
    assert "library (PenaltyConv2d) vs library-stock-conv (nn.Conv2d in D), speed-up: stage1" in printed
    # ... and with torch's layer-norm second derivative
    assert set(data["norm_second_order_speedup"]) == {"stage1", "stage2"}
    assert all(v > 0 for v in data["norm_second_order_speedup"].values())
    assert "library (SampleLayerNorm) vs library-stock-norm (torch's layer-norm double backward in D)" in printed


def test_distill_step_layout_experiment(tmp_path, capsys, one_thread, monkeypatch):
    """The CUDA-only library-cl variant, forced to run on CPU: its ratio to library is reported."""
    module = importlib.import_module("benchmarks.distill_step")
    monkeypatch.setattr(module, "CUDA_ONLY", ("library-eager",))
    data, printed = _run("distill_step", tmp_path, capsys, one_thread + ["--no-memory", "--variants", "library", "library-cl"])
    assert {r["variant"] for r in data["rows"]} == {"library", "library-cl"}
    assert set(data["channels_last_speedup"]) == {"stage1", "stage2"}
    assert all(v > 0 for v in data["channels_last_speedup"].values())
    assert "library-cl (G and D in channels_last) vs library, speed-up: stage1" in printed


def test_distill_step_breakdown(tmp_path, capsys, one_thread):
    """--breakdown: each variant's step split into matrix products and the rest, and the
    bound on the library's speed-up that follows from them."""
    data, printed = _run("distill_step", tmp_path, capsys, one_thread + ["--no-memory", "--variants", "library", "naive",
                                                                         "--breakdown"])
    rows = data["breakdown"]["rows"]
    assert {(r["stage"], r["variant"]) for r in rows} == {(s, v) for s in (1, 2) for v in ("library", "naive")}
    for r in rows:
        assert 0 < r["matrix_ms"] <= r["ms_per_step"] and 0 < r["matrix_share"] <= 1
        assert abs(r["matrix_ms"] + r["other_ms"] - r["ms_per_step"]) < 0.2
    walls = {(r["stage"], r["variant"]): r for r in rows}
    for stage in (1, 2):
        summary = data["breakdown"]["summary"][f"stage{stage}"]
        naive, library = walls[(stage, "naive")], walls[(stage, "library")]
        assert summary["bound"] == pytest.approx(naive["ms_per_step"] / library["matrix_ms"], rel=0.02)
        assert summary["bound"] >= summary["speedup"] > 0  # nothing beats the bound
        assert summary["other_ms_at_1_5x"] == pytest.approx(naive["ms_per_step"] / 1.5 - library["matrix_ms"], abs=0.2)
    assert "Where a step's time goes" in printed and "stage2: " in printed


def test_distill_step_keeps_its_timings_when_profiling_fails(tmp_path, capsys, one_thread, monkeypatch):
    module = importlib.import_module("benchmarks.distill_step")

    def broken(*args, **kwargs):
        raise RuntimeError("CUPTI_ERROR_INSUFFICIENT_PRIVILEGES")

    monkeypatch.setattr(module, "profile_stage1", broken)
    data, printed = _run("distill_step", tmp_path, capsys, one_thread + ["--no-memory", "--profile"])
    _positive(data["rows"], "ms_per_step")
    assert data["profile_error"] == "RuntimeError: CUPTI_ERROR_INSUFFICIENT_PRIVILEGES"
    assert "profile_stage1" not in data and "profiling failed, timings kept" in printed


def test_penalty(tmp_path, capsys, one_thread):
    data, printed = _run("penalty", tmp_path, capsys, one_thread)
    assert any("PenaltyConv2d" in line for line in _table_rows(printed))
    _positive(data["rows"], "ms", "speedup")
    assert {(r["workload"], r["layer"]) for r in data["rows"]} == {
        (w, layer) for w in ("penalty", "D step") for layer in ("torch", "PenaltyConv2d", "library")
    }
    assert all(r["speedup"] == 1.0 for r in data["rows"] if r["layer"] == "torch")  # the reference
    _memory([r for r in data["rows"] if r["workload"] == "D step"])
    assert data["same"]["tiny"]["grad_max_rel"] < 1e-4  # float noise: the same gradients


def test_loader(tmp_path, capsys, one_thread):
    data, printed = _run("loader", tmp_path, capsys, one_thread + ["--no-memory"])
    assert any("dataset.loader()" in line for line in _table_rows(printed))
    _positive(data["rows"], "ms_per_epoch", "images_per_s", "speedup_of_loader")
    _positive([r for r in data["rows"] if r["path"].startswith("DataLoader")], "per_item_us")


def test_pooling(tmp_path, capsys, one_thread):
    data, printed = _run("pooling", tmp_path, capsys, one_thread)
    assert any("AvgPool2x2" in line for line in _table_rows(printed))
    _positive(data["layer"] + data["models"], "ms", "speedup")
    assert {(r["size"], r["layout"], r["direction"]) for r in data["layer"]} == {
        (s, l, d) for s in (32, 16, 8) for l in ("standard", "channels_last") for d in ("forward", "forward+backward")
    }
    assert data["same"]["output_max_abs"] <= 2.5e-7 and data["same"]["grad_max_abs"] == 0.0


def test_scripts_also_run_as_files(tmp_path):
    """``python benchmarks/loader.py`` works like ``python -m benchmarks.loader``, from any
    folder, peak-memory child process included."""
    import os
    import subprocess

    out = tmp_path / "loader.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--tiny", "--device", "cpu", "--threads", "1",
         "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning" not in proc.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "loader"
    _memory(data["rows"])


def test_penalty_variants_use_the_layers_they_name():
    """torch: nn.Conv2d and torch's layer-norm double backward; PenaltyConv2d: the fast
    convolutions only; library: both fast second derivatives."""
    from synthsets.discriminator import PenaltyConv2d, SampleLayerNorm

    module = importlib.import_module("benchmarks.penalty")
    x = torch.randn(2, 1, 28, 28)
    for variant, (fast_convolutions, fast_norms) in module.LAYERS.items():
        D = module.discriminator(variant, "tiny", "cpu")
        convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
        norms = [m for m in D.modules() if isinstance(m, SampleLayerNorm)]
        assert len(convs) == len(norms) == 8
        assert all((type(m) is PenaltyConv2d) == fast_convolutions for m in convs)
        assert all(m._fast_second_order(x, (1, 28, 28)) == fast_norms for m in norms[:1])
