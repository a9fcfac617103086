"""The study's eight networks in the registry, each through the whole CPU pipeline at a small width.

The registry entries are the published configurations (``engine_builder/models/*.py``); at those sizes a window takes
seconds to minutes on 2 cores, so every model here is built at the small width and ROI of
``Testing/registry_small.py``, which keeps every level, block, stride, head and the label set (what shrinks is said
there). Weights are random, written by this test in the layout the published checkpoint has (MONAI bundle folder
with ``models/model.pt``, nnU-Net v2 results folder with plans and ``checkpoint_final.pth``, STU-Net's nnU-Net v1
``.model`` with numpy training logs, an nnU-Net-style ``network_weights`` file for TransUNet) and passed as
``--weights``, so the registry's real loading path runs; accuracy cannot be measured with random weights, only
that the engines compute the network and run in int8. Per model (session-scoped builds through
``pipeline.build_engine``, one calibration volume, 2 patches, so no held-out estimate):

- export parity: the OpenVINO FP32 engine reproduces the torch network (same weights) within 1e-3 relative L2;
- INT8 really runs int8: >= 80 % of one window's convolution + matmul time in int8 kernels (``profile``), and the
  manifest records what stays in float (``kept_in_float``, ``runs_as.float_ops``; transformers keep
  LayerNorm/Softmax/GELU in float and run their MatMuls in int8 under NNCF's transformer model type);
- size: INT8 engine <= 0.3x the FP32 engine for every CNN (transformers: smaller, no target);
- a small real CT (an MR for the MR model) is segmented by the INT8 engine into a label map on the input's grid
  (skipped without ``../shared/data``);
- a checkpoint with a renamed key is refused by the registry's loader naming the key.
Also: ``ptqseg models`` lists the eight; specs round-trip through their JSON form; parameter counts at the published
sizes; label tables; VISTA3DAuto against MONAI's VISTA3D and its post-processing; SwinUNETR's position-index
buffers; weights found on this machine first and downloaded only when asked; the ``zscore_minmax`` intensity
against MONAI; the MedPTQ study's ONNX export layout with its spec file.

``nnunet_totalseg`` needs ``dynamic_network_architectures`` (CI runs it in the venv layered for nnU-Net).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli, shared_data, write_phantom
from engine_builder.errors import PTQError
from engine_builder.export import relative_l2
from engine_builder.models import get_spec, label_table, label_table_data, registry
from engine_builder.spec import ModelSpec
from registry_small import MIN_INT8_SHARE, SEEDS, small_spec

MAX_CNN_SIZE_RATIO = 0.3
MAX_TRANSFORMER_SIZE_RATIO = 0.5  # no target: LayerNorms and position tables stay in float; the check is that int8 weights are stored
MAX_PARITY_L2 = 1e-3
STUDY_SPEC = REPO / "engine_builder" / "models" / "specs" / "medptq_btcv.json"


def _needs_nnunet(name: str) -> None:
    if name == "nnunet_totalseg":
        pytest.importorskip("dynamic_network_architectures",
                            reason="nnunet_totalseg needs dynamic_network_architectures (pip install 'ptqsegment[nnunet]')")


def _smooth_patches(roi, count: int = 2, seed: int = 0) -> np.ndarray:
    coarse = torch.from_numpy(np.random.default_rng(seed).random((count, 1, 4, 4, 4), dtype=np.float32))
    return torch.nn.functional.interpolate(coarse, size=tuple(roi), mode="trilinear").numpy()


# ------------------------------------------------------------------------------------- checkpoints as published
def write_checkpoint(spec: ModelSpec, folder: Path, state: dict) -> Path:
    """``state`` written where and how ``spec``'s published checkpoint is laid out; returns what ``--weights`` takes."""
    folder.mkdir(parents=True, exist_ok=True)
    kind = spec.weights.kind
    if kind == "monai_bundle":  # <bundle>/models/model.pt (a plain state dict) + configs/metadata.json
        bundle = folder / spec.weights.name
        (bundle / "models").mkdir(parents=True, exist_ok=True)
        (bundle / "configs").mkdir(exist_ok=True)
        torch.save(state, bundle / spec.weights.path)
        channels = {str(label.value): label.name for label in spec.labels}
        (bundle / "configs" / "metadata.json").write_text(json.dumps(
            {"network_data_format": {"outputs": {"pred": {"channel_def": channels}}}}))
        return bundle
    if kind == "release":  # STU-Net: an nnU-Net v1 .model with numpy training logs beside the weights
        path = folder / spec.weights.name
        torch.save({"epoch": 4000, "state_dict": state, "optimizer_state_dict": {},
                    "plot_stuff": ([np.float64(0.9)], [np.float64(0.5)], [np.float64(0.4)], [np.float64(0.3)]),
                    "best_stuff": (3999, np.float64(0.3), np.float64(0.31), 3999)}, path)
        return path
    if kind == "nnunet":
        return write_nnunet_folder(spec, folder, state)
    path = folder / "checkpoint_final.pth"  # TransUNet: nnU-Net v2 style, as its official code trains it
    torch.save({"network_weights": state, "current_epoch": 1000}, path)
    return path


