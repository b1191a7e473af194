"""The model: cached decoding equals a full pass, padding, long generation, config validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from musegen.config import ModelConfig, preset
from musegen.model.attention import kind_names
from musegen.model.cache import FullCache, RingCache
from musegen.model.linear import Linear
from musegen.model.transformer import MusicTransformer

V = 40
ATTENTION_KINDS = kind_names()


def tiny(kind: str, **kw) -> MusicTransformer:
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=V, attention=kind, window=8, sparse_stride=4, **kw)
    return MusicTransformer(cfg).eval()


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_cached_decoding_equals_full_forward(kind):
    model = tiny(kind, max_relative_distance=24)
    ids = torch.randint(0, V, (3, 70), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(3)
        chunks = [model(ids[:, :20], cache=cache), model(ids[:, 20:25], cache=cache)]
        chunks += [model(ids[:, t : t + 1], cache=cache) for t in range(25, 70)]
    assert cache.length == 70
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_left_padded_row_matches_the_same_sequence_alone(kind):
    model = tiny(kind)
    g = torch.Generator().manual_seed(2)
    long, short = (
        torch.randint(0, V, (1, 30), generator=g),
        torch.randint(0, V, (1, 19), generator=g),
    )
    pad = 30 - 19
    batch = torch.cat([long, torch.cat([torch.zeros(1, pad, dtype=torch.long), short], 1)])
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, :pad] = False
    with torch.no_grad():
        out = model(batch, padding_mask=mask)
        alone = model(short)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[1, pad:], alone[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[0], model(long)[0], atol=1e-4, rtol=1e-4)
        # the cache remembers the padding: continue both rows one token at a time
        cache = model.new_cache(2)
        model(batch[:, :-3], cache=cache, padding_mask=mask[:, :-3])
        steps = [model(batch[:, t : t + 1], cache=cache) for t in range(27, 30)]
    torch.testing.assert_close(torch.cat(steps, 1)[1], alone[0, -3:], atol=1e-4, rtol=1e-4)


def test_padding_mask_must_be_left_padding():
    model = tiny("relative")
    ids = torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="LEFT"):
        model(ids, padding_mask=torch.tensor([[True, False, True, True, True]]))


@pytest.mark.parametrize("kind", ["local", "sparse"])
def test_generation_runs_past_max_seq_len_with_bounded_cache(kind):
    model = tiny(kind, max_seq_len=48)
    steps = 3 * model.config.max_seq_len
    cache = model.new_cache(2)
    assert isinstance(cache, RingCache)
    tok = torch.zeros(2, 1, dtype=torch.long)
    sizes = []
    with torch.no_grad():
        for t in range(steps):
            logits = model(tok, cache=cache)
            assert torch.isfinite(logits).all()
            tok = logits[:, -1].argmax(-1, keepdim=True)
            if t in (10, steps - 1):
                sizes.append(cache.memory_bytes())
    assert cache.length == steps
    assert sizes[0] == sizes[1]  # allocated once, never grows
    slots = model.config.window + (cache.summaries if kind == "sparse" else 0)
    assert cache.k[0].shape[2] == slots


def test_sparse_ring_cache_matches_full_forward_far_past_the_window():
    """Summaries must survive in the ring long after their tokens left the window."""
    model = tiny("sparse", max_relative_distance=40)
    ids = torch.randint(0, V, (1, 100), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1)
        steps = [model(ids[:, t : t + 1], cache=cache) for t in range(100)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_absolute_refuses_to_go_past_max_seq_len():
    model = tiny("absolute")
    L = model.config.max_seq_len
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.zeros(1, L, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="max_seq_len"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, L + 1, dtype=torch.long))


def test_full_cache_grows_without_losing_the_past():
    cache = FullCache(n_layers=1, batch_size=1, capacity=4)
    written = []
    for t in range(10):
        cache.begin(1)
        k = torch.full((1, 2, 1, 3), float(t))
        K, _ = cache.update(0, k, -k)
        cache.end()
        written.append(t)
        assert K.shape[2] == t + 1
    assert K[0, 0, :, 0].tolist() == [float(t) for t in written]
    assert cache.k[0].shape[2] == 16


def test_ring_cache_keeps_only_the_window():
    cache = RingCache(n_layers=1, batch_size=1, window=3)
    for t in range(7):
        keys = cache.begin(1)
        K, _ = cache.update(0, torch.full((1, 1, 1, 1), float(t)), torch.zeros(1, 1, 1, 1))
        cache.end()
    assert sorted(K.flatten().tolist()) == [4.0, 5.0, 6.0]
    assert sorted(keys.k_index[0].tolist()) == [4, 5, 6]


def test_tied_head_and_parameter_count():
    model = tiny("relative")
    c = model.config
    assert model.head is None
    per_layer = 3 * c.d_model * (c.d_model + 1) + c.d_model * (c.d_model + 1)
    per_layer += 2 * c.d_model * c.d_ff + c.d_ff + c.d_model + 4 * c.d_model
    per_layer += c.n_heads * c.max_relative_distance * c.head_dim
    expected = V * c.d_model + c.n_layers * per_layer + 2 * c.d_model
    assert model.num_parameters() == expected


def test_training_step_reduces_loss():
    model = tiny("local").train()
    ids = torch.randint(0, V, (4, 33), generator=torch.Generator().manual_seed(4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(attention="rotary"), "attention"),
        (dict(d_model=30, n_heads=4), "divisible"),
        (dict(attention="local", window=300, max_relative_distance=256), "window"),
        (dict(attention="sparse", window=16, sparse_stride=32), "sparse_stride"),
        (dict(attention="absolute", attention_backend="flex"), "flex"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_impossible_configs_fail_at_construction(overrides, words):
    with pytest.raises(ValueError, match=words):
        MusicTransformer(ModelConfig(**overrides))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["relative", "local", "sparse"])
def test_flex_backend_model_matches_torch_backend_under_bf16_autocast(kind):
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=V, attention=kind, window=32, sparse_stride=16)
    model = MusicTransformer(cfg).cuda().eval()
    flex = MusicTransformer(cfg.with_overrides(attention_backend="flex")).cuda().eval()
    flex.load_state_dict(model.state_dict())
    ids = torch.randint(0, V, (2, 128), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(flex(ids), model(ids), atol=1e-3, rtol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = flex(ids)
        logits.float().sum().backward()
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("rows", [1, 3])
def test_decode_products_match_linear_and_follow_weight_changes(rows):
    """The split weight copies give F.linear's result and are rebuilt when the weight moves."""
    torch.manual_seed(0)
    layer = Linear(16, 64)
    x = torch.randn(rows, 1, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        layer.weight.mul_(2.0)  # an in-place update, as an optimiser step makes
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        layer.load_state_dict({"weight": torch.ones(64, 16), "bias": torch.zeros(64)})
        torch.testing.assert_close(layer(x), x.sum(-1, keepdim=True).expand(rows, 1, 64))
    out = layer(x)  # with gradients: the plain product, and gradients flow
    out.sum().backward()
    assert layer.weight.grad is not None


def test_decoding_after_a_training_step_uses_the_new_weights():
    model = tiny("relative")
    ids = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(4))

    def decoded() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            cache = model.new_cache(1)
            model(ids[:, :-1], cache=cache)
            return model(ids[:, -1:], cache=cache)[0, -1]

    before = decoded()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(ids).logsumexp(-1).mean().backward()
    opt.step()
    after = decoded()
    with torch.no_grad():
        full = model.eval()(ids)[0, -1]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, full, atol=1e-4, rtol=1e-4)


def test_long_relative_training_recomputes_blocks_with_the_same_gradients(monkeypatch):
    import musegen.model.attention.kernels as attention
    import musegen.model.transformer as model_module

    model = tiny("relative").train()
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(5))

    def grads() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(ids).logsumexp(-1).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    calls = []
    real = attention.checkpoint
    monkeypatch.setattr(attention, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(model_module, "RECOMPUTE_BYTES", 0)  # as if the sequence were long
    recomputed = grads()
    assert len(calls) == model.config.n_layers
    for a, b in zip(plain, recomputed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_a_model_built_under_inference_mode_decodes_like_its_forward():
    ids = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        model = tiny("relative")
        cache = model.new_cache(2)
        model(ids[:, :-1], cache=cache)
        step = model(ids[:, -1:], cache=cache)[:, -1]
        torch.testing.assert_close(step, model(ids)[:, -1], atol=1e-4, rtol=1e-4)
