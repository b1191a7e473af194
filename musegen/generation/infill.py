"""Regenerate a bar range of a piece: plan the prompt, constrain the target, merge the result.

:func:`plan` turns a request ("bars 5–8, the bass only") into the prompt laid out as in
training (:mod:`musegen.data.infill`): ``prefix Infill_Span given Infill_Suffix suffix
Infill_Fill`` (or its pinned form), cut to fit the model's context with room kept for the target.
:class:`InfillGrammar` makes the model write exactly the span's bars, each with the time
signature the piece has there (a span with meter changes is followed bar by bar, not refused),
no tempo tokens (tempo stays the piece's) and only the target programs. :func:`merge` puts the
generated notes into the *original* score.

The context budget: room for the target is kept first (the piece's tokens per bar for the target
tracks, at least ``MIN_TOKENS_PER_BAR`` per bar), the given part goes in whole (a request whose
given part and target cannot fit is refused), and what is left goes 60/40 to the newest bars of
the prefix and the first bars of the suffix, cut at bar lines where possible; what one side does
not use goes to the other.

Notes held across the span's borders:

* a note that starts before the span and sounds into it is kept as it is (it is part of the
  prefix the model saw); a generated note of the same track and pitch that would start while
  it still sounds is dropped (no overlapping duplicate);
* generated notes are cut at the end of the span, so nothing overlaps the following bars, and
  the original notes that start after the span are untouched (no orphan or doubled notes).

Everything outside ``[start of bar a, start of bar b+1)`` and every non-target track is left
exactly as it was in the input; tempos and time signatures are never touched. The tokenizer
writes all tracks of one program as one stream, so a target program replaces the span's notes
of every track with that program, and new notes go to the first such track.
"""

from __future__ import annotations

import bisect
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic

from musegen.data.infill import InfillVocab, layout, prompt_sentinels, split_span
from musegen.errors import MidiError, MusegenError
from musegen.generation.grammar import Controls
from musegen.generation.infill_grammar import InfillGrammar
from musegen.generation.settings import GenerationSettings, controls_for
from musegen.tokenizer import (
    bar_ticks,
    count_notes,
    decode,
    encode,
    instrument_name,
    load_tick_score,
    track_program,
)

# Room kept for each target bar at least, in tokens (a sparse or new track still needs some).
MIN_TOKENS_PER_BAR = 64
PREFIX_SHARE = 0.6  # of the context left after given + target; the suffix gets the rest

Track = int | str  # a track index, "drums" (or -1), or "program:P" (a GM program, maybe new)


@dataclass
class InfillPlan:
    """One infilling request, ready to sample: the prompt and how to merge what comes back."""

    score: symusic.Score  # the original piece (never modified)
    bars: tuple[int, int]  # 1-based, inclusive
    targets: frozenset[int] | None  # programs regenerated (-1: drums); None: every track
    controls: Controls  # what the grammar allows the target to play
    time_signatures: tuple[int, ...]  # TimeSig id of each span bar (empty: no TimeSig tokens)
    prefix: list[int]  # the piece's ids before bar a (the grammar's start state)
    prompt: list[int]  # what the model sees, ending with Infill_Fill
    ticks: list[int]  # original ticks of the starts of bars a..b+1
    reserve: int  # tokens of context kept free for the target

    @property
    def num_bars(self) -> int:
        return self.bars[1] - self.bars[0] + 1


