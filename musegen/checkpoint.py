"""Checkpoints: a directory with ``config.json``, ``model.safetensors`` and ``tokenizer.json``.

The config travels with the weights, so a checkpoint loads without re-typing its shape; the
weights are safetensors (plain tensors, never pickle: a checkpoint from a stranger cannot run
code); loading is strict. Saving writes a temporary directory beside the target and renames it,
so a crash never leaves half a checkpoint and an existing one is replaced whole.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import musegen
from musegen.config import ModelConfig
from musegen.errors import CheckpointError, MusegenError
from musegen.files import replace_dir
from musegen.model.attention import get_kind
from musegen.model.quant import INT8_FORMAT, load_int8
from musegen.model.transformer import MusicTransformer
from musegen.tokenizer import TOKENIZER_FILE, load_tokenizer, save_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class LoadedCheckpoint:
    """Everything a checkpoint directory holds, ready to use."""

    model: MusicTransformer
    tokenizer: Any
    meta: dict = field(default_factory=dict)
    directory: Path = Path(".")

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def save_pretrained(
    model: MusicTransformer,
    tokenizer: Any,
    directory: str | Path,
    extra: dict | None = None,
    dtype: torch.dtype | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically; ``dtype=torch.float16`` ships a file half the size.

    ``tensors`` replaces the model's state dict in the file (an int8 export, whose
    ``extra`` then says how to read it: see :mod:`musegen.model.quant`)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    meta = {"musegen_version": musegen.__version__, "model": model.config.to_dict()}
    meta.update(extra or {})
    state = {
        k: v.detach().to("cpu", dtype or v.dtype).contiguous()
        for k, v in (model.state_dict() if tensors is None else tensors).items()
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        save_tokenizer(tokenizer, tmp)
        # mkdtemp (and safetensors) make owner-only files; a checkpoint is meant to be shared.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_meta(directory: str | Path) -> dict:
    """The contents of ``config.json`` (model config, musegen version, training metadata)."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a musegen checkpoint?)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path}: has no 'model' config section")
    return meta


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint strictly (every tensor present, no extra, same shapes), in eval mode."""
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        config = ModelConfig.from_dict(meta["model"])
        get_kind(config.attention).validate(config)  # a kind this version knows, fields valid
    except MusegenError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: invalid model config: {exc}") from None
    tok_path = directory / TOKENIZER_FILE
    try:
        tokenizer = load_tokenizer(tok_path)
    except MusegenError as exc:
        raise CheckpointError(f"{tok_path}: cannot be loaded ({exc})") from None
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(
            f"{tok_path}: vocabulary of {len(tokenizer)} ids is larger than the model's "
            f"vocab_size={config.vocab_size}"
        )
    model = MusicTransformer(config)
    if meta.get("quantization"):  # an int8 export: projections load as int8 layers
        if meta["quantization"].get("format") != INT8_FORMAT:
            raise CheckpointError(f"{directory / CONFIG_FILE}: unknown quantization format")
        load_int8(model, directory / WEIGHTS_FILE)
    else:
        load_weights(model, directory / WEIGHTS_FILE)
    model.to(device).eval()
    return LoadedCheckpoint(model, tokenizer, meta, directory)


def load_weights(model: MusicTransformer, path: Path) -> None:
    """Load a ``model.safetensors`` into ``model``, strictly, with errors naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match config.json (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, config.json implies "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True)  # copies cast fp16 files to the model's fp32


__all__ = ["LoadedCheckpoint", "load_pretrained", "load_weights", "read_meta", "save_pretrained"]
