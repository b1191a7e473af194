"""The grammar of an infilling target (see :mod:`musegen.generation.infill`).

REMI rules (:class:`~musegen.generation.rules.RemiGrammar`) plus what a span imposes: exactly
its bars (``Controls.bars``), each bar with the time signature the piece has there, no tempo
tokens (the piece's tempo map stays), only the target programs (``Controls.programs/drums``).
"""

from __future__ import annotations

from collections.abc import Sequence

from musegen.generation.grammar import Controls, GrammarState
from musegen.generation.rules import RemiGrammar


class InfillGrammar(RemiGrammar):
    """REMI rules for an infilling target: the span's bars, meters and programs, no tempo.

    The target may end with ``Infill_End`` once its last bar has begun (the model learnt to
    write it there); the sampler then stops, as it does before the bar after the last one.
    """

    def __init__(self, tokenizer, controls: Controls, time_signatures: tuple[int, ...]):
        super().__init__(tokenizer, controls)
        self.time_signatures = time_signatures
        self.end = int(tokenizer.vocab["Infill_End"])

    def begin(self, state: GrammarState) -> None:
        super().begin(state)
        state.fixed_tempo = None  # unused: value_ok refuses every Tempo
        state.fixed_ts = self.time_signatures[0] if self.time_signatures else None

    def _advance_time(self, state: GrammarState, type_: str, value: object) -> None:
        super()._advance_time(state, type_, value)
        if type_ == "Bar" and state.generating and self.time_signatures:
            plan = self.time_signatures
            state.fixed_ts = plan[min(state.bars, len(plan)) - 1]

    def allowed_types(self, state: GrammarState):
        types = tuple(super().allowed_types(state))
        if "Bar" in types and self._reached(state):
            return (*types, "Infill")
        return types

    def value_ok(self, state: GrammarState, b: int) -> bool:
        type_ = self.types[b]
        if type_ == "Tempo":
            return False
        if type_ == "Infill":
            return b == self.end
        return super().value_ok(state, b)

    def ends_before(self, state: GrammarState, model_id: int) -> bool:
        return int(model_id) == self.end or super().ends_before(state, model_id)

    def bar_ticks(self, tokens: Sequence[int]) -> list[int]:
        """Tokenizer ticks of each bar start of ``tokens`` (from its first Bar), and the end."""
        state = GrammarState(pos=self.initial_pos, bar_len=4 * self.res)
        ticks = []
        for i in tokens:
            lines = state.lines
            self.advance(state, i)
            if state.lines != lines:
                ticks.append(state.bar_tick)
        ticks.append(state.bar_tick + state.bar_len * self._ticks_per_unit(state.den))
        return ticks

    def complete(self, start: GrammarState, new: Sequence[int]) -> list[int]:
        """``new`` trimmed to whole notes, with empty bars added up to the span's bar count
        (only when generation stopped early: the budget ran out or the user stopped it)."""
        tokens = self.finish(start, new)
        while tokens and self.types[self.expand[tokens[-1]][-1]] in ("Position", "Tempo"):
            tokens.pop()  # a time step without a note (only when stopped early)
        state = start.copy()
        for i in tokens:
            self.advance(state, i)
        bar = self.by_type["Bar"][0]
        while state.bars < (self.controls.bars or 0):
            tokens.append(bar)
            self.advance(state, bar)
            if self.time_signatures:
                tokens.append(state.fixed_ts)
                self.advance(state, state.fixed_ts)
        return tokens
