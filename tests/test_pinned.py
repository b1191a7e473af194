"""Pinned keys (``ModelConfig.pin_tokens``): a stretch of tokens that every later token sees
beyond a local window, and the pinned infilling layout built on it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import make_score, write_midi
from test_attention import make_inputs, reference_mask
from test_infill import BAND, check_result
from test_train import tiny_config

from musegen.checkpoint import save_pretrained
from musegen.config import preset
from musegen.data.infill import InfillRearranger, InfillVocab, layout, pin_tokens
from musegen.data.prepare import PrepareOptions, prepare
from musegen.errors import MusegenError
from musegen.generation import infill as fill
from musegen.model.attention import AttnContext, get_kind
from musegen.model.cache import PINNED
from musegen.model.transformer import MusicTransformer, pinned_indices
from musegen.pipeline import Pipeline
from musegen.tokenizer import build_tokenizer, encode
from musegen.training.loop import train

V, OPEN, CLOSE = 40, 5, 6


def random_pins(B: int, L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, L, generator=g) < 0.25


@pytest.mark.parametrize("kind", ["local", "sparse"])
@pytest.mark.parametrize("padded", [False, True])
def test_aligned_pinned_attention_matches_the_reference(kind, padded):
    """float64 forward and gradients: the pattern's mask plus every pinned key at or before the
    query, with pinned distances clipped at the table row the cached regime uses."""
    window, stride, horizon, L = 7, 3, 20, 45
    q, k, v, rel = make_inputs(L=L, R=horizon)
    cfg = preset("tiny", attention=kind, window=window, sparse_stride=stride)
    cfg = cfg.with_overrides(max_relative_distance=horizon)
    pattern = get_kind(kind).pattern(cfg)
    ctx = AttnContext(pattern, block=8)
    pad = torch.tensor([0, 9]) if padded else None
    pins = random_pins(2, L, seed=1)
    if padded:
        ctx.pad, ctx.key_valid = pad, torch.arange(L)[None, :] >= pad[:, None]
        pins &= ctx.key_valid
    ctx.pinned = pinned_indices(pins)
    out = get_kind(kind).forward(q, k, v, rel, ctx)

    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    mask = reference_mask(kind, L, window, stride, horizon, pad)
    mask = mask | (pins[:, None, None, :] & (i >= j))
    dist = (i - j).clamp(0, pattern.span - 1)
    logits = (q @ k.transpose(-1, -2) + torch.einsum("bhid,hijd->bhij", q, rel[:, dist])) / 8**0.5
    ref = logits.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    # local: far pins clip at window - 1 (< horizon), so the clip is tested too
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, (q, k, v, rel), g),
        torch.autograd.grad(ref, (q, k, v, rel), g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def pinned_model(kind: str, **kw) -> MusicTransformer:
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=V, attention=kind, window=8, sparse_stride=4, **kw)
    return MusicTransformer(cfg.with_overrides(pin_tokens=[OPEN, CLOSE])).eval()


def ids_with_stretches(B: int, L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, V, (B, L), generator=g)
    ids[0, 3], ids[0, 30] = OPEN, CLOSE  # a stretch longer than the window, split by chunks
    ids[1, 10], ids[1, 14], ids[1, 40] = OPEN, CLOSE, OPEN  # a short one, then one left open
    ids[2, 50] = CLOSE  # a close with nothing open: no effect
    return ids


def test_marking_pinned_tokens_across_chunks():
    model = pinned_model("local")
    ids = ids_with_stretches(3, 60, seed=1)
    whole = model._pinned(ids, None, None)
    assert whole[0].nonzero().flatten().tolist() == list(range(3, 31))
    assert whole[1].nonzero().flatten().tolist() == [10, 11, 12, 13, 14, *range(40, 60)]
    assert not whole[2].any()
    cache = model.new_cache(3)
    parts = []
    for a, b in ((0, 20), (20, 21), (21, 45), (45, 60)):
        parts.append(model._pinned(ids[:, a:b], cache, None))
        cache.length = b  # what the forward's end() does
    assert torch.equal(torch.cat(parts, 1), whole)


@pytest.mark.parametrize("kind", ["local", "sparse"])
def test_cached_decoding_equals_the_full_forward(kind):
    model = pinned_model(kind, max_relative_distance=24)
    ids = ids_with_stretches(3, 70, seed=2)
    with torch.no_grad():
        full = model(ids)
        plain = MusicTransformer(model.config.with_overrides(pin_tokens=None)).eval()
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(plain(ids)[0, 40:], full[0, 40:])  # the pins matter
        cache = model.new_cache(3)
        chunks = [model(ids[:, :20], cache=cache), model(ids[:, 20:25], cache=cache)]
        chunks += [model(ids[:, t : t + 1], cache=cache) for t in range(25, 70)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-4, rtol=1e-4)
    pinned_slots = int((cache.types == PINNED).sum())
    assert pinned_slots == int(model._pinned(ids, None, None).sum(1).max())  # rows share slots


def test_left_padded_rows_with_pins_match_the_rows_alone():
    model = pinned_model("local")
    ids = ids_with_stretches(3, 60, seed=3)
    short = ids[1:2, 12:]  # opens at 28 (40 - 12) and stays open
    batch = torch.cat([ids[:1], torch.cat([torch.zeros(1, 12, dtype=torch.long), short], 1)])
    mask = torch.ones(2, 60, dtype=torch.bool)
    mask[1, :12] = False
    with torch.no_grad():
        out = model(batch, padding_mask=mask)
        torch.testing.assert_close(out[1, 12:], model(short)[0], atol=1e-4, rtol=1e-4)
        cache = model.new_cache(2)
        model(batch[:, :-4], cache=cache, padding_mask=mask[:, :-4])
        steps = torch.cat([model(batch[:, t : t + 1], cache=cache) for t in range(56, 60)], 1)
    torch.testing.assert_close(steps, out[:, -4:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(attention="relative", pin_tokens=[OPEN, CLOSE]), "pin_tokens needs a banded"),
        (dict(attention="linformer", pin_tokens=[OPEN, CLOSE]), "pin_tokens needs a banded"),
        (dict(attention="local", pin_tokens=[OPEN, OPEN]), "two different token ids"),
        (dict(attention="local", pin_tokens=[OPEN, V]), "two different token ids"),
        (dict(attention="local", pin_tokens=[OPEN]), "two different token ids"),
    ],
)
def test_impossible_pins_fail_at_construction(overrides, words):
    with pytest.raises(ValueError, match=words):
        MusicTransformer(preset("tiny", vocab_size=V, **overrides))


# --- the pinned infilling layout ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_pinned_layout_puts_the_right_side_first_and_the_prefix_before_the_target(tokenizer):
    score = make_score(bars=14, tracks=BAND, seed=4)
    window = np.asarray(encode(tokenizer, score), np.int64)[:600]
    inline = InfillRearranger(tokenizer, 1.0, suffix_tokens=64)
    pinned = InfillRearranger(tokenizer, 1.0, suffix_tokens=64, pinned=True)
    v: InfillVocab = pinned.vocab
    for seed in range(12):
        a = inline.apply(window, np.random.default_rng(seed))
        b = pinned.apply(window, np.random.default_rng(seed))
        marks = [int(np.flatnonzero(b == m)[0]) for m in (v.span, v.suffix, v.end, v.fill)]
        assert marks == sorted(marks) and marks[0] == 0
        given, suffix = b[1 : marks[1]], b[marks[1] + 1 : marks[2]]
        prefix, target = b[marks[2] + 1 : marks[3]], b[marks[3] + 1 :]
        # the inline layout of the same draw: same given part, right side and target, and the
        # prefix right before the span; one sentinel more costs the pinned one a token
        sa, su, f = (int(np.flatnonzero(a == m)[0]) for m in (v.span, v.suffix, v.fill))
        assert np.array_equal(given, a[sa + 1 : su])
        assert (
            np.array_equal(suffix, a[su + 1 : f][: len(suffix)]) and f - su - 1 - len(suffix) <= 1
        )
        assert np.array_equal(prefix, a[sa - len(prefix) : sa]) and sa - len(prefix) <= 1
        assert np.array_equal(target, a[f + 1 :][: len(target)]) and len(target) > 0
    assert pin_tokens(tokenizer) == [v.span, v.end]
    empty = np.zeros(0, np.int64)
    assert layout(empty, empty, empty, v, pinned=True).tolist() == [v.span, v.suffix, v.end, v.fill]


def test_training_with_infill_memory_pins_and_infills(tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    for i in range(6):
        write_midi(root / "midi" / f"p{i}.mid", bars=12, tracks=((0, False), (33, False)), seed=i)
    prepare(root / "midi", root / "prepared", PrepareOptions(workers=1), progress=False)
    settings = dict(batch_size=2, seq_len=64, max_steps=2, eval_every=2, eval_windows=2)
    config = tiny_config(root / "prepared", tmp_path / "run", infill_rate=1.0, **settings)
    with pytest.raises(MusegenError, match="give --infill-rate"):
        dataclasses.replace(config, infill_rate=0.0, infill_memory=True).validate()
    model = preset("tiny", attention="local", window=16, max_relative_distance=32, max_seq_len=512)
    result = train(dataclasses.replace(config, infill_memory=True), model)
    saved = json.loads((result.best_dir / "config.json").read_text())["model"]
    pipe = Pipeline.from_pretrained(result.best_dir)
    assert saved["pin_tokens"] == pin_tokens(pipe.tokenizer)
    plans = []
    real_plan = fill.plan
    monkeypatch.setattr(fill, "plan", lambda *a, **k: plans.append(real_plan(*a, **k)) or plans[-1])
    score = make_score(bars=8, tracks=BAND, seed=5)
    for r in pipe.infill(score, bars=(3, 5), num_samples=3, seed=0):
        check_result(pipe, score, r, 3, 5, targets={0, 1, 2})
    v = InfillVocab.from_tokenizer(pipe.tokenizer)
    prompt = plans[0].prompt  # the pinned layout: right side first, the prefix before the fill
    assert prompt[0] == v.span and prompt[-1] == v.fill and v.end in prompt


def test_a_pinned_checkpoint_round_trips(tmp_path, tokenizer):
    cfg = preset("tiny", vocab_size=len(tokenizer), attention="local", window=16)
    model = MusicTransformer(cfg.with_overrides(pin_tokens=pin_tokens(tokenizer)))
    path = save_pretrained(model, tokenizer, tmp_path / "pinned")
    assert Pipeline.from_pretrained(path).config.pin_tokens == pin_tokens(tokenizer)


def test_the_flag_reaches_train_and_finetune(tmp_path, tokenizer):
    from musegen.cli import build_parser
    from musegen.cli.finetune import build_configs as finetune_configs
    from musegen.cli.train import build_configs as train_configs

    (tmp_path / "data").mkdir()
    args = ["--data", str(tmp_path / "data"), "--infill-rate", "0.5", "--infill-memory"]
    parsed = build_parser().parse_args(["train", "--out", str(tmp_path / "a"), *args])
    assert train_configs(parsed)[0].infill_memory
    cfg = preset("tiny", vocab_size=len(tokenizer), attention="local", window=16)
    base = save_pretrained(MusicTransformer(cfg), tokenizer, tmp_path / "base")
    parsed = build_parser().parse_args(
        ["finetune", "--from", str(base), "--out", str(tmp_path / "b"), *args]
    )
    assert finetune_configs(parsed)[0].infill_memory
