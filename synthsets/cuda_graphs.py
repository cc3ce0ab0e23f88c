"""Replay a training step as one CUDA graph.

At the paper's sizes (batch 64, 32x32 images) a distillation step is hundreds of small
kernels, and launching them from Python costs more than running them. A CUDA graph
records the launches of one step once and replays them with a single call. The maths is
the same: the same kernels run on the same memory, and random draws come from the same
generator (PyTorch advances its offsets on every replay). Layers that are faster only
once their launches are recorded (the discriminator's custom second derivatives) ask
:func:`in_graphed_step` whether they run in such a step, warm-up calls included, so the
warm-up runs the code that is then captured.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Callable, Iterator

import torch
from torch import Tensor

Step = Callable[[Tensor], dict[str, Tensor]]

_graphed_step: contextvars.ContextVar[bool] = contextvars.ContextVar("synthsets_graphed_step", default=False)


def in_graphed_step() -> bool:
    """Whether the running code is a :class:`GraphedStep`'s warm-up call or its capture."""
    return _graphed_step.get()


@contextlib.contextmanager
def _graphed() -> Iterator[None]:
    token = _graphed_step.set(True)
    try:
        yield
    finally:
        _graphed_step.reset(token)


class GraphedStep:
    """Call ``step(index_batch) -> {name: tensor}`` through a CUDA graph.

    The first ``warmup`` calls run eagerly, on the stream the graph is later captured on:
    they create the optimiser state, pick cuDNN algorithms and initialise libraries, none
    of which may happen during a capture. The next call captures the step and every call
    from then on copies its index batch into the graph's input and replays it. The
    returned tensors are the graph's outputs, overwritten by the next replay: read them
    (or compute from them) before the next call, in stream order, as a training loop does.

    If the capture fails (an op that cannot be captured, such as one that synchronises
    with the host), it warns once, records the reason in ``failure`` and runs eagerly
    from then on. With ``enabled=False`` it is a plain call of ``step``.
    """

    def __init__(self, step: Step, warmup: int = 3, enabled: bool = True) -> None:
        self.step = step
        self.warmup = warmup
        self.enabled = enabled and torch.cuda.is_available()
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failure: str | None = None
        self._input: Tensor | None = None
        self._outputs: dict[str, Tensor] = {}
        self._stream = torch.cuda.Stream() if self.enabled else None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, index: Tensor) -> dict[str, Tensor]:
        if not self.enabled:
            return self.step(index)
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            return self._eager_on_stream(index)
        if self.graph is None and not self._capture(index):
            return self.step(index)
        assert self._input is not None and self.graph is not None
        self._input.copy_(index)
        self.graph.replay()
        return self._outputs

    def _eager_on_stream(self, index: Tensor) -> dict[str, Tensor]:
        assert self._stream is not None
        current = torch.cuda.current_stream()
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream), _graphed():
            out = self.step(index)
        current.wait_stream(self._stream)
        for tensor in out.values():  # used on the current stream: keep the memory until then
            tensor.record_stream(current)
        return out

    def _capture(self, index: Tensor) -> bool:
        self._input = index.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream), _graphed():
                outputs = self.step(self._input)
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager
            self.enabled = False
            self.failure = f"{type(err).__name__}: {err}"
            torch.cuda.synchronize()
            _repair_cuda_rng()
            warnings.warn(
                f"CUDA graph capture of the training step failed ({self.failure}); "
                "running eagerly (pass --no-cuda-graphs to skip the attempt)",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self.graph, self._outputs = graph, outputs
        return True


def _repair_cuda_rng() -> None:
    """After a failed capture, give the default CUDA generator a fresh state object.

    A capture marks the generator's state as capturing and only an ending capture clears
    the mark; when the capture fails, the mark stays and every later random draw on the
    device fails ("Offset increment outside graph capture"). A cloned state has the same
    seed and offset, without the mark.
    """
    generator = torch.cuda.default_generators[torch.cuda.current_device()]
    generator.graphsafe_set_state(generator.clone_state())
    try:
        torch.rand(1, device="cuda")
    except RuntimeError as err:
        raise RuntimeError(
            "a failed CUDA graph capture left the CUDA random number generator unusable; "
            "rerun with --no-cuda-graphs (cuda_graphs=False)"
        ) from err
