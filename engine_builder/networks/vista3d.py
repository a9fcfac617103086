"""VISTA3D with its class prompts fixed: automatic ("everything") segmentation as one static graph.

MONAI's ``monai.networks.nets.vista3d132`` (He et al., "VISTA3D: Versatile Imaging SegmenTation and Annotation
model for 3D Computed Tomography", arXiv:2406.05285) is a factory function building a ``VISTA3D`` module: a
SegResNetDS2 image encoder, a class head (class embeddings -> MLP -> dot product with the encoder's features) and
a point head for interactive clicks. Its forward takes prompts as arguments, so it cannot be exported as a network
that only takes an image. ``VISTA3DAuto`` is that module with the prompts of automatic segmentation stored in the
network: the class vector is a constant (non-persistent) buffer, no points are given, so the forward runs encoder
-> class head only and the exported graph has no prompt input and no point head.

Output: ``(batch, 1 + len(class_ids), *roi)`` logits. Channel ``k >= 1`` is the class head's logit for
``class_ids[k - 1]`` (a sigmoid logit: > 0 means the structure is present); channel 0 is a constant 0. So
``argmax`` over the channels is exactly VISTA3D's own post-processing (``monai.apps.vista3d.transforms.
VistaPostTransformd``): a voxel where every class logit is <= 0 is background (argmax picks the first of equal
values, channel 0, also where the largest logit is exactly 0), otherwise the class with the largest logit. That
holds after sliding-window blending too, since blending the constant channel leaves it 0.

Published configuration (MONAI model zoo bundle ``vista3d`` v0.5.4, ``configs/inference.json``):
``vista3d132(in_channels=1)`` (encoder width 48, SegResNetDS2 blocks (1, 2, 2, 4, 4), 512 class embeddings),
automatic segmentation prompts ``everything_labels`` = 1..132 except {2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128,
129, 130, 131, 132}: 117 classes. Weights: the bundle's ``models/model.pt``, whose keys are those of
``vista3d132()`` and therefore of this class (the class vector is not saved).
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import SegResNetDS2
from monai.networks.nets.vista3d import VISTA3D, ClassMappingClassify, PointMappingSAM

#: VISTA3D's class ids that the bundle prompts for automatic segmentation (``everything_labels``), ascending.
EVERYTHING_LABELS = tuple(sorted(set(range(1, 133)) - {2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132}))
_CLASS_EMBEDDINGS = 512  # vista3d132's class and point heads
_LAST_SUPPORTED = 132


class VISTA3DAuto(VISTA3D):
    """VISTA3D (``vista3d132`` layout) segmenting ``class_ids`` automatically; see the module docstring.

    Args:
        in_channels: image channels (1, CT).
        out_channels: 1 + len(class_ids) (the constant background channel first).
        class_ids: VISTA3D class ids to segment, in output-channel order (``EVERYTHING_LABELS``), at least two.
        encoder_embed_dim: encoder and head width (48 in ``vista3d132``).
        blocks_down: residual blocks per SegResNetDS2 encoder level ((1, 2, 2, 4, 4) in ``vista3d132``).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = len(EVERYTHING_LABELS) + 1,
                 class_ids: Sequence[int] = EVERYTHING_LABELS, encoder_embed_dim: int = 48,
                 blocks_down: Sequence[int] = (1, 2, 2, 4, 4)):
        if out_channels != len(class_ids) + 1:
            raise ValueError(f"VISTA3DAuto: out_channels {out_channels} must be 1 + {len(class_ids)} class ids")
        if len(class_ids) < 2 or not all(1 <= int(c) < _CLASS_EMBEDDINGS for c in class_ids):
            raise ValueError(f"VISTA3DAuto: class_ids must be at least two ids in 1..{_CLASS_EMBEDDINGS - 1}")
        encoder = SegResNetDS2(in_channels=in_channels, blocks_down=tuple(blocks_down), norm="instance",
                               out_channels=encoder_embed_dim, init_filters=encoder_embed_dim, dsdepth=1)
        super().__init__(image_encoder=encoder,
                         class_head=ClassMappingClassify(n_classes=_CLASS_EMBEDDINGS, feature_size=encoder_embed_dim,
                                                         use_mlp=True),
                         point_head=PointMappingSAM(feature_size=encoder_embed_dim, n_classes=_CLASS_EMBEDDINGS,
                                                    last_supported=_LAST_SUPPORTED))
        # (N, 1) as VISTA3D's evaluator passes it; not persistent, so state_dict() stays the bundle's.
        self.register_buffer("class_vector", torch.tensor([[int(c)] for c in class_ids]), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # noqa: D102  (module docstring)
        logits = super().forward(image, class_vector=self.class_vector, transpose=True)
        return torch.cat((torch.zeros_like(logits[:, :1]), logits), dim=1)
