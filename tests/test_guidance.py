"""Prompt guidance: new notes keep the prompt's balance of pitch classes (key guidance) and
its onset positions (groove guidance), and nothing else moves."""

from __future__ import annotations

import functools
import math

import pytest
import symusic
import torch
from conftest import make_score

from musegen import metrics
from musegen.errors import MusegenError
from musegen.generation.grammar import Grammar
from musegen.generation.guidance import (
    GROOVE_BARS,
    KEY_BARS,
    MIN_NOTES,
    PRIOR_BARS,
    RANGE_SCALE,
    TRACK_BARS,
    DensityGuidance,
    GrooveGuidance,
    KeyGuidance,
    KitGuidance,
    RangeGuidance,
    TrackGuidance,
    steadiness,
)
from musegen.generation.repeat import SCALE as REPEAT_SCALE
from musegen.generation.repeat import RepeatGuidance
from musegen.generation.sampling import StepContext
from musegen.generation.settings import GUIDANCE, GenerationSettings
from musegen.tokenizer import build_tokenizer, encode

C_MAJOR = (0, 2, 4, 5, 7, 9, 11)
OFF = dict.fromkeys(GUIDANCE, 0)  # every processor off; a test turns its own on


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return Grammar(build_tokenizer())


def _ids(grammar: Grammar, *names: str) -> list[int]:
    return [grammar.tokenizer.vocab[n] for n in names]


def _bars(grammar: Grammar, pitch_classes: tuple[int, ...], bars: int) -> list[int]:
    """``bars`` bars of piano notes, one per pitch class given, from middle C up."""
    pitches = [60 + pc for pc in pitch_classes]
    return [t for _ in range(bars) for t in _ids(grammar, "Bar_None") + _notes(grammar, pitches)]


def _notes(grammar: Grammar, pitches: list[int], program: int = 0) -> list[int]:
    """Notes in the current bar, without a bar line."""
    out = []
    for p in pitches:
        out += _ids(grammar, "Position_0", f"Program_{program}", f"Pitch_{p}")
        out += _ids(grammar, "Velocity_63", "Duration_1.0.8")
    return out


def _pitch_ids(grammar: Grammar, kind: str = "Pitch") -> torch.Tensor:
    return torch.tensor(grammar.by_type[kind])


def _by_class(grammar: Grammar, probs: torch.Tensor) -> torch.Tensor:
    """``probs[V]`` summed per pitch class of the pitch tokens."""
    out = torch.zeros(12)
    for i in grammar.by_type["Pitch"]:
        out[int(grammar.values[i]) % 12] += probs[i]
    return out


def test_overplayed_pitch_classes_lose_and_underplayed_gain_nothing_else_moves(grammar):
    torch.manual_seed(0)
    logits = torch.randn(1, grammar.vocab_size)
    prompt = _bars(grammar, C_MAJOR, 4)
    guide = KeyGuidance(grammar, 1.0)
    ctx = StepContext(tokens=[list(prompt)], seen=torch.zeros(logits.shape, dtype=torch.bool))
    assert torch.allclose(guide(logits, ctx), logits)  # nothing written yet: nothing to steer
    ctx.tokens[0] += _notes(grammar, [60] * 8 + [61])  # C overplayed, one C# the prompt lacks
    out = guide(logits, ctx)
    other = torch.ones(grammar.vocab_size, dtype=torch.bool)
    other[_pitch_ids(grammar)] = False
    assert torch.equal(out[0, other], logits[0, other])  # drums, timing, programs untouched
    before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
    pitch = _pitch_ids(grammar)
    assert after[pitch].sum() == pytest.approx(before[pitch].sum().item(), rel=1e-5)
    gain = _by_class(grammar, after) / _by_class(grammar, before)
    assert gain[0] < 1 and gain[1] < 1  # C and C#: more than the prompt's share already
    assert all(gain[pc] > 1 for pc in C_MAJOR[1:])  # D … B: fewer
    assert gain[6] == pytest.approx(gain[3], rel=1e-4)  # unheard and unwritten: left alone


def test_stronger_guidance_leans_further_and_no_pitched_prompt_means_none(grammar):
    torch.manual_seed(1)
    logits = torch.randn(2, grammar.vocab_size)
    c = grammar.tokenizer.vocab["Pitch_60"]
    prompts = [_bars(grammar, C_MAJOR, 2), _ids(grammar, "BOS_None")]
    probs = {}
    for strength in (0.5, 2.0):
        guide = KeyGuidance(grammar, strength)
        ctx = StepContext(tokens=[list(p) for p in prompts], seen=torch.zeros(logits.shape).bool())
        guide(logits, ctx)
        for row in ctx.tokens:
            row += _notes(grammar, [60] * 6)
        probs[strength] = guide(logits, ctx).softmax(-1)
    assert probs[2.0][0, c] < probs[0.5][0, c] < logits.softmax(-1)[0, c]
    assert torch.allclose(probs[2.0][1], logits.softmax(-1)[1], atol=1e-6)


