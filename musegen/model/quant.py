"""int8 for CPU inference: int8 linear layers, int8 checkpoints, and the precision switch.

:class:`Int8Linear` keeps a projection's weight as int8 with one fp32 scale per output channel
(symmetric: ``w ≈ scale[o] · q[o, i]``, ``|q| ≤ 127``) and multiplies with torch's own int8 CPU
kernels: ``torch.ops.quantized.linear_dynamic`` (fbgemm/x86/qnnpack: activations quantized per
call, int8 × int8 products) for batches of rows, and ``torch._weight_int8pack_mm`` (weight-only:
int8 weights, bf16 activations) for a single row, where it is the faster of the two (figures:
``benchmarks/bench_deploy.py``). A quarter of the bytes of fp32 weights are read per token.

An int8 *checkpoint* (``musegen export --int8``) stores every large tensor the same way, one
scale per row of its last dimension (``NAME::int8`` + ``NAME::scale`` in ``model.safetensors``,
``"quantization"`` in ``config.json``): projections load as :class:`Int8Linear`; embeddings
and relative-position tables are dequantized to fp32 at load (they are small to compute with,
large to store). Norms and biases stay fp32.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from musegen.errors import CheckpointError, MusegenError
from musegen.model.linear import Linear, WeightMemo

PRECISIONS = ("fp32", "bf16", "int8")
INT8_FORMAT = "int8-rowwise-symmetric"
INT8_SUFFIX, SCALE_SUFFIX = "::int8", "::scale"
# Tensors with fewer elements stay fp32 in an int8 checkpoint (norms, biases: bytes, not MBs).
MIN_QUANT_NUMEL = 4096
# Rows up to which a product takes the weight-only kernel (bf16 activations) instead of dynamic
# int8: one row, the batch-1 decode step (bench_deploy.py, section kernels).
WEIGHT_ONLY_ROWS = 1
ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")


def quantize_rows(t: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 with one fp32 scale per row of the last dimension: ``(q, scale)``."""
    t = t.detach().float()
    scale = t.abs().amax(dim=-1).clamp_min(1e-12) / 127.0
    q = torch.round(t / scale.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    return q.float() * scale.float().unsqueeze(-1)


def supported_engines() -> list[str]:
    """torch's quantized CPU engines in this build (e.g. x86, fbgemm, qnnpack)."""
    return list(torch.backends.quantized.supported_engines)


def int8_engine() -> str:
    """The quantized CPU engine to use; a one-line error when this torch build has none."""
    supported = [e for e in ENGINES if e in supported_engines()]
    if not supported:
        raise MusegenError(
            "int8 needs torch's quantized CPU kernels, and this torch build has no int8 engine "
            f"(supported engines: {supported_engines()}); use --precision fp32 or bf16"
        )
    if torch.backends.quantized.engine not in supported:
        torch.backends.quantized.engine = supported[0]
    return torch.backends.quantized.engine


def check_int8_device(device: str | torch.device) -> None:
    device = torch.device(device)
    if device.type != "cpu":
        raise MusegenError(
            f"int8 runs on CPU only: torch has no int8 linear kernels for device {device.type!r}; "
            "use --precision bf16 there (or --device cpu)"
        )
    int8_engine()


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and per-output-channel scales (inference only)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.memo = WeightMemo()

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q, scale = quantize_rows(linear.weight)
        layer.set_int8(q, scale, None if linear.bias is None else linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def set_int8(self, q: Tensor, scale: Tensor, bias: Tensor | None) -> None:
        if tuple(q.shape) != (self.out_features, self.in_features) or q.dtype != torch.int8:
            raise ValueError(f"int8 weight of shape {tuple(q.shape)} ({q.dtype}) does not fit")
        self.weight_int8 = q.contiguous()
        self.weight_scale = scale.float().contiguous()
        if bias is not None:
            self.bias = bias.float().contiguous()

    def dequantized(self) -> Tensor:
        return dequantize_rows(self.weight_int8, self.weight_scale)

    def to_float(self) -> Linear:
        out = Linear(self.in_features, self.out_features, self.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.dequantized())
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out.to(self.weight_int8.device)

    def _packed(self):
        def build():
            zeros = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():  # torch marks quantized tensors as deprecated
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(
                    self.weight_int8.cpu(), self.weight_scale.double().cpu(), zeros, 0
                )
                return torch.ops.quantized.linear_prepack(qw, self.bias)

        return self.memo.get("packed", build, self.weight_int8, self.weight_scale)

    def _scale_bf16(self) -> Tensor:
        return self.memo.get("scale16", lambda: self.weight_scale.bfloat16(), self.weight_int8)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            check_int8_device(x.device)
        rows = x.numel() // self.in_features
        if rows <= WEIGHT_ONLY_ROWS:
            flat = x.reshape(rows, self.in_features).to(torch.bfloat16)
            y = torch._weight_int8pack_mm(flat, self.weight_int8, self._scale_bf16()).to(x.dtype)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)
        y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed(), True)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


