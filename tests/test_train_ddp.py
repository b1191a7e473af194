"""Two-process DistributedDataParallel training on CPU (gloo), launched by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args, write_midi

from musegen.checkpoint import load_pretrained
from musegen.config import ModelConfig
from musegen.data.dataset import PreparedDataset, WindowSampler
from musegen.data.prepare import PrepareOptions, prepare
from musegen.files import read_jsonl
from musegen.metrics import token_loss
from musegen.model.transformer import MusicTransformer
from musegen.training.config import TrainConfig
from musegen.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
SEED, BATCH, SEQ, ACCUM = 5, 4, 32, 2


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(10):
        write_midi(
            root / "midi" / f"piece{i}.mid", bars=10 + i, tracks=((0, False), (0, True)), seed=i
        )
    prepare(root / "midi", root / "prepared", PrepareOptions(workers=1), progress=False)
    return root / "prepared"


def first_step_loss_per_rank(prepared: Path, model_config: ModelConfig) -> list[float]:
    """The loss of each rank's first accumulated batch under the initial weights."""
    torch.manual_seed(SEED)
    model = MusicTransformer(model_config)
    split = PreparedDataset.open(prepared).split("train")
    losses = []
    for rank in range(2):
        sampler = WindowSampler(split, SEQ, SEED, 0, rank, 2)  # PAD is id 0
        batch = torch.from_numpy(np.concatenate([sampler.next_batch(BATCH) for _ in range(ACCUM)]))
        with torch.no_grad():
            total = token_loss(model(batch[:, :-1]), batch[:, 1:], 0)
        losses.append(float(total) / int((batch[:, 1:] != 0).sum()))
    return losses


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(prepared: Path, tmp_path: Path):
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    flags = dict(preset="tiny", batch_size=BATCH, grad_accum=ACCUM, seq_len=SEQ, max_steps=6)
    flags |= dict(seed=SEED, eval_every=3, save_every=3, log_every=1, eval_windows=6)
    flags |= dict(sample_tokens=8, device="cpu", threads=1, no_augment=True, quiet=True)
    command = [*torchrun, "-m", "musegen", *train_args(prepared, out, **flags)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("musegen train: 6 steps") == 1  # only rank 0 reports

    records = read_jsonl(out / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]  # one writer: no duplicated lines
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    assert [r for r in records if r["kind"] == "train"][-1]["tokens"] == 6 * BATCH * ACCUM * SEQ * 2

    # The logged step-1 loss is the mean over ranks of different accumulated batches.
    run = json.loads((out / "run.json").read_text())
    per_rank = first_step_loss_per_rank(prepared, ModelConfig.from_dict(run["model_config"]))
    assert per_rank[0] != pytest.approx(per_rank[1], abs=1e-4)
    assert records[0]["loss"] == pytest.approx(sum(per_rank) / 2, rel=1e-4)

    state = json.loads((out / "latest" / "train_state" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["ranks"]) == 2 and state["step"] == 6
    latest = load_pretrained(out / "latest")
    assert latest.meta["step"] == 6 and load_pretrained(out / "best").meta["step"] in (3, 6)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_3.mid", "step_6.mid"]

    # A DDP run resumes in one process (windows are drawn afresh, the rest continues).
    config = TrainConfig(
        data=str(prepared),
        out=str(out),
        resume=True,
        max_steps=8,
        device="cpu",
        progress=False,
        **{
            k: run["train_config"][k]
            for k in (
                "preset",
                "batch_size",
                "seq_len",
                "seed",
                "eval_every",
                "save_every",
                "log_every",
                "eval_windows",
                "augment",
            )
        },
    )
    result = train(config)
    assert result.steps == 8
    train_steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    assert train_steps[-2:] == [7, 8]
