import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_score, write_midi

from musegen import metrics
from musegen.cli import main
from musegen.data.prepare import PrepareOptions, prepare
from musegen.data.sources import BuildReport, SourceInfo, write_corpus_json
from musegen.evaluate import EvalSettings, _split_bars, evaluate, format_report


def test_pitch_class_statistics() -> None:
    score = make_score(bars=4, tracks=((0, False),))
    hist = metrics.pitch_class_histogram(score)
    assert hist.sum() == pytest.approx(1.0)
    # The factory draws from a C major scale: no black keys.
    assert hist[[1, 3, 6, 8, 10]].sum() == 0
    assert 0 < metrics.pitch_class_entropy(score) <= np.log2(7) + 1e-9
    assert metrics.histogram_distance(hist, hist) == 0
    only_c, only_d = np.eye(12)[0], np.eye(12)[2]
    assert metrics.histogram_distance(only_c, only_d) == pytest.approx(1.0)


def test_groove_consistency_of_a_steady_beat_is_one() -> None:
    drums = make_score(bars=4, tracks=((0, True),))
    assert metrics.groove_consistency(drums) == pytest.approx(1.0)
    assert metrics.notes_per_bar(drums) == pytest.approx(8.0)


def test_real_continuation_is_measured_from_its_own_first_bar() -> None:
    drums = make_score(bars=6, tracks=((0, True),))
    _, real, bar = _split_bars(drums, 2, 2)
    assert real.start() < bar and real.end() <= 2 * bar
    assert metrics.groove_consistency(real) == pytest.approx(1.0)
    assert metrics.notes_per_bar(real, 0, 2 * bar) == pytest.approx(8.0)


def test_shared_run_index_finds_planted_run() -> None:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 400, 20_000)
    sample = np.concatenate(
        [rng.integers(400, 500, 30), reference[5000:5042], rng.integers(400, 500, 30)]
    )
    index = metrics.SharedRunIndex(reference)
    assert index.longest_run(sample) == 42
    assert index.longest_run(rng.integers(400, 500, 50)) == 0


def test_evaluate_on_a_midi_folder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    for i in range(3):
        write_midi(tmp_path / "held" / f"p{i}.mid", bars=6, tracks=((0, False), (0, True)), seed=i)
    settings = EvalSettings(
        num_prompts=2, prompt_bars=2, continuation_bars=1, max_windows=8, progress=False
    )
    report = evaluate(tiny_checkpoint, tmp_path / "held", settings)
    assert report["nll_by_group"] == {}  # a plain folder has no groups
    like = report["likelihood"]
    assert like["nll"] > 0 and like["perplexity"] == pytest.approx(np.exp(like["nll"]))
    cont = report["continuations"]
    assert cont["prompts"] == 2
    assert cont["token_error_rate_constrained"] == 0
    assert 0 <= cont["pitch_class_histogram_distance"] <= 1
    again = evaluate(tiny_checkpoint, tmp_path / "held", settings)
    assert again["continuations"] == cont  # deterministic given the seed


def test_evaluate_cli_writes_json(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    write_midi(tmp_path / "held" / "a.mid", bars=4)
    out = tmp_path / "eval.json"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(tmp_path / "held"),
            "--num-prompts",
            "0",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert "nll" in json.loads(out.read_text())["likelihood"]


def test_evaluate_bad_data_is_one_line_error(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code = main(
        ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "empty")]
    )
    assert code == 2
    assert "no .mid/.midi files" in capsys.readouterr().err


def _grouped_corpus(folder: Path, group: str, tracks, seeds: range, test: int) -> None:
    """A builder-like OUT_DIR: MIDI files plus a corpus.json giving each its group and split."""
    source = SourceInfo(name=group, licence="CC0", attribution="tests", url="https://example.org")
    report = BuildReport(source, folder)
    for k, seed in enumerate(seeds):
        write_midi(folder / f"{group}{k}.mid", bars=5 + 3 * k, tracks=tracks, seed=seed)
        split = "test" if k < test else "train"
        report.written[f"{group}{k}.mid"] = {"split": split, "group": group}
    write_corpus_json(report, f"{group} pieces made in the test")


def test_nll_by_group_matches_a_dataset_of_that_group_alone(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    mix = tmp_path / "mix"
    _grouped_corpus(mix / "alpha", "classical", ((0, False),), range(0, 4), test=3)
    _grouped_corpus(mix / "beta", "folk", ((40, False), (0, True)), range(10, 13), test=2)
    options = PrepareOptions(tokenizer_from=str(tiny_checkpoint), workers=1)
    prepare(mix, tmp_path / "prepared", options, progress=False)
    prepare(mix / "alpha", tmp_path / "alpha_only", options, progress=False)
    for max_windows in (None, 3):
        settings = EvalSettings(num_prompts=0, seq_len=16, max_windows=max_windows, progress=False)
        report = evaluate(tiny_checkpoint, tmp_path / "prepared", settings)
        groups = report["nll_by_group"]
        assert set(groups) == {"classical", "folk"}
        alone = evaluate(tiny_checkpoint, tmp_path / "alpha_only", settings)["likelihood"]
        classical = groups["classical"]
        assert classical["nll"] == pytest.approx(alone["nll"], rel=1e-9)
        assert classical["ppl"] == pytest.approx(np.exp(classical["nll"]))
        assert (classical["tokens"], classical["windows"]) == (alone["tokens"], alone["windows"])
        if max_windows is None:  # every target token of the split is scored once, in one group
            whole = report["likelihood"]
            assert sum(g["tokens"] for g in groups.values()) == whole["tokens"]
            assert sum(g["windows"] for g in groups.values()) == whole["windows"]
            assert sum(g["nll"] * g["tokens"] for g in groups.values()) == pytest.approx(
                whole["nll"] * whole["tokens"]
            )
        else:
            assert all(g["windows"] <= max_windows for g in groups.values())
    shown = format_report(report)
    assert "nll by group" in shown and "classical" in shown and "folk" in shown
