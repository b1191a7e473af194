"""Infilling at inference: plan, grammar-constrained target, merge, ``Pipeline.infill``, CLI.

A tiny random model is enough: the grammar, not the weights, guarantees the structure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import symusic
import torch
from conftest import make_score, write_midi

from musegen.cli import main
from musegen.errors import MusegenError
from musegen.generation.infill import InfillGrammar, merge, plan
from musegen.pipeline import Pipeline
from musegen.tokenizer import TokenizerSettings, bar_ticks, build_tokenizer, encode

BAND = ((0, False), (33, False), (0, True))  # piano, bass, drums


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Pipeline:
    """The tiny preset with a 512-token context (room for a few bars), random weights."""
    from musegen.checkpoint import save_pretrained
    from musegen.config import preset
    from musegen.model.transformer import MusicTransformer

    tokenizer = build_tokenizer()
    config = preset("tiny", vocab_size=len(tokenizer), max_seq_len=512)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "infill"
    return Pipeline.from_pretrained(save_pretrained(MusicTransformer(config), tokenizer, path))


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint whose tokenizer predates the infilling sentinels."""
    from musegen.checkpoint import save_pretrained
    from musegen.config import preset
    from musegen.model.transformer import MusicTransformer

    tokenizer = build_tokenizer(TokenizerSettings(infill=False))
    config = preset("tiny", vocab_size=len(tokenizer))
    return save_pretrained(
        MusicTransformer(config), tokenizer, tmp_path_factory.mktemp("old") / "old"
    )


def notes(track: symusic.Track, keep=lambda n: True) -> list[tuple[int, int, int, int]]:
    return [(n.time, n.duration, n.pitch, n.velocity) for n in track.notes if keep(n)]


def span_of(score: symusic.Score, a: int, b: int) -> tuple[int, int]:
    ticks = bar_ticks(score, b + 1)
    return ticks[a - 1][0], ticks[b][0]


def check_result(pipe, original, result, a, b, targets):
    """The invariants every infill result keeps; ``targets``: track indices regenerated."""
    assert result.bars == b - a + 1 and result.prompt_end_tick == span_of(original, a, b)[0]
    check_merge(pipe.tokenizer, original, result.tokens, result.score, a, b, targets)
    start, end = span_of(original, a, b)
    assert result.continuation.note_num() == sum(
        1 for t in result.score.tracks for n in t.notes if start <= n.time < end
    )
    return result.score


def check_merge(tok, original, tokens, merged, a, b, targets):
    start, end = span_of(original, a, b)
    names = [tok[i] for i in tokens]
    assert names.count("Bar_None") == b - a + 1
    assert tok.tokens_errors(tokens) == 0, names
    prefix = encode(tok, original)
    bars = [i for i, t in enumerate(prefix) if tok[t] == "Bar_None"]
    assert tok.tokens_errors(prefix[: bars[a - 1]] + tokens) == 0
    assert not any(n.startswith(("Tempo_", "Infill_")) for n in names)
    assert merged.tpq == original.tpq
    assert merged.tempos == original.tempos
    assert merged.time_signatures == original.time_signatures
    outside = lambda n: not start <= n.time < end  # noqa: E731
    for i, track in enumerate(original.tracks):
        if i in targets:  # outside the span: the same notes, in the same order
            assert notes(merged.tracks[i], outside) == notes(track, outside)
        else:  # untouched, to the byte
            assert merged.tracks[i] == track
            alone = [symusic.Score(original.tpq), symusic.Score(original.tpq)]
            alone[0].tracks.append(track.copy())
            alone[1].tracks.append(merged.tracks[i].copy())
            assert alone[0].dumps_midi() == alone[1].dumps_midi()
    for i, track in enumerate(merged.tracks):  # new notes end inside the span
        if i in targets or i >= len(original.tracks):
            assert all(n.end <= end for n in track.notes if start <= n.time < end)


def random_target(grammar, p, seed, steps=400):
    """A target drawn with random logits under the grammar (harder than any model)."""
    state = grammar.start(p.prefix)
    start = state.copy()
    gen = torch.Generator().manual_seed(seed)
    new = []
    for _ in range(steps):
        logits = torch.randn(1, grammar.vocab_size, generator=gen) * 3
        logits[~grammar.mask([state])] = float("-inf")
        token = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
        if grammar.ends_before(state, token):
            break
        new.append(token)
        grammar.advance(state, token)
    return grammar.complete(start, new)


