"""LoRA adapters: fine-tune a trained model by learning a low-rank change to its projections.

:func:`apply_lora` freezes a model and wraps its attention (``qkv``, ``proj``) and MLP (``fc``,
``out``) projections in :class:`LoRALinear`: ``y = W x + b + (alpha / r) · B A x`` with ``A``
``[r, in]`` and ``B`` ``[out, r]``; ``B`` starts at zero, so the wrapped model starts exactly
where the base is. Only ``A`` and ``B`` train.

An adapter is saved on its own, ``adapter.safetensors`` (the ``A``/``B`` pairs) beside
``adapter.json`` (rank, alpha, targets and the base's fingerprint: its model config and the
hash of its vocabulary), a few hundred KB for the shipped model. Applying it to a base merges
``W + (alpha / r) · B A`` into the weights (no cost at inference), after checking that the base
is the one it was trained on. A LoRA run's checkpoints hold both the merged model (a plain
checkpoint) and the adapter.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from musegen.checkpoint import WEIGHTS_FILE, load_weights, save_pretrained
from musegen.config import ModelConfig
from musegen.errors import CheckpointError, MusegenError
from musegen.files import write_json_atomic
from musegen.model.transformer import MusicTransformer
from musegen.tokenizer import load_tokenizer

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
ADAPTER_FORMAT = "musegen-lora"
# Module name suffixes of the projections LoRA adapts (attention, then MLP).
TARGETS = ("attn.qkv", "attn.proj", "fc", "out")
# Config fields that do not change what the weights mean (ignored when matching a base).
NOT_SHAPE = ("dropout", "attention_backend")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update ``(alpha / r) · B A``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base, self.rank, self.alpha = base, rank, float(alpha)
        self.scale = self.alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises

    def forward(self, x: Tensor) -> Tensor:
        delta = F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return self.base.forward(x) + delta * self.scale

    def delta(self) -> Tensor:
        """The change to the base weight, ``[out, in]``."""
        return (self.lora_b @ self.lora_a) * self.scale


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _targets(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and name.startswith("blocks.")
        and name.endswith(tuple(f".{t}" for t in targets))
    }


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(
    model: nn.Module, rank: int, alpha: float | None = None, targets: tuple[str, ...] = TARGETS
) -> str:
    """Freeze ``model`` and wrap its target projections; returns a one-line summary."""
    if rank <= 0:
        raise MusegenError(f"--lora-rank must be positive, got {rank}")
    if lora_layers(model):
        raise MusegenError("this model already has LoRA layers")
    alpha = float(alpha if alpha is not None else rank)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = _targets(model, targets)
    if not layers:
        raise MusegenError(f"no layer of this model matches the LoRA targets {targets}")
    for name, layer in layers.items():
        _set_module(model, name, LoRALinear(layer, rank, alpha))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (
        f"LoRA rank {rank}, alpha {alpha:g} on {len(layers)} projections: {trainable:,} "
        f"trainable parameters ({100 * trainable / total:.2f}% of {total:,})"
    )


def adapter_tensors(model: nn.Module) -> dict[str, Tensor]:
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_a"] = layer.lora_a.detach().float().cpu().contiguous()
        out[f"{name}.lora_b"] = layer.lora_b.detach().float().cpu().contiguous()
    return out


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The plain model's state dict, each LoRA layer's update merged into its base weight."""
    layers = lora_layers(model)
    state = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in layers and leaf in ("lora_a", "lora_b"):
            continue
        if owner.endswith(".base") and owner[: -len(".base")] in layers:
            name = owner[: -len(".base")]
            if leaf == "weight":
                value = value + layers[name].delta().detach().to(value.dtype)
            key = f"{name}.{leaf}"
        state[key] = value
    return state


def merged_model(model: MusicTransformer) -> MusicTransformer:
    """A plain :class:`MusicTransformer` with the adapter merged (``model`` is unchanged)."""
    if not lora_layers(model):
        return model
    plain = MusicTransformer(model.config).to(model.tok_emb.weight.device)
    plain.load_state_dict(merged_state_dict(model), strict=True)
    return plain.eval()


