"""MONAI UNet as in the MONAI model zoo's ``spleen_ct_segmentation`` bundle (CT, spleen): the study's U-Net.

Published configuration (Project-MONAI/model-zoo@dfae206, bundle v0.5.9, ``configs/inference.json``):
``UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
num_res_units=2, norm="batch")``; orientation RAS, spacing 1.5 x 1.5 x 2.0 mm, ``ScaleIntensityRanged(a_min=-57,
a_max=164, b_min=0, b_max=1, clip=True)``, sliding window 96³ with overlap 0.5 and the inferer's default constant
blending. (The study's own U-Net, released as ONNX for BTCV, is another network: it builds with ``--onnx`` and
``engine_builder/models/specs/medptq_btcv.json``.)

Weights: the bundle's ``models/model.pt``, from ``--weights`` (the bundle folder or the file), from
``<cache>/bundles/spleen_ct_segmentation``, or downloaded there with ``monai.bundle`` on ``--download``.
"""

from ..spec import Intensity, Label, ModelSpec, WeightsSource
from .demo import ANATOMICAL_STRUCTURE

UNET_SPLEEN = ModelSpec(
    name="unet",
    description="MONAI UNet, spleen CT (architecture and preprocessing of the MONAI spleen_ct_segmentation bundle)",
    architecture="monai.networks.nets.UNet",
    arch_args=dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                   strides=(2, 2, 2, 2), num_res_units=2, norm="batch"),
    labels=(Label(0, "background", (0, 0, 0)),
            Label(1, "spleen", (157, 108, 162), "SCT^78961009^Spleen", ANATOMICAL_STRUCTURE)),
    roi_size=(96, 96, 96),
    spacing_mm=(1.5, 1.5, 2.0),
    intensity=Intensity(kind="window", a_min=-57.0, a_max=164.0, b_min=0.0, b_max=1.0),
    overlap=0.5,
    blend="constant",
    weights=WeightsSource(kind="monai_bundle", name="spleen_ct_segmentation", path="models/model.pt"),
)

SPECS = (UNET_SPLEEN,)
