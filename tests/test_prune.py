"""Pruning: structured pruning makes the model smaller and removes exactly the chosen units;
magnitude pruning zeroes weights that stay zero through recovery; bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_midi

from musegen.checkpoint import load_pretrained
from musegen.cli import main
from musegen.config import preset
from musegen.data.prepare import PrepareOptions, prepare
from musegen.errors import MusegenError
from musegen.model.transformer import MusicTransformer
from musegen.pipeline import Pipeline
from musegen.training import prune


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    root = tmp_path_factory.mktemp("prune")
    for i in range(8):
        write_midi(root / "midi" / f"p{i}.mid", bars=10 + i, seed=i)
    options = PrepareOptions(workers=1, tokenizer_from=str(tiny_checkpoint))
    prepare(root / "midi", root / "prepared", options, progress=False)
    return root / "prepared"


def _model(**overrides) -> MusicTransformer:
    torch.manual_seed(0)
    return MusicTransformer(preset("tiny", vocab_size=300, **overrides)).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 300, (2, 30), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_head_pruning_removes_exactly_the_weakest_heads():
    model = _model(n_heads=4, d_model=32)  # head_dim 8
    pruned = prune.prune_heads(model, 2)
    assert pruned.config.n_heads == 2 and pruned.config.head_dim == 8
    assert pruned.config.attn_dim == 16 and pruned.config.d_model == 32
    # the same as the full model with the removed heads' output columns zeroed
    for block, small in zip(model.blocks, pruned.blocks, strict=True):
        kept = {int(c) // 8 for c in torch.nonzero(small.attn.proj.weight.abs().sum(0)).flatten()}
        assert len(kept) <= 2
        proj = block.attn.proj.weight.view(32, 4, 8)
        full = block.attn.proj.weight
        small_cols = small.attn.proj.weight.view(32, 2, 8)
        keep = [
            h for h in range(4) if any(torch.equal(proj[:, h], small_cols[:, j]) for j in range(2))
        ]
        assert len(keep) == 2
        mask = torch.zeros(4, 8)
        mask[keep] = 1
        full.mul_(mask.flatten())
    torch.testing.assert_close(pruned(_ids()), model(_ids()), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_mlp_pruning_equals_zeroed_channels():
    model = _model()
    pruned = prune.prune_mlp(model, 16)
    assert pruned.config.d_ff == 48
    for block, small in zip(model.blocks, pruned.blocks, strict=True):
        rows = {tuple(r.tolist()) for r in small.fc.weight}
        dropped = [j for j in range(64) if tuple(block.fc.weight[j].tolist()) not in rows]
        assert len(dropped) == 16
        block.out.weight[:, dropped] = 0
    torch.testing.assert_close(pruned(_ids()), model(_ids()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["heads", "mlp"])
def test_structured_pruning_shrinks_parameters_and_file(
    tiny_checkpoint: Path, tmp_path: Path, kind
):
    out = tmp_path / kind
    result = prune.prune_checkpoint(tiny_checkpoint, out, 0.5, kind)
    assert result.params_after < result.params_before
    size = (out / "model.safetensors").stat().st_size
    assert size < (tiny_checkpoint / "model.safetensors").stat().st_size
    loaded = load_pretrained(out)
    assert loaded.model.num_parameters() == result.params_after
    assert json.loads((out / "config.json").read_text())["pruning"]["kind"] == kind
    assert Pipeline.from_pretrained(out).generate(num_samples=1, max_new_tokens=12, seed=0)


def test_magnitude_pruning_with_recovery_keeps_zeros(
    tiny_checkpoint: Path, prepared: Path, tmp_path
):
    out = tmp_path / "mag"
    args = [
        "prune",
        str(tiny_checkpoint),
        str(out),
        "--sparsity",
        "0.5",
        "--data",
        str(prepared),
        "--recover-steps",
        "3",
        "--batch-size",
        "2",
    ]
    assert main(args) == 0
    model = load_pretrained(out).model
    assert prune.zero_share(model) == pytest.approx(0.5, abs=0.01)
    meta = json.loads((out / "config.json").read_text())["pruning"]
    assert meta["val_nll_pruned"] is not None and meta["val_nll_recovered"] is not None


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", ["1.0", "-0.1", "1.5"])
def test_sparsity_outside_0_1(tiny_checkpoint: Path, tmp_path: Path, capsys, sparsity):
    assert main(["prune", str(tiny_checkpoint), str(tmp_path / "o"), "--sparsity", sparsity]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sparsity must be in [0, 1)" in err
    assert not (tmp_path / "o").exists()


def test_prune_refuses_to_overwrite_and_bad_checkpoint(tiny_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(MusegenError, match="--overwrite"):
        prune.prune_checkpoint(tiny_checkpoint, out, 0.5, "mlp")
    assert (out / "keep").read_text() == "x"
    prune.prune_checkpoint(tiny_checkpoint, out, 0.5, "mlp", overwrite=True)
    with pytest.raises(MusegenError, match="not a usable checkpoint"):
        prune.prune_checkpoint(tmp_path / "none", tmp_path / "o2", 0.5)
    with pytest.raises(MusegenError, match="needs --data"):
        prune.prune_checkpoint(tiny_checkpoint, tmp_path / "o3", 0.5, recover_steps=5)
    with pytest.raises(MusegenError, match="no attention head"):
        prune.prune_checkpoint(tiny_checkpoint, tmp_path / "o4", 0.9, "heads")
