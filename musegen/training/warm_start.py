"""Start a run from a trained checkpoint's weights (``musegen train --init-from CHECKPOINT``).

The new model must have the checkpoint's shape. Its vocabulary may only add tokens to the
checkpoint's (e.g. the infilling sentinels): embedding rows are matched by token *name*, so ids
that moved keep their meaning and the added tokens start from the fresh initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from musegen.checkpoint import load_pretrained
from musegen.errors import MusegenError
from musegen.model.transformer import MusicTransformer

EMBEDDING = "tok_emb.weight"


def vocabulary_rows(old: dict[str, int], new: dict[str, int], source: Path) -> dict[int, int]:
    """``{new id: old id}`` for every token of the old vocabulary; refuses a foreign one."""
    lost = sorted(set(old) - set(new))
    if lost:
        raise MusegenError(
            f"{source} was trained with another tokenizer ({len(lost)} of its tokens, e.g. "
            f"{lost[0]!r}, are not in this corpus's vocabulary): prepare the corpus with "
            f"`musegen prepare SRC OUT --tokenizer-from {source}`"
        )
    return {new[token]: i for token, i in old.items()}


@torch.no_grad()
def warm_start(model: MusicTransformer, tokenizer, source: str | Path) -> str:
    """Copy ``source``'s weights into ``model``; returns a one-line summary for the log."""
    source = Path(source)
    loaded = load_pretrained(source)
    rows = vocabulary_rows(loaded.tokenizer.vocab, tokenizer.vocab, source)
    theirs, ours = loaded.model.state_dict(), model.state_dict()
    if set(theirs) != set(ours):
        extra = sorted(set(theirs) ^ set(ours))
        raise MusegenError(
            f"{source} has a different architecture ({extra[0]} is in one model only): "
            "train with its shape (see its config.json) or without --init-from"
        )
    for name, tensor in theirs.items():
        target = ours[name]
        if name == EMBEDDING:
            if tensor.shape[1:] != target.shape[1:]:
                raise MusegenError(
                    f"{source}: embedding width {tensor.shape[1]}, this model {target.shape[1]}"
                )
            new_ids = torch.tensor(list(rows), dtype=torch.long, device=target.device)
            theirs_ids = torch.tensor(list(rows.values()), dtype=torch.long)
            target[new_ids] = tensor[theirs_ids].to(target.device, target.dtype)
        elif tensor.shape != target.shape:
            raise MusegenError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, this model "
                f"{tuple(target.shape)}: train with the checkpoint's shape or without --init-from"
            )
        else:
            target.copy_(tensor)
    added = len(tokenizer.vocab) - len(rows)
    return f"weights from {source} ({len(rows)} token rows kept, {added} new)"