# --- the base's fingerprint ---------------------------------------------------------------------
def vocabulary_hash(tokenizer: Any) -> str:
    """SHA-256 of the vocabulary (token → id): equal exactly when the ids mean the same."""
    text = json.dumps(dict(sorted(tokenizer.vocab.items())), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def base_fingerprint(config: ModelConfig, tokenizer: Any) -> dict[str, Any]:
    shape = {k: v for k, v in config.to_dict().items() if k not in NOT_SHAPE}
    return {"model": shape, "vocabulary_sha256": vocabulary_hash(tokenizer)}


def check_same_vocabulary(tokenizer: Any, base: str | Path | None) -> None:
    """LoRA leaves the embedding frozen: the corpus must use the base's tokenizer exactly."""
    theirs = load_tokenizer(Path(base)) if base else None
    if theirs is not None and vocabulary_hash(theirs) != vocabulary_hash(tokenizer):
        raise MusegenError(
            f"LoRA keeps {base}'s embedding, but this corpus has another vocabulary "
            f"({len(tokenizer)} ids, the checkpoint {len(theirs)}): prepare it with "
            f"`musegen prepare SRC OUT --tokenizer-from {base}`, or fine-tune all weights"
        )


# --- saving and applying adapters ---------------------------------------------------------------
def save_adapter(
    model: MusicTransformer,
    tokenizer: Any,
    directory: str | Path,
    base: str | Path | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``adapter.safetensors`` + ``adapter.json`` into ``directory`` (made if needed)."""
    layers = lora_layers(model)
    if not layers:
        raise MusegenError("this model has no LoRA layers to save")
    first = next(iter(layers.values()))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    targets = sorted({t for t in TARGETS for name in layers if name.endswith(f".{t}")})
    meta = {
        "format": ADAPTER_FORMAT,
        "version": 1,
        "rank": first.rank,
        "alpha": first.alpha,
        "targets": targets,
        "base": base_fingerprint(model.config, tokenizer),
        "base_path": str(base) if base else None,
        **(extra or {}),
    }
    tmp = directory / f".{ADAPTER_WEIGHTS}.tmp"
    save_file(adapter_tensors(model), str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)
    tmp.replace(directory / ADAPTER_WEIGHTS)
    write_json_atomic(directory / ADAPTER_CONFIG, meta)
    return directory


def read_adapter(directory: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(``adapter.json``, tensors) of an adapter directory, with one-line errors."""
    directory = Path(directory)
    meta_path, weights = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not meta_path.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{directory}: not a LoRA adapter (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}; "
            "`musegen finetune --lora-rank R` writes them)"
        )
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(weights))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{directory}: unreadable adapter ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{meta_path}: not a {ADAPTER_FORMAT} adapter description")
    return meta, tensors


def check_base(meta: dict, config: ModelConfig, tokenizer: Any, where: str, base: str) -> None:
    """Refuse an adapter trained on another base, naming the first thing that differs."""
    expected = meta.get("base", {})
    mine = base_fingerprint(config, tokenizer)
    for key, value in expected.get("model", {}).items():
        if mine["model"].get(key) != value:
            raise CheckpointError(
                f"adapter {where} was trained on a base with {key}={value!r}, but {base} has "
                f"{key}={mine['model'].get(key)!r}"
            )
    if expected.get("vocabulary_sha256") != mine["vocabulary_sha256"]:
        raise CheckpointError(
            f"adapter {where} was trained with another tokenizer than {base}'s "
            "(the vocabularies differ)"
        )


@torch.no_grad()
def merge_adapter(
    model: MusicTransformer, tokenizer: Any, adapter: str | Path, base: str | Path = "the base"
) -> dict:
    """Add a saved adapter's update into ``model``'s weights in place; returns its metadata."""
    meta, tensors = read_adapter(adapter)
    check_base(meta, model.config, tokenizer, str(adapter), str(base))
    scale = float(meta["alpha"]) / int(meta["rank"])
    modules = dict(model.named_modules())
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    for name in names:
        layer = modules.get(name)
        a, b = tensors.get(f"{name}.lora_a"), tensors.get(f"{name}.lora_b")
        if not isinstance(layer, nn.Linear) or a is None or b is None:
            raise CheckpointError(f"adapter {adapter}: {name} is not a projection of {base}")
        if (b.shape[0], a.shape[1]) != tuple(layer.weight.shape):
            raise CheckpointError(
                f"adapter {adapter}: {name} updates a {b.shape[0]}x{a.shape[1]} weight, "
                f"{base} has {tuple(layer.weight.shape)}"
            )
        weight = layer.weight
        weight += (b.to(weight.device) @ a.to(weight.device)).to(weight.dtype) * scale
    return meta


# --- a LoRA training run's checkpoints ----------------------------------------------------------
def save_run_model(
    model: MusicTransformer,
    tokenizer: Any,
    directory: Path,
    extra: dict,
    base: str | None,
) -> None:
    """A run's checkpoint: plain; for a LoRA run the merged model plus the adapter beside it."""
    if not lora_layers(model):
        save_pretrained(model, tokenizer, directory, extra=extra)
        return
    layer = next(iter(lora_layers(model).values()))
    lora = {"rank": layer.rank, "alpha": layer.alpha, "adapter": ADAPTER_WEIGHTS}
    save_pretrained(merged_model(model), tokenizer, directory, extra=extra | {"lora": lora})
    save_adapter(model, tokenizer, directory, base, {"step": extra.get("step")})


@torch.no_grad()
def load_run_weights(model: MusicTransformer, directory: Path) -> None:
    """Inverse of :func:`save_run_model` for a resume: the adapter for LoRA, else the weights."""
    layers = lora_layers(model)
    if not layers:
        load_weights(model, directory / WEIGHTS_FILE)
        return
    _, tensors = read_adapter(directory)
    expected = adapter_tensors(model)
    if set(tensors) != set(expected):
        raise CheckpointError(f"{directory / ADAPTER_WEIGHTS}: does not match this run's LoRA")
    for name, layer in layers.items():
        layer.lora_a.copy_(tensors[f"{name}.lora_a"])
        layer.lora_b.copy_(tensors[f"{name}.lora_b"])


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "TARGETS",
    "LoRALinear",
    "adapter_tensors",
    "apply_lora",
    "base_fingerprint",
    "check_base",
    "merge_adapter",
    "merged_model",
    "read_adapter",
    "save_adapter",
]
