"""The study's networks that MONAI does not provide, as plain torch modules.

Each module implements one published architecture from its paper, with attribute names chosen so that
``state_dict()`` has the keys and tensor shapes of the published checkpoint (or, where no checkpoint is
published, of the authors' reference code), so that those checkpoints load with strict keys:

    unest.UNesT          UNesT (Yu et al., MedIA 2023), MONAI model zoo ``wholeBrainSeg_Large_UNEST_segmentation``
    transunet.TransUNet3D  3D TransUNet, encoder-only (Chen et al., 2023), ViT-B bottleneck
    stunet.STUNet        STU-Net S/B/L/H (Huang et al., 2023), nnU-Net based, TotalSegmentator checkpoints
    vista3d.VISTA3DAuto  MONAI's VISTA3D with its automatic-segmentation class prompts fixed inside the graph

Every network takes one (batch, in_channels, *roi) float tensor and returns the full-resolution logits
(batch, out_channels, *roi): deep-supervision heads, where a checkpoint has them, are kept as parameters
but not evaluated. Forward passes have no data-dependent Python control flow, so the TorchScript ONNX
exporter traces them to static graphs.
"""
