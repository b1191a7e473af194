"""The rules of each tokenizer family, on top of the state machine in
:mod:`musegen.generation.grammar`, and :func:`grammar_for`, which picks them by tokenizer class
(here, not in the state machine's module, so that the two do not import each other).

REMI: Bar → Position → (Tempo) → Program → Pitch → Velocity → Duration, positions strictly
increasing inside a bar. TSD: TimeShift instead of Bar/Position, with bars tracked from the
accumulated time. MIDILike: TSD's timing with NoteOn/NoteOff, a NoteOff only for a sounding note.
"""

from __future__ import annotations

from collections.abc import Iterable

import miditok

from musegen.errors import MusegenError
from musegen.generation.grammar import (
    NOTE_TYPES,
    OFF_TYPES,
    Controls,
    Grammar,
    GrammarState,
)


class RemiGrammar(Grammar):
    """REMI: Bar → TimeSig → Position (→ Tempo) → Program → Pitch → Velocity → Duration."""

    kind = "REMI"

    def _begin_align(self, state: GrammarState) -> None:
        state.align = 1  # new bars start with a Bar token

    def _advance_time(self, state: GrammarState, type_: str, value: object) -> None:
        if type_ == "Bar":
            if state.bar_seen:
                state.bar_tick += state.bar_len * self._ticks_per_unit(state.den)
            state.bar_seen, state.pos, state.tick, state.onsets = True, -1, state.bar_tick, 0
            state.lines += 1
            if state.generating:
                state.align = 0
                state.bars += 1
                if state.start_tick is None:
                    state.start_tick = state.bar_tick
        elif type_ == "Position":
            state.pos, state.onsets = int(value), 0
            state.tick = state.bar_tick + state.pos * self._ticks_per_unit(state.den)

    def _ends_before_base(self, state: GrammarState, b: int) -> bool:
        return self.types[b] == "Bar" and self._reached(state)

    def ends_after(self, state: GrammarState) -> bool:
        return False

    def allowed_types(self, state: GrammarState) -> Iterable[str]:
        last, notes = state.last, state.notes > 0
        bar = ("Bar",) if notes else ()
        if state.align or last == "":
            return ("Bar",)
        if last == "Bar":
            return ("TimeSig",) if "TimeSig" in self.by_type else ("Position", *bar)
        if last == "TimeSig":
            return ("Position", *bar)
        if last == "Position":
            return (self.first_note, "Tempo") if "Tempo" in self.by_type else (self.first_note,)
        if last == "Tempo":
            return (self.first_note, "Position", *bar)
        if last == "Program":
            return (self._pitch_type(state.program),)
        if last in NOTE_TYPES:
            return ("Velocity",)
        if last == "Velocity":
            return ("Duration",)
        eos = ("EOS",) if state.target is None else ()  # asked for N bars: no early end
        return (self.first_note, "Position", "Bar", *eos)  # after Duration

    def value_ok(self, state: GrammarState, b: int) -> bool:
        if self.types[b] == "Position":
            return state.pos < int(self.values[b]) < state.bar_len
        return super().value_ok(state, b)


class TSDGrammar(Grammar):
    """TSD: TimeShift moves time; notes are Program → Pitch → Velocity → Duration."""

    kind = "TSD"
    initial_pos = 0

    def _begin_align(self, state: GrammarState) -> None:
        if state.pos > 0 or (state.pos == 0 and state.onsets):
            state.align = state.bar_len - state.pos
        else:
            state.align = 0
            state.start_tick = state.tick

    def _advance_time(self, state: GrammarState, type_: str, value: object) -> None:
        if type_ != "TimeShift":
            return
        units = int(value)
        state.onsets = 0
        state.tick += units * self._ticks_per_unit(state.den)
        state.pos += units
        while state.pos >= state.bar_len:
            state.pos -= state.bar_len
            state.lines += 1
            if state.start_tick is not None:
                state.bars += 1
        if state.align:
            state.align = max(0, state.align - units)
            if not state.align:
                state.start_tick = state.tick

    def _remaining(self, state: GrammarState) -> int | None:
        if state.align:
            return state.align
        if state.target is None:
            return None
        left = (state.target - state.bars) * state.bar_len - state.pos
        return left - 1 if state.notes == 0 else left  # no bar ends before a note exists

    def value_ok(self, state: GrammarState, b: int) -> bool:
        if self.types[b] == "TimeShift":
            left = self._remaining(state)
            return left is None or int(self.values[b]) <= left
        return super().value_ok(state, b)

    def _event_end(self, state: GrammarState) -> tuple[str, ...]:
        eos = ("EOS",) if state.notes > 0 and state.target is None else ()
        return (self.first_note, "TimeShift", *eos)

    def allowed_types(self, state: GrammarState) -> Iterable[str]:
        last = state.last
        if state.align:
            return ("TimeShift",)
        if last == "":
            return ("TimeSig", "Tempo", self.first_note)
        if last == "TimeShift":
            ts = ("TimeSig",) if state.pos == 0 else ()
            return (*self._event_end(state), "Tempo", *ts)
        if last == "TimeSig":
            return (self.first_note, "Tempo", "TimeShift")
        if last == "Tempo":
            return (self.first_note, "TimeShift")
        if last == "Program":
            return (self._pitch_type(state.program),)
        if last in NOTE_TYPES:
            return ("Velocity",)
        if last == "Velocity":
            return ("Duration",)
        return self._event_end(state)  # after Duration


class MIDILikeGrammar(TSDGrammar):
    """MIDILike: Program → NoteOn → Velocity opens a note; Program → NoteOff closes one."""

    kind = "MIDILike"

    def allowed_types(self, state: GrammarState) -> Iterable[str]:
        last = state.last
        if last == "Program" and not state.align:
            types = []
            if self._program_ok(state.program):
                types.append(self._pitch_type(state.program))
            if self._closable(state, state.program):
                types.append(self._off_type(state.program))
            return tuple(types)
        if last == "Velocity" or last in OFF_TYPES:
            return self._event_end(state)
        return super().allowed_types(state)

    def _off_type(self, program: int) -> str:
        """The token type that ends a note of ``program``."""
        return "DrumOff" if program == -1 and "DrumOff" in self.by_type else "NoteOff"

    def _complete(self) -> set[str]:
        return {"Velocity"}

    def _closing(self, state: GrammarState) -> list[int]:
        tail: list[int] = []
        if not state.active:
            return tail
        if any(t >= state.tick for t in state.active.values()) and self.by_type.get("TimeShift"):
            tail.append(self.min_shift)
        program_id = {self.values[b]: b for b in self.by_type.get("Program", [])}
        for program, pitch in sorted(state.active):
            token = f"{self._off_type(program)}_{pitch}"
            if token in self.tokenizer.vocab:
                if self.use_programs:
                    tail.append(program_id[program])
                tail.append(self.tokenizer.vocab[token])
        return tail


GRAMMARS: dict[str, type[Grammar]] = {
    "REMI": RemiGrammar,
    "TSD": TSDGrammar,
    "MIDILike": MIDILikeGrammar,
}


def grammar_for(tokenizer: miditok.MusicTokenizer, controls: Controls | None = None) -> Grammar:
    """The grammar of ``tokenizer``'s family, or a MusegenError naming the unsupported one."""
    name = type(tokenizer).__name__
    if name not in GRAMMARS:
        raise MusegenError(f"no grammar for tokenizer {name}; supported: {', '.join(GRAMMARS)}")
    return GRAMMARS[name](tokenizer, controls)
