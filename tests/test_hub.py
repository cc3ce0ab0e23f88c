"""Resolving generators: local folders, bundled short names, the HF cache and a (local) Hub."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import synthsets
from synthsets import Generator, PretrainedNotFoundError, SyntheticDataset, WeightsError
from synthsets import hub as hub_module

from hub_server import git_blob_sha1

pytestmark = pytest.mark.usefixtures("single_thread")


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def assert_same_outputs(a: Generator, b: Generator) -> None:
    noise = a.make_noise(torch.arange(10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a.eval()(noise), b.eval()(noise))


@pytest.fixture
def bundled(monkeypatch, tmp_path, make_generator):
    """A fake bundled-models folder holding ``dim-toy`` (and an incomplete ``dim-broken``)."""
    root = tmp_path / "bundled"
    generator = make_generator(image_size=28, channels=1, seed=5, dataset="toy")
    generator.save_pretrained(root / "dim-toy")
    (root / "dim-broken").mkdir()
    (root / "dim-broken" / "config.json").write_text("{}")
    monkeypatch.setattr(hub_module, "bundled_dir", lambda: root)
    return generator


# -- local folders and DiM ------------------------------------------------------------------
def test_dim_from_a_local_folder(saved_generator, tiny_generator):
    for name in (saved_generator, str(saved_generator)):
        ds = synthsets.DiM(name, inpc=3, device="cpu", seed=0, augment=None)
        assert isinstance(ds, SyntheticDataset)
        assert len(ds) == 30 and ds.seed == 0 and ds.augment is None
        assert ds.generator.source == str(name)
        assert_same_weights(ds.generator, tiny_generator)
        x, y = ds[0]
        assert x.shape == (tiny_generator.config.channels,) + (tiny_generator.config.image_size,) * 2


def test_inpc_is_checked_before_anything_is_loaded(no_hub_calls):
    with pytest.raises(ValueError, match="inpc"):
        synthsets.DiM("some/repo", inpc=0)


def test_list_pretrained_returns_short_names():
    names = synthsets.list_pretrained()
    assert isinstance(names, list)
    assert all(isinstance(n, str) and not n.startswith("dim-") for n in names)
    assert names == sorted(names)


@pytest.mark.parametrize("bad", [123, None, 1.5, ["mnist"], ""])
def test_wrong_type_is_a_type_error(bad):
    with pytest.raises(TypeError, match="expected a generator name, folder or Hub repo id"):
        Generator.from_pretrained(bad)
    with pytest.raises(TypeError):
        synthsets.DiM(bad, inpc=1)


def test_paths_that_do_not_exist(tmp_path, no_hub_calls):
    with pytest.raises(PretrainedNotFoundError, match="no such folder"):
        Generator.from_pretrained(tmp_path / "missing")
    for text in ("./missing", "/definitely/not/here", "a/b/c"):
        with pytest.raises(PretrainedNotFoundError, match="no such folder"):
            Generator.from_pretrained(text)


def test_a_file_is_not_a_generator(saved_generator, no_hub_calls):
    with pytest.raises(PretrainedNotFoundError, match="is a file; pass the folder"):
        Generator.from_pretrained(saved_generator / "model.safetensors")


# -- bundled short names ----------------------------------------------------------------------
def test_bundled_short_names_resolve_without_network(bundled, no_hub_calls):
    assert synthsets.list_pretrained() == ["toy"]  # the incomplete folder is not listed
    for name in ("toy", "dim-toy", "TOY", " Toy "):
        ds = synthsets.DiM(name, inpc=2, device="cpu")
        assert len(ds) == 20
        assert ds.generator.config.dataset == "toy"
        assert_same_weights(ds.generator, bundled)
    assert_same_outputs(Generator.from_pretrained("toy"), bundled)


def test_unknown_short_name_lists_the_bundled_names(bundled):
    with pytest.raises(PretrainedNotFoundError) as info:
        synthsets.DiM("nope", inpc=1)
    message = str(info.value)
    assert "unknown generator 'nope'" in message
    assert "['toy']" in message  # the bundled names
    assert "synthsets/dim-nope" in message  # the Hub repo that was tried
    assert "offline" in message  # why the Hub could not be used (tests run offline)


def test_short_name_with_revision_goes_to_its_hub_repo(bundled, monkeypatch):
    from huggingface_hub import errors

    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["revision"]))
        raise errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    with pytest.raises(PretrainedNotFoundError, match="not in the local cache"):
        Generator.from_pretrained("toy", revision="v2")
    assert calls == [("synthsets/dim-toy", "config.json", "v2")]


def test_data_folder_named_like_a_bundled_generator(bundled, tmp_path, monkeypatch, no_hub_calls):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy" / "raw").mkdir(parents=True)  # e.g. a torchvision data root
    assert_same_weights(synthsets.DiM("toy", inpc=1, device="cpu").generator, bundled)
    with pytest.raises(PretrainedNotFoundError, match="is not a synthsets generator"):
        Generator.from_pretrained("./toy")  # an explicit path means the folder


# -- the Hugging Face cache, offline ------------------------------------------------------------
def build_hf_cache(cache: Path, repo_id: str, source: Path, commit: str, files=("config.json", "model.safetensors")):
    """Lay ``source``'s files out as huggingface_hub stores a downloaded repo."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    for name in files:
        data = (source / name).read_bytes()
        blob = hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_blob_sha1(data)
        (repo_dir / "blobs" / blob).write_bytes(data)
        (repo_dir / "snapshots" / commit / name).symlink_to(Path("..", "..", "blobs", blob))
    (repo_dir / "refs" / "main").write_text(commit)
    return repo_dir


