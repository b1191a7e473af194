"""The run directory: what a training run leaves on disk, and how it is resumed safely.

Layout of ``RUN_DIR``::

    run.json          train + model config and the dataset fingerprint (written at the start)
    metrics.jsonl     one JSON object per log/eval line
    loss.png          learning curves, redrawn at each evaluation
    latest/           normal checkpoint (config.json, model.safetensors, tokenizer.json)
      train_state/    state.json + tensors.safetensors: optimiser, step, RNG and sampler state
    best/             normal checkpoint with the lowest validation loss so far
    samples/          step_N.mid, a short sample generated at each evaluation

``latest`` and ``best`` are replaced atomically: the new one is written beside the old and
swapped in with two renames; a crash between them is repaired on the next start. No pickle is
written: tensors go to safetensors and everything else to JSON. ``run.json`` keeps the
:class:`~musegen.training.config.TrainConfig`, so ``--resume`` rebuilds the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from musegen.config import ModelConfig, preset
from musegen.data.dataset import MANIFEST, PreparedDataset
from musegen.errors import MusegenError
from musegen.files import replace_dir, write_atomic, write_json_atomic
from musegen.tokenizer import TOKENIZER_FILE, decode, load_tokenizer, score_to_midi_bytes
from musegen.training.config import TrainConfig
from musegen.training.optim import DistContext

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
LATEST, BEST, STATE_DIR = "latest", "best", "train_state"
STATE_JSON, STATE_TENSORS = "state.json", "tensors.safetensors"


# --- dataset fingerprint ------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_fingerprint(data_dir: str | Path) -> dict[str, str]:
    """Hashes of the prepared corpus' tokenizer and manifest: a run may only resume on the same."""
    data_dir = Path(data_dir)
    return {
        "tokenizer_sha256": _sha256(data_dir / TOKENIZER_FILE),
        "manifest_sha256": _sha256(data_dir / MANIFEST),
    }


def check_fingerprint(saved: dict[str, str], current: dict[str, str], run_dir: Path) -> None:
    """Refuse to continue a run on a different tokenizer or corpus."""
    if saved.get("tokenizer_sha256") != current["tokenizer_sha256"]:
        raise MusegenError(
            f"{run_dir} was trained with a different tokenizer than --data uses; resume with the "
            "prepared corpus it was started on, or start a new run in another --out directory"
        )
    if saved.get("manifest_sha256") != current["manifest_sha256"]:
        raise MusegenError(
            f"{run_dir} was trained on a different prepared corpus than --data (manifest differs); "
            "resume with the corpus it was started on, or start a new run in another --out"
        )


