"""Fine-tuning: a training run that starts from a checkpoint, with its shape and its weights.

``musegen finetune --from CHECKPOINT --data PREPARED --out RUN`` is ``musegen train`` with the
checkpoint's model config, ``init_from`` set and defaults for a short run on a small corpus
(fewer steps, a lower peak learning rate, warm-up proportional to the run). With
``--lora-rank R`` only low-rank adapters train (:mod:`musegen.training.lora`); the run's
``best/`` then holds the merged model and ``adapter.safetensors`` + ``adapter.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from musegen.checkpoint import read_meta
from musegen.config import ModelConfig
from musegen.errors import CheckpointError, MusegenError
from musegen.training.config import TrainConfig

# Defaults of a fine-tune (a flag or --set overrides each): a few hundred steps at a peak rate
# below pre-training's for all weights, and above it for LoRA (its update starts at zero).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "max_steps": 500,
    "eval_every": 100,
    "save_every": 100,
    "lr": 1e-4,
}
LORA_LR = 1e-3


def base_model_config(checkpoint: str | Path) -> ModelConfig:
    """The model config of ``checkpoint``; a one-line error when it is not one."""
    try:
        meta = read_meta(checkpoint)
        return ModelConfig.from_dict(meta["model"])
    except (CheckpointError, MusegenError) as exc:
        raise MusegenError(f"--from {checkpoint} is not a musegen checkpoint: {exc}") from None


def finetune_configs(
    base: str | Path,
    data: str,
    out: str,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    train: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> tuple[TrainConfig, ModelConfig]:
    """(TrainConfig, ModelConfig) of a fine-tune of ``base``; ``train``/``model`` override."""
    config = base_model_config(base)
    if model:
        shape = sorted(k for k in model if k not in ("dropout", "max_seq_len", "pin_tokens"))
        if shape:
            raise MusegenError(f"a fine-tune keeps the checkpoint's shape; cannot set {shape}")
        config = config.with_overrides(**model)
    settings = dict(FINETUNE_DEFAULTS)
    if lora_rank:
        settings["lr"] = LORA_LR
    settings.update(train or {})
    settings.update(
        data=data,
        out=out,
        init_from=str(base),
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
    )
    return TrainConfig.from_dict(settings), config


__all__ = ["FINETUNE_DEFAULTS", "base_model_config", "finetune_configs"]
