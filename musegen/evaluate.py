"""``musegen evaluate``: how good is a checkpoint, in numbers.

Two families of figures: likelihood (NLL per token and perplexity on a split, and per evaluation
group where a prepared dataset's manifest records one for its files) and continuations
of held-out prompts (first k bars → next m bars), generated with and without the grammar
constraint and compared with the real continuation (token errors, pitch-class histogram
distance, note-density ratio, pitch-class entropy, groove consistency) plus a memorization
check (the longest run a sample shares with the training split).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import symusic
import torch
from tqdm.auto import tqdm

from musegen import metrics
from musegen.data.dataset import MANIFEST, PreparedDataset, TokenSplit, iter_eval_windows
from musegen.errors import MusegenError
from musegen.generation.settings import DEFAULT_TOP_P
from musegen.tokenizer import decode, encode, load_score, load_tokenizer, special_id


@dataclass
class EvalSettings:
    split: str = "test"
    max_windows: int | None = 256
    seq_len: int | None = None  # default: the model's max_seq_len
    batch_size: int = 8
    num_prompts: int = 20
    prompt_bars: int = 4
    continuation_bars: int = 4
    temperature: float = 1.0
    top_p: float = DEFAULT_TOP_P
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


# --- the data under test -------------------------------------------------------------------------
@dataclass
class _Corpus:
    split: TokenSplit  # documents (BOS … EOS) in the checkpoint's tokenizer
    train_tokens: np.ndarray | None  # for the memorization check (prepared datasets only)
    source: str
    # evaluation group → document indices of ``split`` (prepared datasets with corpus.json groups)
    groups: dict[str, list[int]] = field(default_factory=dict)


def load_corpus(data: Path, split: str, tokenizer) -> _Corpus:
    """A prepared dataset's split, or every MIDI file under a plain folder."""
    if (data / MANIFEST).is_file():
        dataset = PreparedDataset.open(data)
        if load_tokenizer(dataset.tokenizer_path).vocab != tokenizer.vocab:
            raise MusegenError(
                f"{data} was prepared with a different tokenizer than the checkpoint's: "
                "pass the folder of MIDI files instead, it will be tokenized with the right one"
            )
        chosen = dataset.split(split)
        if chosen.num_docs == 0:
            raise MusegenError(f"split {split!r} of {data} is empty; choose another with --split")
        train = dataset.split("train")
        groups = dataset.documents_by_group(split)
        # train tokens stay a memmap, read when needed
        return _Corpus(chosen, train.tokens, f"{data} [{split}]", groups)
    if not data.is_dir():
        raise MusegenError(f"--data {data} is neither a prepared dataset nor a folder")
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise MusegenError(f"no .mid/.midi files under {data}")
    bos, eos = special_id(tokenizer, "BOS_None"), special_id(tokenizer, "EOS_None")
    docs = []
    for path in files:
        try:
            ids = encode(tokenizer, load_score(path))
        except MusegenError:
            continue
        if ids:
            docs.append(np.array([bos, *ids, eos], dtype=np.int64))
    if not docs:
        raise MusegenError(f"none of the MIDI files under {data} could be tokenized")
    offsets = np.cumsum([0, *(len(d) for d in docs)], dtype=np.int64)
    return _Corpus(TokenSplit(str(data), np.concatenate(docs), offsets), None, str(data))


# --- likelihood ----------------------------------------------------------------------------------
def likelihood(
    model, split: TokenSplit, settings: EvalSettings, pad_id: int, desc: str = "NLL"
) -> dict[str, float]:
    """NLL per token, perplexity and accuracy over non-overlapping windows of ``split``.

    The windows (:func:`musegen.data.dataset.iter_eval_windows`) and the sums
    (:func:`musegen.metrics.evaluate_windows`) are the ones validation uses during training.
    """
    seq_len = settings.seq_len or model.config.max_seq_len
    windows = list(iter_eval_windows(split, seq_len, pad_id, settings.max_windows))
    sums = torch.zeros(3, dtype=torch.float64)
    bar = tqdm(total=len(windows), desc=desc, unit="win", disable=not settings.progress)
    chunk = settings.batch_size * 8  # a progress update every few batches
    for i in range(0, len(windows), chunk):
        part = np.stack(windows[i : i + chunk])
        sums += metrics.evaluate_windows(
            model, part, pad_id, settings.batch_size, nullcontext
        ).cpu()
        bar.update(len(part))
    bar.close()
    loss, correct, total_tokens = sums.tolist()
    if not total_tokens:
        raise MusegenError("the evaluation split holds no tokens")
    nll = loss / total_tokens
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "token_accuracy": correct / total_tokens,
        "tokens": int(total_tokens),
        "windows": len(windows),
    }


def likelihood_by_group(
    model, corpus: _Corpus, settings: EvalSettings, pad_id: int
) -> dict[str, dict[str, float]]:
    """NLL per evaluation group: :func:`likelihood` over each group's documents alone (the same
    windows as a split holding only them; ``max_windows`` caps each group)."""
    out = {}
    for group, indices in corpus.groups.items():
        part = corpus.split.select(indices, f"{corpus.split.name}:{group}")
        if not part.num_tokens:
            continue
        like = likelihood(model, part, settings, pad_id, desc=f"NLL {group}")
        out[group] = {
            "nll": like["nll"],
            "ppl": like["perplexity"],
            "tokens": like["tokens"],
            "windows": like["windows"],
        }
    return out


