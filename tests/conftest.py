"""Shared fixtures of the synthsets test suite.

* ``hf_isolation`` (autouse): every test runs with a private, empty Hugging Face home and
  hub cache, no token, and the Hub client in offline mode, so no test reads the user's
  cache or credentials or reaches the network. Request it by name to get its paths.
* ``hub_endpoint``: a local in-memory Hub (``tests/hub_server.py``); while it is active
  the real ``huggingface_hub`` client talks to it (online mode, ``HF_ENDPOINT`` set).
* ``no_dns``: online mode with no network at all (every host-name lookup fails), the
  Hub client's downloads recorded.
* ``make_generator`` / ``tiny_generator`` / ``saved_generator``: small generators
  (width 16, 10 classes) whose outputs are diverse in eval mode.

The command lines that tests call in-process must not retune the test process's malloc
(``tune_cpu_allocator``): ``SYNTHSETS_TUNE_MALLOC=0`` is set for the whole suite.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import hub_server`
os.environ["SYNTHSETS_TUNE_MALLOC"] = "0"

import synthsets  # noqa: E402
import synthsets.hub  # noqa: E402
from hub_server import HubServer  # noqa: E402

_HOST_CHECK = synthsets.hub._hub_host_unresolvable  # hf_isolation turns it off; no_dns puts it back

#: the two shapes of the paper: 28x28 grey (MNIST-like) and 32x32 colour (CIFAR-like)
GENERATOR_VARIANTS = {
    "28px-1ch": {"image_size": 28, "channels": 1},
    "32px-3ch": {"image_size": 32, "channels": 3},
}


def build_generator(
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    width: int = 16,
    seed: int = 0,
    **config,
) -> synthsets.Generator:
    """A small generator with deterministic weights, in eval mode.

    A freshly initialised generator in eval mode maps every input to nearly the same
    image (BatchNorm running statistics are 0/1); the running statistics and affine
    parameters are randomised here, as after training, so that images are diverse.
    Does not disturb torch's global RNG.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = synthsets.Generator(
            image_size=image_size, channels=channels, num_classes=num_classes, width=width, **config
        )
        with torch.no_grad():
            for module in generator.modules():
                if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.05, 0.2)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.1, 0.1)
                    module.num_batches_tracked.fill_(1000 + seed)
    return generator.eval()


@pytest.fixture
def no_hub_calls(monkeypatch):
    """Fail the test if anything asks huggingface_hub to download."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected Hub download: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.fixture
def make_generator():
    """Factory: ``make_generator(image_size=28, channels=1, seed=3, mean=[...], ...)``."""
    return build_generator


@pytest.fixture(params=list(GENERATOR_VARIANTS))
def tiny_generator(request) -> synthsets.Generator:
    """A width-16, 10-class generator; parametrised over 28px/1ch and 32px/3ch."""
    return build_generator(**GENERATOR_VARIANTS[request.param])


@pytest.fixture
def saved_generator(tiny_generator, tmp_path) -> Path:
    """A folder written by ``tiny_generator.save_pretrained`` (``config.json`` + ``model.safetensors``)."""
    folder = tmp_path / "saved-generator"
    tiny_generator.save_pretrained(folder)
    return folder


@pytest.fixture
def single_thread():
    """Run a test with one intra-op torch thread (restored afterwards).

    The tiny models of the unit tests gain nothing from threads, and on a small, busy
    machine OpenMP workers spinning for a core make such tests several times slower.
    Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- Hugging Face isolation ---------------------------------------------------------------
_TOKEN_VARIABLES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_RESOURCE",
    "HF_OIDC_ID_TOKEN",
    "HF_ENDPOINT",
    "HUGGINGFACE_HUB_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_ENABLE_HF_TRANSFER",
)


@pytest.fixture(autouse=True)
def hf_isolation(monkeypatch, tmp_path_factory):
    """Private HF home/cache, no token, offline. Yields ``SimpleNamespace(home, hub_cache)``."""
    home = tmp_path_factory.mktemp("hf_home")
    hub_cache = home / "hub"
    for name in _TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = {
        "HF_HOME": home,
        "HF_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "SYNTHSETS_CACHE": home / "synthsets-data",  # decoded image folders: never the user's cache
    }
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        constants = None
    if constants is not None:
        # huggingface_hub reads its environment once, at import: patch the module values too
        patched = {
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(hub_cache),
            "HUGGINGFACE_HUB_CACHE": str(hub_cache),
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "HF_HUB_OFFLINE": True,
            "HF_HUB_DISABLE_TELEMETRY": True,
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        }
        for name, value in patched.items():
            if hasattr(constants, name):
                monkeypatch.setattr(constants, name, value)
        # module-level copies made with `from ..constants import X`
        for module_name, name, value in (
            ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", str(hub_cache)),
            ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", str(home / "assets")),
        ):
            module = sys.modules.get(module_name)
            if module is not None and hasattr(module, name):
                monkeypatch.setattr(module, name, value)
    # no real host-name lookup before a download (synthsets.hub's no-network check): tests
    # that want it put it back and make the lookups fail (no_dns)
    monkeypatch.setattr(synthsets.hub, "_hub_host_unresolvable", lambda: None)
    yield SimpleNamespace(home=home, hub_cache=hub_cache)


@pytest.fixture
def no_dns(monkeypatch, hf_isolation):
    """Online mode, no proxy, and every host-name lookup fails (as on a machine without a
    network). Records the lookups and each download's ``local_files_only``."""
    import socket

    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in synthsets.hub._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    record = SimpleNamespace(lookups=[], downloads=[])

    def fail(host, *args, **kwargs):
        record.lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    real_download = huggingface_hub.hf_hub_download

    def download(*args, **kwargs):
        record.downloads.append(kwargs.get("local_files_only"))
        return real_download(*args, **kwargs)

    monkeypatch.setattr(synthsets.hub, "_hub_host_unresolvable", _HOST_CHECK)
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    return record


@pytest.fixture
def hub_endpoint(monkeypatch, hf_isolation):
    """A running local Hub; the ``huggingface_hub`` client is pointed at it and put online.

    Yields the :class:`hub_server.HubServer` (``.url``; ``.state`` holds the repos, the
    request log and hooks).
    """
    from huggingface_hub import constants

    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        yield server
