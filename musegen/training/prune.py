"""Pruning: magnitude (unstructured) or structured (attention heads, MLP channels), then an
optional short recovery fine-tune on a prepared corpus.

* ``magnitude``: in every projection of every block, the fraction ``sparsity`` of weights with
  the smallest magnitude become zero (same shapes and file size: sparse, not smaller; a
  recovery run keeps them at zero).
* ``heads``: the same number of heads leaves every layer (``round(sparsity · n_heads)``), the
  ones whose value → output path has the smallest norm; the saved config has fewer heads of
  the same width (``head_size``), so the model is smaller and faster.
* ``mlp``: likewise for the MLP channels (``d_ff`` shrinks): a channel's score is the norm of its
  ``fc`` row times that of its ``out`` column.

The same count in every layer keeps the config uniform (one ``n_heads``, one ``d_ff``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from musegen.checkpoint import save_pretrained
from musegen.data.dataset import WindowSampler
from musegen.errors import MusegenError
from musegen.metrics import token_loss
from musegen.model.quant import is_int8
from musegen.model.transformer import MusicTransformer
from musegen.training import deploy

KINDS = ("magnitude", "heads", "mlp")
PROJECTIONS = ("attn.qkv", "attn.proj", "fc", "out")


@dataclass
class PruneResult:
    out: Path
    kind: str
    sparsity: float
    params_before: int
    params_after: int
    zeros: float  # share of zero weights among the pruned projections
    val_nll_pruned: float | None = None
    val_nll_recovered: float | None = None

    def summary(self) -> str:
        text = (
            f"{self.kind} pruning at {self.sparsity:g}: {self.params_before:,} → "
            f"{self.params_after:,} parameters, {100 * self.zeros:.1f}% zero projection weights"
        )
        if self.val_nll_pruned is not None:
            text += f"; val NLL {self.val_nll_pruned:.4f} after pruning"
        if self.val_nll_recovered is not None:
            text += f", {self.val_nll_recovered:.4f} after recovery"
        return f"{text} -> {self.out}"


def check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise MusegenError(f"--sparsity must be in [0, 1), got {sparsity}")


def _blocks(model: MusicTransformer) -> nn.ModuleList:
    if model.blocks is None or any(".mech." in n for n, _ in model.named_parameters()):
        raise MusegenError(
            f"pruning supports models made of plain blocks; attention={model.config.attention!r} "
            "brings its own structure"
        )
    return model.blocks


# --- magnitude ---------------------------------------------------------------------------------
def magnitude_masks(model: MusicTransformer, sparsity: float) -> dict[str, Tensor]:
    """Per projection weight, the mask keeping all but its ``sparsity`` smallest magnitudes."""
    masks = {}
    for i, block in enumerate(_blocks(model)):
        for name in PROJECTIONS:
            weight = block.get_submodule(name).weight.detach()
            k = round(sparsity * weight.numel())
            mask = torch.ones_like(weight, dtype=torch.bool)
            if k:
                cut = weight.abs().flatten().kthvalue(k).values
                mask = weight.abs() > cut
            masks[f"blocks.{i}.{name}.weight"] = mask
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask)


# --- structured ------------------------------------------------------------------------------
def _top(scores: Tensor, keep: int) -> Tensor:
    return scores.topk(keep).indices.sort().values


@torch.no_grad()
def prune_heads(model: MusicTransformer, remove: int) -> MusicTransformer:
    """A new model with ``remove`` fewer heads in every layer (the lowest-scoring ones)."""
    c = model.config
    keep = c.n_heads - remove
    if keep < 1:
        raise MusegenError(f"--sparsity leaves no attention head (the model has {c.n_heads})")
    config = c.with_overrides(n_heads=keep, head_size=c.head_dim)
    state = model.state_dict()
    D, W = c.head_dim, c.attn_dim
    for i, block in enumerate(_blocks(model)):
        attn = block.attn
        qkv, proj = attn.qkv.weight.view(3, c.n_heads, D, c.d_model), attn.proj.weight
        value_norm = qkv[2].flatten(1).norm(dim=1)
        out_norm = proj.view(c.d_model, c.n_heads, D).transpose(0, 1).flatten(1).norm(dim=1)
        heads = _top(value_norm * out_norm, keep)
        rows = torch.arange(3)[:, None, None] * W + heads[None, :, None] * D  # [3, keep, 1]
        rows = (rows + torch.arange(D)).flatten()
        cols = (heads[:, None] * D + torch.arange(D)).flatten()
        p = f"blocks.{i}.attn."
        state[p + "qkv.weight"] = attn.qkv.weight[rows].clone()
        state[p + "qkv.bias"] = attn.qkv.bias[rows].clone()
        state[p + "proj.weight"] = proj[:, cols].clone()
        if attn.rel is not None:
            state[p + "rel"] = attn.rel[heads].clone()
    return _rebuilt(config, state, model)


@torch.no_grad()
def prune_mlp(model: MusicTransformer, remove: int) -> MusicTransformer:
    """A new model with ``remove`` fewer MLP channels in every layer."""
    c = model.config
    keep = c.d_ff - remove
    if keep < 1:
        raise MusegenError(f"--sparsity leaves no MLP channel (d_ff is {c.d_ff})")
    config = c.with_overrides(d_ff=keep)
    state = model.state_dict()
    for i, block in enumerate(_blocks(model)):
        scores = block.fc.weight.norm(dim=1) * block.out.weight.norm(dim=0)
        channels = _top(scores, keep)
        p = f"blocks.{i}."
        state[p + "fc.weight"] = block.fc.weight[channels].clone()
        state[p + "fc.bias"] = block.fc.bias[channels].clone()
        state[p + "out.weight"] = block.out.weight[:, channels].clone()
    return _rebuilt(config, state, model)


def _rebuilt(config, state: dict[str, Tensor], like: MusicTransformer) -> MusicTransformer:
    model = MusicTransformer(config).to(like.tok_emb.weight.device)
    model.load_state_dict(state, strict=True)
    return model.eval()


# --- recovery --------------------------------------------------------------------------------
def recover(
    model: MusicTransformer,
    data: str | Path,
    steps: int,
    masks: dict[str, Tensor] | None = None,
    lr: float = 1e-4,
    batch_size: int = 8,
    seq_len: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """A short fine-tune of a pruned model (pruned weights stay zero); returns the last loss."""
    seq_len = seq_len or min(model.config.max_seq_len, 512)
    _, split, pad = deploy.train_windows(data, seq_len)
    sampler = WindowSampler(split, seq_len, seed, pad, 0, 1, None, None)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )
    warmup, loss_value = max(1, steps // 10), float("nan")
    model.train()
    started = time.monotonic()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        x = torch.from_numpy(sampler.next_batch(batch_size)).to(model.tok_emb.weight.device)
        logits = model(x[:, :-1])
        loss = token_loss(logits, x[:, 1:], pad) / max(1, int((x[:, 1:] != pad).sum()))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if masks:
            apply_masks(model, masks)
        loss_value = float(loss.detach())
        if progress and (step + 1) % max(1, steps // 10) == 0:
            elapsed = time.monotonic() - started
            print(
                f"recovery step {step + 1}/{steps}: loss {loss_value:.4f} ({elapsed:.0f} s)",
                file=sys.stderr,
            )
    return loss_value


# --- the command -------------------------------------------------------------------------------
def zero_share(model: MusicTransformer) -> float:
    zeros = total = 0
    for block in _blocks(model):
        for name in PROJECTIONS:
            w = block.get_submodule(name).weight
            zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return zeros / max(total, 1)


def prune_model(model: MusicTransformer, sparsity: float, kind: str):
    """(pruned model, masks or None): ``kind`` is magnitude, heads or mlp."""
    check_sparsity(sparsity)
    if kind not in KINDS:
        raise MusegenError(f"--structured must be heads or mlp (or omitted), got {kind!r}")
    if kind == "heads":
        return prune_heads(model, round(sparsity * model.config.n_heads)), None
    if kind == "mlp":
        return prune_mlp(model, round(sparsity * model.config.d_ff)), None
    masks = magnitude_masks(model, sparsity)
    apply_masks(model, masks)
    return model, masks


def prune_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    sparsity: float,
    structured: str | None = None,
    data: str | Path | None = None,
    recover_steps: int = 0,
    overwrite: bool = False,
    lr: float = 1e-4,
    batch_size: int = 8,
    progress: bool = False,
) -> PruneResult:
    """``musegen prune``: prune ``checkpoint`` into ``out`` (recovering on ``data``)."""
    check_sparsity(sparsity)
    if recover_steps < 0:
        raise MusegenError(f"--recover-steps must be ≥ 0, got {recover_steps}")
    if recover_steps and not data:
        raise MusegenError("--recover-steps needs --data PREPARED (the corpus to recover on)")
    out = deploy.check_output(out, overwrite, (checkpoint,))
    loaded = deploy.load_checkpoint(checkpoint)
    if is_int8(loaded.model):
        raise MusegenError(f"CHECKPOINT {checkpoint} is an int8 export: prune the fp32 checkpoint")
    kind = structured or "magnitude"
    before = loaded.model.num_parameters()
    windows = None
    if data:
        seq_len = min(loaded.config.max_seq_len, 512)
        windows = deploy.corpus_windows(data, loaded.tokenizer, "val", seq_len, 32)
    model, masks = prune_model(loaded.model, sparsity, kind)
    result = PruneResult(out, kind, sparsity, before, model.num_parameters(), 0.0)
    if windows is not None:
        result.val_nll_pruned = deploy.windows_nll(model, *windows)
    if recover_steps:
        for p in model.parameters():
            p.requires_grad_(True)
        recover(model, data, recover_steps, masks, lr, batch_size, progress=progress)
        model.eval()
        result.val_nll_recovered = deploy.windows_nll(model, *windows)
    result.zeros = zero_share(model)
    extra = {k: v for k, v in loaded.meta.items() if k not in ("model", "musegen_version")}
    extra["pruning"] = {
        "kind": kind,
        "sparsity": sparsity,
        "pruned_from": str(checkpoint),
        "parameters_before": before,
        "recover_steps": recover_steps,
        "val_nll_pruned": result.val_nll_pruned,
        "val_nll_recovered": result.val_nll_recovered,
    }
    save_pretrained(model, loaded.tokenizer, out, extra=extra)
    return result


__all__ = ["KINDS", "PruneResult", "check_sparsity", "prune_checkpoint", "prune_model", "recover"]
