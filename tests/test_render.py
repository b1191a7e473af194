"""Audio rendering: every installed backend, the built-in synth fallback, and bad input."""

from __future__ import annotations

import logging
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import symusic
from conftest import make_score, write_midi

from musegen.cli import main
from musegen.errors import MidiError, MusegenError
from musegen.render import engines as audio_backends
from musegen.render import synth
from musegen.render.audio import (
    RenderedAudio,
    available_backends,
    normalise,
    render_audio,
    trim,
    write_audio,
)

FOUR_TRACKS = ((0, False), (33, False), (48, False), (0, True))  # piano, bass, strings, drums
BARS = 8  # 16 s at 120 bpm in 4/4
MIDI_SECONDS = BARS * 2.0
BUNDLED = audio_backends.bundled_soundfont()


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def _sounding(audio: np.ndarray, sample_rate: int) -> float:
    """Fraction of 250 ms frames that are audible (RMS above -40 dBFS).

    Loudness normalisation lifts any signal to the target RMS, so an RMS floor alone would pass
    a nearly silent render with one click in it; sound must also last through the piece.
    """
    frame = sample_rate // 4
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame, audio.shape[1])
    return float(np.mean(np.sqrt(np.mean(np.square(frames), axis=(1, 2))) > 0.01))


@pytest.fixture
def song() -> symusic.Score:
    return make_score(bars=BARS, tracks=FOUR_TRACKS, seed=3)


