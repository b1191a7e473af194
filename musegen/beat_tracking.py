"""The beats of a performance played without a click, from its notes alone.

A file recorded from a keyboard without a click keeps the recorder's tempo (often 120 bpm) and
meter, so its beats and bar lines say nothing about the music: the notes fall anywhere on its
grid, and a player's tempo drifts. :func:`beats_of` finds the beats the way a listener taps
along: an onset envelope (where notes start, louder, longer and fuller onsets counting more),
the beat period that the envelope repeats at most (near a moderate tempo), then the beat times
by dynamic programming (Ellis, "Beat tracking by dynamic programming", 2007): each beat lands on
strong onsets while the gap to the previous one stays near the period, so a gradual rubato is
followed and a missing onset is bridged.

Whether to use them is :func:`musegen.bar_lines.find`'s call: only when no grid of the file
fits its notes and the beats found do.
"""

from __future__ import annotations

import numpy as np
import symusic

FRAME = 0.01  # seconds per envelope frame
SMOOTH = 0.02  # seconds: the envelope's Gaussian blur, a player's spread within a chord
MIN_BPM, MAX_BPM = 40.0, 200.0  # the beat periods searched
PRIOR_BPM, PRIOR_OCTAVES = 100.0, 1.0  # a listener's preferred tempo, and how loosely
TIGHTNESS = 100.0  # how strongly a beat gap is held to the period (log-squared penalty)
MIN_ONSETS = 32  # fewer distinct onsets say too little about a beat


def seconds_per_tick(score: symusic.Score) -> float | None:
    """The file's one tempo, in seconds per tick; None when it changes tempo (a sequenced file
    with a tempo map was written on a grid, not played without a click)."""
    qpms = {round(t.qpm, 3) for t in score.tempos}
    if len(qpms) > 1:
        return None
    qpm = qpms.pop() if qpms else 120.0
    return 60.0 / qpm / score.ticks_per_quarter


def envelope(score: symusic.Score, tick_seconds: float) -> np.ndarray:
    """Onset strength per :data:`FRAME`: each note adds its loudness, more for a longer note,
    at the frame it starts in; then a Gaussian blur of :data:`SMOOTH` and a unit spread."""
    rows = [t.notes.numpy() for t in score.tracks if len(t.notes)]
    time = np.concatenate([r["time"] for r in rows]) * tick_seconds
    dur = np.concatenate([r["duration"] for r in rows]) * tick_seconds
    vel = np.concatenate([r["velocity"] for r in rows]) / 127.0
    frames = np.round(time / FRAME).astype(np.int64)
    out = np.bincount(frames, weights=vel * (0.5 + np.clip(dur, 0, 1.0)))
    width = SMOOTH / FRAME
    kernel = np.exp(-0.5 * (np.arange(-3 * width, 3 * width + 1) / width) ** 2)
    out = np.convolve(out, kernel / kernel.sum(), mode="same")
    return out / max(float(out.std()), 1e-9)


def beat_period(env: np.ndarray) -> float:
    """The lag (frames) at which the envelope repeats most, weighted toward a moderate tempo."""
    low, high = int(60 / MAX_BPM / FRAME), int(np.ceil(60 / MIN_BPM / FRAME))
    centred = env - env.mean()
    corr = np.correlate(centred, centred, mode="full")[len(env) - 1 :]
    lags = np.arange(low, min(high, len(env) - 1) + 1)
    if not len(lags):
        return 60 / PRIOR_BPM / FRAME
    # A beat's multiples repeat too (half bars, bars): counting them keeps a dotted or
    # triplet figure that repeats often from passing for the beat.
    strength = sum(corr[np.minimum(lags * k, len(corr) - 1)] for k in (1, 2, 4))
    prior = np.exp(-0.5 * (np.log2(lags * FRAME * PRIOR_BPM / 60) / PRIOR_OCTAVES) ** 2)
    return float(lags[int(np.argmax(strength * prior))])


def track(env: np.ndarray, period: float) -> np.ndarray:
    """Beat frames: the chain of frames through strong onsets whose gaps stay near ``period``
    (each frame's best score is its own strength plus the best earlier beat's, less the
    log-squared stretch of the gap); the chain is read back from the best late frame."""
    n = len(env)
    score = env.astype(float).copy()
    back = np.full(n, -1, dtype=np.int64)
    gaps = np.arange(round(2 * period), round(period / 2) - 1, -1)  # far → near
    penalty = -TIGHTNESS * np.log(gaps / period) ** 2
    for t in range(n):
        prev = t - gaps
        ok = prev >= 0
        if not ok.any():
            continue
        candidates = score[prev[ok]] + penalty[ok]
        best = int(np.argmax(candidates))
        score[t] = env[t] + candidates[best]
        back[t] = prev[ok][best]
    tail = max(0, n - round(period))
    beat = tail + int(np.argmax(score[tail:]))
    beats = [beat]
    while back[beats[-1]] >= 0:
        beats.append(int(back[beats[-1]]))
    return np.asarray(beats[::-1], dtype=np.int64)


def beats_of(score: symusic.Score) -> np.ndarray | None:
    """The ticks of the beats found in ``score`` (see the module); None when it changes tempo
    or has fewer than :data:`MIN_ONSETS` onsets."""
    tick_seconds = seconds_per_tick(score)
    starts = {n.time for t in score.tracks for n in t.notes}
    if tick_seconds is None or len(starts) < MIN_ONSETS:
        return None
    env = envelope(score, tick_seconds)
    frames = track(env, beat_period(env))
    ticks = np.round(frames * FRAME / tick_seconds).astype(np.int64)
    return np.unique(ticks) if len(ticks) >= 4 else None
