"""Shared helpers of the benchmark scripts: arguments, timing, tables, JSON, memory.

Timing rules (the machines these run on are often shared and noisy):

* compared variants are timed in the same run, interleaved round by round (the order
  alternates between rounds), after one warm-up call each;
* every figure is the median over rounds; a ratio between two variants is the median of
  the per-round ratios (robust to slow drifts of the machine's load);
* on CUDA the device is synchronised around each timed call, and short calls are
  repeated ``inner`` times per sample so that a sample lasts long enough to time.

Peak memory is measured per workload: on CPU in a fresh Python process, as the growth of
the peak resident set size from just before the workload is built to its end
(tracemalloc does not see torch's allocations); on CUDA with
``torch.cuda.max_memory_allocated``. On Linux the peak is read from ``/proc/self/status``
(``VmHWM``, reset after the imports) rather than ``ru_maxrss``, which in a process
started by fork+exec also counts the pages of the parent process it was forked from.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- arguments --------------------------------------------------------------------------
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tiny sizes, one round)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available, else cpu)")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"where to write the results (default benchmarks/results/{name}.json; "
        f"with --tiny benchmarks/results/tiny/{name}.json, so that smoke runs never replace real figures)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurements")
    p.add_argument("--tune-malloc", action="store_true",
                   help="apply synthsets.tune_cpu_allocator (as the command lines do on CPU), here and in child processes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(prog_name=name)
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Resolve the device, apply --threads and the seed; returns the device."""
    if args.json is None:
        args.json = (RESULTS_DIR / "tiny" if args.tiny else RESULTS_DIR) / f"{args.prog_name}.json"
    device = torch.device(args.device or default_device())
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for but CUDA is not available; use --device cpu")
        torch.cuda.set_device(device.index or 0)
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tune_malloc:
        from synthsets import allocator

        if not allocator.tune_cpu_allocator():
            raise SystemExit("--tune-malloc: malloc could not be tuned (not glibc, or MALLOC_* settings already set)")
        # the same settings for the fresh processes that measure peak memory, and for workers
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(allocator.MMAP_THRESHOLD)
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(allocator.TRIM_THRESHOLD)
    torch.manual_seed(args.seed)
    args.device = str(device)
    return device


# -- timing -----------------------------------------------------------------------------
def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: torch.device | str, inner: int = 1) -> float:
    """Seconds per call of ``fn`` (mean over ``inner`` back-to-back calls)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - start) / inner


def calibrate(fn: Callable[[], Any], device: torch.device | str, min_seconds: float) -> int:
    """How many back-to-back calls make a timing sample last about ``min_seconds``."""
    once = time_call(fn, device)
    return max(1, min(1000, math.ceil(min_seconds / max(once, 1e-9))))


def interleaved(
    variants: dict[str, Callable[[], Any]],
    device: torch.device | str,
    repeats: int,
    warmup: int = 1,
    min_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, interleaved round by round (alternating order).

    Returns seconds per call for every round. ``min_seconds`` > 0 repeats short calls
    within a sample (calibrated once per variant after the warm-up).
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    inner = {name: calibrate(variants[name], device, min_seconds) if min_seconds > 0 else 1 for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(time_call(variants[name], device, inner[name]))
    return times


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the per-round ratios ``numerator[i] / denominator[i]``."""
    return median(n / d for n, d in zip(numerator, denominator))


# -- memory -----------------------------------------------------------------------------
_CHILD = r"""
import importlib, json, resource, sys
mod = importlib.import_module(sys.argv[1])
factory = getattr(mod, sys.argv[2])
params = json.loads(sys.argv[3])
import torch
torch.set_num_threads(int(sys.argv[4]))  # as in the parent process

def status(key):
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None

# ru_maxrss of a process started by fork+exec also counts the pages of the forked copy
# of the parent (Linux keeps the larger high-water mark over exec), so it is only usable
# when /proc is not: there, VmHWM (this address space's peak) is reset to the current RSS
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    proc = status("VmHWM") is not None
except OSError:
    proc = False
base = status("VmRSS") if proc else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run = factory(**params)
run()
peak = status("VmHWM") if proc else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
extra = getattr(run, "memory_info", dict)()
print("@@MEM@@" + json.dumps({"base_kb": base, "peak_kb": peak, "source": "VmHWM" if proc else "ru_maxrss", **extra}))
"""