def test_the_target_is_the_prompts_latest_bars_and_the_written_notes_slide(grammar):
    f_sharp = (6, 8, 10, 11, 1, 3, 5)
    prompt = _bars(grammar, C_MAJOR, 6) + _bars(grammar, f_sharp, KEY_BARS)
    guide = KeyGuidance(grammar, 1.0)
    tokens = [list(prompt)]
    assert not guide.weights(tokens).any()  # nothing written: nothing to steer
    tokens[0] += _bars(grammar, (0,), 1)  # a new bar of C only: C is not in the latest bars
    weights = guide.weights(tokens)[0]
    assert weights[0] < 0 and (weights[list(f_sharp)] > 0).all()
    tokens[0] += _bars(grammar, f_sharp, KEY_BARS)  # the C bar has slid out of the window
    assert guide.weights(tokens).abs().max() < 1e-6


def test_each_track_keeps_its_own_balance(grammar):
    """The bass held to its roots and fifths, the piano to its scale; a track the prompt
    barely plays (the guitar) to the shares of all tracks."""
    prompt = []
    for _ in range(4):
        prompt += _ids(grammar, "Bar_None") + _notes(grammar, [36, 43], program=33)  # C, G
        prompt += _notes(grammar, [60 + pc for pc in C_MAJOR])
    guide = KeyGuidance(grammar, 1.0)
    tokens = [prompt]
    guide.weights(tokens)  # the first call reads the prompt
    tokens[0] += _ids(grammar, "Bar_None") + _notes(grammar, [40] * 4, program=33)  # E
    bass = guide.weights(tokens)[0]
    assert bass[4] < 0 < min(bass[0], bass[7])  # E is not the bass's; C and G are
    tokens[0] += _ids(grammar, "Position_8", "Program_0")
    assert not guide.weights(tokens).any()  # the piano has written nothing yet
    tokens[0] += _notes(grammar, [61, 61], program=29)  # C# on a guitar the prompt lacks
    guitar = guide.weights(tokens)[0]
    assert guitar[1] < 0 and (guitar[list(C_MAJOR)] > 0).all()
    assert guitar[4] > 0  # E counts as the prompt's: it is in the piano's part


def test_masked_rows_and_drums_stay_as_they_are(grammar):
    logits = torch.full((1, grammar.vocab_size), -torch.inf)
    drums = _pitch_ids(grammar, "PitchDrum")
    logits[0, drums] = torch.randn(len(drums))
    guide = KeyGuidance(grammar, 3.0)
    ctx = StepContext(tokens=[_bars(grammar, C_MAJOR, 2)], seen=torch.zeros(logits.shape).bool())
    guide(logits, ctx)
    ctx.tokens[0] += _notes(grammar, [61] * 4)
    assert torch.equal(guide(logits, ctx), logits)


def _onsets(
    grammar: Grammar, positions: tuple[int, ...], bars: int, program: int = -1
) -> list[int]:
    """``bars`` bars of one track's notes at ``positions`` (32nds of the bar)."""
    pitch = "PitchDrum_36" if program == -1 else "Pitch_40"
    out = []
    for _ in range(bars):
        out += _ids(grammar, "Bar_None")
        for p in positions:
            out += _ids(grammar, f"Position_{p}", f"Program_{program}", pitch)
            out += _ids(grammar, "Velocity_63", "Duration_0.1.8")
    return out


def _groove(grammar: Grammar, prompt: list[int], now: list[int]) -> tuple[torch.Tensor, ...]:
    """Logits before and after groove guidance for a row at ``prompt + now``."""
    torch.manual_seed(2)
    logits = torch.randn(1, grammar.vocab_size)
    guide = GrooveGuidance(grammar, 1.0)
    ctx = StepContext(tokens=[list(prompt)], seen=torch.zeros(logits.shape, dtype=torch.bool))
    guide(logits, ctx)  # reads the prompt
    ctx.tokens[0] += now
    return logits, guide(logits, ctx)


def _vocab(grammar: Grammar, *names: str) -> list[int]:
    return [grammar.tokenizer.vocab[n] for n in names]


QUARTERS = (0, 8, 16, 24)  # in 32nds of the bar


def test_onsets_land_where_the_prompt_plays_and_skip_only_what_it_skips(grammar):
    logits, out = _groove(grammar, _onsets(grammar, QUARTERS, 3), _ids(grammar, "Bar_None"))
    timing = torch.tensor(grammar.by_type["Position"] + grammar.by_type["Bar"])
    programs = torch.tensor(grammar.by_type["Program"])
    other = torch.ones(grammar.vocab_size, dtype=torch.bool)
    other[timing] = other[programs] = False
    assert torch.equal(out[:, other], logits[:, other])  # pitches, velocities: untouched
    before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
    for kind in (timing, programs):  # each kind keeps the model's total probability
        assert after[kind].sum() == pytest.approx(before[kind].sum().item(), rel=1e-5)
    gain = after / before
    downbeat, beat_two, beat_three = _vocab(grammar, "Position_0", "Position_8", "Position_16")
    off_grid = _vocab(grammar, "Position_2", "Position_4", "Position_12", "Position_28")
    assert gain[downbeat] > 1 and gain[downbeat] > gain[beat_two] > gain[beat_three]  # a skip costs
    assert gain[off_grid].max() < gain[beat_two]
    assert gain[grammar.tokenizer.vocab["Bar_None"]] < gain[beat_three]  # an empty bar most
    # after the second beat's onset, the third beat is the next one it plays
    _, out = _groove(grammar, _onsets(grammar, QUARTERS, 3), _ids(grammar, "Position_8"))
    gain = out.softmax(-1)[0] / before
    near, far = _vocab(grammar, "Position_16", "Position_24")
    assert gain[near] / gain[far] > 10


