"""The Gradio app: pick or upload a prompt, set the controls, hear and download continuations.

:func:`build_app` lays out the page and wires it to a :class:`~musegen.app.composer.Composer`
(the shared model and per-request files) and :mod:`musegen.app.session` (prompts, undo, temp
folders); :func:`launch` starts it with analytics off and an offline theme. Tests build the app
around a tiny model; ``app.py`` and ``musegen app`` around the shipped checkpoint.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path

import gradio as gr

from musegen.app.composer import MAX_VARIATIONS, Composer
from musegen.app.events import Handlers
from musegen.app.limits import RequestLimits, delete_cache, queue_slots
from musegen.app.session import (
    GM_INSTRUMENTS,
    MAX_UPLOAD_BYTES,
    SessionState,
    Workspace,
    list_examples,
)
from musegen.generation.settings import SETTINGS, Setting
from musegen.pipeline import (
    CONTINUATION_FIT,
    DEFAULT_CANDIDATES,
    DEFAULT_CONTINUATION_CANDIDATES,
    INFILL_FIXED_SETTINGS,
    MAX_CANDIDATES,
    SPAN_FIT,
    Pipeline,
)

# Every theme in Gradio 6 ships its fonts locally; Soft draws nothing from a CDN.
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="amber")
CSS = """
#musegen-title h1 { margin-bottom: 0; }
.musegen-result { min-width: 320px; }
.musegen-status { min-height: 2.5em; }
"""
INTRO = """\
# musegen
Give it the opening of a piece, or nothing at all, and it writes what comes next.
Upload a MIDI file or pick an example, choose how many bars to add, press **Generate**;
or choose bars of the piece and press **Regenerate** (or **Add track**) to rewrite them.
"""


def _prompt_column(examples: dict[str, Path]) -> dict[str, gr.components.Component]:
    with gr.Column(scale=1):
        gr.Markdown("### 1 · Prompt")
        upload = gr.File(label="Upload a MIDI file (.mid, .midi)", file_types=[".mid", ".midi"])
        example = gr.Dropdown(
            choices=list(examples), value=None, label="…or start from an example", interactive=True
        )
        with gr.Row():
            clear = gr.Button("Start from nothing", size="sm", elem_id="clear")
            undo = gr.Button("Undo", size="sm", elem_id="undo")
        info = gr.Markdown("**No prompt**: the model starts from nothing.", elem_id="prompt-info")
        roll = gr.Image(
            label="Prompt",
            show_label=False,
            interactive=False,
            visible=False,
            buttons=[],
            elem_id="prompt-roll",
        )
        overview = gr.Dataframe(
            headers=["#", "track", "instrument", "notes", "bars"],
            label="Tracks and bars (use these numbers to choose)",
            interactive=False,
            visible=False,
            elem_id="prompt-overview",
        )
        edit = _edit_group()
    return {
        "upload": upload,
        "example": example,
        "clear": clear,
        "undo": undo,
        "info": info,
        "roll": roll,
        "overview": overview,
        **edit,
    }


def _edit_group() -> dict[str, gr.components.Component]:
    """Regenerate bars of the piece (all or some tracks), or add an instrument over them."""
    with gr.Group(elem_id="edit-bars"):
        gr.Markdown("**Edit bars** — regenerate bars in the middle, or add a track over them")
        bars = gr.Textbox(label="Bars", placeholder="e.g. 5-8", max_lines=1, elem_id="infill-bars")
        tracks = gr.Dropdown(
            choices=[],
            value=[],
            multiselect=True,
            label="Tracks to regenerate (none chosen: all)",
            elem_id="infill-tracks",
        )
        candidates = gr.Slider(
            1,
            MAX_CANDIDATES,
            value=DEFAULT_CANDIDATES,
            step=1,
            label="Candidates per variation",
            info=f"draw this many spans and keep the one closest to {SPAN_FIT} (slower by as much)",
            elem_id="infill-candidates",
        )
        with gr.Row():
            regenerate = gr.Button("Regenerate", size="sm", elem_id="regenerate")
        program = gr.Dropdown(
            choices=[("Drums", "drums")]
            + [(name, str(program)) for program, name in enumerate(GM_INSTRUMENTS)],
            value=None,
            label="Add a track: instrument",
            elem_id="add-program",
        )
        add = gr.Button("Add track", size="sm", elem_id="add-track")
    return {
        "infill_bars": bars,
        "infill_tracks": tracks,
        "infill_candidates": candidates,
        "regenerate": regenerate,
        "add_program": program,
        "add_track": add,
    }


def setting_component(setting: Setting, api: bool = False) -> gr.components.Component:
    """The component for one generation setting, built from its row of the settings table.

    On the page (``api=False``) a number with a slider range is a slider; behind ``/continue``
    every number is a plain field (the settings check the range, with a one-line error), and
    the label is the setting's name, as scripts call it.
    """
    spec = setting.spec
    label = setting.name if api else spec.label
    if setting.kind == "bool":
        return gr.Checkbox(value=setting.default, label=label, info=spec.help)
    if setting.kind == "text":
        return gr.Textbox(
            value=setting.default,
            label=label,
            info=spec.help,
            placeholder=spec.metavar,
            max_lines=1,
            elem_id=None if api else setting.name.replace("_", "-"),
        )
    if setting.kind == "programs":
        return gr.Dropdown(
            choices=[(name, program) for program, name in enumerate(GM_INSTRUMENTS)],
            multiselect=True,
            value=list(setting.default or []),
            allow_custom_value=api,  # out-of-range programs get the settings' own message
            label=label,
            info=spec.help,
        )
    if spec.page and not api:
        low, high, step = spec.page
        if setting.name == "num_samples":
            high = MAX_VARIATIONS  # one result slot each
        return gr.Slider(low, high, value=setting.default, step=step, label=label, info=spec.help)
    minimum = spec.low if spec.low is not None and not spec.low_open and not api else None
    precision = 0 if setting.kind == "int" else None
    return gr.Number(
        value=setting.default, precision=precision, minimum=minimum, label=label, info=spec.help
    )


def _controls_column() -> dict[str, gr.components.Component]:
    """The form: one component per generation setting (the rarer ones folded away), the
    page's Random-seed box, Generate and Stop."""
    controls: dict[str, gr.components.Component] = {}
    with gr.Column(scale=1):
        gr.Markdown("### 2 · Controls")
        for setting in (s for s in SETTINGS if not s.spec.advanced):
            if setting.name != "seed":
                controls[setting.name] = setting_component(setting)
                continue
            with gr.Row():
                controls["seed"] = setting_component(setting)
                # A fresh seed per click (what pressing Generate again should do); the seed
                # used is written back into the Seed field, so untick to repeat a result.
                controls["random_seed"] = gr.Checkbox(value=True, label="Random seed")
        with gr.Accordion("More settings", open=False):
            controls["continuation_candidates"] = gr.Slider(
                1,
                MAX_CANDIDATES,
                value=DEFAULT_CONTINUATION_CANDIDATES,
                step=1,
                label="Candidates per variation",
                info=f"draw this many continuations and keep the one closest to "
                f"{CONTINUATION_FIT} (slower by about as much)",
                elem_id="candidates",
            )
            for setting in (s for s in SETTINGS if s.spec.advanced):
                controls[setting.name] = setting_component(setting)
        with gr.Row():
            controls["generate"] = gr.Button("Generate", variant="primary", elem_id="generate")
            controls["stop"] = gr.Button("Stop", variant="stop", elem_id="stop")
    return controls