def peak_memory(factory: Callable[..., Callable[[], Any]], device: torch.device | str, **params: Any) -> dict[str, float]:
    """Peak memory of ``factory(device=..., **params)()``: building the workload and running it once.

    ``factory`` must be a module-level function of a ``benchmarks`` module (it is
    imported again in a fresh process on CPU). Returns ``{"peak_mb": ...}`` (memory added
    by the workload) plus ``"rss_mb"`` (the process's peak RSS, CPU) and
    ``"workers_mb"`` (the peak RSS of the largest DataLoader worker, when the workload's
    ``run`` has a ``memory_info()`` method reporting ``workers_kb``).
    """
    device = torch.device(device)
    params = dict(params, device=str(device))
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run = factory(**params)
        run()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del run
        torch.cuda.empty_cache()
        return {"peak_mb": round(peak / 2**20, 2)}
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    module = factory.__module__
    if module == "__main__":  # the script itself: import it by its real name
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        module = spec.name if spec is not None else f"benchmarks.{Path(main.__file__).stem}"  # python benchmarks/X.py
    cmd = [sys.executable, "-c", _CHILD, module, factory.__name__, json.dumps(params), str(torch.get_num_threads())]
    proc = subprocess.run(cmd, cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("@@MEM@@")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"memory measurement of {factory.__name__} failed: {' | '.join(tail)}")
    data = json.loads(lines[-1][len("@@MEM@@"):])
    kb = 1024.0  # ru_maxrss is in KiB on Linux
    out = {"peak_mb": round((data["peak_kb"] - data["base_kb"]) / kb, 2), "rss_mb": round(data["peak_kb"] / kb, 2)}
    if data.get("workers_kb"):
        out["workers_mb"] = round(data["workers_kb"] / kb, 2)
    return out


def maybe_memory(
    args: argparse.Namespace, enabled: bool, factory: Callable[..., Callable[[], Any]], **params: Any
) -> dict[str, float]:
    """:func:`peak_memory` when memory is measured for this row (``--no-memory`` turns it off)."""
    if not (args.memory and enabled):
        return {}
    try:
        return peak_memory(factory, args.device, **params)
    except Exception as err:  # a failed measurement must not lose the timing results
        print(f"warning: {err}", file=sys.stderr)
        return {}


# -- workloads shared by several scripts -----------------------------------------------
def make_generator(width: int, channels: int = 3, image_size: int = 32, num_classes: int = 10, seed: int = 0):
    """A generator with trained-looking BatchNorm statistics (diverse outputs in eval mode)."""
    from synthsets import Generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(width=width, channels=channels, image_size=image_size, num_classes=num_classes)
        with torch.no_grad():
            for module in generator.modules():
                if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.01, 0.05)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.1, 0.1)
    return generator.eval()


def training_model(
    name: str, num_classes: int, device: torch.device | str, channels: int = 3, image_size: int = 32
) -> torch.nn.Module:
    """``create_model(name)`` on ``device``, in the memory layout synthsets.evaluate trains
    it in (channels_last on CPU for models without GroupNorm/LayerNorm)."""
    from synthsets.models import create_model, preferred_memory_format

    model = create_model(name, num_classes, channels, image_size).to(device)
    return model.to(memory_format=preferred_memory_format(model, device))


def _as_stock(model: torch.nn.Module, stock: dict[type, type]) -> torch.nn.Module:
    """``model`` with every layer whose type is a key of ``stock`` turned into the torch
    layer it subclasses (no drop-in adds state: settings, parameters, device and layout stay)."""
    for module in model.modules():
        if type(module) in stock:
            module.__class__ = stock[type(module)]
    return model


