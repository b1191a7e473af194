"""Each attention kind against a slow, obvious reference, forward and gradients, in float64."""

from __future__ import annotations

import pytest
import torch

from musegen.config import ModelConfig
from musegen.model.attention import AttnContext, get_kind, kind_names, skewed_band_bias

# kinds that are plain attention functions; kinds with modules of their own (spec.module) or
# their own stack (spec.stack) have references in tests/test_attention_family.py and the like
ATTENTION_KINDS = tuple(
    n for n in kind_names() if get_kind(n).module is None and get_kind(n).stack is None
)


def context(kind, window, stride, horizon, block):
    """The context a model of ``kind`` with these settings gives its layers."""
    cfg = ModelConfig(
        attention=kind, window=window, sparse_stride=stride, max_relative_distance=horizon
    )
    return AttnContext(get_kind(kind).pattern(cfg), block)


def attend(kind, q, k, v, rel, ctx):
    return get_kind(kind).forward(q, k, v, rel, ctx)


def naive_relative_logits(q, k, rel):
    """(QKᵀ + S_rel)/√D with S_rel[i, j] = q_i·E[min(i-j, R-1)], built from an L×L×D tensor."""
    L, D, R = q.shape[-2], q.shape[-1], rel.shape[1]
    i = torch.arange(L)
    dist = (i[:, None] - i[None, :]).clamp(0, R - 1).to(q.device)  # [L, L]
    E_ij = rel[:, dist]  # [H, L, L, D] — the tensor the real code never builds
    s_rel = torch.einsum("bhid,hijd->bhij", q, E_ij)
    return (q @ k.transpose(-1, -2) + s_rel) / D**0.5


def reference_mask(kind, L, window, stride, horizon, pad=None):
    """Explicit boolean mask [B or 1, 1, L, L] written out from the definitions."""
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    d = i - j
    m = (d >= 0) if kind in ("absolute", "relative") else (d >= 0) & (d < window)
    m = m[None, None]
    if kind == "sparse":
        pads = pad if pad is not None else torch.zeros(1, dtype=torch.long)
        real_j = j[None] - pads[:, None, None]  # summary columns counted on real positions
        summary = (real_j >= 0) & (real_j % stride == stride - 1) & (d >= window) & (d < horizon)
        m = m | summary[:, None]
    if pad is not None:
        key_ok = (j[None] >= pad[:, None, None])[:, None]  # [B, 1, 1, L]
        m = (m & key_ok) | (d == 0)
    return m


def reference_attention(kind, q, k, v, rel, window, stride, horizon, pad=None):
    D = q.shape[-1]
    if kind == "absolute":
        logits = q @ k.transpose(-1, -2) / D**0.5
    else:
        logits = naive_relative_logits(q, k, rel)
    mask = reference_mask(kind, q.shape[-2], window, stride, horizon, pad).to(q.device)
    return logits.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def make_inputs(B=2, H=2, L=45, D=8, R=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(3)]
    rel = torch.randn(H, R, D, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (*tensors, rel)]


def run_both(kind, block, window=7, stride=3, horizon=20, pad=None, L=45):
    q, k, v, rel = make_inputs(L=L, R=horizon)
    ctx = context(kind, window, stride, horizon, block)
    if pad is not None:
        ctx.pad = pad
        ctx.key_valid = torch.arange(L)[None, :] >= pad[:, None]
    out = attend(kind, q, k, v, None if kind == "absolute" else rel, ctx)
    ref = reference_attention(kind, q, k, v, rel, window, stride, horizon, pad)
    return (q, k, v, rel), out, ref


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("block", [4, 16, 64])
def test_forward_and_gradients_match_reference(kind, block):
    inputs, out, ref = run_both(kind, block)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    wrt = inputs if kind != "absolute" else inputs[:3]
    got = torch.autograd.grad(out, wrt, g)
    want = torch.autograd.grad(ref, wrt, g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_left_padding_matches_reference_and_has_no_nan(kind):
    pad = torch.tensor([0, 11])
    inputs, out, ref = run_both(kind, block=8, pad=pad)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), inputs[0])
    assert torch.isfinite(g).all()


def test_relative_distances_beyond_the_table_are_clipped():
    """L > max_relative_distance: far keys share the last embedding, as in the reference."""
    _, out, ref = run_both("relative", block=16, horizon=10, L=40)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_skew_never_builds_more_than_block_by_keys():
    q = torch.randn(1, 2, 8, 4)
    rel = torch.randn(2, 30, 4)
    bias = skewed_band_bias(q, rel, n_keys=20, n_dist=20)
    assert bias.shape == (1, 2, 8, 20)
    # query r (absolute position 12 + r) vs key c: distance 12 + r - c
    r, c = 3, 5
    expected = q[0, 1, r] @ rel[1, 12 + r - c] / 2.0
    torch.testing.assert_close(bias[0, 1, r, c], expected)
    assert torch.isinf(bias[0, 0, 0, 13])  # a future key is masked


def test_sparse_sees_far_summaries_local_does_not():
    """A value change at a summary column far back changes sparse outputs, not local ones."""
    for kind, should_change in (("local", False), ("sparse", True)):
        q, k, v, rel = (t.detach() for t in make_inputs(L=40, R=40))
        ctx = context(kind, 6, 4, 40, 8)
        out = attend(kind, q, k, v, rel, ctx)
        v2 = v.clone()
        v2[:, :, 3] += 10.0  # position 3 is a summary column for stride 4
        out2 = attend(kind, q, k, v2, rel, ctx)
        changed = (out2[:, :, 30:] - out[:, :, 30:]).abs().max() > 1e-6
        assert bool(changed) == should_change


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["relative", "local", "sparse"])
def test_flex_backend_matches_reference(kind):
    from musegen.model.attention.kernels import flex_attention

    q, k, v, rel = (
        t.detach().float().cuda().requires_grad_() for t in make_inputs(L=256, D=16, R=64)
    )
    ctx = context(kind, 32, 16, 64, 64)
    out = flex_attention(q, k, v, rel, ctx)
    ref = reference_attention(kind, q, k, v, rel, 32, 16, 64)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, rel), g)
    want = torch.autograd.grad(ref, (q, k, v, rel), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
