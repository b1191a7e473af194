"""The transformer, its attention kinds, KV caches and the decode-time linear layer."""

from musegen.config import ModelConfig
from musegen.model.transformer import MusicTransformer

__all__ = ["ModelConfig", "MusicTransformer"]
