"""engine_builder: post-training INT8 quantization of 3D medical segmentation networks, and inference with the engine.

Data flows one way: volume -> preprocess -> backend engine (sliding window) -> postprocess -> label map.
Nothing here imports 3D Slicer; the PTQSegment Slicer module is a thin layer over this package.
"""

__version__ = "0.1.0"
