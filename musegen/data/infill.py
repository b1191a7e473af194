"""Fill-in-the-middle at the token level: one layout for training and for ``Pipeline.infill``.

A REMI-with-programs stream ``prefix | span | suffix`` (the span is whole bars) is rearranged as::

    prefix  Infill_Span  given  Infill_Suffix  suffix  Infill_Fill  target  Infill_End

A model with pinned tokens (``ModelConfig.pin_tokens``, local attention) uses the *pinned*
layout instead::

    Infill_Span  given  Infill_Suffix  suffix  Infill_End  prefix  Infill_Fill  target  Infill_End

The right side and the given part come first and stay visible to every later token as pinned
keys (``Infill_Span`` … the first ``Infill_End``), and the prefix sits right before the target,
as in a continuation. In the inline layout a local window (512 tokens for the shipped model)
holds the suffix *instead of* as much left side, and the target's later tokens lose sight of
the suffix altogether: the model learned to ignore it (``benchmarks/bench_infill.py``).

``given`` is what the user keeps inside the span: the bar lines, time signatures, tempo changes
and the notes of the tracks that are not regenerated (no notes at all for a full-span infill).
``target`` holds the same bar lines and time signatures with only the regenerated tracks' notes.
So "regenerate bars 5–8", "redo the drums in bars 5–8" and "add a bass line" are one operation
with a different set of target programs, and the model always sees both sides before it writes.

Why this formulation: it is a plain left-to-right sequence, so the existing model, cache, sampler
and grammar work unchanged, and a fraction of ordinary training windows rearranged this way
teaches it (no second objective, no extra parameters). MMM-style track blocks would need the
data re-tokenized per track; anticipation-style interleaving doubles the sequence length, which
a 2-core CPU cannot afford.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from musegen.errors import MusegenError
from musegen.tokenizer import INFILL_TOKENS

# Token classes, per id.
OTHER, BAR, TIMESIG, POSITION, TEMPO, PROGRAM, NOTE = range(7)
_PREFIX_CLASS = (
    ("Bar_", BAR),
    ("TimeSig_", TIMESIG),
    ("Position_", POSITION),
    ("Tempo_", TEMPO),
    ("Program_", PROGRAM),
)


@dataclass(frozen=True)
class InfillVocab:
    """What the rearrangement needs to know about a vocabulary, as lookup arrays."""

    span: int
    suffix: int
    fill: int
    end: int
    bar: int
    classes: np.ndarray  # int8 class of every id
    programs: np.ndarray  # program of a Program_ id (-1 = drums), -2 for other ids

    @classmethod
    def from_tokenizer(cls, tokenizer) -> InfillVocab:
        vocab: dict[str, int] = tokenizer.vocab
        missing = [t for t in INFILL_TOKENS if t not in vocab]
        if missing:
            raise MusegenError(
                "this model's tokenizer has no infilling tokens (it was trained before infilling "
                "existed): use a checkpoint trained with --infill-rate, e.g. the shipped default"
            )
        if "Bar_None" not in vocab or not any(t.startswith("Program_") for t in vocab):
            raise MusegenError("infilling needs a REMI tokenizer with programs (Bar and Program)")
        if getattr(tokenizer, "is_trained", False):
            raise MusegenError("infilling needs base tokens: prepare the data without --bpe-vocab")
        size = max(vocab.values()) + 1
        classes = np.full(size, NOTE, np.int8)
        programs = np.full(size, -2, np.int64)
        for token, i in vocab.items():
            if (token.endswith("_None") and not token.startswith("Bar_")) or token in INFILL_TOKENS:
                classes[i] = OTHER
            for prefix, kind in _PREFIX_CLASS:
                if token.startswith(prefix):
                    classes[i] = kind
            if token.startswith("Program_"):
                programs[i] = int(token[len("Program_") :])
        span, suffix, fill, end = (int(vocab[t]) for t in INFILL_TOKENS)
        return cls(span, suffix, fill, end, int(vocab["Bar_None"]), classes, programs)


def split_span(
    span: np.ndarray, vocab: InfillVocab, targets: frozenset[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(given, target)`` parts of whole bars: target notes are those of ``targets`` (None = all).

    Bar lines and time signatures go to both parts (the target keeps the bar structure, so its
    bar count is checkable); tempo changes stay given; a Position token is written to a part
    only before that part's first note at the position, as the tokenizer itself would.
    """
    given: list[int] = []
    target: list[int] = []
    pending = -1  # the Position token not yet written
    written = [-1, -1]  # the last Position written to given / target
    dest = given
    for tok in span.tolist():
        kind = vocab.classes[tok] if 0 <= tok < len(vocab.classes) else OTHER
        if kind in (BAR, TIMESIG):
            given.append(tok)
            target.append(tok)
            if kind == BAR:
                pending, written = -1, [-1, -1]
            continue
        if kind == POSITION:
            pending = tok
            continue
        if kind in (PROGRAM, TEMPO):
            program = int(vocab.programs[tok])
            to_target = kind == PROGRAM and (targets is None or program in targets)
            dest, which = (target, 1) if to_target else (given, 0)
            if pending >= 0 and written[which] != pending:
                dest.append(pending)
                written[which] = pending
        elif kind == OTHER:
            dest = given
        dest.append(tok)
    return np.asarray(given, np.int64), np.asarray(target, np.int64)


def span_programs(span: np.ndarray, vocab: InfillVocab) -> list[int]:
    """The programs that play in ``span``, in order of first appearance."""
    found = vocab.programs[span[(span >= 0) & (span < len(vocab.programs))]]
    return list(dict.fromkeys(int(p) for p in found if p != -2))


