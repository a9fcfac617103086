"""The network classes a ModelSpec may name: architecture name -> (module to import, attribute).

Engine manifests are untrusted data, so ``ModelSpec.architecture`` is looked up here instead of importing
whatever dotted path a manifest holds.
"""

ALLOWED = {
    "monai.networks.nets.UNet": ("monai.networks.nets", "UNet"),
    "monai.networks.nets.SegResNet": ("monai.networks.nets", "SegResNet"),
    "monai.networks.nets.SwinUNETR": ("monai.networks.nets", "SwinUNETR"),
    "monai.networks.nets.DynUNet": ("monai.networks.nets", "DynUNet"),
    "engine_builder.networks.unest.UNesT": ("engine_builder.networks.unest", "UNesT"),
    "engine_builder.networks.transunet.TransUNet3D": ("engine_builder.networks.transunet", "TransUNet3D"),
    "engine_builder.networks.stunet.STUNet": ("engine_builder.networks.stunet", "STUNet"),
}
