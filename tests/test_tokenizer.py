from pathlib import Path

import pytest
from conftest import make_score

from musegen.errors import MidiError
from musegen.tokenizer import (
    TokenizerSettings,
    build_tokenizer,
    count_notes,
    decode,
    encode,
    load_score,
    load_tokenizer,
    save_tokenizer,
)


@pytest.mark.parametrize("kind", ["REMI", "TSD", "MIDILike"])
def test_save_load_gives_identical_ids(tmp_path: Path, kind: str) -> None:
    tok = build_tokenizer(TokenizerSettings(kind=kind))
    score = make_score(tracks=((0, False), (33, False), (0, True)))
    save_tokenizer(tok, tmp_path)
    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok)
    assert encode(again, score) == encode(tok, score)


@pytest.mark.parametrize("kind", ["REMI", "TSD", "MIDILike"])
def test_round_trip_keeps_notes(kind: str) -> None:
    tok = build_tokenizer(TokenizerSettings(kind=kind))
    score = make_score(bars=8, tracks=((0, False), (40, False), (0, True)))
    back = decode(tok, encode(tok, score))
    assert count_notes(back) == count_notes(score)
    programs = sorted((t.program, t.is_drum) for t in back.tracks)
    assert programs == [(0, False), (0, True), (40, False)]


@pytest.mark.parametrize("kind", ["REMI", "TSD", "MIDILike"])
def test_no_tokens_but_special_ones_decode_to_an_empty_score(kind: str) -> None:
    """A request its deadline stops before the first token has only BOS to decode."""
    tok = build_tokenizer(TokenizerSettings(kind=kind))
    for ids in ([], [tok.vocab["BOS_None"]]):
        empty = decode(tok, ids)
        assert count_notes(empty) == 0 and empty.tpq == tok.time_division


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(Exception, match="unknown tokenizer"):
        build_tokenizer(TokenizerSettings(kind="Octuple?"))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello world", "not a MIDI file"),
        (b"MThd\x00\x00\x00\x06\x00", "corrupt"),
    ],
)
def test_bad_midi_bytes(content: bytes, reason: str) -> None:
    with pytest.raises(MidiError, match=reason):
        load_score(content)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MidiError, match="not found"):
        load_score(tmp_path / "nope.mid")
