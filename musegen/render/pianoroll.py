"""Piano-roll pictures of a score: bars across, pitch up, one colour per instrument.

Built on matplotlib's object API (no pyplot state), so it is safe to call from app threads.
Density adapts to the picture: bar lines, bar numbers and beat lines thin out as the piece
grows, so 4 bars and 200 bars are both readable. Drums get their own lane of small markers,
and an optional split point shows the prompt faded behind a marker line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from musegen.errors import MusegenError
from musegen.tokenizer import load_tick_score

DPI = 100
PALETTE = (
    "#3b75af",
    "#ef8636",
    "#519e3e",
    "#c53a32",
    "#8d69b8",
    "#84584e",
    "#d57dbf",
    "#7f7f7f",
    "#bcbd45",
    "#58bbcc",
    "#1f4e79",
    "#a0522d",
)
DRUM_LANES = (  # (label, GM keys), bottom to top
    ("Kick", (35, 36)),
    ("Snare", (37, 38, 39, 40)),
    ("Toms", (41, 43, 45, 47, 48, 50)),
    ("Hi-hat", (42, 44, 46)),
    ("Cymbal", (49, 51, 52, 53, 55, 57, 59)),
)
PROMPT_ALPHA = 0.3  # how strongly the prompt part is faded
BACKGROUND, GRID, TEXT = "#fbfbfd", "#d9dbe3", "#33363d"


@dataclass
class BarGrid:
    """Where bars and beats start, in ticks, from the score's time signatures."""

    bar_starts: np.ndarray  # ticks; one more entry than bars (the end of the last bar)
    beat_starts: np.ndarray

    def to_bars(self, ticks: np.ndarray | float) -> np.ndarray:
        """Ticks → position in bars (0 = start of bar 1), linear inside each bar."""
        return np.interp(ticks, self.bar_starts, np.arange(len(self.bar_starts), dtype=float))


def bar_grid(score: symusic.Score, end_tick: int) -> BarGrid:
    """Bars from the time signatures (4/4 before the first one), covering up to ``end_tick``."""
    sigs = sorted((ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures)
    if not sigs or sigs[0][0] > 0:
        sigs.insert(0, (0, 4, 4))
    bars: list[int] = []
    beats: list[int] = []
    for i, (start, num, den) in enumerate(sigs):
        stop = sigs[i + 1][0] if i + 1 < len(sigs) else max(end_tick, start + 1)
        beat = max(1, round(score.tpq * 4 / max(den, 1)))
        bar = beat * max(num, 1)
        tick = start
        while tick < stop or (i + 1 == len(sigs) and not bars):
            bars.append(tick)
            beats.extend(range(tick, tick + bar, beat))
            tick += bar
        if i + 1 == len(sigs):
            bars.append(tick)
    return BarGrid(np.array(sorted(set(bars)), dtype=float), np.array(beats, dtype=float))


def render_pianoroll(
    source: str | Path | bytes | symusic.Score,
    path: str | Path | None = None,
    split_tick: int | None = None,
    title: str | None = None,
    width_px: int = 1200,
    height_px: int = 480,
) -> bytes:
    """PNG bytes of a piano roll (also written to ``path``); ``split_tick`` ends the prompt."""
    if not (200 <= width_px <= 10000 and 150 <= height_px <= 10000):
        raise MusegenError(
            f"piano roll size {width_px}×{height_px} px is out of range (200–10000 × 150–10000)"
        )
    if path is not None and Path(path).suffix.lower() != ".png":
        raise MusegenError(f"piano roll file {Path(path).name} must end in .png")
    if split_tick is not None and split_tick < 0:
        raise MusegenError(f"split tick {split_tick} must not be negative")
    score = load_tick_score(source)
    fig = _figure(score, split_tick, title, width_px, height_px)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    png = buf.getvalue()
    if path is not None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        except OSError as exc:
            raise MusegenError(f"cannot write {path}: {exc.strerror}") from None
    return png


def _figure(score, split_tick, title, width_px: int, height_px: int) -> Figure:
    tracks = [t for t in score.tracks if len(t.notes)]
    pitched = [t for t in tracks if not t.is_drum]
    drums = [t for t in tracks if t.is_drum]
    end = max([t.end() for t in tracks] + [split_tick or 0, 1])
    grid = bar_grid(score, end)
    n_bars = len(grid.bar_starts) - 1
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.06, h_pad=0.04, hspace=0.0)
    if drums:
        lanes = max(2, len(_used_lanes(drums)))
        ax, drum_ax = fig.subplots(2, 1, sharex=True, height_ratios=[7, 1 + 0.35 * lanes])
    else:
        ax, drum_ax = fig.subplots(1, 1), None
    plot_px = width_px * 0.9
    colours = _colours(tracks)
    split = float(grid.to_bars(split_tick)) if split_tick else None  # 0: all generated
    for a in (ax, drum_ax):
        if a is not None:
            _style_axes(a, grid, n_bars, plot_px, split)
    _draw_notes(ax, pitched, colours, grid, split, n_bars / plot_px)
    _pitch_axis(ax, pitched)
    if drum_ax is not None:
        _draw_drums(drum_ax, drums, colours, grid, split, plot_px / n_bars)
    (drum_ax or ax).set_xlabel("bar", color=TEXT, fontsize=9)
    if not tracks:
        ax.text(
            0.5,
            0.5,
            "no notes",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#9a9ca3",
            fontsize=14,
        )
    if split is not None:
        _split_labels(ax, split, n_bars)
    _legend(fig, tracks, colours, title)
    return fig


