"""3D TransUNet (encoder-only): an nnU-Net-style CNN encoder, a ViT over the bottleneck, a U-Net CNN decoder.

Papers: J. Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation",
arXiv:2102.04306 (2021), and its 3D version J. Chen et al., "3D TransUNet: Advancing Medical Image
Segmentation through Vision Transformers", arXiv:2310.07781 (2023). The encoder-only variant of the 3D paper
is used: a convolutional encoder (per resolution two 3x3x3 conv-IN-LeakyReLU layers, the first one strided
from the second resolution on) reduces the ROI 16 times; every bottleneck voxel becomes one token (1x1x1
convolution to the ViT width + learned position embeddings); a ViT-B encoder (12 pre-norm layers, width 768,
12 heads, MLP 3072, LayerNorm eps 1e-6) processes the tokens; a 1x1x1 convolution maps them back to the
bottleneck width; the nnU-Net decoder (2x transposed convolution, concatenation with the encoder skip, two
conv-IN-LeakyReLU layers) restores the resolution and a 1x1x1 convolution gives the logits.

Configuration chosen for the study's BTCV model (no 3D TransUNet checkpoint for BTCV is published):
1 input channel (CT), 14 output channels (background + the 13 BTCV organs), ROI 96³ with four 2x
downsamplings (16x in total, as in the 2D TransUNet, whose ViT sees a 1/16 grid), hence
6³ = 216 tokens; nnU-Net's encoder widths 32, 64, 128, 256, 320 (doubling from 32, capped at 320, nnU-Net's
3D limit that the 3D TransUNet code keeps). 96³ is the ROI of the MONAI BTCV pipeline (1.5 x 1.5 x 2.0 mm,
HU window -175..250 to 0..1, the ``swin_unetr_btcv_segmentation`` bundle's preprocessing), so the study's
transformer models share one preprocessing; the official nnU-Net plans for Synapse use other patch sizes
that depend on the dataset fingerprint. 102.3 M parameters at that configuration (85.1 M of them in the 12
ViT layers).

Shapes: input (batch, in_channels, *img_size) with every axis divisible by 2**len(strides) (16);
output (batch, out_channels, *img_size). The position embeddings are sized for ``img_size``.

Implemented from the papers; attribute names follow the official 3D TransUNet code
(github.com/Beckschen/3D-TransUNet, ``Generic_TransUNet_max_ppbp`` with the Transformer decoder off, i.e.
``configs/*/encoder_only.yaml``, convolutional pooling and upsampling), so its nnU-Net-style checkpoints
(``network_weights``/``state_dict``) map key for key, including the three lower-resolution deep-supervision
heads (kept, not evaluated). One difference: the official configuration files switch on a LayerScale on the
ViT residual branch (``ls1.gamma``, ``ls2.gamma`` keys) that neither paper describes; this network follows
the papers' standard ViT layer, and checkpoints with LayerScale keys are refused by name. The tiny
configuration used in CI (``hidden_size=48, num_layers=2, num_heads=2, mlp_dim=96, features=(8, 16, 32)``)
is the same code at another width.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._layers import Mlp, attend, unet_pass


class TransUNet3D(nn.Module):
    """3D TransUNet, encoder-only; see the module docstring.

    Args:
        in_channels: image channels (1 for CT).
        out_channels: classes including background (14 for BTCV).
        img_size: ROI in voxels, one int (cube) or three; fixes the number of tokens.
        features: encoder channels per resolution, full resolution first (32, 64, 128, 256, 320);
            one more entry than ``strides``.
        strides: downsampling per lower resolution; four 2s give the 16x bottleneck.
        hidden_size: ViT width (768).
        num_layers: ViT layers (12).
        num_heads: ViT attention heads (12).
        mlp_dim: ViT MLP hidden width (3072).
        convs_per_stage: conv-IN-LeakyReLU layers per resolution (2, nnU-Net's default).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        img_size: int | Sequence[int] = 96,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        strides: Sequence[int] = (2, 2, 2, 2),
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        convs_per_stage: int = 2,
    ):
        super().__init__()
        roi = (img_size,) * 3 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        if len(features) != len(strides) + 1:
            raise ValueError(f"TransUNet3D: {len(features)} feature widths need {len(features) - 1} strides, got {len(strides)}")
        downsampling = 1
        for stride in strides:
            downsampling *= stride
        if any(size % downsampling for size in roi):
            raise ValueError(f"TransUNet3D: img_size {roi} is not divisible by the total downsampling {downsampling}")
        self.token_grid = tuple(size // downsampling for size in roi)

        stages = [ConvStack(in_channels, features[0], convs_per_stage)]
        stages += [ConvStack(features[i - 1], features[i], convs_per_stage, strides[i - 1]) for i in range(1, len(features) - 1)]
        # The bottleneck is split as in nnU-Net: the strided layer(s), then one more layer.
        stages.append(nn.Sequential(ConvStack(features[-2], features[-1], convs_per_stage - 1, strides[-1]),
                                    ConvStack(features[-1], features[-1], 1)))
        self.conv_blocks_context = nn.ModuleList(stages)
        self.transformer = VisionTransformer(features[-1], self.token_grid, hidden_size, num_layers, num_heads, mlp_dim)
        self.conv_more = nn.Conv3d(hidden_size, features[-1], kernel_size=1)

        levels = range(len(features) - 2, -1, -1)  # decoder resolutions, deepest first
        self.tu = nn.ModuleList(
            nn.ConvTranspose3d(features[d + 1], features[d], strides[d], stride=strides[d], bias=False) for d in levels
        )
        self.conv_blocks_localization = nn.ModuleList(
            nn.Sequential(ConvStack(2 * features[d], features[d], convs_per_stage - 1), ConvStack(features[d], features[d], 1))
            for d in levels
        )
        self.seg_outputs = nn.ModuleList(nn.Conv3d(features[d], out_channels, kernel_size=1, bias=False) for d in levels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = unet_pass(image, self.conv_blocks_context, self.tu, self.conv_blocks_localization,
                             bottleneck=lambda x: self.conv_more(self.transformer(x)))
        return self.seg_outputs[-1](features)


class ConvStack(nn.Module):
    """``convs`` conv-IN-LeakyReLU layers (nnU-Net ``StackedConvLayers``); the first one takes the stride."""

    def __init__(self, in_channels: int, out_channels: int, convs: int, stride: int = 1):
        super().__init__()
        self.blocks = nn.Sequential(*(ConvNormAct(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
                                      for i in range(convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ConvNormAct(nn.Module):
    """3x3x3 convolution (biased), affine instance norm, LeakyReLU(0.01)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.instnorm = nn.InstanceNorm3d(out_channels, affine=True)
        self.lrelu = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrelu(self.instnorm(self.conv(x)))


class VisionTransformer(nn.Module):
    """ViT over a feature map: (B, C, *grid) -> tokens -> ``num_layers`` layers -> LayerNorm -> (B, hidden, *grid)."""

    def __init__(self, in_channels: int, grid: tuple[int, int, int], hidden_size: int, num_layers: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.grid = grid
        self.embeddings = TokenEmbedding(in_channels, grid[0] * grid[1] * grid[2], hidden_size)
        self.encoder = TransformerEncoder(hidden_size, num_layers, num_heads, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(self.embeddings(x))  # (B, tokens, hidden), tokens in (d, h, w) order
        return tokens.transpose(1, 2).reshape(-1, tokens.shape[-1], *self.grid)


class TokenEmbedding(nn.Module):
    """One token per voxel: a 1x1x1 convolution to the ViT width, plus a learned position embedding."""

    def __init__(self, in_channels: int, tokens: int, hidden_size: int):
        super().__init__()
        self.patch_embeddings = nn.Conv3d(in_channels, hidden_size, kernel_size=1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, tokens, hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embeddings(x).flatten(2).transpose(1, 2) + self.position_embeddings


class TransformerEncoder(nn.Module):
    def __init__(self, hidden_size: int, num_layers: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.layer = nn.ModuleList(TransformerLayer(hidden_size, num_heads, mlp_dim) for _ in range(num_layers))
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return self.encoder_norm(x)


class TransformerLayer(nn.Module):
    """Pre-norm ViT layer: x + attn(attention_norm(x)), then x + ffn(ffn_norm(x))."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.ffn = Mlp(hidden_size, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate ``query``, ``key``, ``value`` and ``out`` projections."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"TransUNet3D: hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape

        def heads(projection: nn.Linear) -> torch.Tensor:  # (B, heads, tokens, head_dim)
            return projection(x).reshape(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

        context = attend(heads(self.query), heads(self.key), heads(self.value))
        return self.out(context.transpose(1, 2).reshape(batch, tokens, width))