def test_a_played_onset_a_32nd_early_counts_on_the_16th_grid(grammar):
    """Played drums drift between neighbouring 32nds; both count as the same 16th."""
    loose = _onsets(grammar, (0, 7, 16, 24), 2) + _onsets(grammar, (0, 8, 15, 24), 2)
    _, out = _groove(grammar, loose, _ids(grammar, "Bar_None", "Position_0"))
    tight = _onsets(grammar, QUARTERS, 4)
    _, ref = _groove(grammar, tight, _ids(grammar, "Bar_None", "Position_0"))
    assert torch.allclose(out, ref)


def test_each_track_plays_where_it_played_in_the_prompt(grammar):
    # drums on every beat, the bass on beats one and three (the order within a bar is not read)
    bar = _onsets(grammar, QUARTERS, 1) + _onsets(grammar, (0, 16), 1, program=33)[1:]
    prompt = bar * 4
    drum, bass = _vocab(grammar, "Program_-1", "Program_33")
    logits, on_two = _groove(grammar, prompt, _ids(grammar, "Bar_None", "Position_8"))
    _, on_three = _groove(grammar, prompt, _ids(grammar, "Bar_None", "Position_16"))
    before = logits.softmax(-1)[0]
    odds = [(o.softmax(-1)[0] / before)[[drum, bass]] for o in (on_two, on_three)]
    assert odds[0][0] / odds[0][1] > 10  # beat two: the drums, not the bass
    assert odds[1][0] / odds[1][1] == pytest.approx(1.0, rel=1e-4)  # beat three: both


def test_only_the_latest_bars_set_the_groove_and_no_onsets_no_groove(grammar):
    prompt = _onsets(grammar, (4, 12), 5) + _onsets(grammar, (0, 16), GROOVE_BARS)
    prompt += _ids(grammar, "Bar_None")  # at the start of a new bar
    guide = GrooveGuidance(grammar, 1.0)
    weights = guide.weights([prompt, _ids(grammar, "BOS_None")])
    names = "Position_0", "Position_16", "Position_4", "Position_12", "Position_6"
    played, skips_one, *older = weights[0, _vocab(grammar, *names)].tolist()
    assert played == 0 > skips_one > older[0] == older[1] == older[2]  # bars 1-5 are forgotten
    assert not weights[1].any()


def test_steadiness_is_how_alike_the_bars_with_onsets_are():
    def bars(*cells: tuple[int, ...]) -> torch.Tensor:
        out = torch.zeros(len(cells), 16)
        for i, c in enumerate(cells):
            out[i, list(c)] = 1
        return out

    assert steadiness(bars((0, 4), (0, 4), (), (0, 4))) == 1  # a bar without onsets is no bar
    assert steadiness(bars((0, 4), (8, 12), (0, 4), (8, 12))) == 1  # each has a twin
    assert steadiness(bars((0,), (4,), (8,), (12,))) == 0
    assert steadiness(bars((0, 4), (0, 8))) == pytest.approx(1 / 3)
    assert steadiness(bars((0, 4), (), ())) == 0  # played once: no pattern repeated


def test_a_track_or_prompt_without_a_repeated_pattern_is_left_to_the_model(grammar):
    drums = _onsets(grammar, QUARTERS, 1)
    bass_on_two = _onsets(grammar, (8,), 1, program=33)[1:]  # without its bar line
    drum, bass = _vocab(grammar, "Program_-1", "Program_33")
    at_downbeat = _ids(grammar, "Bar_None", "Position_0")
    odds = {}
    for name, prompt in {
        "bass every bar": (drums + bass_on_two) * 4,
        "bass in one bar": drums * 4 + bass_on_two,
    }.items():
        logits, out = _groove(grammar, prompt, at_downbeat)
        gain = out.softmax(-1)[0] / logits.softmax(-1)[0]
        odds[name] = (gain[drum] / gain[bass]).item()
    assert odds["bass every bar"] > 10  # the bass plays on two, not on the downbeat
    assert odds["bass in one bar"] == pytest.approx(1.0, rel=1e-4)  # no pattern to keep
    # a track the prompt never plays neither gains what the drums lose nor is pushed out
    both = _vocab(grammar, "Program_0", "Program_-1")  # piano, drums
    for bars in (4, 1):  # a one-bar prompt is kept as far as it goes, and no further
        for cell in ("Position_4", "Position_8"):  # off and on the drums' beats
            logits, out = _groove(grammar, drums * bars, _ids(grammar, "Bar_None", cell))
            assert torch.allclose(out[0, both], logits[0, both])
    # each bar a different rhythm: where the next onset falls stays the model's
    moving = [t for p in ((0, 8), (16, 24), (4, 12), (20, 28)) for t in _onsets(grammar, p, 1)]
    logits, out = _groove(grammar, moving, _ids(grammar, "Bar_None"))
    timing = grammar.by_type["Position"] + grammar.by_type["Bar"]
    assert torch.allclose(out[0, timing], logits[0, timing])


