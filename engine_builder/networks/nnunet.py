"""nnU-Net v2 networks, built from the plain-JSON architecture of an nnU-Net ``plans.json``.

nnU-Net's plans name the network class and its layer types as dotted strings
(``"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet"``,
``"conv_op": "torch.nn.modules.conv.Conv3d"``, ...), which nnU-Net itself resolves with ``pydoc.locate``. Here
those strings are only looked up in the two tables below: a name outside them is refused, nothing read from a
file is ever imported. The network classes come from ``dynamic_network_architectures`` (the package nnU-Net
builds its networks with), so a checkpoint's ``network_weights`` load with strict keys.

``NNUNet`` wraps one network per fold (the average of their logits is nnU-Net's fold ensemble) and optionally
nnU-Net's test-time mirroring (the average over the input flipped along every non-empty subset of
``mirror_axes``), so that a fold ensemble with mirroring is still one static graph for export.
"""

from __future__ import annotations

import importlib
import itertools

import torch
from torch import nn

from ..errors import PTQError

#: Network class names in plans -> (module, class) in dynamic_network_architectures. The ResidualEncoderUNet's
#: older module path is what nnU-Net's conversion of pre-2.3 plans writes.
NETWORK_CLASSES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet":
        ("dynamic_network_architectures.architectures.unet", "PlainConvUNet"),
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet":
        ("dynamic_network_architectures.architectures.unet", "ResidualEncoderUNet"),
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet":
        ("dynamic_network_architectures.architectures.unet", "ResidualEncoderUNet"),
}
#: Layer type names in plans -> torch classes (3D only: 2D configurations are refused before this).
LAYER_CLASSES = {
    "torch.nn.modules.conv.Conv3d": nn.Conv3d, "torch.nn.Conv3d": nn.Conv3d,
    "torch.nn.modules.instancenorm.InstanceNorm3d": nn.InstanceNorm3d, "torch.nn.InstanceNorm3d": nn.InstanceNorm3d,
    "torch.nn.modules.batchnorm.BatchNorm3d": nn.BatchNorm3d, "torch.nn.BatchNorm3d": nn.BatchNorm3d,
    "torch.nn.LeakyReLU": nn.LeakyReLU, "torch.nn.modules.activation.LeakyReLU": nn.LeakyReLU,
    "torch.nn.ReLU": nn.ReLU, "torch.nn.modules.activation.ReLU": nn.ReLU,
    "torch.nn.GELU": nn.GELU, "torch.nn.modules.activation.GELU": nn.GELU,
    "torch.nn.modules.dropout.Dropout3d": nn.Dropout3d, "torch.nn.Dropout3d": nn.Dropout3d,
}
#: The ``arch_kwargs`` that name a class (nnU-Net's ``_kw_requires_import``).
CLASS_ARGUMENTS = ("conv_op", "norm_op", "dropout_op", "nonlin")


def network_class(name: str):
    """The dynamic_network_architectures class for an allow-listed plans name; PTQError otherwise."""
    if name not in NETWORK_CLASSES:
        raise PTQError(f"nnU-Net network class {name!r} is not one PTQSegment builds "
                       f"(it builds {', '.join(sorted({c for _, c in NETWORK_CLASSES.values()}))})")
    module_name, class_name = NETWORK_CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise PTQError("nnU-Net models need the package dynamic_network_architectures: "
                       "pip install dynamic-network-architectures (or pip install ptqsegment[nnunet])") from None
    return getattr(module, class_name)


def layer_arguments(arch_kwargs: dict) -> dict:
    """``arch_kwargs`` with the class-naming entries mapped through ``LAYER_CLASSES`` (None stays None)."""
    kwargs = dict(arch_kwargs)
    for key in CLASS_ARGUMENTS:
        name = kwargs.get(key)
        if name is None:
            continue
        if name not in LAYER_CLASSES:
            raise PTQError(f"nnU-Net architecture argument {key} = {name!r} is not a layer type PTQSegment builds "
                           f"(it builds {', '.join(sorted(LAYER_CLASSES))})")
        kwargs[key] = LAYER_CLASSES[name]
    return kwargs


class NNUNet(nn.Module):
    """The mean logits of ``folds`` nnU-Net networks of one architecture, with optional test-time mirroring.

    Args:
        network_class_name: the plans' ``network_class_name`` (allow-listed in ``NETWORK_CLASSES``).
        arch_kwargs: the plans' ``arch_kwargs`` (plain JSON; layer types as names, see ``LAYER_CLASSES``).
        in_channels: input channels (nnU-Net: the dataset's channels).
        out_channels: output channels (nnU-Net: background + foreground labels).
        folds: how many folds' networks are averaged (their weights are ``folds.<i>.<nnU-Net key>``).
        mirror_axes: spatial axes (0..2 of the network input) to mirror over; empty for no mirroring.
    """

    def __init__(self, network_class_name: str, arch_kwargs: dict, in_channels: int, out_channels: int, folds: int = 1,
                 mirror_axes: tuple[int, ...] | list[int] = ()):
        super().__init__()
        cls = network_class(network_class_name)
        kwargs = layer_arguments(arch_kwargs)
        self.folds = nn.ModuleList(cls(input_channels=in_channels, num_classes=out_channels, deep_supervision=False,
                                       **kwargs) for _ in range(folds))
        axes = [int(a) + 2 for a in mirror_axes]
        self.mirror_sets = [list(c) for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for network in self.folds:
            logits = network(x)
            for dims in self.mirror_sets:  # nnU-Net's test-time mirroring
                logits = logits + torch.flip(network(torch.flip(x, dims)), dims)
            logits = logits / (len(self.mirror_sets) + 1)
            total = logits if total is None else total + logits
        return total / len(self.folds)
