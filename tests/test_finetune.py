"""Fine-tuning: LoRA starts at the base, adapters merge exactly, runs learn, bad input is refused.

Tiny preset throughout, on a corpus prepared in the test with the checkpoint's own tokenizer
(``prepare --tokenizer-from``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_midi

from musegen.checkpoint import load_pretrained, save_pretrained
from musegen.cli import main
from musegen.config import preset
from musegen.data.prepare import PrepareOptions, prepare
from musegen.errors import CheckpointError, MusegenError
from musegen.files import read_jsonl
from musegen.model.transformer import MusicTransformer
from musegen.pipeline import Pipeline
from musegen.tokenizer import TokenizerSettings, build_tokenizer
from musegen.training import lora, optim
from musegen.training.config import TrainConfig
from musegen.training.finetune import finetune_configs
from musegen.training.loop import train

RUN = dict(
    batch_size=4,
    seq_len=32,
    eval_every=20,
    save_every=20,
    log_every=1,
    eval_windows=4,
    sample_tokens=0,
    device="cpu",
    progress=False,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """12 small pieces tokenized with the tiny checkpoint's tokenizer."""
    root = tmp_path_factory.mktemp("ft")
    for i in range(12):
        tracks = ((0, False), (0, True)) if i % 2 else ((0, False), (33, False))
        write_midi(root / "midi" / f"piece{i}.mid", bars=12 + i, tracks=tracks, seed=i)
    options = PrepareOptions(workers=1, tokenizer_from=str(tiny_checkpoint))
    prepare(root / "midi", root / "prepared", options, progress=False)
    return root / "prepared"


