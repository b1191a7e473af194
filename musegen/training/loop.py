"""The training loop: ``train(TrainConfig, ModelConfig) -> TrainResult``, on one CPU or many GPUs.

One code path serves a laptop run and ``torchrun --nproc_per_node=N -m musegen train``: under
torchrun each rank draws its own windows, gradients are averaged by DistributedDataParallel and
only rank 0 writes. The settings are a :class:`~musegen.training.config.TrainConfig`; the run
directory layout and resume logic live in :mod:`musegen.training.state`; device, precision,
optimiser and schedule in :mod:`musegen.training.optim`; metrics and the learning-curve plot in
:mod:`musegen.training.plots`; the objective in :mod:`musegen.metrics`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from musegen import __version__
from musegen.config import ModelConfig, preset
from musegen.data.dataset import Augmentation, WindowSampler, iter_eval_windows
from musegen.data.infill import InfillRearranger, pin_tokens, suffix_budget
from musegen.data.stats import program_counts
from musegen.errors import MusegenError
from musegen.files import append_jsonl, write_json_atomic
from musegen.generation.sampling import AllowedTokens, Stopping, Temperature, sample
from musegen.metrics import evaluate_windows, token_loss
from musegen.model.attention import reach_of
from musegen.model.transformer import MusicTransformer
from musegen.tokenizer import special_id
from musegen.training import lora, optim
from musegen.training import state as ts
from musegen.training.config import TrainConfig
from musegen.training.optim import DistContext, init_distributed
from musegen.training.plots import StepWindow, plot_metrics, truncate_metrics
from musegen.training.warm_start import warm_start

__all__ = ["TrainResult", "TrainingDiverged", "train"]


class TrainingDiverged(MusegenError):
    """The loss or gradient became NaN/inf; the last saved checkpoint is left untouched."""


@dataclass
class TrainResult:
    """What a finished run reached; ``summary()`` is the one line the CLI prints at the end."""

    run_dir: Path
    steps: int
    tokens: int
    elapsed_s: float
    tokens_per_s: float  # this invocation, time inside training steps only
    overall_tokens_per_s: float  # this invocation, wall clock (evaluation, saving included)
    final_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    stopped: str

    @property
    def best_dir(self) -> Path:
        return self.run_dir / ts.BEST

    def summary(self) -> str:
        minutes = self.elapsed_s / 60
        took = f"{minutes:.1f} min" if minutes >= 2 else f"{self.elapsed_s:.0f} s"
        parts = [
            f"{self.steps} steps ({self.stopped})",
            f"{self.tokens / 1e6:.2f}M tokens in {took}",
            f"{self.tokens_per_s:,.0f} tokens/s ({self.overall_tokens_per_s:,.0f} overall)",
        ]
        if self.final_loss is not None:
            parts.append(f"train loss {self.final_loss:.3f}")
        if self.best_val_loss is not None:
            ppl = math.exp(min(self.best_val_loss, 50.0))
            parts.append(
                f"best val loss {self.best_val_loss:.3f} (ppl {ppl:.1f}) at step {self.best_step}"
            )
        return "; ".join(parts) + f" -> {self.best_dir}"


def train(config: TrainConfig, model_config: ModelConfig | None = None) -> TrainResult:
    """Train (or, with ``config.resume``, continue) a model on a prepared corpus.

    ``model_config`` defaults to ``preset(config.preset)``; its ``vocab_size`` always comes from
    the corpus' tokenizer. Under torchrun this joins the process group and leaves it at the end.
    Raises :class:`MusegenError` for every problem a user can fix.
    """
    config.validate()
    ctx = init_distributed(config.device)
    try:
        return _Trainer(config, model_config, ctx).run()
    finally:
        ctx.close()


class _Trainer:
    """One run: built from the config and the run directory, then looped to a stop condition."""

    def __init__(self, config: TrainConfig, model_config: ModelConfig | None, ctx: DistContext):
        if config.warmup_steps is None:  # fixed now, so run.json (and a resume) keeps it
            warmup = optim.warmup_steps_for(None, config.max_steps)
            config = dataclasses.replace(config, warmup_steps=warmup)
        self.cfg, self.ctx, self.device, self.run_dir = config, ctx, ctx.device, Path(config.out)
        self.amp_dtype = optim.configure_precision(ctx.device, config.precision, config.threads)
        self.tokenizer, train_split, val_split = ts.open_prepared(config.data)
        self.pad = special_id(self.tokenizer, "PAD_None")
        self.fingerprint = ts.dataset_fingerprint(config.data)
        saved = ts.check_run_dir(self.run_dir, config, self.fingerprint, ctx)
        if config.infill_memory and (saved is None or model_config is not None):
            # the pinned layout: its sentinels become the pin tokens (a resume keeps the stored)
            base = model_config or preset(config.preset)
            model_config = base.with_overrides(pin_tokens=pin_tokens(self.tokenizer))
        self.model_config = ts.resolve_model_config(
            saved, model_config, config.preset, len(self.tokenizer), config.seq_len
        )
        self.seq_len = config.seq_len or self.model_config.max_seq_len
        self._check_sizes(train_split)
        self.tokens_per_step = config.batch_size * self.seq_len * config.grad_accum * ctx.world_size
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        try:  # the attention kind validates the fields it reads
            self.raw = MusicTransformer(self.model_config).to(self.device)
        except ValueError as exc:
            raise MusegenError(f"invalid model setting: {exc}") from None
        if config.init_from and (saved is None or config.lora_rank):  # LoRA: the frozen base
            self._say(warm_start(self.raw, self.tokenizer, config.init_from))
        if config.lora_rank:
            lora.check_same_vocabulary(self.tokenizer, config.init_from)
            self._say(lora.apply_lora(self.raw, config.lora_rank, config.lora_alpha))
        torch.manual_seed(config.seed + ctx.rank)  # same init everywhere, own dropout per rank
        self.optimizer = optim.build_optimizer(
            self.raw, config.lr, config.weight_decay, config.betas, self.device
        )
        self.sampler = self._make_sampler(train_split, config.seed)
        self.training_programs = program_counts(train_split, self.tokenizer)
        self.val_windows = self._val_windows(val_split)
        ts.create_run_dir(self.run_dir, config, ctx)  # only now that the inputs are known good
        self.step = self.tokens = self.last_save = self.last_eval = 0
        self.elapsed_before, self.lr, self.last_loss = 0.0, config.lr, None
        self.best_val: float | None = None
        self.best_step: int | None = None
        if saved is not None:
            self._restore(train_split)
        if ctx.is_main:
            write_json_atomic(self.run_dir / ts.RUN_FILE, ts.to_jsonable(self._run_record()))
        self.model = self._wrap(self.raw)
        self.window = StepWindow(self.tokens_per_step)

    # --- setup -----------------------------------------------------------------------------------
    def _check_sizes(self, train_split: Any) -> None:
        if self.seq_len > self.model_config.max_seq_len:
            raise MusegenError(
                f"seq_len {self.seq_len} exceeds the model's max_seq_len "
                f"{self.model_config.max_seq_len}; lower --seq-len"
            )
        if train_split.num_tokens < self.seq_len + 1:
            raise MusegenError(
                f"the train split has {train_split.num_tokens} tokens, fewer than one window of "
                f"seq_len + 1 = {self.seq_len + 1}; lower --seq-len or prepare more MIDI"
            )

    def _make_sampler(self, split: Any, seed: int) -> Any:
        cfg, augmentation = self.cfg, None
        if cfg.augment and self.tokenizer.is_trained:
            self._say("augmentation is off: it needs base tokens and this tokenizer uses BPE")
        elif cfg.augment:
            augmentation = Augmentation(
                self.tokenizer,
                cfg.transpose,
                cfg.velocity_shift,
                cfg.tempo_shift,
                cfg.program_within,
                cfg.program_across,
            )
        infill = None
        if cfg.infill_rate:
            budget = suffix_budget(reach_of(self.model_config))
            infill = InfillRearranger(
                self.tokenizer,
                cfg.infill_rate,
                suffix_tokens=budget,
                prefix_drop=cfg.infill_prefix_drop,
                pinned=self.model_config.pin_tokens is not None,
            )
        return WindowSampler(
            split,
            self.seq_len,
            seed,
            self.pad,
            self.ctx.rank,
            self.ctx.world_size,
            augmentation,
            infill,
        )

    def _val_windows(self, split: Any) -> np.ndarray | None:
        """This rank's share of the fixed validation windows (ranks split them, then sum)."""
        if split is None or self.cfg.eval_windows == 0:
            return None
        rows = list(iter_eval_windows(split, self.seq_len, self.pad, self.cfg.eval_windows))
        if not rows:
            return None
        return np.stack(rows)[self.ctx.rank :: self.ctx.world_size]

    def _restore(self, train_split: Any) -> None:
        """Load weights, optimiser, counters, sampler and RNG state from ``latest``."""
        ctx, state = self.ctx, ts.load_resume_state(self.run_dir, self.fingerprint)
        if state is None:
            self._say(f"{self.run_dir} has no checkpoint yet: starting again from step 0")
        else:
            lora.load_run_weights(self.raw, self.run_dir / ts.LATEST)
            meta = state.meta
            optim.optimizer_from_tensors(self.optimizer, state.optimizer_tensors, meta["optimizer"])
            self.step = self.last_save = state.step
            self.last_eval = int(meta.get("last_eval", 0))
            self.tokens, self.elapsed_before = int(meta["tokens"]), float(meta["elapsed_s"])
            self.best_val, self.best_step = meta.get("best_val_loss"), meta.get("best_step")
            ranks = meta["ranks"]
            if len(ranks) == ctx.world_size:
                self.sampler.load_state_dict(ranks[ctx.rank]["sampler"])
                ts.restore_rng({**ranks[ctx.rank], **state.rank_tensors[ctx.rank]}, self.device)
            else:
                self._say(
                    f"resuming on {ctx.world_size} processes (saved with {len(ranks)}): "
                    "training windows are drawn afresh"
                )
                self.sampler = self._make_sampler(train_split, self.cfg.seed + 7919 * self.step)
            self._say(f"resuming {self.run_dir} from step {self.step}")
        if ctx.is_main:
            truncate_metrics(self.run_dir / ts.METRICS_FILE, self.step)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.cfg.compile:
            model = torch.compile(model)
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model

    def _run_record(self) -> dict[str, Any]:
        return {
            "musegen_version": __version__,
            "train_config": self.cfg.to_dict(),
            "model_config": self.model_config.to_dict(),
            "fingerprint": self.fingerprint,
            "data": str(Path(self.cfg.data).resolve()),
        }

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, self.t0, self.step_seconds = self.cfg, time.monotonic(), 0.0
        start_tokens, stopped = self.tokens, "max_steps"
        show = self.ctx.is_main and cfg.progress
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            disable=not show,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        try:
            while self.step < cfg.max_steps:
                out_of_time = self._timed_step()
                bar.update(1)
                bar.set_postfix_str(self.window.postfix(self.lr), refresh=False)
                if cfg.log_every and self.step % cfg.log_every == 0:
                    self._log_train()
                if self.step % cfg.eval_every == 0:
                    self._evaluate_and_keep_best()
                if self.step % cfg.save_every == 0:
                    self._save_latest()
                if out_of_time:
                    stopped = "max_minutes"
                    break
            self._finish()
        finally:
            bar.close()
        elapsed = time.monotonic() - self.t0
        return TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            tokens=self.tokens,
            elapsed_s=self.elapsed_before + elapsed,
            tokens_per_s=(self.tokens - start_tokens) / max(self.step_seconds, 1e-9),
            overall_tokens_per_s=(self.tokens - start_tokens) / max(elapsed, 1e-9),
            final_loss=self.last_loss,
            best_val_loss=self.best_val,
            best_step=self.best_step,
            stopped=stopped,
        )

    def _timed_step(self) -> bool:
        """One optimiser step; returns whether the time budget is spent (agreed by all ranks)."""
        started = time.perf_counter()
        try:
            loss, out_of_time = self._train_step()
        except Exception as exc:
            if optim.is_oom(exc):
                cfg = self.cfg
                message = optim.oom_message(cfg.batch_size, cfg.grad_accum, self.seq_len)
                raise MusegenError(message) from None
            raise
        self.step += 1
        self.tokens += self.tokens_per_step
        self.last_loss = loss
        seconds = time.perf_counter() - started
        self.step_seconds += seconds
        self.window.add(loss, seconds)
        return out_of_time

    def _train_step(self) -> tuple[float, bool]:
        cfg, ctx = self.cfg, self.ctx
        batches = [self.sampler.next_batch(cfg.batch_size) for _ in range(cfg.grad_accum)]
        # Normalise by the real (non-PAD) targets of the whole accumulated batch.
        count = max(1, sum(int(np.count_nonzero(b[:, 1:] != self.pad)) for b in batches))
        self.lr = optim.lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        optim.set_lr(self.optimizer, self.lr)
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            x = torch.from_numpy(batch).to(self.device)
            defer_sync = ctx.enabled and i < len(batches) - 1
            with self.model.no_sync() if defer_sync else nullcontext():
                with self._autocast():
                    logits = self.model(x[:, :-1])
                loss = token_loss(logits, x[:, 1:], self.pad) / count
                aux = self.raw.auxiliary_loss()  # ponder cost, span penalty (not reported)
                (loss if aux is None else loss + aux / len(batches)).backward()
            total += loss.detach()
        flags = torch.stack([total, torch.tensor(float(self._out_of_time()), device=self.device)])
        loss_sum, late = ctx.all_reduce_sum(flags).tolist()
        loss_value = loss_sum / ctx.world_size
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm))
        if not (math.isfinite(loss_value) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(self._diverged_message(loss_value, norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, late > 0

    def _diverged_message(self, loss: float, norm: float) -> str:
        kept = (
            f"the last good checkpoint is {self.run_dir / ts.LATEST} (step {self.last_save})"
            if self.last_save
            else "no checkpoint had been saved yet"
        )
        return (
            f"training stopped at step {self.step + 1}: the loss became non-finite (loss "
            f"{loss}, gradient norm {norm}); {kept}. Lower --lr or raise --set warmup_steps=N"
        )

    def _out_of_time(self) -> bool:
        limit = self.cfg.max_minutes
        return bool(limit) and time.monotonic() - self.t0 > limit * 60

    def _autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t0

    # --- what the run leaves behind ----------------------------------------------------------
    def _log_train(self) -> None:
        if self.window.steps:
            record = {"kind": "train", "step": self.step, "loss": self.window.loss, "lr": self.lr}
            record.update(tokens_per_s=self.window.tokens_per_s, tokens=self.tokens)
            self._write_metrics(record)
        self.window.reset()

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            append_jsonl(self.run_dir / ts.METRICS_FILE, {**record, "elapsed_s": self._elapsed()})

    def _say(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(f"musegen train: {message}", file=sys.stderr)

    def _evaluate_and_keep_best(self) -> None:
        """Validation metrics (ranks share the windows), best checkpoint, plot and sample."""
        self.last_eval = self.step
        if self.val_windows is None:
            return
        sums = evaluate_windows(
            self.raw, self.val_windows, self.pad, self.cfg.batch_size, self._autocast
        )
        loss_sum, correct, count = self.ctx.all_reduce_sum(sums).tolist()
        if not count:
            return
        loss = loss_sum / count
        record = {"kind": "eval", "step": self.step, "val_loss": loss}
        record.update(val_ppl=math.exp(min(loss, 50.0)), val_acc=correct / count)
        self._write_metrics(record)
        if self.best_val is None or loss < self.best_val:
            self.best_val, self.best_step = loss, self.step
            if self.ctx.is_main:
                ts.replace_checkpoint(self.run_dir, ts.BEST, lambda d: self._save_model(d, record))
        if self.ctx.is_main:
            plot_metrics(self.run_dir / ts.METRICS_FILE, self.run_dir / "loss.png")
            self._write_sample()
        self._say(
            f"step {self.step}: val loss {loss:.4f}, ppl {record['val_ppl']:.2f}, "
            f"accuracy {record['val_acc']:.3f}"
        )

    def _save_model(self, directory: Path, extra: dict[str, Any]) -> None:
        facts = {
            "step": self.step,
            "tokens": self.tokens,
            "dataset_fingerprint": self.fingerprint,
            "training_programs": self.training_programs,  # for generation's honest limits
        }
        extra = ts.to_jsonable(facts | extra)
        lora.save_run_model(self.raw, self.tokenizer, directory, extra, self.cfg.init_from)

    def _save_latest(self) -> None:
        """``latest``: the checkpoint plus every rank's sampler and RNG state, swapped in whole."""
        rank_state = {"sampler": self.sampler.state_dict(), **ts.capture_rng(self.device)}
        states = self.ctx.gather(rank_state)
        if self.ctx.is_main:
            tensors, optimizer_meta = optim.optimizer_to_tensors(self.optimizer)
            meta = {"step": self.step, "tokens": self.tokens, "elapsed_s": self._elapsed()}
            meta.update(best_val_loss=self.best_val, best_step=self.best_step)
            meta.update(last_eval=self.last_eval, fingerprint=self.fingerprint)
            meta.update(world_size=self.ctx.world_size, optimizer=optimizer_meta)

            def write(directory: Path) -> None:
                self._save_model(directory, {"train_loss": self.last_loss})
                ts.write_train_state(directory, meta, tensors, states)

            ts.replace_checkpoint(self.run_dir, ts.LATEST, write)
        self.last_save = self.step
        self.ctx.barrier()

    def _finish(self) -> None:
        """Final evaluation and save unless this step just had them; without val, best = final."""
        if self.step != self.last_eval:
            self._evaluate_and_keep_best()
        if self.step != self.last_save:
            self._save_latest()
        if self.val_windows is None and self.ctx.is_main and self.step:
            extra = {"val_loss": None}
            ts.replace_checkpoint(self.run_dir, ts.BEST, lambda d: self._save_model(d, extra))

    def _write_sample(self) -> None:
        """A short sample at this step, so a user can listen to progress; never stops training."""
        if not self.cfg.sample_tokens:
            return
        tok = self.tokenizer
        allowed = torch.arange(self.model_config.vocab_size) < len(tok)
        allowed[list(tok.special_tokens_ids)] = False
        bos, eos = special_id(tok, "BOS_None"), special_id(tok, "EOS_None")
        allowed[eos] = True
        processors = [AllowedTokens(allowed), Temperature(self.cfg.sample_temperature)]
        stopping = Stopping(max_new_tokens=self.cfg.sample_tokens, eos_id=eos)
        seeds = [self.cfg.seed + self.step]
        self.raw.eval()
        try:
            ids = sample(self.raw, [[bos]], processors, stopping, seeds, pad_id=self.pad)[0]
            ts.write_sample(self.run_dir, self.step, ids, tok)
        except Exception as exc:  # a courtesy file: a decoding problem is reported, not fatal
            self._say(f"sample at step {self.step} not saved ({type(exc).__name__}: {exc})")
        finally:
            self.raw.train()
