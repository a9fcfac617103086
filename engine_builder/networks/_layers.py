"""Small layers shared by the transformer networks of this package."""

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