def test_offline_load_from_the_hf_cache(hf_isolation, saved_generator, tiny_generator):
    commit = "0123456789abcdef0123456789abcdef01234567"
    build_hf_cache(hf_isolation.hub_cache, "owner/name", saved_generator, commit)
    loaded = Generator.from_pretrained("owner/name")
    assert_same_weights(loaded, tiny_generator)
    assert_same_outputs(loaded, tiny_generator)
    assert_same_weights(Generator.from_pretrained("owner/name", local_files_only=True), tiny_generator)
    assert_same_weights(Generator.from_pretrained("owner/name", revision=commit), tiny_generator)
    ds = synthsets.DiM("owner/name", inpc=2, device="cpu")
    assert len(ds) == 20 and ds.generator.source == "owner/name"


def test_offline_load_from_an_explicit_cache_dir(tmp_path, saved_generator, tiny_generator):
    cache = tmp_path / "elsewhere"
    build_hf_cache(cache, "owner/name", saved_generator, "f" * 40)
    assert_same_weights(Generator.from_pretrained("owner/name", cache_dir=cache), tiny_generator)
    with pytest.raises(PretrainedNotFoundError):  # not in the default cache
        Generator.from_pretrained("owner/name")


@pytest.mark.parametrize("local_files_only", [False, True])
def test_offline_without_cache_says_so(local_files_only):
    with pytest.raises(PretrainedNotFoundError) as info:
        Generator.from_pretrained("owner/name", local_files_only=local_files_only)
    message = str(info.value)
    assert "owner/name" in message and "not in the local cache" in message and "offline" in message
    assert "is it a synthsets generator" not in message


def test_offline_with_a_partial_cache(hf_isolation, saved_generator):
    build_hf_cache(hf_isolation.hub_cache, "owner/name", saved_generator, "e" * 40, files=("config.json",))
    with pytest.raises(PretrainedNotFoundError, match="model.safetensors of Hub repo 'owner/name' is not in the local"):
        Generator.from_pretrained("owner/name")


