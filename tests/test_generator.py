"""The DiM generator: architecture, noise/label coding, config checks, strict safetensors I/O."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import synthsets
from synthsets import Generator, GeneratorConfig, PretrainedNotFoundError, WeightsError

pytestmark = pytest.mark.usefixtures("single_thread")


def _state_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


# -- architecture and outputs ---------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 7])
def test_output_shape_dtype_and_range(tiny_generator, batch):
    c = tiny_generator.config
    labels = torch.arange(batch) % c.num_classes
    with torch.no_grad():
        x = tiny_generator.generate(labels, generator=torch.Generator().manual_seed(0))
    assert x.shape == (batch, c.channels, c.image_size, c.image_size)
    assert x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    if batch > 1:
        assert x.std() > 0.1  # diverse images, not a constant


def test_train_mode_forward_and_backward(tiny_generator):
    tiny_generator.train()
    z = tiny_generator.make_noise(torch.arange(4), generator=torch.Generator().manual_seed(1))
    out = tiny_generator(z)
    assert out.shape[0] == 4
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tiny_generator.parameters())


@pytest.mark.parametrize("image_size,first_kernel,first_size", [(32, 4, 8), (28, 3, 7)])
def test_architecture_follows_the_paper(image_size, first_kernel, first_size):
    g = Generator(image_size=image_size, channels=3, num_classes=10)  # paper width 196
    assert isinstance(g.fc[0], nn.Linear) and (g.fc[0].in_features, g.fc[0].out_features) == (100, 196 * 16)
    assert isinstance(g.fc[1], nn.BatchNorm1d)
    convs = [m for m in g.body if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    kinds = ["T" if isinstance(m, nn.ConvTranspose2d) else "C" for m in convs]
    assert kinds == ["T", "C", "C", "C", "T", "C", "T", "C"]
    assert convs[0].kernel_size == (first_kernel, first_kernel) and convs[0].stride == (2, 2)
    assert all(m.kernel_size == (4, 4) for m in (convs[4], convs[6]))
    assert all(m.kernel_size == (3, 3) and m.stride == (1, 1) for m in convs if isinstance(m, nn.Conv2d))
    assert convs[-1].out_channels == 3 and all(m.out_channels == 196 for m in convs[:-1])
    assert isinstance(g.body[-1], nn.Tanh)
    sizes = []
    hook = convs[0].register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        out = g.eval().generate([0, 1])
    hook.remove()
    assert sizes == [first_size]
    assert out.shape == (2, 3, image_size, image_size)


def test_make_noise_writes_one_hot_over_first_classes(make_generator):
    g = make_generator(num_classes=10)
    labels = torch.tensor([0, 3, 9, 3])
    base = torch.randn(4, 100)
    original = base.clone()
    z = g.make_noise(labels, noise=base)
    assert torch.equal(base, original)  # input noise is not modified
    assert torch.equal(z[:, :10], nn.functional.one_hot(labels, 10).float())
    assert torch.equal(z[:, 10:], base[:, 10:])
    # drawn noise: reproducible with a seeded generator, standard normal beyond the label code
    z1 = g.make_noise(torch.zeros(2000, dtype=torch.long), generator=torch.Generator().manual_seed(5))
    z2 = g.make_noise(torch.zeros(2000, dtype=torch.long), generator=torch.Generator().manual_seed(5))
    assert torch.equal(z1, z2)
    assert z1.shape == (2000, 100)
    assert (z1[:, 0] == 1).all() and (z1[:, 1:10] == 0).all()
    tail = z1[:, 10:]
    assert abs(tail.mean().item()) < 0.02 and abs(tail.std().item() - 1) < 0.02


def test_label_changes_the_image(make_generator):
    g = make_generator()
    noise = torch.randn(1, 100).repeat(10, 1)
    with torch.no_grad():
        x = g(g.make_noise(torch.arange(10), noise=noise))
    diffs = (x[:, None] - x[None]).abs().flatten(2).mean(-1)
    off_diagonal = diffs[~torch.eye(10, dtype=torch.bool)]
    assert (off_diagonal > 1e-3).all()


def test_generate_validates_labels_and_forward_validates_shape(make_generator):
    g = make_generator()
    for bad in ([-1], [10], [0, 12]):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
            g.generate(bad)
    with pytest.raises(ValueError, match=r"expected noise of shape \(N, 100\)"):
        g(torch.randn(2, 99))
    with pytest.raises(ValueError, match="expected noise of shape"):
        g(torch.randn(100))
    assert g.generate([]).shape == (0, 3, 32, 32)


# -- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"image_size": 30}, "image_size must be 28 or 32"),
        ({"image_size": 64}, "image_size must be 28 or 32"),
        ({"num_classes": 120}, r"noise_dim \(100\) must be >= num_classes \(120\)"),
        ({"noise_dim": 5}, r"noise_dim \(5\) must be >= num_classes \(10\)"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"channels": 0}, "channels must be a positive int"),
        ({"width": True}, "width must be a positive int"),
        ({"width": 16.0}, "width must be a positive int"),
        ({"noise_dim": -100}, "noise_dim must be a positive int"),
        ({"classes": ["a", "b"]}, "2 class names given for num_classes=10"),
        ({"num_classes": 2, "classes": ["a", "a"]}, "classes must be distinct"),
        ({"channels": 3, "mean": [0.5]}, "mean needs 3 values"),
        ({"channels": 1, "std": [0.2, 0.2, 0.2]}, "std needs 1 values"),
        ({"channels": 1, "std": [0.0]}, "std must be positive"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        Generator(**kwargs)


def test_config_defaults_and_dict_round_trip():
    config = GeneratorConfig(num_classes=3, channels=1, image_size=28, width=8, dataset="toy")
    assert config.classes == ["0", "1", "2"]
    assert config.mean == [0.5] and config.std == [0.5]
    data = config.to_dict()
    assert data["model_type"] == "dim-generator"
    assert json.loads(json.dumps(data)) == data  # JSON-serialisable
    assert GeneratorConfig.from_dict(data) == config
    # keys from a newer version are kept in `extra`, not rejected
    newer = GeneratorConfig.from_dict({**data, "future_option": 3})
    assert newer.extra == {"future_option": 3} and newer.num_classes == 3
    with pytest.raises(ValueError, match="model_type is 'other'"):
        GeneratorConfig.from_dict({**data, "model_type": "other"})
    with pytest.raises(ValueError, match="must be a JSON object"):
        GeneratorConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_config_and_kwargs_are_exclusive():
    with pytest.raises(TypeError, match="not both"):
        Generator(GeneratorConfig(), width=8)


# -- save / load ----------------------------------------------------------------------------
def test_save_load_round_trip_is_bit_exact(tiny_generator, tmp_path):
    folder = tiny_generator.save_pretrained(tmp_path / "g")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "dim-generator"
    assert (config["width"], config["num_classes"]) == (16, 10)
    assert (config["image_size"], config["channels"]) == (
        tiny_generator.config.image_size,
        tiny_generator.config.channels,
    )
    # a safetensors file (8-byte little-endian header length, then a JSON header), not a pickle
    raw = (folder / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["model_type"] == "dim-generator"

    loaded = Generator.from_pretrained(folder)
    assert not loaded.training
    assert loaded.config == tiny_generator.config
    assert loaded.source == str(folder)
    _state_equal(loaded, tiny_generator)
    noise = tiny_generator.make_noise(torch.arange(10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(noise), tiny_generator(noise))
    # str paths work as well as Path objects
    _state_equal(Generator.from_pretrained(str(folder)), tiny_generator)


def test_loading_never_unpickles(saved_generator, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be used to read weights")

    monkeypatch.setattr(torch, "load", refuse)
    Generator.from_pretrained(saved_generator)


def test_fp16_save_loads_into_fp32_model(make_generator, tmp_path):
    g = make_generator()
    g.save_pretrained(tmp_path / "fp32")
    g.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    stored = load_file(str(tmp_path / "fp16" / "model.safetensors"))
    assert stored["fc.0.weight"].dtype == torch.float16
    assert stored["fc.1.num_batches_tracked"].dtype == torch.int64  # integer buffers are not cast
    size16 = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    size32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert size16 < 0.55 * size32

    loaded = Generator.from_pretrained(tmp_path / "fp16")
    for key, value in loaded.state_dict().items():
        original = g.state_dict()[key]
        assert value.dtype == original.dtype, key
        if original.is_floating_point():
            assert torch.equal(value, original.half().float()), key
        else:
            assert torch.equal(value, original), key
    noise = g.make_noise(torch.arange(10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(noise), g(noise), atol=0.02)


def test_save_overwrites_previous_save_atomically(make_generator, tmp_path):
    make_generator(seed=1).save_pretrained(tmp_path)
    second = make_generator(seed=2)
    second.save_pretrained(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    _state_equal(Generator.from_pretrained(tmp_path), second)


def _rewrite_weights(folder, edit) -> None:
    path = folder / "model.safetensors"
    state = dict(load_file(str(path)))
    edit(state)
    save_file(state, str(path))


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (lambda s: s.pop("fc.0.weight"), r"missing tensors: fc\.0\.weight"),
        (lambda s: s.pop("body.4.running_var"), r"missing tensors: body\.4\.running_var"),
        (lambda s: s.update({"head.extra": torch.zeros(3)}), r"unexpected tensors: head\.extra"),
        (
            lambda s: s.update({"body.0.weight": torch.zeros(16, 16, 5, 5)}),
            r"tensor 'body\.0\.weight' has shape \(16, 16, 5, 5\)",
        ),
        (
            lambda s: s.update({"fc.0.bias": torch.zeros(256, dtype=torch.int32)}),
            r"tensor 'fc\.0\.bias' has dtype torch\.int32",
        ),
        (
            lambda s: s["fc.0.weight"].__setitem__((0, 0), float("nan")),
            r"tensor 'fc\.0\.weight' .* NaN or infinite",
        ),
    ],
    ids=["missing", "missing-buffer", "extra", "shape", "dtype", "nan"],
)
def test_strict_load_names_the_bad_tensor(saved_generator, edit, pattern):
    _rewrite_weights(saved_generator, edit)
    with pytest.raises(WeightsError, match=pattern) as info:
        Generator.from_pretrained(saved_generator)
    assert str(saved_generator / "model.safetensors") in str(info.value)


def test_config_that_does_not_match_the_weights(saved_generator):
    config = json.loads((saved_generator / "config.json").read_text())
    config["width"] = 8
    (saved_generator / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="do not match the model built from its config.json"):
        Generator.from_pretrained(saved_generator)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated download
        lambda raw: raw[:5],  # shorter than the header length field
        lambda raw: b"",  # empty file
        lambda raw: b"\x80\x02}q\x00." + raw[6:],  # garbage / a pickle header
        lambda raw: (10**12).to_bytes(8, "little") + raw[8:],  # absurd header length
    ],
    ids=["truncated", "tiny", "empty", "garbage", "bad-header"],
)
def test_corrupt_weights_raise_a_clear_weights_error(saved_generator, corrupt):
    path = saved_generator / "model.safetensors"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(WeightsError) as info:
        Generator.from_pretrained(saved_generator)
    message = str(info.value)
    assert str(path) in message
    assert "truncated or corrupt" in message and "force_download=True" in message
    # the low-level safetensors exception is not chained into the traceback
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_invalid_config_json(saved_generator):
    (saved_generator / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json is not valid JSON"):
        Generator.from_pretrained(saved_generator)


def test_config_with_invalid_values(saved_generator):
    config = json.loads((saved_generator / "config.json").read_text())
    config["image_size"] = 30
    (saved_generator / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="image_size must be 28 or 32"):
        Generator.from_pretrained(saved_generator)


def test_incomplete_folder(saved_generator):
    (saved_generator / "model.safetensors").unlink()
    with pytest.raises(PretrainedNotFoundError, match="lacks model.safetensors"):
        Generator.from_pretrained(saved_generator)
    with pytest.raises(PretrainedNotFoundError, match="lacks model.safetensors"):
        synthsets.DiM(saved_generator, inpc=1)
    (saved_generator / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(PretrainedNotFoundError, match=r"lacks model.safetensors .*; it holds pytorch_model.bin, which "
                                                      r"synthsets does not read \(pickle files can run code\)"):
        Generator.from_pretrained(saved_generator)


def test_config_json_must_be_utf8_and_complete(saved_generator):
    path = saved_generator / "config.json"
    config = json.loads(path.read_text())
    path.write_bytes(json.dumps({**config, "dataset": "caf\u00e9"}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(WeightsError, match=r"config.json is not UTF-8 text"):
        Generator.from_pretrained(saved_generator)
    for absent in (["width"], ["mean", "std"], ["num_classes", "classes"]):
        path.write_text(json.dumps({k: v for k, v in config.items() if k not in absent}))
        shown = "num_classes (or classes)" if "classes" in absent else ", ".join(absent)
        with pytest.raises(ValueError, match=rf"invalid .*config.json: it has no {re.escape(shown)}: it is not a "
                                             r"synthsets generator config, or is damaged"):
            Generator.from_pretrained(saved_generator)
    path.write_text(json.dumps({k: v for k, v in config.items() if k != "num_classes"}))  # classes suffice
    assert Generator.from_pretrained(saved_generator).num_classes == config["num_classes"]


def test_unknown_config_keys_warn(saved_generator):
    path = saved_generator / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "upsample_mode": "bilinear"}))
    with pytest.warns(UserWarning, match=r"has settings this version of synthsets does not know \(upsample_mode\)"):
        Generator.from_pretrained(saved_generator)


def test_git_lfs_pointers_and_negative_variances_are_named(saved_generator):
    weights = saved_generator / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("running_var"))
    save_file({**state, key: -state[key]}, str(weights))
    with pytest.raises(WeightsError, match=rf"tensor '{re.escape(key)}' .* holds negative variances"):
        Generator.from_pretrained(saved_generator)
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(WeightsError, match=r"is a Git LFS pointer, not the weights: .*run `git lfs pull`"):
        Generator.from_pretrained(saved_generator)


def test_save_pretrained_refuses_a_config_that_would_not_load(make_generator, tmp_path):
    cases = [
        (lambda c: setattr(c, "mean", [0.1]), r"GeneratorConfig.mean needs 3 values"),
        (lambda c: c.extra.update(x=torch.ones(1)), r"not JSON serializable"),
        (lambda c: c.extra.update(x=float("nan")), r"Out of range float values are not JSON compliant"),
        (lambda c: setattr(c, "width", 196), r"does not describe its weights \(the weights look like width 16 but "
                                             r"the config says 196\)"),
    ]
    for change, problem in cases:
        generator = make_generator(seed=1)
        change(generator.config)
        with pytest.raises(ValueError, match=r"cannot save the generator: .*" + problem):
            generator.save_pretrained(tmp_path / "g")
        assert not (tmp_path / "g").exists()
    for bad in (None, ""):
        with pytest.raises(TypeError, match="save_directory must be a folder path"):
            make_generator().save_pretrained(bad)


def test_save_pretrained_expands_home_and_writes_a_card_when_asked(make_generator, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    generator = make_generator(seed=1, dataset="toy")
    folder = generator.save_pretrained("~/gen")
    assert folder == tmp_path / "gen" and sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    _state_equal(Generator.from_pretrained("~/gen"), generator)
    generator.save_pretrained(folder, repo_id="me/toy")
    assert 'synthsets.DiM("me/toy", inpc=10)' in (folder / "README.md").read_text()
    (folder / "README.md").write_text("my own card")
    generator.save_pretrained(folder, repo_id="me/toy")
    assert (folder / "README.md").read_text() == "my own card"  # never replaced


def test_map_location_and_repr(saved_generator):
    g = Generator.from_pretrained(saved_generator, map_location="cpu")
    assert g.device == torch.device("cpu")
    text = repr(g)
    assert "classes=10" in text and "width=16" in text and "noise_dim=100" in text


def test_saving_is_byte_for_byte_reproducible(make_generator, tmp_path):
    """Same weights -> same file bytes (stable hashes; re-pushing creates no Hub commit)."""
    g = make_generator()
    files = {(g.save_pretrained(tmp_path / str(i)) / "model.safetensors").read_bytes() for i in range(12)}
    assert len(files) == 1
    header_len = int.from_bytes(next(iter(files))[:8], "little")
    header = json.loads(next(iter(files))[8 : 8 + header_len])
    assert list(header["__metadata__"]) == ["format", "model_type"]
    assert header["__metadata__"]["format"] == "pt"


# -- labels, noise, dtypes and modes ---------------------------------------------------------
@pytest.mark.parametrize("labels, problem", [
    ([0.5, 1.7], "integer class indices"),
    ([True, False], "integer class indices"),
    (torch.tensor([0.0, 1.0]), "integer class indices"),
    (3, "1-D sequence of class indices, got the single value 3; for one image pass \\[label\\]"),
    (__import__("numpy").int64(3), "got the single value .*3.*; for one image pass"),
    (__import__("numpy").array(3), "got the single value .*3.*; for one image pass"),
    ("012", "1-D sequence of class indices"),
    ([[0, 1], [2, 3]], "integer class indices"),
    (torch.tensor([[0, 1], [2, 3]]), "must be 1-D"),
])
def test_generate_refuses_labels_that_are_not_class_indices(labels, problem):
    g = Generator(num_classes=4, channels=1, image_size=28, width=8)
    with pytest.raises(ValueError, match=problem):
        g.generate(labels)


def test_generate_takes_any_integer_sequence():
    import numpy as np

    g = Generator(num_classes=4, channels=1, image_size=28, width=8)
    rng = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    reference = g.generate([0, 3], generator=rng())
    for labels in ((0, 3), range(0, 4, 3), np.array([0, 3]), torch.tensor([0, 3], dtype=torch.int32)):
        assert torch.equal(g.generate(labels, generator=rng()), reference)
    assert g.make_noise([1, 2]).shape == (2, g.noise_dim)  # make_noise takes lists too


def test_make_noise_checks_given_noise_and_follows_the_model_dtype():
    g = Generator(num_classes=4, channels=1, image_size=28, width=8)
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 100\) for 2 labels, got \(3, 100\)"):
        g.make_noise([0, 1], noise=torch.randn(3, 100))
    half = Generator(num_classes=4, channels=1, image_size=28, width=8).to(torch.bfloat16)
    assert half.make_noise([0, 1]).dtype == torch.bfloat16
    assert half.generate([0, 1]).dtype == torch.bfloat16  # a bf16 model generates


def test_generate_runs_in_eval_mode_and_restores_the_mode():
    g = Generator(num_classes=4, channels=1, image_size=28, width=8).train()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    images = g.generate([2])  # one image: BatchNorm in training mode could not even run
    assert images.shape == (1, 1, 28, 28) and g.training
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())  # statistics untouched


def test_config_must_be_a_generator_config():
    with pytest.raises(TypeError, match="config must be a GeneratorConfig, got dict"):
        Generator({"width": 8})


def test_save_pretrained_takes_floating_dtypes_only(tmp_path):
    g = Generator(num_classes=4, channels=1, image_size=28, width=8)
    for dtype in (torch.int8, "int8", torch.bool):
        with pytest.raises(ValueError, match="dtype must be a floating dtype"):
            g.save_pretrained(tmp_path / "x", dtype=dtype)
    g.save_pretrained(tmp_path / "half", dtype="fp16")
    loaded = Generator.from_pretrained(tmp_path / "half")
    assert next(loaded.parameters()).dtype == torch.float32
    assert torch.allclose(loaded.generate([0], generator=torch.Generator().manual_seed(0)),
                          g.eval().generate([0], generator=torch.Generator().manual_seed(0)), atol=5e-3)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_generator_cpu_fast_convolutions_are_torch_convolutions(channels, size, monkeypatch):
    """The generator's convolutions (bias added after the convolution while training on a
    CPU; the grey image's last layer as a matrix product and shifted sums) give torch's
    images and gradients, in training and in eval mode, in either layout."""
    import copy

    import synthsets.generator as generator_module
    from synthsets.generator import _CpuFastConv2d, _CpuFastConvTranspose2d

    grey_calls = []
    original = generator_module._conv3x3_to_one_channel
    monkeypatch.setattr(generator_module, "_conv3x3_to_one_channel", lambda *a: grey_calls.append(1) or original(*a))

    torch.manual_seed(0)
    G = Generator(num_classes=4, channels=channels, image_size=size, width=16).double()  # 16: the grey path
    reference = copy.deepcopy(G)
    for m in reference.modules():
        if type(m) in (_CpuFastConv2d, _CpuFastConvTranspose2d):
            m.__class__ = nn.Conv2d if type(m) is _CpuFastConv2d else nn.ConvTranspose2d
    z = G.make_noise(torch.arange(4).repeat(2)).double()
    for layout in (torch.contiguous_format, torch.channels_last):
        results = []
        for model in (G, reference):
            model.to(memory_format=layout).train().zero_grad()
            out = model(z)
            (out * torch.linspace(-1, 1, out.numel(), dtype=torch.double).view_as(out)).sum().backward()
            with torch.no_grad():
                images = model.eval()(z)
            results.append([out.detach(), images] + [p.grad for p in model.parameters()])
        for a, b in zip(*results):  # biases before a BatchNorm get rounding noise only (~1e-12)
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert len(grey_calls) == (4 if channels == 1 else 0)  # train and eval, two layouts


def test_generator_body_scripts_and_traces_to_the_same_images():
    """TorchScript and torch.fx compile the generator's layers as torch's own."""
    import warnings

    from synthsets.generator import fold_batchnorm

    torch.manual_seed(0)
    G = Generator(num_classes=4, channels=1, image_size=28, width=16).double().eval()
    h = torch.randn(2, 16, 4, 4, dtype=torch.double)
    for body in (G.body, fold_batchnorm(G).body):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
            scripted = torch.jit.script(body)
        torch.testing.assert_close(scripted(h), body(h))
        torch.testing.assert_close(torch.fx.symbolic_trace(body)(h), body(h))


def test_fast_transposed_convolution_keeps_output_size_and_stock_paths():
    from synthsets.generator import _CpuFastConv2d, _CpuFastConvTranspose2d

    torch.manual_seed(0)
    up = _CpuFastConvTranspose2d(8, 8, 3, 2, 1).double()
    x = torch.randn(2, 8, 5, 5, dtype=torch.double)
    ref = nn.ConvTranspose2d(8, 8, 3, 2, 1).double()
    ref.load_state_dict(up.state_dict())
    for output_size in (None, [10, 10]):
        torch.testing.assert_close(up(x, output_size), ref(x, output_size))
    conv = _CpuFastConv2d(8, 1, 3, 1, 1, padding_mode="reflect").double()  # not zero padding: torch's own
    stock = nn.Conv2d(8, 1, 3, 1, 1, padding_mode="reflect").double()
    stock.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x), stock(x))
    # unbatched (3-D) input while training: torch's own path, as nn.Conv2d
    for fast, plain in ((_CpuFastConv2d(8, 6, 3, 1, 1), nn.Conv2d(8, 6, 3, 1, 1)),
                        (_CpuFastConvTranspose2d(8, 6, 4, 2, 1), nn.ConvTranspose2d(8, 6, 4, 2, 1))):
        plain.load_state_dict(fast.state_dict())
        single = torch.randn(8, 5, 5)
        torch.testing.assert_close(fast(single), plain(single))


def test_save_pretrained_onto_a_file_names_it(tmp_path):
    g = Generator(num_classes=4, channels=1, image_size=28, width=8)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(FileExistsError, match=r"cannot save the generator: .*taken is a file; give a folder path"):
        g.save_pretrained(tmp_path / "taken")
    with pytest.raises(FileExistsError, match=r"deeper lies under .*taken, a file; give a folder path"):
        g.save_pretrained(tmp_path / "taken" / "deeper")
    assert (tmp_path / "taken").read_text() == "x"
