"""SoundFont discovery and the SoundFont engines (FluidSynth, midirenderer).

Each engine's Python package is optional: an engine whose import fails is simply not offered,
so a plain ``pip install`` still renders through midirenderer (a self-contained wheel) or, with
nothing at all, the built-in synth in :mod:`musegen.render.synth`. Engines take a score whose times
are in ticks and return float32 stereo audio at the requested sample rate; loudness and
trimming are the facade's job (:mod:`musegen.render.audio`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import io
import itertools
import logging
import math
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import symusic

from musegen.errors import MusegenError
from musegen.tokenizer import score_to_midi_bytes

log = logging.getLogger("musegen.render.audio")

ENV_SOUNDFONT = "MUSEGEN_SOUNDFONT"
# General MIDI SoundFonts that Linux distributions and Homebrew install, best first.
# Debian/Ubuntu: `apt-get install fluid-soundfont-gm` gives FluidR3_GM.sf2 (141 MB).
SYSTEM_SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)
TAIL_SECONDS = 2.0  # rendered after the last event so releases and reverb can ring out


@dataclass(frozen=True)
class SoundFont:
    """A SoundFont file whose RIFF header was checked; ``version`` 3 means compressed (.sf3)."""

    path: Path
    version: int
    origin: str  # "user", "system" or "bundled"

    @property
    def name(self) -> str:
        return self.path.stem


def read_soundfont(path: str | Path, origin: str = "user") -> SoundFont:
    """Check that ``path`` is a readable SoundFont (RIFF ``sfbk``), or raise a MusegenError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MusegenError(f"SoundFont not found: {path}")
    if path.is_dir():
        raise MusegenError(f"SoundFont {path} is a directory: give the .sf2/.sf3 file itself")
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise MusegenError(f"SoundFont {path} cannot be read ({exc.strerror})") from None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise MusegenError(f"{path} is not a SoundFont (no RIFF/sfbk header): give a .sf2 or .sf3")
    version = 2
    at = head.find(b"ifil")
    if at >= 0 and at + 10 <= len(head):
        version = struct.unpack_from("<H", head, at + 8)[0]
    return SoundFont(path.resolve(), version, origin)


def bundled_soundfont() -> Path | None:
    """The small GM SoundFont (TimGM6mb, 6 MB) that ships inside the pretty_midi wheel."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "TimGM6mb.sf2"
    return path if path.is_file() else None


def user_soundfont(soundfont: str | Path | None) -> SoundFont | None:
    """The SoundFont the user asked for (argument, else $MUSEGEN_SOUNDFONT), checked."""
    if soundfont is not None and str(soundfont) != "":
        return read_soundfont(soundfont)
    env = os.environ.get(ENV_SOUNDFONT, "").strip()
    if env:
        try:
            return read_soundfont(env)
        except MusegenError as exc:
            raise MusegenError(f"{exc} (from ${ENV_SOUNDFONT})") from None
    return None


def discover_soundfonts() -> list[SoundFont]:
    """System GM SoundFonts, then the bundled TimGM6mb; unreadable candidates are skipped."""
    found: list[SoundFont] = []
    seen: set[Path] = set()
    candidates = [(p, "system") for p in SYSTEM_SOUNDFONTS]
    bundled = bundled_soundfont()
    if bundled is not None:
        candidates.append((str(bundled), "bundled"))
    for candidate, origin in candidates:
        if not Path(candidate).is_file():
            continue
        try:
            sf = read_soundfont(candidate, origin)
        except MusegenError as exc:
            log.debug("skipping %s: %s", candidate, exc)
            continue
        if sf.path not in seen:
            seen.add(sf.path)
            found.append(sf)
    return found


class Engine:
    """A SoundFont renderer. Subclasses say whether they are installed and what they can play."""

    name = ""
    label = ""

    def available(self) -> bool:
        raise NotImplementedError

    def supports(self, soundfont: SoundFont) -> bool:
        return True

    def render(
        self, score: symusic.Score, soundfont: SoundFont, sample_rate: int, progress: bool
    ) -> np.ndarray:
        """Stereo float32 audio [n, 2] of a tick-based ``score``."""
        raise NotImplementedError


def _import_optional(module: str):
    """The module, or None when it (or a shared library it loads) is missing."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:
        log.debug("%s unavailable: %s", module, exc)
        return None


