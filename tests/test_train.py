"""Training: the loss falls, runs resume on the same curve (also after kill -9), bad input fails.

Everything runs the tiny preset on a corpus prepared in the test with the real ``prepare``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args, write_midi

from musegen.checkpoint import load_pretrained
from musegen.cli import main
from musegen.cli.train import read_config_file, split_settings
from musegen.config import preset
from musegen.data.prepare import PrepareOptions, prepare
from musegen.errors import MusegenError
from musegen.files import read_jsonl
from musegen.training import optim
from musegen.training import state as ts
from musegen.training.config import TrainConfig
from musegen.training.loop import TrainingDiverged, train
from musegen.training.plots import plot_metrics, truncate_metrics

ROOT = Path(__file__).resolve().parents[1]
# Constant learning rate: a run stopped at step N and resumed to M matches one run to M.
CONSTANT_LR = {"warmup_steps": 0, "min_lr_ratio": 1.0, "lr": 3e-3}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real prepared corpus of 12 small multitrack pieces (≈13k train tokens)."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        tracks = ((0, False), (0, True)) if i % 2 else ((0, False), (33, False))
        write_midi(root / "midi" / f"piece{i}.mid", bars=12 + i, tracks=tracks, seed=i)
    prepare(root / "midi", root / "prepared", PrepareOptions(workers=1), progress=False)
    return root / "prepared"


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=str(data),
        out=str(out),
        preset="tiny",
        batch_size=4,
        seq_len=32,
        max_steps=20,
        eval_every=10,
        save_every=5,
        log_every=1,
        eval_windows=8,
        sample_tokens=0,
        device="cpu",
        progress=False,
        seed=3,
    )
    return TrainConfig(**{**settings, **overrides})


def train_losses(run_dir: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"
    }


@pytest.fixture(scope="module")
def reference(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Per-step losses of one uninterrupted 20-step run (dropout on, so RNG state matters)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(tiny_config(prepared, out, **CONSTANT_LR), preset("tiny", dropout=0.1))
    return train_losses(out)


def test_loss_drops_and_run_dir_is_complete(prepared: Path, tmp_path: Path):
    out = tmp_path / "run"
    config = tiny_config(
        prepared,
        out,
        batch_size=8,
        max_steps=30,
        lr=5e-3,
        warmup_steps=3,
        log_every=5,
        eval_every=15,
        save_every=15,
        sample_tokens=16,
    )
    result = train(config)
    losses = train_losses(out)
    first, last = losses[5], losses[30]
    assert last < 0.8 * first, f"loss did not drop clearly: {first:.3f} -> {last:.3f}"
    assert result.steps == 30 and result.tokens == 30 * 8 * 32 and result.tokens_per_s > 0
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [15, 30]
    for r in evals:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert 0.0 <= r["val_acc"] <= 1.0
    assert result.best_val_loss == min(r["val_loss"] for r in evals)
    best, latest = load_pretrained(out / "best"), load_pretrained(out / "latest")
    assert best.meta["step"] == result.best_step and latest.meta["step"] == 30
    assert best.config.vocab_size == len(best.tokenizer)  # exactly the tokenizer's ids
    assert (out / "latest" / "train_state" / "state.json").is_file()
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "samples" / "step_15.mid").read_bytes().startswith(b"MThd")
    assert "best val loss" in result.summary() and "tokens/s" in result.summary()
    assert json.loads((out / "run.json").read_text())["model_config"]["d_model"] == 32


def test_stop_and_resume_continues_the_same_curve(prepared, reference, tmp_path: Path):
    out = tmp_path / "run"
    train(tiny_config(prepared, out, max_steps=12, **CONSTANT_LR), preset("tiny", dropout=0.1))
    result = train(tiny_config(prepared, out, max_steps=20, resume=True, **CONSTANT_LR))
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, 21)) and result.steps == 20
    for step in range(1, 21):
        assert losses[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-5), step


@pytest.mark.slow
def test_kill_minus_9_then_resume_continues_the_same_curve(prepared, reference, tmp_path: Path):
    out = tmp_path / "run"
    flags = dict(preset="tiny", batch_size=4, seq_len=32, eval_every=10, save_every=5)
    flags |= dict(log_every=1, eval_windows=8, seed=3, sample_tokens=0, device="cpu")
    flags |= dict(threads=torch.get_num_threads(), quiet=True)
    base = [sys.executable, "-m", "musegen", *train_args(prepared, out, **flags)]
    base += ["--set", "dropout=0.1"]
    base += [f"--set={k}={v}" for k, v in CONSTANT_LR.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*base, "--max-steps", "100000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while max(train_losses(out), default=0) < 8:  # past the save at step 5
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the training subprocess made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        [*base, "--resume", "--max-steps", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "20 steps" in resumed.stdout
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, 21))
    for step in range(1, 21):
        assert losses[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-5), step


# --- bad input -----------------------------------------------------------------------------------
def run_cli(*argv: str) -> int:
    return main(["train", *argv, "--preset", "tiny", "--device", "cpu", "--quiet"])


def test_missing_or_empty_data_is_a_clear_error(prepared, tmp_path, capsys):
    assert run_cli("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    shutil.copytree(prepared, empty)
    (empty / "train.bin").write_bytes(b"")
    np.save(empty / "train.idx.npy", np.zeros(1, dtype=np.int64))
    assert run_cli("--data", str(empty), "--out", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "train split" in err and "empty" in err
    assert run_cli("--data", str(prepared), "--out", str(tmp_path / "r"), "--seq-len", "99999") == 2
    assert "fewer than one window" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_run_dir_is_never_overwritten_by_accident(prepared, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_cli("--data", str(prepared), "--out", str(out)) == 2
    assert "not empty" in capsys.readouterr().err
    assert run_cli("--data", str(prepared), "--out", str(out), "--overwrite") == 2
    assert "not a musegen run" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_refuses_empty_foreign_and_other_dataset_dirs(prepared, tmp_path, capsys):
    assert run_cli("--out", str(tmp_path / "none"), "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    assert run_cli("--out", str(foreign), "--resume") == 2
    assert "not a musegen run directory" in capsys.readouterr().err
    out = tmp_path / "run"
    train(tiny_config(prepared, out, max_steps=2, eval_every=2, save_every=2))
    other = tmp_path / "other"
    shutil.copytree(prepared, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "source": "elsewhere"}))
    assert run_cli("--out", str(out), "--resume", "--data", str(other)) == 2
    assert "different prepared corpus" in capsys.readouterr().err
    assert load_pretrained(out / "latest").meta["step"] == 2


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(prepared, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(prepared, out, lr=1e30, warmup_steps=0, save_every=1, max_steps=20)
    with pytest.raises(TrainingDiverged, match="non-finite") as info:
        train(config)
    assert "last good checkpoint" in str(info.value)
    step = json.loads((out / "latest" / "train_state" / "state.json").read_text())["step"]
    assert 1 <= step < 20 and load_pretrained(out / "latest").meta["step"] == step


def test_max_minutes_stops_early_and_grad_accum_counts_tokens(prepared, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(prepared, out, max_steps=10_000, max_minutes=1e-5, grad_accum=2)
    result = train(config)
    assert result.stopped == "max_minutes" and 1 <= result.steps < 10_000
    assert result.tokens == result.steps * 4 * 32 * 2
    assert load_pretrained(out / "latest").meta["step"] == result.steps


def test_bad_settings_are_clear_errors(prepared, tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run_cli("--data", str(prepared), "--out", out, "--set", "colour=blue") == 2
    assert "unknown setting 'colour'" in capsys.readouterr().err
    assert run_cli("--data", str(prepared), "--out", out, "--set", "lr") == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert run_cli("--data", str(prepared), "--out", out, "--set", "n_heads=5") == 2
    assert "divisible" in capsys.readouterr().err
    with pytest.raises(MusegenError, match="batch_size"):
        tiny_config(prepared, tmp_path, batch_size=0).validate()
    with pytest.raises(MusegenError, match="infill_prefix_drop must be in"):
        tiny_config(prepared, tmp_path, infill_prefix_drop=1.5).validate()


# --- the pieces ----------------------------------------------------------------------------------
def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [optim.lr_at(s, 1.0, 10, 110, 0.1) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1) == lrs[129]


def test_weight_decay_only_on_linear_weights():
    from musegen.model.transformer import MusicTransformer

    model = MusicTransformer(preset("tiny", vocab_size=64))
    decay, no_decay = optim.parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(
        n.endswith(("qkv.weight", "proj.weight", "fc.weight", "out.weight")) for n in decayed
    )
    assert {"tok_emb.weight", "ln_f.weight", "blocks.0.attn.rel"} <= {
        names[id(p)] for p in no_decay["params"]
    }
    assert no_decay["weight_decay"] == 0.0


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    from musegen.model.transformer import MusicTransformer

    model = MusicTransformer(preset("tiny", vocab_size=64))
    opt = optim.build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"))
    model(torch.randint(0, 64, (2, 8))).sum().backward()
    opt.step()
    tensors, meta = optim.optimizer_to_tensors(opt)
    ts.write_train_state(
        tmp_path, {"step": 1, "optimizer": meta}, tensors, [ts.capture_rng(torch.device("cpu"))]
    )
    state = ts.read_train_state(tmp_path)
    fresh = optim.build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"))
    optim.optimizer_from_tensors(fresh, state.optimizer_tensors, state.meta["optimizer"])
    for param in model.parameters():
        a, b = opt.state[param], fresh.state[param]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.param_groups[0]["betas"] == (0.9, 0.95)
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))


def test_rng_state_restores_every_stream():
    import random

    state = ts.capture_rng(torch.device("cpu"))
    plain = ts.from_jsonable(
        json.loads(json.dumps(ts.to_jsonable({k: v for k, v in state.items() if k != "torch"})))
    )
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ts.restore_rng({**plain, "torch": state["torch"]}, torch.device("cpu"))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_checkpoint_swap_survives_a_crash_between_the_renames(tmp_path):
    def writer(text):
        def write(d: Path) -> None:
            d.mkdir()
            (d / "f").write_text(text)

        return write

    ts.replace_checkpoint(tmp_path, "latest", writer("one"))
    os.replace(tmp_path / "latest", tmp_path / ".latest.old")  # killed mid-swap
    (tmp_path / ".latest.tmp").mkdir()
    ts.repair_checkpoints(tmp_path)
    assert (tmp_path / "latest" / "f").read_text() == "one"
    assert not (tmp_path / ".latest.tmp").exists() and not (tmp_path / ".latest.old").exists()
    ts.replace_checkpoint(tmp_path, "latest", writer("two"))
    assert (tmp_path / "latest" / "f").read_text() == "two"


def test_metrics_truncate_and_plot(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "train", "step": s, "loss": 5.0 - s / 10} for s in range(1, 6)]
    lines.append({"kind": "eval", "step": 4, "val_loss": 4.7})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "tr')
    truncate_metrics(path, 4)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4, 4]
    assert plot_metrics(path, tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert plot_metrics(tmp_path / "none.jsonl", tmp_path / "none.png") is None


def test_config_files_and_settings(tmp_path):
    (tmp_path / "a.yaml").write_text("lr: 0.001\nmodel:\n  d_model: 64\ntrain:\n  batch_size: 4\n")
    (tmp_path / "b.json").write_text(json.dumps({"attention": "local", "window": 16}))
    train_fields, model_fields = split_settings(read_config_file(tmp_path / "a.yaml"))
    assert train_fields == {"lr": 0.001, "batch_size": 4} and model_fields == {"d_model": 64}
    assert split_settings(read_config_file(tmp_path / "b.json")) == (
        {},
        {"attention": "local", "window": 16},
    )
    with pytest.raises(MusegenError, match="unknown setting"):
        split_settings({"model.lr": 1.0})
    (tmp_path / "bad.yaml").write_text("[1, 2")
    with pytest.raises(MusegenError, match="cannot be parsed"):
        read_config_file(tmp_path / "bad.yaml")


def test_help_documents_multi_node_torchrun(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "torchrun" in text and "--rdzv_endpoint" in text and "--resume" in text


def test_training_keeps_freed_memory_on_glibc():
    from musegen.training.optim import keep_freed_memory

    assert keep_freed_memory() is (sys.platform == "linux")