# --- planning -------------------------------------------------------------------------------
def plan(
    tokenizer,
    piece: str | Path | bytes | symusic.Score,
    bars: tuple[int, int],
    tracks: Sequence[Track] | None,
    max_seq_len: int,
    settings: GenerationSettings | None = None,
    suffix_tokens: int | None = None,
    pinned: bool = False,
) -> InfillPlan:
    """The prompt and merge plan for regenerating ``bars`` of ``piece`` (see the module doc).

    ``tracks``: None regenerates every track; otherwise track indices, ``"drums"`` (or -1) and
    ``"program:P"`` (the tracks of GM program P, or a new track of it when the piece has none).
    With every track regenerated, the piece's instruments are used, or any when
    ``settings.keep_instruments`` is off. ``suffix_tokens`` bounds the right side the prompt
    keeps, as in training (:func:`musegen.data.infill.suffix_budget`); ``pinned``: the pinned
    layout, for a model with ``pin_tokens``.
    Every mistake is a one-line :class:`MusegenError` / :class:`MidiError`.
    """
    vocab = InfillVocab.from_tokenizer(tokenizer)  # old checkpoints: the clear error
    if type(tokenizer).__name__ != "REMI":
        raise MusegenError("infilling needs a REMI tokenizer with programs")
    name = str(piece) if isinstance(piece, (str, Path)) else "the piece"
    score = load_tick_score(piece)
    if count_notes(score) == 0:
        raise MidiError(f"{name}: has no notes to infill around")
    ids = np.asarray(encode(tokenizer, score), np.int64)
    starts = np.flatnonzero(ids == vocab.bar).tolist()
    a, b = check_bars(bars, len(starts))
    targets = resolve_tracks(score, tracks)
    stop = starts[b] if b < len(starts) else len(ids)
    span = ids[starts[a - 1] : stop]
    given, _ = split_span(span, vocab, targets)
    signatures = _bar_signatures(tokenizer, ids, starts, vocab)
    ticks = _check_meters(score, signatures, b, tokenizer)[a - 1 : b + 1]
    per_bar = len(split_span(ids, vocab, targets)[1]) / max(1, len(starts))
    reserve = (b - a + 1) * max(MIN_TOKENS_PER_BAR, math.ceil(per_bar))
    need = len(given) + prompt_sentinels(pinned) + reserve
    if need > max_seq_len:
        raise MusegenError(
            f"bars {a}-{b} need about {need} tokens of context (the kept tracks and room for "
            f"the new part), more than the model's {max_seq_len}: choose fewer bars"
        )
    prefix, suffix = _fit(ids, starts, a, b, max_seq_len - need, tokenizer, suffix_tokens)
    return InfillPlan(
        score=score,
        bars=(a, b),
        targets=targets,
        controls=_controls(score, targets, b - a + 1, settings or GenerationSettings()),
        time_signatures=tuple(s for s in signatures[a - 1 : b] if s is not None),
        prefix=ids[: starts[a - 1]].tolist(),
        prompt=layout(prefix, given, suffix, vocab, pinned).tolist(),
        ticks=ticks,
        reserve=reserve,
    )


def check_bars(bars: Sequence[int], total: int) -> tuple[int, int]:
    """``bars`` as ``(a, b)`` if it is a non-empty range inside a piece of ``total`` bars."""
    try:
        a, b = (int(x) for x in bars)
    except (TypeError, ValueError):
        raise MusegenError(f"bars must be two bar numbers (first, last), got {bars!r}") from None
    if a < 1:
        raise MusegenError(f"bars {a}-{b}: bars are numbered from 1")
    if b < a:
        raise MusegenError(f"bars {a}-{b}: empty range; give A-B with A ≤ B")
    if b > total:
        raise MusegenError(
            f"bars {a}-{b} are outside the piece, which has {total} bar(s): choose bars 1-{total}"
        )
    return a, b


def resolve_tracks(score: symusic.Score, tracks: Sequence[Track] | None) -> frozenset[int] | None:
    """The programs to regenerate (-1: drums), or None for every track."""
    if tracks is None:
        return None
    if isinstance(tracks, (str, int)):
        tracks = [tracks]
    programs: set[int] = set()
    for item in tracks:
        if item in ("drums", -1):
            programs.add(-1)
        elif isinstance(item, str) and item.startswith("program:"):
            programs.add(_program(item[len("program:") :]))
        elif isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(score.tracks):
                listing = ", ".join(f"{i} {_track_name(t)}" for i, t in enumerate(score.tracks))
                raise MusegenError(
                    f"track {item} does not exist: the piece has {len(score.tracks)} "
                    f"track(s) ({listing})"
                )
            track = score.tracks[item]
            programs.add(track_program(track))
        else:
            raise MusegenError(
                f"track {item!r}: give a track index, 'drums' or 'program:P' (P a GM program)"
            )
    if not programs:
        raise MusegenError("tracks=[] chooses nothing to regenerate: give tracks or None (all)")
    return frozenset(programs)