def _colours(tracks: list) -> dict[int, str]:
    return {id(t): PALETTE[i % len(PALETTE)] for i, t in enumerate(tracks)}


def _style_axes(ax, grid: BarGrid, n_bars: int, plot_px: float, split: float | None) -> None:
    """Background, bar/beat lines thinned to the pixels available, and the prompt shading."""
    ax.set_facecolor(BACKGROUND)
    ax.set_xlim(0, n_bars)
    px_per_bar = plot_px / max(n_bars, 1)
    line_step = next(s for s in (1, 2, 4, 8, 16, 32, 64, 10**9) if s * px_per_bar >= 9)
    label_step = next(s for s in (1, 2, 4, 8, 16, 32, 64, 10**9) if s * px_per_bar >= 38)
    for bar in range(0, n_bars + 1, line_step):
        strong = bar % (4 * line_step) == 0
        ax.axvline(bar, color="#b5b8c2" if strong else GRID, lw=0.9 if strong else 0.6, zorder=1)
    if px_per_bar / 4 >= 14:  # room for beat lines
        for beat in grid.to_bars(grid.beat_starts):
            if beat % 1:
                ax.axvline(beat, color=GRID, lw=0.4, ls=(0, (2, 3)), zorder=1)
    ticks = np.arange(0, n_bars, label_step)
    ax.set_xticks(ticks + 0.5 if label_step == 1 else ticks)
    ax.set_xticklabels([str(int(b) + 1) for b in ticks])
    ax.tick_params(colors=TEXT, labelsize=8, length=0)
    for spine in ax.spines.values():
        spine.set_color("#c4c7d0")
    if split is not None and split > 0:
        ax.axvspan(0, split, facecolor="#e9eaf0", edgecolor="#cfd2db", hatch="///", lw=0, zorder=0)
        ax.axvline(split, color="#e0443e", lw=1.6, ls="--", zorder=5)


def _draw_notes(ax, tracks, colours, grid: BarGrid, split, bars_per_px: float) -> None:
    """Each note a rectangle; the prompt part faded; very short notes kept ≥ 1.5 px wide."""
    for track in tracks:
        notes = track.notes.numpy()
        start = grid.to_bars(notes["time"])
        stop = np.maximum(
            grid.to_bars(notes["time"] + notes["duration"]), start + 1.5 * bars_per_px
        )
        pitch = notes["pitch"].astype(float)
        alpha = 0.55 + 0.45 * notes["velocity"] / 127
        if split is not None:
            alpha = np.where(start < split, alpha * PROMPT_ALPHA, alpha)
        verts = np.stack(
            [
                np.stack([start, pitch - 0.42], 1),
                np.stack([start, pitch + 0.42], 1),
                np.stack([stop, pitch + 0.42], 1),
                np.stack([stop, pitch - 0.42], 1),
            ],
            1,
        )
        colour = np.array(to_rgb(colours[id(track)]))
        faces = np.column_stack([np.tile(colour, (len(start), 1)), alpha])
        edges = np.column_stack([np.tile(colour * 0.6, (len(start), 1)), np.minimum(alpha, 0.9)])
        thin = len(start) > 4 / bars_per_px  # dense: edges would blur into the fill
        ax.add_collection(
            PolyCollection(
                verts, facecolors=faces, edgecolors=edges, linewidths=0 if thin else 0.5, zorder=3
            )
        )


