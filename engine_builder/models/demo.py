"""The project's demo model: a small MONAI UNet trained on synthetic CT phantoms and a few real CTs.

DEMO ONLY, NOT FOR CLINICAL USE. It exists so that every part of the pipeline (calibration, INT8
quantization, whole-volume inference) can be shown and tested on a network with meaningful weights,
because no pretrained weights can be downloaded where this project is built. It is trained by
``scripts/train_demo_model.py`` (committed), and its weights ship in ``weights/demo_unet.pt``.
"""

from ..spec import Intensity, Label, ModelSpec, WeightsSource

#: Categories and laterality modifiers as Slicer's "3D Slicer General Anatomy" terminology list files them
#: (Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json).
ANATOMICAL_STRUCTURE = "SCT^123037004^Anatomical Structure"
TISSUE = "SCT^85756007^Tissue"
LEFT, RIGHT = "SCT^7771000^Left", "SCT^24028007^Right"

# Colours: Slicer's recommended ones where they differ enough to tell segments apart; Slicer gives both kidneys
# one colour and the stomach nearly the liver's, so those have their own here.
DEMO_LABELS = (
    Label(0, "background", (0, 0, 0)),
    Label(1, "liver", (221, 130, 101), "SCT^10200004^Liver", ANATOMICAL_STRUCTURE),
    Label(2, "spleen", (157, 108, 162), "SCT^78961009^Spleen", ANATOMICAL_STRUCTURE),
    Label(3, "kidney_left", (185, 102, 83), "SCT^64033007^Kidney", ANATOMICAL_STRUCTURE, LEFT),
    Label(4, "kidney_right", (128, 174, 128), "SCT^64033007^Kidney", ANATOMICAL_STRUCTURE, RIGHT),
    Label(5, "stomach", (255, 128, 192), "SCT^69695003^Stomach", ANATOMICAL_STRUCTURE),
    Label(6, "lung", (197, 165, 145), "SCT^39607008^Lung", ANATOMICAL_STRUCTURE),
    Label(7, "bone", (241, 214, 145), "SCT^272673000^Bone", TISSUE),
)

DEMO = ModelSpec(
    name="demo",
    description="Demo abdominal/thoracic CT model (small MONAI UNet, 1.5 mm). Demo only, not for clinical use.",
    architecture="monai.networks.nets.UNet",
    arch_args=dict(
        spatial_dims=3,
        in_channels=1,
        out_channels=len(DEMO_LABELS),
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=2,
        norm="instance",
    ),
    labels=DEMO_LABELS,
    roi_size=(96, 96, 96),
    spacing_mm=(1.5, 1.5, 1.5),
    orientation="RAS",
    intensity=Intensity(kind="window", a_min=-1000.0, a_max=1000.0, b_min=0.0, b_max=1.0),
    overlap=0.25,
    weights=WeightsSource(kind="packaged", path="demo_unet.pt"),
    modality="CT",
    clinical_use=False,
)

SPECS = (DEMO,)