def layout(
    prefix: np.ndarray,
    given: np.ndarray,
    suffix: np.ndarray,
    vocab: InfillVocab,
    pinned: bool = False,
) -> np.ndarray:
    """The prompt of an infilling request: everything up to and including ``Infill_Fill``
    (``pinned``: the pinned layout of the module docstring)."""
    if pinned:
        parts = [[vocab.span], given, [vocab.suffix], suffix, [vocab.end], prefix, [vocab.fill]]
    else:
        parts = [prefix, [vocab.span], given, [vocab.suffix], suffix, [vocab.fill]]
    return np.concatenate(parts).astype(np.int64)


def prompt_sentinels(pinned: bool) -> int:
    """Sentinel tokens in a prompt of :func:`layout` (the target adds ``Infill_End``)."""
    return 4 if pinned else 3


def pin_tokens(tokenizer) -> list[int]:
    """``ModelConfig.pin_tokens`` of the pinned layout: ``[Infill_Span, Infill_End]``."""
    vocab = InfillVocab.from_tokenizer(tokenizer)
    return [vocab.span, vocab.end]


def suffix_budget(reach: int | None) -> int | None:
    """Tokens of the right side an infilling prompt keeps, for a model that sees ``reach`` tokens
    back (``None``: its whole context, no bound).

    In the layout the target comes after the suffix, so with a bounded reach (local attention)
    a long suffix would push the prefix, and the suffix's own start, out of the target's view:
    the model would learn to ignore the right side. Half the reach keeps the start of the suffix
    and the end of the prefix both in view; training and ``Pipeline.infill`` use the same budget.
    """
    return None if reach is None else max(1, reach // 2)


PREFIX_KEPT = 32  # most tokens of the left side an example with a dropped prefix keeps


class InfillRearranger:
    """Turns a fraction of training windows into infilling examples (``--infill-rate``).

    A span of 1–``max_bars`` whole bars with at least one bar line after it is chosen; half of
    the examples (``track_rate``) regenerate a random non-empty subset of the span's programs
    instead of all of them. The result is at most the window's length: the suffix, then the
    prefix, is shortened by what the sentinels and the repeated bar lines add.

    ``suffix_tokens`` (see :func:`suffix_budget`) bounds the right side: the span is then chosen
    among the window's last bars, and a suffix still longer keeps its head (the example is
    shorter than the window; the sampler pads it).

    ``prefix_drop``: the fraction of examples whose left side is cut to its last
    0–``PREFIX_KEPT`` tokens, so that only the right side tells what the span holds. With the
    whole prefix always there, the shipped model learned to fill from the left and ignore the
    suffix (``benchmarks/bench_infill.py --training-layout``).

    ``pinned``: write the pinned layout (for a model with ``pin_tokens``).
    """

    def __init__(
        self,
        tokenizer,
        rate: float,
        max_bars: int = 8,
        track_rate: float = 0.5,
        suffix_tokens: int | None = None,
        prefix_drop: float = 0.0,
        pinned: bool = False,
    ):
        if not 0 <= rate <= 1:
            raise MusegenError(f"infill rate must be in [0, 1], got {rate}")
        if not 0 <= prefix_drop <= 1:
            raise MusegenError(f"infill prefix drop must be in [0, 1], got {prefix_drop}")
        if suffix_tokens is not None and suffix_tokens < 1:
            raise MusegenError(f"suffix_tokens must be at least 1, got {suffix_tokens}")
        self.vocab = InfillVocab.from_tokenizer(tokenizer)
        self.rate, self.max_bars, self.track_rate = rate, max_bars, track_rate
        self.suffix_tokens = suffix_tokens
        self.prefix_drop = prefix_drop
        self.pinned = pinned  # the pinned layout (a model with pin_tokens)

    def maybe_apply(self, window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.rate <= 0 or rng.random() >= self.rate:
            return window
        return self.apply(window, rng)

    def apply(self, window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        bars = np.flatnonzero(window == self.vocab.bar)
        if len(bars) < 3:
            return window
        low = 2  # the bar line that ends the span: bars[0] stays in the prefix
        if self.suffix_tokens is not None:
            near = np.flatnonzero(len(window) - bars <= self.suffix_tokens)
            low = max(low, int(near[0])) if len(near) else len(bars) - 1
        last = int(rng.integers(low, len(bars)))
        n = int(rng.integers(1, min(self.max_bars, last - 1) + 1))
        start, stop = int(bars[last - n]), int(bars[last])
        span = window[start:stop]
        targets = None
        programs = span_programs(span, self.vocab)
        if len(programs) > 1 and rng.random() < self.track_rate:
            k = int(rng.integers(1, len(programs)))
            targets = frozenset(int(p) for p in rng.choice(programs, size=k, replace=False))
        given, target = split_span(span, self.vocab, targets)
        prefix, suffix = window[:start], window[stop : stop + (self.suffix_tokens or len(window))]
        if self.prefix_drop and rng.random() < self.prefix_drop:
            prefix = prefix[max(0, len(prefix) - int(rng.integers(0, PREFIX_KEPT + 1))) :]
        sentinels = prompt_sentinels(self.pinned) + 1  # and the target's Infill_End
        excess = len(prefix) + len(given) + len(suffix) + len(target) + sentinels - len(window)
        excess = max(0, excess)
        cut = min(excess, len(suffix))
        suffix = suffix[: len(suffix) - cut]
        prefix = prefix[excess - cut :]
        body = layout(prefix, given, suffix, self.vocab, self.pinned)
        out = np.concatenate([body, target, [self.vocab.end]]).astype(np.int64)
        return out[: len(window)]
