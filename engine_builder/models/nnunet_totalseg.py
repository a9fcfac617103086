"""TotalSegmentator ``--fast`` (task 297): an nnU-Net v2 3d_fullres PlainConvUNet at 3 mm, 117 structures.

Where it comes from (wasserth/TotalSegmentator@0e65a44): task ``total`` in fast mode is nnU-Net v2 dataset
``Dataset297_TotalSegmentator_total_3mm_1559subj``, configuration folder
``nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres``, fold 0, ``checkpoint_final.pth``, downloaded by
TotalSegmentator from its GitHub release ``v2.0.0-weights``. Its exact plans (patch size, stages, CT
normalisation statistics) exist only in that folder, so **with the folder** (``--weights Dataset297_...`` or its
configuration folder; found without ``--weights`` in TotalSegmentator's own ``~/.totalsegmentator`` (or
``$TOTALSEG_HOME_DIR``) and in ``<cache>/nnunet``; downloaded with TotalSegmentator's own
``download_pretrained_weights(297)`` on ``--download``) everything is read from its ``plans.json``/
``dataset.json`` by the nnU-Net loader, under this entry's name, colours and terminology.

Without the folder (``--random-init``: speed and size only) this spec stands in for it, and every figure of it
that the public sources do not state is marked here:
- nnU-Net v2's default planner output for 3 mm isotropic CT with the patch 112 x 112 x 128 (nnU-Net's [z, y, x])
  that public benchmark code gives for this model (unverified): nnunetv2's own ``get_pool_and_conv_props`` turns
  it into 5 stages, strides 1, 2, 2, 2, 2 on every axis, 3³ kernels, with the default widths 32..320 and two
  convolutions per stage (16.6 M parameters with 118 outputs);
- CT normalisation statistics computed here, with nnU-Net's formula, from TotalSegmentator's own example CT and its
  labelled voxels (one case: 0.5/99.5 percentiles -992 / 724 HU, mean 8.29, std 258.29), not the model's;
- labels: background + TotalSegmentator v2's 117 ``total`` classes (118 outputs, ``class_map["total"]`` order).
Needs ``dynamic_network_architectures`` (``pip install 'ptqsegment[nnunet]'``).
"""

from ..spec import Intensity, ModelSpec, WeightsSource
from . import label_table

LABELS = label_table("totalsegmentator_v2")
DATASET = "Dataset297_TotalSegmentator_total_3mm_1559subj"
CONFIGURATION = "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
_STAGES = 5


def plain_conv_unet(features: list[int], strides: list[list[int]]) -> dict:
    """The plans' ``architecture`` of an nnU-Net v2 default 3D PlainConvUNet (3³ kernels, two convolutions per stage,
    instance norm, LeakyReLU), as plain JSON: ``network_class_name`` and ``arch_kwargs``."""
    stages = len(features)
    return {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": stages, "features_per_stage": list(features),
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * stages,
                            "strides": [list(s) for s in strides], "n_conv_per_stage": [2] * stages,
                            "n_conv_per_stage_decoder": [2] * (stages - 1), "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}}


NNUNET_TOTALSEG = ModelSpec(
    name="nnunet_totalseg",
    description="nnU-Net v2 PlainConvUNet, TotalSegmentator --fast (Dataset297, 3 mm), 117 structures "
                "(plans from the folder)",
    architecture="engine_builder.networks.nnunet.NNUNet",
    arch_args=dict(**plain_conv_unet([min(32 * 2 ** i, 320) for i in range(_STAGES)],
                                     [[1, 1, 1]] + [[2, 2, 2]] * (_STAGES - 1)),
                   in_channels=1, out_channels=len(LABELS), folds=1, mirror_axes=[]),
    labels=LABELS,
    roi_size=(112, 112, 128),
    spacing_mm=(3.0, 3.0, 3.0),
    orientation="stored",
    intensity=Intensity(kind="ct_clip_zscore", a_min=-992.0, a_max=724.0, mean=8.29, std=258.29),
    overlap=0.5,
    weights=WeightsSource(kind="nnunet", name=DATASET, path=CONFIGURATION,
                          url="https://github.com/wasserth/TotalSegmentator/releases/download/v2.0.0-weights/"
                              "Dataset297_TotalSegmentator_total_3mm_1559subj.zip"),
    pipeline="nnunet",
    axis_order=(2, 1, 0),
)

SPECS = (NNUNET_TOTALSEG,)
