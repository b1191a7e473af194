"""Attention kinds: a registry of :class:`AttentionSpec` keyed by ``ModelConfig.attention``.

Each kind is one module in this package that declares ``SPEC``; adding a kind is writing that
module and adding it to the import below (plus its test). The model, the config and the
sampler call :func:`get_kind` and ask the spec; nothing outside this package compares a kind's
name (``tests/test_attention_registry.py`` enforces it). Kinds made elsewhere (tests,
experiments) call :func:`register` themselves.
"""

from __future__ import annotations

from musegen.model.attention import (
    absolute,
    adaptive_span,
    entmax,
    feedback,
    linformer,
    local,
    relative,
    routing,
    sparse,
    synthesizer,
    universal,
)
from musegen.model.attention.kernels import (
    AttnContext,
    Pattern,
    additive_mask,
    inference_kernels,
    init_scale,
    skewed_band_bias,
)
from musegen.model.attention.spec import AttentionFn, AttentionSpec

_KINDS: dict[str, AttentionSpec] = {}


class UnknownAttentionError(ValueError):
    """``ModelConfig.attention`` names no registered kind."""


def register(spec: AttentionSpec, replace: bool = False) -> AttentionSpec:
    """Make ``spec`` selectable by its name; a name already taken needs ``replace=True``."""
    if spec.name in _KINDS and not replace:
        raise ValueError(f"attention kind {spec.name!r} is already registered")
    _KINDS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forget a kind (for tests and experiments that registered their own)."""
    _KINDS.pop(name, None)


def get_kind(name: str) -> AttentionSpec:
    """The spec registered under ``name``; ``ValueError`` naming it and the known kinds."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise UnknownAttentionError(
            f"ModelConfig.attention={name!r} is not a known attention kind "
            f"(this version knows: {', '.join(_KINDS)})"
        ) from None


def reach_of(config) -> int | None:
    """How many tokens back a model of ``config`` sees; ``None``: its whole context."""
    return get_kind(config.attention).bounded_reach(config)


def kind_names() -> tuple[str, ...]:
    """Every registered kind, built-in ones first."""
    return tuple(_KINDS)


for _module in (absolute, relative, local, sparse):
    register(_module.SPEC)
for _module in (universal, feedback):  # model-structure kinds: they bring their own stack
    register(_module.SPEC)
for _module in (linformer, adaptive_span, routing, synthesizer, entmax):  # own modules
    register(_module.SPEC)

__all__ = [
    "AttentionFn",
    "AttentionSpec",
    "AttnContext",
    "Pattern",
    "UnknownAttentionError",
    "additive_mask",
    "get_kind",
    "inference_kernels",
    "init_scale",
    "kind_names",
    "reach_of",
    "register",
    "skewed_band_bias",
    "unregister",
]
