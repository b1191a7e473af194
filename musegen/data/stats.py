"""What a prepared corpus holds, counted from its tokens: notes per General MIDI program.

A checkpoint keeps these counts (``config.json``, ``training_programs``), so generation can say
when a prompt's instruments were rare in training and the model card can list the families.
"""

from __future__ import annotations

import numpy as np

from musegen.data.dataset import TokenSplit

FAMILIES = (
    "Piano", "Chromatic percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass",
    "Reed", "Pipe", "Synth lead", "Synth pad", "Synth effects", "Ethnic", "Percussive",
    "Sound effects",
)  # fmt: skip


def program_counts(split: TokenSplit, tokenizer) -> dict[int, int]:
    """Notes per program (-1 = drums) in ``split``: one Program token precedes every note in a
    REMI-with-programs stream. Empty for tokenizers without programs."""
    programs = {i: int(t[8:]) for t, i in tokenizer.vocab.items() if t.startswith("Program_")}
    if not programs or split.num_tokens == 0:
        return {}
    counts = np.bincount(np.asarray(split.tokens), minlength=max(programs) + 1)
    return {p: int(counts[i]) for i, p in sorted(programs.items(), key=lambda x: x[1]) if counts[i]}


def family_shares(counts: dict[int, int]) -> dict[str, float]:
    """Share of training notes per GM family (and "Drums"), largest first."""
    total = sum(counts.values()) or 1
    shares: dict[str, float] = {}
    for program, n in counts.items():
        name = "Drums" if program < 0 else FAMILIES[program // 8]
        shares[name] = shares.get(name, 0.0) + n / total
    return dict(sorted(shares.items(), key=lambda x: -x[1]))
