"""Prompt guidance: keep a continuation's key, groove, instruments, drum kit and density those
of the bars before it.

A model that has seen many keys and rhythms drifts from the prompt's within a few bars (issue
13: the 4-bar continuations were 1.2-1.5 times farther in pitch class from the real next bars
than simply copying the prompt's last bars, drum parts repeated their pattern less than real
drummers do, and in 32-bar pieces a band's instrument could fall silent for good). Five logits
processors pull the new notes back toward the prompt, each on one kind of token, so the rest
stays the model's own:

- :class:`KeyGuidance` chooses among **pitches**, track by track. Its *target* for a track is
  the pitch-class shares of that track's notes in the prompt's last :data:`KEY_BARS` bars (all
  pitched tracks' together for a track with fewer than :data:`MIN_NOTES` notes there). At every
  step it compares the target of the track about to play with the shares of the notes that
  track has written so far (the latest :data:`KEY_BARS` new bars, counted as if
  :data:`PRIOR_NOTES` notes had already matched the target, so the first notes are not pushed
  around) and adds ``strength * log((target + a) / (written + a))`` to each pitch token: a
  pitch class played less than in the prompt gains, one overplayed loses, one the prompt never
  played stays possible but unlikely once written. Two earlier designs were tried on the
  validation pieces and dropped. A fixed prior (the pitch probabilities times the target's
  shares) sharpened an already balanced distribution and moved the continuations *farther*
  from the real next bars. One target for all tracks pushed a bass line toward the melody's
  pitch classes, and in the hand-made band of ``tests/test_shipped_checkpoint.py`` the drums
  or the bass then fell silent in a few variations, which they never did unguided.
- :class:`TrackGuidance` chooses among **instruments** (which track plays the next note), the
  same way: its target is each track's share of the notes in the prompt's last
  :data:`TRACK_BARS` bars, compared with the shares in the latest new bars. A track that has
  gone quiet becomes the likelier one to play the next note.
- :class:`KitGuidance` chooses among **drums** (which drum each drum note hits), the same way,
  against the drums' shares of the prompt's last :data:`KEY_BARS` bars.
- :class:`GrooveGuidance` chooses **where the next onset falls** (a position, or the bar line)
  and **which tracks play at it**, on the 16th-note grid: the prompt's last
  :data:`GROOVE_BARS` bars give how often each track plays each 16th, and an onset gets likelier
  where the prompt plays and less likely after skipping a 16th it always plays, as far as the
  prompt repeats its pattern bar after bar. A fixed prior, since a groove is a pattern
  repeated; on by default only for a drum loop (a prompt of drums alone).
- :class:`DensityGuidance` scales the odds of **one more note at an onset** by how the new
  bars' notes per bar compare with the prompt's last :data:`DENSITY_BARS` bars.
- :class:`RangeGuidance` chooses among **pitches**, track by track, like key guidance, but by
  register: a pitch below the track's lowest note in the prompt's last :data:`KEY_BARS` bars or
  above its highest loses a logit per :data:`RANGE_SCALE` semitones outside (at strength 1).

Each adds its bias and then shifts its tokens together so that their total probability is what
the model gave them: key and range guidance change which pitch a note gets, track guidance which
instrument plays it, kit guidance which drum, never whether a note is written. Groove guidance
changes where the next onset falls, whether one comes before the bar line, and which tracks
play at it. Density guidance, not shifted, changes how many notes sound at an onset. Drum notes
(``PitchDrum``) are never touched by key guidance; a prompt without pitched notes (or without
onsets, or notes) gets no guidance of that kind. The measurements are in
``benchmarks/results/guidance/``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from musegen.generation.grammar import Grammar
from musegen.generation.repeat import RepeatGuidance

KEY_BARS = 8  # the prompt bars that set the key target, and the new bars compared with it
GROOVE_BARS = 4  # the prompt bars whose onset positions set the groove prior
TRACK_BARS = 4  # the prompt bars that set each track's share of the notes, and the new bars
PRIOR_NOTES = 8.0  # the written shares start as this many notes matching the target
MIN_NOTES = 8  # a track with fewer notes in the prompt's bars takes the shares of all tracks
KEY_SMOOTHING = 0.02  # added to every pitch-class share, so none becomes impossible
GROOVE_SMOOTHING = 0.05  # added to every 16th's share of bars, likewise
TRACK_SMOOTHING = 0.02  # added to every track's share of the notes, likewise
DENSITY_BARS = 4  # the prompt bars that set the notes per bar, and the new bars compared with it
PRIOR_BARS = 1.0  # the new bars start as this many bars at the prompt's density
RANGE_SCALE = 6.0  # semitones outside a track's prompt range that cost one logit at strength 1
# A prompt whose last bar has onsets only before this position (its first 16th, in 32nds) ends
# with a note played a little early for the next bar, not with a bar: density and groove
# guidance leave that bar out (5 of the 12 validation drum prompts end so, by a one-off count).
FRAGMENT_END = 2


def ends_a_bar(position: int) -> bool:
    """Whether a prompt's last bar, whose latest onset is at ``position`` (-1: none), counts as
    a bar of the prompt (see :data:`FRAGMENT_END`)."""
    return position >= FRAGMENT_END


def last_named(grammar: Grammar, type_: str) -> list[int | None]:
    """Per model id, the value of the last ``type_`` token it holds (None: it holds none)."""
    named = [
        [int(grammar.values[b]) for b in bases if grammar.types[b] == type_]
        for bases in grammar.expand
    ]
    return [values[-1] if values else None for values in named]


def reweight_within(logits: torch.Tensor, bias: torch.Tensor, members: torch.Tensor):
    """``logits + bias`` on the ids in ``members`` (``Bool[V]``), shifted so that their total
    probability is unchanged; other ids, and rows where no member is allowed, as they were."""
    before = logits.masked_fill(~members, -math.inf).logsumexp(-1, keepdim=True)
    after = (logits + bias).masked_fill(~members, -math.inf).logsumexp(-1, keepdim=True)
    shift = torch.where(torch.isfinite(before), after - before, torch.zeros_like(before))
    return torch.where(members, logits + bias - shift, logits)


class _PromptGuidance:
    """What the processors share: which ids hold what, bar-by-bar counting of a row's tokens,
    and skipping the steps where no row may write one of their tokens.

    Stateful: one instance per request. The first call reads the prompts (the rows' tokens at
    that point); later calls count only the tokens sampled since, and only at steps where some
    row may write one of the guided tokens, so the other steps cost one check.
    """

    kind = ""  # the token type reweighted ("Pitch", "Position")
    width = 0  # how many classes a bar's counts hold

    def __init__(self, grammar: Grammar, strength: float):
        self.strength = float(strength)
        cls = torch.full((grammar.vocab_size,), -1, dtype=torch.long)
        self._classes: list[list[int]] = []  # per model id: the classes of the tokens it holds
        self._bar_lines: list[int] = []  # per model id: bar lines it holds
        for i, bases in enumerate(grammar.expand):
            types = [grammar.types[b] for b in bases]
            found = [
                self.class_of(grammar.values[b]) for b in bases if grammar.types[b] == self.kind
            ]
            self._classes.append(found)
            self._bar_lines.append(types.count("Bar"))
            if types == [self.kind]:  # a merged (BPE) id is left as the model scored it
                cls[i] = found[0]
        self._members = cls >= 0
        self._member_ids = self._members.nonzero().squeeze(1)
        self._class = cls.clamp(min=0)

    def class_of(self, value) -> int:
        raise NotImplementedError

    def weights(self, tokens: list[list[int]]) -> torch.Tensor:
        """Each row's bias per class, ``Float[B, width]``; the first call reads the prompts."""
        raise NotImplementedError

    def read_prompts(self) -> bool:
        """Whether :meth:`weights` has been called (the prompts are read)."""
        raise NotImplementedError

    def __call__(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        members = self._members.to(logits.device)
        allowed = logits.index_select(-1, self._member_ids.to(logits.device)).isfinite().any()
        if self.read_prompts() and not allowed:
            return logits  # no row may write one of these tokens now: count them later
        return self.apply(logits, self.weights(ctx.tokens).to(logits.device), members)

    def apply(self, logits: torch.Tensor, weights: torch.Tensor, members: torch.Tensor):
        """The logits with each row's ``weights`` (per class) on the guided ids."""
        return reweight_within(logits, weights[:, self._class.to(logits.device)], members)


class _FeedbackGuidance(_PromptGuidance):
    """A processor whose target comes from each row's prompt and whose correction comes from
    what the row has written since: the first call reads the prompts, later calls count only
    the tokens sampled since."""

    bars = 0  # the prompt bars that set the target, and the new bars compared with it

    def __init__(self, grammar: Grammar, strength: float, bars: int | None = None):
        super().__init__(grammar, strength)
        self.keep = int(bars or self.bars)
        self._targets: list = []  # per row: what its prompt sets
        self._written: list = []  # per row: the counts of its latest new bars
        self._counted: list[int] = []  # per row: the tokens read so far

    def read_prompts(self) -> bool:
        return bool(self._counted)

    def read_prompt(self, seq: Sequence[int]) -> tuple:
        """A row's target and its empty written counts, from its prompt ``seq``."""
        raise NotImplementedError

    def _count(self, tokens: Sequence[int], written) -> None:
        raise NotImplementedError

    def rows(self, tokens: list[list[int]]) -> Iterator[tuple]:
        """Each row's target and its written counts, brought up to date."""
        if not self._counted:
            for seq in tokens:
                target, written = self.read_prompt(seq)
                self._targets.append(target)
                self._written.append(written)
                self._counted.append(len(seq))
        for row, seq in enumerate(tokens):
            self._count(seq[self._counted[row] :], self._written[row])
            self._counted[row] = len(seq)
            yield self._targets[row], self._written[row]


class _ProgramTracking(_FeedbackGuidance):
    """A processor that follows which track is playing, for guidance kept track by track."""

    def __init__(self, grammar: Grammar, strength: float, bars: int | None = None):
        super().__init__(grammar, strength, bars)
        self._program = last_named(grammar, "Program")

    def _walk(self, tokens: Sequence[int], state) -> Iterator[list[int]]:
        """The classes each of ``tokens`` holds, with ``state``'s bars and program brought up
        to that token."""
        for token in tokens:
            if not 0 <= token < len(self._classes):
                continue
            for _ in range(self._bar_lines[token]):
                state.bars.append({})
            if self._program[token] is not None:
                state.program = self._program[token]
            yield self._classes[token]


class KeyGuidance(_ProgramTracking):
    """Steers each row's new pitch classes toward the shares of its prompt's last bars, track by
    track: a bass line keeps its roots and fifths, a melody its scale (an instrument the prompt
    barely plays is held to the prompt's shares over all its pitched tracks)."""

    kind, width, bars = "Pitch", 12, KEY_BARS

    def class_of(self, value) -> int:
        return int(value) % 12

    def _count(self, tokens: Sequence[int], notes: _Notes) -> None:
        for classes in self._walk(tokens, notes):
            for pc in classes:
                notes.bars[-1].setdefault(notes.program, [0] * 12)[pc] += 1

    def read_prompt(self, seq: Sequence[int]) -> tuple[dict, _Notes]:
        """Pitch-class shares by program (None: all tracks together); the program playing."""
        prompt = _Notes(deque([{}], maxlen=self.keep))
        self._count(seq, prompt)
        by_program = {p: prompt.total(p) for p in prompt.programs()}
        overall = sum(by_program.values(), torch.zeros(12))
        targets = {p: c / c.sum() for p, c in by_program.items() if c.sum() >= MIN_NOTES}
        targets[None] = overall / overall.sum().clamp(min=1)
        return targets, _Notes(deque([{}], maxlen=self.keep), prompt.program)

    def weights(self, tokens: list[list[int]]) -> torch.Tensor:
        rows = []
        for targets, written in self.rows(tokens):
            target = targets.get(written.program, targets[None])
            notes = written.total(written.program)
            shares = (notes + PRIOR_NOTES * target) / (notes.sum() + PRIOR_NOTES)
            bias = self.strength * torch.log((target + KEY_SMOOTHING) / (shares + KEY_SMOOTHING))
            rows.append(bias if target.sum() > 0 else torch.zeros(12))  # nothing to keep
        return torch.stack(rows)


@dataclass
class _Notes:
    """One row's pitch-class counts per program, bar by bar, and the program now playing."""

    bars: deque[dict[int | None, list[int]]]
    program: int | None = None

    def programs(self) -> set[int | None]:
        return {p for bar in self.bars for p in bar}

    def total(self, program: int | None) -> torch.Tensor:
        """``program``'s counts summed over the bars, ``Float[12]``."""
        rows = [bar[program] for bar in self.bars if program in bar] or [[0] * 12]
        return torch.tensor([sum(c) for c in zip(*rows, strict=True)], dtype=torch.float)


class GrooveGuidance(_FeedbackGuidance):
    """Keeps each row's onset pattern that of its prompt's last bars, on the 16th-note grid:
    where the next onset falls (or that the bar ends), and which tracks play at it.

    The prompt's last :data:`GROOVE_BARS` bars with onsets give, per 16th-note cell ``c``
    (positions rounded to the nearest 16th, as the groove measure rounds), the share ``f(c)``
    of those bars with an onset there, and per track the share ``f_t(c)``. Read as a pattern
    that plays each cell with probability ``f(c)``, the next onset lands on ``c`` after
    passing the cells between without a hit, and the bar ends after passing all the rest. So
    the next onset's position gets ``strength * (log f(c) + sum of log(1 - f) over the cells
    passed)`` (each term smoothed and relative to a certain cell) and the bar line the sum
    over all the cells left: landing where the prompt never plays costs, and so does
    *skipping* a cell it always plays. At an onset, each track gets ``strength * log
    f_t(c)``: a bass that plays on the beats keeps to them while the hi-hat fills the 8ths.
    Each term is weighed by how steadily the prompt repeats that pattern (:func:`steadiness`:
    the timing terms by all tracks' onsets together, a track's by its own), so a track that
    plays in one bar of four, or never repeats itself, is left as the model scores it. The
    timing tokens (positions and the bar line) are shifted together, and so are the tracks, so
    each kind keeps the total probability the model gave it.

    Off by default, except for a drum loop (``drum_loops``, the setting ``drum_loop_groove``).
    On the validation pieces (``benchmarks/results/guidance``) it raises every group's groove
    and keeps every track playing, but a pop-piano continuation can run denser than the real
    bars and a band's pitch classes drift a little; a drum loop has no pitched track to move,
    and there it met every target. Without the steadiness weights (commit 3bea37e) it
    sharpened what the model already does: a track that plays in few cells lost out at every
    cell, and some fell silent. Three other designs did no better there. Weighing only the
    landing cell, on the 32nd-note grid, thinned the played drum parts, since skipping a cell
    cost nothing. Feedback, the new bars' shares ``g`` against the prompt's, with the skip
    terms (commit c2a643c), swung from bar to bar: the terms of 16 cells add up, so after one
    bar a little busier than the prompt's the bar line outweighed every onset and the next bar
    came out empty. Feedback without them changed nothing measurable.
    """

    kind, bars = "Position", GROOVE_BARS

    def __init__(
        self, grammar: Grammar, strength: float, bars: int | None = None, drum_loops: float = 0.0
    ):
        self.drum_loops = float(drum_loops)  # the strength for a prompt of drums alone, if more
        positions = grammar.by_type.get("Position", [])
        self.cells = 2 + max((int(grammar.values[i]) for i in positions), default=0) // 2
        super().__init__(grammar, strength, bars)
        # per model id, in order: ("bar", 0), ("position", p) or ("track", program + 1)
        self._events: list[list[tuple[str, int]]] = []
        for bases in grammar.expand:
            events = []
            for b in bases:
                if grammar.types[b] == "Bar":
                    events.append(("bar", 0))
                elif grammar.types[b] == "Position":
                    events.append(("position", int(grammar.values[b])))
                elif grammar.types[b] == "Program":
                    events.append(("track", int(grammar.values[b]) + 1))
            self._events.append(events)
        alone = [grammar.types[b[0]] if len(b) == 1 else "" for b in grammar.expand]
        self._bar_ids = torch.tensor([t == "Bar" for t in alone])  # merged ids: as scored
        self._track_ids = torch.tensor([t == "Program" for t in alone])
        self._track = torch.tensor(
            [
                int(grammar.values[b[0]]) + 1 if t == "Program" else 0
                for b, t in zip(grammar.expand, alone, strict=True)
            ]
        )
        self._position_ids = self._members.clone()  # single Position ids
        self._cell_of = self._class[self._position_ids]  # their cells, in id order
        self._track_of = self._track[self._track_ids]  # the Program ids' tracks, likewise
        self._cell_index = torch.arange(self.cells)
        self._members = self._members | self._bar_ids | self._track_ids
        self._member_ids = self._members.nonzero().squeeze(1)
        self._guided_tracks: torch.Tensor | None = None  # Bool[B, V], from the prompts

    def class_of(self, value) -> int:
        return (int(value) + 1) // 2  # the nearest 16th

    def _count(self, tokens: Sequence[int], onsets: _Onsets) -> None:
        for token in tokens:
            for kind, value in self._events[token] if 0 <= token < len(self._events) else ():
                if kind == "bar":
                    onsets.close()
                elif kind == "position":
                    onsets.position, onsets.cell = value, self.class_of(value)
                elif onsets.current is not None:
                    onsets.current[value, max(onsets.cell, 0)] = True

    def read_prompt(self, seq: Sequence[int]) -> tuple[tuple[torch.Tensor, ...], _Onsets]:
        """Of the prompt's latest bars with onsets, the share that have one in each cell
        (``Float[cells]``) and per track (``Float[129, cells]``, row 0: drums), and the weights
        of their terms: the row's strength times how steadily they repeat their pattern
        (:func:`steadiness`, all tracks together and per track); the new bars' onsets, to
        come. A drum loop (drums alone in those bars) gets ``drum_loops`` if that is more.
        Also the Program ids of the tracks with a pattern to keep (``Bool[V]``), which
        :meth:`apply` shifts among themselves."""
        prompt = _Onsets(deque(maxlen=self.keep), torch.zeros(129, self.cells, dtype=torch.bool))
        self._count(seq, prompt)
        cell = prompt.cell
        if ends_a_bar(prompt.position):
            prompt.close()  # the prompt's last bar, as far as it goes
        played = _stacked([bar for bar in prompt.bars if bar.any()], prompt.current)
        n = max(len(played), 1)
        union = played.amax(1)  # Float[n, cells]: any track
        f, f_t = union.sum(0) / n, played.sum(0) / n
        if len(played) < 2:  # a prompt of one bar: its pattern is all there is to go by
            s, s_t = torch.tensor(1.0), f_t.any(1).float()
        else:
            s = steadiness(union)
            s_t = torch.stack([steadiness(track) for track in played.unbind(1)])
        strength = self.strength
        if f_t[0].any() and not f_t[1:].any():  # a drum loop: drums alone in its latest bars
            strength = max(strength, self.drum_loops)
        w, w_t = strength * s, strength * s_t
        guided = torch.zeros(len(self._members), dtype=torch.bool)
        guided[self._track_ids] = w_t[self._track_of] > 0
        return (f, f_t, w, w_t, guided), _Onsets(deque(), None, cell)

    def weights(self, tokens: list[list[int]]) -> torch.Tensor:
        """Each row's bias per model id, ``Float[B, V]`` (0 off the guided ids)."""
        rows = []
        a = GROOVE_SMOOTHING
        for (f, f_t, w, w_t, _), written in self.rows(tokens):
            bias = torch.zeros(len(self._members))
            if f.any() and (w > 0 or w_t.any()):  # else no groove to keep, or none asked for
                now = written.cell
                land = torch.log((f + a) / (1 + a))
                skip = torch.log((1 - f + a) / (1 + a))
                skip[: now + 1] = 0  # the cells behind (or at) the latest onset
                passed = torch.cumsum(skip, 0) - skip  # the cells before each one
                ahead = torch.where(self._cell_index > now, land + passed, 0)
                bias[self._position_ids] = w * ahead[self._cell_of]
                bias[self._bar_ids] = w * skip.sum()
                at = w_t * torch.log((f_t[:, max(now, 0)] + a) / (1 + a))
                bias[self._track_ids] = at[self._track_of]
            rows.append(bias)
        if self._guided_tracks is None:  # fixed by the prompts: stacked once
            self._guided_tracks = torch.stack([target[-1] for target in self._targets])
        return torch.stack(rows)

    def apply(self, logits: torch.Tensor, weights: torch.Tensor, members: torch.Tensor):
        """Positions and the bar line shifted together; the tracks with a pattern to keep
        (each row's own) likewise, among themselves: a track without one, or one the prompt's
        bars never play, keeps the probability the model gave it, so it neither gains what a
        steady track loses at a cell it skips nor is pushed out."""
        if not weights.any():  # e.g. a band prompt with only drum loops guided: nothing to do
            return logits
        tracks = self._track_ids.to(logits.device)
        logits = reweight_within(logits, weights, members & ~tracks)  # positions, bar line
        return reweight_within(logits, weights, self._guided_tracks.to(logits.device))


def steadiness(bars: torch.Tensor) -> torch.Tensor:
    """How steadily ``bars`` (``Float[n, cells]``, one onset pattern per bar) repeat one
    pattern, from 0 to 1: the mean over the bars with onsets of the Jaccard similarity to the
    best-matching other such bar (the groove measure, within the prompt). 0 when fewer than two
    bars have onsets: a pattern played once is not a groove."""
    bars = bars[bars.any(1)]
    if len(bars) < 2:
        return torch.tensor(0.0)
    both = bars @ bars.T
    either = bars.sum(1, keepdim=True) + bars.sum(1) - both
    similar = (both / either).fill_diagonal_(-1.0)
    return similar.amax(1).mean()


def _stacked(bars: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The bars as ``Float[n, *like.shape]``; ``n`` may be 0."""
    return torch.stack(list(bars)).float() if bars else like.new_zeros(0, *like.shape).float()


@dataclass
class _Onsets:
    """One row's onset cells per track, bar by bar (the latest few), and the bar under way;
    with ``current`` None only where the latest onset is (what a row writes: the prior is
    fixed, so only its position in the bar counts)."""

    bars: deque[torch.Tensor]  # Bool[129, cells] each
    current: torch.Tensor | None
    cell: int = -1  # the cell of the latest onset (-1: none yet in this bar)
    position: int = -1  # of the latest onset

    def close(self) -> None:
        if self.current is not None:
            self.bars.append(self.current)
            self.current = torch.zeros_like(self.current)
        self.cell = self.position = -1


class TrackGuidance(_FeedbackGuidance):
    """Steers which instrument plays each new note toward the prompt's balance of tracks: a track
    that has fallen silent in the new bars while the prompt's last bars gave it a share of the
    notes becomes the likelier one to play the next note."""

    kind, width, bars = "Program", 129, TRACK_BARS  # class = program + 1: drums (-1) are 0
    min_notes = 1  # fewer notes in the prompt's bars: no balance to keep

    def class_of(self, value) -> int:
        return int(value) + 1

    def _count(self, tokens: Sequence[int], bars: deque[list[int]]) -> None:
        for token in tokens:
            if 0 <= token < len(self._classes):
                for _ in range(self._bar_lines[token]):
                    bars.append([0] * self.width)
                for track in self._classes[token]:
                    bars[-1][track] += 1

    def read_prompt(self, seq: Sequence[int]) -> tuple[torch.Tensor, deque[list[int]]]:
        """Each track's share of the prompt's notes; notes per track, bar by bar, to come."""
        prompt: deque[list[int]] = deque([[0] * self.width], maxlen=self.keep)
        self._count(seq, prompt)
        notes = torch.tensor(list(prompt), dtype=torch.float).sum(0)
        if notes.sum() < self.min_notes:
            notes.zero_()
        return notes / notes.sum().clamp(min=1), deque([[0] * self.width], maxlen=self.keep)

    def weights(self, tokens: list[list[int]]) -> torch.Tensor:
        rows = []
        for target, written in self.rows(tokens):
            notes = torch.tensor(list(written), dtype=torch.float).sum(0)
            shares = (notes + PRIOR_NOTES * target) / (notes.sum() + PRIOR_NOTES)
            bias = self.strength * torch.log(
                (target + TRACK_SMOOTHING) / (shares + TRACK_SMOOTHING)
            )
            rows.append(bias if target.sum() > 0 else torch.zeros(self.width))  # nothing to keep
        return torch.stack(rows)


class KitGuidance(TrackGuidance):
    """Keeps a drum part on the prompt's kit: which drum (kick, snare, closed or open hi-hat,
    crash, ride, toms …) each new drum note hits is steered toward the drums' shares of the
    prompt's last :data:`KEY_BARS` bars, as key guidance does for a track's pitch classes.

    The model learnt its drums from the Groove performances, whose kit speaks a dialect of
    General MIDI (a crash is mostly 55, a splash in General MIDI, and an open hi-hat seldom 46),
    so a band's drummer could turn an open-hi-hat groove into snare and kick, or answer a crash
    with a splash. Only the drum notes are reweighted, with their total probability kept:
    whether a drum note comes, and when, stays the model's own. A prompt with fewer than
    :data:`MIN_NOTES` drum notes in those bars gets none. On by default since 2026-12-06: on
    the validation pieces it brought the new drum bars' kit nearer the real bars' (drum kit
    distance 0.29 → 0.25 in General MIDI) and lost no target (``benchmarks/results/guidance``).
    """

    kind, width, bars = "PitchDrum", 128, KEY_BARS
    min_notes = MIN_NOTES

    def class_of(self, value) -> int:
        return int(value)


class DensityGuidance(_FeedbackGuidance):
    """Holds each row's notes per bar near its prompt's: once the new bars run denser (sparser)
    than the prompt's last :data:`DENSITY_BARS` bars, another note at the same onset (a fuller
    chord, another drum hit) gets less (more) likely against moving on.

    Unlike the others this one changes *whether* a note comes, by design. The notes at an onset
    come as a run of "one more" choices ended by the next onset or bar line, so their number
    beyond the first grows with the odds of one more: those odds are scaled by ``r**-strength``,
    where ``r`` is the written notes per bar over the prompt's (the latest new bars, counted as
    if :data:`PRIOR_BARS` bars had matched). Where the onsets fall stays the model's own. (A
    first design biased every "go on" token against the bar line and changed nothing on a
    full-band prompt: a bar ends when its onsets have run to its end, not by an early choice.
    Its code is gone, so no command reproduces that.)
    """

    width, bars = 1, DENSITY_BARS  # every note counts the same

    def __init__(self, grammar: Grammar, strength: float, bars: int | None = None):
        self.kind = grammar.first_note  # one per note: its Program (or its Pitch)
        super().__init__(grammar, strength, bars)
        self._members = torch.tensor(  # a note's first token, merged (BPE) ids included
            [bool(b) and grammar.types[b[0]] == grammar.first_note for b in grammar.expand]
        )
        self._member_ids = self._members.nonzero().squeeze(1)
        self._position = last_named(grammar, "Position")

    def class_of(self, value) -> int:
        return 0

    def _count(self, tokens: Sequence[int], bars: _Bars) -> None:
        for token in tokens:
            if 0 <= token < len(self._classes):
                for _ in range(self._bar_lines[token]):
                    bars.close()
                if self._position[token] is not None:
                    bars.position = self._position[token]
                bars.current += len(self._classes[token])

    def read_prompt(self, seq: Sequence[int]) -> tuple[float, _Bars]:
        """The prompt's notes per bar (its latest bars, from its first bar line)."""
        prompt = _Bars(deque(maxlen=self.keep), started=False)
        self._count(seq, prompt)
        if ends_a_bar(prompt.position):
            prompt.close()  # the prompt's last bar, as far as it goes
        done = list(prompt.done)
        return (sum(done) / len(done) if done else 0.0), _Bars(
            deque(maxlen=self.keep), started=False
        )

    def weights(self, tokens: list[list[int]]) -> torch.Tensor:
        rows = []
        for target, written in self.rows(tokens):
            if target <= 0:  # a silent prompt: no density to keep
                rows.append(0.0)
                continue
            ratio = (sum(written.done) + PRIOR_BARS * target) / (
                (len(written.done) + PRIOR_BARS) * target
            )
            rows.append(-self.strength * math.log(max(ratio, 1e-3)))
        return torch.tensor(rows).unsqueeze(1)

    def apply(self, logits: torch.Tensor, weights: torch.Tensor, members: torch.Tensor):
        return logits + weights * members  # not renormalised: how many notes come is the point