# --- whole models ---------------------------------------------------------------------------
def _projections(model: nn.Module) -> dict[str, nn.Module]:
    """The layers int8 applies to: every linear layer (the tied head is the embedding)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | Int8Linear)}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


@torch.no_grad()
def quantize_model(model: nn.Module) -> nn.Module:
    """Replace every linear layer by an :class:`Int8Linear`, in place (returns ``model``)."""
    int8_engine()
    for name, layer in _projections(model).items():
        if isinstance(layer, nn.Linear):
            _set_module(model, name, Int8Linear.from_float(layer))
    return model.eval()


@torch.no_grad()
def dequantize_model(model: nn.Module) -> nn.Module:
    for name, layer in _projections(model).items():
        if isinstance(layer, Int8Linear):
            _set_module(model, name, layer.to_float())
    return model


def set_precision(model: nn.Module, precision: str | None, device: str | torch.device = "cpu"):
    """Run ``model`` in ``precision`` (None: as it is): fp32, bf16 (weights, activations and
    KV cache) or int8 (CPU: int8 projections, the rest fp32). Returns the model."""
    if precision is None:
        if is_int8(model):
            check_int8_device(device)
        return model
    if precision not in PRECISIONS:
        raise MusegenError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8":
        check_int8_device(device)
        return quantize_model(model.float())
    dequantize_model(model)
    return model.to(torch.bfloat16 if precision == "bf16" else torch.float32)


# --- int8 checkpoints -----------------------------------------------------------------------
def int8_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Tensors of an int8 checkpoint of ``model`` (fp32 or already int8)."""
    out: dict[str, Tensor] = {}
    projections = _projections(model)
    for name, layer in projections.items():
        if isinstance(layer, Int8Linear):
            q, scale = layer.weight_int8, layer.weight_scale
        else:
            q, scale = quantize_rows(layer.weight)
        out[f"{name}.weight{INT8_SUFFIX}"], out[f"{name}.weight{SCALE_SUFFIX}"] = q, scale
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias.detach().float()
    for key, value in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner in projections:
            continue
        if value.is_floating_point() and value.dim() >= 2 and value.numel() >= MIN_QUANT_NUMEL:
            out[key + INT8_SUFFIX], out[key + SCALE_SUFFIX] = quantize_rows(value)
        else:
            out[key] = value.detach().float() if value.is_floating_point() else value
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


@torch.no_grad()
def load_int8(model: nn.Module, path: Path) -> None:
    """Load an int8 ``model.safetensors`` into ``model`` (an fp32 one of the checkpoint's
    config), strictly: its projections become :class:`Int8Linear`."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({exc})") from None
    plain: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(INT8_SUFFIX):
            name = key[: -len(INT8_SUFFIX)]
            scale = state.get(name + SCALE_SUFFIX)
            if scale is None:
                raise CheckpointError(f"{path}: {name} has int8 values but no scales")
            plain[name] = (value, scale)  # type: ignore[assignment]
        elif not key.endswith(SCALE_SUFFIX):
            plain[key] = value
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(plain)), sorted(set(plain) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match config.json (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]})"
        )
    projections = _projections(model)
    for name, layer in projections.items():
        q, scale = plain.pop(f"{name}.weight")  # type: ignore[misc]
        bias = plain.pop(f"{name}.bias", None)
        int8 = Int8Linear(layer.in_features, layer.out_features, layer.bias is not None)
        try:
            int8.set_int8(q, scale, bias)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {name}: {exc}") from None
        _set_module(model, name, int8)
    for key, value in plain.items():
        if isinstance(value, tuple):
            value = dequantize_rows(*value)
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{path}: tensor {key} has shape {tuple(value.shape)}, config.json implies "
                f"{tuple(expected[key].shape)}"
            )
        target = model.get_parameter(key) if key in dict(model.named_parameters()) else None
        if target is None:
            model.get_buffer(key).copy_(value)
        else:
            target.copy_(value)


__all__ = [
    "INT8_FORMAT",
    "PRECISIONS",
    "Int8Linear",
    "check_int8_device",
    "dequantize_model",
    "int8_state_dict",
    "is_int8",
    "load_int8",
    "quantize_model",
    "quantize_rows",
    "set_precision",
]
