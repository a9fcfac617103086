"""VISTA3D as in the MONAI model zoo's ``vista3d`` bundle, automatic ("everything") segmentation of 117 classes.

Published configuration (Project-MONAI/model-zoo@dfae206, bundle v0.5.4): ``monai.networks.nets.vista3d132(
in_channels=1)`` (218.0 M parameters), here as ``engine_builder.networks.vista3d.VISTA3DAuto``, which fixes the
bundle's ``everything_labels`` class prompts inside the graph and adds a constant background channel (see that
module for how background is derived: exactly VISTA3D's own post-processing). Preprocessing: spacing 1.5 mm,
``ScaleIntensityRanged(a_min=-963.8247715525971, a_max=1053.678477684517, b_min=0, b_max=1, clip=True)``,
orientation RAS; ROI 128³. The bundle's automatic segmentation runs ``SlidingWindowInfererAdapt(roi_size,
sw_batch_size)`` (``scripts/inferer.py``), i.e. MONAI's default overlap 0.25 and constant blending; its
``overlap: 0.3`` applies to the point-prompt window only. The bundle's ``CropForegroundd(margin=10)`` is not
reproduced: the whole volume is segmented. Labels: background + the 117 classes in ascending VISTA3D class id; the
label map's values are channel numbers 0..117, not VISTA3D's class ids (``class_ids`` in the spec maps them).

Weights: the bundle's ``models/model.pt`` (keys of ``vista3d132()``), from ``--weights`` (the bundle folder or the
file), from ``<cache>/bundles/vista3d``, or downloaded there with ``monai.bundle`` on ``--download``.
"""

from ..spec import Intensity, ModelSpec, WeightsSource
from . import label_table, label_table_data

LABELS = label_table("vista3d_everything")
CLASS_IDS = tuple(label_table_data("vista3d_everything")["class_ids"])

VISTA3D = ModelSpec(
    name="vista3d",
    description="VISTA3D (MONAI vista3d132), CT, automatic segmentation of 117 classes, 1.5 mm (MONAI zoo vista3d)",
    architecture="engine_builder.networks.vista3d.VISTA3DAuto",
    arch_args=dict(in_channels=1, out_channels=len(LABELS), class_ids=CLASS_IDS, encoder_embed_dim=48,
                   blocks_down=(1, 2, 2, 4, 4)),
    labels=LABELS,
    roi_size=(128, 128, 128),
    spacing_mm=(1.5, 1.5, 1.5),
    orientation="RAS",
    intensity=Intensity(kind="window", a_min=-963.8247715525971, a_max=1053.678477684517, b_min=0.0, b_max=1.0),
    overlap=0.25,
    blend="constant",
    weights=WeightsSource(kind="monai_bundle", name="vista3d", path="models/model.pt"),
)

SPECS = (VISTA3D,)