@pytest.mark.parametrize(
    "settings",
    [
        TokenizerSettings(),
        TokenizerSettings(use_time_signatures=False),
        TokenizerSettings(use_tempos=False, num_velocities=8, beat_res=[(0, 4, 4)]),
    ],
    ids=["default", "no-timesig", "coarse"],
)
def test_random_targets_over_many_seeds_and_tokenizers(settings):
    tok = build_tokenizer(settings)
    score = make_score(bars=7, tracks=BAND, seed=4)
    requests = [((2, 3), None, {0, 1, 2}), ((4, 6), [2], {2}), ((1, 2), ["program:40"], set())]
    for (a, b), tracks, targets in requests:
        p = plan(tok, score, (a, b), tracks, 1024)
        grammar = InfillGrammar(tok, p.controls, p.time_signatures)
        for seed in range(8):  # early stops (short step budgets) are padded to whole bars
            tokens = random_target(grammar, p, seed, steps=400 if seed % 4 else 12)
            merged, _ = merge(p, tok, grammar, tokens)
            check_merge(tok, score, tokens, merged, a, b, targets)


def test_infilling_needs_remi_with_programs():
    score = make_score(bars=3)
    with pytest.raises(MusegenError, match="REMI tokenizer with programs"):
        plan(build_tokenizer(TokenizerSettings(kind="TSD")), score, (1, 2), None, 512)


def test_full_span_over_many_seeds(pipe):
    score = make_score(bars=8, tracks=BAND)
    before = score.dumps_midi()
    results = pipe.infill(score, bars=(3, 4), num_samples=8, seed=0, candidates=1)
    assert score.dumps_midi() == before  # the input is never modified
    assert [r.seed for r in results] == list(range(8))
    assert len({tuple(r.tokens) for r in results}) > 1
    for r in results:
        merged = check_result(pipe, score, r, 3, 4, targets={0, 1, 2})
        assert len(merged.tracks) == 3 and r.finished
        assert symusic.Score.from_midi(r.midi_bytes()).note_num() == merged.note_num()


def test_track_only_keeps_the_other_tracks(pipe):
    score = make_score(bars=6, tracks=BAND, seed=2)
    results = pipe.infill(score, bars=(2, 3), tracks=[1], num_samples=4, seed=10)
    for r in results:
        check_result(pipe, score, r, 2, 3, targets={1})
        programs = {pipe.tokenizer[i] for i in r.tokens if pipe.tokenizer[i][:8] == "Program_"}
        assert programs == {"Program_33"}
    drums = pipe.infill(score, bars=(5, 6), tracks=["drums"], seed=4)[0]
    check_result(pipe, score, drums, 5, 6, targets={2})


def test_add_a_track_over_a_range(pipe):
    score = make_score(bars=6, tracks=((0, False),))
    result = pipe.infill(score, bars=(2, 4), tracks=["program:40"], seed=1)[0]
    check_result(pipe, score, result, 2, 4, targets=set())
    assert len(result.score.tracks) == 2
    new = result.score.tracks[1]
    assert (new.program, new.is_drum, new.name) == (40, False, "Violin")
    start, end = span_of(score, 2, 4)
    assert new.notes and all(start <= n.time and n.end <= end for n in new.notes)


def test_meter_changes_are_followed_bar_by_bar(pipe):
    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 100))
    for time, num, den in ((0, 4, 4), (2 * 1920, 3, 4), (2 * 1920 + 2 * 1440, 6, 8)):
        score.time_signatures.append(symusic.TimeSignature(time, num, den))
    track = symusic.Track(program=0)
    for k, (tick, _, _) in enumerate(bar_ticks(score, 7)):
        track.notes.append(symusic.Note(tick, 240, 60 + k, 80))
    score.tracks.append(track)
    result = pipe.infill(score, bars=(2, 5), seed=5)[0]
    check_result(pipe, score, result, 2, 5, targets={0})
    sigs = [pipe.tokenizer[i] for i in result.tokens if pipe.tokenizer[i][:8] == "TimeSig_"]
    assert sigs == ["TimeSig_4/4", "TimeSig_3/4", "TimeSig_3/4", "TimeSig_6/8"]


