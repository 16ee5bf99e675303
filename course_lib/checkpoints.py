"""Saving and loading models safely (used from notebook 03 on).

- Saves are atomic: written to a temporary file, flushed, then renamed over the target, so an
  interrupted save never leaves half a checkpoint.
- Every save records the file's sha256 in `manifest.json` beside it; `load_checkpoint`
  verifies it, so a damaged or swapped file is refused with a clear `ValueError`.
- Loads use `torch.load(weights_only=True)`: a checkpoint cannot run code on your machine.
- A checkpoint stores its `ModelConfig`; loading into a model of another shape is a clear
  `ValueError`, not a size-mismatch traceback from deep inside torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import fields
from pathlib import Path

import torch

from course_lib.model import ModelConfig, Transformer, device_and_dtype

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a checkpoint folder: {file name: {"sha256": ..., ...}} ({} if none)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); restore it from git") from err


def update_manifest(checkpoint: str | Path, **metadata) -> dict:
    """Record `checkpoint`'s sha256 (and `metadata`) in its folder's manifest; return the entry."""
    checkpoint = Path(checkpoint)
    manifest = read_manifest(checkpoint.parent)
    entry = {**manifest.get(checkpoint.name, {}), **metadata, "sha256": sha256_of(checkpoint)}
    manifest[checkpoint.name] = entry
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _atomic_write(checkpoint.parent / MANIFEST_NAME, lambda f: f.write(text.encode()))
    return entry


def save_checkpoint(
    path: str | Path,
    model: Transformer,
    *,
    train_state: dict | None = None,
    metadata: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save `model` (its config and weights) atomically and record it in the manifest.

    `train_state` (optimizer state, step, RNG states...) makes the file resumable; `dtype`
    (e.g. torch.bfloat16) stores the weights compactly for shipping. `metadata` (JSON-able)
    goes into the manifest entry.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {
        k: (
            v.detach().to("cpu", dtype)
            if dtype is not None and v.is_floating_point()
            else v.detach().cpu()
        )
        for k, v in model.state_dict().items()
    }
    payload = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "model": state,
        "train_state": train_state,
    }
    _atomic_write(path, lambda f: torch.save(payload, f))
    update_manifest(path, **(metadata or {}))
    return path


def read_checkpoint(path: str | Path, *, verify: bool = True) -> dict:
    """The raw contents of a checkpoint file, verified against its manifest.

    Raises FileNotFoundError if it is missing and ValueError if it is damaged, was swapped for
    another file, or is not a course checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train one (python -m course_lib train --preset NAME) "
            "or check the path"
        )
    if verify:
        entry = read_manifest(path.parent).get(path.name)
        if entry is None:
            warnings.warn(
                f"{path.name} is not listed in {path.parent / MANIFEST_NAME}: its integrity "
                "cannot be verified",
                stacklevel=3,
            )
        elif sha256_of(path) != entry["sha256"]:
            raise ValueError(
                f"{path} does not match the sha256 in its manifest: the file is damaged or was "
                "replaced. Restore it (git checkout, or download again) or retrain it."
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt zip or pickle
        raise ValueError(
            f"{path} could not be read as a checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise ValueError(f"{path} is not a course checkpoint (no config and model inside)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {payload.get('format_version')}, this library reads "
            f"format {FORMAT_VERSION}"
        )
    return payload


# ModelConfig fields that decide how a model attends, not the shapes of its weights
ATTENTION_FIELDS = ("attention", "block_len", "next_token_shift")  # how the same weights are read


def load_weights(
    model: Transformer,
    payload: dict,
    *,
    source: str = "checkpoint",
    other_attention: bool = False,
) -> None:
    """Copy a checkpoint's weights into `model`, refusing a checkpoint of another shape.

    `other_attention=True` accepts a checkpoint that attends differently (e.g. an AR model's
    weights as the start of a block-diffusion model, notebook 12's AR-initialised runs):
    the weights have the same shapes, only the mask differs.
    """
    model = getattr(model, "module", model)
    # a field added to ModelConfig after a checkpoint was saved had its default value then
    saved = {f.name: f.default for f in fields(ModelConfig)} | payload["config"]
    current = model.config.to_dict()
    different = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    different.pop("dropout", None)  # dropout is a training choice, not a shape
    for name in ATTENTION_FIELDS if other_attention else ():
        different.pop(name, None)
    if different:
        details = ", ".join(
            f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in different.items()
        )
        raise ValueError(f"{source} does not match the model's config ({details})")
    device, dtype = device_and_dtype(model)
    state = {
        k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
        for k, v in payload["model"].items()
    }
    model.load_state_dict(state)


def load_checkpoint(path: str | Path, *, device: torch.device | str = "cpu") -> Transformer:
    """Load a verified checkpoint as a `Transformer` in eval mode, float32, on `device`."""
    payload = read_checkpoint(path)
    try:
        config = ModelConfig(**payload["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} holds an invalid model config ({err})") from err
    model = Transformer(config)
    load_weights(model, payload, source=str(path))
    return model.to(device).eval()


def export_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    metadata: dict | None = None,
) -> Path:
    """A compact, weights-only copy of the training checkpoint `src` at `dst`, for shipping.

    The optimizer state (twice the model's size) is dropped and the weights are stored in
    `dtype` (16-bit halves the file); loading converts them back to float32.
    """
    payload = read_checkpoint(src)
    model = Transformer(ModelConfig(**payload["config"]))
    load_weights(model, payload, source=str(src))
    return save_checkpoint(dst, model, dtype=dtype, metadata=metadata)