# -- no network at all: the Hub's host name does not resolve ---------------------------------------
def test_without_a_network_a_cached_repo_loads_at_once(no_dns, hf_isolation, saved_generator, tiny_generator):
    """The cache is read straight away, not after huggingface_hub's retries (about 25 s)."""
    build_hf_cache(hf_isolation.hub_cache, "owner/name", saved_generator, "a" * 40)
    assert_same_weights(Generator.from_pretrained("owner/name"), tiny_generator)
    assert len(no_dns.lookups) == 1 and no_dns.downloads == [True, True]


def test_without_a_network_an_uncached_repo_says_so_at_once(no_dns):
    with pytest.raises(PretrainedNotFoundError) as info:
        Generator.from_pretrained("owner/name")
    message = str(info.value)
    assert "the Hub could not be reached (ConnectionError: cannot resolve" in message
    assert "Name or service not known" in message and "check the network connection" in message
    assert no_dns.downloads == [True]  # the cache only: no network attempt
    with pytest.raises(PretrainedNotFoundError, match="could not be reached .*cannot resolve"):
        Generator.from_pretrained("owner/name", force_download=True)  # needs the network


def test_host_lookup_is_skipped_behind_a_proxy_and_when_downloads_are_off(no_dns, monkeypatch):
    assert hub_module._hub_host_unresolvable().startswith("cannot resolve ")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # the proxy resolves names
    assert hub_module._hub_host_unresolvable() is None
    monkeypatch.delenv("HTTPS_PROXY")
    lookups = len(no_dns.lookups)
    with pytest.raises(PretrainedNotFoundError, match="downloads are off"):
        Generator.from_pretrained("owner/name", local_files_only=True)
    assert len(no_dns.lookups) == lookups  # nothing to look up


@pytest.mark.parametrize("options", [{"revision": "main"}, {"force_download": True}], ids=["revision", "force"])
def test_hub_only_options_on_a_bundled_name_say_how_to_get_the_bundled_copy(bundled, options):
    name = "toy"
    with pytest.raises(PretrainedNotFoundError) as info:
        synthsets.DiM(name, inpc=1, **options)
    message = str(info.value)
    option = next(iter(options))
    assert f"{name!r} is also bundled, but {option} asks for the Hub copy: leave {option} out" in message
    assert "not bundled" not in message


def test_push_without_a_network_or_offline_fails_at_once_with_the_fix(no_dns, make_generator, monkeypatch):
    from huggingface_hub import constants

    generator = make_generator(seed=3, dataset="toy")
    with pytest.raises(hub_module.UploadError, match=r"cannot upload to me/toy: the Hub cannot be reached "
                                                     r"\(cannot resolve .*\); check the network connection, or save "
                                                     r"the files locally \(save_pretrained\(folder, repo_id='me/toy'\) "
                                                     r"also writes the model card\) and upload them later with: "
                                                     r"hf upload me/toy FOLDER \."):
        generator.push_to_hub("me/toy")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub_module.UploadError, match=r"huggingface_hub is offline \(HF_HUB_OFFLINE=1\); unset it"):
        generator.push_to_hub("me/toy")


# -- a Hub, through the real huggingface_hub client -----------------------------------------------
@pytest.mark.parametrize("xet", [True, False], ids=["xet-client", "plain-client"])
def test_push_then_download_round_trip(hub_endpoint, make_generator, tmp_path, monkeypatch, xet):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)  # both client upload paths
    generator = make_generator(seed=3, dataset="toy")
    url = generator.push_to_hub("me/toy")
    sha = hub_endpoint.state.repos["me/toy"].refs["main"]
    assert url == f"{hub_endpoint.url}/me/toy/commit/{sha}"
    local = generator.save_pretrained(tmp_path / "local")
    remote = hub_endpoint.state.files("me/toy")
    for name in ("config.json", "model.safetensors"):
        assert remote[name] == (local / name).read_bytes()
    # a model card made from the config: Hub metadata, the dataset and how to load this repo
    card = remote["README.md"].decode()
    assert card.startswith("---\nlibrary_name: synthsets\n") and "datasets:\n- toy\n" in card
    assert '# DiM generator for toy' in card and 'synthsets.DiM("me/toy", inpc=10)' in card

    cache = tmp_path / "cache"
    loaded = Generator.from_pretrained("me/toy", cache_dir=cache)
    assert_same_weights(loaded, generator)
    assert_same_outputs(loaded, generator)
    assert (cache / "models--me--toy" / "snapshots" / sha / "model.safetensors").is_file()
    ds = synthsets.DiM("me/toy", inpc=2, cache_dir=cache, device="cpu")
    assert len(ds) == 20 and ds.generator.config.dataset == "toy"