def test_merge_cuts_at_the_span_end_and_respects_held_notes(pipe):
    tok = pipe.tokenizer
    score = make_score(bars=4, tracks=((0, False),))
    score.tracks[0].notes.append(symusic.Note(1920 - 240, 960, 60, 90))  # held into bar 2
    p = plan(tok, score, (2, 2), [0], 512)
    grammar = InfillGrammar(tok, p.controls, p.time_signatures)
    v = tok.vocab
    note = ["Program_0", "Velocity_79"]
    target = [v[t] for t in ["Bar_None", "TimeSig_4/4", "Position_0", note[0], "Pitch_60"]]
    target += [v[note[1]], v["Duration_1.0.8"]]  # collides with the held C4: dropped
    target += [v[t] for t in ["Position_8", note[0], "Pitch_62", note[1], "Duration_1.0.8"]]
    target += [v[t] for t in ["Position_24", note[0], "Pitch_64", note[1], "Duration_4.0.4"]]
    assert tok.tokens_errors(target) == 0
    merged, span = merge(p, tok, grammar, target)
    start, end = 1920, 3840
    inside = [n for n in merged.tracks[0].notes if start <= n.time < end]
    assert [(n.time, n.pitch) for n in inside] == [(start + 480, 62), (start + 1440, 64)]
    assert inside[1].end == end  # four beats long: cut at the span's end
    held = [n for n in merged.tracks[0].notes if n.pitch == 60 and n.time == 1920 - 240]
    assert held and held[0].duration == 960  # kept as it was
    assert [(n.time, n.pitch) for n in span.tracks[0].notes] == [(480, 62), (1440, 64)]


