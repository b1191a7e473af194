"""Attention kinds are specs in a registry: nobody outside the package compares a kind's name,
and a new kind is one module (here: this file) plus its registration."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import musegen
from musegen.checkpoint import load_pretrained, save_pretrained
from musegen.config import ModelConfig, preset
from musegen.errors import CheckpointError
from musegen.generation.sampling import Stopping, sample
from musegen.model.attention import (
    AttentionSpec,
    Pattern,
    additive_mask,
    get_kind,
    kind_names,
    register,
    unregister,
)
from musegen.model.cache import FullCache, RingCache
from musegen.model.transformer import MusicTransformer

PACKAGE = Path(musegen.__file__).parent
ATTENTION_PACKAGE = PACKAGE / "model" / "attention"
BUILTIN = kind_names()
V = 40


# --- no name comparisons outside the attention package ------------------------------------
def _names_in(node: ast.AST, names) -> list[str]:
    """Kind names among a literal string or the elements of a tuple/list/set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in names else []
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [n for elt in node.elts for n in _names_in(elt, names)]
    return []


def _is_attention(node: ast.AST) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name == "attention"


def name_comparisons(source: str, names=BUILTIN) -> list[tuple[int, str]]:
    """(line, what) for every place ``source`` tells kinds apart by name.

    Caught: a comparison (``==``, ``!=``, ``in``, ``not in``) with a kind's name or a collection
    holding one; ``.attention`` compared with any string literal; a ``match`` case on a kind's
    name; and a literal collection (tuple, list, set, dict keys) of two or more kind names,
    which is how a hidden set of kinds starts (``BOUNDED = ("absolute", "relative")``).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            hits = [n for op in operands for n in _names_in(op, names)]
            strings = any(
                isinstance(op, ast.Constant) and isinstance(op.value, str) for op in operands
            )
            if hits or (strings and any(map(_is_attention, operands))):
                found.append((node.lineno, f"compares with {hits or 'a string'}"))
        elif isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue):
            if _names_in(node.pattern.value, names):
                found.append((node.pattern.lineno, "matches a kind's name"))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict):
            elts = node.keys if isinstance(node, ast.Dict) else node.elts
            hits = [n for elt in elts if elt is not None for n in _names_in(elt, names)]
            if len(hits) >= 2:
                found.append((node.lineno, f"lists kinds {hits}"))
    return found


def test_no_module_outside_the_attention_package_compares_a_kind_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ATTENTION_PACKAGE in path.parents:
            continue
        for line, what in name_comparisons(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not offenders, "ask the AttentionSpec instead:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "snippet",
    [
        'if config.attention == "relative": pass',
        'if "local" != c.attention: pass',
        'ok = kind in ("local", "sparse")',
        'ok = c.attention not in {"absolute"}',
        'ok = self.attention == "rotary"',
        'BOUNDED = ("absolute", "relative")',
        'TABLE = {"local": 1, "sparse": 2}',
        'match kind:\n    case "sparse":\n        pass',
    ],
)
def test_the_scan_catches_name_comparisons(snippet):
    assert name_comparisons(snippet), snippet


def test_the_scan_lets_specs_and_other_strings_through():
    clean = 'spec = get_kind(config.attention)\nif spec.has_relative: pass\nif mode == "fast": pass'
    assert name_comparisons(clean) == []


def test_every_spec_reads_real_config_fields():
    known = {f.name for f in fields(ModelConfig)}
    for name in BUILTIN:
        spec = get_kind(name)
        assert spec.name == name
        assert set(spec.fields) <= known, (name, set(spec.fields) - known)


def test_unknown_kind_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"'rotary'.*absolute, relative, local, sparse"):
        get_kind("rotary")
    with pytest.raises(ValueError, match="rotary"):
        MusicTransformer(ModelConfig(attention="rotary"))


# --- a new kind is one module: two tiny example kinds, declared and registered here ---------
def mean_attention(q, k, v, rel, ctx):
    """Each query gets the plain mean of the values it may see (uniform attention weights)."""
    mask = ctx.mask  # cached regime: filled by the spec's prepare_step (padding only in decode)
    if not ctx.cached:
        i = torch.arange(q.shape[2], device=q.device)
        dist = i[:, None] - i[None, :]
        ok = ctx.pattern.allowed(dist, i[None, :])
        if ctx.key_valid is not None:
            ok = (ok & ctx.key_valid[:, None, None, :]) | (dist == 0)
        mask = additive_mask(ok, q.dtype)
    return F.scaled_dot_product_attention(torch.zeros_like(q), k, v, attn_mask=mask)


def check_window(config) -> None:
    if config.window <= 0:
        raise ValueError(f"attention={config.attention!r} needs window > 0")


EXAMPLES = {
    # the whole past: a full cache and a one-token decode step; generation slides
    "causal_mean": AttentionSpec(name="causal_mean", forward=mean_attention, decode=mean_attention),
    # the last `window` tokens: a ring cache, bounded reach, unbounded generation
    "last_k_mean": AttentionSpec(
        name="last_k_mean",
        forward=mean_attention,
        fields=("window",),
        check=check_window,
        pattern=lambda c: Pattern(band=c.window),
    ),
}


@pytest.fixture(params=list(EXAMPLES))
def example(request):
    spec = register(EXAMPLES[request.param])
    yield spec
    unregister(spec.name)


def tiny(kind: str, **kw) -> MusicTransformer:
    torch.manual_seed(0)
    return MusicTransformer(preset("tiny", vocab_size=V, attention=kind, window=8, **kw))


def test_example_kind_trains_one_step(example):
    model = tiny(example.name).train()
    ids = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def loss() -> torch.Tensor:
        logits = model(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))

    before = loss()
    before.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    with torch.no_grad():
        assert loss() < before


def test_example_kind_decodes_with_its_cache_like_the_full_forward(example):
    model = tiny(example.name).eval()
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2)
        chunks = [model(ids[:, :12], cache=cache), model(ids[:, 12:15], cache=cache)]
        chunks += [model(ids[:, t : t + 1], cache=cache) for t in range(15, 40)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=1e-5)
    reach = example.bounded_reach(model.config)
    assert isinstance(cache, FullCache if reach is None else RingCache)
    assert reach in (None, model.config.window)


def test_example_kind_generates_past_max_seq_len(example):
    model = tiny(example.name, max_seq_len=16).eval()
    out = sample(model, [[1, 2, 3], [4]], [], Stopping(max_new_tokens=30), seeds=[0, 1])
    assert [len(row) for row in out] == [30, 30]


def test_example_kind_is_saved_and_loaded_by_name(example, tmp_path: Path):
    from musegen.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    model = MusicTransformer(preset("tiny", vocab_size=len(tok), attention=example.name))
    directory = save_pretrained(model, tok, tmp_path / "ckpt")
    loaded = load_pretrained(directory)
    assert loaded.config.attention == example.name
    ids = torch.randint(0, len(tok), (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), model.eval()(ids))
    unregister(example.name)  # a version of musegen that does not know the kind
    with pytest.raises(CheckpointError, match=example.name):
        load_pretrained(directory)


def test_example_kind_without_a_mask_form_refuses_flex(example):
    with pytest.raises(ValueError, match=rf"attention_backend='flex'.*{example.name}"):
        MusicTransformer(preset("tiny", attention=example.name, attention_backend="flex"))


def test_a_taken_name_is_not_silently_replaced(example):
    with pytest.raises(ValueError, match="already registered"):
        register(EXAMPLES[example.name])
    with pytest.raises(ValueError, match="already registered"):
        register(get_kind("relative"))
