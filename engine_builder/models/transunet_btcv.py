"""3D TransUNet (encoder-only, ViT-B bottleneck) on the BTCV abdomen: the study's TransUNet configuration.

Network: ``engine_builder.networks.transunet.TransUNet3D`` (Chen et al., 3D TransUNet, implemented from the papers
with the official code's key names): nnU-Net-style CNN encoder (32, 64, 128, 256, 320 channels, four 2x strides:
16x downsampling), a ViT-B over the 6³ bottleneck tokens (embedding 768, 12 layers, 12 heads, MLP 3072), nnU-Net
decoder; 14 outputs (background + 13 BTCV organs); 102.3 M parameters. Preprocessing: the BTCV pipeline of the
MedPTQ study's ``deploy.py`` and of the MONAI zoo's BTCV bundles (RAS, 1.5 x 1.5 x 2.0 mm, window -175..250 HU to
0..1), ROI 96³, overlap 0.5 with Gaussian blending (``deploy.py``).

Weights: no checkpoint of this network is published (the 3D TransUNet repository links none; the study released
its TransUNet only as ONNX graphs of its own, smaller, implementation: those build with
``ptqseg build --onnx transunet_fp32.onnx --spec engine_builder/models/study/medptq_btcv.json``). Pass
``--weights`` with a state dict of this network (plain, or nnU-Net's ``network_weights``/``state_dict``).
"""

from ..spec import ModelSpec, WeightsSource
from .swin_unetr_btcv import BTCV_INTENSITY, BTCV_SPACING_MM, LABELS

TRANSUNET_BTCV = ModelSpec(
    name="transunet_btcv",
    description="3D TransUNet (ViT-B bottleneck, 16x downsampling), BTCV abdomen CT, 13 organs, 1.5 x 1.5 x 2 mm "
                "(no published checkpoint: --weights)",
    architecture="engine_builder.networks.transunet.TransUNet3D",
    arch_args=dict(in_channels=1, out_channels=len(LABELS), img_size=96, features=(32, 64, 128, 256, 320),
                   strides=(2, 2, 2, 2), hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    labels=LABELS,
    roi_size=(96, 96, 96),
    spacing_mm=BTCV_SPACING_MM,
    orientation="RAS",
    intensity=BTCV_INTENSITY,
    overlap=0.5,
    weights=WeightsSource(kind="none", url="https://github.com/Beckschen/3D-TransUNet"),
    network_kind="transformer",
)

SPECS = (TRANSUNET_BTCV,)
