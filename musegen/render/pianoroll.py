"""Piano-roll pictures of a score: bars across, pitch up, one colour per instrument.

Drawn with Pillow straight onto pixels. The app draws one roll per light request, and
matplotlib spent most of that request's CPU on its layout engine and text measuring; this
draws the same picture for a fraction of that (``benchmarks/bench_render.py`` measures both).
Density adapts to the picture: bar lines, bar numbers and beat lines thin out as the piece
grows, so 4 bars and 200 bars are both readable. Drums get their own lane of small markers,
and an optional split point shows the prompt faded behind a marker line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import symusic
from PIL import Image, ImageColor, ImageDraw, ImageFont

from musegen.errors import MusegenError
from musegen.tokenizer import load_tick_score

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
STRONG_GRID, C_LINE, FRAME = "#b5b8c2", "#c9ccd6", "#c4c7d0"
BLACK_KEY = (40, 52, 100, 13)  # a translucent tint
PROMPT_SHADE, SPLIT, MUTED = "#eceef3", "#e0443e", "#6b6f7a"


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


@dataclass
class RollLayout:
    """What a roll shows, in words: the legend, axis labels and marks drawn on it."""

    legend: list[str] = field(default_factory=list)
    pitch_labels: list[str] = field(default_factory=list)
    drum_lanes: list[str] = field(default_factory=list)
    bar_labels: list[str] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)  # "prompt", "continuation", "no notes"


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
    image, _ = draw_roll(load_tick_score(source), split_tick, title, width_px, height_px)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # flat colours: small files at any level
    png = buf.getvalue()
    if path is not None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        except OSError as exc:
            raise MusegenError(f"cannot write {path}: {exc.strerror}") from None
    return png


@dataclass
class _Box:
    """A plot area in pixels and the bar range it spans."""

    x0: float
    y0: float
    x1: float
    y1: float
    n_bars: int

    def x(self, bars: np.ndarray | float) -> np.ndarray:
        return self.x0 + np.asarray(bars, dtype=float) / max(self.n_bars, 1) * (self.x1 - self.x0)

    def y(self, value, low: float, high: float) -> np.ndarray:
        """Rows ``low … high`` (``high`` at the top) → y."""
        return self.y0 + (high - np.asarray(value, dtype=float)) / (high - low) * (
            self.y1 - self.y0
        )


def draw_roll(
    score: symusic.Score, split_tick: int | None, title: str | None, width_px: int, height_px: int
) -> tuple[Image.Image, RollLayout]:
    """The picture and what is on it."""
    tracks = [t for t in score.tracks if len(t.notes)]
    pitched = [t for t in tracks if not t.is_drum]
    drums = [t for t in tracks if t.is_drum]
    end = max([t.end() for t in tracks] + [split_tick or 0, 1])
    grid = bar_grid(score, end)
    n_bars = len(grid.bar_starts) - 1
    split = float(grid.to_bars(split_tick)) if split_tick else None  # 0: all generated
    colours = {id(t): ImageColor.getrgb(PALETTE[i % len(PALETTE)]) for i, t in enumerate(tracks)}
    layout = RollLayout(legend=_legend_names(tracks))
    lo, hi = _pitch_range(pitched)
    c_rows = [p for p in range(lo, hi + 1) if p % 12 == 0]
    layout.pitch_labels = [f"C{p // 12 - 1}" for p in c_rows]
    names = [*(name for name, _ in DRUM_LANES), "Other"]
    lanes = _used_lanes(drums) if drums else []
    layout.drum_lanes = [names[lane] for lane in lanes]

    image = Image.new("RGB", (width_px, height_px), "white")
    draw = ImageDraw.Draw(image, "RGBA")
    header = _header(draw, tracks, layout.legend, colours, title, width_px)
    labels = layout.pitch_labels + layout.drum_lanes
    left = 24 + max([_size(s, _font(10))[0] for s in labels] + [16])
    top = header + (16 if split is not None else 6)
    bottom = height_px - 34
    right = width_px - 10
    boxes = [_Box(left, top, right, max(bottom, top + 20), n_bars)]
    if drums:
        rows = max(2, len(lanes))
        drum_h = (boxes[0].y1 - top) * (1 + 0.35 * rows) / (8 + 0.35 * rows)
        boxes[0].y1 -= drum_h
        boxes.append(_Box(left, boxes[0].y1 + 6, right, boxes[0].y1 + drum_h, n_bars))
    pitch_box = boxes[0]

    for box in boxes:
        draw.rectangle(_xy(box), fill=BACKGROUND)
        if split:  # the prompt's background
            draw.rectangle(_xy((box.x0, box.y0, box.x(split), box.y1)), fill=PROMPT_SHADE)
    if hi - lo <= 60:  # black-key rows, translucent so they show on the prompt's shade too
        for p in range(lo, hi + 1):
            if p % 12 in (1, 3, 6, 8, 10):
                y0, y1 = pitch_box.y([p + 0.5, p - 0.5], lo - 0.5, hi + 0.5)
                draw.rectangle(_xy((pitch_box.x0, y0, pitch_box.x1, y1)), fill=BLACK_KEY)
    for p in c_rows:
        y = float(pitch_box.y(p - 0.5, lo - 0.5, hi + 0.5))
        draw.line([(pitch_box.x0, y), (pitch_box.x1, y)], fill=C_LINE, width=1)
    layout.bar_labels = _bar_lines(draw, boxes, grid, n_bars)

    font = _font(10)
    for p, label in zip(c_rows, layout.pitch_labels, strict=True):
        _text(draw, (left - 6, float(pitch_box.y(p, lo - 0.5, hi + 0.5))), label, font, "rm")
    _vertical_text(image, "pitch", _font(11), (6, (pitch_box.y0 + pitch_box.y1) / 2))
    bars_per_px = n_bars / max(right - left, 1)
    for track in pitched:
        _draw_notes(draw, track, colours[id(track)], pitch_box, grid, split, bars_per_px, lo, hi)
    if drums:
        drum_box = boxes[1]
        for i, name in enumerate(layout.drum_lanes):
            y = float(drum_box.y(i, -0.7, len(lanes) - 0.3))
            draw.line([(drum_box.x0, y), (drum_box.x1, y)], fill=GRID, width=1)
            _text(draw, (left - 6, y), name, font, "rm")
        row = {lane: i for i, lane in enumerate(lanes)}
        r = float(np.clip((right - left) / max(n_bars, 1) / 14, 2, 6))  # marker radius
        for track in drums:
            notes = track.notes.numpy()
            x = drum_box.x(grid.to_bars(notes["time"]))
            y = drum_box.y([row[k] for k in _drum_lane(notes["pitch"])], -0.7, len(lanes) - 0.3)
            alpha = _alpha(0.45 + 0.55 * notes["velocity"] / 127, notes["time"], grid, split)
            rgb = colours[id(track)]
            for xi, yi, a in zip(x.tolist(), y.tolist(), alpha.tolist(), strict=True):
                diamond = [(xi, yi - r), (xi + r, yi), (xi, yi + r), (xi - r, yi)]
                draw.polygon(diamond, fill=(*rgb, a))
    if not tracks:
        layout.marks.append("no notes")
        centre = ((pitch_box.x0 + pitch_box.x1) / 2, (pitch_box.y0 + pitch_box.y1) / 2)
        _text(draw, centre, "no notes", _font(16), "mm", fill="#9a9ca3")
    for box in boxes:
        if split:
            x = float(box.x(split))
            _dashed(draw, x, box.y0, box.y1, SPLIT, width=2, on=6, off=3)
        draw.rectangle(_xy(box), outline=FRAME, width=1)
    if split is not None:
        layout.marks += _split_marks(draw, pitch_box, split, n_bars, width_px)
    _text(draw, ((left + right) / 2, height_px - 3), "bar", _font(11), "mb")
    return image, layout


def _xy(box) -> list[int]:
    x0, y0, x1, y1 = (box.x0, box.y0, box.x1, box.y1) if isinstance(box, _Box) else box
    return [round(x0), round(y0), max(round(x0), round(x1)), max(round(y0), round(y1))]


@lru_cache(maxsize=8)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans, which matplotlib ships (it covers "–", "·", accents and most scripts a
    track or file name may hold); Pillow's bundled font where that file is missing."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default(size=size)


def _size(text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    return x1 - x0, y1 - y0


def _text(draw, xy, text: str, font, anchor: str = "la", fill: str = TEXT) -> None:
    """Text placed by its ink box: ``anchor`` is l/m/r then t/m/b, as in Pillow's anchors,
    computed here so the bitmap fallback font (which has no anchors) places it the same."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - {"l": x0, "m": (x0 + x1) / 2, "r": x1}[anchor[0]]
    y = xy[1] - {"a": y0, "t": y0, "m": (y0 + y1) / 2, "b": y1}[anchor[1]]
    draw.text((x, y), text, font=font, fill=fill)


