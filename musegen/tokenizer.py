"""The MIDI ⇄ token-id boundary: a small, config-driven wrapper over miditok.

Everything else in musegen sees a tokenizer as "score in, list of ints out" and back. The
tokenizer is saved as ``tokenizer.json`` beside prepared data and inside every checkpoint, so
the ids a model was trained on can always be reproduced.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import miditok
import symusic

from musegen import midi_repair
from musegen.errors import MidiError, MusegenError, first_line

TOKENIZER_KINDS: dict[str, type[miditok.MusicTokenizer]] = {
    "REMI": miditok.REMI,
    "TSD": miditok.TSD,
    "MIDILike": miditok.MIDILike,
}
TOKENIZER_FILE = "tokenizer.json"
PAD, BOS, EOS = "PAD_None", "BOS_None", "EOS_None"
# Fill-in-the-middle sentinels (see musegen.data.infill): the span's given part starts after
# SPAN, the music after the span after SUFFIX, the generated part after FILL, and END closes it.
INFILL_TOKENS = ("Infill_Span", "Infill_Suffix", "Infill_Fill", "Infill_End")


@dataclass
class TokenizerSettings:
    """What a user may choose about tokenization; everything else keeps miditok's defaults.

    The defaults give REMI with programs in one stream (multitrack, drums kept), tempo and
    time-signature tokens, 16 velocity bins: a vocabulary of about 500 ids.
    """

    kind: str = "REMI"
    use_programs: bool = True
    use_tempos: bool = True
    use_time_signatures: bool = True
    num_velocities: int = 16
    num_tempos: int = 32
    pitch_range: tuple[int, int] = (21, 109)
    # Positions per beat for note onsets/durations: 8 per beat in the first 4 beats, then 4.
    beat_res: list[tuple[int, int, int]] = field(default_factory=lambda: [(0, 4, 8), (4, 12, 4)])
    # Add the four infilling sentinels to the vocabulary (models trained before had none).
    infill: bool = True

    def validate(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise MusegenError(
                f"unknown tokenizer {self.kind!r}: choose one of {', '.join(TOKENIZER_KINDS)}"
            )
        if not 1 <= self.num_velocities <= 127:
            raise MusegenError("num_velocities must be between 1 and 127")

    def to_miditok(self) -> miditok.TokenizerConfig:
        return miditok.TokenizerConfig(
            pitch_range=tuple(self.pitch_range),
            beat_res={(a, b): r for a, b, r in self.beat_res},
            num_velocities=self.num_velocities,
            use_programs=self.use_programs,
            one_token_stream_for_programs=True,
            use_tempos=self.use_tempos,
            num_tempos=self.num_tempos,
            use_time_signatures=self.use_time_signatures,
            special_tokens=["PAD", "BOS", "EOS", "MASK", *(INFILL_TOKENS if self.infill else ())],
        )


def build_tokenizer(settings: TokenizerSettings | None = None) -> miditok.MusicTokenizer:
    """A fresh (untrained) tokenizer from ``settings``."""
    settings = settings or TokenizerSettings()
    settings.validate()
    return TOKENIZER_KINDS[settings.kind](settings.to_miditok())


def save_tokenizer(tokenizer: miditok.MusicTokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer.json`` (config, vocabulary, any trained BPE) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory, filename=TOKENIZER_FILE)
    return directory / TOKENIZER_FILE


def load_tokenizer(path: str | Path) -> miditok.MusicTokenizer:
    """Load a tokenizer from ``tokenizer.json`` or a directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise MusegenError(f"tokenizer file not found: {path}")
    try:
        import json

        params = json.loads(path.read_text())
        kind = params.get("tokenization", "REMI")
        cls = getattr(miditok, kind)
        return cls(params=path)
    except Exception as exc:  # miditok raises many types for a bad file
        raise MusegenError(f"{path} is not a valid miditok tokenizer file ({exc})") from exc


def check_bpe_vocab(tokenizer: miditok.MusicTokenizer, vocab_size: int) -> None:
    """A BPE vocabulary must be larger than the base vocabulary it merges."""
    if vocab_size <= len(tokenizer):
        raise MusegenError(
            f"--bpe-vocab {vocab_size} must be larger than the base vocabulary ({len(tokenizer)})"
        )


def train_bpe(
    tokenizer: miditok.MusicTokenizer, midi_files: Iterable[Path], vocab_size: int
) -> None:
    """Learn a BPE vocabulary of ``vocab_size`` ids on ``midi_files`` (miditok's ``train``)."""
    check_bpe_vocab(tokenizer, vocab_size)
    tokenizer.train(vocab_size=vocab_size, model="BPE", files_paths=list(midi_files))


