"""Activation quantization (`--act-dtype`): what the inputs of every decoder linear layer go through at
inference, so that calibration (SmoothQuant, GPTQ) sees the real W x A configuration and `eval`
measures it. The runtime applies the same rule (cpp/engine, act_quant); docs/layouts.md states it.

- int8: per token, scale = max|x| / 127 (float32), q = round-half-even(x / scale) clamped to +-127.
- mxint8, mxfp8 (E4M3), mxfp6 (E2M3), mxfp4 (E2M1): OCP MX blocks of 32 consecutive values of a
  token: E8M0 scale 2^(floor(log2 max|x|) - emax_element), elements rounded to nearest even with
  saturation (mxint8: q/64, q = round-half-even clamped to +-127).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from quantconv.errors import QuantconvError
from quantconv.formats.elements import E2M1, E2M3, E4M3, Minifloat


@dataclass(frozen=True)
class ActDType:
    name: str
    element: Minifloat | None     # None: integer elements
    block: int                    # 0: one scale per token

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.float()
        if self.block == 0:
            scale = x.abs().amax(-1, keepdim=True) / 127
            q = torch.round(x / torch.where(scale == 0, torch.ones_like(scale), scale)).clamp(-127, 127)
            return (q * scale).reshape(shape)
        if shape[-1] % self.block:
            raise QuantconvError(f"--act-dtype {self.name} needs rows that are multiples of {self.block} values "
                                 f"(got {shape[-1]})")
        xb = x.reshape(-1, self.block)
        amax = xb.abs().amax(-1, keepdim=True)
        emax = self.element.emax if self.element else 0
        _, e = torch.frexp(amax)
        e = torch.where(amax > 0, (e - 1 - emax).clamp(-127, 127), torch.zeros_like(e))
        scale = torch.ldexp(torch.ones_like(amax), e)
        y = xb / scale
        if self.element is None:
            out = torch.round(y * 64).clamp(-127, 127) / 64
        else:
            out = round_minifloat(y, self.element)
        return torch.where(amax > 0, out * scale, torch.zeros_like(xb)).reshape(shape)


def round_minifloat(y: torch.Tensor, el: Minifloat) -> torch.Tensor:
    """Round to nearest even on the minifloat grid, saturating at +-max (as Minifloat.quantize)."""
    mag = y.abs()
    _, e = torch.frexp(mag)
    e = torch.clamp(e - 1, min=1 - el.bias)
    quantum = torch.ldexp(torch.ones_like(mag), e - el.mbits)
    r = torch.clamp(torch.round(mag / quantum) * quantum, max=el.max_value)
    return torch.copysign(r, y) * (r > 0)


ACT_DTYPES = {
    "int8": ActDType("int8", None, 0),
    "mxint8": ActDType("mxint8", None, 32),
    "mxfp8": ActDType("mxfp8", E4M3, 32),
    "mxfp6": ActDType("mxfp6", E2M3, 32),
    "mxfp4": ActDType("mxfp4", E2M1, 32),
}


def get_act_dtype(name: str | None) -> ActDType | None:
    if name is None or name in ("", "none", "f32"):
        return None
    if name not in ACT_DTYPES:
        raise QuantconvError(f"unknown --act-dtype '{name}'; available: {', '.join(ACT_DTYPES)}")
    return ACT_DTYPES[name]