def stock_layers(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with synthsets' faster drop-in layers turned into the stock torch layers
    they subclass (``AvgPool2x2`` -> ``nn.AvgPool2d``, ``SampleLayerNorm`` ->
    ``nn.LayerNorm``, ``PenaltyLeakyReLU`` -> ``nn.LeakyReLU``, ``PenaltyConv2d`` and the
    generator's convolutions -> ``nn.Conv2d`` or ``nn.ConvTranspose2d``, ConvNet's
    ``ReLUPoolSequential`` -> ``nn.Sequential``), as research code would build it. No
    subclass adds state, so the layers keep their settings, parameters, device and layout."""
    from synthsets.discriminator import PenaltyConv2d, PenaltyLeakyReLU, SampleLayerNorm
    from synthsets.generator import _CpuFastConv2d, _CpuFastConvTranspose2d
    from synthsets.models import AvgPool2x2

    return _as_stock(unfused_blocks(model), {
        AvgPool2x2: torch.nn.AvgPool2d, SampleLayerNorm: torch.nn.LayerNorm, PenaltyConv2d: torch.nn.Conv2d,
        PenaltyLeakyReLU: torch.nn.LeakyReLU, _CpuFastConv2d: torch.nn.Conv2d,
        _CpuFastConvTranspose2d: torch.nn.ConvTranspose2d,
    })


def unfused_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its ``ReLUPoolSequential`` containers (ConvNet's blocks) turned into
    ``nn.Sequential``: ReLU and pooling run as two layers."""
    from synthsets.models import ReLUPoolSequential

    return _as_stock(model, {ReLUPoolSequential: torch.nn.Sequential})


def stock_activations(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its ``PenaltyLeakyReLU`` layers (only) turned into ``nn.LeakyReLU``."""
    from synthsets.discriminator import PenaltyLeakyReLU

    return _as_stock(model, {PenaltyLeakyReLU: torch.nn.LeakyReLU})


def stock_convolutions(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its ``PenaltyConv2d`` layers (only) turned into ``nn.Conv2d``."""
    from synthsets.discriminator import PenaltyConv2d

    return _as_stock(model, {PenaltyConv2d: torch.nn.Conv2d})


def torch_norm_second_order(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its ``SampleLayerNorm`` layers (only) differentiated twice by torch's
    own layer-norm formula; they keep their channels_last handling."""
    from synthsets.discriminator import SampleLayerNorm

    class TorchSecondOrderNorm(SampleLayerNorm):
        def _fast_second_order(self, x: torch.Tensor, shape: tuple[int, ...]) -> bool:
            return False

    return _as_stock(model, {SampleLayerNorm: TorchSecondOrderNorm})


def custom_layers_in_cuda_eager() -> contextlib.AbstractContextManager:
    """The discriminator's custom second-derivative layers on CUDA without CUDA graphs too
    (the library leaves them to captured steps there)."""
    import unittest.mock

    from synthsets import discriminator

    return unittest.mock.patch.object(discriminator, "CUSTOM_SECOND_ORDER_IN_CUDA_EAGER", True)


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The paper's evaluation optimiser (SGD lr 0.01, momentum 0.9, weight decay 5e-4)."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def train_step_fn(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One forward + backward + SGD step on a batch."""
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def autocast(device: torch.device | str, dtype: str):
    """A context manager for ``dtype`` in {"fp32", "bf16", "fp16"} (fp32: no autocast)."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


def supported_dtypes(device: torch.device) -> list[str]:
    """fp32 plus the autocast dtypes the device runs convolutions in."""
    dtypes = ["fp32"]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            dtypes.append("bf16")
        dtypes.append("fp16")
        return dtypes
    # CPU: bf16 autocast (fast with AVX512-BF16/AMX); fp16 on CPU is emulated and slow
    try:
        conv = torch.nn.Conv2d(4, 4, 3).to(device)
        with torch.no_grad(), autocast(device, "bf16"):
            conv(torch.randn(1, 4, 8, 8, device=device))
        dtypes.append("bf16")
    except Exception:
        pass
    return dtypes


# -- output -----------------------------------------------------------------------------
#: environment variables worth recording with CPU figures
ENV_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "LD_PRELOAD",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "MKL_NUM_THREADS",
)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str) -> dict[str, Any]:
    import torchvision

    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    # allocator / threading settings change CPU figures a lot: record them when set
    env = {k: os.environ[k] for k in ENV_SETTINGS if os.environ.get(k)}
    if env:
        info["env"] = env
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if spec:
            return format(value, spec)
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def print_table(title: str, rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print ``rows`` as a markdown table; ``columns`` are ``(key, header, format spec)``."""
    print(f"\n### {title}\n")
    cells = [[fmt(row.get(key), spec) for key, _, spec in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    sys.stdout.flush()


def write_json(path: Path, name: str, args: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> Path:
    arguments = {k: (_recorded(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"benchmark": name, "machine": machine(device), "args": arguments, **results}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {_shown(path)}")
    return path


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it, else as given."""
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _recorded(path: Path) -> str:
    """``path`` as a results file records it: relative to the repository when inside it,
    else its file name alone (results must not name the folders of the machine they ran on)."""
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return Path(path).name
