"""How the numbers of a training step are computed: device and process group, precision,
optimiser and learning-rate schedule, kept apart from the loop so each is testable alone.

AdamW with two parameter groups (weight decay only on matrices that multiply activations, never on
norms, biases or embeddings: decaying those hurts and buys nothing), and a schedule that is a pure
function of the step, so resuming needs only the step number to land on the same rate.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from musegen.errors import MusegenError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Only the weight matrices of ``nn.Linear`` layers are decayed. Biases, normalisation
    parameters, embedding tables (including a tied output head, which shares the embedding
    tensor) and relative-position tables are not: shrinking them towards zero only hurts.
    """
    embeddings = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay, no_decay = [], []
    for param in model.parameters():  # each shared (tied) tensor once
        if not param.requires_grad:
            continue
        wanted = id(param) in linear and id(param) not in embeddings
        (decay if wanted else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`; the fused kernel on CUDA (one launch per step)."""
    groups = parameter_groups(model, weight_decay)
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=1e-8, **extra)


# Warm-up of a run that does not set one: this share of its steps (200 for the default 5000).
WARMUP_FRACTION = 0.04


def warmup_steps_for(warmup_steps: int | None, max_steps: int) -> int:
    """``warmup_steps`` when set, else :data:`WARMUP_FRACTION` of the run (at least 1 step):
    a fixed 200-step warm-up would leave a 60-step fine-tune far below its learning rate."""
    if warmup_steps is not None:
        return int(warmup_steps)
    return max(1, round(WARMUP_FRACTION * max_steps))


def lr_at(
    step: int, base_lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float
) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warm-up, then cosine to a floor.

    Warm-up rises from ``base_lr / warmup_steps`` to ``base_lr`` over ``warmup_steps`` steps; the
    cosine then falls to ``base_lr * min_lr_ratio`` at ``max_steps`` and stays there (a run
    extended past ``max_steps`` on resume trains on at the floor).
    """
    floor = base_lr * min_lr_ratio
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return floor + 0.5 * (base_lr - floor) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimiser state dict into safetensors-ready tensors plus JSON-ready metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    # state_dict() gives fresh group dicts; JSON writes the betas tuple as a list
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    """Inverse of :func:`optimizer_to_tensors`: load the flattened state into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --- where and how the numbers are computed ----------------------------------------------------
@dataclass
class DistContext:
    """Where this process runs: its rank among ``world_size`` and its device."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (in rank order); the list is only meaningful on rank 0."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, ok: bool) -> bool:
        """True only when every rank is ok, so no rank waits forever on one that failed."""
        flag = torch.tensor([0.0 if ok else 1.0], device=self.device)
        return float(self.all_reduce_sum(flag).item()) == 0.0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MusegenError("--device cuda was asked for but no CUDA GPU is visible to torch")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device_name: str) -> DistContext:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(device, dist.get_rank(), dist.get_world_size(), enabled=True)


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks for reuse instead of handing them back to the kernel.

    By default glibc serves every block over 32 MB with a fresh ``mmap`` and unmaps it when
    freed, so each training step on long sequences page-faults its activations back in and
    spends much of its time in the kernel; with freed memory kept, the steady step does not
    (figures: ``benchmarks/README.md``, ``bench_decode.py`` section alloc). The process then
    holds its peak memory between steps, as a training run does anyway.
    Returns whether the setting took (glibc only; elsewhere it is a no-op).
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def configure_precision(
    device: torch.device, precision: str, threads: int | None
) -> torch.dtype | None:
    """Set threads and TF32; return the autocast dtype (``None`` = plain fp32).

    ``precision='auto'`` is bf16 on a CUDA GPU that supports it (weights and optimiser stay fp32:
    autocast only lowers the matmuls), fp32 elsewhere.
    """
    if threads:
        torch.set_num_threads(threads)
    if device.type != "cuda":
        keep_freed_memory()
        if precision == "bf16":
            raise MusegenError("precision bf16 needs --device cuda; use fp32 (or auto) on CPU")
        return None
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch ≥ 2.9; mixing with allow_tf32 is an error
        matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision == "fp32":
        return None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if precision == "bf16":
        raise MusegenError("this GPU has no bf16 support; use --set precision=fp32")
    return None


def oom_message(batch_size: int, grad_accum: int, seq_len: int) -> str:
    """What to do when a batch does not fit: halve it and double the accumulation."""
    half = max(1, batch_size // 2)
    return (
        f"out of memory with batch size {batch_size} × seq_len {seq_len}; try "
        f"--batch-size {half} --grad-accum {grad_accum * 2} (same effective batch), "
        "or a shorter --seq-len"
    )


def is_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory, or the CPU allocator failing on a huge batch."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
