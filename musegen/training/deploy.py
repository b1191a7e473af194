"""Making a trained checkpoint ready to ship: merge an adapter, export int8, measure a corpus.

Each command writes a plain checkpoint directory (``config.json`` + ``model.safetensors`` +
``tokenizer.json``) that :func:`musegen.checkpoint.load_pretrained` and so every front end
loads; an output folder that holds anything is only replaced with ``overwrite``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musegen.checkpoint import WEIGHTS_FILE, LoadedCheckpoint, load_pretrained, save_pretrained
from musegen.data.dataset import iter_eval_windows
from musegen.errors import CheckpointError, MusegenError
from musegen.metrics import evaluate_windows
from musegen.model.quant import INT8_FORMAT, check_int8_device, int8_state_dict, is_int8
from musegen.tokenizer import special_id
from musegen.training import lora
from musegen.training.state import open_prepared


def check_output(out: str | Path, overwrite: bool, sources: tuple[str | Path, ...] = ()) -> Path:
    """Refuse an output folder that holds anything (unless ``overwrite``) or is an input."""
    out = Path(out)
    for source in sources:
        if Path(source).resolve() == out.resolve():
            raise MusegenError(f"OUT {out} is an input of this command; choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise MusegenError(f"OUT {out} already exists and is not empty; pass --overwrite")
    return out


def load_checkpoint(directory: str | Path, what: str = "CHECKPOINT") -> LoadedCheckpoint:
    """:func:`load_pretrained` with the error naming the argument that was not a checkpoint."""
    try:
        return load_pretrained(directory)
    except CheckpointError as exc:
        raise MusegenError(f"{what} {directory} is not a usable checkpoint: {exc}") from None


def file_megabytes(directory: str | Path) -> float:
    return (Path(directory) / WEIGHTS_FILE).stat().st_size / 1e6


def merge_adapter_checkpoint(
    base: str | Path, adapter: str | Path, out: str | Path, overwrite: bool = False
) -> Path:
    """``musegen merge-adapter``: ``base`` with ``adapter`` merged, as a plain checkpoint."""
    out = check_output(out, overwrite, (base, adapter))
    loaded = load_checkpoint(base, "BASE")
    if is_int8(loaded.model):
        raise MusegenError(f"BASE {base} is an int8 export: merge into the fp32 checkpoint")
    meta = lora.merge_adapter(loaded.model, loaded.tokenizer, adapter, base)
    extra = {k: v for k, v in loaded.meta.items() if k not in ("model", "musegen_version")}
    extra["merged_adapter"] = {
        "adapter": str(adapter),
        "rank": meta["rank"],
        "alpha": meta["alpha"],
        "targets": meta["targets"],
    }
    return save_pretrained(loaded.model, loaded.tokenizer, out, extra=extra)


def export_int8(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """``musegen export --int8``: every large tensor as int8 with per-row scales."""
    out = check_output(out, overwrite, (checkpoint,))
    check_int8_device("cpu")
    loaded = load_checkpoint(checkpoint)
    extra = {k: v for k, v in loaded.meta.items() if k not in ("model", "musegen_version")}
    extra["quantization"] = {
        "format": INT8_FORMAT,
        "scheme": "symmetric int8, one fp32 scale per row of a tensor's last dimension",
        "linear": "int8 projections (dynamic int8 activations; weight-only at batch 1)",
        "exported_from": str(checkpoint),
    }
    tensors = int8_state_dict(loaded.model)
    return save_pretrained(loaded.model, loaded.tokenizer, out, extra=extra, tensors=tensors)


# --- measuring a checkpoint on a prepared corpus ------------------------------------------------
def corpus_windows(
    data: str | Path, tokenizer: Any, split: str, seq_len: int, count: int
) -> tuple[np.ndarray, int]:
    """Fixed evaluation windows of a prepared corpus's ``split`` and the PAD id; the corpus must
    use ``tokenizer``'s vocabulary exactly."""
    from musegen.data.dataset import PreparedDataset
    from musegen.tokenizer import load_tokenizer

    dataset = PreparedDataset.open(data)
    theirs = load_tokenizer(dataset.tokenizer_path)
    if lora.vocabulary_hash(theirs) != lora.vocabulary_hash(tokenizer):
        raise MusegenError(
            f"{data} was prepared with another tokenizer than the checkpoint's: prepare it with "
            "`musegen prepare SRC OUT --tokenizer-from CHECKPOINT`"
        )
    names = dataset.manifest["splits"]
    chosen = split if names.get(split, {}).get("tokens") else "val"
    pad = special_id(tokenizer, "PAD_None")
    rows = list(iter_eval_windows(dataset.split(chosen), seq_len, pad, count))
    if not rows:
        raise MusegenError(f"{data}: the {chosen} split has no window of {seq_len} tokens")
    return np.stack(rows), pad


@torch.no_grad()
def windows_nll(model: torch.nn.Module, windows: np.ndarray, pad: int, batch: int = 8) -> float:
    """Mean next-token NLL (nats) over ``windows``."""
    loss, _, count = evaluate_windows(model, windows, pad, batch, nullcontext).tolist()
    return loss / max(count, 1)


def train_windows(data: str | Path, seq_len: int) -> tuple[Any, Any, int]:
    """(tokenizer, train split, PAD id) of a prepared corpus, for a short recovery run."""
    tokenizer, split, _ = open_prepared(data)
    return tokenizer, split, special_id(tokenizer, "PAD_None")


def perplexity(nll: float) -> float:
    return math.exp(min(nll, 50.0))


__all__ = [
    "check_output",
    "corpus_windows",
    "export_int8",
    "file_megabytes",
    "load_checkpoint",
    "merge_adapter_checkpoint",
    "windows_nll",
]
