"""What a training run shows: ``metrics.jsonl``, the ``loss.png`` learning curve, throughput.

``metrics.jsonl`` holds one JSON object per line (appended with :mod:`musegen.files`):
``{"kind": "train", "step", "loss", "lr", "tokens_per_s", "tokens", "elapsed_s"}`` every
``log_every`` steps and ``{"kind": "eval", "step", "val_loss", "val_ppl", "val_acc",
"elapsed_s"}`` at each evaluation. The plot is drawn with matplotlib's object API on an Agg
canvas, so it needs no display and leaves pyplot's global state (and any other figure in the
process) alone.
"""

from __future__ import annotations

from pathlib import Path

from musegen.files import atomic_path, read_jsonl, write_jsonl_atomic


def truncate_metrics(path: str | Path, step: int) -> None:
    """Drop lines logged after ``step``: a resumed run trains those steps again."""
    path = Path(path)
    if path.is_file():
        write_jsonl_atomic(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step])


class StepWindow:
    """Loss and step time since the last log line: the numbers of the bar and of metrics.jsonl.

    Only time spent inside training steps counts, so evaluation and checkpointing do not lower
    the reported tokens/s.
    """

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.steps, self.seconds = 0.0, 0, 0.0

    def add(self, loss: float, seconds: float) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.seconds += seconds

    @property
    def loss(self) -> float:
        return self.loss_sum / self.steps if self.steps else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.steps * self.tokens_per_step / self.seconds if self.seconds else 0.0

    def postfix(self, lr: float) -> str:
        return f"loss={self.loss:.3f} lr={lr:.2e} tok/s={self.tokens_per_s:,.0f}"


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    """Draw train and validation loss against the step into ``png_path`` (atomically).

    Returns the path, or ``None`` when there is nothing to plot yet.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_jsonl(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"]
    if not train and not val:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(
            *zip(*train, strict=False), label="train", color="tab:blue", linewidth=1.2, alpha=0.8
        )
    if val:
        ax.plot(
            *zip(*val, strict=False),
            label="validation",
            color="tab:orange",
            marker="o",
            markersize=3,
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title("musegen training")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path
