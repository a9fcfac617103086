"""UNesT: a U-shaped segmentation network with a hierarchical nested-transformer (NesT) encoder.

Paper: X. Yu et al., "UNesT: Local spatial representation learning with hierarchical transformer for efficient
medical segmentation", Medical Image Analysis 90 (2023) 102939. The encoder follows Z. Zhang et al., "Nested
Hierarchical Transformer" (AAAI 2022), made 3D: the image is cut into 4³-voxel patches, the patch grid into
non-overlapping blocks; every level runs ordinary transformer layers *inside* each block (local attention)
and a block aggregation (3x3x3 convolution, LayerNorm, 3x3x3 max pooling with stride 2) halves the grid and
merges every 2x2x2 neighbouring blocks into one before the next level. A convolutional decoder with residual
blocks (MONAI ``UnetResBlock`` layout: conv-IN-LeakyReLU, conv-IN, 1x1 projection of the input where the
channels change) upsamples with transposed convolutions and takes skips from the input, the patch embedding
and every level.

Published configuration (MONAI model zoo bundle ``wholeBrainSeg_Large_UNEST_segmentation``,
``configs/inference.json``): 1 input channel (T1-weighted MR, affinely registered to MNI305, z-score of the
non-zero voxels), 133 output channels (background + 132 brain structures), patch size 4, three levels with
embedding (128, 256, 512), depths (2, 2, 8), heads (4, 8, 16), MLP ratio 4, decoder feature size 16, ROI 96³
(sliding window, overlap 0.7). 87.2 M parameters at that configuration.

Shapes: input (batch, in_channels, S, S, S) with S = ``img_size``; output (batch, out_channels, S, S, S).
The position embeddings are sized for ``img_size``, so the ROI is fixed at construction (96 in the bundle);
``img_size / patch_size`` must be a multiple of 8 and at least 16 (four blocks per edge at the first level,
an even grid of at least 4 at the last), e.g. 64 or 96 with patch size 4.

Implemented from the paper; module attribute names were chosen so that ``state_dict()`` has exactly the keys
and shapes of the bundle's checkpoint ``models/model.pt`` (downloaded from
``https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/model_wholebrainseg_large_unest_segmentation.pt``),
recorded in ``Testing/data/unest_wholebrain_keys.json``; two details of that checkpoint's attention are
reproduced so its weights compute what they were trained to (see ``BlockAttention``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._layers import Mlp, Wrapped, attend

_LAYER_NORM_EPS = 1e-6  # the NesT encoder's LayerNorms (the checkpoint was trained with this epsilon)


class UNesT(nn.Module):
    """UNesT; see the module docstring.

    Args:
        in_channels: image channels (1 for T1 MR).
        out_channels: classes including background (133 in the whole-brain bundle).
        img_size: edge of the cubic ROI in voxels (96 in the bundle); fixes the position embeddings.
        feature_size: decoder width unit; the decoder has 2, 4, 8, 16, 32 and 64 times this many channels.
            The deepest embedding must equal ``32 * feature_size`` (512 = 32 x 16 in the bundle).
        patch_size: edge of the cubic patch embedded as one token (4).
        depths: transformer layers per level (2, 2, 8).
        embed_dim: token width per level (128, 256, 512).
        num_heads: attention heads per level (4, 8, 16).
        mlp_ratio: hidden width of the transformer MLP relative to the token width (4).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 133,
        img_size: int | Sequence[int] = 96,
        feature_size: int = 16,
        patch_size: int = 4,
        depths: Sequence[int] = (2, 2, 8),
        embed_dim: Sequence[int] = (128, 256, 512),
        num_heads: Sequence[int] = (4, 8, 16),
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        size = _cubic(img_size)
        if not len(depths) == len(embed_dim) == len(num_heads) == 3:
            raise ValueError("UNesT has three encoder levels: depths, embed_dim and num_heads need three entries each")
        if embed_dim[2] != 32 * feature_size:
            raise ValueError(f"UNesT: embed_dim[2] ({embed_dim[2]}) must be 32 * feature_size ({32 * feature_size}), "
                             "the width of the bottleneck skip")
        fs = feature_size
        self.nestViT = NestedEncoder(in_channels, size, patch_size, depths, embed_dim, num_heads, mlp_ratio)
        # Skips: the image itself, the patch embedding (upsampled twice to half resolution), and each level.
        self.encoder1 = SkipBlock(in_channels, 2 * fs)
        self.encoder2 = PatchUpsample(embed_dim[0], 4 * fs)
        self.encoder3 = SkipBlock(embed_dim[0], 8 * fs)
        self.encoder4 = SkipBlock(embed_dim[1], 16 * fs)
        self.encoder10 = Bottleneck(embed_dim[2], 64 * fs)
        self.decoder5 = UpBlock(64 * fs, 32 * fs)
        self.decoder4 = UpBlock(32 * fs, 16 * fs)
        self.decoder3 = UpBlock(16 * fs, 8 * fs)
        self.decoder2 = UpBlock(8 * fs, 4 * fs)
        self.decoder1 = UpBlock(4 * fs, 2 * fs)
        self.out = Wrapped(Wrapped(nn.Conv3d(2 * fs, out_channels, kernel_size=1)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        deepest, (patches, level1, level2, level3) = self.nestViT(image)
        x = self.encoder10(deepest)
        x = self.decoder5(x, level3)
        x = self.decoder4(x, self.encoder4(level2))
        x = self.decoder3(x, self.encoder3(level1))
        x = self.decoder2(x, self.encoder2(patches))
        x = self.decoder1(x, self.encoder1(image))
        return self.out(x)


def _cubic(img_size: int | Sequence[int]) -> int:
    sizes = {int(img_size)} if isinstance(img_size, int) else {int(s) for s in img_size}
    if len(sizes) != 1:
        raise ValueError(f"UNesT needs a cubic ROI, got {img_size}")
    return sizes.pop()


class NestedEncoder(nn.Module):
    """Patch embedding + three NesT levels + a final LayerNorm.

    Returns the normalised deepest feature map (batch, embed_dim[2], g/4, g/4, g/4), g = img_size / patch_size,
    and the four skip maps: patch embedding (embed_dim[0], g³), level 1 (embed_dim[0], g³), level 2
    (embed_dim[1], (g/2)³), level 3 (embed_dim[2], (g/4)³).
    """

    def __init__(self, in_channels, img_size, patch_size, depths, embed_dim, num_heads, mlp_ratio):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"UNesT: img_size {img_size} is not a multiple of patch_size {patch_size}")
        grid = img_size // patch_size
        blocks_per_edge = 2 ** (len(depths) - 1)  # halves with every aggregation, one block at the last level
        # The deepest level is one block of block_size³ tokens, halved once more by the bottleneck convolution:
        # an even edge of at least 4 keeps more than one voxel there for its instance norm.
        if grid % (2 * blocks_per_edge) or grid < 4 * blocks_per_edge:
            raise ValueError(f"UNesT: img_size / patch_size ({grid}) must be a multiple of {2 * blocks_per_edge} "
                             f"and at least {4 * blocks_per_edge}")
        block_size = grid // blocks_per_edge  # tokens per block edge, the same at every level
        self.patch_embed = PatchEmbedding(in_channels, embed_dim[0], patch_size)
        self.levels = nn.ModuleList(
            NestLevel(
                blocks_per_edge=blocks_per_edge >> i,
                block_size=block_size,
                dim=embed_dim[i],
                previous_dim=embed_dim[i - 1] if i else None,
                depth=depths[i],
                heads=num_heads[i],
                mlp_ratio=mlp_ratio,
            )
            for i in range(len(depths))
        )
        self.norm = nn.LayerNorm(embed_dim[-1], eps=_LAYER_NORM_EPS)

    def forward(self, image: torch.Tensor):
        x = self.patch_embed(image)
        skips = [x]
        for level in self.levels:
            x = level(x)
            skips.append(x)
        return _channel_norm(self.norm, x), skips


class PatchEmbedding(nn.Module):
    """Non-overlapping cubic patches to tokens: a strided convolution (``proj``)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image)


class NestLevel(nn.Module):
    """One hierarchy level: [block aggregation], blockify, + position embedding, transformer layers, deblockify.

    ``pos_embed`` has shape (1, blocks, tokens per block, dim) and is shared by all images; the first level has
    no aggregation (``pool`` is the identity).
    """

    def __init__(self, blocks_per_edge, block_size, dim, previous_dim, depth, heads, mlp_ratio):
        super().__init__()
        self.blocks_per_edge = blocks_per_edge
        self.block_size = block_size
        self.pos_embed = nn.Parameter(torch.zeros(1, blocks_per_edge ** 3, block_size ** 3, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pool = BlockAggregation(previous_dim, dim) if previous_dim else nn.Identity()
        self.transformer_encoder = nn.Sequential(*(TransformerLayer(dim, heads, mlp_ratio) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x).permute(0, 2, 3, 4, 1)  # channels last
        x = self.transformer_encoder(self._blockify(x) + self.pos_embed)
        return self._deblockify(x).permute(0, 4, 1, 2, 3)

    def _blockify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W, C) -> (B, blocks, tokens per block, C); blocks and tokens both in (d, h, w) order."""
        b, s, c = self.blocks_per_edge, self.block_size, x.shape[-1]
        x = x.reshape(-1, b, s, b, s, b, s, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(-1, b ** 3, s ** 3, c)

    def _deblockify(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = self.blocks_per_edge, self.block_size, x.shape[-1]
        x = x.reshape(-1, b, b, b, s, s, s, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(-1, b * s, b * s, b * s, c)


class BlockAggregation(nn.Module):
    """3x3x3 convolution, LayerNorm over channels, 3x3x3 max pooling with stride 2 (halves the grid)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv3d(in_dim, out_dim, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(out_dim, eps=_LAYER_NORM_EPS)
        self.pool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(_channel_norm(self.norm, self.conv(x)))


def _channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channel axis of a (B, C, D, H, W) map."""
    return norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer on (B, blocks, tokens, C): x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.attn = BlockAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlockAttention(nn.Module):
    """Multi-head self-attention inside each block of (B, blocks, tokens, C).

    Two layout details are fixed by the checkpoint's weights: ``qkv`` produces channels ordered
    (query/key/value, head, head channel), and the heads' outputs are concatenated head-channel-major
    (channel = head channel * heads + head) before ``proj``, as the NesT implementation the bundle was
    trained with does; the usual head-major order would permute ``proj``'s input columns.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"UNesT: embedding {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, blocks, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, blocks, tokens, 3, self.heads, dim // self.heads)
        query, key, value = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each (B, heads, blocks, tokens, head_dim)
        context = attend(query, key, value).permute(0, 2, 3, 4, 1)  # (B, blocks, tokens, head_dim, heads)
        return self.proj(context.reshape(batch, blocks, tokens, dim))


class ResBlock(nn.Module):
    """Residual block in MONAI ``UnetResBlock`` layout (bias-free convolutions, non-affine instance norm):
    LeakyReLU(IN(conv2(LeakyReLU(IN(conv1 x)))) + shortcut), the shortcut a 1x1 convolution + IN where the
    channel count changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = Wrapped(nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False))
        self.conv2 = Wrapped(nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False))
        self.lrelu = nn.LeakyReLU(0.01)
        self.norm1 = nn.InstanceNorm3d(out_channels)
        self.norm2 = nn.InstanceNorm3d(out_channels)
        self.projects = in_channels != out_channels
        if self.projects:
            self.conv3 = Wrapped(nn.Conv3d(in_channels, out_channels, 1, bias=False))
            self.norm3 = nn.InstanceNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.lrelu(self.norm1(self.conv1(x)))))
        shortcut = self.norm3(self.conv3(x)) if self.projects else x
        return self.lrelu(y + shortcut)


class SkipBlock(nn.Module):
    """A residual block on a skip path (kept under ``layer``, as in the checkpoint)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.layer = ResBlock(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class PatchUpsample(nn.Module):
    """The patch-embedding skip: 2x transposed convolution, then a 1x1x1 transposed convolution, no norm."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.transp_conv_init = Wrapped(nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2, bias=False))
        self.blocks = nn.ModuleList([Wrapped(nn.ConvTranspose3d(out_channels, out_channels, 1, bias=False))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transp_conv_init(x)
        for block in self.blocks:
            x = block(x)
        return x


class Bottleneck(nn.Module):
    """Strided 3x3x3 convolution (halves the deepest grid), PReLU, instance norm (MONAI ``Convolution`` with
    ADN ordering: the PReLU slope is ``adn.A.weight``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, stride=2, padding=1)
        self.adn = _PReLUThenNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adn(self.conv(x))


class _PReLUThenNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.A = nn.PReLU()  # the name is the checkpoint's
        self.N = nn.InstanceNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.N(self.A(x))


class UpBlock(nn.Module):
    """Decoder stage: 2x transposed convolution, concatenation with the skip, residual block."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.transp_conv = Wrapped(nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2, bias=False))
        self.conv_block = ResBlock(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))
