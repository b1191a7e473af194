"""Grammar-constrained decoding: a small state machine per sequence, built from the tokenizer.

Each sequence carries a :class:`GrammarState` (last token type, position in the bar, current
program, sounding notes…). :meth:`Grammar.mask` turns a batch of states into a ``Bool[B, V]`` of
allowed ids; masks are cached per state key, so a step costs a dict lookup per sequence. The
rules are a strict subset of miditok's ``tokens_types_graph`` plus what it checks for values
(positions increase inside a bar, a NoteOff only for a sounding note), so a constrained sequence
has 0 ``tokens_errors``. Bars and time are tracked even when unconstrained: the sampler uses them
to stop after N bars and the pipeline to find where the continuation starts.

BPE tokenizers are supported by expanding each learned id into its base tokens and walking the
state machine through them (slower per new state, same rules).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import miditok
import torch

from musegen.errors import MusegenError

NOTE_TYPES = {"Pitch", "PitchDrum", "NoteOn", "DrumOn"}
OFF_TYPES = {"NoteOff", "DrumOff"}
# Trailing tokens that leave a note half-written; trimmed when a sequence is finished.
INCOMPLETE = {"Program", "Pitch", "PitchDrum", "NoteOn", "DrumOn"}
# At most this many notes may start at one instant: a chord, not a wall of every pitch.
MAX_ONSETS = 12
UNSUPPORTED = ("use_chords", "use_rests", "use_sustain_pedals", "use_pitch_bends")


@dataclass(frozen=True)
class Controls:
    """What the user constrains besides validity: instruments, drums, tempo/meter, bars.

    Frozen, hence hashable: the pipeline caches one grammar per set of controls. Built from
    the user's settings by :func:`musegen.generation.settings.controls_for`, nowhere else.
    """

    programs: frozenset[int] | None = None  # GM programs allowed for new notes (None = any)
    drums: bool = True
    keep_tempo: bool = True
    keep_time_signature: bool = True
    bars: int | None = None  # stop after this many new bars


@dataclass
class GrammarState:
    """Where one sequence stands; ``key()`` is all that the allowed set depends on."""

    last: str = ""
    program: int = 0
    pos: int = -1  # REMI: Position value in the bar; TSD/MIDILike: units into the bar
    bar_len: int = 32  # units per bar under the current time signature
    den: int = 4
    tick: int = 0  # time cursor in decoded ticks
    bar_tick: int = 0  # where the current bar starts
    bar_seen: bool = False
    onsets: int = 0  # notes started at the current time
    tempo: int | None = None
    time_sig: int | None = None
    active: dict[tuple[int, int], int] = field(default_factory=dict)  # MIDILike sounding notes
    generating: bool = False
    align: int = 0  # units (TSD/MIDILike) or a pending Bar (REMI) before new bars start
    start_tick: int | None = None
    bars: int = 0
    lines: int = 0  # bar lines passed since the very start (prompt included)
    notes: int = 0
    fixed_tempo: int | None = None
    fixed_ts: int | None = None
    target: int | None = None

    def copy(self) -> GrammarState:
        new = copy.copy(self)
        new.active = dict(self.active)
        return new


class Grammar:
    """Token rules for one tokenizer and one set of controls; shareable across threads."""

    kind: str = ""
    initial_pos = -1

    def __init__(self, tokenizer: miditok.MusicTokenizer, controls: Controls | None = None):
        cfg = tokenizer.config
        for flag in UNSUPPORTED:
            if getattr(cfg, flag, False):
                raise MusegenError(
                    f"constrained decoding does not support {flag}; use constrained=False"
                )
        if cfg.use_pitch_intervals or cfg.program_changes or not cfg.use_velocities:
            raise MusegenError(
                "constrained decoding needs velocities, no pitch intervals and no "
                "program changes; use constrained=False"
            )
        self.tokenizer = tokenizer
        self.controls = controls or Controls()
        self.use_programs = bool(cfg.use_programs)
        self.first_note = "Program" if self.use_programs else self._pitch_type(0)
        self.res = int(cfg.max_num_pos_per_beat)
        self.tpb = dict(getattr(tokenizer, "_tpb_per_ts", {}) or {4: tokenizer.time_division})
        base = tokenizer.vocab
        self.types: list[str] = [""] * len(base)
        self.values: list[object] = [None] * len(base)
        self.by_type: dict[str, list[int]] = {}
        for token, i in base.items():
            type_, _, value = token.partition("_")
            self.types[i], self.values[i] = type_, self._parse(type_, value)
            self.by_type.setdefault(type_, []).append(i)
        self.eos = base.get("EOS_None")
        self.min_shift = min(self.by_type.get("TimeShift", [0]), key=lambda i: self.values[i] or 0)
        self.vocab_size = len(tokenizer)
        self.bpe = bool(tokenizer.is_trained)
        self.expand, self.single = self._expansions()
        self._cache: dict[tuple, torch.Tensor] = {}

    # --- vocabulary -------------------------------------------------------------------------
    def _parse(self, type_: str, value: str) -> object:
        if type_ in ("TimeShift", "Duration"):
            beats, pos, res = (int(x) for x in value.split("."))
            return (beats * res + pos) * (self.res // res)
        if type_ == "TimeSig":
            num, den = value.split("/")
            return int(num), int(den)
        try:
            return int(value)
        except ValueError:
            return value

    def _expansions(self) -> tuple[list[tuple[int, ...]], dict[int, int]]:
        """Model id → base ids, and base id → the model id that stands for it alone."""
        tok = self.tokenizer
        if not self.bpe:
            return [(i,) for i in range(self.vocab_size)], {i: i for i in range(self.vocab_size)}
        base = tok.vocab
        expand = []
        for i in range(self.vocab_size):
            byte = tok._model.id_to_token(i)
            expand.append(tuple(base[t] for t in tok._vocab_learned_bytes_to_tokens[byte]))
        single = {b: tok._model.token_to_id(byte) for b, byte in tok._vocab_base_id_to_byte.items()}
        return expand, single

    def _pitch_type(self, program: int) -> str:
        off = self.kind == "MIDILike"
        if program == -1 and self.tokenizer.config.use_pitchdrum_tokens and self.use_programs:
            return "DrumOn" if off else "PitchDrum"
        return "NoteOn" if off else "Pitch"

    def _ticks_per_unit(self, den: int) -> int:
        return max(1, self.tpb.get(den, self.tokenizer.time_division) // self.res)

    def _program_ok(self, program: int) -> bool:
        c = self.controls
        if program == -1:
            return c.drums
        return c.programs is None or program in c.programs

    # --- state machine ----------------------------------------------------------------------
    def start(self, prompt: Sequence[int], generating: bool = True) -> GrammarState:
        """The state after ``prompt`` (model ids), read permissively, ready to continue."""
        state = GrammarState(target=self.controls.bars, pos=self.initial_pos, bar_len=4 * self.res)
        for i in prompt:
            self.advance(state, i)
        if generating:
            self.begin(state)
        return state

    def begin(self, state: GrammarState) -> None:
        """Switch a prompt state into generation: freeze tempo/meter, align to the next bar."""
        state.generating = True
        if self.controls.keep_tempo:
            state.fixed_tempo = state.tempo
        if self.controls.keep_time_signature:
            state.fixed_ts = state.time_sig
        self._begin_align(state)

    def _begin_align(self, state: GrammarState) -> None:
        raise NotImplementedError

    def advance(self, state: GrammarState, model_id: int) -> None:
        for b in self.expand[int(model_id)]:
            self.advance_base(state, b)

    def advance_base(self, state: GrammarState, b: int) -> None:
        type_ = self.types[b]
        if type_ in ("PAD", "BOS", "EOS", "MASK", "Infill", ""):  # Infill: FIM sentinels
            return
        value = self.values[b]
        if type_ == "Program":
            state.program = int(value)
        elif type_ == "Tempo":
            state.tempo = b
        elif type_ == "TimeSig":
            state.time_sig = b
            num, state.den = value
            state.bar_len = num * self.res
        elif type_ in NOTE_TYPES:
            state.onsets += 1
            if state.generating:
                state.notes += 1
            if self.kind == "MIDILike":
                state.active.setdefault((state.program, int(value)), state.tick)
        elif type_ in OFF_TYPES:
            state.active.pop((state.program, int(value)), None)
        self._advance_time(state, type_, value)
        state.last = type_

    def _advance_time(self, state: GrammarState, type_: str, value: object) -> None:
        raise NotImplementedError

    def ends_before(self, state: GrammarState, model_id: int) -> bool:
        """True when ``model_id`` must not be appended because the sequence is complete."""
        bases = self.expand[int(model_id)]
        if not bases:
            return False
        first = bases[0]
        if first == self.eos:
            return True
        return self._ends_before_base(state, first)

    def _ends_before_base(self, state: GrammarState, b: int) -> bool:
        return False

    def ends_after(self, state: GrammarState) -> bool:
        return self._reached(state)

    @staticmethod
    def _reached(state: GrammarState) -> bool:
        """True once generation has started and made the requested number of bars."""
        return (
            state.target is not None and state.start_tick is not None and state.bars >= state.target
        )

    def bars_done(self, state: GrammarState) -> int:
        return state.bars

    def bar_starts(self, ids: Sequence[int]) -> list[int]:
        """Indices in ``ids`` where a bar begins: safe places to cut a prompt."""
        state = GrammarState(pos=self.initial_pos, bar_len=4 * self.res)
        starts = []
        for index, i in enumerate(ids):
            before = state.lines
            self.advance(state, i)
            if state.lines != before:
                starts.append(index if self.kind == "REMI" else index + 1)
        return starts

    def unconstrained_mask(self) -> torch.Tensor:
        """Without the grammar: still no PAD/BOS/MASK, and only the allowed instruments."""
        mask = torch.ones(self.vocab_size, dtype=torch.bool)
        for i, bases in enumerate(self.expand):
            for b in bases:
                type_ = self.types[b]
                if type_ in ("PAD", "BOS", "MASK", "Infill") or (
                    type_ == "Program" and not self._program_ok(int(self.values[b]))
                ):
                    mask[i] = False
        return mask

    # --- what may come next -----------------------------------------------------------------
    def allowed_types(self, state: GrammarState) -> Iterable[str]:
        raise NotImplementedError

    def value_ok(self, state: GrammarState, b: int) -> bool:
        type_, value = self.types[b], self.values[b]
        capped = state.onsets >= MAX_ONSETS
        if type_ == "Program":
            return (self._program_ok(int(value)) and not capped) or self._closable(
                state, int(value)
            )
        if type_ == "Tempo":
            return state.fixed_tempo is None or b == state.fixed_tempo
        if type_ == "TimeSig":
            return state.fixed_ts is None or b == state.fixed_ts
        if type_ in NOTE_TYPES:
            want = self._pitch_type(state.program)
            return type_ == want and not capped and (state.program, int(value)) not in state.active
        if type_ in OFF_TYPES:
            onset = state.active.get((state.program, int(value)))
            return onset is not None and onset < state.tick
        return True

    def _closable(self, state: GrammarState, program: int) -> bool:
        return any(p == program and t < state.tick for (p, _), t in state.active.items())

    def key(self, state: GrammarState) -> tuple:
        active = frozenset((p, n, t < state.tick) for (p, n), t in state.active.items())
        ended = state.target is not None and state.bars >= state.target
        return (
            state.last,
            state.program,
            state.pos,
            state.bar_len,
            state.align,
            ended,
            state.notes > 0,
            state.onsets >= MAX_ONSETS,
            state.fixed_tempo,
            state.fixed_ts,
            self._remaining(state),
            active,
        )

    def _remaining(self, state: GrammarState) -> int | None:
        return None

    def allows(self, state: GrammarState, b: int) -> bool:
        return self.types[b] in set(self.allowed_types(state)) and self.value_ok(state, b)

    def _base_mask(self, state: GrammarState) -> list[int]:
        ids: list[int] = []
        for type_ in self.allowed_types(state):
            ids.extend(b for b in self.by_type.get(type_, ()) if self.value_ok(state, b))
        return ids

    def _model_mask(self, state: GrammarState) -> torch.Tensor:
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        if not self.bpe:
            mask[self._base_mask(state)] = True
            return mask
        for i, bases in enumerate(self.expand):
            if not bases:  # a learned id that stands for nothing
                continue
            s = state.copy()
            for b in bases:
                if not self.allows(s, b) or self.ends_before(s, self.single[b]):
                    break
                self.advance_base(s, b)
            else:
                mask[i] = True
        return mask

    def mask(self, states: Sequence[GrammarState]) -> torch.Tensor:
        """``Bool[B, V]``: True where the id keeps each sequence well formed."""
        rows = []
        for state in states:
            k = self.key(state)
            row = self._cache.get(k)
            if row is None:
                row = self._model_mask(state)
                if not row.any():  # never leave a sequence without a way forward
                    row[self.eos if self.eos is not None else 0] = True
                self._cache[k] = row
            rows.append(row)
        return torch.stack(rows)

    # --- finishing --------------------------------------------------------------------------
    def finish(self, start: GrammarState, continuation: Sequence[int]) -> list[int]:
        """Trim a half-written note off the end and close sounding notes (MIDILike)."""
        bases = [b for i in continuation for b in self.expand[int(i)]]
        keep = len(bases)
        incomplete = INCOMPLETE | ({"Velocity"} - self._complete())
        while keep and self.types[bases[keep - 1]] in incomplete:
            keep -= 1
        state = start.copy()
        for b in bases[:keep]:
            self.advance_base(state, b)
        tail = self._closing(state)
        # Re-use the model ids that lie wholly inside the kept part; spell out the rest.
        out, used = [], 0
        for i in continuation:
            n = len(self.expand[int(i)])
            if used + n > keep:
                break
            out.append(int(i))
            used += n
        out.extend(self.single[b] for b in bases[used:keep] + tail)
        return out

    def _complete(self) -> set[str]:
        return set()

    def _closing(self, state: GrammarState) -> list[int]:
        return []
