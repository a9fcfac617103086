"""STU-Net-S (the smallest published size) as released for TotalSegmentator: 104 structures, nnU-Net v1 pipeline.

Network: ``engine_builder.networks.stunet.STUNet`` at size S (16..256 channels, one residual block per stage,
14.6 M parameters), 105 outputs, strides (2,2,2) x 4 + (1,1,2), the released checkpoints' keys. Published
configuration (uni-medical/STU-Net, nnU-Net v1 plans ``Task101_TotalSegmentator``): 1.5 mm isotropic, patch 128³,
no reorientation (``transpose_forward`` [0, 1, 2]), normalisation ``nonCT`` (z-score of each image over all its
voxels), sliding window at step 0.5 with nnU-Net's Gaussian. PTQSegment runs it through its nnU-Net steps
(``pipeline="nnunet"``, nnU-Net v2's order: normalise, then resample; nnU-Net v1 resampled first, which moves the
z-score's mean and standard deviation by what the interpolation changes). Labels: background + the 104
TotalSegmentator v1 structures in the order of the repository's ``label_orders.json``. B, L and H are the same
class at other sizes (``stunet.SIZES``).

Weights: the released nnU-Net v1 checkpoint ``small_ep4k.model`` (weights under ``state_dict``, numpy training
logs beside them, loaded without unpickling code), from ``--weights FILE`` or ``<cache>/weights/small_ep4k.model``;
it is published on Google Drive / Baidu Netdisk (STU-Net README) and no library downloads it.
"""

from ..networks.stunet_sizes import SIZES, TOTALSEGMENTATOR_STRIDES
from ..spec import Intensity, ModelSpec, WeightsSource
from . import label_table

LABELS = label_table("totalsegmentator_v1_stunet")

STUNET_S = ModelSpec(
    name="stunet",
    description="STU-Net-S, whole-body CT, 104 TotalSegmentator v1 structures, 1.5 mm, nnU-Net pipeline "
                "(released small_ep4k.model)",
    architecture="engine_builder.networks.stunet.STUNet",
    arch_args=dict(in_channels=1, out_channels=len(LABELS), **SIZES["S"], strides=TOTALSEGMENTATOR_STRIDES),
    labels=LABELS,
    roi_size=(128, 128, 128),
    spacing_mm=(1.5, 1.5, 1.5),
    orientation="stored",
    intensity=Intensity(kind="nnunet_zscore", use_mask=False),
    overlap=0.5,
    weights=WeightsSource(kind="release", name="small_ep4k.model",
                          url="https://drive.google.com/file/d/1HReH6dDrEuXgHPrsw7OrHSjvEUF3f4mv/view"),
    pipeline="nnunet",
    axis_order=(2, 1, 0),
)

SPECS = (STUNET_S,)
