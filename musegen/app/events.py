"""The app's event handlers: prompt changes, generation, stop, continue-from-this and undo.

Every handler turns a :class:`~musegen.errors.MusegenError` (and, for generation, any failure)
into a message on the page, so one bad file or a crashed sample never stops the server.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from musegen.app.composer import (
    Composer,
    Progress,
    Variation,
    candidate_count,
    form_settings,
    infill_request,
)
from musegen.app.results import with_warnings
from musegen.app.session import SessionState, check_prompt, describe_score, read_upload
from musegen.errors import MusegenError
from musegen.generation.prompt import overview
from musegen.generation.settings import NAMES, GenerationSettings
from musegen.pipeline import DEFAULT_CONTINUATION_CANDIDATES
from musegen.render.pianoroll import render_pianoroll

log = logging.getLogger("musegen.app.blocks")
Components = dict[str, Any]
# The form sends every generation setting by name, plus the page's Random-seed box.
CONTROL_NAMES = (*NAMES, "random_seed", "continuation_candidates")
# The prompt column's overview of the piece (a table of tracks and bars) and the track picker
# for regenerating, refreshed with every prompt change.
PIECE_VIEW = ("overview", "infill_tracks")


def _key(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"


class Handlers:
    """Callbacks bound to one page's components; the Composer behind them is shared."""

    def __init__(
        self,
        composer: Composer,
        examples: dict[str, Path],
        state: gr.State,
        prompt: Components,
        controls: Components,
        slots: list[Components],
        status: gr.Markdown,
        max_upload_bytes: int,
        original: gr.Audio | None = None,
    ) -> None:
        self.original = original  # infilling: the span as it was, beside each new version
        self.composer = composer
        self.examples = examples
        self.state = state
        self.prompt = prompt
        self.controls = controls
        self.slots = slots
        self.status = status
        self.max_upload_bytes = max_upload_bytes

    @property
    def score_limits(self):
        """The server's prompt check (its --max-prompt-* flags), as generation applies it."""
        return self.composer.pipeline.score_limits

    # ----- wiring -------------------------------------------------------------------------
    def wire(self) -> None:
        """Connect every button and field of the page to its handler."""
        p, c, state = self.prompt, self.controls, self.state
        prompt_out = [state, p["info"], p["roll"], self.status, p["upload"], p["example"]]
        prompt_out += [p[name] for name in PIECE_VIEW if name in p]
        hidden = {"api_visibility": "undocumented"}
        p["upload"].upload(self.on_upload, [state, p["upload"]], prompt_out, **hidden)
        p["example"].input(self.on_example, [state, p["example"]], prompt_out, **hidden)
        p["clear"].click(self.on_clear, [state], prompt_out, **hidden)
        p["undo"].click(self.on_undo, [state], prompt_out, **hidden)
        for i, slot in enumerate(self.slots):
            slot["again"].click(self._continue_from(i), [state], prompt_out, **hidden)
        outputs = [state, self.status, c["seed"], c["generate"]]
        outputs += [self.original] if self.original is not None else []
        for slot in self.slots:
            outputs += list(slot.values())
        form = {name: c[name] for name in CONTROL_NAMES}
        busy = {"show_progress": "minimal", "show_progress_on": [self.status], **hidden}
        c["generate"].click(
            self.on_generate, inputs=[state], inputs_kwargs=form, outputs=outputs, **busy
        )
        if "regenerate" in p:
            edit = [state, p["infill_bars"], p["infill_tracks"], p["infill_candidates"]]
            p["regenerate"].click(
                self.on_regenerate, inputs=edit, inputs_kwargs=form, outputs=outputs, **busy
            )
            add = [state, p["infill_bars"], p["add_program"], p["infill_candidates"]]
            p["add_track"].click(
                self.on_add_track, inputs=add, inputs_kwargs=form, outputs=outputs, **busy
            )
        c["stop"].click(self.on_stop, None, [self.status], queue=False, **hidden)

    # ----- prompt -------------------------------------------------------------------------
    def _prompt_view(
        self, state: SessionState, message: str = "", upload: Any = None, example: Any = None
    ) -> tuple:
        """Outputs for a prompt change; ``upload``/``example`` are the two pickers' new values
        (None clears one, ``gr.update()`` keeps it), so they never show a stale choice."""
        piece = [gr.update(value=None, visible=False), gr.update(choices=[], value=[])]
        if state.prompt is None:
            info, roll = "**No prompt**: the model starts from nothing.", gr.update(visible=False)
        else:
            notes: list[str] = []
            score = check_prompt(state.prompt, state.prompt_name, self.score_limits, notes)
            png = render_pianoroll(score, title=state.prompt_name)
            bars, rows = overview(score)
            info = (
                f"**Prompt: {state.prompt_name}** — {describe_score(score)}, "
                f"{bars} bar{'s' if bars != 1 else ''}"
            )
            info += "".join(f"\n\n⚠️ {note}" for note in notes)
            roll = gr.update(value=Image.open(io.BytesIO(png)), visible=True)
            table = [
                [r.index, r.name, r.instrument, r.notes, f"{r.first_bar}–{r.last_bar}"]
                for r in rows
            ]
            choices = [(f"{r.index} · {r.name}", str(r.index)) for r in rows]
            piece = [gr.update(value=table, visible=True), gr.update(choices=choices, value=[])]
        view = (state, info, roll, message, upload, example)
        return view + tuple(piece[: len([n for n in PIECE_VIEW if n in self.prompt])])

    def on_upload(self, state: SessionState, path: str | None) -> tuple:
        try:
            data = read_upload(path, self.max_upload_bytes, self.score_limits)
        except MusegenError as exc:
            gr.Warning(str(exc))
            return self._prompt_view(state, f"⚠️ {exc}", None, gr.update())
        state.set_prompt(data, Path(path).name)
        return self._prompt_view(state, "", gr.update(), None)

    def on_example(self, state: SessionState, title: str | None) -> tuple:
        if title not in self.examples:
            return self._prompt_view(state, "", gr.update(), gr.update())
        state.set_prompt(self.examples[title].read_bytes(), title)
        return self._prompt_view(state, "", None, gr.update())

    def on_clear(self, state: SessionState) -> tuple:
        if state.prompt is not None:
            state.set_prompt(None, "")
        return self._prompt_view(state)

    def on_undo(self, state: SessionState) -> tuple:
        message = "" if state.undo() else "Nothing to undo."
        return self._prompt_view(state, message)

    def _continue_from(self, index: int):
        def handler(state: SessionState) -> tuple:
            if index >= len(state.results):
                return self._prompt_view(state, "That variation is gone; generate again.")
            state.set_prompt(state.results[index], f"variation {index + 1}")
            return self._prompt_view(state, f"Variation {index + 1} is the new prompt.")

        return handler

    # ----- generation ---------------------------------------------------------------------
    def on_generate(
        self,
        state: SessionState,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 - how Gradio marks the progress parameter
        **form: Any,
    ) -> Iterator[dict]:
        """Stream previews into the result slots, then the audio and downloads."""

        def steps(settings: GenerationSettings) -> Iterator[Progress]:
            name = state.prompt_name
            stem = self.examples[name].stem if name in self.examples else name
            k = candidate_count(
                form.get("continuation_candidates"), DEFAULT_CONTINUATION_CANDIDATES
            )
            return self.composer.stream(state.prompt_score(), settings, _key(request), stem, k)

        yield from self._run(state, form, steps, progress)

    def on_regenerate(
        self,
        state: SessionState,
        span: str | None,
        tracks: list[str] | None,
        candidates: float | None,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 - how Gradio marks the progress parameter
        **form: Any,
    ) -> Iterator[dict]:
        """Regenerate the chosen bars (and tracks) of the current piece."""
        chosen = (span, tracks or None, None, candidates)
        yield from self._infill(state, chosen, request, progress, form)

    def on_add_track(
        self,
        state: SessionState,
        span: str | None,
        program: str | None,
        candidates: float | None,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008 - how Gradio marks the progress parameter
        **form: Any,
    ) -> Iterator[dict]:
        """Add an instrument (or drums) over the chosen bars of the current piece."""
        if program in (None, ""):
            program = "?"  # infill_request's one-line reason: choose an instrument
        yield from self._infill(state, (span, None, program, candidates), request, progress, form)

    def _infill(self, state, fields: tuple, request, progress, form) -> Iterator[dict]:
        """``fields``: infill_request's (bars, tracks, program to add, candidates)."""

        def steps(settings: GenerationSettings) -> Iterator[Progress]:
            if state.prompt is None:
                raise MusegenError("upload a piece or pick an example first: there are no bars")
            chosen = infill_request(*fields)
            return self.composer.stream_infill(
                state.prompt, chosen, settings, _key(request), state.prompt_name
            )

        yield from self._run(state, form, steps, progress, infill=True)

    def _run(self, state, form, steps, progress, infill: bool = False) -> Iterator[dict]:
        enable = {self.controls["generate"]: gr.update(interactive=True)}
        try:
            settings = form_settings(form)
            yield from self._generate(state, steps(settings), settings, progress, infill)
        except MusegenError as exc:
            gr.Warning(str(exc))
            yield {self.status: f"⚠️ {exc}", **enable, **self._clear_slots()}
        except Exception as exc:  # a failed generation must leave the app serving
            log.exception("generation failed")
            gr.Warning(f"generation failed: {exc}")
            yield {
                self.status: f"⚠️ Generation failed: {exc}. Try again or change the settings.",
                **enable,
                **self._clear_slots(),
            }

    def _generate(
        self,
        state: SessionState,
        steps: Iterator[Progress],
        settings: GenerationSettings,
        progress: gr.Progress,
        infill: bool = False,
    ) -> Iterator[dict]:
        c = self.controls
        yield {
            self.status: "Starting…",
            c["generate"]: gr.update(interactive=False),
            **self._reset_slots(settings.num_samples),
            **self._show_original(None),
        }
        for step in steps:
            progress(step.fraction, desc=step.status)
            if step.variations is None:
                yield {self.status: step.status, **self._show_previews(step)}
                continue
            state.results = [v.midi_bytes for v in step.variations]
            yield {
                self.state: state,
                self.status: step.status,
                c["seed"]: step.variations[0].seed,
                c["generate"]: gr.update(interactive=step.complete),
                **self._show_results(step.variations, infill),
                **self._show_original(step.original),
            }

    def _show_original(self, path: Path | None) -> dict:
        if self.original is None:
            return {}
        return {self.original: gr.update(value=str(path) if path else None, visible=bool(path))}

    def _reset_slots(self, n: int, note: str = " — generating…") -> dict:
        """Empty result slots, the first ``n`` shown, each titled with ``note``."""
        out = {}
        for i, slot in enumerate(self.slots):
            out[slot["group"]] = gr.update(visible=i < n)
            out[slot["summary"]] = f"**Variation {i + 1}**{note}"
            out[slot["roll"]] = None
            out[slot["audio"]] = None
            out[slot["files"]] = None
            out[slot["again"]] = gr.update(interactive=False)
            if "full" in slot:
                out[slot["full"]] = None
        return out

    def _clear_slots(self) -> dict:
        """The slots as the page first shows them (after a failure: no stale "generating…")."""
        return self._reset_slots(1, note="")

    def _show_previews(self, step: Progress) -> dict:
        return {self.slots[i]["roll"]: str(path) for i, path in enumerate(step.previews)}

    def _show_results(self, variations: list[Variation], infill: bool = False) -> dict:
        """Each result: the zoomed roll, the audio preview (lead-in + new bars), the downloads
        made so far, the whole piece once drawn, and its keep/continue button."""
        out = {}
        for v in variations:
            slot = self.slots[v.index]
            where = f" · {v.window.label()}" if v.window is not None else ""
            out[slot["summary"]] = f"**Variation {v.index + 1}**{where} · {v.summary}"
            out[slot["roll"]] = str(v.png_path)
            out[slot["audio"]] = str(v.preview_path or v.wav_path)
            out[slot["files"]] = v.files
            label = "Keep this" if infill else "Continue from this"
            out[slot["again"]] = gr.update(interactive=True, value=label)
            if "full" in slot and v.full_png_path is not None:
                out[slot["full"]] = str(v.full_png_path)
        return out

    def on_stop(self, request: gr.Request) -> str:
        if self.composer.stop(_key(request)):
            return "Stopping: keeping what has been generated…"
        return "Nothing is generating."

    # ----- API and session end ------------------------------------------------------------
    def api_continue(
        self,
        midi: str | None,
        candidates: float | None = None,
        request: gr.Request = None,  # set by Gradio
        **values: Any,
    ) -> tuple[str, str, str, str]:
        """``/continue``: a MIDI prompt, the candidates drawn per variation (None: the
        default) and every generation setting by name (see :mod:`musegen.generation.settings`)
        in; MIDI, WAV, piano roll and a status line out."""
        try:
            data = read_upload(midi, self.max_upload_bytes, self.score_limits)
            settings = GenerationSettings.from_values(values)
            k = candidate_count(candidates, DEFAULT_CONTINUATION_CANDIDATES)
            # read_upload has already checked the MIDI (errors name the file); no second parse.
            found = self.composer.continue_once(data, settings, _key(request), Path(midi).name, k)
        except MusegenError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:
            log.exception("generation failed")
            raise gr.Error(f"generation failed: {exc}") from None
        first = found[0]
        seeds = ", ".join(str(v.seed) for v in found)
        status = f"{len(found)} variation(s) (seeds {seeds}); returned variation 1: {first.summary}"
        status = with_warnings(status, found)
        return str(first.midi_path), str(first.wav_path), str(first.png_path), status

    def api_infill(
        self,
        midi: str | None,
        bars: str,
        tracks: str = "",
        add_program: str = "",
        candidates: float | None = None,
        request: gr.Request = None,  # set by Gradio
        **values: Any,
    ) -> tuple[str, str, str, str]:
        """``/infill``: a MIDI piece, the bars to regenerate (``"5-8"``), the tracks (``"0,2"``,
        ``"drums"``; empty: all), a program to add (``"33"``, ``"drums"``; empty: none), the
        candidates drawn per version (None: the default) and the generation settings
        infilling takes, by name; MIDI, WAV, zoomed roll and status out."""
        try:
            data = read_upload(midi, self.max_upload_bytes, self.score_limits)
            settings = GenerationSettings.from_values(values)
            chosen = infill_request(bars, tracks, add_program, candidates)
            found = self.composer.infill_once(
                data, chosen, settings, _key(request), Path(midi).name
            )
        except MusegenError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:
            log.exception("infilling failed")
            raise gr.Error(f"infilling failed: {exc}") from None
        if not found:
            raise gr.Error("the model produced nothing; try again with another seed")
        first = found[0]
        seeds = ", ".join(str(v.seed) for v in found)
        a, b = chosen.bars
        status = (
            f"{len(found)} version(s) of bars {a}-{b} (seeds {seeds}); "
            f"returned variation 1: {first.summary}"
        )
        status = with_warnings(status, found)
        return str(first.midi_path), str(first.wav_path), str(first.png_path), status

    def session_closed(self, request: gr.Request) -> None:
        """The tab closed: end its generation, if any, and remove the files it wrote."""
        self.composer.stop(_key(request))
        self.composer.workspace.drop_session(_key(request))
