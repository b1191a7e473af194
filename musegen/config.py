"""The model's shape as a dataclass that travels as ``config.json`` beside the weights.

Impossible combinations fail early with a message that names the options, instead of deep
inside a forward pass: the shape here, when the config is built; the fields an attention kind
reads, by the kind's spec when the model is built (the kinds live in :mod:`musegen.model`, a
later stage than this shared module, so ``attention`` is only a name here).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from musegen.errors import MusegenError

# How attention is computed: plain torch everywhere, or FlexAttention (CUDA only, fused).
ATTENTION_BACKENDS = ("torch", "flex")


@dataclass
class ModelConfig:
    """Shape of a :class:`musegen.model.transformer.MusicTransformer`.

    ``max_seq_len`` is the longest context seen in training (and the absolute-position table
    size). ``attention`` names a kind registered in :mod:`musegen.model.attention`, which says
    which of the other fields it reads and validates them when the model is built (an unknown
    name is refused there, with the kinds this version knows): ``relative`` attention clips
    distances at ``max_relative_distance``; ``local`` and ``sparse`` attend to the last
    ``window`` tokens, and ``sparse`` also to every ``sparse_stride``-th earlier position (the
    Sparse Transformer's "summary" columns).
    """

    vocab_size: int = 512
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 8
    d_ff: int = 1024
    dropout: float = 0.1
    max_seq_len: int = 1024
    attention: str = "relative"
    max_relative_distance: int = 1024
    window: int = 256
    sparse_stride: int = 128
    tie_embeddings: bool = True
    attention_backend: str = "torch"
    # Width of one attention head; None: d_model // n_heads. A head-pruned model keeps its
    # heads' width with fewer heads (musegen prune --structured heads).
    head_size: int | None = None
    # universal: a token stops pondering once its halting probabilities pass act_threshold;
    # ponder_cost weighs the ACT ponder term (depth used + remainder) in the training loss
    act_threshold: float = 0.99
    ponder_cost: float = 0.01
    # feedback: positions per chunk that train in parallel (1: the exact sequential model)
    feedback_chunk: int = 1

    # linformer: keys/values of each block of linformer_block tokens are projected to
    # linformer_rank summary rows; a query sees its own block plus the earlier blocks' summaries
    linformer_block: int = 64
    linformer_rank: int = 8
    # adaptive_span: learned span per head up to adaptive_span_max tokens, a soft ramp of
    # adaptive_span_ramp tokens, adaptive_span_loss × mean span added to the training loss
    adaptive_span_max: int = 128
    adaptive_span_ramp: int = 32
    adaptive_span_loss: float = 2e-6
    # routing: queries/keys clustered by online k-means into routing_clusters (plus `window`)
    routing_clusters: int = 4
    # synthesizer: "dense" (per-token MLP over positions) or "random" (learned, factorised)
    synthesizer_mode: str = "dense"
    # entmax: α of α-entmax in place of softmax (1.5: entmax15, 2: sparsemax)
    entmax_alpha: float = 1.5
    # Pinned keys (banded kinds: local, sparse): token ids [open, close]; the tokens from an
    # `open` through the next `close` stay visible to every later token, beyond the window, as
    # Longformer's global tokens. The infilling layout pins the right side and the kept tracks
    # this way, so they do not compete with the left side for the window (data/infill.py).
    pin_tokens: list[int] | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_heads

    @property
    def attn_dim(self) -> int:
        """Width of the attention's queries, keys and values (all heads): d_model unless the
        heads were pruned."""
        return self.n_heads * self.head_dim

    def validate(self) -> None:
        """Raise ``ValueError`` naming the options when the combination cannot work."""
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if not isinstance(self.attention, str) or not self.attention:
            raise ValueError(f"ModelConfig.attention must name a kind, got {self.attention!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"ModelConfig.attention_backend={self.attention_backend!r} is not one of "
                f"{ATTENTION_BACKENDS}"
            )
        if self.head_size is not None and self.head_size <= 0:
            raise ValueError(f"ModelConfig.head_size must be positive, got {self.head_size}")
        if self.head_size is None and self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.pin_tokens is not None:
            ids = list(self.pin_tokens)
            if (
                len(ids) != 2
                or ids[0] == ids[1]
                or not all(0 <= int(i) < self.vocab_size for i in ids)
            ):
                raise ValueError(
                    f"ModelConfig.pin_tokens must be two different token ids [open, close] below "
                    f"vocab_size={self.vocab_size}, got {self.pin_tokens!r}"
                )
            self.pin_tokens = [int(i) for i in ids]

    # --- JSON round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MusegenError(f"unknown model config field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise MusegenError(f"invalid model config: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_overrides(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **overrides)


# Presets: ``tiny`` for tests (thousands of parameters), ``small`` trains on a laptop CPU
# (the benchmark shape: 6 layers, d_model 256, 8 heads), ``base`` wants a GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=64,
        dropout=0.0,
        max_seq_len=128,
        max_relative_distance=128,
        window=32,
        sparse_stride=16,
    ),
    "small": dict(
        d_model=256,
        n_layers=6,
        n_heads=8,
        d_ff=1024,
        dropout=0.1,
        max_seq_len=1024,
        max_relative_distance=1024,
        window=256,
        sparse_stride=128,
    ),
    "base": dict(
        d_model=512,
        n_layers=8,
        n_heads=8,
        d_ff=2048,
        dropout=0.1,
        max_seq_len=2048,
        max_relative_distance=2048,
        window=512,
        sparse_stride=256,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a named preset, with any field overridden."""
    if name not in PRESETS:
        raise MusegenError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
