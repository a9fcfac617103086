"""engine_builder.networks: UNesT, 3D TransUNet and STU-Net as published, exportable and loadable.

Covers, for each network:
- keys and shapes: ``state_dict()`` at the published configuration equals, key for key and shape for shape, the
  state dict of the authors' own network class (``Testing/data/*_keys.json``, dumped once from the public code
  named in each file: the UNesT bundle's class with its inference.json arguments, the four STU-Net sizes with
  105 classes and the TotalSegmentator strides, the official 3D TransUNet encoder-only network at the BTCV
  configuration);
- same function: with identical deterministic weights (``network_reference.deterministic_state``), the output
  on a smooth input matches the authors' class's output (``Testing/data/network_reference_outputs.json``)
  within 1e-4 of the largest reference value; UNesT at its bundle ROI 96³ with a narrow width (feature size 4,
  embeddings 32/64/128: the bundle's class fixes the ROI at 96 and the full width takes ~15 s on 2 cores),
  STU-Net and TransUNet at small widths and a non-cubic ROI so that an axis mix-up cannot pass;
- parameter counts at the published sizes (instantiated on the meta device, no memory) against the published
  numbers: STU-Net S/B/L/H 14.6 M / 58.26 M / 440.30 M / 1457.33 M (STU-Net repository README, the paper's
  Table of model sizes), UNesT 87.3 M (MASILab/UNesT README, whole-brain table; the bundle's own class gives
  87,205,158, which the count equals exactly), ViT-B 86 M (Dosovitskiy et al. 2021, Table 1: TransUNet's 12
  layers plus a ViT-B/16 ImageNet stem and head give timm's 86,567,656);
- export: ``export_onnx`` (opset 17, static shapes, TorchScript exporter) traces without a TracerWarning from
  this package's code, and the OpenVINO FP32 engine built from the ONNX graph by the openvino backend reproduces
  torch within 1e-4 relative L2 (small widths and ROIs: the published sizes take minutes to compile on 2 cores);
- weights: ``torch.save(state_dict)`` loads through ``weights.load_network`` with strict keys and identical
  outputs (STU-Net also inside ``{"state_dict": ...}``, as in its released ``.model`` files), and a checkpoint
  with one renamed key is refused with both names in the PTQError;
- the architecture allow-list names each class.
Nothing is mocked; no published checkpoint is available here, so no real weights are loaded.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_builder.architectures import ALLOWED
from engine_builder.backends import BuildOptions, FP32Graph, get_backend
from engine_builder.errors import PTQError
from engine_builder.export import export_onnx, relative_l2
from engine_builder.networks.stunet import SIZES, TOTALSEGMENTATOR_STRIDES, STUNet
from engine_builder.networks.transunet import TransUNet3D
from engine_builder.networks.unest import UNesT
from engine_builder.spec import ModelSpec, labels_from_names
from engine_builder.weights import load_network
from network_reference import deterministic_state, output_summary, smooth_input, summary_difference

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "network_reference_outputs.json").read_text())

# Small configurations for export and weight round trips (same code paths as the published sizes).
TINY = {
    "unest": ("engine_builder.networks.unest.UNesT", (64, 64, 64),
              dict(in_channels=1, out_channels=4, img_size=64, feature_size=2, embed_dim=(16, 32, 64), num_heads=(2, 2, 4), depths=(1, 1, 1))),
    "transunet": ("engine_builder.networks.transunet.TransUNet3D", (32, 48, 64),
                  dict(in_channels=1, out_channels=5, img_size=(32, 48, 64), features=(8, 16, 32, 32, 32), hidden_size=48,
                       num_layers=2, num_heads=2, mlp_dim=96)),
    "stunet": ("engine_builder.networks.stunet.STUNet", (32, 48, 64),
               dict(in_channels=1, out_channels=7, dims=(4, 8, 16, 32, 64, 64), depth=(1, 2, 1, 2, 1, 2))),
}


def _spec(name: str) -> ModelSpec:
    architecture, roi, args = TINY[name]
    labels = labels_from_names(["background"] + [f"label{i}" for i in range(1, args["out_channels"])])
    return ModelSpec(name=f"tiny_{name}", description="test", architecture=architecture, arch_args=args, labels=labels, roi_size=roi)


def _shapes(network: torch.nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in network.state_dict().items()}


def _published(name: str, size: str | None = None) -> torch.nn.Module:
    with torch.device("meta"):
        if name == "unest":  # wholeBrainSeg_Large_UNEST_segmentation, configs/inference.json
            return UNesT(in_channels=1, out_channels=133, patch_size=4, depths=(2, 2, 8), embed_dim=(128, 256, 512), num_heads=(4, 8, 16))
        if name == "transunet":
            return TransUNet3D(in_channels=1, out_channels=14, img_size=96)
        return STUNet(in_channels=1, out_channels=105, strides=TOTALSEGMENTATOR_STRIDES, **SIZES[size])


def _assert_same_keys(expected: dict, network: torch.nn.Module):
    actual = _shapes(network)
    missing, unexpected = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not wrong, f"shapes differ (published, ours): {dict(list(wrong.items())[:5])}"


def _count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


# --- keys, function, size ------------------------------------------------------------------------------------

def test_unest_keys_match_the_wholebrain_bundle():
    expected = json.loads((DATA / "unest_wholebrain_keys.json").read_text())["keys"]
    assert len(expected) == 193
    _assert_same_keys(expected, _published("unest"))


def test_transunet_keys_match_the_official_encoder_only_network():
    expected = json.loads((DATA / "transunet3d_btcv_keys.json").read_text())["keys"]
    assert len(expected) == 279
    _assert_same_keys(expected, _published("transunet"))


@pytest.mark.parametrize("size", ["S", "B", "L", "H"])
def test_stunet_keys_match_the_released_checkpoints(size):
    expected = json.loads((DATA / "stunet_keys.json").read_text())["sizes"][size]
    assert len(expected) == {"S": 130, "B": 130, "L": 218, "H": 306}[size]
    _assert_same_keys(expected, _published("stunet", size))


@pytest.mark.parametrize("name", ["unest", "stunet", "transunet"])
def test_same_function_as_the_authors_network(name):
    reference = REFERENCE[name]
    network_class = {"unest": UNesT, "stunet": STUNet, "transunet": TransUNet3D}[name]
    network = network_class(**reference["args"]).eval()
    network.load_state_dict(deterministic_state({k: tuple(v) for k, v in _shapes(network).items()}), strict=True)
    with torch.inference_mode():
        logits = network(smooth_input((1, reference["args"]["in_channels"], *reference["roi"])))
    summary = output_summary(logits)
    assert max(abs(v) for v in np.ravel(summary["voxels"])) > 0.5  # a real signal, not a collapsed output
    assert summary_difference(reference["summary"], summary) < 1e-4


def test_parameter_counts_match_the_published_numbers():
    # STU-Net README "TotalSegmentator trained Models" table (= the paper's model-size table), 105 classes.
    for size, (millions, decimals) in {"S": (14.6, 1), "B": (58.26, 2), "L": (440.30, 2), "H": (1457.33, 2)}.items():
        assert round(_count(_published("stunet", size)) / 1e6, decimals) == millions, size
    # UNesT: MASILab/UNesT README, whole-brain table, 87.3 M; the bundle's class at inference.json's arguments has
    # 87,205,158 (the sum of the key file's shapes), 0.1 % below the rounded table entry.
    unest = _count(_published("unest"))
    bundle = sum(math.prod(s) for s in json.loads((DATA / "unest_wholebrain_keys.json").read_text())["keys"].values())
    assert unest == bundle == 87_205_158
    assert abs(unest / 87.3e6 - 1) < 0.002
    # TransUNet: its 12 ViT layers + final norm are ViT-B's encoder; with ViT-B/16's ImageNet stem (16x16x3 patch
    # projection, 197 position embeddings, class token) and 1000-class head they make ViT-B/16 (86 M, ViT paper
    # Table 1; 86,567,656 exactly in timm's vit_base_patch16_224).
    transunet = _published("transunet")
    encoder = _count(transunet.transformer.encoder)
    vit_b16 = encoder + (16 * 16 * 3 * 768 + 768) + 197 * 768 + 768 + (768 * 1000 + 1000)
    assert vit_b16 == 86_567_656 and vit_b16 // 1_000_000 == 86  # the paper truncates to 86 M
    assert _count(transunet) == 102_267_360  # the official class at the same configuration (key file's shapes)


# --- export -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["unest", "transunet", "stunet"])
def test_onnx_export_and_openvino_fp32_match_torch(tmp_path, name):
    """Small widths and ROIs (see TINY): compiling the published sizes takes minutes on 2 cores."""
    spec = _spec(name)
    torch.manual_seed(3)
    network = spec.build_network()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnx_path = export_onnx(network, tmp_path / f"{name}.onnx", spec.roi_size, spec.in_channels)
    ours = [w for w in caught if "engine_builder" in w.filename.replace("\\", "/")]
    assert not ours, f"tracing warnings from our code: {[f'{w.filename}:{w.lineno} {w.message}' for w in ours][:3]}"
    patches = smooth_input((2, spec.in_channels, *spec.roi_size)).numpy()
    with torch.inference_mode():
        reference = network(torch.from_numpy(patches)).numpy()
    assert reference.shape == (2, len(spec.labels), *spec.roi_size)
    engine = get_backend("openvino").build(FP32Graph(spec, network, onnx_path, 1), None, "fp32", BuildOptions(progress=False))
    logits = np.concatenate([engine.infer(p[None]) for p in patches])
    error = relative_l2(reference, logits)
    assert error < 1e-4, f"{name}: OpenVINO FP32 vs torch relative L2 {error:.2e}"


# --- weights ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["unest", "transunet", "stunet"])
def test_state_dict_round_trip_and_renamed_key(tmp_path, name):
    spec = _spec(name)
    torch.manual_seed(4)
    network = spec.build_network()
    state = network.state_dict()
    x = smooth_input((1, spec.in_channels, *spec.roi_size))
    with torch.inference_mode():
        expected = network(x)

    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": state, "epoch": 4000}, tmp_path / "wrapped.model")  # STU-Net's released layout
    for file in ("plain.pt", "wrapped.model"):
        loaded = load_network(spec, tmp_path / file)
        with torch.inference_mode():
            assert torch.equal(loaded(x), expected), file

    renamed = dict(state)
    old = next(k for k in renamed if k.endswith(".weight") and renamed[k].ndim >= 2)
    new = old.replace(".weight", ".kernel")
    renamed[new] = renamed.pop(old)
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(PTQError) as info:
        load_network(spec, tmp_path / "renamed.pt")
    assert f"missing keys {old}" in str(info.value) and f"unexpected keys {new}" in str(info.value)


def test_allow_list_names_each_network_class():
    for architecture, (module_name, attribute) in ALLOWED.items():
        assert architecture == f"{module_name}.{attribute}"
        assert callable(getattr(importlib.import_module(module_name), attribute)), architecture
    for architecture, _, _ in TINY.values():
        assert architecture in ALLOWED


def test_invalid_configurations_are_explained():
    with pytest.raises(ValueError, match="32 \\* feature_size"):
        UNesT(feature_size=8)
    with pytest.raises(ValueError, match="multiple of 8 and at least 16"):
        UNesT(img_size=32, feature_size=2, embed_dim=(16, 32, 64))
    with pytest.raises(ValueError, match="not divisible by the total downsampling 16"):
        TransUNet3D(img_size=(96, 96, 40))
    with pytest.raises(ValueError, match="need 5 strides"):
        STUNet(strides=((2, 2, 2),) * 4)
