"""Checkpoints: round trip, strict loading with errors that name the file, atomic saving."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from musegen.checkpoint import load_pretrained, read_meta, save_pretrained
from musegen.config import preset
from musegen.errors import CheckpointError
from musegen.model.transformer import MusicTransformer
from musegen.tokenizer import build_tokenizer


@pytest.fixture
def ckpt_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the shared checkpoint, free to break."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def test_round_trip_gives_the_same_logits(tiny_checkpoint: Path):
    loaded = load_pretrained(tiny_checkpoint)
    assert not loaded.model.training
    assert loaded.meta["model"] == loaded.config.to_dict()
    assert "musegen_version" in read_meta(tiny_checkpoint)
    torch.manual_seed(0)
    fresh = MusicTransformer(loaded.config)
    ids = torch.randint(0, loaded.config.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), fresh.eval()(ids))
    assert len(loaded.tokenizer) == loaded.config.vocab_size


def test_extra_metadata_and_float16_weights(tmp_path: Path):
    tok = build_tokenizer()
    model = MusicTransformer(preset("tiny", vocab_size=len(tok)))
    full = save_pretrained(model, tok, tmp_path / "a", extra={"step": 7})
    half = save_pretrained(model, tok, tmp_path / "b", dtype=torch.float16)
    assert read_meta(full)["step"] == 7
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(half) < 0.6 * size(full)
    loaded = load_pretrained(half)
    assert loaded.model.tok_emb.weight.dtype == torch.float32
    torch.testing.assert_close(
        loaded.model.tok_emb.weight, model.tok_emb.weight, atol=1e-3, rtol=1e-3
    )


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_named(ckpt_copy: Path, name: str):
    (ckpt_copy / name).unlink()
    with pytest.raises(CheckpointError, match=name):
        load_pretrained(ckpt_copy)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_corrupt_file_is_named(ckpt_copy: Path, name: str):
    (ckpt_copy / name).write_bytes(b"\x00garbage{")
    with pytest.raises(CheckpointError, match=name):
        load_pretrained(ckpt_copy)


def test_pickle_is_never_loaded(ckpt_copy: Path):
    torch.save({"x": torch.zeros(1)}, ckpt_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=re.escape("model.safetensors")):
        load_pretrained(ckpt_copy)


def test_strict_load_rejects_missing_and_reshaped_tensors(ckpt_copy: Path):
    path = ckpt_copy / "model.safetensors"
    state = load_file(str(path))
    name = next(iter(state))
    save_file({k: v for k, v in state.items() if k != name}, str(path))
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(ckpt_copy)
    state[name] = torch.zeros(3, 3)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="shape"):
        load_pretrained(ckpt_copy)


def test_config_that_does_not_fit_is_rejected(ckpt_copy: Path):
    meta = json.loads((ckpt_copy / "config.json").read_text())
    meta["model"]["vocab_size"] = 10  # smaller than the tokenizer's vocabulary
    (ckpt_copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=re.escape("tokenizer.json")):
        load_pretrained(ckpt_copy)
    meta["model"]["attention"] = "nonsense"
    (ckpt_copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=re.escape("config.json")):
        load_pretrained(ckpt_copy)


def test_save_replaces_atomically_and_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    tok = build_tokenizer()
    target = tmp_path / "ck"
    model = MusicTransformer(preset("tiny", vocab_size=len(tok)))
    save_pretrained(model, tok, target, extra={"run": 1})
    save_pretrained(model, tok, target, extra={"run": 2})
    assert read_meta(target)["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("musegen.checkpoint.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, tok, target, extra={"run": 3})
    assert read_meta(target)["run"] == 2  # the old checkpoint survives a failed save
    assert load_pretrained(target).meta["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
