"""Finding, reading and publishing generators: bundled copies, local folders and the Hub.

Resolution order for :func:`resolve` (used by ``Generator.from_pretrained`` and
``synthsets.DiM``):

1. an existing local folder;
2. a short name (``"mnist"``, ``"cifar10"``, ``"dim-mnist"``...) of a generator bundled
   with the package (the ``hub/`` folder of the source tree; no network);
3. a short name's Hub repo (``synthsets/dim-<name>``) or any ``owner/name`` repo id,
   downloaded through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, tokens...).

Strings that can only be paths (``"./x"``, ``"/x"``, ``"~/x"``, ``"x/"``, ``"a/b/c"``) never
go to the Hub. Errors suggest a close bundled name for a typo (``"mnsit"``).

Weights are only ever read from safetensors files, with strict key and shape checks.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

HUB_ORGANISATION = "synthsets"
SHORT_NAME_PREFIX = "dim-"
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


class WeightsError(RuntimeError):
    """Weights that are missing, corrupt, or do not match the model they are loaded into."""


class PretrainedNotFoundError(ValueError):
    """A name, folder or repo id that does not resolve to a generator."""


# -- small file helpers ---------------------------------------------------------------------
def file_in_the_way(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that exists and is not a folder (so
    ``folder`` cannot be created or used), else ``None``."""
    return next((path for path in (folder, *folder.parents) if path.exists() and not path.is_dir()), None)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; saved models are ordinary files
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_write_bytes` left in ``folder`` when its
    process was killed mid-write (``.<name>.<random>.tmp``); returns them. Only for a folder
    no other process is writing into."""
    removed = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PretrainedNotFoundError(f"{path} does not exist") from None
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path} is not valid JSON ({err}); re-download or re-save it") from None
    except UnicodeDecodeError as err:
        raise WeightsError(f"{path} is not UTF-8 text, as JSON must be ({err}); re-download or re-save it") from None


def _canonical_safetensors(data: bytes) -> bytes:
    """Rewrite a safetensors header with its metadata keys sorted.

    safetensors writes ``__metadata__`` from a hash map whose order changes from call to
    call, so the same weights would give different bytes (and hashes, and Hub commits).
    Reordering keeps the header length, hence the data offsets, unchanged.
    """
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__", None)
    ordered: dict[str, Any] = {} if metadata is None else {"__metadata__": dict(sorted(metadata.items()))}
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > length:  # never happens for the files we write; keep the original then
        return data
    return data[:8] + text + b" " * (length - len(text)) + data[8 + length :]


def save_weights(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically; the same state always gives the same bytes."""
    from safetensors.torch import save

    atomic_write_bytes(path, _canonical_safetensors(save(state, metadata=metadata)))


_LFS_POINTER = b"version https://git-lfs"


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning any failure into a :class:`WeightsError` that names the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    with open(path, "rb") as handle:
        if handle.read(len(_LFS_POINTER)) == _LFS_POINTER:
            raise WeightsError(
                f"{path} is a Git LFS pointer, not the weights: the repository was cloned without its LFS files; "
                "run `git lfs pull` in it (or download the files with huggingface_hub)"
            )
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt data
        raise WeightsError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
            "it may be truncated or corrupt: download it again (force_download=True in Python, or delete it "
            "from the Hub cache) or re-save it"
        ) from None


def error_detail(err: BaseException, limit: int = 300) -> str:
    """``"<Type>: <message>"`` on one line, at most ``limit`` characters (for messages
    that name the cause of a failure)."""
    detail = " ".join(f"{type(err).__name__}: {err}".split())
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


def _first(items: list[str], what: str = "", sep: str = ", ", shown: int = 3) -> str:
    """The first ``shown`` of ``items`` joined, then a count of the rest (``"and 46 more <what>"``)."""
    more = f"{sep}and {len(items) - shown} more{what}" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


def load_weights_strict(
    model: nn.Module,
    path: str | Path,
    hints: Callable[[dict[str, torch.Tensor]], list[str]] | None = None,
) -> None:
    """Load safetensors weights into ``model``; every key must exist with the right shape.

    On a mismatch the error shows the first few problems and a count of the rest;
    ``hints(state)`` may add likely causes (e.g. a config value the weights contradict).
    """
    state = load_safetensors(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_first(unexpected)}")
    mismatched = []
    for key in sorted(set(state) & set(expected)):
        if state[key].shape != expected[key].shape:
            mismatched.append(
                f"tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
        elif state[key].is_floating_point() != expected[key].is_floating_point():
            mismatched.append(f"tensor {key!r} has dtype {state[key].dtype}, expected {expected[key].dtype}")
    if mismatched:
        problems.append(_first(mismatched, " mismatched tensors", sep="; "))
    if problems:
        causes = hints(state) if hints is not None else []
        raise WeightsError(
            f"weights in {path} do not match the model built from its config.json: "
            + "; ".join(causes + problems)
            + ". Check that config.json and model.safetensors come from the same generator."
        )
    with torch.no_grad():
        for key, tensor in state.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise WeightsError(f"tensor {key!r} in {path} contains NaN or infinite values")
            if key.endswith("running_var") and (tensor < 0).any():
                raise WeightsError(f"tensor {key!r} in {path} holds negative variances; the file is corrupt")
            expected[key].copy_(tensor.to(expected[key].dtype))


# -- bundled generators ---------------------------------------------------------------------
def bundled_dir() -> Path | None:
    """Folder holding the generators bundled with the package (installed or source tree)."""
    try:
        from importlib.resources import files

        root = Path(str(files("synthsets._bundled")))
        if root.is_dir():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    source_tree = Path(__file__).resolve().parent.parent / "hub"
    return source_tree if source_tree.is_dir() else None


def _bundled_models() -> dict[str, Path]:
    root = bundled_dir()
    if root is None:
        return {}
    return {
        p.name: p
        for p in sorted(root.iterdir())
        if p.is_dir() and (p / "config.json").is_file() and (p / "model.safetensors").is_file()
    }


def list_pretrained() -> list[str]:
    """Short names of the generators bundled with this installation (e.g. ``["cifar10", "mnist"]``)."""
    return sorted(_short_name(name) for name in _bundled_models())


def _short_name(folder_name: str) -> str:
    return folder_name[len(SHORT_NAME_PREFIX):] if folder_name.startswith(SHORT_NAME_PREFIX) else folder_name


def _normalise_name(name: str) -> str:
    return _short_name(name.strip().lower().replace("_", "-")).replace("-", "")


def _find_bundled(name: str) -> Path | None:
    wanted = _normalise_name(name)
    for folder_name, path in _bundled_models().items():
        if _normalise_name(folder_name) == wanted:
            return path
    return None


def _is_bare_name(name_or_path: str | Path) -> bool:
    """True for a plain name such as ``"mnist"`` (no path separators, not a Path object)."""
    if isinstance(name_or_path, Path):
        return False
    text = name_or_path.strip()
    return not any(sep in text for sep in ("/", "\\", os.sep)) and not text.startswith((".", "~"))


def hub_repo_id(name: str) -> str:
    """The Hub repo id a short name maps to (``"mnist"`` -> ``"synthsets/dim-mnist"``)."""
    return f"{HUB_ORGANISATION}/{SHORT_NAME_PREFIX}{_short_name(name.strip().lower())}"


# -- resolution -----------------------------------------------------------------------------
class _HubRepoUnavailable(PretrainedNotFoundError):
    """The Hub repo itself could not be used: absent, private, invalid id, or not cached offline."""


#: weights in pickle formats: never loaded (unpickling can run code), but named in errors
_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".ckpt"})


def _is_path_like(text: str) -> bool:
    """True for a string that can only mean a local path, never a short name or Hub repo id."""
    return (
        text.startswith((".", "/", "~"))
        or text.endswith(("/", "\\"))
        or "\\" in text
        or text.count("/") > 1
        or os.path.isabs(text)
    )


def _is_valid_repo_id(repo_id: str) -> bool:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError:  # HFValidationError
        return False
    return True


def _did_you_mean(text: str) -> str:
    """``" (did you mean 'mnist'?)"`` when ``text`` is close to a bundled name, else ``""``."""
    import difflib

    name = text.strip()
    owner, _, rest = name.rpartition("/")
    if owner and owner.lower() != HUB_ORGANISATION:
        return ""
    wanted = _normalise_name(rest)
    names = {_normalise_name(n): n for n in list_pretrained()}
    close = difflib.get_close_matches(wanted, [n for n in names if n != wanted], n=1)
    return f" (did you mean {names[close[0]]!r}?)" if close else ""


def _may_be_a_typo(text: str, repo_id: str, cache_dir, revision: str | None, local_files_only: bool) -> bool:
    """Whether a name close to a bundled one is worth a warning before its Hub lookup: not
    offline, not a dataset name of its own (``cifar100``), not downloaded already."""
    from huggingface_hub import try_to_load_from_cache

    from .data import TORCHVISION_DATASETS, canonical_name

    if local_files_only or hub_offline() or canonical_name(text.rpartition("/")[2]) in TORCHVISION_DATASETS:
        return False
    try:
        cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    except ValueError:  # an id the cache cannot hold
        return True
    return not isinstance(cached, str)


def _caller_stacklevel() -> int:
    """``warnings.warn``'s stacklevel, from the calling function, of the first frame
    outside synthsets (so a warning points at the user's line)."""
    package = __name__.partition(".")[0]
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == package:
        level, frame = level + 1, frame.f_back
    return level


def resolve(
    name_or_path: str | Path,
    filenames: Iterable[str] = ("config.json", "model.safetensors"),
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """Return a local folder holding ``filenames`` for a folder, short name or Hub repo id."""
    filenames = tuple(filenames)
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        shown = repr(name_or_path) if isinstance(name_or_path, (str, Path)) else f"a {type(name_or_path).__name__}"
        raise TypeError(f"expected a generator name, folder or Hub repo id (str or Path), got {shown}")
    if revision is not None and not isinstance(revision, str):
        raise TypeError(f"revision must be a branch, tag or commit hash (a str), got {revision!r}")
    path = Path(name_or_path).expanduser()
    text = str(name_or_path).strip()
    if path.is_dir():
        missing = [f for f in filenames if not (path / f).is_file()]
        if not missing:
            return path
        # A bare short name such as "mnist" may also be a data folder in the working
        # directory (torchvision roots are often named so): prefer the bundled generator.
        bundled = _find_bundled(text) if _is_bare_name(name_or_path) and revision is None else None
        if bundled is not None:
            return bundled
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.is_file())[:3]
        refused = (f"; it holds {', '.join(pickles)}, which synthsets does not read (pickle files can run code): "
                   "load it with torch.load yourself, copy it into a Generator and save_pretrained that"
                   if pickles and "model.safetensors" in missing else "")
        raise PretrainedNotFoundError(
            f"folder {path} is not a synthsets generator: it lacks {', '.join(missing)} "
            f"(save one with Generator.save_pretrained or python -m synthsets.distill){refused}"
        )
    if path.is_file():
        raise PretrainedNotFoundError(
            f"{path} is a file; pass the folder that holds {' and '.join(filenames)}"
        )
    skipped_bundled = ""
    if revision is None and not force_download:
        bundled = _find_bundled(text)
        if bundled is not None:
            return bundled
    elif _find_bundled(text) is not None:
        options = " and ".join(name for name, on in (("revision", revision is not None),
                                                     ("force_download", force_download)) if on)
        skipped_bundled = (f"; {text!r} is also bundled, but {options} asks for the Hub copy: "
                           f"leave {options} out to use the bundled one")
    bare = _is_bare_name(name_or_path)
    repo_id = hub_repo_id(text) if bare else text
    url = re.match(r"https?://(?:www\.)?(?:huggingface\.co|hf\.co)/([^/\s]+/[^/\s]+)", text)
    if url is not None:
        raise PretrainedNotFoundError(f"{text} is a web address; pass the Hub repo id instead: {url.group(1)!r}")
    if isinstance(name_or_path, Path) or _is_path_like(text) or (not bare and not _is_valid_repo_id(repo_id)):
        shown = f"{text} ({path})" if text.startswith("~") else text
        invalid = ("" if isinstance(name_or_path, Path) or _is_path_like(text) else
                   f", and {text!r} is not a valid Hub repo id either (owner/name, with letters, digits, "
                   "'-', '_' and '.', no '--' or '..', at most 96 characters)")
        raise PretrainedNotFoundError(f"no such folder: {shown}{invalid}")
    suggestion = _did_you_mean(text)
    if suggestion and _may_be_a_typo(text, repo_id, cache_dir, revision, local_files_only):
        # say it now: without network the lookup below retries for a while before failing
        warnings.warn(f"{text!r} is not a bundled generator{suggestion}; looking for the Hub repo {repo_id!r}",
                      stacklevel=_caller_stacklevel())
    try:
        if not _is_valid_repo_id(repo_id):
            raise _HubRepoUnavailable(f"{repo_id!r} is not a valid Hub repo id")
        return _download(repo_id, filenames, revision, cache_dir, local_files_only, token, force_download)
    except PretrainedNotFoundError as err:
        if skipped_bundled:
            raise PretrainedNotFoundError(
                f"the Hub repo {repo_id!r} of generator {text!r} could not be used ({err}){skipped_bundled}"
            ) from None
        if bare:
            raise PretrainedNotFoundError(
                f"unknown generator {text!r}{suggestion}: not a folder, not bundled "
                f"(bundled: {list_pretrained() or 'none'}), and its Hub repo {repo_id!r} could not be used ({err})"
            ) from None
        if isinstance(err, _HubRepoUnavailable):  # "runs/mnist" may have meant a folder
            raise PretrainedNotFoundError(
                f"no local folder {text!r} and no Hub repo {repo_id!r} (reachable or cached){suggestion}: {err}"
            ) from None
        raise


def _unreachable_message(filename: str, repo_id: str, local_files_only: bool, cause: BaseException | None) -> str:
    """Why ``filename`` could not be had: only the reasons that apply (flags set, or the network)."""
    flags, fixes = [], []
    if local_files_only:
        flags.append("local_files_only=True")
        fixes.append("pass local_files_only=False")
    if hub_offline():
        flags.append("offline mode HF_HUB_OFFLINE=1")
        fixes.append("unset HF_HUB_OFFLINE")
    head = f"{filename} of Hub repo {repo_id!r} is not in the local cache"
    if flags:
        return (
            f"{head} and downloads are off ({', '.join(flags)}): "
            f"{' and '.join(fixes)} to download it, or pass a local folder"
        )
    detail = f" ({type(cause).__name__}: {str(cause)[:200]})" if cause is not None else ""
    return (
        f"{head} and the Hub could not be reached{detail}: check the network connection "
        "(and HF_ENDPOINT, proxies), or pass a local folder"
    )


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_host_unresolvable() -> str | None:
    """Why the Hub's host name does not resolve (no network, no DNS), or None when it does
    or cannot be told. One quick lookup: on such a failure huggingface_hub retries for
    about 25 s before it gives up or falls back to its cache. Skipped behind a proxy,
    which resolves names itself."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    try:
        host = urlparse(str(constants.ENDPOINT)).hostname
        if host:
            socket.getaddrinfo(host, None)
    except socket.gaierror as err:
        return f"cannot resolve {host}: {err.strerror or err}"
    except (OSError, UnicodeError, ValueError):  # anything else: let huggingface_hub try
        return None
    return None


def _download(
    repo_id: str,
    filenames: tuple[str, ...],
    revision: str | None,
    cache_dir: str | Path | None,
    local_files_only: bool,
    token: str | bool | None,
    force_download: bool,
) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    # no network at all: read the cache at once (as huggingface_hub would after its retries)
    no_network = None if local_files_only or hub_offline() else _hub_host_unresolvable()
    if no_network and force_download:  # a fresh copy needs the network
        raise _HubRepoUnavailable(_unreachable_message(filenames[0], repo_id, False, ConnectionError(no_network)))
    folder: Path | None = None
    for filename in filenames:
        # After the first file, pin the commit it came from so that every file of the
        # generator comes from the same commit even if the branch moves meanwhile.
        if folder is not None and _COMMIT_RE.fullmatch(folder.name):
            revision = folder.name
        try:
            local = hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only or no_network is not None,
                token=token,
                force_download=force_download,
            )
        except hf_errors.RepositoryNotFoundError:
            raise _HubRepoUnavailable(
                f"Hub repo {repo_id!r} does not exist or is private (pass token= or log in with `hf auth login`)"
            ) from None
        except hf_errors.RevisionNotFoundError:
            raise PretrainedNotFoundError(f"Hub repo {repo_id!r} has no revision {revision!r}") from None
        except hf_errors.LocalEntryNotFoundError as err:
            # (a subclass of EntryNotFoundError: it must be caught first)
            cause = ConnectionError(no_network) if no_network else err.__cause__
            message = _unreachable_message(filename, repo_id, local_files_only, cause)
            if folder is None:  # nothing of the repo is at hand: it may not exist at all
                raise _HubRepoUnavailable(message) from None
            raise PretrainedNotFoundError(message) from None
        except hf_errors.EntryNotFoundError:
            raise PretrainedNotFoundError(
                f"Hub repo {repo_id!r} has no {filename}; is it a synthsets generator?"
            ) from None
        except (OSError, ValueError) as err:
            raise PretrainedNotFoundError(f"could not download {filename} from {repo_id!r}: {err}") from None
        folder = Path(local).parent
    assert folder is not None
    return folder


def hub_offline() -> bool:
    """Whether ``huggingface_hub`` is in offline mode (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_unreachable() -> tuple[str, str] | None:
    """``(why, fix)`` when an upload cannot work: huggingface_hub is offline
    (``HF_HUB_OFFLINE=1``) or the Hub's host name does not resolve (no network); else None."""
    if hub_offline():
        return "huggingface_hub is offline (HF_HUB_OFFLINE=1)", "unset it"
    why = _hub_host_unresolvable()
    if why is None:
        return None
    return f"the Hub cannot be reached ({why})", "check the network connection"


class UploadError(RuntimeError):
    """An upload to the Hub failed, or cannot start (offline); the local files are intact."""


def upload_folder_or_explain(folder: str | Path, repo_id: str, commit_message: str) -> str:
    """:func:`upload_folder`, with any failure turned into an :class:`UploadError` that says
    the folder is complete and how to upload it later."""
    try:
        return upload_folder(folder, repo_id, commit_message=commit_message)
    except Exception as err:  # network, auth, permissions: the work is safe on disk either way
        cause = err.__cause__ if isinstance(err, UploadError) and err.__cause__ is not None else err
        raise UploadError(
            f"the generator is complete in {folder}, but uploading it to {repo_id} failed ({error_detail(cause)}); "
            f"upload it later with: hf upload {repo_id} {folder} . --exclude 'checkpoints/*'"
        ) from err


def check_repo_id(repo_id: Any) -> None:
    """A ``ValueError`` naming the problem unless ``repo_id`` is a valid Hub repo id."""
    if not isinstance(repo_id, str) or not _is_valid_repo_id(repo_id):
        raise ValueError(
            f"{repo_id!r} is not a valid Hub repo id: use 'owner/name' (or 'name' under your own account), with "
            "letters, digits, '-', '_' and '.', no '--' or '..', at most 96 characters"
        )


def upload_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload DiM generator",
    before_upload: Callable[[str], None] | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the commit URL.

    ``before_upload(full_repo_id)`` runs once the repo exists (a bare ``"name"`` is
    ``"user/name"`` by then), e.g. to write a card that names it. Raises ``ValueError`` for
    an invalid ``repo_id``, and :class:`UploadError` for every failure of the upload: at
    once when offline or without a network, else with the Hub's answer (authentication,
    permissions, HTTP errors)."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    later = (f"save the files locally (save_pretrained(folder, repo_id={repo_id!r}) also writes the model card) "
             f"and upload them later with: hf upload {repo_id} FOLDER .")
    unreachable = hub_unreachable()
    if unreachable is not None:
        why, fix = unreachable
        raise UploadError(f"cannot upload to {repo_id}: {why}; {fix}, or {later}")

    api = HfApi(token=token)
    try:
        full_repo_id = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True).repo_id
        if before_upload is not None:
            before_upload(full_repo_id)
        info = api.upload_folder(
            repo_id=full_repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=["checkpoints/*", "*.tmp", "checkpoint*.pt", "*.safetensors.tmp"],
        )
    except Exception as err:  # connection, authentication, permission, HTTP errors from huggingface_hub
        raise UploadError(
            f"uploading to {repo_id} failed ({error_detail(err)}); check the repo id, your token (token=, or "
            f"`hf auth login`) and the network; or {later}"
        ) from err
    return str(getattr(info, "commit_url", info))