def load_score(
    source: str | Path | bytes | symusic.Score, notes: list[str] | None = None
) -> symusic.Score:
    """Parse a MIDI file (path or bytes) with symusic, turning every failure into a MidiError.

    A damaged file that :func:`musegen.midi_repair.repair` makes readable is read so, and one
    line saying what was changed is appended to ``notes`` (when given), for the user."""
    if isinstance(source, symusic.Score):
        return source
    name = "<bytes>"
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            name = str(source)
            data = Path(source).read_bytes()
    except FileNotFoundError:
        raise MidiError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise MidiError(f"{name}: is a directory, not a MIDI file") from None
    except OSError as exc:
        raise MidiError(f"{name}: cannot be read ({exc.strerror})") from None
    if not data:
        raise MidiError(f"{name}: empty file")
    if not data.startswith(b"MThd"):
        raise MidiError(f"{name}: not a MIDI file (no MThd header)")
    try:
        return symusic.Score.from_midi(data)
    except Exception as exc:
        error = MidiError(f"{name}: corrupt MIDI ({first_line(exc)})")
    fixed, changes = midi_repair.repair(data)
    if not changes:
        raise error
    try:
        score = symusic.Score.from_midi(fixed)
    except Exception:
        raise error from None
    if not score.note_num():  # nothing worth the repair: the file is what the error says
        raise error
    if notes is not None:
        notes.append(midi_repair.describe(changes))
    return score


def load_tick_score(source: str | Path | bytes | symusic.Score) -> symusic.Score:
    """The score of ``source`` (see :func:`load_score`) with its times in ticks."""
    score = load_score(source)
    return score if "Tick" in str(score.ttype) else score.to("tick")


def count_notes(score: symusic.Score) -> int:
    return score.note_num()


def end_seconds(score: symusic.Score) -> float:
    """When the last note of a score ends, in seconds through its tempo map (0.0 without notes)."""
    if "Second" not in str(score.ttype):
        score = score.to("second")
    return max((n.time + n.duration for t in score.tracks for n in t.notes), default=0.0)


def encode(tokenizer: miditok.MusicTokenizer, score: symusic.Score) -> list[int]:
    """Token ids of a whole score as one stream (BPE applied when the tokenizer is trained)."""
    seq = tokenizer.encode(score)
    if isinstance(seq, list):  # tokenizers without one_token_stream give one seq per track
        seq = seq[0]
    return list(seq.ids)


def decode(tokenizer: miditok.MusicTokenizer, ids: list[int]) -> symusic.Score:
    """A score from token ids; special tokens (PAD/BOS/EOS) are dropped first. No ids left (a
    request stopped before its first token) gives an empty score: miditok reads ``[]`` as a
    list of sequences and fails."""
    special = set(tokenizer.special_tokens_ids)
    clean = [int(i) for i in ids if int(i) not in special]
    if not clean:
        return symusic.Score(tokenizer.time_division)
    return tokenizer.decode(clean)


def score_to_midi_bytes(score: symusic.Score) -> bytes:
    """Standard MIDI file bytes of a score."""
    buf = score.dumps_midi()
    return bytes(buf) if not isinstance(buf, bytes) else buf


def track_program(track: symusic.Track) -> int:
    """The track's program as the tokens write it: its GM program, -1 for drums."""
    return -1 if track.is_drum else int(track.program)


def instrument_name(program: int) -> str:
    """The General MIDI name of ``program`` (-1: drums), as the app and messages show it."""
    return "Drums" if program < 0 else str(miditok.constants.MIDI_INSTRUMENTS[program]["name"])


def bar_ticks(score: symusic.Score, count: int) -> list[tuple[int, int, int]]:
    """``(tick, numerator, denominator)`` of the first ``count`` bars, as miditok counts them:
    4/4 until the first time signature, and a meter change starts a new bar where it is."""
    sigs = {0: (4, 4)}
    for ts in score.time_signatures:
        if ts.numerator > 0 and ts.denominator > 0:
            sigs[int(ts.time)] = (int(ts.numerator), int(ts.denominator))
    times = sorted(sigs)
    out: list[tuple[int, int, int]] = []
    tick, i = 0, 0
    while len(out) < count:
        while i + 1 < len(times) and times[i + 1] <= tick:
            i += 1
        num, den = sigs[times[i]]
        out.append((tick, num, den))
        nxt = tick + max(1, score.ticks_per_quarter * 4 * num // den)
        tick = min(nxt, times[i + 1]) if i + 1 < len(times) else nxt
    return out


def bars_until(score: symusic.Score, tick: int) -> list[tuple[int, int, int]]:
    """:func:`bar_ticks` of every bar that starts before ``tick``, then of the next one."""
    count = 16
    while True:
        bars = bar_ticks(score, count)
        if bars[-1][0] >= tick:
            return bars[: sum(1 for b in bars if b[0] < tick) + 1]
        count *= 2


def special_id(tokenizer: miditok.MusicTokenizer, token: str) -> int:
    return int(tokenizer.vocab[token])


def supports_infill(tokenizer: miditok.MusicTokenizer) -> bool:
    """Whether the vocabulary has the infilling sentinels (tokenizers made before it do not)."""
    return all(token in tokenizer.vocab for token in INFILL_TOKENS)


def settings_dict(settings: TokenizerSettings) -> dict:
    return asdict(settings)


__all__ = [
    "INFILL_TOKENS",
    "TOKENIZER_FILE",
    "TokenizerSettings",
    "bar_ticks",
    "build_tokenizer",
    "check_bpe_vocab",
    "count_notes",
    "decode",
    "encode",
    "end_seconds",
    "instrument_name",
    "load_score",
    "load_tick_score",
    "load_tokenizer",
    "save_tokenizer",
    "score_to_midi_bytes",
    "special_id",
    "supports_infill",
    "train_bpe",
]