class FluidSynthEngine(Engine):
    """libfluidsynth through pyfluidsynth: plays .sf2 and .sf3, with reverb and chorus."""

    name = "fluidsynth"
    label = "FluidSynth"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._synths: dict[tuple, tuple[object, int]] = {}

    def available(self) -> bool:
        return _import_optional("fluidsynth") is not None

    def _synth(self, soundfont: SoundFont, sample_rate: int):
        """A synth with the SoundFont loaded; kept, since loading a large one takes a second."""
        key = (soundfont.path, soundfont.path.stat().st_mtime, sample_rate)
        if key not in self._synths:
            fluidsynth = importlib.import_module("fluidsynth")
            _route_fluidsynth_log(fluidsynth)
            for synth, _ in self._synths.values():
                synth.delete()
            self._synths.clear()
            # 1024 voices: dense orchestral scores do not run out (FluidSynth's default is 256).
            options = {"synth.polyphony": 1024}
            synth = fluidsynth.Synth(gain=0.2, samplerate=float(sample_rate), **options)
            sfid = synth.sfload(str(soundfont.path))
            if sfid < 0:
                synth.delete()
                raise MusegenError(f"FluidSynth could not load the SoundFont {soundfont.path}")
            self._synths[key] = (synth, sfid)
        return self._synths[key]

    def render(
        self, score: symusic.Score, soundfont: SoundFont, sample_rate: int, progress: bool
    ) -> np.ndarray:
        with self._lock:
            synth, sfid = self._synth(soundfont, sample_rate)
            synth.system_reset()
            try:
                return _play_events(synth, sfid, score, sample_rate, progress)
            finally:
                synth.system_reset()


_LOG_CALLBACK = None  # kept alive: libfluidsynth holds a raw pointer to it