def test_a_drum_loop_keeps_its_groove_by_default_and_a_band_only_when_asked(grammar):
    """Prompts of drums alone gain groove on validation without a target lost; prompts with
    pitched tracks lost some (``benchmarks/results/guidance``), so only drum loops get it."""
    loop = _onsets(grammar, QUARTERS, 4)
    band = [
        t
        for _ in range(4)
        for t in _onsets(grammar, QUARTERS, 1) + _onsets(grammar, (0, 16), 1, program=33)[1:]
    ]
    assert band.count(_ids(grammar, "Bar_None")[0]) == 4

    def weights(groove: float, drum_loops: float) -> torch.Tensor:
        return GrooveGuidance(grammar, groove, drum_loops=drum_loops).weights([loop, band])

    default = weights(0.0, 1.0)
    assert default[0].any() and not default[1].any()
    assert torch.allclose(weights(1.0, 0.0), weights(1.0, 1.0))  # asked for: every prompt alike
    assert torch.allclose(weights(2.0, 1.0)[0], 2 * default[0])  # the higher strength counts
    logits = torch.randn(2, grammar.vocab_size)
    guide = GrooveGuidance(grammar, 0.0, drum_loops=1.0)
    ctx = StepContext(tokens=[band, band], seen=torch.zeros(logits.shape, dtype=torch.bool))
    assert torch.equal(guide(logits, ctx), logits)  # no drum loop: the logits as they were
    settings = GenerationSettings()
    assert settings.groove_guidance == 0 and settings.drum_loop_groove == 1


@functools.cache
def _pipeline(checkpoint):
    from musegen.pipeline import Pipeline

    return Pipeline.from_pretrained(checkpoint)


def _continue(checkpoint, prompt, setting: str, strength: float, bars: int = 4) -> list:
    """8 continuations of ``prompt`` (seed 0) with one processor at ``strength``, others off."""
    pipe = _pipeline(checkpoint)
    return pipe.continue_midi(prompt, 8, bars=bars, seed=0, **{**OFF, setting: strength})


