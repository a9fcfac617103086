"""The network classes a model spec may name: an allow-list, because specs are data.

A spec travels inside every engine's ``manifest.json``, and engines are files people share. Importing whatever
dotted path a manifest names would let a shared engine run any code on ``ptqseg segment``
(``"architecture": "os.system"``), so a spec names an architecture from this table, and only these classes are
ever imported and called. Their constructor arguments are plain JSON values (checked in ``spec.py``).

Adding an architecture is one line here (plus its registry entry and test).
"""

from __future__ import annotations

import importlib

from .errors import PTQError

#: Architecture name (what specs and manifests say) -> (module, class) that builds it.
ALLOWED: dict[str, tuple[str, str]] = {
    "monai.networks.nets.UNet": ("monai.networks.nets", "UNet"),
    "monai.networks.nets.SegResNet": ("monai.networks.nets", "SegResNet"),
    "monai.networks.nets.SwinUNETR": ("monai.networks.nets", "SwinUNETR"),
    "monai.networks.nets.DynUNet": ("monai.networks.nets", "DynUNet"),
    "monai.networks.nets.BasicUNet": ("monai.networks.nets", "BasicUNet"),
    "monai.networks.nets.AttentionUnet": ("monai.networks.nets", "AttentionUnet"),
    "monai.networks.nets.UNETR": ("monai.networks.nets", "UNETR"),
    "engine_builder.networks.unest.UNesT": ("engine_builder.networks.unest", "UNesT"),
    "engine_builder.networks.transunet.TransUNet3D": ("engine_builder.networks.transunet", "TransUNet3D"),
    "engine_builder.networks.stunet.STUNet": ("engine_builder.networks.stunet", "STUNet"),
    "engine_builder.networks.vista3d.VISTA3DAuto": ("engine_builder.networks.vista3d", "VISTA3DAuto"),
    # nnU-Net v2 folders: dynamic_network_architectures networks named by allow-listed strings (networks/nnunet.py)
    "engine_builder.networks.nnunet.NNUNet": ("engine_builder.networks.nnunet", "NNUNet"),
}


def is_allowed(name: str) -> bool:
    return name in ALLOWED


def network_class(name: str):
    """The class behind an allowed architecture name; PTQError for any other name (nothing is imported)."""
    if name not in ALLOWED:
        raise PTQError(f"architecture '{name}' is not one PTQSegment builds (allowed: {', '.join(sorted(ALLOWED))}); "
                       "an engine naming another one is refused")
    module_name, class_name = ALLOWED[name]
    return getattr(importlib.import_module(module_name), class_name)
