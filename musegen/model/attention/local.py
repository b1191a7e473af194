"""``local``: relative attention over the last ``window`` tokens (a causal band).

Its reach is bounded, so it decodes from a ring cache of ``window`` keys: memory and time per
token stay constant however long the piece grows.
"""

from __future__ import annotations

from musegen.model.attention.kernels import Pattern
from musegen.model.attention.relative import relative_attention
from musegen.model.attention.spec import AttentionSpec


def check_window(config) -> None:
    if config.window <= 0:
        raise ValueError(f"attention={config.attention!r} needs window > 0")
    if config.window > config.max_relative_distance:
        raise ValueError(
            f"window={config.window} exceeds max_relative_distance="
            f"{config.max_relative_distance}: positions inside the window would share "
            "a clipped relative embedding; raise max_relative_distance or shrink window"
        )


SPEC = AttentionSpec(
    name="local",
    forward=relative_attention,
    fields=("max_relative_distance", "window"),
    check=check_window,
    pattern=lambda c: Pattern(band=c.window, horizon=c.max_relative_distance),
    has_relative=True,
    flex=True,
    summary="relative attention over the last `window` tokens (constant memory per token)",
)