def _pitch_axis(ax, tracks) -> None:
    """Pitch range padded to two octaves at least, C rows labelled C1…C8, black keys shaded."""
    pitches = [int(p) for t in tracks for p in t.notes.numpy()["pitch"]]
    lo, hi = (min(pitches), max(pitches)) if pitches else (48, 72)
    if hi - lo < 24:
        mid = (hi + lo) / 2
        lo, hi = int(mid - 12), int(mid + 12)
    lo, hi = lo - 2, hi + 2
    ax.set_ylim(lo - 0.5, hi + 0.5)
    if hi - lo <= 60:
        for p in range(lo, hi + 1):
            if p % 12 in (1, 3, 6, 8, 10):
                ax.axhspan(p - 0.5, p + 0.5, color="#eef0f5", lw=0, zorder=0.5)
    cs = [p for p in range(lo, hi + 1) if p % 12 == 0]
    for p in cs:
        ax.axhline(p - 0.5, color="#c9ccd6", lw=0.6, zorder=1)
    ax.set_yticks(cs)
    ax.set_yticklabels([f"C{p // 12 - 1}" for p in cs])
    ax.set_ylabel("pitch", color=TEXT, fontsize=9)


def _used_lanes(drums) -> list[int]:
    keys = {int(p) for t in drums for p in t.notes.numpy()["pitch"]}
    used = [i for i, (_, ks) in enumerate(DRUM_LANES) if keys & set(ks)]
    other = keys - {k for _, ks in DRUM_LANES for k in ks}
    return used + ([len(DRUM_LANES)] if other else [])


def _drum_lane(pitch: np.ndarray) -> np.ndarray:
    lane = np.full(len(pitch), len(DRUM_LANES))
    for i, (_, keys) in enumerate(DRUM_LANES):
        lane[np.isin(pitch, keys)] = i
    return lane


def _draw_drums(ax, drums, colours, grid: BarGrid, split, px_per_bar: float) -> None:
    """Drum hits as small markers, one row per kind of drum."""
    used = _used_lanes(drums)
    row = {lane: i for i, lane in enumerate(used)}
    size = float(np.clip(px_per_bar / 3, 2, 30))
    for track in drums:
        notes = track.notes.numpy()
        x = grid.to_bars(notes["time"])
        y = np.array([row[lane] for lane in _drum_lane(notes["pitch"])])
        alpha = 0.45 + 0.55 * notes["velocity"] / 127
        if split is not None:
            alpha = np.where(x < split, alpha * PROMPT_ALPHA, alpha)
        rgba = np.column_stack([np.tile(to_rgb(colours[id(track)]), (len(x), 1)), alpha])
        ax.scatter(x, y, s=size, marker="D", c=rgba, linewidths=0, zorder=3)
    ax.set_ylim(-0.7, len(used) - 0.3)
    ax.set_yticks(range(len(used)))
    names = [*(name for name, _ in DRUM_LANES), "Other"]
    ax.set_yticklabels([names[lane] for lane in used], fontsize=7)
    for i in range(len(used)):
        ax.axhline(i, color=GRID, lw=0.5, zorder=1)


def _split_labels(ax, split: float, n_bars: int) -> None:
    style = {"transform": ax.get_xaxis_transform(), "fontsize": 8, "va": "bottom", "zorder": 6}
    if split > 0:
        ax.text(split, 1.005, "prompt ◂ ", ha="right", color="#6b6f7a", **style)
    if split < n_bars:
        ax.text(split, 1.005, " ▸ continuation", ha="left", color="#e0443e", **style)


def _legend(fig: Figure, tracks, colours, title: str | None) -> None:
    """GM instrument names above the plot (numbered when an instrument repeats)."""
    from pretty_midi import program_to_instrument_name

    names = ["Drums" if t.is_drum else program_to_instrument_name(t.program) for t in tracks]
    handles = []
    for i, (track, name) in enumerate(zip(tracks, names, strict=True)):
        if names.count(name) > 1:
            name = f"{name} {names[: i + 1].count(name)}"
        colour = colours[id(track)]
        if track.is_drum:
            handles.append(Line2D([], [], ls="", marker="D", ms=5, color=colour, label=name))
        else:
            handles.append(Patch(facecolor=colour, edgecolor="none", label=name))
    if title:
        fig.suptitle(title, color=TEXT, fontsize=11, x=0.01, ha="left", fontweight="bold")
    if handles:
        fig.legend(
            handles=handles,
            loc="outside upper right",
            ncol=min(len(handles), 6),
            fontsize=8,
            frameon=False,
            handlelength=1.2,
            columnspacing=1.2,
        )
