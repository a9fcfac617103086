"""Bring your own model: readers for models PTQSegment's registry does not define.

    spec_file.py    a spec file (JSON/YAML) for a graph-only model
    onnx_graph.py   a user's ONNX graph: checked against the spec, fixed to static shapes
    torchscript.py  a user's TorchScript archive (loaded without unpickling Python objects)
    bundle.py       MONAI model-zoo bundles (folder or zip), read as data
    nnunet.py       nnU-Net v2 results folders (plans.json, dataset.json, fold_N/checkpoint_final.pth)

``engine_builder.model_source.resolve`` turns any of them (or a registry model) into a ``ModelSource``.
"""