def test_revision_pinning(hub_endpoint, make_generator, tmp_path):
    v1, v2 = make_generator(seed=1), make_generator(seed=2)
    v1.push_to_hub("me/toy")
    sha1 = hub_endpoint.state.repos["me/toy"].refs["main"]
    hub_endpoint.state.tag("me/toy", "v1")
    v2.push_to_hub("me/toy", commit_message="v2")
    sha2 = hub_endpoint.state.repos["me/toy"].refs["main"]
    assert sha1 != sha2
    cache = tmp_path / "cache"
    assert_same_weights(Generator.from_pretrained("me/toy", cache_dir=cache), v2)
    assert_same_weights(Generator.from_pretrained("me/toy", revision=sha1, cache_dir=cache), v1)
    assert_same_weights(Generator.from_pretrained("me/toy", revision="v1", cache_dir=cache), v1)
    assert_same_weights(synthsets.DiM("me/toy", inpc=1, revision=sha2, cache_dir=cache).generator, v2)
    with pytest.raises(PretrainedNotFoundError, match="has no revision 'v9'"):
        Generator.from_pretrained("me/toy", revision="v9", cache_dir=cache)


def test_all_files_come_from_one_commit(hub_endpoint, make_generator, tmp_path):
    """If the branch moves between the downloads of config.json and the weights, the
    weights must still come from the commit the config came from."""
    v1 = make_generator(seed=1, width=16)
    v2 = make_generator(seed=2, width=8)  # a different architecture: mixing would not even load
    v1.push_to_hub("me/toy")
    new_files = {n: (v2.save_pretrained(tmp_path / "v2") / n).read_bytes() for n in ("config.json", "model.safetensors")}
    moved = []

    def push_between_files(method, repo_id, revision, filename):
        if method == "GET" and filename == "config.json" and not moved:
            moved.append(hub_endpoint.state.commit("me/toy", new_files, message="v2"))

    hub_endpoint.state.on_resolve = push_between_files
    loaded = Generator.from_pretrained("me/toy", cache_dir=tmp_path / "cache")
    assert moved, "the branch was not moved during the download"
    assert loaded.config.width == 16
    assert_same_weights(loaded, v1)


def test_missing_repo_and_missing_files(hub_endpoint, tmp_path):
    with pytest.raises(PretrainedNotFoundError, match="'me/absent' does not exist or is private"):
        Generator.from_pretrained("me/absent", cache_dir=tmp_path)
    hub_endpoint.state.create_repo("me/config-only")
    hub_endpoint.state.commit("me/config-only", {"config.json": b"{}"})
    with pytest.raises(PretrainedNotFoundError, match="has no model.safetensors; is it a synthsets generator"):
        Generator.from_pretrained("me/config-only", cache_dir=tmp_path)
    with pytest.raises(PretrainedNotFoundError, match="unknown generator 'nope'.*does not exist"):
        synthsets.DiM("nope", inpc=1)


def test_short_name_resolves_on_the_hub_when_published(hub_endpoint, make_generator):
    generator = make_generator(seed=4)
    generator.push_to_hub("synthsets/dim-newset")
    ds = synthsets.DiM("newset", inpc=1, device="cpu")
    assert_same_weights(ds.generator, generator)