@dataclass
class _Bars:
    """One row's notes per completed bar (the latest few) and in the bar under way."""

    done: deque[int]
    current: int = 0
    started: bool = True  # False: what comes before the next bar line is not counted
    position: int = -1  # of the latest onset in the bar under way (-1: none yet)

    def close(self) -> None:
        if self.started:
            self.done.append(self.current)
        self.current, self.started, self.position = 0, True, -1


class RangeGuidance(_ProgramTracking):
    """Keeps each track in the register it played in the prompt's last :data:`KEY_BARS` bars.

    Key guidance holds a track's pitch classes, not its octave: at strength 2 it met its
    pitch-class targets by moving notes into other octaves (``benchmarks/results/guidance``),
    and with the other guidance on, the new bars' pitch ranges sat 1.35-1.7 times as far from
    the real bars' as the prompt's on validation. A pitch ``d`` semitones outside the track's
    lowest-to-highest there gets ``-strength * d / RANGE_SCALE``; pitches inside are left
    alike, and all pitches are then shifted together, so whether a note comes stays the
    model's. A track with fewer than :data:`MIN_NOTES` notes there has no register to keep and
    is left alone. Off by default: on validation it lost a target (the README there).
    """

    kind, width, bars = "Pitch", 128, KEY_BARS

    def __init__(self, grammar: Grammar, strength: float, bars: int | None = None):
        super().__init__(grammar, strength, bars)
        self._pitch = torch.arange(self.width, dtype=torch.float)

    def class_of(self, value) -> int:
        return int(value)

    def _count(self, tokens: Sequence[int], state: _Pitches) -> None:
        for classes in self._walk(tokens, state):
            state.bars[-1].setdefault(state.program, []).extend(classes)

    def read_prompt(self, seq: Sequence[int]) -> tuple[dict, _Pitches]:
        """Each track's (lowest, highest) pitch in the prompt's last bars; the program playing."""
        prompt = _Pitches(deque([{}], maxlen=self.keep))
        self._count(seq, prompt)
        played: dict[int | None, list[int]] = {}
        for bar in prompt.bars:
            for program, pitches in bar.items():
                played.setdefault(program, []).extend(pitches)
        ranges = {p: (min(v), max(v)) for p, v in played.items() if len(v) >= MIN_NOTES}
        return ranges, _Pitches(deque([{}], maxlen=1), prompt.program)

    def weights(self, tokens: list[list[int]]) -> torch.Tensor:
        rows = []
        for ranges, written in self.rows(tokens):
            if written.program not in ranges:
                rows.append(torch.zeros(self.width))  # no register to keep
                continue
            low, high = ranges[written.program]
            outside = (low - self._pitch).clamp(min=0) + (self._pitch - high).clamp(min=0)
            rows.append(-self.strength * outside / RANGE_SCALE)
        return torch.stack(rows)


@dataclass
class _Pitches:
    """One row's pitches per program, bar by bar, and the program now playing."""

    bars: deque[dict[int | None, list[int]]]
    program: int | None = None


def guidance_for(settings, grammar: Grammar) -> list[_PromptGuidance | RepeatGuidance]:
    """The processors a request's settings turn on (fresh ones: they hold its rows' state)."""
    groove = partial(GrooveGuidance, drum_loops=settings.drum_loop_groove)
    chosen = [  # (processor, strength, whether it runs)
        (KeyGuidance, settings.key_guidance, settings.key_guidance),
        (groove, settings.groove_guidance, settings.groove_guidance or settings.drum_loop_groove),
        (TrackGuidance, settings.track_guidance, settings.track_guidance),
        (KitGuidance, settings.kit_guidance, settings.kit_guidance),
        (DensityGuidance, settings.density_guidance, settings.density_guidance),
        (RangeGuidance, settings.range_guidance, settings.range_guidance),
        (RepeatGuidance, settings.repeat_guidance, settings.repeat_guidance),
    ]
    return [kind(grammar, strength) for kind, strength, on in chosen if on]