def test_grammar_ignores_the_sentinels(pipe):
    tok = pipe.tokenizer
    ids = encode(tok, make_score(bars=3, tracks=BAND))
    sentinels = [tok.vocab[t] for t in ("Infill_Span", "Infill_Suffix", "Infill_Fill")]
    grammar = pipe.grammar(pipe._settings(None, {}, None))
    with_them = grammar.start(ids[:20] + sentinels + ids[20:])
    assert grammar.key(with_them) == grammar.key(grammar.start(ids))
    assert not grammar.unconstrained_mask()[sentinels].any()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(bars=(7, 9)), "outside the piece, which has 6 bar"),
        (dict(bars=(4, 2)), "empty range"),
        (dict(bars=(0, 2)), "numbered from 1"),
        (dict(bars=(1, 6), tracks=[0, 1]), "more than the model's 512"),
        (dict(bars=(2, 3), tracks=[5]), "track 5 does not exist: the piece has 3 track"),
        (dict(bars=(2, 3), tracks=["flute"]), "'program:P'"),
        (dict(bars=(2, 3), tracks=["program:200"]), "GM program 0-127"),
        (dict(bars=(2, 3), constrained=False), "always grammar-constrained"),
        (dict(bars=(2, 3), instruments=[0]), "instruments from tracks"),
    ],
)
def test_bad_requests_are_one_line_errors(pipe, kwargs, words):
    score = make_score(bars=6, tracks=BAND)
    score.tracks[0].notes.extend(  # a dense piano: six bars do not fit the context
        symusic.Note(t * 60, 60, 70 + t % 12, 80) for t in range(6 * 32)
    )
    with pytest.raises(MusegenError) as err:
        pipe.infill(score, **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bad_pieces_and_old_checkpoints(pipe, old_checkpoint, midi_file):
    with pytest.raises(MusegenError, match="has no notes to infill around"):
        pipe.infill(symusic.Score(480), bars=(1, 1))
    with pytest.raises(MusegenError, match="not a MIDI file"):
        pipe.infill(b"hello", bars=(1, 1))
    old = Pipeline.from_pretrained(old_checkpoint)
    with pytest.raises(MusegenError, match="no infilling tokens") as err:
        old.infill(midi_file, bars=(2, 2))
    assert "\n" not in str(err.value)
    result = old.continue_midi(midi_file, bars=1, max_new_tokens=24, seed=0)[0]  # still works
    assert result.new_tokens > 0


def infill_cli(checkpoint: Path, source: Path, out: Path, *args: str) -> int:
    return main(["infill", "--checkpoint", str(checkpoint), str(source), "--out", str(out), *args])


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_cli_folder_manifest_and_resume(pipe, tmp_path):
    folder = tmp_path / "midi"
    write_midi(folder / "a.mid", bars=4, tracks=BAND, seed=1)
    write_midi(folder / "sub" / "b.mid", bars=5, tracks=((0, False), (0, True)), seed=2)
    write_midi(folder / "short.mid", bars=2, seed=3)  # bars 3-4 are outside it
    (folder / "broken.mid").write_bytes(b"MThd\x00\x00 not really")
    out = tmp_path / "out"
    args = ["--bars", "3-4", "--tracks", "0", "--num-samples", "2", "--seed", "7"]
    assert infill_cli(pipe.checkpoint_dir, folder, out, *args) == 1
    rows = manifest(out)
    failed = {Path(r["prompt"]).name: r["error"] for r in rows if r.get("status") == "failed"}
    assert set(failed) == {"short.mid", "broken.mid"}
    assert "outside the piece" in failed["short.mid"] and "\n" not in failed["short.mid"]
    done = [r for r in rows if r.get("output")]
    assert sorted(r["output"] for r in done) == [
        "a_bars3-4_s7_0.mid",
        "a_bars3-4_s8_1.mid",
        "sub__b_bars3-4_s7_0.mid",
        "sub__b_bars3-4_s8_1.mid",
    ]
    for row in done:
        assert row["bars"] == [3, 4] and row["tracks"] == [0] and row["settings"]["bars"] == 2
        score = symusic.Score(str(out / row["output"]))
        original = symusic.Score(row["prompt"])
        assert score.tracks[1].notes == original.tracks[1].notes  # not a target: untouched
    assert not list(out.glob(".*.tmp*"))  # nothing left half-written

    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mid")}
    assert infill_cli(pipe.checkpoint_dir, folder, out, *args) == 1  # the bad files fail again
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mid")} == stamp
    assert len([r for r in manifest(out) if r.get("output")]) == 4  # nothing redone

    # Other bars are another request: not skipped.
    assert infill_cli(pipe.checkpoint_dir, folder / "a.mid", out, "--bars", "2", "--seed", "7") == 0
    assert (out / "a_bars2-2_s7_0.mid").is_file()


def test_cli_bad_requests(pipe, old_checkpoint, midi_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert infill_cli(pipe.checkpoint_dir, midi_file, out, "--bars", "3-1") == 2
    assert "empty range" in capsys.readouterr().err
    assert "empty range" in manifest(out)[-1]["error"]
    assert infill_cli(pipe.checkpoint_dir, midi_file, out, "--bars", "2", "--tracks", "9") == 1
    assert "track 9 does not exist" in manifest(out)[-1]["error"]
    assert infill_cli(old_checkpoint, midi_file, out, "--bars", "2") == 2
    assert "no infilling tokens" in manifest(out)[-1]["error"]
    assert infill_cli(pipe.checkpoint_dir, tmp_path / "nope.mid", out, "--bars", "2") == 2
    assert "file not found" in manifest(out)[-1]["error"]
    add = ["--bars", "2-3", "--add-program", "drums", "--add-program", "33", "--seed", "1"]
    piano = write_midi(tmp_path / "piano.mid", bars=4)
    assert infill_cli(pipe.checkpoint_dir, piano, out, *add) == 0
    row = manifest(out)[-1]
    assert row["tracks"] == ["drums", "program:33"]
    score = symusic.Score(str(out / row["output"]))
    assert len(score.tracks) >= 2 and score.tracks[0].notes == symusic.Score(piano).tracks[0].notes


def test_long_pieces_are_cut_at_bar_lines_to_fit_the_context():
    tok = build_tokenizer()
    score = make_score(bars=40, tracks=BAND, seed=6)
    ids = encode(tok, score)
    p = plan(tok, score, (20, 21), [1], 512)
    assert len(p.prompt) + p.reserve <= 512
    v = tok.vocab
    span, suffix, fill = (
        p.prompt.index(v[t]) for t in ("Infill_Span", "Infill_Suffix", "Infill_Fill")
    )
    assert p.prompt[-1] == v["Infill_Fill"] and fill == len(p.prompt) - 1
    prefix, tail = p.prompt[:span], p.prompt[suffix + 1 : fill]
    assert tok[prefix[0]] == "Bar_None" and tok[tail[0]] == "Bar_None"  # whole bars
    bars = [i for i, t in enumerate(ids) if tok[t] == "Bar_None"]
    assert prefix == ids[bars[19] - len(prefix) : bars[19]]  # the newest bars before the span
    assert tail == ids[bars[21] : bars[21] + len(tail)]  # the first bars after it
    assert bars[21] + len(tail) in bars  # ends where a bar starts
    capped = plan(tok, score, (20, 21), [1], 512, suffix_tokens=40)
    c_suffix, c_fill = (
        capped.prompt.index(v["Infill_Suffix"]),
        capped.prompt.index(v["Infill_Fill"]),
    )
    assert 0 < c_fill - c_suffix - 1 <= 40 < len(tail)  # the bound a local-attention model needs
    assert capped.prompt[c_suffix + 1 : c_fill] == tail[: c_fill - c_suffix - 1]  # the head
    short = plan(tok, make_score(bars=4, tracks=BAND), (2, 2), None, 512)
    assert short.prompt[0] == v["BOS_None"] and v["EOS_None"] in short.prompt  # all of it