def _route_fluidsynth_log(fluidsynth) -> None:
    """Send libfluidsynth's warnings to our logger (debug level) instead of raw stderr."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    try:
        lib = ctypes.CDLL(fluidsynth.lib) if isinstance(fluidsynth.lib, str) else fluidsynth.lib
        prototype = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

        def forward(level: int, message: bytes, _data) -> None:
            log.debug("fluidsynth[%d]: %s", level, message.decode(errors="replace"))

        _LOG_CALLBACK = prototype(forward)
        for level in range(1, 5):  # error, warning, info, debug; panics stay on stderr
            lib.fluid_set_log_function(level, _LOG_CALLBACK, None)
    except (OSError, AttributeError) as exc:
        log.debug("cannot route FluidSynth's log: %s", exc)


def _channels(score: symusic.Score) -> list[int]:
    """One MIDI channel per track (FluidSynth has 256): drums on 9, 25, …; others skip those.

    Past 240 pitched or 16 drum tracks, channels are shared (which only merges controllers).
    """
    pitched = itertools.cycle([c for c in range(256) if c % 16 != 9])
    drums = itertools.cycle(range(9, 256, 16))
    return [next(drums) if t.is_drum else next(pitched) for t in score.tracks]


def _events(
    score: symusic.Score, sample_rate: int, channels: list[int]
) -> list[tuple[int, int, int, int, int]]:
    """(sample, order, channel, a, b) sorted; order puts offs before controls before ons."""
    events = []
    for channel, track in zip(channels, score.tracks, strict=True):
        for c in track.controls:
            events.append((round(c.time * sample_rate), 1, channel, c.number, c.value))
        for b in track.pitch_bends:
            events.append((round(b.time * sample_rate), 1, channel, -1, b.value))
        for n in track.notes:
            start = round(n.time * sample_rate)
            end = max(start + 1, round((n.time + n.duration) * sample_rate))
            events.append((start, 2, channel, n.pitch, n.velocity))
            events.append((end, 0, channel, n.pitch, 0))
    events.sort()
    return events


def _play_events(synth, sfid: int, score: symusic.Score, sr: int, progress: bool) -> np.ndarray:
    score = score.to("second")
    channels = _channels(score)
    for channel, track in zip(channels, score.tracks, strict=True):
        bank = 128 if track.is_drum else 0
        if synth.program_select(channel, sfid, bank, track.program) != 0:
            synth.program_select(channel, sfid, bank, 0)  # a kit/program this font lacks
    events = _events(score, sr, channels)
    total = (events[-1][0] if events else 0) + int(TAIL_SECONDS * sr)
    blocks: list[np.ndarray] = []
    done = 0
    bar = _progress_bar(total / sr, progress, "FluidSynth")
    for at, kind, channel, a, b in events:
        if at > done:
            blocks.append(synth.get_samples(at - done))
            bar.update((at - done) / sr)
            done = at
        if kind == 2:
            synth.noteon(channel, a, b)
        elif kind == 0:
            synth.noteoff(channel, a)
        elif a < 0:
            synth.pitch_bend(channel, b)
        else:
            synth.cc(channel, a, b)
    blocks.append(synth.get_samples(total - done))
    bar.update((total - done) / sr)
    bar.close()
    pcm = np.concatenate(blocks).astype(np.float32) / 32768.0
    return pcm.reshape(-1, 2)


class MidiRendererEngine(Engine):
    """The ``midirenderer`` wheel: self-contained, fixed 48 kHz output, .sf2 only."""

    name = "midirenderer"
    label = "midirenderer"
    native_rate = 48000

    def available(self) -> bool:
        return _import_optional("midirenderer") is not None

    def supports(self, soundfont: SoundFont) -> bool:
        return soundfont.version < 3

    def render(
        self, score: symusic.Score, soundfont: SoundFont, sample_rate: int, progress: bool
    ) -> np.ndarray:
        midirenderer = importlib.import_module("midirenderer")
        if progress:
            log.info("rendering with midirenderer (no progress reports from this engine)")
        sf_bytes = _soundfont_bytes(soundfont.path, soundfont.path.stat().st_mtime)
        midi = score_to_midi_bytes(score)
        wav = midirenderer.render_wave_from(sf_bytes, midi)
        audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=True)
        if audio.shape[1] == 1:
            audio = np.repeat(audio, 2, axis=1)
        return resample(audio, rate, sample_rate)


@functools.lru_cache(maxsize=1)
def _soundfont_bytes(path: Path, mtime: float) -> bytes:
    return path.read_bytes()


def resample(audio: np.ndarray, src_rate: int, dst_rate: int, taps: int = 48) -> np.ndarray:
    """Polyphase windowed-sinc resampling of [n, channels] audio (no SciPy needed).

    Outputs are grouped by filter phase, so each group is a strided sum over the input:
    a few thousand vectorised slices instead of one huge gathered array.
    """
    if src_rate == dst_rate or len(audio) == 0:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    cutoff = 0.9 * min(1.0, up / down)  # relative to the input Nyquist; 0.9 leaves a transition
    half = taps // 2
    k = np.arange(-half + 1, half + 1)
    x = k[None, :] - np.arange(up)[:, None] / up
    bank = cutoff * np.sinc(cutoff * x) * np.blackman(taps + 2)[1:-1][None, :]
    bank /= bank.sum(axis=1, keepdims=True)
    padded = np.pad(audio.astype(np.float32, copy=False), ((half, half + down), (0, 0)))
    n_out = len(audio) * up // down
    out = np.empty((n_out, audio.shape[1]), dtype=np.float32)
    for r in range(min(up, n_out)):
        count = len(range(r, n_out, up))
        base, phase = divmod(r * down, up)
        acc = np.zeros((count, audio.shape[1]), dtype=np.float32)
        for j, offset in enumerate(k):
            start = base + half + offset
            acc += bank[phase, j] * padded[start : start + (count - 1) * down + 1 : down]
        out[r::up] = acc
    return out


def _progress_bar(seconds: float, progress: bool, what: str):
    """A tqdm bar in seconds of audio, shown only for long renders."""
    from tqdm import tqdm

    return tqdm(
        total=round(seconds, 1),
        unit="s",
        desc=f"rendering ({what})",
        disable=not progress or seconds < 30,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio",
        leave=False,
    )


ENGINES: tuple[Engine, ...] = (FluidSynthEngine(), MidiRendererEngine())
