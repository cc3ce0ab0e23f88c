"""Error messages of loading: typos, path-like names, unreachable Hub, bad config.json, devices.

Each test asserts that the message names the problem and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import synthsets
from synthsets import Generator, PretrainedNotFoundError, WeightsError
from synthsets import hub as hub_module

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def bundled_mnist(monkeypatch, tmp_path, make_generator):
    """A fake bundled-models folder holding ``dim-mnist`` and ``dim-cifar10``."""
    root = tmp_path / "bundled"
    make_generator(image_size=28, channels=1, seed=5, dataset="mnist").save_pretrained(root / "dim-mnist")
    make_generator(seed=6, dataset="cifar10").save_pretrained(root / "dim-cifar10")
    monkeypatch.setattr(hub_module, "bundled_dir", lambda: root)
    assert synthsets.list_pretrained() == ["cifar10", "mnist"]


def _message(call, *args, error=PretrainedNotFoundError, **kwargs) -> str:
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    return str(info.value)


def _edit_config(folder: Path, **changes) -> Path:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    return path


# -- 1. generate() builds no autograd graph ------------------------------------------------------
def test_generate_does_not_track_gradients(make_generator):
    g = make_generator().train()  # parameters require grad, as after training
    assert all(p.requires_grad for p in g.parameters())
    x = g.generate([0, 1, 2])
    assert not x.requires_grad and x.grad_fn is None
    # the images are ordinary tensors (not inference tensors): a classifier can train on them
    head = nn.Linear(x[0].numel(), 10)
    nn.functional.cross_entropy(head(x.flatten(1)), torch.tensor([0, 1, 2])).backward()
    assert head.weight.grad is not None
    # calling the generator itself still builds the graph (training goes through forward)
    z = g.make_noise(torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert g(z).grad_fn is not None


# -- 2. typos of bundled names; the unreachable-Hub reasons -------------------------------------
@pytest.mark.parametrize(
    "typo,meant", [("mnsit", "mnist"), ("MNIS", "mnist"), ("cifar", "cifar10"), ("dim-cifar1O", "cifar10")]
)
def test_typo_of_a_bundled_name_suggests_it(bundled_mnist, typo, meant):
    for call in (lambda: synthsets.DiM(typo, inpc=1), lambda: Generator.from_pretrained(typo)):
        message = _message(call)
        assert f"did you mean {meant!r}?" in message
        assert f"unknown generator {typo!r}" in message
        assert "synthsets/dim-" in message  # the Hub was still tried


def test_typo_warns_before_a_hub_lookup_that_may_retry(bundled_mnist, hub_endpoint, recwarn):
    """Online, the suggestion comes at once (a lookup without network retries for a while);
    the error after the lookup repeats it. Offline there is no lookup and no warning."""
    message = _message(synthsets.DiM, "mnsit", inpc=1)
    assert "did you mean 'mnist'?" in message
    assert [str(w.message) for w in recwarn if "bundled generator" in str(w.message)] == [
        "'mnsit' is not a bundled generator (did you mean 'mnist'?); looking for the Hub repo 'synthsets/dim-mnsit'"
    ]


def test_no_typo_warning_for_dataset_names_or_downloaded_repos(bundled_mnist, hub_endpoint, make_generator, recwarn):
    """cifar100 (close to cifar10) is a dataset of its own; a repo loaded once is in the
    cache: neither warns."""
    make_generator(seed=3).push_to_hub("synthsets/dim-cifar100")
    make_generator(seed=4).push_to_hub("synthsets/dim-mnsit")
    synthsets.DiM("cifar100", inpc=1, device="cpu")
    assert not [w for w in recwarn if "bundled generator" in str(w.message)]
    with pytest.warns(UserWarning, match="did you mean 'mnist'"):
        synthsets.DiM("mnsit", inpc=1, device="cpu")
    recwarn.clear()
    synthsets.DiM("mnsit", inpc=1, device="cpu")  # cached now
    assert not [w for w in recwarn if "bundled generator" in str(w.message)]


def test_typo_of_a_bundled_name_in_a_synthsets_repo_id(bundled_mnist):
    message = _message(Generator.from_pretrained, "synthsets/dim-mnsit")
    assert "did you mean 'mnist'?" in message


def test_no_suggestion_for_a_name_unlike_any_bundled_one(bundled_mnist):
    message = _message(synthsets.DiM, "imagenet", inpc=1)
    assert "did you mean" not in message and "unknown generator 'imagenet'" in message
    assert "did you mean" not in _message(Generator.from_pretrained, "owner/mnsit")  # another owner's repo


def test_a_typo_name_published_on_the_hub_still_loads(bundled_mnist, hub_endpoint, make_generator):
    generator = make_generator(seed=9)
    generator.push_to_hub("synthsets/dim-mnsit")
    with pytest.warns(UserWarning, match=r"'mnsit' is not a bundled generator \(did you mean 'mnist'\?\); "
                                         r"looking for the Hub repo 'synthsets/dim-mnsit'") as warned:
        loaded = synthsets.DiM("mnsit", inpc=1, device="cpu").generator
    assert [w.filename for w in warned] == [__file__]  # the user's line, not the library's
    for key, value in generator.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize(
    "offline,local_only,present,absent",
    [
        (True, False, ["offline mode HF_HUB_OFFLINE=1", "unset HF_HUB_OFFLINE"], ["local_files_only", "network"]),
        (False, True, ["local_files_only=True", "pass local_files_only=False"], ["HF_HUB_OFFLINE", "network"]),
        (True, True, ["local_files_only=True", "HF_HUB_OFFLINE=1"], ["network"]),
    ],
    ids=["offline-mode", "local-files-only", "both"],
)
def test_unreachable_hub_names_only_the_reasons_that_apply(monkeypatch, offline, local_only, present, absent):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    message = _message(Generator.from_pretrained, "owner/name", local_files_only=local_only)
    assert "config.json of Hub repo 'owner/name' is not in the local cache" in message
    for text in present:
        assert text in message
    for text in absent:
        assert text not in message


def test_unreachable_hub_without_flags_says_the_network_failed(monkeypatch):
    from huggingface_hub import constants, errors

    def no_network(repo_id, filename, **kwargs):
        try:
            raise ConnectionError("[Errno 111] Connection refused")
        except ConnectionError as cause:
            raise errors.LocalEntryNotFoundError("cannot find the requested files") from cause

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    message = _message(Generator.from_pretrained, "owner/name")
    assert "the Hub could not be reached (ConnectionError: [Errno 111] Connection refused)" in message
    assert "check the network connection" in message
    assert "HF_HUB_OFFLINE" not in message and "local_files_only" not in message


# -- 3. strings that are clearly paths; names that may be either ---------------------------------
@pytest.mark.parametrize(
    "text", ["nonexistent_folder/", "./x", "/abs/x", "a/b/c", "runs\\mnist", "x/y/", "no such/dir"]
)
def test_path_like_strings_are_local_paths(text, no_hub_calls):
    # "no such/dir" has the shape of a repo id (owner/name), but not its characters
    invalid = (f", and {text!r} is not a valid Hub repo id either (owner/name, with letters, digits, '-', '_' and '.', "
               "no '--' or '..', at most 96 characters)" if text == "no such/dir" else "")
    for call in (lambda: synthsets.DiM(text, inpc=10), lambda: Generator.from_pretrained(text)):
        message = _message(call)
        assert message == f"no such folder: {text}{invalid}"


def test_a_web_address_points_to_its_repo_id(no_hub_calls):
    for url in ("https://huggingface.co/me/dim-mine", "https://hf.co/me/dim-mine/tree/main"):
        assert _message(Generator.from_pretrained, url) == f"{url} is a web address; pass the Hub repo id instead: 'me/dim-mine'"


def test_home_path_shows_its_expansion(no_hub_calls):
    message = _message(Generator.from_pretrained, "~/no-such-generator")
    assert message == f"no such folder: ~/no-such-generator ({Path('~/no-such-generator').expanduser()})"


def test_owner_name_that_is_neither_a_folder_nor_a_repo_says_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _message(Generator.from_pretrained, "runs/mnist")
    assert "no local folder 'runs/mnist' and no Hub repo 'runs/mnist' (reachable or cached)" in message
    assert "not in the local cache" in message  # why the Hub could not be used (offline here)


def test_owner_name_absent_from_a_reachable_hub_says_both(hub_endpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = _message(synthsets.DiM, "runs/mnist", inpc=1)
    assert "no local folder 'runs/mnist' and no Hub repo 'runs/mnist'" in message
    assert "does not exist or is private" in message


def test_owner_name_that_is_a_local_folder_loads_it(tmp_path, monkeypatch, make_generator, no_hub_calls):
    monkeypatch.chdir(tmp_path)
    make_generator(seed=2).save_pretrained(tmp_path / "runs" / "mnist")
    assert Generator.from_pretrained("runs/mnist").config.width == 16


# -- 4. a config.json whose width does not match the weights -------------------------------------
@pytest.mark.parametrize(
    "changes,hint",
    [
        ({"width": 8}, "the weights look like width 16 but config.json says 8"),
        ({"noise_dim": 120}, "the weights look like noise_dim 100 but config.json says 120"),
        ({"image_size": 28}, "the weights look like image_size 32 but config.json says 28"),
        ({"channels": 1, "mean": None, "std": None}, "the weights look like channels 3 but config.json says 1"),
    ],
    ids=["width", "noise_dim", "image_size", "channels"],
)
def test_config_that_contradicts_the_weights_gives_a_hint(make_generator, tmp_path, changes, hint):
    folder = make_generator(image_size=32, channels=3).save_pretrained(tmp_path / "g")
    _edit_config(folder, **changes)
    message = _message(Generator.from_pretrained, folder, error=WeightsError)
    assert hint in message
    assert str(folder / "model.safetensors") in message
    others = {"width", "noise_dim", "image_size", "channels"} - set(changes)
    assert not any(f"look like {name} " in message for name in others)  # only the value at fault


def test_many_mismatches_are_summarised(make_generator, tmp_path):
    folder = make_generator(width=16).save_pretrained(tmp_path / "g")
    _edit_config(folder, width=8)
    message = _message(Generator.from_pretrained, folder, error=WeightsError)
    assert message.count("has shape") == 3  # the first three, not one per tensor
    total = sum(
        1
        for a, b in zip(make_generator(width=16).state_dict().values(), make_generator(width=8).state_dict().values())
        if a.shape != b.shape
    )
    assert f"and {total - 3} more mismatched tensors" in message
    assert message.index("the weights look like width 16 but config.json says 8") < message.index("has shape")
    assert len(message) < 800 and "\n" not in message


def test_many_missing_tensors_are_summarised(saved_generator):
    from safetensors.torch import load_file, save_file

    path = saved_generator / "model.safetensors"
    state = dict(load_file(str(path)))
    dropped = sorted(k for k in state if k.startswith("body."))
    save_file({k: v for k, v in state.items() if k not in dropped}, str(path))
    message = _message(Generator.from_pretrained, saved_generator, error=WeightsError)
    assert f"missing tensors: {', '.join(dropped[:3])}, and {len(dropped) - 3} more" in message
    assert dropped[3] not in message


# -- 5. invalid values in config.json name the file ---------------------------------------------
@pytest.mark.parametrize(
    "changes,problem",
    [
        ({"width": "196"}, "GeneratorConfig.width must be a positive int, got '196'"),
        ({"num_classes": 5}, "10 class names given for num_classes=5"),
        ({"image_size": 30}, "image_size must be 28 or 32"),
        ({"extra": 5}, "GeneratorConfig.extra must be a dict (JSON object), got 5"),
        ({"extra": [1]}, "GeneratorConfig.extra must be a dict (JSON object), got [1]"),
        ({"classes": "0123456789"}, "GeneratorConfig.classes must be a list of class names, got '0123456789'"),
        ({"mean": ["0.1"]}, "GeneratorConfig.mean must be a list of finite numbers, got ['0.1']"),
        ({"std": [float("nan")]}, "GeneratorConfig.std must be a list of finite numbers, got [nan]"),
        ({"std": 0.3}, "GeneratorConfig.std must be a list of finite numbers, got 0.3"),
    ],
    ids=["width-str", "classes", "image-size", "extra-int", "extra-list", "classes-str", "mean-str", "std-nan",
         "std-scalar"],
)
def test_invalid_config_values_name_the_file(saved_generator, changes, problem):
    path = _edit_config(saved_generator, **changes)
    for call in (lambda: Generator.from_pretrained(saved_generator), lambda: synthsets.DiM(saved_generator, inpc=1)):
        message = _message(call, error=ValueError)
        assert message.startswith(f"invalid {path}: ")
        assert problem in message
        assert "fix that value or re-save the generator" in message


def test_invalid_config_from_the_hub_names_the_cached_file(hub_endpoint, make_generator, tmp_path):
    folder = make_generator(seed=1).save_pretrained(tmp_path / "g")
    _edit_config(folder, width="16")
    hub_endpoint.state.create_repo("me/bad")
    hub_endpoint.state.commit("me/bad", {n: (folder / n).read_bytes() for n in ("config.json", "model.safetensors")})
    cache = tmp_path / "cache"
    message = _message(Generator.from_pretrained, "me/bad", cache_dir=cache, error=ValueError)
    assert message.startswith(f"invalid {cache / 'models--me--bad' / 'snapshots'}")
    assert "config.json: GeneratorConfig.width must be a positive int, got '16'" in message


# -- 6. map_location checked like SyntheticDataset's device -------------------------------------
def test_map_location_cuda_without_cuda_is_a_clear_error(saved_generator, monkeypatch, no_hub_calls):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expected = _message(synthsets.DiM, saved_generator, inpc=1, device="cuda", error=ValueError)
    assert "CUDA is not available on this machine" in expected and "use 'cpu'" in expected
    assert _message(Generator.from_pretrained, saved_generator, map_location="cuda", error=ValueError) == expected
    # checked before anything is resolved or downloaded
    assert _message(Generator.from_pretrained, "owner/name", map_location="cuda", error=ValueError) == expected
    message = _message(Generator.from_pretrained, saved_generator, map_location="gpu", error=ValueError)
    assert message.startswith("unknown device 'gpu'")
    assert Generator.from_pretrained(saved_generator, map_location=torch.device("cpu")).device.type == "cpu"
