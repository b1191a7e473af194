"""The one front door for generation: load a checkpoint, continue a MIDI file, or start fresh.

The CLI, the app and the evaluator call :class:`Pipeline` and nothing deeper. A pipeline holds
no per-call state, so one instance can serve several threads at once (each call builds its own
KV cache; grammar masks are cached per control set and are read-only once built).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import symusic
import torch

from musegen import bar_lines
from musegen.data.infill import suffix_budget
from musegen.errors import CheckpointError, MidiError, MusegenError
from musegen.generation import infill as fill
from musegen.generation import seam
from musegen.generation.coverage import coverage_warning
from musegen.generation.grammar import Controls, Grammar, GrammarState
from musegen.generation.guidance import guidance_for
from musegen.generation.prompt import select_prompt
from musegen.generation.rules import grammar_for
from musegen.generation.sampling import (
    AllowedTokens,
    Progress,
    Stopping,
    build_processors,
    iter_sample,
)
from musegen.generation.seam import SeamJudge, best_of, continuation_distance
from musegen.generation.settings import GenerationSettings, controls_for
from musegen.generation.splice import splice
from musegen.model.attention import reach_of
from musegen.score_check import PROMPT_LIMITS, ScoreLimits, check_score, check_tokens, load_checked
from musegen.tokenizer import count_notes, decode, encode, score_to_midi_bytes

# Settings that infilling fixes itself (front ends do not offer them for infilling).
INFILL_FIXED_SETTINGS = tuple(fill.FIXED_SETTINGS)
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "musegen-mix"
# With --bars and no --max-new-tokens, a safety budget per bar so a model that never ends a
# bar still stops (its result is then marked unfinished).
TOKENS_PER_BAR_CAP = 512
DEFAULT_CANDIDATES = 4  # infilling: spans drawn per sample, the one fitting its neighbours kept
# Continuations drawn per sample, the one fitting the prompt's last bars kept (1: the plain
# sample). 1 by default: each candidate costs decoding time (the model card measures both).
DEFAULT_CONTINUATION_CANDIDATES = 1
# Said when the new bars cannot be put after the prompt as it was given (generation/splice.py).
UNSPLICED = (
    "the prompt could not be lined up with the model's reading of it, so it comes back as the "
    "model read it (on its grid, tracks of one instrument merged)"
)
# What each kind of candidate is judged against, in words (the CLI's help, the page's info).
SPAN_FIT = "the bars on both sides in key and note density"
CONTINUATION_FIT = "the prompt's last bars in key and in each track's density and groove"
MAX_CANDIDATES = seam.MAX_CANDIDATES
check_candidates = seam.check_candidates  # for front ends, which stop at this module


def default_checkpoint() -> Path:
    """``$MUSEGEN_CHECKPOINT`` when set, else the checkpoint shipped in the repository."""
    return Path(os.environ.get("MUSEGEN_CHECKPOINT") or DEFAULT_CHECKPOINT)


@dataclass
class GenerationResult:
    """One sample: the whole piece, the new part alone, and where one ends and the other starts."""

    score: symusic.Score
    continuation: symusic.Score
    prompt_end_tick: int
    prompt_tokens: int
    bars: int
    seed: int
    seconds: float
    finished: bool
    prompt_ids: list[int] = field(default_factory=list, repr=False)
    tokens: list[int] = field(default_factory=list, repr=False)  # the continuation's ids
    warnings: list[str] = field(default_factory=list)  # one line each, for the user to see

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def empty(self) -> bool:
        """No notes in the new part: never a success (the CLI and the app say so)."""
        return self.continuation.note_num() == 0

    def midi_bytes(self) -> bytes:
        return score_to_midi_bytes(self.score)


@dataclass
class _Source:
    """The score a prompt's ids encode, which the new bars are spliced onto; when its bar lines
    were found from its notes (:mod:`musegen.bar_lines`), also the score as the user gave it
    and the bars found, to put the result back on the user's own ticks."""

    score: symusic.Score
    original: symusic.Score | None = None
    bars: bar_lines.BarLines | None = None
    notes: list[str] = field(default_factory=list)  # for the user: a repaired file, no click


