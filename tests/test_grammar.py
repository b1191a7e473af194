"""The grammar: constrained sequences have 0 miditok token errors, for every tokenizer."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_score, write_midi

from musegen.errors import MusegenError
from musegen.generation.grammar import Controls
from musegen.generation.rules import grammar_for
from musegen.tokenizer import TokenizerSettings, build_tokenizer, decode, encode, train_bpe

KINDS = ("REMI", "TSD", "MIDILike")
PROMPT = make_score(bars=2, tracks=((0, False), (40, False), (0, True)))


def random_walk(grammar, prompt, seed, steps=250, scale=3.0):
    """Continue ``prompt`` with random logits under the grammar (harder than any model)."""
    state = grammar.start(prompt)
    start = state.copy()
    gen = torch.Generator().manual_seed(seed)
    new = []
    for _ in range(steps):
        logits = torch.randn(1, grammar.vocab_size, generator=gen) * scale
        logits[~grammar.mask([state])] = float("-inf")
        token = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
        if grammar.ends_before(state, token):
            break
        new.append(token)
        grammar.advance(state, token)
        if grammar.ends_after(state):
            break
    return grammar.finish(start, new), state


@pytest.mark.parametrize("kind", KINDS)
def test_random_walks_have_no_token_errors(kind):
    tokenizer = build_tokenizer(TokenizerSettings(kind=kind))
    prompt = encode(tokenizer, PROMPT)
    bos = tokenizer.vocab["BOS_None"]
    for seed in range(12):
        grammar = grammar_for(tokenizer, Controls(bars=2 if seed % 2 else None))
        start = prompt if seed % 3 else [bos]
        new, _ = random_walk(grammar, start, seed)
        full = [i for i in start if i != bos] + new
        assert tokenizer.tokens_errors(full) == 0, [tokenizer[i] for i in new]
        assert decode(tokenizer, full).note_num() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_bars_target_is_met_exactly(kind):
    tokenizer = build_tokenizer(TokenizerSettings(kind=kind))
    grammar = grammar_for(tokenizer, Controls(programs=frozenset({0}), drums=False, bars=2))
    new, state = random_walk(grammar, encode(tokenizer, PROMPT), seed=3, steps=3000)
    assert grammar.bars_done(state) == 2
    score = decode(tokenizer, encode(tokenizer, PROMPT) + new)
    bar_ticks = 4 * score.tpq
    assert state.start_tick == 2 * bar_ticks  # the prompt is 2 bars of 4/4
    late = [n for t in score.tracks for n in t.notes if n.start >= state.start_tick]
    assert late and max(n.start for n in late) < state.start_tick + 2 * bar_ticks


@pytest.mark.parametrize("bpe", [False, True], ids=["base", "bpe"])
@pytest.mark.parametrize("kind", KINDS)
def test_mask_agrees_with_the_scalar_rules(kind, bpe, tmp_path):
    # Without BPE, mask() and allows() apply the same rules the same way; with BPE the mask
    # walks each learned id through its base tokens instead, which is what this checks.
    tokenizer = build_tokenizer(TokenizerSettings(kind=kind))
    if bpe:
        files = [write_midi(tmp_path / f"p{i}.mid", bars=4, seed=i) for i in range(4)]
        train_bpe(tokenizer, files, vocab_size=len(tokenizer) + 40)
    grammar = grammar_for(tokenizer)
    assert grammar.bpe == bpe
    ids = encode(tokenizer, PROMPT)
    bases = range(len(grammar.types))
    alone = [grammar.single[b] for b in bases]  # the model id of each base token on its own
    rng = random.Random(0)
    for cut in rng.sample(range(1, len(ids)), 8):
        state = grammar.start(ids[:cut])
        row = grammar.mask([state])[0]
        mask = row[alone]
        expected = [grammar.allows(state, b) for b in bases]
        assert mask.tolist() == expected
        # A learned id is allowed only when its first base token is.
        for i, parts in enumerate(grammar.expand):
            if len(parts) > 1 and row[i]:
                assert grammar.allows(state, parts[0]), i


@pytest.mark.parametrize("kind", KINDS)
def test_controls_instruments_drums_tempo(kind):
    tokenizer = build_tokenizer(TokenizerSettings(kind=kind))
    controls = Controls(programs=frozenset({40}), drums=False, bars=2)
    grammar = grammar_for(tokenizer, controls)
    prompt = encode(tokenizer, PROMPT)
    new, _ = random_walk(grammar, prompt, seed=5, steps=600)
    tokens = [tokenizer[i] for i in new]
    programs = {t for t in tokens if t.startswith("Program_")}
    assert programs <= {"Program_40"} or kind == "MIDILike"  # MIDILike may close prompt notes
    assert not [t for t in tokens if t.startswith(("PitchDrum", "DrumOn"))]
    prompt_tempos = {tokenizer[i] for i in prompt if tokenizer[i].startswith("Tempo_")}
    assert {t for t in tokens if t.startswith("Tempo_")} <= prompt_tempos
    assert {t for t in tokens if t.startswith("TimeSig_")} <= {"TimeSig_4/4"}


def test_midilike_finish_closes_every_note():
    tokenizer = build_tokenizer(TokenizerSettings(kind="MIDILike"))
    grammar = grammar_for(tokenizer)
    v = tokenizer.vocab
    start = grammar.start(encode(tokenizer, PROMPT))
    half = [v["TimeShift_1.0.8"], v["Program_0"], v["NoteOn_60"], v["Velocity_63"], v["Program_0"]]
    done = grammar.finish(start, half)
    names = [tokenizer[i] for i in done]
    assert names[-1] == "NoteOff_60" and "TimeShift" in names[-3]
    assert tokenizer.tokens_errors(encode(tokenizer, PROMPT) + done) == 0


def test_bpe_tokenizer_is_constrained_too(tmp_path):
    tokenizer = build_tokenizer(TokenizerSettings(kind="REMI"))
    files = [write_midi(tmp_path / f"p{i}.mid", bars=4, seed=i) for i in range(4)]
    train_bpe(tokenizer, files, vocab_size=len(tokenizer) + 40)
    assert tokenizer.is_trained
    grammar = grammar_for(tokenizer, Controls(bars=1))
    prompt = encode(tokenizer, make_score(bars=2, seed=9))
    for seed in range(3):
        new, _ = random_walk(grammar, prompt, seed, steps=120)
        assert tokenizer.tokens_errors(prompt + new) == 0


def test_unsupported_tokenizer_options_are_refused():
    tokenizer = build_tokenizer(TokenizerSettings(kind="REMI"))
    tokenizer.config.use_chords = True
    with pytest.raises(MusegenError, match="use_chords"):
        grammar_for(tokenizer)