# --- continuations -------------------------------------------------------------------------------
def token_error_rate(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> float:
    """miditok's error ratio over the new tokens only, judged in the context of the prompt."""
    if not new_ids:
        return 0.0
    full = list(prompt_ids) + list(new_ids)
    errors_full = tokenizer.tokens_errors(full) * len(full)
    errors_prompt = tokenizer.tokens_errors(list(prompt_ids)) * len(prompt_ids) if prompt_ids else 0
    return max(0.0, errors_full - errors_prompt) / len(new_ids)


def _split_bars(
    score: symusic.Score, k: int, m: int
) -> tuple[symusic.Score, symusic.Score, int] | None:
    """The first ``k`` bars, the next ``m`` (moved to time 0) and the bar length in ticks."""
    bar = metrics.bar_length(score)
    if score.end() < (k + m) * bar:
        return None
    prompt = score.clip(0, k * bar, clip_end=True)
    # from time 0, as the generated continuation is: bars k… of the piece are its bars 0…
    real = score.clip(k * bar, (k + m) * bar, clip_end=True).shift_time(-k * bar)
    if not prompt.note_num() or not real.note_num():
        return None
    return prompt, real, bar


def continuations(pipeline, corpus: _Corpus, settings: EvalSettings) -> dict:
    tokenizer = pipeline.tokenizer
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(corpus.split.num_docs)
    pairs = []
    for index in order:
        try:
            score = decode(tokenizer, corpus.split.document(int(index)).tolist())
        except Exception:
            continue
        split = _split_bars(score, settings.prompt_bars, settings.continuation_bars)
        if split:
            pairs.append(split)
        if len(pairs) >= settings.num_prompts:
            break
    if not pairs:
        raise MusegenError(
            f"no held-out piece is longer than {settings.prompt_bars + settings.continuation_bars}"
            " bars; lower --prompt-bars/--continuation-bars"
        )
    memo = metrics.SharedRunIndex(corpus.train_tokens) if corpus.train_tokens is not None else None
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(float(value))

    bar = tqdm(total=len(pairs) * 2, desc="continuations", disable=not settings.progress)
    for i, (prompt, real, bar_len) in enumerate(pairs):
        for constrained in (True, False):
            result = pipeline.continue_midi(
                prompt,
                num_samples=1,
                bars=settings.continuation_bars,
                seed=settings.seed + i,
                temperature=settings.temperature,
                top_p=settings.top_p,
                constrained=constrained,
            )[0]
            tag = "constrained" if constrained else "unconstrained"
            add(
                f"token_error_rate_{tag}",
                token_error_rate(tokenizer, result.prompt_ids, result.tokens),
            )
            bar.update(1)
            if not constrained:
                continue
            generated = result.continuation
            add(
                "pitch_class_histogram_distance",
                metrics.histogram_distance(
                    metrics.pitch_class_histogram(generated), metrics.pitch_class_histogram(real)
                ),
            )
            real_density = metrics.notes_per_bar(real, 0, settings.continuation_bars * bar_len)
            gen_density = generated.note_num() / max(1, settings.continuation_bars)
            if real_density:
                add("note_density_ratio", gen_density / real_density)
            add("pitch_class_entropy_generated", metrics.pitch_class_entropy(generated))
            add("pitch_class_entropy_real", metrics.pitch_class_entropy(real))
            add("groove_consistency_generated", metrics.groove_consistency(generated))
            add("groove_consistency_real", metrics.groove_consistency(real))
            if memo is not None and result.tokens:
                add("longest_shared_run_tokens", memo.longest_run(np.asarray(result.tokens)))
    bar.close()
    summary = {name: float(np.mean(values)) for name, values in rows.items()}
    if "longest_shared_run_tokens" in rows:
        summary["longest_shared_run_tokens_max"] = float(max(rows["longest_shared_run_tokens"]))
    summary["prompts"] = len(pairs)
    return summary


def evaluate(checkpoint: str | Path | None, data: str | Path, settings: EvalSettings) -> dict:
    """Every figure of ``musegen evaluate`` as one JSON-able dict (deterministic given the seed)."""
    from musegen.pipeline import Pipeline

    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    pipeline = Pipeline.from_pretrained(checkpoint, device=settings.device)
    tokenizer = pipeline.tokenizer
    corpus = load_corpus(Path(data), settings.split, tokenizer)
    pad_id = special_id(tokenizer, "PAD_None")
    report = {
        "checkpoint": str(pipeline.checkpoint_dir),
        "data": corpus.source,
        "settings": asdict(settings),
        "likelihood": likelihood(pipeline.model, corpus.split, settings, pad_id),
        "nll_by_group": likelihood_by_group(pipeline.model, corpus, settings, pad_id),
    }
    if settings.num_prompts > 0:
        report["continuations"] = continuations(pipeline, corpus, settings)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def format_report(report: dict) -> str:
    """A small human-readable table of the figures."""
    lines = [f"checkpoint: {report['checkpoint']}", f"data:       {report['data']}"]
    for section in ("likelihood", "continuations"):
        for key, value in report.get(section, {}).items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"  {key:<36} {shown}")
        if section == "likelihood" and report.get("nll_by_group"):
            lines.append(
                f"  {'nll by group':<18} {'nll':>8} {'ppl':>9} {'tokens':>10} {'windows':>8}"
            )
            for group, g in report["nll_by_group"].items():
                lines.append(
                    f"    {group:<16} {g['nll']:>8.4f} {g['ppl']:>9.3f} {g['tokens']:>10} "
                    f"{g['windows']:>8}"
                )
    return "\n".join(lines)
