"""nnU-Net v2 results folders (``DatasetXXX_Name/<Trainer>__<Plans>__<configuration>``), read as untrusted data.

    dataset.json                    labels (name -> value), channel_names
    plans.json                      the configuration: spacing, patch_size, transpose_forward, normalisation schemes,
                                    foreground_intensity_properties_per_channel, architecture (class name + kwargs)
    fold_<N>/checkpoint_final.pth   network_weights (+ training logs), per fold; ``fold_all`` is nnU-Net's
                                    model trained on every case

The spec reproduces nnU-Net's inference (``pipeline="nnunet"``, see ``nnunet_steps``); the network is
``networks.nnunet.NNUNet`` (one ``dynamic_network_architectures`` network per fold, logits averaged, optional
test-time mirroring). Checkpoints load with ``weights.load_checkpoint`` (``weights_only``, numpy scalars
allow-listed). Refused with one line: no ``plans.json``/``dataset.json``, a missing fold, 2D, cascade and
region-based configurations, several input channels, resampling or normalisation other than nnU-Net's defaults.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import PTQError
from ..networks.nnunet import NETWORK_CLASSES
from ..weights import few_keys as _few
from ..spec import Intensity, ModelSpec, labels_from_names
from .spec_file import read_document

CHECKPOINT = "checkpoint_final.pth"
ARCHITECTURE = "engine_builder.networks.nnunet.NNUNet"
_DEFAULT_RESAMPLING = ("resample_data_or_seg_to_shape", {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None})


@dataclass
class NNUNetModel:
    """The spec, the network with the folds' weights, the files read (name -> path) and notes for the user."""

    spec: ModelSpec
    network: torch.nn.Module
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)