def _vertical_text(image: Image.Image, text: str, font, left_centre) -> None:
    w, h = _size(text, font)
    mask = Image.new("L", (w + 2, h + 4))
    x0, y0, _, _ = font.getbbox(text)
    ImageDraw.Draw(mask).text((1 - x0, 2 - y0), text, font=font, fill=255)
    mask = mask.rotate(90, expand=True)
    image.paste(
        ImageColor.getrgb(TEXT), (int(left_centre[0]), int(left_centre[1] - mask.height / 2)), mask
    )


def _dashed(draw, x: float, y0: float, y1: float, colour, width: int, on: int, off: int) -> None:
    y = y0
    while y < y1:
        draw.line([(x, y), (x, min(y + on, y1))], fill=colour, width=width)
        y += on + off


def _bar_lines(draw, boxes: list[_Box], grid: BarGrid, n_bars: int) -> list[str]:
    """Bar and beat lines thinned to the pixels available; returns the bar numbers shown."""
    plot_px = boxes[0].x1 - boxes[0].x0
    px_per_bar = plot_px / max(n_bars, 1)
    line_step = next(s for s in (1, 2, 4, 8, 16, 32, 64, 10**9) if s * px_per_bar >= 9)
    label_step = next(s for s in (1, 2, 4, 8, 16, 32, 64, 10**9) if s * px_per_bar >= 38)
    beats = [b for b in grid.to_bars(grid.beat_starts) if b % 1] if px_per_bar / 4 >= 14 else []
    for box in boxes:
        for beat in beats:
            _dashed(draw, float(box.x(beat)), box.y0, box.y1, GRID, width=1, on=2, off=3)
        for bar in range(0, n_bars + 1, line_step):
            strong = bar % (4 * line_step) == 0
            x = float(box.x(bar))
            draw.line([(x, box.y0), (x, box.y1)], fill=STRONG_GRID if strong else GRID, width=1)
    ticks = list(range(0, n_bars, label_step))
    last = boxes[-1]
    for bar in ticks:
        x = float(last.x(bar + 0.5 if label_step == 1 else bar))
        _text(draw, (x, last.y1 + 4), str(bar + 1), _font(10), "mt")
    return [str(bar + 1) for bar in ticks]


