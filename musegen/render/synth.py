"""A small additive synthesizer in numpy: the renderer of last resort, so audio never goes silent.

Each General MIDI family (program // 8) gets a voice: a handful of harmonics, an envelope,
and for plucked or struck families a decay in which upper partials fade first. Drums (any track
flagged as drums, i.e. MIDI channel 10) are built from shaped noise and pitch-swept sines.
It is no SoundFont, but instruments are distinguishable and the groove is audible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import symusic

from musegen.tokenizer import end_seconds


@dataclass(frozen=True)
class Voice:
    """How one instrument family sounds."""

    harmonics: tuple[float, ...]  # amplitude of partials 1, 2, 3, …
    attack: float  # seconds
    decay: float  # seconds to fall to ``sustain`` (or, when plucked, the ring time constant)
    sustain: float  # level held while the key is down (ignored when plucked)
    release: float  # seconds after note-off
    plucked: bool = False  # struck/plucked: the note dies away by itself
    damping: float = 0.0  # extra decay per partial index (brighter attack, mellower tail)
    vibrato: float = 0.0  # depth in semitones, at 5.5 Hz after the attack
    detune: float = 0.0  # cents of a second, slightly detuned oscillator (ensemble width)


PIANO = Voice((1, 0.55, 0.3, 0.18, 0.1, 0.06, 0.03), 0.004, 1.6, 0, 0.25, True, 0.55)
VOICES: tuple[Voice, ...] = (
    PIANO,  # 0 piano
    Voice((1, 0.1, 0.35, 0.05, 0.12), 0.002, 0.9, 0, 0.4, True, 0.2),  # chromatic percussion
    Voice((1, 0.8, 0.5, 0.4, 0.2, 0.25, 0.1), 0.01, 0.05, 0.9, 0.06),  # organ
    Voice((1, 0.7, 0.45, 0.3, 0.2, 0.12, 0.07), 0.003, 1.1, 0, 0.15, True, 0.7),  # guitar
    Voice((1, 0.6, 0.25, 0.1), 0.006, 0.9, 0, 0.08, True, 0.5),  # bass
    Voice((1, 0.5, 0.33, 0.25, 0.2, 0.16, 0.12), 0.09, 0.2, 0.85, 0.3, vibrato=0.08),  # strings
    Voice((1, 0.45, 0.3, 0.2, 0.14, 0.1), 0.12, 0.3, 0.8, 0.45, detune=7),  # ensemble/choir
    Voice((1, 0.8, 0.65, 0.5, 0.38, 0.26, 0.17), 0.04, 0.15, 0.8, 0.12, vibrato=0.04),  # brass
    Voice((1, 0.05, 0.6, 0.05, 0.35, 0.04, 0.2), 0.03, 0.1, 0.85, 0.1, vibrato=0.05),  # reed
    Voice((1, 0.25, 0.08, 0.03), 0.05, 0.1, 0.85, 0.12, vibrato=0.06),  # pipe/flute
    Voice((1, 0.5, 0.33, 0.25, 0.2, 0.16, 0.14, 0.12), 0.005, 0.2, 0.75, 0.1, detune=9),  # lead
    Voice((1, 0.4, 0.2, 0.1, 0.05), 0.25, 0.5, 0.8, 0.6, detune=12),  # pad
    Voice((1, 0.3, 0.3, 0.2, 0.2), 0.1, 0.6, 0.6, 0.5, detune=15),  # synth effects
    Voice((1, 0.6, 0.4, 0.25, 0.12), 0.003, 0.8, 0, 0.2, True, 0.6),  # ethnic (plucked)
    Voice((1, 0.2, 0.5, 0.1, 0.3), 0.001, 0.35, 0, 0.1, True, 0.4),  # percussive
    Voice((1, 0.3, 0.2), 0.05, 0.3, 0.5, 0.3),  # sound effects
)
REVERB_TAPS = ((0.023, 0.029, 0.22), (0.041, 0.047, 0.15), (0.067, 0.061, 0.1), (0.097, 0.11, 0.06))


def voice_for(program: int) -> Voice:
    return VOICES[min(max(program, 0), 127) // 8]


def note_wave(voice: Voice, pitch: int, velocity: int, duration: float, sr: int) -> np.ndarray:
    """One mono note: harmonics under an envelope, including its release tail."""
    n = max(1, int((duration + voice.release) * sr))
    t = np.arange(n, dtype=np.float32) / sr
    f0 = 440.0 * 2.0 ** ((pitch - 69) / 12)
    phase = 2 * np.pi * f0 * t
    if voice.vibrato:
        depth = 2 ** (voice.vibrato / 12) - 1
        ramp = np.clip((t - 0.15) / 0.3, 0, 1)
        phase = phase + (depth * f0 / 5.5) * ramp * np.sin(2 * np.pi * 5.5 * t)
    ring = 1.0
    if voice.plucked:  # low notes ring longer than high ones, as on a real string
        ring = voice.decay * float(np.clip(2.0 ** ((60 - pitch) / 24), 0.35, 3.0))
    bright = 0.5 + velocity / 254  # harder notes are brighter
    wave = np.zeros(n, dtype=np.float32)
    for k, amp in enumerate(voice.harmonics, start=1):
        if k * f0 >= sr * 0.45:
            break
        partial = np.sin(k * phase)
        if voice.detune:
            partial += np.sin(k * phase * 2 ** (voice.detune / 1200))
            partial *= 0.5
        gain = amp * bright ** (k - 1)
        if voice.plucked and voice.damping:
            partial *= np.exp(-t * (voice.damping * (k - 1) / ring))
        wave += (gain * partial).astype(np.float32)
    return wave * _envelope(voice, t, duration, ring, sr) * (velocity / 127) ** 1.6


def _envelope(voice: Voice, t: np.ndarray, duration: float, ring: float, sr: int) -> np.ndarray:
    attack = np.clip(t / max(voice.attack, 1e-4), 0, 1)
    if voice.plucked:
        body = np.exp(-t / ring)
    else:
        body = voice.sustain + (1 - voice.sustain) * np.exp(-t / max(voice.decay, 1e-3) * 3)
    env = attack * body
    off = int(duration * sr)
    if off < len(t):
        level = env[max(off - 1, 0)]
        tail = np.exp(-(t[off:] - t[off]) / max(voice.release, 1e-3) * 5)
        env[off:] = level * tail
    return env.astype(np.float32)


def shaped_noise(n: int, sr: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """White noise band-limited to [low, high] Hz, made directly in the frequency domain."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum[(freqs < low) | (freqs > high)] = 0
    noise = np.fft.irfft(spectrum, n)
    peak = np.abs(noise).max()
    return (noise / peak if peak > 0 else noise).astype(np.float32)


