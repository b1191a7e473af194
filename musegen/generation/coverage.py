"""Honest limits: which of a prompt's instruments the model barely saw in training.

A model that never heard a tuba continues a tuba part badly or not at all; saying so beats
returning empty bars silently. The counts come from the checkpoint (``training_programs``);
checkpoints without them make no claim.
"""

from __future__ import annotations

from musegen.tokenizer import instrument_name

# Below this share of the training notes in its GM family (drums: its own), an instrument
# counts as barely seen. Families, not programs: training remaps programs within a family.
RARE_SHARE = 0.005


def rare_programs(programs: set[int], meta: dict) -> list[int]:
    """The prompt programs (-1 = drums) that are rare in the checkpoint's training data."""
    raw = meta.get("training_programs")
    if not isinstance(raw, dict) or not raw:
        return []
    counts = {int(p): int(n) for p, n in raw.items()}
    total = sum(counts.values()) or 1
    family: dict[int, int] = {}
    for p, n in counts.items():
        key = -1 if p < 0 else p // 8
        family[key] = family.get(key, 0) + n
    return [
        p for p in sorted(programs) if family.get(-1 if p < 0 else p // 8, 0) / total < RARE_SHARE
    ]


def coverage_warning(programs: set[int], meta: dict) -> str | None:
    """One line naming the rare instruments, or None."""
    rare = rare_programs(programs, meta)
    if not rare:
        return None
    names = ", ".join(instrument_name(p) for p in rare)
    return (
        f"this model saw little or no {names} in training: expect weak or empty parts for "
        "them (try another instrument, or fine-tune on music that has them)"
    )
