"""Tests of ``synthsets.cuda_graphs.GraphedStep`` and its use by the distillation trainer.

On a CPU-only machine the graph path is off and ``GraphedStep`` is a plain call; those
tests run everywhere. The tests that capture real graphs need CUDA and are skipped
without it.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from synthsets import discriminator, distill
from synthsets.cuda_graphs import GraphedStep, in_graphed_step
from synthsets.data import RealData, RealSplit
from synthsets.distill import DistillConfig, Distiller, _set_capturable, apply_preset

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def random_real(n: int = 96, channels: int = 1, size: int = 28, classes: int = 4) -> RealData:
    gen = torch.Generator().manual_seed(0)
    return RealData(
        name="random",
        train=RealSplit(torch.randn(n, channels, size, size, generator=gen).clamp(-2, 2), torch.arange(n) % classes),
        test=None,
        classes=[str(c) for c in range(classes)],
        channels=channels,
        image_size=size,
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )


def tiny_config(device: str, graphs: bool, steps: int, tmp_path) -> DistillConfig:
    config = apply_preset(DistillConfig(preset="tiny", device=device, progress=False, out=str(tmp_path)))
    return dataclasses.replace(
        config, cuda_graphs=graphs, stage1_epochs=1, stage2_epochs=1, steps_per_epoch=steps, stage2_steps_per_epoch=steps
    )


# -- everywhere --------------------------------------------------------------------------------
def test_disabled_graphed_step_is_a_plain_call():
    calls = []

    def step(idx):
        calls.append(idx)
        return {"sum": idx.sum()}

    runner = GraphedStep(step, warmup=1, enabled=False)
    for i in range(4):
        assert runner(torch.tensor([i, i]))["sum"].item() == 2 * i
    assert len(calls) == 4 and not runner.captured and runner.failure is None


def test_cpu_distiller_runs_eagerly_without_capturable_optimisers(tmp_path):
    trainer = Distiller(tiny_config("cpu", True, 4, tmp_path), random_real())
    assert not trainer.use_cuda_graphs
    assert not any(g["capturable"] for g in trainer.opt_g.param_groups)
    record = trainer.run_epoch(0)
    assert "cuda_graph" not in record  # only reported where graphs are possible


def test_set_capturable_moves_adam_step_counters():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    _set_capturable(opt, True)
    assert opt.param_groups[0]["capturable"] is True
    _set_capturable(opt, False)
    assert opt.param_groups[0]["capturable"] is False
    assert opt.state[p]["step"].device.type == "cpu" and opt.state[p]["step"].item() == 1
    opt.step()  # still a working optimiser
    assert opt.state[p]["step"].item() == 2



def test_a_disabled_graphed_step_is_not_a_graphed_step():
    """Layers that are fast only in graphs (the discriminator's) see a plain call."""
    seen = []
    runner = GraphedStep(lambda idx: seen.append(in_graphed_step()) or {}, warmup=1, enabled=False)
    runner(torch.zeros(1))
    assert seen == [False] and not in_graphed_step()


@needs_cuda
def test_warmup_and_capture_run_as_a_graphed_step_and_eager_fallback_does_not():
    """Warm-up calls run the code the capture records: the same layers choose the same
    path in both. After a failed capture, the eager calls are plain ones."""
    seen = []

    def step(idx):
        seen.append(in_graphed_step())
        return {"x": idx * 2}

    runner = GraphedStep(step, warmup=2)
    for _ in range(4):
        runner(torch.ones(3, device="cuda"))
    assert runner.captured and seen == [True, True, True]  # 2 warm-ups, the capture; replays call nothing
    assert not in_graphed_step()

    def failing(idx):
        seen.append(in_graphed_step())
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("not capturable")
        return {"x": idx}

    seen.clear()
    runner = GraphedStep(failing, warmup=1)
    with pytest.warns(RuntimeWarning, match="capture of the training step failed"):
        for _ in range(3):
            runner(torch.ones(3, device="cuda"))
    assert runner.failure is not None and seen == [True, True, False, False]


# -- CUDA --------------------------------------------------------------------------------------
@needs_cuda
def test_graph_replays_match_eager_calls_and_draw_fresh_randomness():
    model = torch.nn.Linear(8, 3).cuda()
    data = torch.randn(32, 8, device="cuda")

    def make(graphs: bool):
        torch.manual_seed(0)
        net = torch.nn.Linear(8, 3).cuda()
        net.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

        def step(idx):
            x = data[idx] + 0.1 * torch.randn(len(idx), 8, device="cuda")
            loss = net(x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": loss.detach()}

        return GraphedStep(step, warmup=2, enabled=graphs), net

    results = {}
    for graphs in (False, True):
        runner, net = make(graphs)
        torch.manual_seed(1)
        losses = [runner(torch.randint(32, (8,), device="cuda"))["loss"].item() for _ in range(6)]
        results[graphs] = (losses, net.weight.detach().clone(), runner)
    eager, graphed = results[False], results[True]
    assert graphed[2].captured and graphed[2].failure is None
    assert len(set(graphed[0])) == 6  # every replay drew new indices' data and new noise
    assert graphed[0] == pytest.approx(eager[0], rel=1e-5)
    assert torch.allclose(graphed[1], eager[1], atol=1e-6)


@pytest.fixture
def exact_fp32(monkeypatch):
    """Plain fp32 convolutions with fixed algorithms, so two runs differ by rounding only
    (by default cuDNN may use TF32 and pick algorithms by timing; the trainer turns timing
    on for its epochs)."""

    def apply() -> None:
        monkeypatch.setattr(distill, "_cudnn_benchmark", contextlib.nullcontext)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    return apply


@needs_cuda
def test_distiller_steps_are_captured_and_match_eager(tmp_path, exact_fp32, monkeypatch):
    # the discriminator's custom layers in the eager run too, as in the graphed one
    monkeypatch.setattr(discriminator, "CUSTOM_SECOND_ORDER_IN_CUDA_EAGER", True)
    real = random_real()
    records = {}
    for graphs in (False, True):
        trainer = Distiller(tiny_config("cuda", graphs, 6, tmp_path / str(graphs)), real)
        exact_fp32()  # after the trainer turned cudnn.benchmark on
        assert trainer.use_cuda_graphs is graphs
        records[graphs] = [trainer.run_epoch(0), trainer.run_epoch(1)]  # stage 1, then stage 2
        if graphs:
            assert [r["cuda_graph"] for r in records[graphs]] == [True, True]
            assert trainer.graph_failure is None
    for eager, graphed in zip(records[False], records[True]):
        for key, value in eager.items():
            if isinstance(value, float) and key != "seconds":
                # float noise, grown over a few Adam steps: measured up to 1.4e-4 absolute
                # (the Wasserstein estimate, a difference of two means near 0, so its
                # relative error means little); a replay bug shows as 1e-2 or more
                assert graphed[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key


@needs_cuda
def test_graphed_run_checkpoints_and_resumes_on_cuda_and_on_cpu(tmp_path):
    real = random_real()
    out = tmp_path / "run"

    def config(device: str, stage2_epochs: int) -> DistillConfig:
        return dataclasses.replace(
            tiny_config(device, True, 5, out), out=str(out), stage1_epochs=2, stage2_epochs=stage2_epochs
        )

    Distiller(config("cuda", 0), real).fit()
    resumed = Distiller(config("cuda", 1), real)  # one more epoch (stage 2), on CUDA with graphs
    resumed.fit(resume=True)
    assert all(g["capturable"] for g in resumed.opt_g.param_groups)
    on_cpu = Distiller(config("cpu", 2), real)  # and one more on the CPU, from the CUDA checkpoint
    on_cpu.fit(resume=True)
    assert not any(g["capturable"] for g in on_cpu.opt_d.param_groups)
    assert all(s["step"].device.type == "cpu" for s in on_cpu.opt_d.state.values())
    import json

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert [r.get("cuda_graph") for r in log] == [True, True, True, None]


@needs_cuda
def test_prefetch_on_cuda_gives_the_same_epochs(make_generator, exact_fp32):
    from synthsets import SyntheticDataset

    exact_fp32()  # same convolution algorithms in both threads
    gen = make_generator(image_size=32, channels=3)
    epochs = {}
    for prefetch in (False, True):
        ds = SyntheticDataset(gen, 20, device="cuda", seed=5)
        loader = ds.loader(batch_size=64, shuffle=False, prefetch=prefetch)
        epochs[prefetch] = [torch.cat([x for x, _ in loader]) for _ in range(3)]
    for a, b in zip(epochs[False], epochs[True]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(epochs[True][0], epochs[True][1])


# last: a failed capture is the one thing that could disturb later tests
@needs_cuda
def test_capture_failure_falls_back_to_eager():
    def step(idx):
        total = idx.float().sum()
        if torch.cuda.is_current_stream_capturing():
            total.item()  # a host sync: not capturable
        return {"sum": total}

    runner = GraphedStep(step, warmup=1)
    first = runner(torch.arange(4, device="cuda"))["sum"].item()
    with pytest.warns(RuntimeWarning, match="capture"):
        second = runner(torch.arange(4, device="cuda"))["sum"].item()
    third = runner(torch.arange(4, device="cuda"))["sum"].item()
    assert first == second == third == 6
    assert not runner.captured and runner.failure
    # the device's random numbers still work, and follow the seed
    torch.manual_seed(3)
    a = torch.randn(4, device="cuda")
    torch.manual_seed(3)
    assert torch.equal(a, torch.randn(4, device="cuda"))