def drum_wave(key: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One General MIDI percussion hit (key 35–81) at full velocity, faded out without a click."""
    wave = _drum_hit(key, sr, rng).astype(np.float32)
    fade = min(len(wave), int(0.01 * sr))
    wave[len(wave) - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
    return wave


def _drum_hit(key: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    kind = _drum_kind(key)
    length = {"kick": 0.45, "snare": 0.3, "hat": 0.08, "open": 0.45, "cymbal": 1.6, "tom": 0.5}
    n = int(length.get(kind, 0.25) * sr)
    t = np.arange(n, dtype=np.float32) / sr
    if kind == "kick":
        freq = 48 + 110 * np.exp(-t / 0.03)
        body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.16)
        click = shaped_noise(n, sr, 1000, 5000, rng) * np.exp(-t / 0.004) * 0.3
        return body + click
    if kind == "snare":
        tone = np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.05) * 0.6
        return tone + shaped_noise(n, sr, 1500, 9000, rng) * np.exp(-t / 0.07)
    if kind in ("hat", "open"):
        decay = 0.018 if kind == "hat" else 0.12
        return shaped_noise(n, sr, 6000, 16000, rng) * np.exp(-t / decay) * 0.55
    if kind == "cymbal":
        return shaped_noise(n, sr, 3500, 16000, rng) * np.exp(-t / 0.45) * 0.5
    if kind == "tom":
        f = 80 * 2 ** ((key - 41) / 12 * 0.8)
        freq = f + f * 0.5 * np.exp(-t / 0.05)
        return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.15)
    centre = 400 * 2 ** ((key - 56) / 12)  # claps, cowbells, shakers, latin percussion
    band = shaped_noise(n, sr, centre * 0.7, min(centre * 3, sr * 0.45), rng)
    return band * np.exp(-t / 0.05) * 0.7


def _drum_kind(key: int) -> str:
    if key in (35, 36):
        return "kick"
    if key in (37, 38, 39, 40):
        return "snare"
    if key in (42, 44):
        return "hat"
    if key == 46:
        return "open"
    if key in (49, 51, 52, 53, 55, 57, 59):
        return "cymbal"
    if key in (41, 43, 45, 47, 48, 50):
        return "tom"
    return "other"


def _pans(score: symusic.Score) -> list[float]:
    """Per-track pan in [-1, 1]: the track's CC10 if set, else spread pitched tracks apart."""
    pitched = [i for i, t in enumerate(score.tracks) if not t.is_drum]
    pans = [0.0] * len(score.tracks)
    for rank, i in enumerate(pitched):
        if len(pitched) > 1:
            pans[i] = (rank / (len(pitched) - 1) - 0.5) * 0.7
    for i, track in enumerate(score.tracks):
        cc10 = [c.value for c in track.controls if c.number == 10]
        if cc10:
            pans[i] = (cc10[0] - 64) / 64
    return pans


def render_score(score: symusic.Score, sample_rate: int, bar=None) -> np.ndarray:
    """Stereo float32 audio [n, 2] of a tick-based score; ``bar`` is an optional tqdm bar."""
    score = score.to("second")
    end = end_seconds(score)
    out = np.zeros((int((end + 2.0) * sample_rate) + 1, 2), dtype=np.float32)
    rng = np.random.default_rng(0)
    drum_cache: dict[int, np.ndarray] = {}
    note_cache: dict[tuple, np.ndarray] = {}
    for track, pan in zip(score.tracks, _pans(score), strict=True):
        left, right = np.cos((pan + 1) * np.pi / 4), np.sin((pan + 1) * np.pi / 4)
        mono = np.zeros(len(out), dtype=np.float32)
        voice = voice_for(track.program)
        for note in track.notes:
            if track.is_drum:
                if note.pitch not in drum_cache:
                    drum_cache[note.pitch] = drum_wave(note.pitch, sample_rate, rng)
                wave = drum_cache[note.pitch] * (note.velocity / 127) ** 1.3
            else:
                key = (note.pitch, note.velocity // 4, round(note.duration, 2))
                if key not in note_cache:
                    note_cache[key] = note_wave(
                        voice, note.pitch, key[1] * 4 + 2, key[2], sample_rate
                    )
                wave = note_cache[key]
            start = int(note.time * sample_rate)
            stop = min(len(mono), start + len(wave))
            mono[start:stop] += wave[: stop - start]
            if bar is not None:
                bar.update(1)
        out[:, 0] += mono * left
        out[:, 1] += mono * right
        note_cache.clear()
    return _room(out, sample_rate)


def _room(audio: np.ndarray, sr: int) -> np.ndarray:
    """A few decaying early reflections, different per side: space without a reverb engine."""
    wet = audio.copy()
    for delay_l, delay_r, gain in REVERB_TAPS:
        for channel, delay in ((0, delay_l), (1, delay_r)):
            d = int(delay * sr)
            wet[d:, channel] += gain * audio[:-d, 1 - channel]
    return wet