def _program(text: str) -> int:
    if text.strip() == "drums":
        return -1
    try:
        program = int(text)
    except ValueError:
        program = -2
    if not 0 <= program <= 127:
        raise MusegenError(f"program {text!r}: give a GM program 0-127 or 'drums'")
    return program


def _track_name(track: symusic.Track) -> str:
    return track.name or ("Drums" if track.is_drum else instrument_name(track.program))


def _controls(score, targets: frozenset[int] | None, bars: int, settings) -> Controls:
    """The grammar's controls: the target programs (``settings``' instruments do not apply)."""
    if targets is None and not settings.keep_instruments:
        instruments, drums = None, True  # any instrument; a new one gets its own track
    else:
        if targets is None:  # the whole span: the piece's own instruments
            targets = frozenset(track_program(t) for t in score.tracks)
        instruments, drums = sorted(p for p in targets if p >= 0), -1 in targets
    overrides = dict(instruments=instruments, drums=drums, bars=bars)
    return controls_for(settings.with_overrides(**overrides))


def _bar_signatures(tokenizer, ids: np.ndarray, starts: list[int], vocab: InfillVocab):
    """The TimeSig id right after each Bar (None where there is none)."""
    out = []
    for s in starts:
        nxt = int(ids[s + 1]) if s + 1 < len(ids) else -1
        is_ts = 0 <= nxt < len(vocab.classes) and tokenizer[nxt].startswith("TimeSig_")
        out.append(nxt if is_ts else None)
    return out


def _check_meters(score, signatures: list, last: int, tokenizer) -> list[int]:
    """The original ticks of bars 1..last+1, after checking that the tokens count the same
    bars (a meter the tokenizer cannot write would shift every bar after it)."""
    bars = bar_ticks(score, last + 1)
    for k, ((_, num, den), ts) in enumerate(zip(bars[:last], signatures, strict=False)):
        written = tokenizer[ts].split("_", 1)[1] if ts is not None else "4/4"
        if written != f"{num}/{den}":
            raise MidiError(
                f"bar {k + 1} is in {num}/{den} but this model's tokenizer writes it as "
                f"{written}: bars cannot be matched; convert the piece's meter first"
            )
    return [tick for tick, _, _ in bars]


def _fit(
    ids: np.ndarray,
    starts: list[int],
    a: int,
    b: int,
    room: int,
    tokenizer,
    suffix_tokens: int | None = None,
):
    """The prefix tail and suffix head that share ``room`` tokens (60/40, cut at bar lines
    where possible; what one side does not use goes to the other; the suffix head keeps at
    most ``suffix_tokens``)."""
    bos, eos = tokenizer.vocab.get("BOS_None"), tokenizer.vocab.get("EOS_None")
    first = starts[a - 1]
    stop = starts[b] if b < len(starts) else len(ids)
    prefix, suffix = ids[:first], ids[stop:]
    if bos is not None:
        prefix = np.concatenate([[bos], prefix])  # the piece's start, as in training documents
    if eos is not None:
        suffix = np.concatenate([suffix, [eos]])
    front = round(room * PREFIX_SHARE)
    if suffix_tokens is not None:
        front = max(front, room - suffix_tokens)
    if len(suffix) < room - front:  # a short suffix leaves its share to the prefix
        front = room - len(suffix)
    shift = 1 if bos is not None else 0
    cuts = [s + shift for s in starts if s < first]  # bar starts inside the prefix
    keep = next((c for c in cuts if len(prefix) - c <= front), None)
    if len(prefix) <= front:
        head = prefix
    else:
        head = prefix[keep:] if keep is not None else prefix[len(prefix) - front :]
    back = room - len(head)  # what whole bars left of the prefix's share goes to the suffix
    if suffix_tokens is not None:
        back = min(back, suffix_tokens)
    ends = [s - stop for s in starts if stop < s <= stop + back]  # bar starts inside the suffix
    tail = suffix[: ends[-1]] if ends and len(suffix) > back else suffix[:back]
    return head.astype(np.int64), tail.astype(np.int64)