def _logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(
        0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return model.eval()(ids)


def _randomise_adapter(model: torch.nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_b.normal_(0, 0.05)


def test_lora_starts_exactly_at_the_base(tiny_checkpoint: Path):
    model = load_pretrained(tiny_checkpoint).model
    before = _logits(model)
    summary = lora.apply_lora(model, rank=4, alpha=8)
    assert "8 projections" in summary  # 2 layers x (qkv, proj, fc, out)
    assert torch.equal(_logits(model), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)


def test_merged_adapter_equals_base_plus_adapter(tiny_checkpoint: Path, tmp_path: Path):
    loaded = load_pretrained(tiny_checkpoint)
    model = loaded.model
    lora.apply_lora(model, rank=4, alpha=8)
    _randomise_adapter(model)
    expected = _logits(model)
    assert not torch.allclose(expected, _logits(load_pretrained(tiny_checkpoint).model))
    adapter = lora.save_adapter(model, loaded.tokenizer, tmp_path / "adapter", tiny_checkpoint)
    assert (adapter / lora.ADAPTER_WEIGHTS).stat().st_size < 100_000
    meta = json.loads((adapter / lora.ADAPTER_CONFIG).read_text())
    assert meta["rank"] == 4 and meta["alpha"] == 8 and meta["base"]["vocabulary_sha256"]
    pipe = Pipeline.from_pretrained(tiny_checkpoint, adapter=adapter)
    torch.testing.assert_close(_logits(pipe.model), expected, atol=1e-5, rtol=1e-5)
    # merge-adapter writes a plain checkpoint with the same logits
    out = tmp_path / "merged"
    assert main(["merge-adapter", str(tiny_checkpoint), str(adapter), str(out)]) == 0
    torch.testing.assert_close(_logits(load_pretrained(out).model), expected, atol=1e-5, rtol=1e-5)
    # ... and never overwrites without --overwrite
    with pytest.raises(MusegenError, match="--overwrite"):
        from musegen.training.deploy import merge_adapter_checkpoint

        merge_adapter_checkpoint(tiny_checkpoint, adapter, out)
    assert main(["merge-adapter", str(tiny_checkpoint), str(adapter), str(out), "--overwrite"]) == 0


def test_warmup_is_proportional_unless_set():
    assert optim.warmup_steps_for(None, 60) == 2
    assert optim.warmup_steps_for(None, 5000) == 200
    assert optim.warmup_steps_for(7, 60) == 7
    assert optim.lr_at(2, 1e-3, optim.warmup_steps_for(None, 60), 60, 0.1) == pytest.approx(
        1e-3, rel=0.01
    )


def test_a_60_step_run_learns(prepared: Path, tmp_path: Path):
    config = TrainConfig(
        data=str(prepared),
        out=str(tmp_path / "run"),
        preset="tiny",
        max_steps=60,
        lr=3e-3,
        seed=0,
        **RUN,
    )
    train(config)
    losses = [
        r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"
    ]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train_config"]["warmup_steps"] == 2  # resolved, so a resume keeps it
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first - last > 1.0, (first, last)


def test_finetune_lora_run_resume_and_generate(
    tiny_checkpoint: Path, prepared: Path, tmp_path: Path
):
    run = tmp_path / "lora"
    args = [
        "finetune",
        "--from",
        str(tiny_checkpoint),
        "--data",
        str(prepared),
        "--out",
        str(run),
        "--lora-rank",
        "4",
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--eval-every",
        "2",
        "--save-every",
        "2",
        "--eval-windows",
        "4",
        "--sample-tokens",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(args) == 0
    best = run / "best"
    assert (best / lora.ADAPTER_WEIGHTS).is_file() and (best / "model.safetensors").is_file()
    saved = json.loads((run / "run.json").read_text())["train_config"]
    assert saved["lora_rank"] == 4 and saved["lr"] == 1e-3 and saved["init_from"]
    # the base stays frozen: the merged best equals base + adapter
    merged = _logits(load_pretrained(best).model)
    via_adapter = _logits(Pipeline.from_pretrained(tiny_checkpoint, adapter=best).model)
    torch.testing.assert_close(merged, via_adapter, atol=1e-5, rtol=1e-5)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "6", "--quiet"]) == 0
    out = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(tiny_checkpoint),
                "--adapter",
                str(best),
                "--out",
                str(out),
                "--max-new-tokens",
                "8",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert list(out.glob("*.mid"))


def test_full_finetune_changes_all_weights(tiny_checkpoint: Path, prepared: Path, tmp_path: Path):
    train_config, model_config = finetune_configs(
        tiny_checkpoint, str(prepared), str(tmp_path / "full"), train={**RUN, "max_steps": 3}
    )
    assert model_config.to_dict() == load_pretrained(tiny_checkpoint).config.to_dict()
    train(train_config, model_config)
    before = load_pretrained(tiny_checkpoint).model.state_dict()
    after = load_pretrained(tmp_path / "full" / "latest").model.state_dict()
    assert not torch.equal(before["blocks.0.fc.weight"], after["blocks.0.fc.weight"])
    assert not torch.equal(before["tok_emb.weight"], after["tok_emb.weight"])


# --- bad input ---------------------------------------------------------------------------------
def test_adapter_for_another_base_is_refused(tiny_checkpoint: Path, tmp_path: Path):
    loaded = load_pretrained(tiny_checkpoint)
    tokenizer = loaded.tokenizer
    other = MusicTransformer(preset("tiny", vocab_size=len(tokenizer), d_model=48, n_heads=2))
    lora.apply_lora(other, rank=2)
    adapter = lora.save_adapter(other, tokenizer, tmp_path / "wide")
    with pytest.raises(CheckpointError, match=r"d_model=48.*d_model=32"):
        Pipeline.from_pretrained(tiny_checkpoint, adapter=adapter)
    # same shape, another tokenizer
    model = load_pretrained(tiny_checkpoint).model
    lora.apply_lora(model, rank=2)
    adapter = lora.save_adapter(model, tokenizer, tmp_path / "tok")
    meta = json.loads((adapter / lora.ADAPTER_CONFIG).read_text())
    meta["base"]["vocabulary_sha256"] = "0" * 64
    (adapter / lora.ADAPTER_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="another tokenizer"):
        Pipeline.from_pretrained(tiny_checkpoint, adapter=adapter)
    with pytest.raises(CheckpointError, match="not a LoRA adapter"):
        Pipeline.from_pretrained(tiny_checkpoint, adapter=tmp_path)


def test_from_that_is_not_a_checkpoint(prepared: Path, tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    args = [
        "finetune",
        "--from",
        str(tmp_path / "empty"),
        "--data",
        str(prepared),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--from" in err and "not a musegen checkpoint" in err
    assert not (tmp_path / "run").exists()


def test_lora_on_a_corpus_with_another_tokenizer(tmp_path: Path, prepared: Path):
    other_tok = build_tokenizer(TokenizerSettings(kind="TSD"))
    base = save_pretrained(
        MusicTransformer(preset("tiny", vocab_size=len(other_tok))), other_tok, tmp_path / "tsd"
    )
    config, model = finetune_configs(
        base, str(prepared), str(tmp_path / "run"), lora_rank=2, train={**RUN, "max_steps": 1}
    )
    with pytest.raises(MusegenError, match="--tokenizer-from"):
        train(config, model)


def test_finetune_run_dir_is_not_overwritten(tiny_checkpoint: Path, prepared: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    config, model = finetune_configs(tiny_checkpoint, str(prepared), str(run), train=RUN)
    with pytest.raises(MusegenError, match="overwrite"):
        train(config, model)
    assert (run / "keep.txt").read_text() == "mine"


def test_prepare_tokenizer_from(tiny_checkpoint: Path, prepared: Path, tmp_path: Path):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["tokenizer"]["from"] == str(tiny_checkpoint)
    tok = json.loads((prepared / "tokenizer.json").read_text())
    assert tok == json.loads((tiny_checkpoint / "tokenizer.json").read_text())
    with pytest.raises(MusegenError, match="exclude each other"):
        PrepareOptions(tokenizer_from=str(tiny_checkpoint), bpe_vocab=600).validate()
