"""Simulated 8-bit rounding during training: quantization-aware fine-tuning of the demo model.

The demo model is ours, and post-training quantization of the shipped weights relabelled 2-5 % of the
foreground of unseen CTs (docs/quantization.md): many voxels sit within a few hundredths of a logit of another
label, where 8-bit rounding of activations flips them. Fine-tuning with the rounding simulated in the forward
pass (straight-through gradients) teaches the network decisions that survive it. The result is an ordinary
FP32 state dict (same keys, no extra parameters): the shipped engine is still built by post-training
quantization from a calibration folder; nothing of this module's ranges is kept.

What is simulated, as the OpenVINO CPU engine quantizes (NNCF, preset ``mixed``): the input of every
convolution and transposed convolution per tensor, asymmetric, 8-bit unsigned, range tracked as an
exponential moving average of the batch min/max (training) and frozen at evaluation; the weights per output
channel, symmetric, 8-bit signed, scale from the current weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class ActivationRange(nn.Module):
    """EMA of the input's min and max (u8 asymmetric fake quantization of a convolution's input)."""

    def __init__(self, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.tensor(float("nan")))
        self.register_buffer("high", torch.tensor(float("nan")))

    def __call__(self, module, inputs):
        (x,) = inputs[:1]
        if self.training_of(module):
            low, high = x.detach().float().amin(), x.detach().float().amax()
            if torch.isnan(self.low):
                self.low.copy_(low), self.high.copy_(high)
            else:
                self.low.lerp_(low, self.momentum), self.high.lerp_(high, self.momentum)
        low, high = torch.minimum(self.low, torch.zeros_like(self.low)), torch.maximum(self.high, torch.zeros_like(self.high))
        scale = torch.clamp((high - low) / 255.0, min=1e-8)
        zero_point = torch.clamp(torch.round(-low / scale), 0, 255).to(torch.int32)
        quantized = torch.fake_quantize_per_tensor_affine(x.float(), scale.float(), zero_point, 0, 255)
        return (quantized.to(x.dtype), *inputs[1:])

    @staticmethod
    def training_of(module) -> bool:
        return module.training


class SymmetricWeights(nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a weight (axis 0 for convolutions, 1 for
    transposed convolutions, whose weight is (C_in, C_out, ...))."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(weight.dim()) if d != self.axis]
        scale = torch.clamp(weight.detach().abs().amax(dim=dims) / 127.0, min=1e-12).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight.float(), scale, zero, self.axis, -128, 127).to(weight.dtype)


def add_quantization_noise(network: nn.Module) -> list:
    """Simulate 8-bit rounding in every convolution of ``network`` (in place); returns what ``remove`` needs."""
    handles = []
    for module in network.modules():
        if isinstance(module, _CONVS):
            observer = ActivationRange()
            module.add_module("input_range", observer)
            handles.append((module, module.register_forward_pre_hook(observer)))
            axis = 1 if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
            parametrize.register_parametrization(module, "weight", SymmetricWeights(axis))
    return handles


def remove_quantization_noise(network: nn.Module, handles: list) -> nn.Module:
    """Back to a plain network with the float weights (state-dict keys as before ``add_quantization_noise``)."""
    for module, handle in handles:
        handle.remove()
        del module.input_range
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return network
