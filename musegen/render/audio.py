"""Hearing a score: audio through the best renderer available (pictures: :mod:`.pianoroll`).

How a renderer is chosen (``backend=None``):

1. SoundFont: the one given (``soundfont=``, ``--soundfont``) or ``$MUSEGEN_SOUNDFONT``; a
   path that is missing or is not a SoundFont is an error, never silently replaced. Otherwise
   the first system GM SoundFont found (``FluidR3_GM.sf2`` from Debian's
   ``fluid-soundfont-gm``, …), else ``TimGM6mb.sf2`` from inside the pretty_midi wheel.
2. Engine: FluidSynth (pyfluidsynth + libfluidsynth; .sf2/.sf3, reverb) when it loads, else
   midirenderer (a plain pip wheel; .sf2 only; renders at 48 kHz, resampled here).
3. With no engine or no SoundFont at all: the built-in numpy synth, so audio is never silent.

The result is loudness-normalised (RMS aimed at -16 dBFS, peak held under 1.0), trimmed of
trailing silence, and says which renderer made it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import symusic

from musegen.errors import MusegenError
from musegen.render import engines as audio_backends
from musegen.render import synth
from musegen.render.engines import Engine, SoundFont
from musegen.tokenizer import count_notes, end_seconds, load_tick_score

log = logging.getLogger("musegen.render.audio")

SYNTH = "synth"
BACKENDS = ("fluidsynth", "midirenderer", SYNTH)
AUDIO_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
TARGET_RMS = 10 ** (-16 / 20)
PEAK_CEILING = 10 ** (-0.5 / 20)  # -0.5 dBFS: headroom for lossy encoders
SILENCE_DB = -60.0
MAX_TAIL_S = 1.0  # at most this much release/reverb after the last note ends
EMPTY_SECONDS = 1.0


@dataclass
class RenderedAudio:
    """Audio ready to play or write: float32 [n, 2] (or [n]) with peak ≤ 1.0."""

    audio: np.ndarray
    sample_rate: int
    renderer: str
    duration: float


def available_backends() -> list[str]:
    """Names usable as ``backend=`` on this machine, in the order ``backend=None`` tries them."""
    return [e.name for e in audio_backends.ENGINES if e.available()] + [SYNTH]


def render_audio(
    source: str | Path | bytes | symusic.Score,
    soundfont: str | Path | None = None,
    sample_rate: int = 44100,
    backend: str | None = None,
    progress: bool = False,
    max_seconds: float | None = None,
) -> RenderedAudio:
    """Render a MIDI file, MIDI bytes or score to audio; see the module docstring for the order.

    ``max_seconds``: a longer score is rendered from that many seconds before its end (what a
    server can afford per request; the new part of a continuation is at the end).
    """
    if backend not in (None, "auto", *BACKENDS):
        raise MusegenError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if not 8000 <= int(sample_rate) <= 192000:
        raise MusegenError(f"sample rate {sample_rate} Hz is out of range (8000–192000)")
    sample_rate = int(sample_rate)
    score = load_tick_score(source)
    if max_seconds is not None and end_seconds(score) > max_seconds:
        score = last_seconds(score, max_seconds)
    user_sf = audio_backends.user_soundfont(soundfont)
    if count_notes(score) == 0:
        log.info("score has no notes: writing %.1f s of silence", EMPTY_SECONDS)
        silent = np.zeros((int(EMPTY_SECONDS * sample_rate), 2), dtype=np.float32)
        return RenderedAudio(silent, sample_rate, "silence (the score has no notes)", EMPTY_SECONDS)
    started = time.process_time()
    strict = backend not in (None, "auto") or user_sf is not None
    audio, label = _render_first(
        _plan(backend if backend != "auto" else None, user_sf), score, sample_rate, progress, strict
    )
    audio = normalise(trim(audio, sample_rate, end_seconds(score)))
    duration = len(audio) / sample_rate
    log.info(
        "rendered %.1f s of audio with %s in %.2f CPU s",
        duration,
        label,
        time.process_time() - started,
    )
    return RenderedAudio(audio, sample_rate, label, duration)


def last_seconds(score: symusic.Score, seconds: float) -> symusic.Score:
    """The last ``seconds`` of ``score`` (notes that start in them), in ticks from 0."""
    timed = score.to("second")
    start = max(0.0, end_seconds(timed) - seconds)
    cut = timed.clip(start, end_seconds(timed) + 1.0, clip_end=False).shift_time(-start)
    return cut.to("tick")


def _render_first(plan, score, sample_rate: int, progress: bool, strict: bool):
    """Audio and label from the first renderer in ``plan`` that works.

    A renderer that crashes is skipped with a warning only when nothing specific was asked for;
    with a chosen backend or SoundFont the failure is reported instead of silently replaced.
    """
    for engine, sf in plan:
        try:
            return _run(engine, sf, score, sample_rate, progress)
        except MusegenError:
            raise
        except Exception as exc:  # an engine crashing on one file must not take the app down
            if strict:
                raise MusegenError(f"{engine.label} failed on this score: {exc}") from None
            log.warning("%s failed (%s); trying the next renderer", engine.label, exc)
    raise MusegenError("every renderer failed on this score; see the log for details")


class _SynthEngine(Engine):
    name = SYNTH
    label = "built-in synth"

    def available(self) -> bool:
        return True

    def render(self, score, soundfont, sample_rate, progress):
        from tqdm import tqdm

        long = progress and end_seconds(score) >= 30  # only then is the bar shown
        with tqdm(
            total=count_notes(score),
            unit="note",
            desc="rendering (built-in synth)",
            disable=not long,
            leave=False,
        ) as bar:
            return synth.render_score(score, sample_rate, bar)


def _plan(backend: str | None, user_sf: SoundFont | None) -> list[tuple[Engine, SoundFont | None]]:
    """The (engine, SoundFont) pairs to try, best first; raises when a request cannot be met."""
    if backend == SYNTH:
        if user_sf is not None:
            log.warning("backend 'synth' uses no SoundFont; ignoring %s", user_sf.path)
        return [(_SynthEngine(), None)]
    engines = [e for e in audio_backends.ENGINES if backend in (None, e.name) and e.available()]
    if backend is not None and not engines:
        raise MusegenError(f"backend {backend!r} is not available here: {_install_hint(backend)}")
    fonts = [user_sf] if user_sf is not None else audio_backends.discover_soundfonts()
    plan: list[tuple[Engine, SoundFont | None]] = []
    for engine in engines:
        usable = [sf for sf in fonts if engine.supports(sf)]
        if usable:
            plan.append((engine, usable[0]))
    if user_sf is not None and not plan:
        why = "(.sf3 needs FluidSynth)" if user_sf.version >= 3 else ""
        raise MusegenError(
            f"no installed engine can play the SoundFont {user_sf.path} {why}: "
            f"{_install_hint('fluidsynth')}"
        )
    if backend is not None and not plan:
        raise MusegenError(f"backend {backend!r} found no SoundFont it can play: use --soundfont")
    if backend is None:
        plan.append((_SynthEngine(), None))
    return plan


def _install_hint(backend: str) -> str:
    if backend == "fluidsynth":
        return "pip install pyfluidsynth, plus libfluidsynth (apt-get install libfluidsynth3)"
    return "pip install midirenderer"


def _run(engine: Engine, sf: SoundFont | None, score: symusic.Score, sr: int, progress: bool):
    label = engine.label if sf is None else f"{engine.label} with {sf.name}"
    log.info("rendering with %s", label)
    audio = engine.render(score, sf, sr, progress)
    return np.asarray(audio, dtype=np.float32), label


def trim(audio: np.ndarray, sample_rate: int, end_s: float) -> np.ndarray:
    """Cut trailing silence (below -60 dB of the peak), keeping at most 1 s after the last note."""
    level = np.abs(audio).max(axis=1) if audio.ndim == 2 else np.abs(audio)
    peak = float(level.max()) if len(level) else 0.0
    if peak == 0.0:
        return audio[: int(end_s * sample_rate) or 1]
    loud = np.flatnonzero(level > peak * 10 ** (SILENCE_DB / 20))
    stop = min(int(loud[-1]) + 1, int((end_s + MAX_TAIL_S) * sample_rate), len(audio))
    out = audio[:stop].copy()
    fade = min(stop, int(0.05 * sample_rate))  # no click where a ringing tail is cut
    ramp = np.linspace(1.0, 0.0, fade, dtype=np.float32)
    out[stop - fade :] *= ramp[:, None] if out.ndim == 2 else ramp
    return out


def normalise(audio: np.ndarray) -> np.ndarray:
    """Scale towards -16 dBFS RMS, but never so far that the peak passes -0.5 dBFS."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak == 0.0:
        return audio.astype(np.float32)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    gain = min(TARGET_RMS / max(rms, 1e-9), PEAK_CEILING / peak)
    return (audio * gain).astype(np.float32)


def write_audio(rendered: RenderedAudio, path: str | Path) -> Path:
    """Write WAV, FLAC or OGG (Vorbis), chosen by the file extension."""
    path = Path(path)
    fmt = AUDIO_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MusegenError(
            f"cannot write audio to {path.name}: use a .wav, .flac or .ogg file name"
        )
    if path.is_dir():
        raise MusegenError(f"{path} is a directory: give a file name ending in {path.suffix}")
    audio = np.clip(rendered.audio, -1.0, 1.0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), audio, rendered.sample_rate, format=fmt[0], subtype=fmt[1])
    except (OSError, RuntimeError) as exc:  # LibsndfileError is a RuntimeError
        raise MusegenError(f"cannot write {path}: {str(exc).splitlines()[0]}") from None
    return path


__all__ = [
    "BACKENDS",
    "RenderedAudio",
    "available_backends",
    "render_audio",
    "write_audio",
]