def _result_slots() -> list[dict[str, gr.components.Component]]:
    slots = []
    for row in range(MAX_VARIATIONS // 2):
        with gr.Row(equal_height=False):
            for i in (2 * row, 2 * row + 1):
                slots.append(_result_slot(i))
    return slots


def _result_slot(i: int) -> dict[str, gr.components.Component]:
    with gr.Column(visible=i == 0, elem_classes="musegen-result", min_width=320) as group:
        summary = gr.Markdown(f"**Variation {i + 1}**")
        roll = gr.Image(
            label=f"Piano roll {i + 1}", show_label=False, interactive=False, elem_id=f"roll-{i}"
        )
        audio = gr.Audio(
            label=f"Preview {i + 1}: lead-in + new bars",
            type="filepath",
            interactive=False,
            elem_id=f"audio-{i}",
        )
        files = gr.File(
            label="Download MIDI and WAV",
            file_count="multiple",
            interactive=False,
            elem_id=f"files-{i}",
        )
        again = gr.Button("Continue from this", size="sm", interactive=False, elem_id=f"again-{i}")
        with gr.Accordion("The whole piece", open=False):
            full = gr.Image(
                label=f"Whole piece {i + 1}",
                show_label=False,
                interactive=False,
                elem_id=f"full-roll-{i}",
            )
    return {
        "group": group,
        "summary": summary,
        "roll": roll,
        "audio": audio,
        "files": files,
        "again": again,
        "full": full,
    }


def _api_block(handlers: Handlers) -> None:
    """Hidden components behind ``/continue``, the endpoint for gradio_client and scripts."""
    with gr.Column(visible=False):
        midi = gr.File(label="MIDI prompt", file_types=[".mid", ".midi"])
        values = {s.name: setting_component(s, api=True) for s in SETTINGS}
        candidates = gr.Number(
            DEFAULT_CONTINUATION_CANDIDATES,
            label="candidates",
            info=f"continuations drawn per variation, the one closest to {CONTINUATION_FIT} "
            f"kept (1-{MAX_CANDIDATES})",
            precision=0,
        )
        out_midi = gr.File(label="MIDI (prompt + continuation)")
        out_wav = gr.File(label="WAV")
        out_png = gr.File(label="piano roll PNG")
        out_status = gr.Textbox(label="status")
        trigger = gr.Button("continue")
    trigger.click(
        handlers.api_continue,
        inputs=[midi],
        # a parameter per setting, in the settings table's order, then the candidates
        inputs_kwargs={**values, "candidates": candidates},
        outputs=[out_midi, out_wav, out_png, out_status],
        api_name="continue",
        api_description="Continue a MIDI prompt with any generation setting (each defaults as "
        "on the CLI and the page) and candidates (continuations drawn per variation, the one "
        "fitting the prompt's last bars best kept). Returns (MIDI, WAV, PNG, status) of the "
        "first variation; the status lists the seeds of all.",
    )
    _infill_api(handlers)


def _infill_api(handlers: Handlers) -> None:
    """Hidden components behind ``/infill``: the piece, the bars, tracks and program to add,
    and every generation setting infilling takes (the others it fixes itself)."""
    with gr.Column(visible=False):
        midi = gr.File(label="MIDI piece", file_types=[".mid", ".midi"])
        bars = gr.Textbox(label="bars", info="the bars to regenerate, A-B (from 1)")
        tracks = gr.Textbox("", label="tracks", info="track indices and/or drums; empty: all")
        program = gr.Textbox("", label="add_program", info="GM program 0-127 or drums to add")
        candidates = gr.Number(
            DEFAULT_CANDIDATES,
            label="candidates",
            info=f"spans drawn per version, the one closest to {SPAN_FIT} kept "
            f"(1-{MAX_CANDIDATES})",
            precision=0,
        )
        values = {
            s.name: setting_component(s, api=True)
            for s in SETTINGS
            if s.name not in INFILL_FIXED_SETTINGS and s.name != "bars"
        }
        outputs = [gr.File(label="MIDI"), gr.File(label="WAV"), gr.File(label="piano roll PNG")]
        outputs.append(gr.Textbox(label="status"))
        trigger = gr.Button("infill")
    trigger.click(
        handlers.api_infill,
        inputs=[midi, bars],
        inputs_kwargs={
            "tracks": tracks,
            "add_program": program,
            "candidates": candidates,
            **values,
        },
        outputs=outputs,
        api_name="infill",
        api_description="Regenerate bars of a MIDI piece from the music on both sides: bars "
        "'A-B', tracks (empty: all), add_program (empty: none), candidates (spans drawn per "
        "version, the one fitting the bars around best kept) and the generation settings. "
        "Returns (MIDI, WAV, PNG of the regenerated bars with context, status).",
    )


def build_app(
    pipeline: Pipeline,
    soundfont: str | Path | None = None,
    *,
    concurrency: int = 2,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    workspace: Workspace | None = None,
    max_new_tokens: int | None = None,
    limits: RequestLimits | None = None,
    processes: bool = False,
) -> gr.Blocks:
    """The app around an already-loaded pipeline, queued with ``concurrency`` parallel jobs.

    ``max_new_tokens`` caps every request (a shared server stays responsive; tests stay fast);
    ``limits``: the rest of what one request may ask (:class:`~musegen.app.limits.RequestLimits`);
    ``processes``: light requests in worker processes too (:mod:`musegen.app.worker`).
    """
    examples = list_examples()
    composer = Composer(
        pipeline,
        soundfont,
        workspace,
        max_new_tokens,
        limits=limits,
        concurrency=concurrency,
        processes=processes,
    )
    cache = delete_cache(composer.limits)
    with gr.Blocks(title="musegen", analytics_enabled=False, delete_cache=cache) as demo:
        state = gr.State(SessionState())
        gr.Markdown(INTRO, elem_id="musegen-title")
        with gr.Row():
            prompt = _prompt_column(examples)
            controls = _controls_column()
        status = gr.Markdown("", elem_classes="musegen-status", elem_id="status")
        gr.Markdown("### 3 · Results")
        original = gr.Audio(
            label="A · these bars as they were (compare with each preview below)",
            type="filepath",
            interactive=False,
            visible=False,
            elem_id="original-audio",
        )
        slots = _result_slots()
        handlers = Handlers(
            composer, examples, state, prompt, controls, slots, status, max_upload_bytes, original
        )
        handlers.wire()
        _api_block(handlers)
        demo.unload(handlers.session_closed)
    demo.musegen_composer = composer  # for tests and cleanup at exit
    # The lanes (musegen.app.limits) decide what computes; the queue admits enough for them.
    demo.queue(default_concurrency_limit=queue_slots(concurrency, composer.limits), max_size=64)
    return demo


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    share: bool = False,
    block: bool = True,
    quiet: bool = False,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> str:
    """Start the server (offline theme, no analytics) and return its local URL."""
    _, url, share_url = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        theme=THEME,
        css=CSS,
        max_file_size=max_upload_bytes,
        ssr_mode=False,
        footer_links=["api"],
        pwa=False,
        mcp_server=False,
    )
    if not quiet:
        public = f" (public: {share_url})" if share_url else ""
        print(f"musegen app running on {url}{public}", flush=True)
    if block:
        demo.block_thread()
    return url