def _alpha(base: np.ndarray, times: np.ndarray, grid: BarGrid, split: float | None) -> np.ndarray:
    """0–255 opacity per note; the prompt part faded."""
    if split is not None:
        base = np.where(grid.to_bars(times) < split, base * PROMPT_ALPHA, base)
    return np.round(np.clip(base, 0, 1) * 255).astype(int)


def _draw_notes(draw, track, rgb, box: _Box, grid, split, bars_per_px: float, lo, hi) -> None:
    """Each note a rectangle; very short notes kept ≥ 1.5 px wide; outlined unless dense."""
    notes = track.notes.numpy()
    start = grid.to_bars(notes["time"])
    stop = np.maximum(grid.to_bars(notes["time"] + notes["duration"]), start + 1.5 * bars_per_px)
    row_h = (box.y1 - box.y0) / (hi - lo + 1)
    centre = box.y(notes["pitch"], lo - 0.5, hi + 0.5)
    x0, x1 = np.round(box.x(start)), np.round(box.x(stop)) - 1
    y0, y1 = np.round(centre - 0.42 * row_h), np.round(centre + 0.42 * row_h) - 1
    x1, y1 = np.maximum(x1, x0), np.maximum(y1, y0)
    alpha = _alpha(0.55 + 0.45 * notes["velocity"] / 127, notes["time"], grid, split)
    edge = tuple(int(c * 0.6) for c in rgb)
    outline = len(start) <= 4 / bars_per_px and row_h >= 4  # dense: edges blur into the fill
    for a, b, c, d, alp in np.column_stack([x0, y0, x1, y1, alpha]).astype(int).tolist():
        draw.rectangle(
            (a, b, c, d),
            fill=(*rgb, alp),
            outline=(*edge, min(alp, 230)) if outline else None,
        )