def write_nnunet_folder(spec: ModelSpec, folder: Path, state: dict) -> Path:
    """An nnU-Net v2 results folder (plans.json, dataset.json, fold_0/checkpoint_final.pth) of ``spec``'s network:
    the layout TotalSegmentator's Dataset297 has. Returns the dataset folder."""
    dataset, configuration = folder / spec.weights.name, spec.weights.path
    target = dataset / configuration
    (target / "fold_0").mkdir(parents=True, exist_ok=True)
    intensity = spec.intensity
    plans = {"dataset_name": spec.weights.name, "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "image_reader_writer": "SimpleITKIO",
             "foreground_intensity_properties_per_channel": {"0": {
                 "mean": intensity.mean, "std": intensity.std, "percentile_00_5": intensity.a_min,
                 "percentile_99_5": intensity.a_max, "min": -1024.0, "max": 3071.0, "median": 30.0}},
             "configurations": {"3d_fullres": {
                 "patch_size": list(spec.roi_size), "spacing": list(spec.spacing_mm),
                 "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
                 "resampling_fn_data": "resample_data_or_seg_to_shape",
                 "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                 "architecture": {key: spec.arch_args[key] for key in ("network_class_name", "arch_kwargs")}}}}
    labels = {label.name: label.value for label in spec.labels}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1228, "file_ending": ".nii.gz"}
    for name, document in (("plans.json", plans), ("dataset.json", dataset_json)):
        (target / name).write_text(json.dumps(document))
    torch.save({"network_weights": state, "current_epoch": 4000, "_best_ema": np.float64(0.9),
                "logging": {"train_losses": [np.float64(0.5)], "ema_fg_dice": [np.float32(0.8)]},
                "init_args": {"configuration": "3d_fullres", "fold": 0}, "trainer_name": "nnUNetTrainer_4000epochs_NoMirroring",
                "inference_allowed_mirroring_axes": None}, target / "fold_0" / "checkpoint_final.pth")
    return dataset


def checkpoint_state(network: torch.nn.Module, spec: ModelSpec) -> dict:
    """The state dict the published checkpoint holds: nnU-Net's holds the bare network, not our fold wrapper."""
    return network.folds[0].state_dict() if spec.weights.kind == "nnunet" else network.state_dict()


# ------------------------------------------------------------------------------------------------- the builds
@dataclasses.dataclass
class Built:
    spec: ModelSpec
    network: torch.nn.Module
    fp32: object
    int8: object


@pytest.fixture(scope="session")
def calibration_volume(tmp_path_factory) -> Path:
    """One small phantom CT (48 x 48 x 24 voxels of 4 x 4 x 6 mm): the calibration folder of every build here."""
    folder = tmp_path_factory.mktemp("calib_one")
    write_phantom(folder / "phantom_31.nii.gz", 31, shape=(48, 48, 24), spacing=(4.0, 4.0, 6.0))
    return folder


@pytest.fixture(scope="session")
def builds(tmp_path_factory, calibration_volume):
    """``builds(name)``: FP32 and INT8 OpenVINO engines of the small ``name`` from a published-layout checkpoint."""
    from engine_builder.pipeline import BuildRequest, build_engine

    done: dict[str, Built] = {}

    def build(name: str) -> Built:
        if name not in done:
            spec = small_spec(name)
            folder = tmp_path_factory.mktemp(name)
            torch.manual_seed(0)
            network = spec.build_network()
            weights = write_checkpoint(spec, folder / "weights", checkpoint_state(network, spec))
            results = {precision: build_engine(BuildRequest(model=spec, calib=calibration_volume, weights=weights,
                                                            precision=precision, patches_per_volume=2, progress=False),
                                               out=folder / precision, cache_root=folder / "cache")
                       for precision in ("fp32", "int8")}
            done[name] = Built(spec, network, results["fp32"], results["int8"])
        return done[name]

    return build


def _engine(result):
    from engine_builder.pipeline import open_engine

    return open_engine(result.engine_dir)


@pytest.mark.parametrize("name", SEEDS)
def test_fp32_engine_is_the_network(builds, name):
    _needs_nnunet(name)
    built = builds(name)
    engine, spec, manifest = _engine(built.fp32)
    assert spec.name == name and len(spec.labels) == len(get_spec(name).labels)
    patches = _smooth_patches(spec.roi_size)
    with torch.inference_mode():
        reference = built.network(torch.from_numpy(patches)).numpy()
    logits = np.concatenate([engine.infer(p[None]) for p in patches])
    assert logits.shape == (2, len(spec.labels), *spec.roi_size)
    assert np.abs(reference).max() > 1e-3, "a signal to compare, not zeros"
    error = relative_l2(reference, logits)
    print(f"\n{name}: FP32 engine vs torch relative L2 {error:.2e}")
    assert error <= MAX_PARITY_L2


@pytest.mark.parametrize("name", SEEDS)
def test_int8_engine_runs_int8_and_says_what_stays_in_float(builds, name):
    _needs_nnunet(name)
    built = builds(name)
    engine, spec, manifest = _engine(built.int8)
    profile = engine.profile(_smooth_patches(spec.roi_size, 1))
    runs_as = manifest["runs_as"]
    print(f"\n{name}: int8 share of conv+matmul time {profile['int8_share']} (conv {profile['int8_conv_share']}, "
          f"matmul {profile['int8_matmul_share']}); float ops {runs_as['float_ops']}; "
          f"kept in float {len(manifest['kept_in_float'])}")
    assert profile["int8_share"] >= MIN_INT8_SHARE[name]
    assert runs_as["convolutions_by_precision"].get("u8", 0) + runs_as["convolutions_by_precision"].get("i8", 0) > 0
    assert isinstance(manifest["kept_in_float"], list) and isinstance(runs_as["float_ops"], dict)
    if spec.network_kind == "transformer":
        matmuls = runs_as["matmuls_by_precision"]
        assert matmuls.get("u8", 0) + matmuls.get("i8", 0) > 0, matmuls
        assert runs_as["float_ops"].get("MVN", 0) > 0  # LayerNorm (and instance norm) stay in float
        assert profile["int8_matmul_share"] >= MIN_INT8_SHARE[name] - 0.1


@pytest.mark.parametrize("name", SEEDS)
def test_int8_engine_size(builds, name):
    _needs_nnunet(name)
    built = builds(name)
    ratio = built.int8.manifest["sizes"]["engine_bytes"] / built.fp32.manifest["sizes"]["engine_bytes"]
    print(f"\n{name}: INT8 engine {built.int8.manifest['sizes']['engine_bytes'] / 1e6:.2f} MB, "
          f"{ratio:.3f}x the FP32 engine")
    assert ratio <= (MAX_CNN_SIZE_RATIO if built.spec.network_kind == "cnn" else MAX_TRANSFORMER_SIZE_RATIO)


@pytest.mark.parametrize("name", SEEDS)
def test_int8_engine_segments_a_real_scan(builds, name):
    from engine_builder.inference import segment_volume
    from engine_builder.io import read_volume

    _needs_nnunet(name)
    scan = "example_mr_sm.nii.gz" if get_spec(name).modality == "MR" else "example_ct_sm.nii.gz"
    volume = _central_crop(read_volume(shared_data(f"totalsegmentator/{scan}")), (60, 60, 30))
    engine, spec, _ = _engine(builds(name).int8)
    labels = segment_volume(volume, engine, spec).labels
    assert labels.array.shape == volume.shape and np.allclose(labels.affine, volume.affine)
    assert int(labels.array.max()) < len(spec.labels)


@pytest.mark.parametrize("name", SEEDS)
def test_wrong_checkpoint_names_the_key(tmp_path, name):
    from engine_builder.model_source import resolve

    _needs_nnunet(name)
    spec = small_spec(name)
    torch.manual_seed(0)
    state = checkpoint_state(spec.build_network(), spec)
    old = next(key for key in state if key.endswith(".weight") and state[key].ndim >= 2)
    state[old.replace(".weight", ".kernel")] = state.pop(old)
    weights = write_checkpoint(spec, tmp_path, state)
    with pytest.raises(PTQError) as error:
        resolve(spec, weights)
    message = str(error.value)
    assert f"missing keys {old}" in message and f"unexpected keys {old.replace('.weight', '.kernel')}" in message, message


def _central_crop(volume, size):
    """The central ``size`` voxels of ``volume`` (its affine moved along): a small real scan, few windows."""
    from engine_builder.io import Volume

    start = [max(0, (n - s) // 2) for n, s in zip(volume.shape, size)]
    box = tuple(slice(a, a + s) for a, s in zip(start, size))
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array(start, dtype=float)
    return Volume(np.ascontiguousarray(volume.array[box]), affine)


# ------------------------------------------------------------------------------------------- registry as data
def test_ptqseg_models_lists_the_eight():
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line and not line.startswith(" ")}
    assert set(SEEDS) <= listed and set(SEEDS) <= set(registry())


#: Parameter counts at the published configurations (torch ``numel`` over ``parameters()``).
PUBLISHED_PARAMETERS = {
    "unet": 4_808_917,              # MONAI spleen_ct_segmentation UNet
    "segresnet_wholebody": 18_799_401,
    "swin_unetr_btcv": 62_187_296,  # the 62.2 M of the SwinUNETR papers
    "unest_wholebrain": 87_205_158,  # the bundle's class at its arguments (MASILab/UNesT README: 87.3 M)
    "vista3d": 217_964_982,         # monai vista3d132()
    "transunet_btcv": 102_267_360,  # the official 3D TransUNet class at this configuration
    "stunet": 14_596_941,           # STU-Net README: 14.6 M
    "nnunet_totalseg": 16_603_736,  # the derived 5-stage plan (unverified against the real plans)
}


@pytest.mark.parametrize("name", SEEDS)
def test_published_spec_round_trips_and_has_the_published_size(name):
    _needs_nnunet(name)
    spec = get_spec(name)
    data = json.loads(json.dumps(spec.to_dict()))
    assert ModelSpec.from_dict(data).to_dict() == data and ModelSpec.from_dict(data).fingerprint() == spec.fingerprint()
    with torch.device("cpu" if name == "swin_unetr_btcv" else "meta"):  # SwinUNETR calls .item() in __init__
        count = sum(p.numel() for p in spec.build_network().parameters())
    assert count == PUBLISHED_PARAMETERS[name]


def test_label_tables():
    sizes = {"btcv": 14, "totalsegmentator_v1": 105, "totalsegmentator_v1_stunet": 105, "totalsegmentator_v2": 118,
             "wholebrain_133": 133, "vista3d_everything": 118}
    for table, size in sizes.items():
        labels = label_table(table)
        assert len(labels) == size and labels[0].name == "background" and labels[0].color == (0, 0, 0), table
        assert len({label.name for label in labels}) == size, f"{table}: duplicate names"
        for label in labels:  # terminology, where given, is a scheme^code^meaning triple
            assert label.terminology is None or len(label.terminology.split("^")) == 3, (table, label)
    v1, stunet = label_table("totalsegmentator_v1"), label_table("totalsegmentator_v1_stunet")
    assert {l.name for l in v1} == {l.name for l in stunet} and [l.name for l in v1] != [l.name for l in stunet]
    assert [l.name for l in stunet[1:]] == sorted(l.name for l in stunet[1:])  # STU-Net's order: the names sorted
    assert all(label.terminology for label in label_table("btcv")[1:])
    from engine_builder.networks.vista3d import EVERYTHING_LABELS

    assert tuple(label_table_data("vista3d_everything")["class_ids"]) == EVERYTHING_LABELS and len(EVERYTHING_LABELS) == 117
    kidney = {l.name: l for l in label_table("totalsegmentator_v2")}["kidney_left"]
    assert kidney.terminology == "SCT^64033007^Kidney" and kidney.terminology_modifier == "SCT^7771000^Left"


def test_vista3d_auto_is_vista3d_with_its_prompts_fixed():
    from monai.apps.vista3d.transforms import VistaPostTransformd
    from monai.networks.nets import vista3d132

    from engine_builder.networks.vista3d import VISTA3DAuto

    torch.manual_seed(0)
    ours = VISTA3DAuto(out_channels=4, class_ids=(1, 3, 5), encoder_embed_dim=8).eval()
    theirs = vista3d132(encoder_embed_dim=8).eval()
    assert theirs.load_state_dict(ours.state_dict(), strict=True)  # the bundle's keys, nothing more or less
    with torch.device("meta"):
        assert set(VISTA3DAuto().state_dict()) == set(vista3d132().state_dict())
    image = torch.from_numpy(_smooth_patches((32, 32, 32), 1))
    with torch.inference_mode():
        logits = ours(image)
        raw = theirs(image, class_vector=torch.tensor([[1], [3], [5]]), transpose=True)
    assert torch.equal(logits[:, 0], torch.zeros_like(logits[:, 0])) and torch.equal(logits[:, 1:], raw)
    # Background where every class logit is <= 0, else the largest: shifted so that both occur.
    shifted = raw - raw.mean()
    posted = VistaPostTransformd(keys="pred")({"pred": shifted[0].clone()})["pred"][0]
    ours_labels = torch.cat((torch.zeros_like(shifted[:, :1]), shifted), 1).argmax(1)[0]
    assert 0.05 < (posted == 0).float().mean() < 0.95
    assert torch.equal(ours_labels, posted.long())


def test_swin_unetr_checkpoint_carries_its_position_index_buffers(tmp_path):
    from engine_builder.weights import load_network

    spec = small_spec("swin_unetr_btcv")
    state = spec.build_network().state_dict()
    buffers = [key for key in state if key.endswith("relative_position_index")]
    assert len(buffers) == 8
    torch.save({k: v for k, v in state.items() if k not in buffers}, tmp_path / "no_buffers.pt")
    with pytest.raises(PTQError, match="relative_position_index"):
        load_network(spec, tmp_path / "no_buffers.pt")


def test_weights_are_found_here_first_and_downloaded_only_when_asked(tmp_path, monkeypatch):
    import monai.bundle

    from engine_builder.model_source import resolve

    monkeypatch.setenv("PTQSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg"))
    downloads = []

    def fake_download(name, bundle_dir, **kwargs):  # monai.bundle's downloader, without the network
        downloads.append(name)
        write_checkpoint(swin, Path(bundle_dir), swin.build_network().state_dict())

    monkeypatch.setattr(monai.bundle, "download", fake_download)
    swin = small_spec("swin_unetr_btcv")
    with pytest.raises(PTQError, match="--download"):
        resolve(swin)
    assert downloads == []
    source = resolve(swin, download=True)
    assert downloads == ["swin_unetr_btcv_segmentation"]
    assert source.weights_path == tmp_path / "cache" / "bundles" / "swin_unetr_btcv_segmentation" / "models" / "model.pt"
    assert resolve(swin).weights_path == source.weights_path and len(downloads) == 1  # found here now

    stunet = small_spec("stunet")
    with pytest.raises(PTQError, match="small_ep4k.model"):
        resolve(stunet, download=True)  # no library downloads STU-Net's release
    write_checkpoint(stunet, tmp_path / "cache" / "weights", stunet.build_network().state_dict())
    assert resolve(stunet).weights_path.name == "small_ep4k.model"

    transunet = small_spec("transunet_btcv")
    with pytest.raises(PTQError, match="no published weights"):
        resolve(transunet)


def test_nnunet_folder_is_found_where_totalsegmentator_keeps_it(tmp_path, monkeypatch):
    from engine_builder.model_source import resolve

    pytest.importorskip("dynamic_network_architectures")
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg"))
    spec = small_spec("nnunet_totalseg")
    with pytest.raises(PTQError, match="--download"):
        resolve(spec)
    write_nnunet_folder(spec, tmp_path / "totalseg" / "nnunet" / "results",
                        checkpoint_state(spec.build_network(), spec))
    source = resolve(spec)
    assert source.kind == "nnunet" and source.spec.name == "nnunet_totalseg" and source.spec.pipeline == "nnunet"
    assert source.spec.labels[1].terminology == "SCT^78961009^Spleen"  # the registry's terminology, by name
    assert tuple(source.spec.roi_size) == spec.roi_size and "fold_0" in source.files


def test_zscore_minmax_equals_monai_on_a_real_ct():
    from engine_builder.io import read_volume
    from engine_builder.preprocess import preprocess, preprocess_monai

    volume = read_volume(shared_data("totalsegmentator/example_ct_sm.nii.gz"))
    spec = get_spec("segresnet_wholebody")
    ours, theirs = preprocess(volume, spec), preprocess_monai(volume, spec)
    assert ours.image.shape == theirs.image.shape and np.allclose(ours.affine, theirs.affine)
    assert math.isclose(float(ours.image.min()), -1.0, abs_tol=1e-6) and math.isclose(float(ours.image.max()), 1.0, abs_tol=1e-6)
    assert np.abs(ours.image - theirs.image).max() < 1e-5


def test_study_onnx_export_builds_with_its_spec_file(tmp_path, calibration_volume):
    """The MedPTQ study exports its networks with opset 16, input 'input', output 'output' and every weight also
    listed as a graph input (``keep_initializers_as_inputs``); such a graph builds with the committed spec file."""
    from monai.networks.nets import UNet

    from engine_builder.model_source import CustomModel
    from engine_builder.pipeline import BuildRequest, build_engine, open_engine

    torch.manual_seed(0)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=14, channels=(4, 8, 16), strides=(2, 2)).eval()
    graph = tmp_path / "unet_fp32.onnx"
    torch.onnx.export(network, torch.randn(1, 1, 96, 96, 96), str(graph), input_names=["input"], output_names=["output"],
                      opset_version=16, export_params=True, keep_initializers_as_inputs=True, dynamo=False)
    model = CustomModel("onnx", graph, spec_file=STUDY_SPEC)
    built = {p: build_engine(BuildRequest(model=model, calib=calibration_volume, precision=p, patches_per_volume=2,
                                          progress=False), out=tmp_path / p, cache_root=tmp_path / "cache")
             for p in ("fp32", "int8")}
    engine, spec, manifest = open_engine(built["fp32"].engine_dir)
    assert spec.name == "medptq_btcv" and [l.name for l in spec.labels] == [l.name for l in label_table("btcv")]
    assert spec.labels[1].terminology == "SCT^78961009^Spleen" and tuple(spec.spacing_mm) == (1.5, 1.5, 2.0)
    patch = _smooth_patches((96, 96, 96), 1)
    with torch.inference_mode():
        assert relative_l2(network(torch.from_numpy(patch)).numpy(), engine.infer(patch)) <= MAX_PARITY_L2
    int8, _, int8_manifest = open_engine(built["int8"].engine_dir)
    # Every convolution runs int8. The graph's transposed convolutions stay as the ONNX file has them (the exact
    # sub-pixel rewrite works on torch modules): where the CPU has no int8 deconvolution kernel (AVX2-only
    # machines) they run f32 and dominate this tiny network's time, so the int8 time share is only recorded here.
    runtime = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
               for op in int8.compiled.get_runtime_model().get_ordered_ops()]
    convolutions = [precision for kind, precision in runtime if kind == "Convolution"]
    assert len(convolutions) >= 3 and set(convolutions) <= {"u8", "i8"}, runtime
    assert int8_manifest["runs_as"]["convolutions_by_precision"].get("u8", 0) >= 3