@dataclass
class _Request:
    """One call's prepared rows (kept off ``self`` so calls never share mutable state)."""

    full: list[list[int]]  # per row: the whole prompt's ids (decoded with the continuation)
    window: list[list[int]]  # per row: what the model sees
    starts: list[GrammarState]
    seeds: list[int]
    settings: GenerationSettings
    grammar: Grammar
    budget: int
    started: float
    # Builds each row's result (default: Pipeline._result, a continuation); infilling merges.
    result: Callable[..., GenerationResult] | None = None
    # Rows per returned sample: candidates, of which the final results keep the one the judge
    # finds closest to the music around it (partial results show the first).
    candidates: int = 1
    judge: Callable[[GenerationResult], float] | None = None
    # Per row: the prompt score ``full`` was encoded from (None: none, e.g. starting from
    # nothing; the decoded piece is the result).
    sources: list[_Source | None] = field(default_factory=list)


class Pipeline:
    """A loaded model + tokenizer with the generation API every front end uses."""

    # What a prompt must satisfy (musegen.score_check); a server sets its own operator limits.
    score_limits: ScoreLimits = PROMPT_LIMITS

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: Any,
        checkpoint_dir: Path | None = None,
        meta: dict | None = None,
    ):
        if len(tokenizer) != config.vocab_size:
            raise CheckpointError(
                f"the tokenizer has {len(tokenizer)} ids but the model expects "
                f"{config.vocab_size}: tokenizer.json does not belong to these weights"
            )
        self.model = model.eval()
        self.tokenizer, self.config = tokenizer, config
        self.checkpoint_dir, self.meta = checkpoint_dir, meta or {}
        vocab = tokenizer.vocab
        self.bos, self.pad = vocab.get("BOS_None"), vocab.get("PAD_None", 0)
        self._grammars: dict[Controls | tuple, Grammar] = {}  # tuple: infilling's
        self._grammar_lock = threading.Lock()
        # How to load this pipeline again (from_pretrained's arguments), e.g. in a worker
        # process; None when it was built in memory.
        self.source: dict[str, Any] | None = None

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        adapter: str | Path | None = None,
        precision: str | None = None,
    ) -> Pipeline:
        """Load ``checkpoint`` (default: :func:`default_checkpoint`), strictly.

        ``adapter``: a LoRA adapter directory (``musegen finetune --lora-rank``) merged into the
        weights, refused when it was trained on another base. ``precision``: fp32, bf16 or int8
        (CPU), None to run as stored (an int8 export runs in int8).
        """
        from musegen.checkpoint import load_pretrained
        from musegen.model.quant import is_int8, set_precision

        directory = Path(checkpoint) if checkpoint is not None else default_checkpoint()
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {directory}")
        loaded = load_pretrained(directory, device="cpu" if precision == "int8" else device)
        meta = dict(loaded.meta)
        if adapter is not None:
            from musegen.training.lora import merge_adapter

            if is_int8(loaded.model):
                raise CheckpointError(
                    f"{directory} is an int8 export: apply the adapter to the fp32 checkpoint "
                    "(then --precision int8)"
                )
            info = merge_adapter(loaded.model, loaded.tokenizer, adapter, directory)
            meta["adapter"] = {"path": str(adapter), "rank": info["rank"], "alpha": info["alpha"]}
        model = set_precision(loaded.model, precision, device)
        pipeline = cls(model, loaded.tokenizer, loaded.config, Path(loaded.directory), meta)
        pipeline.source = {
            "checkpoint": str(directory),
            "device": device,
            "adapter": None if adapter is None else str(adapter),
            "precision": precision,
        }
        return pipeline

    # --- public API -------------------------------------------------------------------------
    def continue_midi(
        self,
        prompt: str | Path | bytes | symusic.Score,
        num_samples: int | None = None,
        settings: GenerationSettings | None = None,
        candidates: int = DEFAULT_CONTINUATION_CANDIDATES,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """``num_samples`` continuations of ``prompt`` (a path, MIDI bytes or a Score).

        ``num_samples`` (None: ``settings.num_samples``) and any keyword override a field of
        :class:`~musegen.generation.settings.GenerationSettings`.

        ``candidates``: each sample is the best of this many drawn continuations: the one
        closest in key, each track's density and each track's groove to the prompt's last
        bars (:func:`~musegen.generation.seam.continuation_distance`). Sample k draws with
        seeds ``seed + k*candidates`` … ``+ candidates - 1`` and reports the seed of the one
        kept; 1: no choice, sample k is seed + k. Starting from nothing, there is nothing to
        judge by, so one is drawn.
        """
        stream = self.stream(prompt, num_samples, settings, 0, candidates=candidates, **overrides)
        return self._last(stream)

    def continue_batch(
        self,
        prompts: list[str | Path | bytes | symusic.Score],
        num_samples: int | None = None,
        settings: GenerationSettings | None = None,
        candidates: int = DEFAULT_CONTINUATION_CANDIDATES,
        **overrides: Any,
    ) -> list[list[GenerationResult] | MusegenError]:
        """Several prompts in one batch; a bad prompt gets its error instead of results.
        ``candidates`` as for :meth:`continue_midi`."""
        check_candidates(candidates)
        settings = self._settings(settings, overrides, num_samples)
        num_samples = settings.num_samples
        prepared: list[tuple[list[int], _Source | None] | MusegenError] = []
        for prompt in prompts:
            try:
                prepared.append(self._prompt(prompt, settings))
            except MusegenError as exc:
                prepared.append(exc)
        # Prompts that share controls share a batch, run with the first member's settings.
        groups: dict[tuple, tuple[GenerationSettings, list[int]]] = {}
        for i, item in enumerate(prepared):
            if not isinstance(item, MusegenError):
                own = self._for_prompt(settings, item[0])
                key = (None if own.instruments is None else tuple(own.instruments), own.drums)
                groups.setdefault(key, (own, []))[1].append(i)
        out: list[list[GenerationResult] | MusegenError] = list(prepared)  # type: ignore[arg-type]
        for own, members in groups.values():
            rows = [prepared[i] for i in members]
            results = self._last(self._run(self._request(rows, own, candidates), 0, None))
            for k, i in enumerate(members):
                out[i] = results[k * num_samples : (k + 1) * num_samples]
        return out

    def generate(
        self,
        num_samples: int | None = None,
        settings: GenerationSettings | None = None,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """``num_samples`` pieces from nothing (None: ``settings.num_samples``)."""
        return self._last(self.stream(None, num_samples, settings, every=0, **overrides))

    def stream(
        self,
        prompt: str | Path | bytes | symusic.Score | None = None,
        num_samples: int | None = None,
        settings: GenerationSettings | None = None,
        every: int = 32,
        stop_event: threading.Event | None = None,
        candidates: int = DEFAULT_CONTINUATION_CANDIDATES,
        **overrides: Any,
    ) -> Iterator[list[GenerationResult]]:
        """Partial results every ``every`` new tokens (0: only the end); the last is complete
        (a partial result shows the first candidate of each sample; ``candidates`` as for
        :meth:`continue_midi`).

        Setting ``stop_event`` ends generation early and yields what exists as the last item.
        """
        check_candidates(candidates)
        settings = self._settings(settings, overrides, num_samples)
        ids, source = self._prompt(prompt, settings)
        own = self._for_prompt(settings, ids)
        request = self._request([(ids, source)], own, candidates if ids else 1)
        return self._run(request, every, stop_event)

    def infill(
        self,
        piece: str | Path | bytes | symusic.Score,
        bars: tuple[int, int],
        tracks: Sequence[int | str] | None = None,
        settings: GenerationSettings | None = None,
        num_samples: int | None = None,
        candidates: int = DEFAULT_CANDIDATES,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """``num_samples`` versions of ``piece`` with ``bars`` (first, last: 1-based, inclusive)
        regenerated from the music on both sides (see :mod:`musegen.generation.infill`).

        ``tracks``: None regenerates every track; else track indices, ``"drums"`` and
        ``"program:P"`` (GM program P; one the piece lacks adds a track). A result's ``score`` is
        the whole piece, unchanged outside the span and in the other tracks; ``continuation``
        is the new span alone, from tick 0. Settings as for :meth:`continue_midi`, except those
        infilling fixes (:data:`~musegen.generation.infill.FIXED_SETTINGS`).

        ``candidates``: each sample is the best of this many drawn spans: the one closest in
        key and note density to the bars on both sides (:mod:`musegen.generation.seam`).
        Sample k draws with seeds ``seed + k*candidates`` … ``+ candidates - 1`` and reports
        the seed of the one kept; 1: no choice, sample k is seed + k.
        """
        stream = self.stream_infill(
            piece, bars, tracks, settings, num_samples, 0, candidates=candidates, **overrides
        )
        return self._last(stream)

    def stream_infill(
        self,
        piece: str | Path | bytes | symusic.Score,
        bars: tuple[int, int],
        tracks: Sequence[int | str] | None = None,
        settings: GenerationSettings | None = None,
        num_samples: int | None = None,
        every: int = 32,
        stop_event: threading.Event | None = None,
        candidates: int = DEFAULT_CANDIDATES,
        **overrides: Any,
    ) -> Iterator[list[GenerationResult]]:
        """:meth:`infill` with partial results every ``every`` new tokens, as :meth:`stream`
        (a partial result shows the first candidate of each sample).

        The request is checked before this returns, so a bad one raises here.
        """
        started = time.perf_counter()
        settings = self._settings(settings, overrides, num_samples)
        fill.check_settings(settings)
        check_candidates(candidates)
        # Refused, never re-timed (the bars are the piece's); infilling names an empty piece.
        limits = replace(self.score_limits.without_trim(), min_notes=0)
        name = str(piece) if isinstance(piece, (str, Path)) else "the piece"
        notes: list[str] = []
        piece = load_checked(piece, limits, name, notes=notes)
        budget = suffix_budget(reach_of(self.config))
        pinned = self.config.pin_tokens is not None
        plan = fill.plan(
            self.tokenizer, piece, bars, tracks, self.config.max_seq_len, settings, budget, pinned
        )
        settings = settings.with_overrides(bars=plan.num_bars)
        grammar = self._infill_grammar(plan)
        start = grammar.start(plan.prefix)
        n = settings.num_samples * candidates
        request = _Request(
            full=[plan.prompt] * n,
            window=[plan.prompt] * n,
            starts=[start.copy() for _ in range(n)],
            seeds=[int(settings.seed) + k for k in range(n)],
            settings=settings,
            grammar=grammar,
            budget=settings.max_new_tokens or plan.num_bars * TOKENS_PER_BAR_CAP,
            started=started,
            result=partial(self._infill_result, plan, notes),
            candidates=candidates,
            judge=_span_judge(SeamJudge(plan.score, plan.bars, plan.targets), candidates),
        )
        return self._run(request, every, stop_event)

    def check_infill(
        self, bars: tuple[int, int], settings: GenerationSettings, candidates: int = 1
    ) -> None:
        """Raise the one-line error an infilling request gets whatever the piece (a checkpoint
        trained without infilling, a setting infilling fixes, an empty range, a bad candidate
        count), so a front end can refuse it once instead of once per file."""
        fill.check_request(self.tokenizer, bars, settings)
        check_candidates(candidates)

    # --- internals --------------------------------------------------------------------------
    @staticmethod
    def _last(results: Iterator[list[GenerationResult]]) -> list[GenerationResult]:
        last: list[GenerationResult] = []
        for last in results:  # noqa: B007
            pass
        return last

    def grammar(self, settings: GenerationSettings) -> Grammar:
        """The (cached) grammar for these controls; also the bar tracker when unconstrained."""
        controls = controls_for(settings)
        with self._grammar_lock:
            if controls not in self._grammars:
                self._grammars[controls] = grammar_for(self.tokenizer, controls)
            return self._grammars[controls]

    def _infill_grammar(self, plan: fill.InfillPlan) -> fill.InfillGrammar:
        """The (cached) grammar of an infilling target: its programs, bars and meters."""
        key = ("infill", plan.controls, plan.time_signatures)
        with self._grammar_lock:
            if key not in self._grammars:
                self._grammars[key] = fill.InfillGrammar(
                    self.tokenizer, plan.controls, plan.time_signatures
                )
            return self._grammars[key]

    def _infill_result(
        self,
        plan: fill.InfillPlan,
        notes: list[str],
        request: _Request,
        k: int,
        new: list[int],
        progress: Progress,
        partial: bool,
    ) -> GenerationResult:
        tokens = request.grammar.complete(request.starts[k], new)
        score, span = fill.merge(plan, self.tokenizer, request.grammar, tokens)
        return GenerationResult(
            score=score,
            continuation=span,
            prompt_end_tick=plan.ticks[0],
            prompt_tokens=len(plan.prompt),
            bars=plan.num_bars,
            seed=request.seeds[k],
            seconds=time.perf_counter() - request.started,
            finished=not partial and not progress.stopped and not progress.hit_budget[k],
            prompt_ids=list(plan.prompt),
            tokens=list(tokens),
            warnings=self._warnings(list(plan.prompt), self._notes_in(tokens), partial, *notes),
        )

    def _prompt(
        self,
        prompt: str | Path | bytes | symusic.Score | None,
        settings: GenerationSettings | None = None,
    ) -> tuple[list[int], _Source | None]:
        """The prompt's ids and the checked score they encode, cut to ``settings.prompt_bars``
        / ``prompt_tracks`` when set, and re-barred when ``settings.find_bar_lines`` finds its
        bar lines wrong (no prompt: no ids, no score)."""
        chosen = settings is not None and (settings.prompt_bars or settings.prompt_tracks)
        if prompt is None:
            if chosen:
                raise MusegenError("prompt_bars/prompt_tracks choose from a prompt: give one")
            return [], None
        name = str(prompt) if isinstance(prompt, (str, Path)) else "prompt"
        # One check for every front end (musegen.score_check); bar numbers a user chose refer
        # to the file as it is, so silence is trimmed only after the selection.
        limits = self.score_limits
        notes: list[str] = []
        score = load_checked(
            prompt, limits.before_selection() if chosen else limits, name, notes=notes
        )
        if chosen:
            score = select_prompt(score, settings.prompt_bars, settings.prompt_tracks, name)
            if count_notes(score) == 0:
                raise MidiError(f"{name}: has no notes to continue")
            score = check_score(score, limits, name)
        if settings is None or settings.find_bar_lines:
            found, played = bar_lines.examine(score)
        else:
            found, played = None, bar_lines.played_without_click(score)
        if played:  # left on its own bars: the user is told
            notes.append(bar_lines.PLAYED)
        source = _Source(score, notes=notes)
        if found is not None:
            source = _Source(bar_lines.rebar(score, found), score, found, notes)
        ids = encode(self.tokenizer, source.score)
        if not ids:
            raise MidiError(f"{name}: nothing left after tokenization (notes out of range?)")
        check_tokens(len(ids), limits, name)
        return ids, source

    def _for_prompt(self, settings: GenerationSettings, ids: list[int]) -> GenerationSettings:
        """Settings with the prompt's instruments filled in when ``keep_instruments`` asks (a
        drum loop: drums alone)."""
        if not (settings.keep_instruments and settings.instruments is None and ids):
            return settings
        names = [self.tokenizer[int(i)] for i in ids if int(i) < len(self.tokenizer.vocab)]
        programs = {int(n.split("_", 1)[1]) for n in names if n.startswith("Program_")}
        pitched = sorted(p for p in programs if p >= 0)
        if not programs or (not pitched and not settings.drums):  # nothing to keep
            return settings
        return replace(settings, instruments=pitched, drums=settings.drums and -1 in programs)

    def _window(self, ids: list[int], grammar: Grammar, budget: int) -> list[int]:
        """The newest whole bars of ``ids`` that fit the context with room for new tokens."""
        limit = self.config.max_seq_len - min(budget, self.config.max_seq_len // 2) - 1
        if len(ids) <= limit:
            return ([self.bos] if self.bos is not None else []) + ids
        starts = grammar.bar_starts(ids)
        fitting = [i for i in starts if len(ids) - i <= limit]
        if fitting:
            return ids[fitting[0] :]
        # Not even one bar fits: cut at the first time step (Position/TimeShift), not mid-note.
        tail = ids[-limit:]
        for i, token in enumerate(tail):
            if grammar.types[grammar.expand[token][0]] in ("Position", "TimeShift"):
                return tail[i:]
        return tail

    @staticmethod
    def _settings(
        settings: GenerationSettings | None, overrides: dict[str, Any], num_samples: int | None
    ) -> GenerationSettings:
        """The request's settings: ``settings`` (default: the defaults) with ``overrides`` and
        ``num_samples`` (None: the settings' own) applied, validated, with a seed drawn if none."""
        if num_samples is not None:
            overrides = {**overrides, "num_samples": num_samples}
        return (settings or GenerationSettings()).with_overrides(**overrides).with_seed()

    def _request(
        self,
        prompts: list[tuple[list[int], _Source | None]],
        settings: GenerationSettings,
        candidates: int = 1,
    ) -> _Request:
        """Rows for every prompt (its ids and the score they encode), sample and candidate, in
        that order: sample k of a prompt draws with seeds ``seed + k*candidates`` … ``+
        candidates - 1``."""
        started = time.perf_counter()
        grammar = self.grammar(settings)
        budget = settings.max_new_tokens or settings.bars * TOKENS_PER_BAR_CAP
        if settings.bars and settings.max_new_tokens:
            budget = min(budget, settings.bars * TOKENS_PER_BAR_CAP)
        full, window, starts, seeds, sources = [], [], [], [], []
        rows = settings.num_samples * candidates
        for ids, source in prompts:
            cut = self._window(ids, grammar, budget)
            if not cut:
                raise MusegenError("this tokenizer has no BOS token, so generation needs a prompt")
            start = grammar.start(ids)
            for k in range(rows):
                full.append(ids)
                window.append(cut)
                starts.append(start.copy())
                seeds.append(int(settings.seed) + k)
                sources.append(source)
        judge = _continuation_judge if candidates > 1 else None
        return _Request(
            full, window, starts, seeds, settings, grammar, budget, started,
            candidates=candidates, judge=judge, sources=sources,
        )  # fmt: skip

    def _processors(self, request: _Request) -> list:
        s, grammar = request.settings, request.grammar
        chain = build_processors(
            s.temperature,
            s.top_k,
            s.top_p,
            s.repetition_penalty,
            grammar if s.constrained else None,
            guidance_for(s, grammar),
        )
        if not s.constrained:  # still honour the instrument choice, and never emit specials
            chain.insert(0, AllowedTokens(grammar.unconstrained_mask()))
        return chain

    def _run(
        self, request: _Request, every: int, stop_event: threading.Event | None
    ) -> Iterator[list[GenerationResult]]:
        steps = iter_sample(
            self.model,
            request.window,
            self._processors(request),
            Stopping(request.budget, request.grammar.eos, request.grammar),
            request.seeds,
            states=[s.copy() for s in request.starts],
            pad_id=self.pad,
            stop_event=stop_event,
        )
        # The budget is ≥ 1 (validate()), so iter_sample yields at least once.
        for last in steps:
            if every and last.step % every == 0 and not all(last.finished):
                yield self._results(request, last, partial=True, stride=request.candidates)
        yield self._best(request, self._results(request, last, partial=False))

    def _best(self, request: _Request, results: list[GenerationResult]) -> list[GenerationResult]:
        """Each sample's candidate closest to the bars around it (:mod:`~.generation.seam`)."""
        if request.judge is None:
            return results
        distances = [request.judge(r) for r in results]
        best = [results[i] for i in best_of(distances, request.candidates)]
        for r in best:
            r.seconds = time.perf_counter() - request.started  # the choice included
        return best

    def _results(
        self, request: _Request, progress: Progress, partial: bool, stride: int = 1
    ) -> list[GenerationResult]:
        """The result of every ``stride``-th row (a partial view shows one candidate each)."""
        build = request.result or self._result
        rows = range(0, len(progress.new_tokens), stride)
        return [build(request, k, list(progress.new_tokens[k]), progress, partial) for k in rows]

    def _result(
        self, request: _Request, k: int, new: list[int], progress: Progress, partial: bool
    ) -> GenerationResult:
        s, grammar = request.settings, request.grammar
        tokens = grammar.finish(request.starts[k], new) if s.constrained else new
        end_state = progress.states[k]
        score = decode(self.tokenizer, request.full[k] + tokens)
        split = end_state.start_tick if end_state.start_tick is not None else score.end()
        source = request.sources[k] if request.sources else None
        spliced = None
        if source is not None and source.bars is not None:  # back from the bars found
            at = round(float(source.bars.to_file(split * source.bars.tpq / score.tpq)))
            spliced = splice(source.original, bar_lines.to_file(score, source.bars), at)
        elif source is not None:
            spliced = splice(source.score, score, split)
        notices: list[str | None] = list(source.notes) if source is not None else []
        if spliced is not None:  # the user's own prompt, untouched, with the new bars after it
            score, continuation, split = spliced.score, spliced.continuation, spliced.split
            notices.append(source.bars.describe() if source.bars else None)
        else:
            continuation = score.clip(split, max(score.end(), split) + 1, clip_end=False)
            continuation = continuation.shift_time(-split)
            notices.append(UNSPLICED if source is not None else None)
        finished = (
            not partial
            and not progress.stopped
            and not (s.bars and progress.hit_budget[k] and not s.max_new_tokens)
        )
        return GenerationResult(
            score=score,
            continuation=continuation,
            prompt_end_tick=int(split),
            prompt_tokens=len(request.window[k]),
            bars=grammar.bars_done(end_state),
            seed=request.seeds[k],
            seconds=time.perf_counter() - request.started,
            finished=finished,
            prompt_ids=list(request.full[k]),
            tokens=list(tokens),
            warnings=self._warnings(request.full[k], continuation.note_num(), partial, *notices),
        )

    def _notes_in(self, ids: list[int]) -> int:
        """Notes written by ``ids`` (one Program token per note in REMI with programs)."""
        return sum(1 for i in ids if self.tokenizer[int(i)].startswith("Program_"))

    def _warnings(
        self, prompt_ids: list[int], new_notes: int, partial: bool, *notices: str | None
    ) -> list[str]:
        """Honest limits: instruments the model barely saw, what was done to the prompt
        (``notices``: it comes back as the model read it, its bar lines were found), and an
        empty result."""
        vocab_names = [self.tokenizer[int(i)] for i in prompt_ids if int(i) < len(self.tokenizer)]
        programs = {int(n[8:]) for n in vocab_names if n.startswith("Program_")}
        found = [coverage_warning(programs, self.meta), *notices]
        if not partial and new_notes == 0:
            found.append(
                "the model wrote no notes in the new bars: try another seed, a higher "
                "temperature or fewer instrument restrictions"
            )
        return [w for w in found if w]


def _continuation_judge(result: GenerationResult) -> float:
    """How far a continuation is from the prompt's last bars (:mod:`~.generation.seam`)."""
    return continuation_distance(
        result.score, result.prompt_end_tick, result.continuation, result.bars
    )


def _span_judge(judge: SeamJudge, candidates: int) -> Callable[[GenerationResult], float] | None:
    """How far an infilled span is from the bars around it; None: one candidate, no choice."""
    return (lambda result: judge.distance(result.continuation)) if candidates > 1 else None
