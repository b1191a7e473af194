"""``musegen train --init-from``: weights copied by name, mismatches refused in one line."""

from __future__ import annotations

import pytest
import torch

from musegen.checkpoint import load_pretrained
from musegen.errors import MusegenError
from musegen.model.transformer import MusicTransformer
from musegen.training.warm_start import warm_start


def _fresh(tiny_checkpoint, device="cpu", **overrides):
    loaded = load_pretrained(tiny_checkpoint)
    torch.manual_seed(1)
    model = MusicTransformer(loaded.model.config.with_overrides(**overrides)).to(device)
    return loaded, model


def _assert_same(model, loaded):
    theirs = loaded.model.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor.cpu(), theirs[name].to(tensor.dtype))


def test_warm_start_copies_every_weight(tiny_checkpoint):
    loaded, model = _fresh(tiny_checkpoint)
    summary = warm_start(model, loaded.tokenizer, tiny_checkpoint)
    _assert_same(model, loaded)
    assert f"{len(loaded.tokenizer.vocab)} token rows kept, 0 new" in summary


def test_warm_start_refuses_another_shape(tiny_checkpoint):
    loaded, model = _fresh(tiny_checkpoint, d_ff=8)
    with pytest.raises(MusegenError, match=r"has shape .* train with the checkpoint's shape"):
        warm_start(model, loaded.tokenizer, tiny_checkpoint)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_warm_start_into_a_model_on_the_gpu(tiny_checkpoint):
    # The embedding rows are indexed on the model's device (a CPU index failed on CUDA).
    loaded, model = _fresh(tiny_checkpoint, device="cuda")
    warm_start(model, loaded.tokenizer, tiny_checkpoint)
    _assert_same(model, loaded)
