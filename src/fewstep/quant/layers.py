"""Int8 convolution and linear layers with static, per-timestep-group activation ranges.

Weights are stored as int8 levels with one symmetric scale per output channel; the layer's input is
quantized per tensor with the scale of the current timestep group (TFMQ-DM, Huang et al. 2024,
sec. 4: activation ranges depend on the timestep, so one static range per step is calibrated).
The group is read from a :class:`GroupSelector` that the enclosing
:class:`~fewstep.quant.network.QuantizedNetwork` sets before each evaluation.

Two kernels compute the same maths (equal up to float32 rounding of the accumulation):

* ``"simulated"`` - fake-quantized input ``s_a q_a`` times dequantized weights ``s_w q_w`` through the
  float conv/matmul;
* ``"int8"`` - ``q_a`` and ``q_w`` multiplied by ``torch._int_mm`` (int8 x int8 -> int32, VNNI on x86),
  a convolution as an int8 im2col (channels-last slices) then one matmul; the int32 result is scaled
  by ``s_a s_w`` and the float bias added.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .maths import affine_params, dequantize, fake_quantize, fake_quantize_affine, qmax, quantize, quantize_weight

__all__ = ["KERNELS", "Kernel", "GroupSelector", "QuantLayer", "QuantConv2d", "QuantLinear"]

Kernel = Literal["simulated", "int8"]
KERNELS: tuple[str, ...] = ("simulated", "int8")


class GroupSelector:
    """Shared by a network's quantized layers: the current timestep group (an int, or one index per
    sample as a long tensor) and the kernel to run."""

    def __init__(self, kernels: str = "simulated"):
        if kernels not in KERNELS:
            raise ValueError(f"unknown quantized kernels {kernels!r}; valid: {', '.join(KERNELS)}")
        self.group: int | Tensor | None = None
        self.kernels = kernels


class QuantLayer(nn.Module):
    """Common state: ``weight_int8``, ``weight_scale`` (per output channel), float ``bias``, and
    ``act_clip`` (one clipping range per timestep group; scale ``clip / qmax``).  An *asymmetric*
    layer also has ``act_low``, the lower end of each group's range: its input is quantized on the
    affine grid over ``[act_low, act_clip]`` (:func:`~fewstep.quant.maths.fake_quantize_affine`);
    asymmetric layers run with the simulated kernels only."""

    def __init__(self, weight: Tensor, bias: Tensor | None, bits: int, groups: int, selector: GroupSelector):
        super().__init__()
        self.bits = int(bits)
        q, s = quantize_weight(weight, bits)
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", s)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("act_clip", torch.ones(groups), persistent=False)
        self.register_buffer("act_low", None, persistent=False)  # None: symmetric
        self.register_buffer("act_zero", None, persistent=False)
        self.register_buffer("act_step", None, persistent=False)
        self.register_buffer("weight_float", torch.empty(0), persistent=False)
        self.register_buffer("w_cols", torch.empty(0, dtype=torch.int8), persistent=False)
        self.selector = selector
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh())
        self.refresh()

    def refresh(self) -> None:
        """Recompute the cached dequantized weight (after loading int8 levels or scales)."""
        shape = (-1,) + (1,) * (self.weight_int8.ndim - 1)
        self.weight_float = dequantize(self.weight_int8, self.weight_scale.reshape(shape))

    def set_clips(self, clips: Tensor) -> None:
        """Per-group clipping ranges (positive), shape ``(groups,)``."""
        clips = torch.as_tensor(clips, dtype=torch.float32).reshape(-1)
        if not bool((clips > 0).all()):
            raise ValueError("activation clipping ranges must be positive")
        self.act_clip = clips.to(self.weight_scale.device)
        self.act_low = self.act_zero = self.act_step = None

    def set_ranges(self, lows: Tensor, highs: Tensor) -> None:
        """Asymmetric per-group ranges ``[lows, highs]`` (shape ``(groups,)``; 0 is always inside)."""
        lows = torch.as_tensor(lows, dtype=torch.float32).reshape(-1)
        highs = torch.as_tensor(highs, dtype=torch.float32).reshape(-1)
        if lows.shape != highs.shape or not bool((highs > lows).all()):
            raise ValueError("asymmetric activation ranges need one low < high per group")
        scale, zero = affine_params(lows, highs, self.bits)
        device = self.weight_scale.device
        self.act_clip, self.act_low = highs.to(device), lows.to(device)
        self.act_step, self.act_zero = scale.to(device), zero.to(device)

    @property
    def asymmetric(self) -> bool:
        return self.act_low is not None

    def fake_quantize_input(self, x: Tensor) -> Tensor:
        """The simulated path's quantize-dequantize of the input with the current group's grid."""
        if not self.asymmetric:
            return fake_quantize(x, self.act_scale(x), self.bits)
        group = self._group()
        shape = (-1,) + (1,) * (x.ndim - 1)
        s, z = self.act_step[group].to(x.dtype), self.act_zero[group].to(x.dtype)
        if s.ndim:
            s, z = s.reshape(shape), z.reshape(shape)
        return fake_quantize_affine(x, s, z, self.bits)

    def _group(self) -> int | Tensor:
        group = self.selector.group
        if group is None:
            raise RuntimeError("a quantized layer was called outside its QuantizedNetwork (no timestep group set)")
        return group

    def _check_int8(self) -> None:
        if self.asymmetric:
            raise ValueError("asymmetric activation ranges run with the simulated kernels only; "
                             "use kernels='simulated' (or quantize with symmetric activations)")

    def act_scale(self, x: Tensor) -> Tensor:
        """The input scale of the current group: a scalar, or ``(batch, 1, ...)`` per sample."""
        group = self._group()
        s = (self.act_clip[group] / qmax(self.bits)).to(x.dtype)
        return s.reshape((-1,) + (1,) * (x.ndim - 1)) if s.ndim else s

    def _bias(self, dtype: torch.dtype) -> Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)


def _int8_rows(q: Tensor, w_cols: Tensor, row_scale: Tensor, w_scale: Tensor, bias: Tensor | None,
               dtype: torch.dtype) -> Tensor:
    """``(q @ w_cols) * row_scale[:, None] * w_scale + bias`` with an int32 accumulation."""
    acc = torch._int_mm(q, w_cols)
    out = acc.to(dtype) * (row_scale.reshape(-1, 1).to(dtype) * w_scale.to(dtype))
    return out if bias is None else out + bias


class QuantConv2d(QuantLayer):
    """An int8 ``nn.Conv2d`` (``groups=1``; any kernel size, stride, padding, dilation 1)."""

    def __init__(self, conv: nn.Conv2d, bits: int, groups: int, selector: GroupSelector):
        if conv.groups != 1 or conv.dilation != (1, 1) or not isinstance(conv.padding, tuple) \
                or conv.padding_mode != "zeros":
            raise ValueError("QuantConv2d supports groups=1, dilation=1 and numeric zero padding")
        super().__init__(conv.weight, conv.bias, bits, groups, selector)
        self.stride, self.padding, self.kernel_size = conv.stride, conv.padding, conv.kernel_size

    def refresh(self) -> None:
        super().refresh()
        # (out, in, kh, kw) -> rows ordered (kh, kw, in) like the channels-last im2col below
        self.w_cols = self.weight_int8.permute(2, 3, 1, 0).reshape(-1, self.weight_int8.shape[0]).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        if self.selector.kernels == "simulated":
            return F.conv2d(self.fake_quantize_input(x), self.weight_float.to(x.dtype), self._bias(x.dtype),
                            self.stride, self.padding)
        self._check_int8()
        s = self.act_scale(x)
        b, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        q = quantize(x, s, self.bits).permute(0, 2, 3, 1)  # (b, h, w, c)
        if ph or pw:
            q = F.pad(q, (0, 0, pw, pw, ph, ph))
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if kh == kw == 1:
            cols = q[:, ::sh, ::sw][:, :ho, :wo].reshape(b * ho * wo, -1)
        else:
            cols = torch.stack([q[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                                for i in range(kh) for j in range(kw)], dim=3).reshape(b * ho * wo, -1)
        rows = s.reshape(-1).expand(b).repeat_interleave(ho * wo) if s.ndim else s.expand(b * ho * wo)
        out = _int8_rows(cols.contiguous(), self.w_cols, rows, self.weight_scale, self._bias(x.dtype), x.dtype)
        return out.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)


class QuantLinear(QuantLayer):
    """An int8 ``nn.Linear``."""

    def __init__(self, linear: nn.Linear, bits: int, groups: int, selector: GroupSelector):
        super().__init__(linear.weight, linear.bias, bits, groups, selector)

    def refresh(self) -> None:
        super().refresh()
        self.w_cols = self.weight_int8.t().contiguous()

    def forward(self, x: Tensor) -> Tensor:
        if self.selector.kernels == "simulated":
            return F.linear(self.fake_quantize_input(x), self.weight_float.to(x.dtype), self._bias(x.dtype))
        self._check_int8()
        s = self.act_scale(x)
        lead = x.shape[:-1]
        q = quantize(x, s, self.bits).reshape(-1, x.shape[-1])
        per_sample = q.shape[0] // max(1, x.shape[0]) if x.ndim > 1 else 1
        rows = s.reshape(-1).repeat_interleave(per_sample) if s.ndim else s.expand(q.shape[0])
        out = _int8_rows(q.contiguous(), self.w_cols, rows, self.weight_scale, self._bias(x.dtype), x.dtype)
        return out.reshape(*lead, -1)
