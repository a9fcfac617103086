"""MONAI SwinUNETR as in the MONAI model zoo's ``swin_unetr_btcv_segmentation`` bundle: the 13 BTCV abdominal organs.

Published configuration (Project-MONAI/model-zoo@dfae206, ``models/swin_unetr_btcv_segmentation`` v0.5.6,
``configs/inference.json``): ``SwinUNETR(spatial_dims=3, img_size=96, in_channels=1, out_channels=14,
feature_size=48, use_checkpoint=False)``. MONAI 1.5 removed ``img_size`` (the window size no longer fixes any
weight), so the arguments here leave it out; ``use_checkpoint`` only trades training memory and changes no key.
62.2 M parameters; the state dict has 8 ``relative_position_index`` buffers besides the parameters, and the
bundle's checkpoint carries them, so it loads with strict keys. Orientation RAS, spacing 1.5 x 1.5 x 2.0 mm,
``ScaleIntensityRanged(a_min=-175, a_max=250, b_min=0, b_max=1, clip=True)``, sliding window 96³ with overlap 0.5
and the inferer's default constant blending. Labels: BTCV's background + 13 organs.

The study (MedPTQ, Qu et al. 2025) reports its SwinUNETR on TotalSegmentator V2, not BTCV; this entry is the
zoo's public BTCV checkpoint, the one a user can download.

Weights: the bundle's ``models/model.pt``, from ``--weights`` (the bundle folder or the file), from
``<cache>/bundles/swin_unetr_btcv_segmentation``, or downloaded there with ``monai.bundle`` on ``--download``.
"""

from ..spec import Intensity, ModelSpec, WeightsSource
from . import label_table

LABELS = label_table("btcv")
#: The BTCV preprocessing of the MONAI zoo's BTCV bundles (also used for the study's BTCV networks).
BTCV_INTENSITY = Intensity(kind="window", a_min=-175.0, a_max=250.0, b_min=0.0, b_max=1.0)
BTCV_SPACING_MM = (1.5, 1.5, 2.0)

SWIN_UNETR_BTCV = ModelSpec(
    name="swin_unetr_btcv",
    description="MONAI SwinUNETR (feature size 48), BTCV abdomen CT, 13 organs, 1.5 x 1.5 x 2 mm "
                "(MONAI zoo swin_unetr_btcv_segmentation)",
    architecture="monai.networks.nets.SwinUNETR",
    arch_args=dict(spatial_dims=3, in_channels=1, out_channels=len(LABELS), feature_size=48, use_checkpoint=False),
    labels=LABELS,
    roi_size=(96, 96, 96),
    spacing_mm=BTCV_SPACING_MM,
    orientation="RAS",
    intensity=BTCV_INTENSITY,
    overlap=0.5,
    blend="constant",
    weights=WeightsSource(kind="monai_bundle", name="swin_unetr_btcv_segmentation", path="models/model.pt"),
    network_kind="transformer",
)

SPECS = (SWIN_UNETR_BTCV,)
