"""How to train: the settings of one run, checked before anything starts.

``run.json`` keeps a :class:`TrainConfig` (see :mod:`musegen.training.state`), so ``--resume``
rebuilds the same run; the CLI derives its ``train`` flags from the fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from musegen.errors import MusegenError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """How to train: data, run directory, optimisation, evaluation and checkpoint cadence.

    ``seq_len=None`` trains on windows of the model's ``max_seq_len``. ``max_minutes`` bounds the
    wall-clock time of one invocation (a resumed run gets its own budget). ``precision='auto'``
    is bf16 autocast on a CUDA GPU that supports it, fp32 elsewhere.
    """

    data: str = ""
    out: str = ""
    preset: str = "small"
    max_steps: int = 5000
    max_minutes: float | None = None
    batch_size: int = 8
    seq_len: int | None = None
    grad_accum: int = 1
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    # None: proportional to the run's length (optim.warmup_steps_for), so a short fine-tune
    # reaches its learning rate; a number fixes it.
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    compile: bool = False
    eval_every: int = 250
    eval_windows: int = 64
    save_every: int = 250
    log_every: int = 10
    sample_tokens: int = 256
    sample_temperature: float = 1.0
    augment: bool = True
    transpose: tuple[int, int] = (-5, 6)
    velocity_shift: int = 1
    tempo_shift: int = 1
    # Program augmentation: per window, each pitched track moves to another GM program of its
    # family at this rate, or into another family at the second rate (drums stay drums).
    program_within: float = 0.25
    program_across: float = 0.05
    # Fraction of training windows rearranged into fill-in-the-middle examples (data/infill.py).
    infill_rate: float = 0.0
    # Of those, the fraction whose left side is cut to a few tokens (teaches reading the right).
    infill_prefix_drop: float = 0.0
    # Infilling examples keep the right side and the kept tracks as pinned keys, beyond a
    # local window (sets ModelConfig.pin_tokens; data/infill.py, the pinned layout).
    infill_memory: bool = False
    init_from: str | None = None
    # LoRA fine-tuning (musegen.training.lora): rank 0 trains every weight; alpha None = rank.
    lora_rank: int = 0
    lora_alpha: float | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.transpose = (int(self.transpose[0]), int(self.transpose[1]))

    def validate(self) -> None:
        """Raise :class:`MusegenError` naming the field when a value cannot work."""
        if not self.data:
            raise MusegenError("--data is required: the directory written by 'musegen prepare'")
        if not self.out:
            raise MusegenError("--out is required: the run directory for checkpoints and logs")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every"):
            if int(getattr(self, name)) <= 0:
                raise MusegenError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("log_every", "eval_windows", "sample_tokens", "warmup_steps", "lora_rank"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 0:
                raise MusegenError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.seq_len is not None and self.seq_len < 2:
            raise MusegenError(f"seq_len must be at least 2, got {self.seq_len}")
        if self.lora_rank and not self.init_from:
            raise MusegenError("LoRA (lora_rank > 0) adapts a trained model: give --init-from")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise MusegenError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise MusegenError("lr must be > 0 and min_lr_ratio within [0, 1]")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise MusegenError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.threads is not None and self.threads <= 0:
            raise MusegenError(f"threads must be positive, got {self.threads}")
        if self.device not in DEVICES:
            raise MusegenError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise MusegenError(f"precision must be one of {', '.join(PRECISIONS)}")
        for name in ("program_within", "program_across", "infill_rate", "infill_prefix_drop"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise MusegenError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.infill_memory and not self.infill_rate:
            raise MusegenError("infill_memory shapes infilling examples: give --infill-rate too")
        if self.transpose[0] > 0 or self.transpose[1] <= 0:
            raise MusegenError(
                f"transpose must be a half-open range of semitones holding 0, like (-5, 6); "
                f"got {self.transpose}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - cls.field_names())
        if unknown:
            raise MusegenError(f"unknown training config field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError, IndexError) as exc:
            raise MusegenError(f"invalid training config: {exc}") from None
