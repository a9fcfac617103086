"""MONAI SegResNet as in the MONAI model zoo's ``wholeBody_ct_segmentation`` bundle: TotalSegmentator's 104 structures.

Published configuration (Project-MONAI/model-zoo@dfae206, ``models/wholeBody_ct_segmentation``,
``configs/inference.json``): ``SegResNet(spatial_dims=3, in_channels=1, out_channels=105, init_filters=32,
blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.2)`` (18.8 M parameters); orientation RAS; spacing
1.5 mm (``highres``: ``models/model.pt``; the bundle's 3 mm ``model_lowres.pt`` is another checkpoint at another
spacing, not this entry); intensity ``NormalizeIntensityd(nonzero=True)`` then ``ScaleIntensityd(minv=-1,
maxv=1)`` (our ``zscore_minmax``); sliding window 96³, overlap 0.25, Gaussian blending. The bundle pads windows at
the image border by replicating edge voxels (``padding_mode="replicate"``); PTQSegment pads with the background
value (-1), which changes only windows that reach past the image. Labels: background + the 104 TotalSegmentator v1
structures in the bundle's ``channel_def`` order.

Weights: the bundle's ``models/model.pt`` (a plain state dict), from ``--weights`` (the bundle folder or the file),
from ``<cache>/bundles/wholeBody_ct_segmentation``, or downloaded there with ``monai.bundle`` on ``--download``.
"""

from ..spec import Intensity, ModelSpec, WeightsSource
from . import label_table

LABELS = label_table("totalsegmentator_v1")

SEGRESNET_WHOLEBODY = ModelSpec(
    name="segresnet_wholebody",
    description="MONAI SegResNet, whole-body CT, 104 TotalSegmentator v1 structures, 1.5 mm "
                "(MONAI zoo wholeBody_ct_segmentation)",
    architecture="monai.networks.nets.SegResNet",
    arch_args=dict(spatial_dims=3, in_channels=1, out_channels=len(LABELS), init_filters=32, blocks_down=(1, 2, 2, 4),
                   blocks_up=(1, 1, 1), dropout_prob=0.2),
    labels=LABELS,
    roi_size=(96, 96, 96),
    spacing_mm=(1.5, 1.5, 1.5),
    orientation="RAS",
    intensity=Intensity(kind="zscore_minmax", b_min=-1.0, b_max=1.0),
    overlap=0.25,
    weights=WeightsSource(kind="monai_bundle", name="wholeBody_ct_segmentation", path="models/model.pt"),
)

SPECS = (SEGRESNET_WHOLEBODY,)
