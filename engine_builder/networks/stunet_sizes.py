"""STU-Net's published sizes and the released checkpoints' strides, as data (no torch: the registry imports
them to list models without loading a runtime)."""

SIZES = {
    "S": dict(dims=(16, 32, 64, 128, 256, 256), depth=(1,) * 6),
    "B": dict(dims=(32, 64, 128, 256, 512, 512), depth=(1,) * 6),
    "L": dict(dims=(64, 128, 256, 512, 1024, 1024), depth=(2,) * 6),
    "H": dict(dims=(96, 192, 384, 768, 1536, 1536), depth=(3,) * 6),
}
"""Constructor arguments of the four published sizes."""

TOTALSEGMENTATOR_STRIDES = ((2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 2))
"""Downsampling strides of the released TotalSegmentator checkpoints (nnU-Net v1 plans, 1.5 mm, patch 128³)."""
