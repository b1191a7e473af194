"""Logits processors and the batched decode loop over the KV cache."""

from __future__ import annotations

import threading

import pytest
import torch

from musegen.config import preset
from musegen.generation.sampling import (
    AllowedTokens,
    RepetitionPenalty,
    StepContext,
    Stopping,
    Temperature,
    TopK,
    TopP,
    build_processors,
    draw,
    iter_sample,
    sample,
)
from musegen.model.transformer import MusicTransformer

VOCAB = 40


def ctx(batch=1, seen=None):
    seen = seen if seen is not None else torch.zeros(batch, VOCAB, dtype=torch.bool)
    return StepContext(tokens=[[1]] * batch, seen=seen)


def tiny(attention="relative", **kw):
    torch.manual_seed(0)
    return MusicTransformer(preset("tiny", vocab_size=VOCAB, attention=attention, **kw)).eval()


PROMPTS = [[1, 5, 7, 9, 11, 3], [1, 8, 2], [1, 4, 4, 4, 4, 6, 20, 21, 22]]


def test_top_k_keeps_k():
    logits = torch.arange(10.0)[None]
    out = TopK(3)(logits, ctx())
    assert torch.isfinite(out).sum() == 3 and torch.isfinite(out[0, 7:]).all()


def test_top_p_keeps_the_nucleus_and_always_the_best():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(TopP(0.7)(logits, ctx())).tolist() == [[True, True, False, False]]
    assert torch.isfinite(TopP(0.01)(logits, ctx())).tolist() == [[True, False, False, False]]


def test_temperature_and_repetition_penalty():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    assert torch.allclose(Temperature(2.0)(logits, ctx()), logits / 2)
    seen = torch.tensor([[True, True, False]])
    out = RepetitionPenalty(2.0)(logits, StepContext([[0]], seen))
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_allowed_tokens_and_identity_chain():
    allowed = torch.zeros(VOCAB, dtype=torch.bool)
    allowed[3] = True
    out = AllowedTokens(allowed)(torch.zeros(1, VOCAB), ctx())
    assert torch.isfinite(out).sum() == 1
    assert build_processors(1.0, 0, 1.0, 1.0) == []


def run(model, seeds, **kw):
    stopping = Stopping(max_new_tokens=kw.pop("n", 12))
    processors = kw.pop("processors", build_processors(1.0, 0, 0.95))
    return sample(model, PROMPTS, processors, stopping, seeds, pad_id=0, **kw)


def test_draw_follows_the_distribution_and_never_picks_a_zero():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    counts = torch.zeros(2, 6)
    for _ in range(4000):
        for row, t in enumerate(draw(probs, gens)):
            counts[row, t] += 1
    assert counts[:, [0, 2]].sum() == 0 and counts[0, 5] == 0
    assert counts[1, 5] == 4000
    torch.testing.assert_close(counts[0] / 4000, probs[0], atol=0.03, rtol=0)
    # a row's draws depend only on its own generator, not on the rows beside it
    pair = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
    alone = [torch.Generator().manual_seed(7)]
    assert [draw(probs, pair)[0] for _ in range(20)] == [
        draw(probs[:1], alone)[0] for _ in range(20)
    ]


def test_draw_reports_rows_with_nothing_to_draw():
    probs = torch.tensor([[0.0, 0.0, 0.0], [float("nan")] * 3, [0.2, 0.8, 0.0]])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    drawn = draw(probs, gens)
    assert drawn[:2] == [-1, -1] and drawn[2] in (0, 1)


def test_a_fully_masked_row_is_a_clear_error():
    model = MusicTransformer(preset("tiny", vocab_size=VOCAB)).eval()
    nothing = AllowedTokens(torch.zeros(VOCAB, dtype=torch.bool))
    with pytest.raises(ValueError, match="no token left to sample"):
        sample(model, [[1, 2]], [nothing], Stopping(3), seeds=[0])


def test_same_seed_same_output_different_seed_differs():
    model = tiny()
    a = run(model, [1, 2, 3])
    assert a == run(model, [1, 2, 3])
    assert a != run(model, [4, 5, 6])
    assert [len(x) for x in a] == [12, 12, 12]


@pytest.mark.parametrize("attention", ["relative", "absolute", "local", "sparse"])
def test_cached_and_uncached_greedy_agree(attention):
    model = tiny(attention)
    greedy = build_processors(top_k=1)
    cached = run(model, [0, 0, 0], processors=greedy, n=20)
    uncached = run(model, [0, 0, 0], processors=greedy, n=20, use_cache=False)
    assert cached == uncached