def read_nnunet(folder: str | Path, folds: list[str] | None = None, mirror: bool = False) -> NNUNetModel:
    """The nnU-Net model in ``folder`` (module docstring). ``folds``: fold names (``"0"``, ``"all"``); None for
    every fold folder present. ``mirror``: nnU-Net's test-time mirroring (off by default here: 8x the work)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PTQError(f"nnU-Net folder {folder} not found: pass DatasetXXX_Name/<Trainer>__<Plans>__<configuration>")
    for required in ("plans.json", "dataset.json"):
        if not (folder / required).is_file():
            raise PTQError(f"{folder.name} is not an nnU-Net results folder: it has no {required}")
    plans, dataset = read_document(folder / "plans.json", "plans"), read_document(folder / "dataset.json", "dataset.json")
    checkpoints = _checkpoints(folder, folds)
    first = _load(checkpoints[0])
    name = _configuration_name(folder, first)
    configuration = _configuration(plans, name)
    labels = _labels(dataset)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if len(channels) != 1:
        raise PTQError(f"{folder.name}: the model takes {len(channels)} input channels ({', '.join(map(str, channels.values()))}); "
                       "PTQSegment segments one volume at a time")
    architecture = _architecture(configuration, folder.name)
    notes = [] if mirror else ["test-time mirroring is off (nnU-Net's default is on; --mirror turns it on, 8x the work)"]
    arch_args = {"network_class_name": architecture["network_class_name"], "arch_kwargs": architecture["arch_kwargs"],
                 "in_channels": 1, "out_channels": len(labels), "folds": len(checkpoints),
                 "mirror_axes": _mirror_axes(first, mirror, folder.name)}
    spec = ModelSpec(
        name=_plain_name(f"{plans.get('dataset_name', folder.parent.name)}_{name}"), architecture=ARCHITECTURE,
        arch_args=arch_args, description=f"nnU-Net v2 {folder.parent.name}/{folder.name}, folds "
                                         f"{', '.join(p.parent.name[5:] for p in checkpoints)}",
        labels=labels_from_names(labels), roi_size=tuple(int(v) for v in configuration["patch_size"]),
        spacing_mm=tuple(float(v) for v in configuration["spacing"]), orientation="stored",
        intensity=_intensity(plans, configuration, folder.name), overlap=0.5, source="nnunet", pipeline="nnunet",
        axis_order=tuple(2 - int(t) for t in plans.get("transpose_forward", [0, 1, 2])),
        modality="CT" if configuration["normalization_schemes"][0] == "CTNormalization" else "MR")
    network = spec.build_network()
    _load_weights(network, [first] + [_load(p) for p in checkpoints[1:]], checkpoints)
    files = {"plans": folder / "plans.json", "dataset": folder / "dataset.json",
             **{f"fold_{p.parent.name[5:]}": p for p in checkpoints}}
    return NNUNetModel(spec, network.eval(), files, notes)


def _checkpoints(folder: Path, folds: list[str] | None) -> list[Path]:
    present = sorted(p.parent.name[5:] for p in folder.glob(f"fold_*/{CHECKPOINT}"))
    if folds is None:
        if not present:
            raise PTQError(f"{folder.name} has no fold_*/{CHECKPOINT}: the model is not trained (or not finished)")
        folds = present
    missing = [f for f in folds if f not in present]
    if missing:
        raise PTQError(f"{folder.name} has no fold_{missing[0]}/{CHECKPOINT} (folds present: "
                       f"{', '.join(present) or 'none'}): choose --fold among them")
    return [folder / f"fold_{f}" / CHECKPOINT for f in folds]


def _load(path: Path) -> dict:
    from ..weights import load_checkpoint

    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise PTQError(f"{path.parent.name}/{path.name} is not an nnU-Net v2 checkpoint (no network_weights)")
    return checkpoint


def _configuration_name(folder: Path, checkpoint: dict) -> str:
    parts = folder.name.split("__")
    name = parts[-1] if len(parts) == 3 else None
    recorded = (checkpoint.get("init_args") or {}).get("configuration")
    if name is None and not isinstance(recorded, str):
        raise PTQError(f"{folder.name}: cannot tell the configuration (the folder is not named "
                       "<Trainer>__<Plans>__<configuration> and the checkpoint does not say)")
    return name or recorded


def _configuration(plans: dict, name: str) -> dict:
    """The named configuration with ``inherits_from`` resolved (nnU-Net's plans inheritance)."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        raise PTQError(f"plans.json has no configuration '{name}' (it has: {', '.join(configurations or {})})")
    configuration = copy.deepcopy(configurations[name])
    seen = {name}
    while "inherits_from" in configuration:
        parent = configuration.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise PTQError(f"plans.json: configuration '{name}' inherits from '{parent}', which is missing or circular")
        seen.add(parent)
        configuration = {**copy.deepcopy(configurations[parent]), **configuration}
    if "cascade" in name or configuration.get("previous_stage"):
        raise PTQError(f"configuration '{name}' is a cascade stage (it needs the low-resolution stage's segmentation as "
                       "input); PTQSegment builds single-stage configurations such as 3d_fullres for now")
    if len(configuration.get("patch_size", [])) != 3:
        raise PTQError(f"configuration '{name}' is a 2D network (patch size {configuration.get('patch_size')}); "
                       "PTQSegment runs 3D networks: use a 3d_fullres or 3d_lowres model")
    data_fn = (configuration.get("resampling_fn_data"), configuration.get("resampling_fn_data_kwargs"))
    if data_fn != _DEFAULT_RESAMPLING:
        raise PTQError(f"configuration '{name}' resamples images with {data_fn[0]} {data_fn[1]}; PTQSegment reproduces "
                       "nnU-Net's default (resample_data_or_seg_to_shape, order 3, order_z 0)")
    return configuration


def _labels(dataset: dict) -> list[str]:
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise PTQError("dataset.json has no labels")
    if any(isinstance(v, (list, tuple)) for v in labels.values()) or "regions_class_order" in dataset:
        raise PTQError("dataset.json defines region-based labels (overlapping regions, sigmoid outputs); PTQSegment "
                       "builds label-based (softmax) nnU-Net models for now")
    by_value = {int(v): str(k) for k, v in labels.items() if str(k) != "ignore"}
    if sorted(by_value) != list(range(len(by_value))):
        raise PTQError(f"dataset.json: label values {sorted(by_value)} are not 0..N-1")
    return [_plain_name(by_value[i]) for i in range(len(by_value))]


def _intensity(plans: dict, configuration: dict, folder: str) -> Intensity:
    scheme = configuration.get("normalization_schemes", [None])[0]
    use_mask = bool((configuration.get("use_mask_for_norm") or [False])[0])
    if scheme == "CTNormalization":
        stats = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0")
        if not isinstance(stats, dict) or not all(k in stats for k in ("percentile_00_5", "percentile_99_5", "mean", "std")):
            raise PTQError(f"{folder}: plans.json lacks foreground_intensity_properties_per_channel['0'] "
                           "(percentile_00_5, percentile_99_5, mean, std) that CT normalisation needs")
        return Intensity("ct_clip_zscore", a_min=float(stats["percentile_00_5"]), a_max=float(stats["percentile_99_5"]),
                         mean=float(stats["mean"]), std=float(stats["std"]))
    if scheme == "ZScoreNormalization":
        return Intensity("nnunet_zscore", use_mask=use_mask)
    if scheme == "NoNormalization":
        return Intensity("none")
    raise PTQError(f"{folder}: normalisation scheme {scheme!r} is not one PTQSegment reproduces "
                   "(CTNormalization, ZScoreNormalization, NoNormalization)")


def _architecture(configuration: dict, folder: str) -> dict:
    """``{network_class_name, arch_kwargs}``, also from pre-2.3 plans (as nnU-Net converts them)."""
    architecture = configuration.get("architecture")
    if architecture is None:
        architecture = _legacy_architecture(configuration, folder)
    name = architecture.get("network_class_name")
    if name not in NETWORK_CLASSES:
        raise PTQError(f"{folder}: network class {name!r} is not one PTQSegment builds "
                       f"(it builds {', '.join(sorted(NETWORK_CLASSES))})")
    return {"network_class_name": name, "arch_kwargs": architecture.get("arch_kwargs") or {}}


def _legacy_architecture(configuration: dict, folder: str) -> dict:
    """nnU-Net < 2.3 plans (``UNet_class_name`` ...) in the current form, following nnU-Net's own conversion."""
    names = {"PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
             "ResidualEncoderUNet": "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"}
    unet = configuration.get("UNet_class_name")
    if unet not in names:
        raise PTQError(f"{folder}: plans.json has no 'architecture' and UNet_class_name {unet!r} is not one PTQSegment "
                       "builds (PlainConvUNet, ResidualEncoderUNet)")
    stages = len(configuration["n_conv_per_stage_encoder"])
    blocks = "n_conv_per_stage" if unet == "PlainConvUNet" else "n_blocks_per_stage"
    return {"network_class_name": names[unet], "arch_kwargs": {
        "n_stages": stages,
        "features_per_stage": [min(configuration["UNet_base_num_features"] * 2 ** i, configuration["unet_max_num_features"])
                               for i in range(stages)],
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": configuration["conv_kernel_sizes"],
        "strides": configuration["pool_op_kernel_sizes"], blocks: configuration["n_conv_per_stage_encoder"],
        "n_conv_per_stage_decoder": configuration["n_conv_per_stage_decoder"], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}}


def _mirror_axes(checkpoint: dict, mirror: bool, folder: str) -> list[int]:
    if not mirror:
        return []
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    if not axes:
        raise PTQError(f"{folder}: its trainer ({checkpoint.get('trainer_name', '?')}) allows no test-time mirroring; "
                       "build without --mirror")
    return [int(a) for a in axes]


def _load_weights(network: torch.nn.Module, checkpoints: list[dict], paths: list[Path]) -> None:
    """Each fold's ``network_weights`` into ``network.folds[i]`` with strict keys; a mismatch names the trainer."""
    for fold, (checkpoint, path) in enumerate(zip(checkpoints, paths)):
        target = network.folds[fold]
        state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in checkpoint["network_weights"].items()}
        expected = target.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        reshaped = [k for k in expected if k in state and expected[k].shape != state[k].shape]
        if missing or unexpected or reshaped:
            detail = (f"missing keys {_few(missing)}; unexpected keys {_few(unexpected)}" if missing or unexpected
                      else f"{len(reshaped)} tensors have other shapes, e.g. {reshaped[0]}")
            raise PTQError(f"{path.parent.name}/{path.name} does not fit the plans' architecture ({detail}): "
                           f"its trainer {checkpoint.get('trainer_name', '?')} may build its own network, which "
                           "PTQSegment does not run")
        target.load_state_dict(state, strict=True)


def _plain_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-." else "_" for c in str(name))[:128].strip("._-")
    return cleaned or "nnunet"
