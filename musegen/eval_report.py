"""The markdown of a ``musegen evaluate-groups`` report (for the model card and the notes).

One row per group and checkpoint, so two checkpoints read side by side; a figure held to a
target carries ✓ or ✗.
"""

from __future__ import annotations

from pathlib import Path

from musegen.evaluate_groups import DENSITY_RANGE, TARGETS


def _f(value, digits: int = 2, pct: bool = False) -> str:
    if value is None:
        return "–"
    if pct:
        return f"{100 * value:.0f} %"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _mark(group: dict, target: str) -> str:
    t = group["targets"].get(target)
    return "" if t is None else (" ✓" if t["pass"] else " ✗")


def _label(model: dict) -> str:
    return Path(model["checkpoint"]).name


def _short_row(name: str, model: dict) -> str:
    g = model["groups"][name]
    s = g["summary"]
    if not s.get("pieces"):
        return f"| {name} | {_label(model)} | 0 |" + " – |" * 8
    passed = sum(t["pass"] for t in g["targets"].values() if not t.get("long"))
    cells = [
        name,
        _label(model),
        str(s["pieces"]),
        f"{_f(s['keeps_playing_model'], pct=True)}{_mark(g, 'keeps_playing')} / "
        f"{_f(s['keeps_playing_real'], pct=True)} / {_f(s['keeps_playing_copy'], pct=True)}",
        f"{_f(s['density_in_range_model'], pct=True)}{_mark(g, 'density_in_range')} · "
        f"{_f(s['density_min_model'])}{_mark(g, 'density_min')} "
        f"(median {_f(s['density_median_model'])})",
        f"{_f(s['pitch_class_model'])} / {_f(s['pitch_class_copy'])} = "
        f"{_f(s['pitch_class_ratio'])}{_mark(g, 'pitch_class_ratio')}",
        f"{_f(s['in_key_model'], pct=True)}{_mark(g, 'in_key_gap')} / "
        f"{_f(s['in_key_real'], pct=True)}",
        f"{_f(s['range_model'], 1)} / {_f(s['range_copy'], 1)}",
        f"{_f(s['groove_model'])} / {_f(s['groove_real'])} = "
        f"{_f(s['groove_ratio'])}{_mark(g, 'groove_ratio')}",
        _kit(s),
        f"{_f(s['seconds_median'], 1)}{_mark(g, 'seconds_median')} "
        f"({_f(s['tokens_per_second'], 0)} tok/s)",
        f"{passed}/{len(g['targets'])}",
    ]
    return "| " + " | ".join(cells) + " |"


def _kit(s: dict) -> str:
    """The drum kit distance cell ("–" for a group without drums in its real bars)."""
    if s.get("kit_model") is None:
        return "–"
    return f"{_f(s['kit_model'])} / {_f(s['kit_copy'])} = {_f(s['kit_ratio'])}"


def _long_row(name: str, model: dict) -> str:
    g = model["groups"][name]
    s = g["summary"]
    if not s.get("long_pieces"):
        return f"| {name} | {_label(model)} | 0 | – | – | – | – |"
    cells = [
        name,
        _label(model),
        str(len(g["long_pieces"])),
        f"{_f(s['long_all_tracks'], pct=True)}{_mark(g, 'long_all_tracks')}",
        f"{_f(s['long_density_in_range'], pct=True)}{_mark(g, 'long_density_in_range')} · "
        f"{_f(s['long_density_min'])}",
        f"{s['long_repetition_model']} / {s['long_repetition_real']}"
        f"{_mark(g, 'long_repetition_excess')}",
        _f(s["long_seconds_median"], 1),
    ]
    return "| " + " | ".join(cells) + " |"


def _sampling_note(st: dict) -> str:
    """The title's note on the candidates and guidance measured (absent: the defaults)."""
    k = st.get("candidates")
    note = "" if k is None else f", best of {k} candidates" if k > 1 else ", 1 candidate"
    for name, value in st.get("guidance", {}).items():
        note += f", {name.replace('_', ' ')} {value}"
    return note


def to_markdown(report: dict) -> str:
    st = report["settings"]
    models = report["models"]
    low, high = DENSITY_RANGE
    lines = [
        f"### Continuations by group: {st['prompt_bars']}-bar prompt → {st['new_bars']} new "
        f"bars (up to {st['pieces']} held-out pieces per group, batch 1, seed {st['seed']}+i, "
        f"temperature {st['temperature']}, top-p {st['top_p']}{_sampling_note(st)})",
        "",
        "| group | model | pieces | tracks keep playing: model / real / copy | density ratio "
        f"in [{low}, {high}] · min | pitch-class distance: model / copy = ratio | in key: "
        "model / real | range Δ (semitones): model / copy | groove: model / real = ratio | "
        "drum kit distance: model / copy = ratio | s for 4 bars | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in report["groups"]:
        lines += [_short_row(name, m) for m in models]
    if st.get("long_pieces"):
        lines += [
            "",
            f"### Long pieces: {st['long_bars']} bars from a {st['long_prompt_bars']}-bar prompt",
            "",
            "| group | model | pieces | every prompt track plays in the last 8 bars | density "
            "in range · min | longest bar repetition: model / real | s per piece |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in report["groups"]:
            lines += [_long_row(name, m) for m in models]
    targets = ", ".join(f"{k} {op} {v}" for k, (op, v) in TARGETS.items())
    lines += [
        "",
        "Held-out pieces: " + "; ".join(f"{k}: {v}" for k, v in report["groups"].items()) + ".",
        f"Targets (✓/✗): {targets}. Copy = the prompt's last 4 bars repeated. Groove = "
        "Jaccard similarity of each new bar's 16th-note onset pattern to the best-matching "
        "prompt bar of the same track; ratio = model / real next bars. Drum kit distance = "
        "half the L1 distance between the drum-pitch histograms of the new and the real next "
        "bars (pieces whose real bars have drums; no target). Speed is held to the "
        "target for full-band groups only; measured at load average "
        f"{_f(report.get('load_average'), 1)} on {report.get('threads')} torch threads.",
    ]
    return "\n".join(lines) + "\n"