# --- run directory ------------------------------------------------------------------------------
def read_run(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory, or a clear error when it is not one."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        raise MusegenError(f"nothing to resume: {run_dir} is empty or does not exist")
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise MusegenError(
            f"{run_dir} is not a musegen run directory (no {RUN_FILE}); --resume needs the --out "
            "of an earlier 'musegen train'"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MusegenError(f"{path} is corrupt ({exc}); start a new run elsewhere") from None


def check_fresh_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A fresh run needs an empty (or new) directory; --overwrite only replaces an old run."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise MusegenError(f"--out {run_dir} exists and is not a directory")
    if not any(run_dir.iterdir()):
        return
    if not overwrite:
        raise MusegenError(
            f"--out {run_dir} is not empty; pass --resume to continue that run, --overwrite to "
            "replace it, or choose another directory"
        )
    if not (run_dir / RUN_FILE).is_file():
        raise MusegenError(
            f"--out {run_dir} holds files that are not a musegen run; refusing to delete them "
            "with --overwrite, choose another directory"
        )


def clear_run_dir(run_dir: Path) -> None:
    """Delete an earlier run (already checked by :func:`check_fresh_run_dir`)."""
    if run_dir.is_dir() and (run_dir / RUN_FILE).is_file():
        shutil.rmtree(run_dir)


def repair_checkpoints(run_dir: Path) -> None:
    """Undo a swap of ``latest``/``best`` that a crash interrupted; drop half-written copies."""
    for name in (LATEST, BEST):
        final, tmp, old = run_dir / name, run_dir / f".{name}.tmp", run_dir / f".{name}.old"
        if not final.exists() and old.exists():
            os.replace(old, final)
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def replace_checkpoint(run_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Write ``run_dir/name`` anew with ``write(tmp_dir)`` and swap it in with two renames.

    Until the second rename the old directory is intact (as ``name`` or ``.name.old``), so a kill
    at any moment leaves a complete checkpoint that :func:`repair_checkpoints` restores.
    """
    final, tmp, old = run_dir / name, run_dir / f".{name}.tmp", run_dir / f".{name}.old"
    for leftover in (tmp, old):
        if leftover.exists() and (final.exists() or leftover is tmp):
            shutil.rmtree(leftover)
    write(tmp)
    return replace_dir(tmp, final, old=old)


# --- JSON encoding of numpy-bearing state ------------------------------------------------------
def to_jsonable(value: Any) -> Any:
    """Plain JSON types; numpy arrays become ``{"__ndarray__": [...], "dtype": ...}``."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


# --- RNG state ----------------------------------------------------------------------------------
def capture_rng(device: torch.device) -> dict[str, Any]:
    """Every random stream this process draws from (dropout, numpy, python, CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# --- train_state read/write ---------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything besides the weights that a resumed run needs."""

    meta: dict[str, Any]  # JSON part: counters, fingerprint, per-rank sampler/RNG, optimizer meta
    optimizer_tensors: dict[str, torch.Tensor]
    rank_tensors: list[dict[str, torch.Tensor]]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def write_train_state(
    directory: Path,
    meta: dict[str, Any],
    optimizer_tensors: dict[str, torch.Tensor],
    rank_states: list[dict[str, Any]],
) -> None:
    """Write ``directory/train_state``; tensors of each rank's RNG go to safetensors."""
    out = directory / STATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"optim.{k}": v for k, v in optimizer_tensors.items()}
    ranks_json = []
    for rank, state in enumerate(rank_states):
        plain = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"rank{rank}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[key] = value
        ranks_json.append(plain)
    save_file(tensors, str(out / STATE_TENSORS))
    write_json_atomic(out / STATE_JSON, to_jsonable({**meta, "ranks": ranks_json}))


def read_train_state(directory: Path) -> TrainState:
    """Read what :func:`write_train_state` wrote, with a clear error when it is damaged."""
    src = directory / STATE_DIR
    try:
        meta = from_jsonable(json.loads((src / STATE_JSON).read_text()))
        tensors = load_file(str(src / STATE_TENSORS))
    except (OSError, json.JSONDecodeError, RuntimeError, ValueError) as exc:
        raise MusegenError(
            f"cannot resume: {src} is missing or damaged ({exc}); start a new run with --overwrite"
        ) from None
    optim = {k[len("optim.") :]: v for k, v in tensors.items() if k.startswith("optim.")}
    ranks = meta.get("ranks", [])
    rank_tensors: list[dict[str, torch.Tensor]] = [{} for _ in ranks]
    for name, value in tensors.items():
        if name.startswith("rank"):
            head, key = name.split(".", 1)
            rank_tensors[int(head[4:])][key] = value
    return TrainState(meta, optim, rank_tensors)


def load_resume_state(run_dir: Path, fingerprint: dict[str, str]) -> TrainState | None:
    """The train_state of ``run_dir/latest``, or ``None`` when the run never saved one."""
    latest = run_dir / LATEST
    if not (latest / STATE_DIR).is_dir():
        return None
    state = read_train_state(latest)
    check_fingerprint(state.meta.get("fingerprint", {}), fingerprint, run_dir)
    return state


# --- inputs and outputs of a run -----------------------------------------------------------------
def open_prepared(data_dir: str | Path) -> tuple[Any, Any, Any]:
    """(tokenizer, train split, val split or ``None``) of a prepared corpus, with clear errors."""
    dataset = PreparedDataset.open(data_dir)
    tokenizer = load_tokenizer(dataset.tokenizer_path)
    train_split = dataset.split("train")
    if train_split.num_tokens == 0:
        raise MusegenError(f"the train split of {data_dir} is empty; prepare more MIDI files")
    val_split = dataset.split("val") if "val" in dataset.manifest["splits"] else None
    if val_split is not None and val_split.num_tokens == 0:
        val_split = None
    return tokenizer, train_split, val_split


def check_run_dir(
    run_dir: Path, config: TrainConfig, fingerprint: dict[str, str], ctx: DistContext
) -> dict[str, Any] | None:
    """Check ``run_dir`` on every rank before anything is written; the saved run when resuming.

    Every rank raises if any rank found a problem, so none is left waiting for the others.
    """
    error, saved = None, None
    if config.resume and ctx.is_main and (run_dir / RUN_FILE).is_file():
        repair_checkpoints(run_dir)
    ctx.barrier()
    try:
        if config.resume:
            saved = read_run(run_dir)
            check_fingerprint(saved.get("fingerprint", {}), fingerprint, run_dir)
        else:
            check_fresh_run_dir(run_dir, config.overwrite)
    except MusegenError as exc:
        error = exc
    if not ctx.agree(error is None):
        raise error or MusegenError("another process of this run failed to start (see above)")
    return saved


def create_run_dir(run_dir: Path, config: TrainConfig, ctx: DistContext) -> None:
    """Rank 0 makes the directory of a fresh run (replacing an old run with --overwrite)."""
    if ctx.is_main and not config.resume:
        clear_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()


def resolve_model_config(
    saved: dict | None, given: ModelConfig | None, preset_name: str, vocab: int, seq_len: int | None
) -> ModelConfig:
    """The model of the run: derived for a fresh run, the stored one when resuming.

    A fresh model takes its vocabulary from the tokenizer (exactly: a checkpoint's tokenizer and
    weights must agree id for id) and a context of at least ``seq_len``.
    """
    base = given or preset(preset_name)
    overrides: dict[str, Any] = {"vocab_size": vocab}
    if seq_len and seq_len > base.max_seq_len:
        overrides["max_seq_len"] = seq_len
    derived = base.with_overrides(**overrides)
    if saved is None:
        return derived
    stored = ModelConfig.from_dict(saved["model_config"])
    if given is not None and derived.to_dict() != stored.to_dict():
        raise MusegenError(
            "the model shape cannot change on resume: the run directory holds a different "
            "model config; drop the model overrides or start a new run"
        )
    return stored


def write_sample(run_dir: Path, step: int, ids: list[int], tokenizer: Any) -> Path:
    """Decode sampled ids and write ``samples/step_N.mid`` atomically."""
    out = run_dir / "samples"
    out.mkdir(exist_ok=True)
    return write_atomic(out / f"step_{step}.mid", score_to_midi_bytes(decode(tokenizer, ids)))