def test_batched_rows_match_single_rows_under_greedy():
    model = tiny()
    greedy = build_processors(top_k=1)
    batched = run(model, [0, 0, 0], processors=greedy)
    for prompt, expected in zip(PROMPTS, batched, strict=True):
        alone = sample(model, [prompt], greedy, Stopping(12), [0], pad_id=0)
        assert alone[0] == expected


def test_bounded_attention_slides_past_max_seq_len():
    model = tiny("absolute", max_seq_len=16)
    out = run(model, [1, 2, 3], n=40)
    assert [len(x) for x in out] == [40, 40, 40]


def test_eos_stops_a_row_and_stop_event_stops_all():
    model = tiny()
    everything_is_eos = torch.zeros(VOCAB, dtype=torch.bool)
    everything_is_eos[2] = True
    out = sample(
        model, PROMPTS, [AllowedTokens(everything_is_eos)], Stopping(10, eos_id=2), [0, 1, 2]
    )
    assert out == [[], [], []]
    stop = threading.Event()
    steps = iter_sample(model, PROMPTS, [], Stopping(1000), [0, 1, 2], stop_event=stop)
    for progress in steps:
        if progress.step == 5:
            stop.set()
    assert progress.stopped and all(len(t) == 5 for t in progress.new_tokens)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cached_and_uncached_greedy_agree_with_cpu():
    model = tiny().cuda()
    greedy = build_processors(top_k=1)
    cached = run(model, [0, 0, 0], processors=greedy, n=16)
    assert cached == run(model, [0, 0, 0], processors=greedy, n=16, use_cache=False)
    assert cached == run(tiny(), [0, 0, 0], processors=greedy, n=16)


def test_processors_see_every_sampled_token_as_seen():
    torch.manual_seed(0)
    model = MusicTransformer(preset("tiny", vocab_size=VOCAB)).eval()
    snapshots = []

    def record(logits, ctx):
        snapshots.append(ctx.seen.clone())
        return logits

    out = sample(model, [[1, 2], [3]], [record], Stopping(6), seeds=[0, 1])
    for row, tokens in enumerate(out):
        for step, t in enumerate(tokens[:-1]):
            assert snapshots[step + 1][row, t]  # seen from the next step on
    assert snapshots[0][0, 1] and snapshots[0][0, 2] and snapshots[0][1, 3]


@pytest.mark.parametrize("attention", ["relative", "local", "sparse", "linformer"])
def test_identical_prompts_share_one_prefill_and_sample_as_if_alone(attention, monkeypatch):
    """A prompt's samples are prefilled once and the cache copied to each row (kinds whose
    cache cannot copy rows prefill every row); each row then samples exactly as it would alone."""
    model = tiny(attention)
    sizes: list[int] = []
    new_cache = model.new_cache
    monkeypatch.setattr(model, "new_cache", lambda b, **kw: sizes.append(b) or new_cache(b, **kw))
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[0]]
    seeds = [3, 4, 5, 6]
    batched = sample(model, prompts, build_processors(1.0), Stopping(12), seeds, pad_id=0)
    copies = new_cache(1).ROW_FIELDS is not None
    assert sizes == ([2] if copies else [2, 4])
    assert batched[0] != batched[2]  # the copies diverge, each with its own seed
    for prompt, seed, got in zip(prompts, seeds, batched, strict=True):
        alone = sample(model, [prompt], build_processors(1.0), Stopping(12), [seed], pad_id=0)
        assert alone[0] == got


@pytest.mark.parametrize("attention", ["relative", "local", "linformer"])
def test_rows_that_end_early_leave_the_batch_and_the_others_sample_as_if_alone(attention):
    model = tiny(attention)
    stopping = Stopping(40, eos_id=5)
    seeds = [0, 1, 2, 3, 4, 5]
    prompts = [PROMPTS[i % 3] for i in range(6)]
    batched = sample(model, prompts, build_processors(1.0), stopping, seeds, pad_id=0)
    assert len({len(row) for row in batched}) > 2  # the rows end at different steps
    for prompt, seed, got in zip(prompts, seeds, batched, strict=True):
        assert sample(model, [prompt], build_processors(1.0), stopping, [seed], pad_id=0) == [got]
