"""``musegen evaluate-groups``: does a checkpoint continue each kind of music it will be given?

For each group of held-out pieces (classical/folk, pop piano, full band, drums, …; see
:mod:`musegen.eval_pieces` for where they come from) the first ``prompt_bars`` bars are
continued for ``new_bars`` bars at batch 1 with a fixed seed per piece, and the new bars are
compared with the real next bars and with the baseline of copying the prompt's last bars:

- **keeps playing**: share of the prompt's last-bars tracks (by program, drums as one kit) that
  have at least one note in the new bars (model / real / copy);
- **density ratio**: notes per bar of the new bars over the real ones, per piece;
- **pitch-class distance** to the real continuation, model vs copy (ratio of the means);
- **in key**: share of pitched notes in the key estimated from the prompt (Krumhansl);
  **range**: mean distance, in semitones, of each track's lowest/highest pitch from the real
  bars' (model and copy);
- **drum kit distance** to the real continuation, for pieces whose real next bars have drums:
  how differently the new bars spread their drum notes over the kit (half the L1 distance of
  the drum-pitch histograms; 1 for new bars without drums), model vs copy;
- **groove**: similarity of the new bars' onset patterns (16th grid, per track) to the prompt's
  last bars, over the same figure for the real next bars (ratio of the means);
- optionally **long pieces**: ``long_bars`` bars from a ``long_prompt_bars``-bar prompt: every
  prompt track still playing in the last 8 bars, density vs the real bars, longest run of
  identical consecutive bars vs the real piece's.

Each group gets the pass/fail of the targets of the default-model issue (``TARGETS``);
:mod:`musegen.eval_report` writes the markdown table.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from musegen import metrics
from musegen.eval_pieces import GroupSource, Piece, make_piece, pieces
from musegen.generation.settings import DEFAULT_TOP_P

DENSITY_RANGE = (0.6, 1.6)
# name: (comparison, threshold) — what a group must reach to pass (the targets).
TARGETS = {
    "keeps_playing": (">=", 0.9),
    "density_in_range": (">=", 0.9),
    "density_min": (">=", 0.2),
    "pitch_class_ratio": ("<=", 1.2),
    "groove_ratio": (">=", 0.8),
    "in_key_gap": ("<=", 0.1),
    "long_all_tracks": (">=", 1.0),
    "long_density_in_range": (">=", 1.0),
    "long_repetition_excess": ("<=", 0.0),
    "seconds_median": ("<=", 5.0),
}
# Groups whose speed is held to the 5 s target (4 new bars of a full-band prompt).
SPEED_GROUP_WORDS = ("band", "beatles")


@dataclass
class GroupEvalSettings:
    pieces: int = 24
    prompt_bars: int = 8
    new_bars: int = 4
    long_pieces: int = 0  # 0: skip the long-piece test
    long_prompt_bars: int = 4
    long_bars: int = 32
    temperature: float = 1.0
    top_p: float = DEFAULT_TOP_P
    seed: int = 0
    candidates: int | None = None  # continuations drawn per piece (None: the pipeline's default)
    guidance: dict[str, float] = field(default_factory=dict)  # key/groove; absent: defaults
    device: str = "cpu"
    progress: bool = True
    speed_groups: list[str] = field(default_factory=list)  # default: names with SPEED_GROUP_WORDS
    # Cut each piece on bars found from its notes when its own bar lines are wrong
    # (eval_pieces.make_piece); the pipeline then continues the cut prompt as it is.
    find_bar_lines: bool = False


# --- one piece -------------------------------------------------------------------------------
def new_bars(piece: Piece, result, bars: int):
    """A result's new part in the piece's ticks, cut to ``bars`` bars: what is scored."""
    new = result.continuation.resample(piece.prompt.tpq, min_dur=1)
    return new.clip(0, bars * piece.bar, clip_end=False)


def continue_piece(pipeline, piece: Piece, prompt_bars: int, bars: int, seed: int, s) -> dict:
    """Generate ``bars`` new bars after ``piece.prompt``; the new bars in the piece's ticks.

    ``aligned`` says whether the new bars start where the real next bars do (the prompt's
    ``prompt_bars`` bars end), as they should since the prompt's last bar has notes."""
    chosen = {} if s.candidates is None else {"candidates": s.candidates}
    chosen.update(s.guidance)
    result = pipeline.continue_midi(
        piece.prompt, 1, bars=bars, seed=seed, temperature=s.temperature, top_p=s.top_p,
        find_bar_lines=False, **chosen,
    )[0]  # fmt: skip
    start = result.prompt_end_tick * piece.prompt.tpq / result.score.tpq
    return {
        "new": new_bars(piece, result, bars),
        "seconds": result.seconds,
        "tokens": result.new_tokens,
        "finished": result.finished,
        "aligned": abs(start - prompt_bars * piece.bar) < piece.bar / 2,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def score_piece(piece: Piece, new, bars: int) -> dict:
    """Every per-piece figure for the model's new bars (``new``), the real and the copied."""
    length = bars * piece.bar
    real, copy = piece.real, piece.tail
    key = metrics.key_pitch_classes(*metrics.estimate_key(piece.prompt))
    hist_real = metrics.pitch_class_histogram(real)
    kit_real = metrics.drum_histogram(real)
    row: dict = {"notes_model": new.note_num(), "notes_real": real.note_num()}
    for name, score in (("model", new), ("real", real), ("copy", copy)):
        row["tracks"], row[f"keep_{name}"] = metrics.tracks_playing(piece.tail, score)
        row[f"in_key_{name}"] = metrics.in_key_rate(score, key)
        row[f"groove_{name}"] = metrics.onset_similarity(piece.tail, score, piece.bar, bars)
        if name != "real":
            row[f"density_{name}"] = metrics.density_ratio(score, real, length)
            row[f"pitch_class_{name}"] = metrics.histogram_distance(
                metrics.pitch_class_histogram(score), hist_real
            )
            row[f"range_{name}"] = metrics.range_difference(score, real)
            if kit_real.any():
                kit = metrics.drum_histogram(score)
                row[f"kit_{name}"] = metrics.histogram_distance(kit, kit_real) if kit.any() else 1.0
    return row


def score_long(piece: Piece, new, bars: int) -> dict:
    """Long-piece figures: tracks still playing in the last 8 bars, density, repetition."""
    last = max(0, bars - 8) * piece.bar
    tail = new.clip(last, bars * piece.bar, clip_end=False)
    tracks, playing = metrics.tracks_playing(piece.prompt, tail)
    return {
        "tracks": tracks,
        "playing_last_8": playing,
        "density": metrics.density_ratio(new, piece.real, bars * piece.bar),
        "repetition_model": metrics.longest_bar_repetition(new, piece.bar, bars),
        "repetition_real": metrics.longest_bar_repetition(piece.real, piece.bar, bars),
    }


# --- a group ---------------------------------------------------------------------------------
def _values(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _in_range(values: list[float]) -> float | None:
    low, high = DENSITY_RANGE
    return sum(low <= v <= high for v in values) / len(values) if values else None


def summarize(rows: list[dict]) -> dict:
    """A group's figures from its pieces' rows."""
    tracks = sum(r["tracks"] for r in rows)
    out: dict = {"pieces": len(rows), "tracks": tracks}
    for name in ("model", "real", "copy"):
        out[f"keeps_playing_{name}"] = (
            sum(r[f"keep_{name}"] for r in rows) / tracks if tracks else None
        )
        out[f"in_key_{name}"] = _mean(_values(rows, f"in_key_{name}"))
        out[f"groove_{name}"] = _mean(_values(rows, f"groove_{name}"))
    for name in ("model", "copy"):
        density = _values(rows, f"density_{name}")
        out[f"density_in_range_{name}"] = _in_range(density)
        out[f"density_min_{name}"] = min(density) if density else None
        out[f"density_median_{name}"] = statistics.median(density) if density else None
        out[f"pitch_class_{name}"] = _mean(_values(rows, f"pitch_class_{name}"))
        out[f"range_{name}"] = _mean(_values(rows, f"range_{name}"))
        out[f"kit_{name}"] = _mean(_values(rows, f"kit_{name}"))
    out["keeps_playing"] = out["keeps_playing_model"]
    out["density_in_range"] = out["density_in_range_model"]
    out["density_min"] = out["density_min_model"]
    out["pitch_class_ratio"] = _ratio(out["pitch_class_model"], out["pitch_class_copy"])
    out["groove_ratio"] = _ratio(out["groove_model"], out["groove_real"])
    out["kit_ratio"] = _ratio(out["kit_model"], out["kit_copy"])
    if out["in_key_model"] is not None and out["in_key_real"] is not None:
        out["in_key_gap"] = abs(out["in_key_model"] - out["in_key_real"])
    out["empty_continuations"] = sum(1 for r in rows if not r["notes_model"])
    seconds = _values(rows, "seconds")
    out["seconds_median"] = statistics.median(seconds) if seconds else None
    out["seconds_max"] = max(seconds) if seconds else None
    out["tokens_per_second"] = _ratio(sum(_values(rows, "tokens")), sum(seconds))
    return out


def summarize_long(rows: list[dict]) -> dict:
    if not rows:
        return {"long_pieces": 0}
    density = _values(rows, "density")
    model_rep = max(r["repetition_model"] for r in rows)
    real_rep = max(r["repetition_real"] for r in rows)
    return {
        "long_pieces": len(rows),
        "long_all_tracks": sum(r["playing_last_8"] == r["tracks"] for r in rows) / len(rows),
        "long_density_in_range": _in_range(density),
        "long_density_min": min(density) if density else None,
        "long_repetition_model": model_rep,
        "long_repetition_real": real_rep,
        # A loop is a run of identical bars longer than any real piece's (and than 2 bars).
        "long_repetition_excess": max(0, model_rep - max(2, real_rep)),
        "long_seconds_median": statistics.median(_values(rows, "seconds")),
    }


def check_targets(summary: dict, speed: bool) -> dict:
    """{target: {value, target, pass}} for the targets this summary has figures for."""
    out = {}
    for name, (op, threshold) in TARGETS.items():
        if name == "seconds_median" and not speed:
            continue
        value = summary.get(name)
        if value is None:
            continue
        ok = value >= threshold if op == ">=" else value <= threshold
        out[name] = {"value": value, "target": f"{op} {threshold}", "pass": bool(ok)}
    return out


def _is_speed_group(name: str, s: GroupEvalSettings) -> bool:
    if s.speed_groups:
        return name in s.speed_groups
    return any(word in name.lower() for word in SPEED_GROUP_WORDS)


@dataclass
class GroupPieces:
    """What is measured for one group: the same pieces for every checkpoint."""

    source: GroupSource
    short: list[Piece]
    long: list[Piece]


def collect(sources: list[GroupSource], s: GroupEvalSettings) -> list[GroupPieces]:
    out = []
    for source in sources:
        short = pieces(source, s.pieces, s.prompt_bars, s.new_bars, s.find_bar_lines)
        long = []
        for path in source.files if s.long_pieces else []:
            if len(long) >= s.long_pieces:
                break
            piece = make_piece(
                path, s.long_prompt_bars, s.long_bars, find_bar_lines=s.find_bar_lines
            )
            if piece is not None:
                long.append(piece)
        out.append(GroupPieces(source, short, long))
    return out


def evaluate_group(pipeline, group: GroupPieces, s: GroupEvalSettings) -> dict:
    name = group.source.name
    rows, long_rows = [], []
    total = len(group.short) + len(group.long)
    bar = tqdm(total=total, desc=name, unit="piece", disable=not s.progress)
    for i, piece in enumerate(group.short):
        out = continue_piece(pipeline, piece, s.prompt_bars, s.new_bars, s.seed + i, s)
        row = {"piece": piece.name} | score_piece(piece, out["new"], s.new_bars)
        rows.append(row | {k: out[k] for k in ("seconds", "tokens", "finished", "aligned")})
        bar.update(1)
    for i, piece in enumerate(group.long):
        out = continue_piece(pipeline, piece, s.long_prompt_bars, s.long_bars, s.seed + i, s)
        row = {"piece": piece.name} | score_long(piece, out["new"], s.long_bars)
        long_rows.append(row | {k: out[k] for k in ("seconds", "tokens", "finished")})
        bar.update(1)
    bar.close()
    summary = summarize(rows) if rows else {"pieces": 0}
    if s.long_pieces:
        summary |= summarize_long(long_rows)
    return {
        "source": group.source.held_out,
        "candidates": len(group.source.files),
        "summary": summary,
        "targets": check_targets(summary, _is_speed_group(name, s)) if rows else {},
        "pieces": rows,
        "long_pieces": long_rows,
    }


def evaluate_checkpoint(checkpoint: str | Path | None, groups: list[GroupPieces], s) -> dict:
    """One checkpoint's report over ``groups``."""
    from musegen.pipeline import Pipeline

    torch.manual_seed(s.seed)
    started = time.perf_counter()
    pipeline = Pipeline.from_pretrained(checkpoint, device=s.device)
    report = {
        "checkpoint": str(pipeline.checkpoint_dir),
        "parameters": sum(p.numel() for p in pipeline.model.parameters()),
        "context": pipeline.config.max_seq_len,
        "attention": pipeline.config.attention,
        "groups": {},
    }
    for group in groups:
        report["groups"][group.source.name] = evaluate_group(pipeline, group, s)
    passed = [t["pass"] for g in report["groups"].values() for t in g["targets"].values()]
    report["targets_passed"] = f"{sum(passed)}/{len(passed)}"
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def run(
    checkpoints: list[str | Path | None], sources: list[GroupSource], s: GroupEvalSettings
) -> dict:
    """The whole report: every checkpoint measured on the same pieces of every group."""
    groups = collect(sources, s)
    return {
        "settings": asdict(s),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "threads": torch.get_num_threads(),
        "groups": {g.source.name: g.source.held_out for g in groups},
        "models": [evaluate_checkpoint(c, groups, s) for c in checkpoints],
    }
