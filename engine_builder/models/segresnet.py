"""MONAI SegResNet (init 16 filters, blocks 1-2-2-4) on the demo model's abdominal/thoracic label set.

No pretrained weights ship for it: pass ``--weights`` (a state dict of this architecture, e.g. one trained
with ``scripts/train_demo_model.py --model segresnet``), or ``--random-init`` for speed measurements.
"""

from ..spec import Intensity, ModelSpec
from .demo import DEMO_LABELS

SEGRESNET = ModelSpec(
    name="segresnet",
    description="MONAI SegResNet (init 16), abdominal/thoracic CT labels of the demo model, 3 mm",
    architecture="monai.networks.nets.SegResNet",
    arch_args=dict(spatial_dims=3, init_filters=16, in_channels=1, out_channels=len(DEMO_LABELS),
                   blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)),
    labels=DEMO_LABELS,
    roi_size=(96, 96, 96),
    spacing_mm=(3.0, 3.0, 3.0),
    intensity=Intensity(kind="window", a_min=-1000.0, a_max=1000.0, b_min=0.0, b_max=1.0),
    overlap=0.25,
)

SPECS = (SEGRESNET,)
