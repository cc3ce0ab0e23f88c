"""Training checkpoints as single safetensors files (no pickles), written atomically.

A checkpoint holds several state dicts (models, optimisers) flattened into one tensor
namespace (``"<part>/<key>"``) plus JSON metadata (epoch, stage, optimiser hyper-parameters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from .hub import WeightsError, atomic_write_bytes


def _flatten(prefix: str, value: Any, tensors: dict[str, Tensor], skeleton: dict) -> Any:
    """Move tensors of a nested dict/list into ``tensors``; return a JSON skeleton."""
    if isinstance(value, Tensor):
        key, n = prefix, 1
        while key in tensors:  # e.g. a dict key "a.b" next to nested "a" -> "b"
            key, n = f"{prefix}#{n}", n + 1
        # a copy: safetensors refuses tensors that share storage
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_json_key(k), _flatten(f"{prefix}.{k}", v, tensors, skeleton)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors, skeleton) for i, v in enumerate(value)]
    return value


def _json_key(key: Any) -> Any:
    return key if isinstance(key, (str, int)) else str(key)


def _unflatten(node: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(node, dict) and "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if isinstance(node, dict) and "__dict__" in node:
        return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
    if isinstance(node, list):
        return [_unflatten(v, tensors) for v in node]
    return node


def save_checkpoint(path: str | Path, parts: dict[str, Any], meta: dict[str, Any]) -> None:
    """Save named state dicts (``parts``) and JSON-able ``meta`` to ``path`` atomically."""
    from safetensors.torch import save

    tensors: dict[str, Tensor] = {}
    skeleton = {name: _flatten(name, state, tensors, {}) for name, state in parts.items()}
    metadata = {"meta": json.dumps(meta), "skeleton": json.dumps(skeleton), "format": "synthsets-checkpoint"}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata=metadata))


class CheckpointError(WeightsError):
    """A training checkpoint that is missing, unreadable or not a synthsets checkpoint."""


def _advice(path: Path) -> str:
    return f"delete it ({path}) to start the run over, or restore a copy of it"


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(parts, meta)`` saved by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` naming the file and what to do when it is missing,
    truncated or corrupt, or not a checkpoint of this format."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt data
        detail = f"{type(err).__name__}: {err}".splitlines()[0]
        raise CheckpointError(
            f"training checkpoint {path} is truncated or corrupt ({detail}): {_advice(path)}"
        ) from None
    if metadata.get("format") != "synthsets-checkpoint":
        raise CheckpointError(f"{path} is not a synthsets training checkpoint: {_advice(path)}")
    try:
        skeleton = json.loads(metadata["skeleton"])
        meta = json.loads(metadata["meta"])
        if not isinstance(skeleton, dict) or not isinstance(meta, dict):
            raise TypeError("its skeleton and meta must be JSON objects")
        parts = {name: _unflatten(node, tensors) for name, node in skeleton.items()}
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"training checkpoint {path} has corrupt metadata ({type(err).__name__}: {err}): {_advice(path)}"
        ) from None
    return parts, meta


def optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """Restore integer keys of an optimiser state dict after a JSON round trip."""
    return {
        "state": {int(k): v for k, v in state["state"].items()},
        "param_groups": state["param_groups"],
    }
