"""The model-structure kinds: ``universal`` (one block shared across depth, ACT) and
``feedback`` (every layer reads a memory of all layers' past states), each against a slow,
obvious reference in float64, for causality, cached decoding, generation and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from musegen.checkpoint import load_pretrained, save_pretrained
from musegen.config import preset
from musegen.generation.sampling import Stopping, sample
from musegen.model import feedback as feedback_module
from musegen.model.cache import FullCache
from musegen.model.feedback import FeedbackStack
from musegen.model.transformer import MusicTransformer
from musegen.model.universal import UniversalStack, average_depth

V = 40
KINDS = [
    ("universal", {}),
    ("universal", {"n_layers": 3, "act_threshold": 0.7}),  # tokens halt at depths 1 and 2
    ("feedback", {}),
    ("feedback", {"feedback_chunk": 3}),  # the chunked approximation
]
IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items()) or 'default'}" for k, kw in KINDS]


def tiny(kind: str, **kw) -> MusicTransformer:
    torch.manual_seed(0)
    kw = {"vocab_size": V, "attention": kind, "max_relative_distance": 5, **kw}
    model = MusicTransformer(preset("tiny", **kw))
    if kind == "universal" and "act_threshold" in kw:  # sharp halting: depths differ by token
        model.stack.halt.weight.data.normal_(0, 20, generator=torch.Generator().manual_seed(1))
    return model


def random_ids(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed))


# --- slow references: a loop over rows, positions, heads ------------------------------------
def attend(attn, h_q, h_keys, dists, n_heads):
    """One query: softmax over keys of ``(q·k + q·E[min(d, R-1)])/√D`` per head, projected."""
    C = h_q.shape[0]
    D = C // n_heads
    w, b = attn.qkv.weight, attn.qkv.bias
    q = (w[:C] @ h_q + b[:C]).view(n_heads, D)
    ks = [(w[C : 2 * C] @ h + b[C : 2 * C]).view(n_heads, D) for h in h_keys]
    vs = [(w[2 * C :] @ h + b[2 * C :]).view(n_heads, D) for h in h_keys]
    R = attn.rel.shape[1]
    heads = []
    for hd in range(n_heads):
        scores = torch.stack(
            [
                q[hd] @ k[hd] + q[hd] @ attn.rel[hd, min(d, R - 1)]
                for k, d in zip(ks, dists, strict=True)
            ]
        )
        p = torch.softmax(scores / D**0.5, 0)
        heads.append(sum(pj * v[hd] for pj, v in zip(p, vs, strict=True)))
    return attn.proj.weight @ torch.cat(heads) + attn.proj.bias


def mlp(block, x):
    return (
        block.out.weight
        @ F.gelu(block.fc.weight @ block.ln2(x) + block.fc.bias, approximate="tanh")
        + block.out.bias
    )


def head(model, x):
    return model.tok_emb.weight @ model.ln_f(x)


def universal_reference(model, ids):
    """Logits ``[B, L, V]`` and the ponder term ``mean(N + R)``, token by token."""
    st, blk, H = model.stack, model.stack.block, model.config.n_heads
    thr, N = model.config.act_threshold, model.config.n_layers
    logits, ponder = [], []
    for row in ids:
        L = len(row)
        state = [model.tok_emb.weight[t] for t in row]
        zero = torch.zeros((), dtype=model.tok_emb.weight.dtype)
        acc, h, halted = [zero] * L, [zero] * L, [False] * L
        for n in range(N):
            inp = [s + st.step_emb[n] for s in state]
            for t in range(L):
                if halted[t]:
                    continue  # a halted token keeps its state (its keys still serve others)
                hs = [blk.ln1(inp[j]) for j in range(t + 1)]
                x = inp[t] + attend(blk.attn, hs[t], hs, [t - j for j in range(t + 1)], H)
                out = x + mlp(blk, x)
                p = torch.sigmoid(st.halt.weight[0] @ inp[t] + st.halt_offset)
                if n == N - 1 or float((h[t] + p).detach()) > thr:
                    acc[t] = acc[t] + (1 - h[t]) * out
                    ponder.append(n + 1 + (1 - h[t]))
                    halted[t] = True
                else:
                    acc[t], h[t] = acc[t] + p * out, h[t] + p
                state[t] = out  # (updated after the step: later queries read step n's inp)
        logits.append(torch.stack([head(model, a) for a in acc]))
    return torch.stack(logits), torch.stack(ponder).mean()


def feedback_reference(model, ids):
    """Logits of the feedback model: chunk by chunk, position by position, layer by layer."""
    layers, H, C = model.stack.layers, model.config.n_heads, model.config.feedback_chunk
    w = model.stack.mem_logits.softmax(0)
    logits = []
    for row in ids:
        L, memory, outs = len(row), [], []
        for c0 in range(0, L, C):
            chunk = range(c0, min(c0 + C, L))
            xs = {t: model.tok_emb.weight[row[t]] for t in chunk}
            states = {t: [xs[t]] for t in chunk}
            for layer in layers:
                new = {}
                for t in chunk:  # memory of earlier chunks, then this layer's chunk inputs
                    keys = [layer.ln1(m) for m in memory] + [layer.ln1(xs[j]) for j in chunk]
                    keys = keys[: t + 1]
                    x = xs[t] + attend(layer.attn, layer.ln1(xs[t]), keys, range(t, -1, -1), H)
                    new[t] = x + mlp(layer, x)
                    states[t].append(new[t])
                xs = new
            memory += [sum(wl * s for wl, s in zip(w, states[t], strict=True)) for t in chunk]
            outs += [head(model, xs[t]) for t in chunk]
        logits.append(torch.stack(outs))
    return torch.stack(logits)


def reference(model, ids):
    if isinstance(model.stack, UniversalStack):
        return universal_reference(model, ids)
    return feedback_reference(model, ids), None


@pytest.mark.parametrize(("kind", "kw"), KINDS, ids=IDS)
def test_forward_and_gradients_match_the_slow_reference(kind, kw):
    check_against_reference(kind, kw)


@pytest.mark.parametrize("chunk", [1, 3])
def test_feedback_memory_kept_in_several_parts_matches_the_reference(monkeypatch, chunk):
    """A training forward keeps the memory in parts of ``PART`` positions (``O(L)`` saved
    keys): with parts of 2 positions, 7 positions span several, and nothing changes."""
    monkeypatch.setattr(feedback_module, "PART", 2)
    check_against_reference("feedback", {"feedback_chunk": chunk})


def check_against_reference(kind: str, kw: dict) -> None:
    model = tiny(kind, **kw).double().train()
    ids = random_ids(2, 7)
    weights = torch.randn(2, 7, V, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    logits = model(ids)
    aux = model.auxiliary_loss()
    ref_logits, ref_ponder = reference(model, ids)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-9, atol=1e-9)
    if ref_ponder is not None:
        torch.testing.assert_close(aux, model.config.ponder_cost * ref_ponder)
        varied = model.config.act_threshold < 0.99
        assert model.stack.last_depth.unique().numel() == (2 if varied else 1)
    got = grads((logits * weights).sum() + (aux if aux is not None else 0))
    ref_aux = 0 if ref_ponder is None else model.config.ponder_cost * ref_ponder
    want = grads((ref_logits * weights).sum() + ref_aux)
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-8, atol=1e-10, msg=name)


def test_universal_shares_one_block_across_depth():
    uni, rel = tiny("universal", n_layers=4), tiny("relative", n_layers=4)
    assert not any(".blocks." in n for n, _ in uni.named_parameters())
    assert uni.num_parameters() < rel.num_parameters() / 2
    assert len(uni.new_cache(1).k) == 4  # one cache slot per depth step


@pytest.mark.parametrize(("kind", "kw"), KINDS, ids=IDS)
def test_changing_token_t_never_changes_earlier_outputs(kind, kw):
    model = tiny(kind, **kw).eval()
    ids = random_ids(2, 12)
    other = ids.clone()
    other[:, 6] = (other[:, 6] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(other)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, 6], b[:, 6])


@pytest.mark.parametrize(("kind", "kw"), KINDS, ids=IDS)
def test_cached_decoding_equals_the_full_forward(kind, kw):
    model = tiny(kind, **kw).eval()
    ids = random_ids(2, 20, seed=1)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2)
        parts = [model(ids[:, :4], cache=cache), model(ids[:, 4:6], cache=cache)]
        parts += [model(ids[:, t : t + 1], cache=cache) for t in range(6, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 20 and cache.memory_bytes() > 0


@pytest.mark.parametrize(("kind", "kw"), KINDS[:3], ids=IDS[:3])
def test_left_padding_does_not_change_a_row(kind, kw):
    model = tiny(kind, **kw).eval()
    ids = random_ids(2, 9, seed=2)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    with torch.no_grad():
        padded = model(ids, padding_mask=mask)
        alone = model(ids[1:, 3:])
        cache = model.new_cache(2)
        model(ids[:, :5], cache=cache, padding_mask=mask[:, :5])
        steps = [model(ids[:, t : t + 1], cache=cache) for t in range(5, 9)]
    torch.testing.assert_close(padded[1, 3:], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), padded[:, 5:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kind", "kw"), KINDS, ids=IDS)
def test_generates_through_the_sampler_with_and_without_the_cache(kind, kw):
    model = tiny(kind, max_seq_len=16, **kw).eval()
    prompts = [[1, 2, 3, 4, 5], [6]]
    stop = Stopping(max_new_tokens=20)
    cached = sample(model, prompts, [], stop, seeds=[0, 1])
    recomputed = sample(model, prompts, [], stop, seeds=[0, 1], use_cache=False)
    assert [len(r) for r in cached] == [20, 20]  # past max_seq_len: the sampler slides
    if kw.get("feedback_chunk", 1) == 1:  # chunks count padding: see musegen.model.feedback
        assert cached == recomputed


@pytest.mark.parametrize("kind", ["universal", "feedback"])
def test_saved_and_loaded_by_name(kind, tmp_path: Path):
    from musegen.tokenizer import build_tokenizer

    tok = build_tokenizer()
    extra = {"act_threshold": 0.7} if kind == "universal" else {"feedback_chunk": 2}
    torch.manual_seed(0)
    model = MusicTransformer(preset("tiny", vocab_size=len(tok), attention=kind, **extra))
    loaded = load_pretrained(save_pretrained(model, tok, tmp_path / "ckpt"))
    assert loaded.config.attention == kind
    assert all(getattr(loaded.config, k) == v for k, v in extra.items())
    ids = torch.randint(0, len(tok), (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), model.eval()(ids))


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"attention": "universal", "attention_backend": "flex"}, "attention_backend='flex'"),
        ({"attention": "feedback", "attention_backend": "flex"}, "attention_backend='flex'"),
        ({"attention": "universal", "act_threshold": 0.0}, "act_threshold"),
        ({"attention": "universal", "act_threshold": 1.5}, "act_threshold"),
        ({"attention": "universal", "ponder_cost": -1.0}, "ponder_cost"),
        ({"attention": "feedback", "feedback_chunk": 0}, "feedback_chunk"),
        ({"attention": "feedback", "feedback_chunk": 999}, "feedback_chunk.*max_seq_len"),
        ({"attention": "feedback", "max_relative_distance": 0}, "max_relative_distance"),
    ],
)
def test_impossible_options_are_refused_at_construction(kw, named):
    with pytest.raises(ValueError, match=named):
        MusicTransformer(preset("tiny", vocab_size=V, **kw))


def test_feedback_refuses_a_plain_full_cache():
    model = tiny("feedback").eval()
    with pytest.raises(ValueError, match=r"attention='feedback'.*memory cache.*FullCache"):
        model(random_ids(1, 4), cache=FullCache(2, 1))


def test_feedback_memory_mixes_every_layer():
    model = tiny("feedback", n_layers=3)
    weights = model.stack.memory_weights()
    assert isinstance(model.stack, FeedbackStack) and weights.shape == (4,)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    assert model.auxiliary_loss() is None


def test_a_heavy_ponder_cost_lowers_the_depth():
    model = tiny("universal", n_layers=4, act_threshold=0.5, ponder_cost=1.0).train()
    ids = random_ids(4, 16, seed=4)
    before = average_depth(model, ids)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(15):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
        (loss + model.auxiliary_loss()).backward()
        opt.step()
        opt.zero_grad()
    after = average_depth(model, ids)
    assert 1.0 <= after < before <= 4.0, (before, after)


def test_average_depth_is_reported_per_pass_and_over_a_generation():
    model = tiny("universal", n_layers=3, act_threshold=0.5).eval()
    depth = average_depth(model, random_ids(2, 10))
    assert 1.0 <= depth <= 3.0
    model.stack.reset_depth()
    sample(model, [[1, 2, 3]], [], Stopping(max_new_tokens=8), seeds=[0])
    assert 1.0 <= average_depth(model) <= 3.0
    with pytest.raises(ValueError, match="universal"):
        average_depth(tiny("relative"))
