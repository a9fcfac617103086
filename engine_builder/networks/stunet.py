"""STU-Net: the scalable nnU-Net-style residual U-Net, in four published sizes (S, B, L, H).

Paper: Z. Huang et al., "STU-Net: Scalable and Transferable Medical Image Segmentation Models Empowered by
Large-Scale Supervised Pre-training", arXiv:2304.06716 (2023). STU-Net keeps nnU-Net's six-resolution
U-Net but builds every stage from residual blocks (conv-IN-LeakyReLU, conv-IN, + shortcut, LeakyReLU; the
first block of a stage downsamples with its stride and projects the shortcut with a 1x1 convolution) and
upsamples by nearest-neighbour interpolation followed by a 1x1 convolution instead of a transposed
convolution, so that one set of weights transfers across tasks; sizes scale width and depth together:

    size   channels per resolution            blocks per stage   parameters (paper / repository README)
    S      16, 32, 64, 128, 256, 256          1                  14.6 M
    B      32, 64, 128, 256, 512, 512         1                  58.26 M
    L      64, 128, 256, 512, 1024, 1024      2                  440.30 M
    H      96, 192, 384, 768, 1536, 1536      3                  1457.33 M

Published configuration (the TotalSegmentator-trained checkpoints ``small_ep4k.model``, ``base_ep4k.model``,
``large_ep4k.model``, ``huge_ep4k.model`` of github.com/uni-medical/STU-Net, nnU-Net v1 plans
``Task101_TotalSegmentator``, ``plan_files/*.pkl``): 1 input channel (CT, but the plans normalise it as
``nonCT``, i.e. a z-score per image), 105 output channels (background + 104 TotalSegmentator v1 classes in the
order of the repository's ``label_orders.json``, which differs from TotalSegmentator's own), 1.5 mm isotropic
spacing, patch 128³, 3x3x3 kernels, downsampling strides (2,2,2) x 4 then (1,1,2) (the last along the third
array axis of nnU-Net's array order). The parameter counts above are for those 105 classes.

Shapes: input (batch, in_channels, D, H, W) with each axis divisible by the product of the strides along it
(16, 16, 32 for the published strides); output (batch, out_channels, D, H, W), the full-resolution head.
The four lower-resolution deep-supervision heads (``seg_outputs.0`` .. ``seg_outputs.3``) are part of the
checkpoint and are kept, but not evaluated.

Implemented from the paper; attribute names follow the released checkpoints, whose weights are the
``state_dict`` entry of the nnU-Net v1 ``.model`` file (nnU-Net v2 fine-tunes store ``network_weights``).
The expected keys and shapes are recorded in ``Testing/data/stunet_keys.json``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ._layers import unet_pass
from .stunet_sizes import SIZES, TOTALSEGMENTATOR_STRIDES  # noqa: F401  (torch-free: the registry reads them)

class STUNet(nn.Module):
    """STU-Net; see the module docstring.

    Args:
        in_channels: image channels (1).
        out_channels: classes including background (105 for the TotalSegmentator checkpoints).
        dims: channels at each of the six resolutions (``SIZES[size]["dims"]``).
        depth: residual blocks per encoder stage, the same number in the matching decoder stage.
        strides: downsampling stride of each of the five lower resolutions, per axis.
        kernel_size: convolution kernel edge (3).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 105,
        dims: Sequence[int] = SIZES["S"]["dims"],
        depth: Sequence[int] = SIZES["S"]["depth"],
        strides: Sequence[Sequence[int]] = TOTALSEGMENTATOR_STRIDES,
        kernel_size: int = 3,
    ):
        super().__init__()
        if not len(dims) == len(depth) == len(strides) + 1:
            raise ValueError(f"STU-Net: {len(dims)} dims and {len(depth)} depths need {len(dims) - 1} strides, got {len(strides)}")
        strides = [tuple(int(s) for s in stride) for stride in strides]
        self.conv_blocks_context = nn.ModuleList(
            _stage(in_channels if d == 0 else dims[d - 1], dims[d], depth[d], kernel_size, strides[d - 1] if d else (1, 1, 1))
            for d in range(len(dims))
        )
        levels = range(len(dims) - 2, -1, -1)  # decoder resolutions, deepest first
        self.upsample_layers = nn.ModuleList(NearestUpsample(dims[d + 1], dims[d], strides[d]) for d in levels)
        self.conv_blocks_localization = nn.ModuleList(_stage(2 * dims[d], dims[d], depth[d], kernel_size, (1, 1, 1)) for d in levels)
        self.seg_outputs = nn.ModuleList(nn.Conv3d(dims[d], out_channels, kernel_size=1) for d in levels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = unet_pass(image, self.conv_blocks_context, self.upsample_layers, self.conv_blocks_localization)
        return self.seg_outputs[-1](features)


def _stage(in_channels: int, out_channels: int, blocks: int, kernel_size: int, stride) -> nn.Sequential:
    """``blocks`` residual blocks; the first one applies the stride and has a projected shortcut."""
    return nn.Sequential(
        ResidualBlock(in_channels, out_channels, kernel_size, stride, project_shortcut=True),
        *(ResidualBlock(out_channels, out_channels, kernel_size) for _ in range(blocks - 1)),
    )


class ResidualBlock(nn.Module):
    """LeakyReLU(IN(conv2(LeakyReLU(IN(conv1 x)))) + shortcut); affine instance norms, biased convolutions.

    The shortcut is ``conv3`` (1x1x1, same stride) where ``project_shortcut``, otherwise the input.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride=(1, 1, 1), project_shortcut: bool = False):
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.norm1 = nn.InstanceNorm3d(out_channels, affine=True)
        self.act1 = nn.LeakyReLU(0.01)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = nn.InstanceNorm3d(out_channels, affine=True)
        self.act2 = nn.LeakyReLU(0.01)
        self.conv3 = nn.Conv3d(in_channels, out_channels, 1, stride=stride) if project_shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        shortcut = self.conv3(x) if self.conv3 is not None else x
        return self.act2(y + shortcut)


class NearestUpsample(nn.Module):
    """Nearest-neighbour upsampling by the stage's stride, then a 1x1x1 convolution to the skip's width."""

    def __init__(self, in_channels: int, out_channels: int, scale):
        super().__init__()
        self.scale = tuple(float(s) for s in scale)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))