def test_the_pipeline_keeps_the_prompts_grid_with_groove_guidance(tiny_checkpoint):
    """An untrained model puts onsets anywhere; guidance pulls them onto the prompt's 8ths."""
    prompt = make_score(bars=8)  # piano 8th notes
    on_grid = {}
    for strength in (0.0, 3.0):
        results = _continue(tiny_checkpoint, prompt, "groove_guidance", strength)
        new = [r.continuation for r in results]
        eighths = [n.time % (c.tpq // 2) == 0 for c in new for t in c.tracks for n in t.notes]
        assert len(eighths) > 40
        on_grid[strength] = sum(eighths) / len(eighths)
    assert on_grid[3.0] > on_grid[0.0] + 0.2


def test_the_setting_is_checked():
    assert GenerationSettings(key_guidance=0).key_guidance == 0.0  # off
    assert GenerationSettings(key_guidance=1.5).key_guidance == 1.5
    for name in GUIDANCE:
        for bad in (-0.1, 4.5, "strong", True):
            with pytest.raises(MusegenError, match=name):
                GenerationSettings(**{name: bad})


def test_the_pipeline_stays_closer_to_the_prompt_key_with_guidance(tiny_checkpoint):
    """An untrained model writes pitches at random; guidance pulls them into the prompt's key.
    Its pitches are near uniform, so the whole range is tail: the nucleus (top-p 0.95, the
    default until 2026-12-06) keeps the three strengths' samples apart from sampling noise."""
    from musegen.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    prompt = make_score(bars=8)  # C major, piano
    key = frozenset(C_MAJOR)
    target = metrics.pitch_class_histogram(prompt)
    distance, rate = {}, {}
    for strength in (0.0, 1.0, 3.0):
        chosen = {**OFF, "key_guidance": strength, "top_p": 0.95}
        results = pipe.continue_midi(prompt, 8, bars=8, seed=0, **chosen)
        assert all(r.continuation.note_num() > 10 for r in results)
        new = [metrics.pitch_class_histogram(r.continuation) for r in results]
        distance[strength] = sum(metrics.histogram_distance(h, target) for h in new) / 8
        rate[strength] = sum(metrics.in_key_rate(r.continuation, key) for r in results) / 8
    assert distance[1.0] < distance[0.0] - 0.05  # closer to the prompt's balance
    assert rate[0.0] + 0.05 < rate[1.0] < rate[3.0]  # and fewer notes out of its key


def test_a_track_gone_quiet_gets_the_next_note_and_whether_a_note_comes_stays(grammar):
    torch.manual_seed(3)
    logits = torch.randn(1, grammar.vocab_size)
    prompt = []
    for _ in range(TRACK_BARS):  # piano and bass, half the notes each
        prompt += _ids(grammar, "Bar_None") + _notes(grammar, [60, 64])
        prompt += _notes(grammar, [36, 43], program=33)
    guide = TrackGuidance(grammar, 1.0)
    ctx = StepContext(tokens=[prompt], seen=torch.zeros(logits.shape, dtype=torch.bool))
    assert torch.allclose(guide(logits, ctx), logits)  # nothing written yet: nothing to steer
    for _ in range(3):  # three new bars of piano alone
        ctx.tokens[0] += _ids(grammar, "Bar_None") + _notes(grammar, [60, 64, 67, 72])
    out = guide(logits, ctx)
    programs = _pitch_ids(grammar, "Program")
    other = torch.ones(grammar.vocab_size, dtype=torch.bool)
    other[programs] = False
    assert torch.equal(out[0, other], logits[0, other])  # pitches, timing, bar lines: untouched
    before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
    assert after[programs].sum() == pytest.approx(before[programs].sum().item(), rel=1e-5)
    gain = after / before
    vocab = grammar.tokenizer.vocab
    assert gain[vocab["Program_33"]] > 2 and gain[vocab["Program_0"]] < 1
    assert gain[vocab["Program_40"]] == pytest.approx(gain[vocab["Program_-1"]].item(), rel=1e-4)
    for _ in range(TRACK_BARS):  # the balance back: the quiet bars slide out of the window
        ctx.tokens[0] += _ids(grammar, "Bar_None") + _notes(grammar, [60, 64])
        ctx.tokens[0] += _notes(grammar, [36, 43], program=33)
    assert guide.weights(ctx.tokens).abs().max() < 1e-6
    silent = TrackGuidance(grammar, 1.0)  # a prompt without notes: no balance to keep
    tokens = [_ids(grammar, "BOS_None")]
    silent.weights(tokens)
    tokens[0] += _bars(grammar, (0, 4), 2)
    assert not silent.weights(tokens).any()


def test_the_pipeline_keeps_the_prompts_balance_of_tracks(tiny_checkpoint):
    """An untrained model gives each allowed instrument about the same share of the notes;
    guidance pulls the shares toward the prompt's (piano 8 notes a bar, bass and strings 2)."""
    from musegen.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    prompt = make_score(bars=8, tracks=((0, False), (33, False), (48, False)))
    for track in prompt.tracks[1:]:
        kept = [n for i, n in enumerate(track.notes) if i % 4 == 0]
        track.notes.clear()
        track.notes.extend(kept)
    target = torch.tensor([8, 2, 2]) / 12
    gap = {}
    for strength in (0.0, 2.0):
        results = pipe.continue_midi(
            prompt, 8, bars=4, seed=0, **{**OFF, "track_guidance": strength}
        )
        gaps = []
        for r in results:
            notes = {t.program: t.note_num() for t in r.continuation.tracks}
            counts = torch.tensor([notes.get(p, 0) for p in (0, 33, 48)], dtype=torch.float)
            assert counts.sum() > 10
            gaps.append((counts / counts.sum() - target).abs().sum().item())
        gap[strength] = sum(gaps) / len(gaps)
    assert gap[2.0] < gap[0.0] - 0.1


def _drum_bar(grammar: Grammar, pitches: list[int]) -> list[int]:
    """A bar of drum hits, one per 8th, on the drums in ``pitches`` in turn."""
    out = _ids(grammar, "Bar_None")
    for i, p in enumerate(pitches):
        out += _ids(grammar, f"Position_{4 * i}", "Program_-1", f"PitchDrum_{p}")
        out += _ids(grammar, "Velocity_63", "Duration_0.1.8")
    return out


def test_a_drum_left_out_gets_the_next_hit_and_whether_a_hit_comes_stays(grammar):
    """An open-hi-hat groove (46 on the off-beats) played on as kick and snare alone: the open
    hi-hat gains, the overplayed drums lose, and drums hit by neither the prompt nor the new
    bars move alike; only drum notes move, and they keep their total probability."""
    torch.manual_seed(5)
    logits = torch.randn(1, grammar.vocab_size)
    groove = [36, 46, 38, 46, 36, 46, 38, 46]
    guide = KitGuidance(grammar, 1.0)
    ctx = StepContext(
        tokens=[[t for _ in range(KEY_BARS) for t in _drum_bar(grammar, groove)]],
        seen=torch.zeros(logits.shape, dtype=torch.bool),
    )
    assert torch.allclose(guide(logits, ctx), logits)  # nothing written yet: nothing to steer
    for _ in range(2):
        ctx.tokens[0] += _drum_bar(grammar, [36, 38] * 4)
    out = guide(logits, ctx)
    drums = _pitch_ids(grammar, "PitchDrum")
    other = torch.ones(grammar.vocab_size, dtype=torch.bool)
    other[drums] = False
    assert torch.equal(out[0, other], logits[0, other])
    before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
    assert after[drums].sum() == pytest.approx(before[drums].sum().item(), rel=1e-5)
    gain = after / before
    vocab = grammar.tokenizer.vocab
    assert gain[vocab["PitchDrum_46"]] > 2
    assert gain[vocab["PitchDrum_36"]] < 1 and gain[vocab["PitchDrum_38"]] < 1
    assert gain[vocab["PitchDrum_49"]] == pytest.approx(gain[vocab["PitchDrum_51"]].item())
    sparse = KitGuidance(grammar, 1.0)  # too few drum notes to call a kit
    tokens = [_drum_bar(grammar, [36] * (MIN_NOTES - 1))]
    sparse.weights(tokens)
    tokens[0] += _drum_bar(grammar, [38] * 8)
    assert not sparse.weights(tokens).any()


def test_the_pipeline_keeps_the_prompts_drum_kit(tiny_checkpoint):
    """An untrained model hits any of 62 drums, a handful of times in 4 bars; kit guidance
    makes the prompt's drums (kick, snare and closed hi-hat) the likelier ones."""
    prompt = make_score(bars=8, tracks=((0, True),))
    share = {}
    for strength in (0.0, 2.0):
        results = _continue(tiny_checkpoint, prompt, "kit_guidance", strength)
        hits = [n.pitch for r in results for t in r.continuation.tracks for n in t.notes]
        assert len(hits) > 40
        share[strength] = sum(p in (36, 38, 42) for p in hits) / len(hits)
    assert share[2.0] > share[0.0] + 0.04


def test_denser_new_bars_make_one_more_note_at_an_onset_less_likely(grammar):
    torch.manual_seed(4)
    logits = torch.randn(2, grammar.vocab_size)
    prompts = [_bars(grammar, (0, 4, 7, 11), 4), _ids(grammar, "BOS_None")]  # 4 notes a bar
    guide = DensityGuidance(grammar, 1.0)
    ctx = StepContext(tokens=prompts, seen=torch.zeros(logits.shape, dtype=torch.bool))
    assert torch.equal(guide(logits, ctx), logits)  # no new bar finished: nothing to steer
    for row in ctx.tokens:
        row += _bars(grammar, (0, 2, 4, 5, 7, 9, 11, 1), 2)  # a new bar of 8, one under way
    out = guide(logits, ctx)
    programs = _pitch_ids(grammar, "Program")
    other = torch.ones(grammar.vocab_size, dtype=torch.bool)
    other[programs] = False
    assert torch.equal(out[:, other], logits[:, other])  # pitches, onsets, bar lines: untouched
    ratio = (8 + PRIOR_BARS * 4) / ((1 + PRIOR_BARS) * 4)  # written notes per bar / prompt's
    assert torch.allclose(out[0, programs] - logits[0, programs], torch.tensor(-math.log(ratio)))
    assert torch.equal(out[1], logits[1])  # a prompt without notes: no density to keep
    sparse = DensityGuidance(grammar, 2.0)
    tokens = [_bars(grammar, (0, 4, 7, 11), 4)]
    sparse.weights(tokens)
    tokens[0] += _bars(grammar, (0,), 3)  # one note a bar: one more note gets likelier
    expected = -2 * math.log((2 + PRIOR_BARS * 4) / ((2 + PRIOR_BARS) * 4))
    assert sparse.weights(tokens)[0, 0] == pytest.approx(expected)
    # a 2-bar prompt: its first bar sets the target (its last holds one chord on the downbeat,
    # which reads as a hit played early for the next bar)
    short = DensityGuidance(grammar, 1.0)
    tokens = [_ids(grammar, "BOS_None") + _bars(grammar, (0, 4), 2)]
    short.weights(tokens)
    tokens[0] += _bars(grammar, (0, 4), 2)  # the same density: nothing to correct
    assert short.weights(tokens)[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_a_note_played_just_before_the_bar_line_is_not_a_bar_of_the_prompt(grammar):
    """A played prompt cut at a bar line often ends with a hit a little early for the next bar,
    which the tokenizer puts on that bar's first 32nd: density and groove leave it out."""
    whole = _onsets(grammar, QUARTERS, 4)
    early = whole + _onsets(grammar, (0,), 1)
    late = whole + _onsets(grammar, (0, 2), 1)  # onsets past the first 16th: a bar
    density = DensityGuidance(grammar, 1.0)
    assert density.read_prompt(whole)[0] == density.read_prompt(early)[0] == 4
    assert density.read_prompt(late)[0] == (4 * 3 + 2) / 4
    groove = GrooveGuidance(grammar, 1.0)
    (every, *_), _ = groove.read_prompt(early)
    assert every[4] == 1  # beat two in every bar, the early hit's "bar" left out
    (every, *_), written = groove.read_prompt(late)
    assert every[4] == 0.75 and written.cell == 1


def test_the_pipeline_keeps_the_prompts_density(tiny_checkpoint):
    """An untrained model writes chords of any size; guidance holds the notes per bar nearer
    the prompt's (8 single notes a bar)."""
    prompt = make_score(bars=8)
    gap = {}
    for strength in (0.0, 2.0):
        results = _continue(tiny_checkpoint, prompt, "density_guidance", strength, bars=6)
        per_bar = [r.continuation.note_num() / 6 for r in results]
        gap[strength] = sum(abs(math.log(max(n, 0.5) / 8)) for n in per_bar) / len(per_bar)
    assert gap[2.0] < gap[0.0] - 0.1


def test_a_pitch_outside_the_tracks_prompt_register_gets_less_likely(grammar):
    """Piano between 60 and 71, bass (program 33) between 36 and 43: each track's pitches
    outside its own range lose a logit per RANGE_SCALE semitones; other tokens keep theirs."""
    torch.manual_seed(2)
    logits = torch.randn(1, grammar.vocab_size)
    piano = [60 + pc for pc in C_MAJOR] + [71]
    bass = [36, 38, 40, 43] * 2
    prompt = [
        t
        for _ in range(2)
        for t in _ids(grammar, "Bar_None") + _notes(grammar, piano) + _notes(grammar, bass, 33)
    ]
    guide = RangeGuidance(grammar, 1.0)
    pitches = _pitch_ids(grammar)
    vocab = grammar.tokenizer.vocab

    def shift(tokens: list[int]) -> dict[int, float]:
        ctx = StepContext(tokens=[tokens], seen=torch.zeros(logits.shape, dtype=torch.bool))
        out = guide(logits, ctx)
        other = torch.ones(grammar.vocab_size, dtype=torch.bool)
        other[pitches] = False
        assert torch.equal(out[0, other], logits[0, other])
        before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
        assert after[pitches].sum() == pytest.approx(before[pitches].sum().item(), rel=1e-5)
        delta = out[0] - logits[0]
        return {
            p: float(delta[vocab[f"Pitch_{p}"]] - delta[vocab["Pitch_64"]]) for p in range(21, 109)
        }

    piano_next = shift(prompt + _ids(grammar, "Bar_None", "Position_0", "Program_0"))
    assert piano_next[60] == piano_next[71] == pytest.approx(0.0, abs=1e-5)
    assert piano_next[83] == pytest.approx(-12 / RANGE_SCALE, abs=1e-5)
    assert piano_next[48] == pytest.approx(-12 / RANGE_SCALE, abs=1e-5)
    guide = RangeGuidance(grammar, 1.0)
    bass_next = shift(prompt + _ids(grammar, "Bar_None", "Position_0", "Program_33"))
    assert bass_next[36] == pytest.approx(bass_next[43], abs=1e-5)
    assert bass_next[43] == pytest.approx(21 / RANGE_SCALE, abs=1e-5)  # Pitch_64: 21 above
    few = RangeGuidance(grammar, 1.0)  # a track with too few notes has no register to keep
    tokens = [_ids(grammar, "Bar_None") + _notes(grammar, [60] * (MIN_NOTES - 1), 40)]
    tokens[0] += _ids(grammar, "Position_0", "Program_40")
    assert not few.weights(tokens).any()


def test_the_pipeline_keeps_each_track_in_its_register(tiny_checkpoint):
    """An untrained model plays any pitch; range guidance keeps most new notes near the
    prompt's octave (48-59 here)."""
    prompt = make_score(bars=8)
    inside = {}
    for strength in (0.0, 2.0):
        results = _continue(tiny_checkpoint, prompt, "range_guidance", strength)
        notes = [n.pitch for r in results for t in r.continuation.tracks for n in t.notes]
        assert len(notes) > 40
        inside[strength] = sum(45 <= p <= 62 for p in notes) / len(notes)
    assert inside[2.0] > inside[0.0] + 0.2


# --- repeat guidance ----------------------------------------------------------------------
def _pasted_bar(grammar: Grammar, melody: int) -> list[int]:
    """One bar: kick and bass on beat 1, snare on beat 3, and a melody note that changes."""
    return _ids(
        grammar,
        "Bar_None", "Position_0",
        "Program_-1", "PitchDrum_36", "Velocity_95", "Duration_0.1.8",
        "Program_33", "Pitch_40", "Velocity_79", "Duration_1.0.8",
        "Program_0", f"Pitch_{melody}", "Velocity_63", "Duration_2.0.8",
        "Position_16",
        "Program_-1", "PitchDrum_38", "Velocity_95", "Duration_0.1.8",
    )  # fmt: skip


def test_repeat_guidance_measures_what_each_track_repeats(grammar):
    prompt = [t for bar in range(8) for t in _pasted_bar(grammar, 60 + bar)]
    guide = RepeatGuidance(grammar, 1.0)
    row = guide._read_prompt(prompt)
    drums, bass, piano = _ids(grammar, "Program_-1", "Program_33", "Program_0")
    assert row.period == 1  # every period repeats the drums and bass: the shortest is taken
    assert row.pulls[drums] == row.pulls[bass] == REPEAT_SCALE
    assert row.pulls[piano] == 0  # a different note every bar: nothing to repeat
    played = RepeatGuidance(grammar, 1.0)._read_prompt(
        encode(grammar.tokenizer, make_score(bars=8))  # a melody of random pitches
    )
    assert played.period == 0 and not played.pulls  # nothing pasted: no pull at all


def test_repeat_guidance_pulls_toward_the_bar_one_period_back(grammar):
    prompt = [t for bar in range(8) for t in _pasted_bar(grammar, 60 + bar)]
    guide = RepeatGuidance(grammar, 1.0)
    seen = torch.zeros(1, grammar.vocab_size, dtype=torch.bool)
    tokens = [list(prompt)]
    full = REPEAT_SCALE  # the drums and the bass repeat exactly

    def pulled(*names: str) -> dict[str, float]:
        """What the guidance adds once ``names`` are written (the first call reads the prompt)."""
        tokens[0] += _ids(grammar, *names)
        bias = guide(torch.zeros(1, grammar.vocab_size), StepContext(tokens=tokens, seen=seen))
        return {grammar.tokenizer[int(i)]: float(bias[0, i]) for i in bias[0].nonzero()}

    held = {"Position_4": -full, "Position_16": -full, "Bar_None": -full}  # not moving on yet
    assert pulled() == {}  # the prompt's own last bar is done: nothing until a new bar
    assert pulled("Bar_None") == {"Position_0": full}
    at_one = pulled("Position_0")
    assert at_one.items() >= {"Program_-1": full, "Program_33": full, **held}.items()
    assert "Program_0" not in at_one  # the melody never repeats: no pull toward it
    assert pulled("Program_33") == {"Pitch_40": full}  # in any order: the bass first
    # velocity and duration may differ and the note still counts: the drum comes next
    assert pulled("Pitch_40", "Velocity_127") == {"Duration_1.0.8": full}
    assert pulled("Duration_1.0.8").items() >= {"Program_-1": full, **held}.items()
    assert pulled("Program_-1", "PitchDrum_37") == {}  # another drum than the bar before
    # it counts as the drum; the melody's note may still come, or not: no pull either way
    assert pulled("Velocity_95", "Duration_0.1.8") == {}
    # with a melody note (another pitch) the onset is complete: on to the next one
    assert pulled("Program_0", "Pitch_72", "Velocity_63", "Duration_1.0.8") == {"Position_16": full}
    assert pulled("Position_16").items() >= {"Program_-1": full, "Bar_None": -full}.items()
    pulled("Program_-1", "PitchDrum_38", "Velocity_95")
    assert pulled("Duration_0.1.8") == {"Bar_None": full}  # the bar before ends here
    # infilling: only the bars before the span (the prefix) are read, not what follows it
    layout = prompt[: len(prompt) // 2] + _ids(grammar, "Infill_Span") + prompt
    infill = RepeatGuidance(grammar, 1.0)._read_prompt(layout)
    assert len(infill.bars) + 1 == 4


def test_the_pipeline_repeats_a_pasted_pattern(tmp_path):
    """An untrained model plays anything; repeat guidance brings back the pasted bar. (The
    tiny preset's 128 tokens hold one bar of this prompt: this model sees all four.)"""
    from musegen.checkpoint import save_pretrained
    from musegen.config import preset
    from musegen.model.transformer import MusicTransformer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = MusicTransformer(preset("tiny", vocab_size=len(tokenizer), max_seq_len=320))
    checkpoint = save_pretrained(model, tokenizer, tmp_path / "tiny512")
    score = symusic.Score(480)
    drums = symusic.Track(program=0, is_drum=True)
    bass = symusic.Track(program=33)
    for bar in range(4):
        for beat, (drum, pitch) in enumerate(((36, 40), (42, 40), (38, 43), (42, 45))):
            at = bar * 1920 + beat * 480
            drums.notes.append(symusic.Note(at, 60, drum, 100))
            bass.notes.append(symusic.Note(at, 240, pitch, 90))
    score.tracks.extend([drums, bass])
    pattern = {(n.time % 1920, n.pitch) for t in score.tracks for n in t.notes}
    repeated = {}
    for strength in (0.0, 3.0):
        results = _continue(checkpoint, score, "repeat_guidance", strength, bars=2)
        notes = [(n.time % 1920, n.pitch) for r in results for t in r.continuation.tracks
                 for n in t.notes]  # fmt: skip
        assert len(notes) > 16
        repeated[strength] = sum(note in pattern for note in notes) / len(notes)
    assert repeated[3.0] > repeated[0.0] + 0.3
