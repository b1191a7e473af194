"""int8 for CPU inference: logits close to fp32, 0 grammar errors, a smaller file, bad input.

Stated tolerance: on the tiny preset the int8 model's logits stay within 2% of the fp32 logits'
range (max absolute difference), for a whole sequence (dynamic int8) and for a one-token
decode step (weight-only int8).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from musegen.checkpoint import load_pretrained
from musegen.cli import main
from musegen.errors import MusegenError
from musegen.evaluate import token_error_rate
from musegen.model import quant
from musegen.pipeline import Pipeline
from musegen.training.deploy import export_int8

TOLERANCE = 0.02  # of the fp32 logits' range


@pytest.fixture(scope="module")
def int8_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_int8(tiny_checkpoint, tmp_path_factory.mktemp("int8") / "tiny-int8")


def _ids(vocab: int, length: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(0))


def _close(a: torch.Tensor, ref: torch.Tensor) -> bool:
    return float((a - ref).abs().max()) <= TOLERANCE * float(ref.max() - ref.min())


@torch.no_grad()
def test_int8_logits_within_tolerance(tiny_checkpoint: Path):
    fp32 = load_pretrained(tiny_checkpoint).model
    int8 = quant.quantize_model(load_pretrained(tiny_checkpoint).model)
    assert quant.is_int8(int8) and not quant.is_int8(fp32)
    ids = _ids(fp32.config.vocab_size)
    ref = fp32(ids)
    assert _close(int8(ids), ref)
    cache = int8.new_cache(1)
    int8(ids[:1, :20], cache=cache)
    step = int8(ids[:1, 20:21], cache=cache)  # one row: the weight-only kernel
    assert _close(step[0, -1], ref[0, 20])


def test_export_is_smaller_and_loads(tiny_checkpoint: Path, int8_checkpoint: Path):
    size = (int8_checkpoint / "model.safetensors").stat().st_size
    assert size < 0.4 * (tiny_checkpoint / "model.safetensors").stat().st_size
    meta = json.loads((int8_checkpoint / "config.json").read_text())
    assert meta["quantization"]["format"] == quant.INT8_FORMAT
    loaded = load_pretrained(int8_checkpoint)
    assert quant.is_int8(loaded.model)
    ids = _ids(loaded.config.vocab_size)
    with torch.no_grad():
        assert _close(loaded.model(ids), load_pretrained(tiny_checkpoint).model(ids))


def test_int8_generates_without_grammar_errors(int8_checkpoint: Path, tiny_checkpoint: Path):
    for pipe in (
        Pipeline.from_pretrained(int8_checkpoint),
        Pipeline.from_pretrained(tiny_checkpoint, precision="int8"),
    ):
        results = pipe.generate(num_samples=3, max_new_tokens=60, seed=5)
        for r in results:
            assert r.tokens
            assert token_error_rate(pipe.tokenizer, r.prompt_ids, r.tokens) == 0.0


def test_bf16_and_fp32_precisions(int8_checkpoint: Path, tiny_checkpoint: Path):
    pipe = Pipeline.from_pretrained(tiny_checkpoint, precision="bf16")
    assert pipe.model.tok_emb.weight.dtype == torch.bfloat16
    assert pipe.generate(num_samples=2, max_new_tokens=16, seed=1)[0].tokens
    back = Pipeline.from_pretrained(int8_checkpoint, precision="fp32")
    assert not quant.is_int8(back.model)


def test_cli_export_and_generate(tiny_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "q"
    assert main(["export", "--int8", str(tiny_checkpoint), str(out)]) == 0
    assert main(["export", "--int8", str(tiny_checkpoint), str(out)]) == 2  # exists: refused
    assert main(["export", "--int8", str(tiny_checkpoint), str(out), "--overwrite"]) == 0
    gen = tmp_path / "gen"
    args = ["generate", "--checkpoint", str(tiny_checkpoint), "--precision", "int8"]
    assert main([*args, "--out", str(gen), "--max-new-tokens", "8", "--seed", "2"]) == 0
    assert list(gen.glob("*.mid"))


# --- bad input ---------------------------------------------------------------------------------
def test_int8_on_a_device_without_int8_kernels(tiny_checkpoint: Path, monkeypatch, capsys):
    with pytest.raises(MusegenError, match="int8 runs on CPU only"):
        Pipeline.from_pretrained(tiny_checkpoint, device="cuda", precision="int8")
    args = ["generate", "--checkpoint", str(tiny_checkpoint), "--device", "cuda"]
    assert main([*args, "--precision", "int8", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "int8" in err and "cuda" in err
    monkeypatch.setattr(quant, "supported_engines", lambda: ["none"])
    with pytest.raises(MusegenError, match="no int8 engine"):
        Pipeline.from_pretrained(tiny_checkpoint, precision="int8")


def test_export_needs_a_checkpoint(tmp_path: Path):
    with pytest.raises(MusegenError, match="not a usable checkpoint"):
        export_int8(tmp_path / "nothing", tmp_path / "out")
