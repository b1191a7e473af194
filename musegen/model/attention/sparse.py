"""``sparse``: the ``local`` window plus every ``sparse_stride``-th earlier position within
``max_relative_distance`` (the Sparse Transformer's "fixed" pattern: strided summary keys).

It decodes from a ring of ``window`` keys plus a ring of the summary keys still in reach.
"""

from __future__ import annotations

from musegen.model.attention.kernels import Pattern
from musegen.model.attention.local import check_window
from musegen.model.attention.relative import relative_attention
from musegen.model.attention.spec import AttentionSpec


def check_stride(config) -> None:
    check_window(config)
    if not 0 < config.sparse_stride <= config.window:
        raise ValueError(
            f"attention={config.attention!r} needs 0 < sparse_stride <= window, got "
            f"sparse_stride={config.sparse_stride}, window={config.window}"
        )


SPEC = AttentionSpec(
    name="sparse",
    forward=relative_attention,
    fields=("max_relative_distance", "window", "sparse_stride"),
    check=check_stride,
    pattern=lambda c: Pattern(c.window, c.sparse_stride, c.max_relative_distance),
    has_relative=True,
    flex=True,
    summary="local window plus strided summary keys within max_relative_distance",
)
