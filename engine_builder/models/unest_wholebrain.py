"""UNesT as in the MONAI model zoo's ``wholeBrainSeg_Large_UNEST_segmentation`` bundle: 133 whole-brain labels.

Published configuration (Project-MONAI/model-zoo@dfae206, bundle v0.2.5, ``configs/inference.json``; the network
is ``engine_builder.networks.unest.UNesT``, implemented from the paper with the bundle checkpoint's keys):
``in_channels=1, out_channels=133, patch_size=4, depths=(2, 2, 8), embed_dim=(128, 256, 512), num_heads=(4, 8,
16)``, feature size 16, ROI 96³ (87.2 M parameters). Input: a T1-weighted MR **affinely registered to the MNI305
template** (the bundle neither reorients nor resamples: registration is the user's step, see the bundle's
README), z-score of the non-zero voxels; sliding window 96³ with overlap 0.7 and the inferer's default constant
blending. Here the volume is taken as stored (no reorientation) at 1 mm, the MNI305 grid's spacing (a 1 mm
registered image is not resampled). Labels: background + 132 structures (BrainCOLOR names as the bundle spells
them).

Weights: the bundle's ``models/model.pt``, from ``--weights`` (the bundle folder or the file), from
``<cache>/bundles/wholeBrainSeg_Large_UNEST_segmentation``, or downloaded there with ``monai.bundle`` on
``--download``.
"""

from ..spec import Intensity, ModelSpec, WeightsSource
from . import label_table

LABELS = label_table("wholebrain_133")

UNEST_WHOLEBRAIN = ModelSpec(
    name="unest_wholebrain",
    description="UNesT, whole-brain T1 MR registered to MNI305, 132 structures "
                "(MONAI zoo wholeBrainSeg_Large_UNEST_segmentation)",
    architecture="engine_builder.networks.unest.UNesT",
    arch_args=dict(in_channels=1, out_channels=len(LABELS), img_size=96, feature_size=16, patch_size=4,
                   depths=(2, 2, 8), embed_dim=(128, 256, 512), num_heads=(4, 8, 16)),
    labels=LABELS,
    roi_size=(96, 96, 96),
    spacing_mm=(1.0, 1.0, 1.0),
    orientation="stored",
    intensity=Intensity(kind="zscore"),
    overlap=0.7,
    blend="constant",
    weights=WeightsSource(kind="monai_bundle", name="wholeBrainSeg_Large_UNEST_segmentation", path="models/model.pt"),
    modality="MR",
    network_kind="transformer",
)

SPECS = (UNEST_WHOLEBRAIN,)