@pytest.fixture
def no_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every SoundFont engine unimportable, as on a machine without them."""
    monkeypatch.setitem(sys.modules, "fluidsynth", None)
    monkeypatch.setitem(sys.modules, "midirenderer", None)


def _soundfont_for(backend: str) -> Path | None:
    return BUNDLED if backend != "synth" else None


@pytest.mark.parametrize("backend", available_backends())
def test_each_backend_renders_multitrack_midi(backend: str, song, tmp_path: Path) -> None:
    path = write_midi(tmp_path / "song.mid", song)
    out = render_audio(path, soundfont=_soundfont_for(backend), backend=backend)
    assert out.audio.dtype == np.float32 and out.audio.ndim == 2 and out.audio.shape[1] == 2
    assert out.sample_rate == 44100
    assert _rms(out.audio) > 0.03
    assert _sounding(out.audio, out.sample_rate) > 0.9
    assert np.abs(out.audio).max() <= 1.0
    assert abs(out.duration - MIDI_SECONDS) <= 1.0
    assert out.duration == pytest.approx(len(out.audio) / out.sample_rate)
    expected = {"fluidsynth": "FluidSynth with", "midirenderer": "midirenderer with"}
    assert out.renderer.startswith(expected.get(backend, "built-in synth"))


@pytest.mark.parametrize("backend", available_backends())
def test_drums_alone_are_audible(backend: str) -> None:
    drums = make_score(bars=2, tracks=((0, True),))
    out = render_audio(drums, soundfont=_soundfont_for(backend), backend=backend)
    assert _rms(out.audio) > 0.03
    assert _sounding(out.audio, out.sample_rate) > 0.9
    # Hi-hats and snares put real energy above 4 kHz; pitched tones from a wrong bank would not.
    spectrum = np.abs(np.fft.rfft(out.audio.mean(axis=1)))
    freqs = np.fft.rfftfreq(len(out.audio), 1 / out.sample_rate)
    assert spectrum[freqs > 4000].sum() / spectrum.sum() > 0.2  # a piano: under 0.02


def test_default_backend_uses_best_engine_and_logs(song, caplog) -> None:
    caplog.set_level(logging.INFO, logger="musegen.render.audio")
    out = render_audio(song)
    best = available_backends()[0]
    assert out.renderer.lower().startswith({"synth": "built-in"}.get(best, best))
    assert out.renderer in caplog.text


def test_fallback_synth_when_engines_are_missing(no_engines, song) -> None:
    assert available_backends() == ["synth"]
    out = render_audio(song)
    assert out.renderer == "built-in synth"
    assert _sounding(out.audio, out.sample_rate) > 0.9 and np.abs(out.audio).max() <= 1.0


def test_user_soundfont_without_engine_is_an_error_not_a_fallback(no_engines, song) -> None:
    with pytest.raises(MusegenError, match="TimGM6mb"):
        render_audio(song, soundfont=BUNDLED)


def test_crashing_engine_falls_back_only_in_auto_mode(monkeypatch, song) -> None:
    first = audio_backends.ENGINES[0]

    def boom(*args, **kwargs):
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(first, "available", lambda: True)
    monkeypatch.setattr(first, "render", boom)
    out = render_audio(song)
    assert not out.renderer.startswith(first.label)
    with pytest.raises(MusegenError, match="engine exploded"):
        render_audio(song, backend=first.name, soundfont=BUNDLED)


def test_explicit_backend_that_is_missing_is_an_error(no_engines, song) -> None:
    with pytest.raises(MusegenError, match="not available"):
        render_audio(song, backend="fluidsynth")


def test_synth_voices_have_harmonics_not_sines() -> None:
    sr = 22050
    for program in (0, 19, 40, 56):  # piano, organ, violin, trumpet
        wave = synth.note_wave(synth.voice_for(program), 57, 100, 0.5, sr)  # A3 = 220 Hz
        spectrum = np.abs(np.fft.rfft(wave))
        freqs = np.fft.rfftfreq(len(wave), 1 / sr)
        fundamental = spectrum[np.abs(freqs - 220) < 5].max()
        second = spectrum[np.abs(freqs - 440) < 5].max()
        assert second > 0.05 * fundamental, program
    # Struck notes die away while held; an organ holds its level.
    piano = synth.note_wave(synth.voice_for(0), 60, 100, 2.0, sr)
    organ = synth.note_wave(synth.voice_for(19), 60, 100, 2.0, sr)
    held = slice(int(1.5 * sr), 2 * sr)
    assert np.abs(piano[held]).max() < 0.5 * np.abs(piano).max()
    assert np.abs(organ[held]).max() > 0.7 * np.abs(organ).max()


def test_empty_score_gives_short_silence() -> None:
    empty = symusic.Score(480)
    empty.tracks.append(symusic.Track(program=0))
    out = render_audio(empty)
    assert 0 < out.duration <= 2.0 and not np.any(out.audio)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, not midi", "not a MIDI"),
        (b"MThd\x00\x00\x00\x06garbage", "corrupt"),
    ],
)
def test_bad_midi_raises_midi_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.mid"
    path.write_bytes(data)
    with pytest.raises(MidiError, match=message):
        render_audio(path)


def test_bad_soundfonts_are_named(tmp_path: Path, song, monkeypatch) -> None:
    with pytest.raises(MusegenError, match=r"missing\.sf2"):
        render_audio(song, soundfont=tmp_path / "missing.sf2")
    fake = tmp_path / "fake.sf2"
    fake.write_bytes(b"this is not a soundfont at all")
    with pytest.raises(MusegenError, match=r"fake\.sf2.*not a SoundFont"):
        render_audio(song, soundfont=fake)
    monkeypatch.setenv("MUSEGEN_SOUNDFONT", str(fake))
    with pytest.raises(MusegenError, match="MUSEGEN_SOUNDFONT"):
        render_audio(song)


def test_sf3_is_refused_by_midirenderer(tmp_path: Path, song) -> None:
    if "midirenderer" not in available_backends():
        pytest.skip("midirenderer not installed")
    info = b"INFOifil" + struct.pack("<IHH", 4, 3, 1)
    sf3 = tmp_path / "tiny.sf3"
    sf3.write_bytes(b"RIFF" + struct.pack("<I", 100) + b"sfbkLIST" + struct.pack("<I", 12) + info)
    assert audio_backends.read_soundfont(sf3).version == 3
    with pytest.raises(MusegenError, match=r"tiny\.sf3"):
        render_audio(song, soundfont=sf3, backend="midirenderer")


def test_bad_options(song) -> None:
    with pytest.raises(MusegenError, match="unknown backend"):
        render_audio(song, backend="timidity")
    with pytest.raises(MusegenError, match="sample rate"):
        render_audio(song, sample_rate=100)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg"])
def test_write_audio_formats(tmp_path: Path, ext: str) -> None:
    t = np.arange(22050) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    rendered = RenderedAudio(np.stack([tone, tone], 1), 22050, "test tone", 1.0)
    path = write_audio(rendered, tmp_path / "sub" / f"tone{ext}")
    data, rate = soundfile.read(str(path))
    assert rate == 22050 and data.shape[1] == 2 and abs(len(data) - 22050) < 2048
    assert 0.2 < np.abs(data).max() <= 1.0


def test_write_audio_rejects_unknown_extension(tmp_path: Path) -> None:
    rendered = RenderedAudio(np.zeros((100, 2), np.float32), 44100, "x", 0.0)
    with pytest.raises(MusegenError, match=r"\.wav, \.flac or \.ogg"):
        write_audio(rendered, tmp_path / "song.mp4")


def test_resample_keeps_pitch_and_level() -> None:
    t = np.arange(48000) / 48000
    x = np.sin(2 * np.pi * 1000 * t)[:, None].astype(np.float32)
    y = audio_backends.resample(x, 48000, 44100)
    assert len(y) == 44100
    freqs = np.fft.rfftfreq(len(y), 1 / 44100)
    assert freqs[np.abs(np.fft.rfft(y[:, 0])).argmax()] == pytest.approx(1000, abs=2)
    assert np.abs(y[500:-500]).max() == pytest.approx(1.0, abs=0.01)


def test_trim_and_normalise() -> None:
    sr = 1000
    audio = np.zeros((5 * sr, 2), np.float32)
    audio[:sr] = 0.01
    trimmed = trim(audio, sr, end_s=1.0)
    assert len(trimmed) == sr
    loud = normalise(np.full((100, 2), 3.0, np.float32))
    assert np.abs(loud).max() <= 1.0


def test_cli_render_audio_and_png(tmp_path: Path, midi_file: Path, capsys) -> None:
    wav, png = tmp_path / "out.wav", tmp_path / "out.png"
    code = main(
        [
            "render",
            str(midi_file),
            "--out",
            str(wav),
            "--out",
            str(png),
            "--backend",
            "synth",
            "--split-bar",
            "2",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "built-in synth" in printed and str(wav) in printed and str(png) in printed
    assert soundfile.info(str(wav)).duration > 7
    assert png.read_bytes().startswith(b"\x89PNG")


def test_cli_bad_inputs(tmp_path: Path, midi_file: Path, capsys) -> None:
    assert main(["render", str(midi_file), "--out", str(tmp_path / "x.mp4")]) == 2
    bogus = tmp_path / "bogus.sf2"
    bogus.write_text("nope")
    args = ["render", str(midi_file), "--out", str(tmp_path / "x.png"), "--soundfont", str(bogus)]
    assert main(args) == 2
    assert main(["render", str(tmp_path / "none.mid"), "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert "bogus.sf2" in err and "none.mid" in err and ".mp4" in err
    assert len(err.strip().splitlines()) == 3


def test_long_midi_renders_with_progress(capsys) -> None:
    long_piece = make_score(bars=100, tracks=((0, False), (0, True)))  # 200 s
    out = render_audio(long_piece, backend="synth", progress=True)
    assert abs(out.duration - 200.0) <= 1.0
    assert _sounding(out.audio, out.sample_rate) > 0.9
    assert "rendering (built-in synth)" in capsys.readouterr().err
