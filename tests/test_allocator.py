"""synthsets.tune_cpu_allocator: glibc malloc keeps freed memory (checked in fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import synthsets
from synthsets import allocator
from synthsets import distill as distill_mod
from synthsets import evaluate as evaluate_mod

REPO_ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, os, torch, synthsets
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
tuned = synthsets.tune_cpu_allocator()
again = synthsets.tune_cpu_allocator()
before = rss()
x = torch.ones(64 << 20)  # 256 MB, written so that its pages are resident
x = None
print(json.dumps({"tuned": tuned, "again": again, "kept_mb": (rss() - before) / 2**20}))
"""

needs_glibc = pytest.mark.skipif(allocator._glibc() is None, reason="needs Linux with glibc")


def probe(**env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "SYNTHSETS_TUNE"))}
    full["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    full.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_tuned_process_keeps_freed_memory():
    tuned, default = probe(), probe(SYNTHSETS_TUNE_MALLOC="0")
    assert tuned["tuned"] is True and tuned["again"] is True
    assert tuned["kept_mb"] > 200  # the freed 256 MB block stays with the process, for reuse
    assert default["tuned"] is False
    assert default["kept_mb"] < 50  # glibc's default unmaps it at once


@needs_glibc
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "1000000"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}])
def test_users_own_malloc_settings_win(env):
    assert probe(**env)["tuned"] is False


def test_not_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setenv("SYNTHSETS_TUNE_MALLOC", "1")
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert synthsets.tune_cpu_allocator() is False


@pytest.mark.parametrize("device, expected", [("cpu", 1), ("cuda", 0)])
def test_command_lines_tune_when_training_on_cpu(device, expected, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(evaluate_mod, "tune_cpu_allocator", lambda: calls.append("evaluate"))
    monkeypatch.setattr(distill_mod, "tune_cpu_allocator", lambda: calls.append("distill"))
    monkeypatch.setattr(evaluate_mod, "evaluate", lambda *a, **k: [])
    monkeypatch.setattr(distill_mod, "_run", lambda config, resume, real=None: Path(config.out))
    evaluate_mod.main(["--baselines", "whole", "--data", "mnist", "--device", device, "--no-progress"])
    distill_mod.main(["--data", "mnist", "--out", str(tmp_path), "--device", device])
    assert calls == ["evaluate"] * expected + ["distill"] * expected
