"""The kinds with modules of their own (linformer, adaptive_span, routing, synthesizer,
entmax): each against a slow, obvious reference in float64 (forward, gradients, gradcheck),
causality, cached decoding, generation, save/load and the options they refuse."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from musegen.checkpoint import load_pretrained, save_pretrained
from musegen.config import preset
from musegen.generation.sampling import Stopping, sample
from musegen.model.attention import AttnContext, Pattern, get_kind
from musegen.model.attention.adaptive_span import learned_spans
from musegen.model.attention.entmax import attention_sparsity, entmax, entmax_bisect, sparsemax
from musegen.model.transformer import MusicTransformer

V = 40
KINDS = ("linformer", "adaptive_span", "routing", "synthesizer", "entmax")
SMALL = dict(linformer_block=4, linformer_rank=3, adaptive_span_max=8, adaptive_span_ramp=3)


def tiny(kind: str, **kw) -> MusicTransformer:
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=V, attention=kind, window=4, **{**SMALL, **kw})
    return MusicTransformer(cfg).eval()


# --- slow, obvious references: one query at a time ------------------------------------------
def rel_logits(q, k, rel, i, js):
    """(q_i·k_j + q_i·E[min(i-j, R-1)]) / √D for one head and the keys ``js``."""
    js = torch.tensor(js)
    d = (i - js).clamp(max=rel.shape[0] - 1)
    return (k[js] @ q[i] + rel[d] @ q[i]) / math.sqrt(q.shape[-1])


def ref_adaptive(m, q, k, v, rel, h):
    L, out = q.shape[0], []
    z = m.max_span * torch.sigmoid(m.span_logit[h])
    for i in range(L):
        js = [j for j in range(i + 1) if i - j < m.max_span]
        p = rel_logits(q, k, rel, i, js).softmax(0)
        p = p * ((m.ramp + z - (i - torch.tensor(js))) / m.ramp).clamp(0, 1)
        p = p / (p.sum() + 1e-8)
        out.append(p @ v[js])
    return torch.stack(out)


def ref_entmax_weights(s, alpha):
    """α-entmax by trying every support size (closed-form τ on the support), α ∈ {1.5, 2}."""
    x, best = s * (alpha - 1), None
    srt = torch.sort(x, descending=True).values
    for n in range(1, len(x) + 1):
        top = srt[:n]
        if alpha == 2:
            tau = (top.sum() - 1) / n
        else:  # Σ (x_j - τ)² = 1 over the support
            mean = top.mean()
            tau = mean - torch.sqrt(((1 - ((top - mean) ** 2).sum()) / n).clamp_min(0))
        if bool(top[-1] > tau):
            best = tau
    return (x - best).clamp_min(0) ** (1 / (alpha - 1))


def ref_entmax(m, q, k, v, rel, h):
    out = []
    for i in range(q.shape[0]):
        p = ref_entmax_weights(rel_logits(q, k, rel, i, list(range(i + 1))), m.alpha)
        out.append(p @ v[: i + 1])
    return torch.stack(out)


def ref_routing(m, q, k, v, rel, h):
    c = m.centroids[h]

    def cluster(x):
        return int(torch.argmax(c @ (x / x.norm())))

    out = []
    for i in range(q.shape[0]):
        js = [j for j in range(i + 1) if i - j < m.window or cluster(q[i]) == cluster(k[j])]
        p = rel_logits(q, k, rel, i, js).softmax(0)
        out.append(p @ v[js])
    return torch.stack(out)


def ref_synthesizer(m, q, k, v, rel, h):
    out = []
    for i in range(q.shape[0]):
        if m.mode == "dense":
            logits = torch.relu(q[i] @ m.w1[h] + m.b1[h]) @ m.w2[h]
        else:
            logits = m.r2[h] @ m.r1[h, i]
        out.append(logits[: i + 1].softmax(0) @ v[: i + 1])
    return torch.stack(out)


def ref_linformer(m, q, k, v, rel, h):
    c, out = m.block, []
    for i in range(q.shape[0]):
        b = i // c
        js = list(range(b * c, i + 1))
        logits, values = rel_logits(q, k, rel, i, js), v[js]
        if b:  # the mean of the earlier blocks' projections, block by block
            sk = sum(m.e_k[h] @ k[n * c : (n + 1) * c] for n in range(b)) / b
            sv = sum(m.e_v[h] @ v[n * c : (n + 1) * c] for n in range(b)) / b
            logits = torch.cat([logits, sk @ q[i] / math.sqrt(q.shape[-1])])
            values = torch.cat([values, sv])
        out.append(logits.softmax(0) @ values)
    return torch.stack(out)


REFERENCES = {
    "linformer": ref_linformer,
    "adaptive_span": ref_adaptive,
    "routing": ref_routing,
    "synthesizer": ref_synthesizer,
    "entmax": ref_entmax,
}
VARIANTS = [
    ("linformer", {}),
    ("adaptive_span", {}),
    ("routing", {}),
    ("synthesizer", {}),
    ("synthesizer", {"synthesizer_mode": "random"}),
    ("entmax", {}),
    ("entmax", {"entmax_alpha": 2.0}),
]


def mechanism_and_inputs(kind, L=11, **kw):
    model = tiny(kind, max_seq_len=16, **kw).double()
    mech = model.blocks[0].attn.mech
    H, D = model.config.n_heads, model.config.head_dim
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, H, L, D, generator=g, dtype=torch.float64) for _ in range(3))
    rel = torch.randn(H, 6, D, generator=g, dtype=torch.float64)
    if kind == "adaptive_span":  # spans of 2.4 and 6.1 tokens: the ramp cuts inside the band
        mech.span_logit.data = torch.tensor([-0.8, 1.0], dtype=torch.float64)
    spec = get_kind(kind)
    return mech, q, k, v, (rel if spec.has_relative else None)


def run(mech, q, k, v, rel):
    return mech(q, k, v, rel, AttnContext(Pattern(), 256), None, 0)


@pytest.mark.parametrize(("kind", "kw"), VARIANTS)
def test_forward_and_gradients_match_the_reference(kind, kw):
    mech, q, k, v, rel = mechanism_and_inputs(kind, **kw)
    inputs = [t.requires_grad_() for t in (q, k, v, rel) if t is not None]
    params = [p for p in mech.parameters() if p.requires_grad]
    out = run(mech, q, k, v, rel)
    heads = [
        REFERENCES[kind](mech, q[0, h], k[0, h], v[0, h], rel[h] if rel is not None else None, h)
        for h in range(q.shape[1])
    ]
    ref = torch.stack(heads)[None]
    torch.testing.assert_close(out, ref, atol=1e-8, rtol=1e-6)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs + params, g, allow_unused=True)
    want = torch.autograd.grad(ref, inputs + params, g, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(("kind", "kw"), VARIANTS)
def test_gradcheck(kind, kw):
    mech, q, k, v, rel = mechanism_and_inputs(kind, L=5, **kw)
    inputs = tuple(t.requires_grad_() for t in (q, k, v) + ((rel,) if rel is not None else ()))

    def fn(*xs):
        return run(mech, *xs[:3], xs[3] if rel is not None else None)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_entmax_functions():
    s = torch.randn(4, 9, dtype=torch.float64)
    s[0, 3] = float("-inf")
    for alpha in (1.5, 2.0):
        p = entmax(s, alpha)
        torch.testing.assert_close(p.sum(-1), torch.ones(4, dtype=torch.float64))
        for row, want in zip(p, s, strict=True):
            torch.testing.assert_close(row, ref_entmax_weights(want, alpha))
    assert p[0, 3] == 0
    torch.testing.assert_close(entmax_bisect(s, 2.0), sparsemax(s))
    assert torch.autograd.gradcheck(
        lambda x: entmax(x, 1.3), (s[1:].clone().requires_grad_(),), fast_mode=True
    )


# --- the model: causality, cache, generation, save/load ---------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_changing_token_t_never_changes_earlier_outputs(kind):
    model = tiny(kind)
    ids = torch.randint(0, V, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        base = model(ids)
        for t in (0, 7, 16, 29):
            changed = ids.clone()
            changed[0, t] = (changed[0, t] + 1) % V
            out = model(changed)
            torch.testing.assert_close(out[:, :t], base[:, :t], atol=0, rtol=0)
            assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("kind", KINDS)
def test_cached_decoding_equals_the_full_forward(kind):
    model = tiny(kind)
    ids = torch.randint(0, V, (2, 37), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2)
        chunks = [model(ids[:, :9], cache=cache), model(ids[:, 9:14], cache=cache)]
        chunks += [model(ids[:, t : t + 1], cache=cache) for t in range(14, 37)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_generates_through_the_sampler(kind):
    model = tiny(kind, max_seq_len=16)
    out = sample(model, [[1, 2, 3], [4]], [], Stopping(max_new_tokens=30), seeds=[0, 1])
    assert [len(row) for row in out] == [30, 30]


@pytest.mark.parametrize("kind", KINDS)
def test_saved_and_loaded_by_name(kind, tmp_path: Path):
    from musegen.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=len(tok), attention=kind, **SMALL)
    model = MusicTransformer(cfg)
    model.train()(torch.randint(0, len(tok), (1, 20)))  # routing: moves its centroids
    loaded = load_pretrained(save_pretrained(model, tok, tmp_path / "ckpt"))
    assert loaded.config.attention == kind
    ids = torch.randint(0, len(tok), (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), model.eval()(ids))


@pytest.mark.parametrize(
    ("kind", "options", "named"),
    [
        ("adaptive_span", {"adaptive_span_max": 200}, "adaptive_span_max"),
        ("adaptive_span", {"adaptive_span_ramp": 0}, "adaptive_span_ramp"),
        ("routing", {"routing_clusters": 0}, "routing_clusters"),
        ("entmax", {"entmax_alpha": 1.0}, "entmax_alpha"),
        ("entmax", {"entmax_alpha": 0.5}, "entmax_alpha"),
        ("synthesizer", {"synthesizer_mode": "both"}, "synthesizer_mode"),
        ("linformer", {"linformer_rank": 0}, "linformer_rank"),
        ("linformer", {"linformer_block": 500}, "linformer_block"),
    ]
    + [(kind, {"attention_backend": "flex"}, "attention_backend") for kind in KINDS],
)
def test_impossible_options_fail_at_construction(kind, options, named):
    with pytest.raises(ValueError, match=named):
        MusicTransformer(preset("tiny", attention=kind, **{**SMALL, **options}))


# --- what each kind reports -----------------------------------------------------------------
def test_adaptive_span_penalty_spans_and_a_shrinking_cache():
    model = tiny("adaptive_span", adaptive_span_max=32, adaptive_span_ramp=4)
    aux = model.auxiliary_loss()
    aux.backward()
    assert model.blocks[0].attn.mech.span_logit.grad is not None
    spans = learned_spans(model)
    assert len(spans) == 2 and all(len(s) == 2 for s in spans)
    assert all(0 < x < 32 for s in spans for x in s)

    def cache_tokens() -> int:
        cache = model.new_cache(1)
        with torch.no_grad():
            model(torch.randint(0, V, (1, 40)), cache=cache)
        return cache.state[0]["k"].shape[2]

    assert cache_tokens() == 20  # ceil(16 + 4): spans start at max/2
    for block in model.blocks:
        block.attn.mech.span_logit.data.fill_(-3.0)  # spans of 1.5 tokens
    assert cache_tokens() == 6


def test_entmax_reports_exact_zeros():
    model = tiny("entmax", entmax_alpha=2.0)
    sparsity = attention_sparsity(model, torch.randint(0, V, (1, 40)))
    assert len(sparsity) == 2 and all(0 < s < 1 for s in sparsity)


def test_routing_centroids_move_in_training_only():
    model = tiny("routing")
    before = model.blocks[0].attn.mech.centroids.clone()
    ids = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        model(ids)
        torch.testing.assert_close(model.blocks[0].attn.mech.centroids, before)
        model.train()(ids)
    assert not torch.equal(model.blocks[0].attn.mech.centroids, before)


def test_linformer_cache_stays_constant():
    model = tiny("linformer", max_seq_len=128)
    cache = model.new_cache(1)
    sizes = []
    with torch.no_grad():
        for t in range(0, 100):
            model(torch.tensor([[t % V]]), cache=cache)
            sizes.append(cache.memory_bytes())
    assert max(sizes[20:]) == max(sizes[:20])
