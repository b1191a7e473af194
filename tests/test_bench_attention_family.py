"""The attention-family bench's doc table: a new sitting keeps earlier sittings' rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_attention_family as bench

LENGTHS = [1024, 4096]


def _results(lengths=LENGTHS, **kinds) -> dict:
    measured = {"s_per_tok": 0.001, "kib_per_tok": 300.0}
    return dict(
        mode="full", date="2026-12-05", machine="x86_64, 2 cores", torch="2.13.0+cpu",
        threads=2, budget_s=1200, seq_len=512, data="d", lengths=lengths,
        kinds={
            k: dict(val_nll=v, train_tok_s=1000, gen_tok_s=100.0, token_error_rate=0.0,
                    curve=[[0.0, 5.0], [1200.0, v]], scaling={str(L): measured for L in lengths})
            for k, v in kinds.items()
        },
    )  # fmt: skip


@pytest.fixture
def doc(tmp_path, monkeypatch) -> Path:
    """A doc whose table holds an earlier sitting's relative and sparse rows."""
    earlier = bench.table(_results(relative=1.8, sparse=1.6)).replace("2026-12-05", "2026-12-03")
    earlier += "\n- sparse @4096: exit -9"
    path = tmp_path / "attention.md"
    path.write_text(f"# t\n{bench.BEGIN}\n{earlier}\n{bench.END}\nafter\n")
    monkeypatch.setattr(bench, "DOC", path)
    return path


def _write(tmp_path, results) -> None:
    (tmp_path / "r.json").write_text(json.dumps(results))
    bench.write_doc(tmp_path / "r.json")


def test_write_doc_keeps_the_rows_of_kinds_the_results_lack(doc, tmp_path):
    _write(tmp_path, _results(sparse=1.5, entmax=1.9))
    text = doc.read_text()
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert rows == ["kind", "sparse", "entmax", "relative"]  # sparse measured again, not twice
    assert "| sparse | 1.500 |" in text and "| relative | 1.800 |" in text
    assert "exit -9" not in text  # the old sparse note went with its row
    assert "Rows of relative: an earlier sitting. Mode `full`, 2026-12-03" in text
    assert text.endswith(f"{bench.END}\nafter\n")


def test_write_doc_refuses_to_merge_another_run(doc, tmp_path):
    with pytest.raises(SystemExit, match="another run"):
        _write(tmp_path, _results(lengths=[1024], entmax=1.9))
    assert "2026-12-05" not in doc.read_text()  # nothing written


def test_merge_joins_parallel_sittings_and_refuses_other_runs(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_results(lengths=[], linformer=1.5)))
    b.write_text(json.dumps(_results(lengths=[], relative=1.7)))
    merged = bench.merge(tmp_path / "out", [a, b])
    assert list(merged["kinds"]) == ["linformer", "relative"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["kinds"]["relative"]["val_nll"] == 1.7
    assert (tmp_path / "out" / "nll_vs_time.png").stat().st_size > 0
    (tmp_path / "c.json").write_text(json.dumps(_results(lengths=[1024], sparse=1.6)))
    with pytest.raises(SystemExit, match="lengths differ"):
        bench.merge(tmp_path / "out2", [a, tmp_path / "c.json"])


def test_a_sitting_killed_during_the_lengths_keeps_its_training(tmp_path, monkeypatch):
    """Results are saved before the slow lengths; --resume then measures only the lengths."""
    calls: list[str] = []

    def train_kind(*args) -> dict:
        calls.append("train")
        return dict(model=None, val_nll=1.5, curve=[[0.0, 1.5]], train_tok_s=1.0, steps=1)

    def killed(*args):
        raise KeyboardInterrupt

    def lengths(*args) -> dict:
        calls.append("lengths")
        return {256: {"skipped": "x"}}

    data = type("Data", (), {"tokenizer_path": None})()
    monkeypatch.setattr(bench.PreparedDataset, "open", lambda path: data)
    monkeypatch.setattr(bench, "load_tokenizer", lambda path: [0] * 10)
    monkeypatch.setattr(bench, "special_id", lambda tok, name: 0)
    monkeypatch.setattr(bench, "plots", lambda results, out: None)
    monkeypatch.setattr(bench, "train_kind", train_kind)
    monkeypatch.setattr(bench, "generation", lambda *a: dict(gen_tok_s=1.0, token_error_rate=0.0))
    monkeypatch.setattr(bench, "scaling", killed)
    argv = ["--data", "d", "--quick", "--kinds", "local", "--out", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv)
    saved = json.loads((tmp_path / "results.json").read_text())["kinds"]["local"]
    assert saved["val_nll"] == 1.5 and saved["lengths_pending"] is True
    kept = json.loads((tmp_path / "results.json").read_text())
    assert "- local: lengths not measured yet" in bench.table(kept)
    monkeypatch.setattr(bench, "scaling", lengths)
    bench.main([*argv, "--resume"])
    assert calls == ["train", "lengths"]  # trained once
    saved = json.loads((tmp_path / "results.json").read_text())["kinds"]["local"]
    assert "lengths_pending" not in saved and saved["scaling"] == {"256": {"skipped": "x"}}


def test_the_memory_plot_keeps_the_earlier_rows_from_their_cells(doc, tmp_path, monkeypatch):
    row = "| sparse | 1.600 | 1000 | 100.0 | 0.000 | 1.00 | skip | 300.00 | skip |"
    assert bench.table_memory({"sparse": row}, LENGTHS) == {"sparse": [(1024, 300.0)]}
    _write(tmp_path, _results(entmax=1.9))  # relative and sparse come from the doc's rows
    assert (tmp_path / "memory_vs_length.png").stat().st_size > 0
    assert (tmp_path / "nll_vs_time.png").stat().st_size > 0
    drawn: list[dict] = []
    monkeypatch.setattr(
        bench, "plots", lambda r, out, earlier=None: drawn.append(bench.memory_points(r, earlier))
    )
    _write(tmp_path, _results(linformer=1.5))  # write_doc hands the doc's rows to the plot
    assert set(drawn[0]) == {"linformer", "relative", "sparse", "entmax"}
    assert drawn[0]["relative"] == [(1024, 300.0), (4096, 300.0)]


def test_each_kept_row_keeps_the_settings_of_the_sitting_that_measured_it(doc, tmp_path):
    _write(tmp_path, _results(sparse=1.5, entmax=1.9))  # relative stays from 2026-12-03
    later = _results(feedback=3.2)
    later["date"] = "2026-12-06"
    _write(tmp_path, later)  # now sparse and entmax are kept too, from 2026-12-05
    meta = next(line for line in doc.read_text().splitlines() if line.startswith("Mode "))
    assert meta.startswith("Mode `full`, 2026-12-06")
    assert "Rows of relative: an earlier sitting. Mode `full`, 2026-12-03" in meta
    assert "Rows of sparse, entmax: an earlier sitting. Mode `full`, 2026-12-05" in meta