def test_downloaded_generator_loads_offline_afterwards(hub_endpoint, make_generator, monkeypatch):
    from huggingface_hub import constants

    generator = make_generator(seed=6)
    generator.push_to_hub("me/toy")
    Generator.from_pretrained("me/toy")  # into the (isolated) default cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub_endpoint.state.requests)
    assert_same_weights(Generator.from_pretrained("me/toy"), generator)
    assert len(hub_endpoint.state.requests) == before  # served from the cache, no request


def test_corrupt_cached_weights_and_force_download(hub_endpoint, make_generator, tmp_path):
    generator = make_generator(seed=7)
    generator.push_to_hub("me/toy")
    cache = tmp_path / "cache"
    Generator.from_pretrained("me/toy", cache_dir=cache)
    blob = next(cache.glob("models--me--toy/snapshots/*/model.safetensors")).resolve()
    blob.write_bytes(blob.read_bytes()[:1000])  # e.g. a disk that filled up
    with pytest.raises(WeightsError, match="force_download=True"):
        Generator.from_pretrained("me/toy", cache_dir=cache)
    assert_same_weights(Generator.from_pretrained("me/toy", cache_dir=cache, force_download=True), generator)
    assert_same_weights(synthsets.DiM("me/toy", inpc=1, cache_dir=cache, force_download=True).generator, generator)


def test_push_extra_files_and_unchanged_push(hub_endpoint, make_generator, tmp_path):
    generator = make_generator(seed=8)
    card = tmp_path / "README.md"
    card.write_text("---\nlibrary_name: synthsets\n---\n# toy\n")
    generator.push_to_hub("me/toy", extra_files=[card])
    repo = hub_endpoint.state.repos["me/toy"]
    assert hub_endpoint.state.files("me/toy")["README.md"] == card.read_bytes()
    commits = len(repo.log)
    url = generator.push_to_hub("me/toy", extra_files=[card])  # nothing changed: no new commit
    assert len(repo.log) == commits
    assert url.endswith(repo.refs["main"])


def test_push_checks_its_arguments_before_any_upload(hub_endpoint, make_generator, tmp_path):
    generator = make_generator(seed=3, dataset="toy")
    for bad in ("bad name!", "me/a--b", 5):
        with pytest.raises(ValueError, match="is not a valid Hub repo id: use 'owner/name'"):
            generator.push_to_hub(bad)
    own = tmp_path / "config.json"
    own.write_text("{}")
    with pytest.raises(ValueError, match=r"would replace the generator's own config.json"):
        generator.push_to_hub("me/toy", extra_files=[own])
    with pytest.raises(ValueError, match=r"extra file .*missing.md does not exist"):
        generator.push_to_hub("me/toy", extra_files=[tmp_path / "missing.md"])
    assert "me/toy" not in hub_endpoint.state.repos  # nothing was created
    notes = tmp_path / "NOTES.md"
    notes.write_text("notes")
    generator.push_to_hub("me/toy", extra_files=str(notes))  # one path on its own is fine
    assert hub_endpoint.state.files("me/toy")["NOTES.md"] == b"notes"


def test_push_under_the_users_own_account_names_the_full_repo_in_the_card(hub_endpoint, make_generator):
    generator = make_generator(seed=3, dataset="toy")
    generator.push_to_hub("toy2")  # the Hub puts it under the token's user
    card = hub_endpoint.state.files("user/toy2")["README.md"].decode()
    assert 'synthsets.DiM("user/toy2", inpc=10)' in card


def test_push_failures_are_upload_errors(hub_endpoint, make_generator, monkeypatch):
    from huggingface_hub import HfApi

    def refuse(self, *args, **kwargs):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(hub_module.UploadError, match=r"uploading to me/toy failed \(ConnectionError: connection "
                                                     r"refused\); check the repo id, your token"):
        make_generator(seed=3).push_to_hub("me/toy")
