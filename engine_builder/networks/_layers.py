"""Layers and the encoder-decoder pass shared by the networks of this package."""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """The transformer feed-forward block: Linear(dim, hidden) -> GELU -> Linear(hidden, dim).

    Parameters are ``fc1`` and ``fc2``, the names both UNesT's and TransUNet's checkpoints use.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention over the last two dimensions, (..., tokens, head_dim) each.

    Written as matmul + softmax (not ``scaled_dot_product_attention``) so the exported ONNX graph is the
    plain MatMul/Softmax pattern every INT8 toolchain recognises.
    """
    scores = torch.matmul(query, key.transpose(-2, -1)) * query.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(dim=-1), value)


class Wrapped(nn.Module):
    """A layer stored as the attribute ``conv``.

    MONAI's ``Convolution`` block keeps its convolution in ``.conv``, so checkpoints of networks built from
    MONAI blocks have keys like ``conv1.conv.weight``; this reproduces that nesting for a plain layer.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.conv = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def unet_pass(x: torch.Tensor, encoder: nn.ModuleList, upsamplers: nn.ModuleList, decoder: nn.ModuleList,
              bottleneck=None) -> torch.Tensor:
    """The nnU-Net-style encoder-decoder pass shared by STU-Net and TransUNet.

    Every encoder stage but the deepest keeps its output as a skip; the deepest stage's output (through
    ``bottleneck`` where given) is upsampled, concatenated with the matching skip and decoded, deepest first.
    Returns the full-resolution decoder features (the segmentation head is the caller's).
    """
    skips = []
    for stage in encoder[:-1]:
        x = stage(x)
        skips.append(x)
    x = encoder[-1](x)
    if bottleneck is not None:
        x = bottleneck(x)
    for upsample, stage, skip in zip(upsamplers, decoder, reversed(skips)):
        x = stage(torch.cat((upsample(x), skip), dim=1))
    return x
