"""Batched autoregressive sampling over the KV cache, shaped by small logits processors.

A processor is ``f(logits[B, V], ctx) -> logits``; :func:`build_processors` chains the usual
ones (repetition penalty → grammar mask → guidance → temperature → top-k → top-p).
:func:`iter_sample` prefills the left-padded prompts once (identical prompts, e.g. one prompt's
samples, once for all), then feeds one token per unfinished sequence per step and yields after
each step (the pipeline streams from it); :func:`sample` runs it to the end. Each row has its own
``torch.Generator``, so a sample depends only on its seed and settings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from musegen.generation.grammar import Grammar, GrammarState
from musegen.model.attention import reach_of


@dataclass
class StepContext:
    """What processors may read: the tokens so far, grammar states, which ids were seen."""

    tokens: list[list[int]]
    seen: torch.Tensor  # Bool[B, V]
    states: list[GrammarState] | None = None
    step: int = 0


Processor = Callable[[torch.Tensor, StepContext], torch.Tensor]


class Temperature:
    """Divide logits by ``t``: below 1 sharper, above 1 flatter."""

    def __init__(self, t: float):
        self.t = float(t)

    def __call__(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return logits / self.t


class TopK:
    """Keep the ``k`` most likely ids (ties at the k-th value kept too)."""

    def __init__(self, k: int):
        self.k = int(k)

    def __call__(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))


class TopP:
    """Nucleus sampling: keep the smallest set of ids whose probability reaches ``p``."""

    def __init__(self, p: float):
        self.p = float(p)

    def __call__(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > self.p  # the most likely id is always kept
        drop_mask = torch.zeros_like(drop).scatter(-1, order, drop)
        return logits.masked_fill(drop_mask, float("-inf"))


class RepetitionPenalty:
    """CTRL's penalty: logits of ids already in the sequence are divided (or multiplied) by r."""

    def __init__(self, r: float):
        self.r = float(r)

    def __call__(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        penalized = torch.where(logits > 0, logits / self.r, logits * self.r)
        return torch.where(ctx.seen, penalized, logits)


class AllowedTokens:
    """A fixed allow-list (``Bool[V]``), e.g. to forbid special tokens."""

    def __init__(self, allowed: torch.Tensor):
        self.allowed = allowed.bool()

    def __call__(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return logits.masked_fill(~self.allowed.to(logits.device), float("-inf"))


class GrammarMask:
    """Masks every id that would make a sequence malformed, from its grammar state."""

    def __init__(self, grammar: Grammar):
        self.grammar = grammar

    def __call__(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        assert ctx.states is not None, "GrammarMask needs grammar states"
        mask = self.grammar.mask(ctx.states).to(logits.device)
        return logits.masked_fill(~mask, float("-inf"))


def build_processors(
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    grammar: Grammar | None = None,
    guidance: Sequence[Processor] = (),
) -> list[Processor]:
    """The standard chain; identity settings (top_k=0, top_p=1, penalty=1) add nothing.

    ``guidance`` (:mod:`~musegen.generation.guidance`) comes after the grammar mask, so it
    reweights only the tokens the grammar allows, and before temperature and the nucleus."""
    chain: list[Processor] = []
    if repetition_penalty != 1.0:
        chain.append(RepetitionPenalty(repetition_penalty))
    if grammar is not None:
        chain.append(GrammarMask(grammar))
    chain.extend(guidance)
    if temperature != 1.0:
        chain.append(Temperature(temperature))
    if top_k > 0:
        chain.append(TopK(top_k))
    if top_p < 1.0:
        chain.append(TopP(top_p))
    return chain


@dataclass
class Stopping:
    """When a row ends: a token budget, EOS, and (through the grammar tracker) N bars."""

    max_new_tokens: int
    eos_id: int | None = None
    grammar: Grammar | None = None


@dataclass
class Progress:
    """Yielded after every step: new tokens per row and which rows are done."""

    new_tokens: list[list[int]]
    finished: list[bool]
    states: list[GrammarState] | None
    step: int
    stopped: bool = False  # ended by the stop_event
    hit_budget: list[bool] = field(default_factory=list)


def draw(probs: torch.Tensor, gens: Sequence[torch.Generator]) -> list[int]:
    """One id per row, each from its row's own generator, by inverse CDF; ``-1`` for a row
    with nothing to draw (every probability zero or NaN).

    One uniform per row, then a single cumulative sum and binary search for the whole batch:
    one kernel call per step instead of one ``torch.multinomial`` call per row, which dominated
    the draw at batch 8 (figures: ``benchmarks/README.md``, ``bench_decode.py`` section draw).
    Ids of probability zero are never drawn (the search finds the first cumulative sum above
    the uniform; the last positive id when rounding lands on the total).
    """
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
    cdf = probs.to(torch.float64).cumsum(-1)
    total = cdf[:, -1]
    ids = torch.searchsorted(cdf, (u * total).unsqueeze(1), right=True).squeeze(1)
    ids = ids.masked_fill(~(total > 0), -1).tolist()  # NaN totals fail the test too
    vocab = probs.shape[-1]
    return [t if t < vocab else int((probs[i] > 0).nonzero().max()) for i, t in enumerate(ids)]


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = True
    return ids.to(device), mask.to(device)


class _Runner:
    """Owns the cache; ``prefill`` once, then ``step`` one token per row (or re-run all).

    Rows that have finished (``done``) leave the cache, for kinds that can select rows: the
    batch then costs what its live rows cost, so samples that end early no longer pay for the
    longest one's steps. They get zero logits, which nobody draws from (a re-prefill, which
    unbounded kinds need past ``max_seq_len``, brings every row back).
    """

    def __init__(self, model: torch.nn.Module, pad_id: int, use_cache: bool):
        self.model, self.pad_id, self.use_cache = model, pad_id, use_cache
        self.device = next(model.parameters()).device
        config = model.config
        # A kind that sees the whole past cannot grow past max_seq_len: the loop slides by
        # re-prefilling. A bounded reach keeps a constant cache, so it generates for ever.
        unbounded = reach_of(config) is None
        self.limit = config.max_seq_len if unbounded else None
        self.cache = None
        self.rows: list[list[int]] = []
        self.live: list[int] = []  # the rows in the cache, in its order

    def prefill(self, rows: list[list[int]]) -> torch.Tensor:
        if self.limit:  # keep the newest tokens; leave room to grow before the next slide
            keep = max(1, self.limit // 2) if any(len(r) >= self.limit for r in rows) else None
            rows = [r[-keep:] if keep else r for r in rows]
        self.rows = [list(r) for r in rows]
        self.live = list(range(len(rows)))
        if not self.use_cache:
            ids, mask = _left_pad(self.rows, self.pad_id, self.device)
            return self.model(ids, padding_mask=mask)[:, -1].float()
        # Identical rows (a prompt's samples and candidates) are prefilled once, then copied.
        unique: dict[tuple[int, ...], int] = {}
        copy = [unique.setdefault(tuple(r), len(unique)) for r in self.rows]
        first = [list(r) for r in unique]
        self.cache = self.model.new_cache(len(first), device=self.device)
        if len(first) < len(rows) and self.cache.ROW_FIELDS is None:  # a kind that cannot copy
            first, copy = self.rows, list(range(len(rows)))
            self.cache = self.model.new_cache(len(rows), device=self.device)
        ids, mask = _left_pad(first, self.pad_id, self.device)
        logits = self.model(ids, cache=self.cache, padding_mask=mask)[:, -1].float()
        if len(first) == len(rows):
            return logits
        index = torch.tensor(copy, device=self.device)
        self.cache.select_rows(index)
        return logits.index_select(0, index)

    def step(self, tokens: list[int], done: Sequence[bool] | None = None) -> torch.Tensor:
        for row, t in zip(self.rows, tokens, strict=True):
            row.append(t)
        if not self.use_cache or (self.limit and max(map(len, self.rows)) > self.limit):
            return self.prefill(self.rows)
        if done is not None and self.cache.ROW_FIELDS is not None:
            keep = [k for k, i in enumerate(self.live) if not done[i]]
            if len(keep) < len(self.live):
                self.cache.select_rows(torch.tensor(keep, device=self.device))
                self.live = [self.live[k] for k in keep]
        ids = torch.tensor([tokens[i] for i in self.live], device=self.device)[:, None]
        logits = self.model(ids, cache=self.cache)[:, -1].float()
        if len(self.live) == len(self.rows):
            return logits
        out = logits.new_zeros(len(self.rows), logits.shape[-1])
        out[self.live] = logits
        return out


@torch.inference_mode()
def iter_sample(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    processors: Sequence[Processor],
    stopping: Stopping,
    seeds: Sequence[int],
    states: list[GrammarState] | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    stop_event: threading.Event | None = None,
) -> Iterator[Progress]:
    """Sample continuations of every prompt at once, yielding :class:`Progress` each step."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    batch, grammar = len(prompts), stopping.grammar
    if grammar is not None and states is None:
        states = [grammar.start(p) for p in prompts]
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    vocab = model.config.vocab_size
    seen = torch.zeros((batch, vocab), dtype=torch.bool)
    for i, p in enumerate(prompts):
        seen[i, torch.tensor([t for t in p if 0 <= t < vocab], dtype=torch.long)] = True
    ctx = StepContext(tokens=[list(p) for p in prompts], seen=seen, states=states)
    new: list[list[int]] = [[] for _ in prompts]
    done = [stopping.max_new_tokens <= 0] * batch
    budget = [False] * batch
    runner = _Runner(model, pad_id, use_cache)
    logits = runner.prefill([list(p) for p in prompts])
    step = 0
    while not all(done):
        if stop_event is not None and stop_event.is_set():
            yield Progress(new, done, states, step, stopped=True, hit_budget=budget)
            return
        ctx.step = step
        scores = logits.cpu()
        for proc in processors:
            scores = proc(scores, ctx)
        drawn = draw(scores.softmax(-1), gens)
        tokens, fresh = [], []
        for i in range(batch):
            t = drawn[i]
            if not done[i] and t < 0:
                raise ValueError(
                    f"sequence {i} has no token left to sample: every id was masked or the "
                    "logits were not finite; loosen the constraints (top-k, top-p, controls)"
                )
            if not done[i] and (
                (grammar and grammar.ends_before(states[i], t)) or t == stopping.eos_id
            ):
                done[i] = True
            if done[i]:
                tokens.append(ctx.tokens[i][-1])
                continue
            new[i].append(t)
            ctx.tokens[i].append(t)
            tokens.append(t)
            fresh.append(i)
            if grammar is not None:
                grammar.advance(states[i], t)
                done[i] = grammar.ends_after(states[i])
            if len(new[i]) >= stopping.max_new_tokens and not done[i]:
                done[i] = budget[i] = True
        if fresh:
            seen[torch.tensor(fresh), torch.tensor([tokens[i] for i in fresh])] = True
        step += 1
        yield Progress(new, list(done), states, step, hit_budget=budget)
        if not all(done):
            logits = runner.step(tokens, done)


def sample(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    processors: Sequence[Processor],
    stopping: Stopping,
    seeds: Sequence[int],
    states: list[GrammarState] | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    on_step: Callable[[Progress], None] | None = None,
    stop_event: threading.Event | None = None,
) -> list[list[int]]:
    """New tokens for each prompt (the prompt itself is not repeated)."""
    last: Progress | None = None
    for last in iter_sample(
        model, prompts, processors, stopping, seeds, states, pad_id, use_cache, stop_event
    ):
        if on_step is not None:
            on_step(last)
    return [list(t) for t in last.new_tokens] if last else [[] for _ in prompts]