# --- merging --------------------------------------------------------------------------------
def merge(
    plan: InfillPlan, tokenizer, grammar: InfillGrammar, tokens: Sequence[int]
) -> tuple[symusic.Score, symusic.Score]:
    """The original piece with the span's target notes replaced by ``tokens`` (a completed
    target: Bar … for each span bar), and the new span alone, shifted to start at 0."""
    generated = decode(tokenizer, list(tokens))  # tick 0 = the start of bar a
    tok_ticks = grammar.bar_ticks(tokens)
    start, end = plan.ticks[0], plan.ticks[-1]
    out = plan.score.copy()
    targets = plan.targets
    held: dict[int, list[symusic.Note]] = {}
    kept: dict[int, list[symusic.Note]] = {}
    for index, track in enumerate(out.tracks):
        if targets is None or track_program(track) in targets:
            notes = [n for n in track.notes if not start <= n.time < end]
            kept[index] = notes
            held[index] = [n for n in notes if n.time < start < n.time + n.duration]
    new: dict[int, list[symusic.Note]] = {}
    for track in generated.tracks:
        index = _destination(out, kept, held, track_program(track))
        for note in track.notes:
            onset = _to_original(note.time, tok_ticks, plan.ticks)
            if not start <= onset < end:
                continue
            offset = min(end, _to_original(note.time + note.duration, tok_ticks, plan.ticks))
            if any(h.pitch == note.pitch and h.time + h.duration > onset for h in held[index]):
                continue  # the held note of that pitch still sounds
            new.setdefault(index, []).append(
                symusic.Note(onset, max(1, offset - onset), note.pitch, note.velocity)
            )
    for index, notes in kept.items():
        block = sorted(new.get(index, []), key=lambda n: (n.time, n.pitch))
        at = next((i for i, n in enumerate(notes) if n.time >= start), len(notes))
        out.tracks[index].notes = notes[:at] + block + notes[at:]
    empty_new = [i for i in range(len(plan.score.tracks), len(out.tracks)) if i not in new]
    for index in reversed(empty_new):  # a new track that got no notes is not added
        del out.tracks[index]
    return out, out.clip(start, end, clip_end=False).shift_time(-start)


def _destination(out: symusic.Score, kept: dict, held: dict, key: int) -> int:
    """The index of the track that receives notes of ``key``; a new, named track if none."""
    for index in kept:
        if track_program(out.tracks[index]) == key:
            return index
    track = symusic.Track(name=instrument_name(key), program=max(0, key), is_drum=key == -1)
    out.tracks.append(track)
    index = len(out.tracks) - 1
    kept[index], held[index] = [], []
    return index


def _to_original(tick: int, tok: list[int], orig: list[int]) -> int:
    """A tokenizer tick of the target → the original tick, bar by bar (meters may change)."""
    k = min(max(bisect.bisect_right(tok, tick) - 1, 0), len(tok) - 2)
    span = tok[k + 1] - tok[k]
    return orig[k] + round((tick - tok[k]) * (orig[k + 1] - orig[k]) / max(1, span))


# Settings that infilling fixes itself: the grammar is always on, tempo and meter stay the
# span's own, the bars are the piece's own (the user numbered them), and the instruments come
# from ``tracks``.
FIXED_SETTINGS = {
    "constrained": True,
    "keep_tempo": True,
    "keep_time_signature": True,
    "find_bar_lines": True,  # the default; infilling never re-bars (bar_lines.py)
    "instruments": None,
    "drums": True,
    "prompt_bars": "",  # the bars and tracks come from the request itself
    "prompt_tracks": "",
}


def check_settings(settings) -> None:
    """A one-line error when ``settings`` asks for something infilling does not do."""
    for name, value in FIXED_SETTINGS.items():
        if getattr(settings, name) != value:
            raise MusegenError(
                f"infilling does not take {name}={getattr(settings, name)!r}: it is always "
                "grammar-constrained, keeps the span's tempo and time signature, and takes its "
                "instruments from tracks"
            )


def check_request(tokenizer, bars: Sequence[int], settings: GenerationSettings) -> None:
    """The one-line error of a request that fails whatever the piece: a checkpoint trained
    without infilling, a setting infilling fixes, an empty or reversed range."""
    InfillVocab.from_tokenizer(tokenizer)
    check_settings(settings)
    check_bars(bars, sys.maxsize)