def _pitch_range(tracks) -> tuple[int, int]:
    """Pitch range padded to two octaves at least."""
    pitches = [int(p) for t in tracks for p in t.notes.numpy()["pitch"]]
    lo, hi = (min(pitches), max(pitches)) if pitches else (48, 72)
    if hi - lo < 24:
        mid = (hi + lo) / 2
        lo, hi = int(mid - 12), int(mid + 12)
    return lo - 2, hi + 2


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


def _split_marks(draw, box: _Box, split: float, n_bars: int, width_px: int) -> list[str]:
    """ "prompt ◂" left of the split line and "▸ continuation" right of it, above the plot."""
    x, y = float(box.x(split)), box.y0 - 8
    font, marks = _font(10), []
    if split > 0:
        draw.polygon([(x - 9, y), (x - 4, y - 4), (x - 4, y + 4)], fill=MUTED)
        _text(draw, (max(x - 12, 50), y), "prompt", font, "rm", fill=MUTED)
        marks.append("prompt")
    if split < n_bars:
        draw.polygon([(x + 9, y), (x + 4, y - 4), (x + 4, y + 4)], fill=SPLIT)
        _text(draw, (min(x + 12, width_px - 70), y), "continuation", font, "lm", fill=SPLIT)
        marks.append("continuation")
    return marks


def _legend_names(tracks) -> list[str]:
    """GM instrument names (numbered when an instrument repeats)."""
    from pretty_midi import program_to_instrument_name

    names = ["Drums" if t.is_drum else program_to_instrument_name(t.program) for t in tracks]
    return [
        f"{name} {names[: i + 1].count(name)}" if names.count(name) > 1 else name
        for i, name in enumerate(names)
    ]


def _header(draw, tracks, names: list[str], colours, title: str | None, width_px: int) -> int:
    """The title at the left and the legend flowing right-aligned in rows; returns its bottom."""
    font, row_h, x_title = _font(10), 18, 8
    title_w = 0
    if title:
        _text(draw, (x_title, 4), title, _font(12, bold=True), "la")
        title_w = _size(title, _font(12, bold=True))[0] + 24
    entries = [(t, n, 16 + _size(n, font)[0] + 14) for t, n in zip(tracks, names, strict=True)]
    rows: list[list] = [[]]
    room = width_px - 16 - title_w
    for entry in entries:
        used = sum(e[2] for e in rows[-1])
        if rows[-1] and used + entry[2] > room:
            rows.append([])
            room = width_px - 16
        rows[-1].append(entry)
    for r, row in enumerate(rows):
        x = width_px - 8 - sum(e[2] for e in row) + 14
        y = 4 + r * row_h + 7
        for track, name, w in row:
            rgb = colours[id(track)]
            if track.is_drum:
                draw.polygon([(x + 5, y - 5), (x + 10, y), (x + 5, y + 5), (x, y)], fill=rgb)
            else:
                draw.rectangle((x, y - 5, x + 10, y + 5), fill=rgb)
            _text(draw, (x + 16, y), name, font, "lm")
            x += w
    legend_rows = len(rows) if entries else 0
    return 4 + max(legend_rows * row_h, 20 if title else 0)
