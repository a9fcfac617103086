"""MONAI model-zoo bundles (a folder or a .zip in the zoo layout), read as untrusted data.

    <bundle>/configs/inference.json (or .yaml)   network_def, preprocessing, inferer
    <bundle>/configs/metadata.json               network_data_format: channel_def (label names), spatial_shape
    <bundle>/models/model.pt                      the weights (a state dict, or {"model": state_dict})

MONAI runs a bundle by instantiating its config, and a config may hold ``$``-expressions (Python code) and
``@``-references. Here the files are only read (``ConfigParser.load_config_file``: JSON or YAML parsing, nothing is
evaluated) and the parts PTQSegment needs are checked by hand: ``network_def`` must name an allow-listed
architecture (``architectures.py``) with plain-JSON arguments, the preprocessing transforms must be ones the
pipeline reproduces (mapped from their plain arguments), and any ``$``/``@``/``%`` value in what is used is refused
with the key that holds it. The weights go through ``weights.load_state_dict`` (``weights_only``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..architectures import ALLOWED
from ..errors import PTQError
from ..spec import Intensity, ModelSpec, labels_from_names

_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
#: Transforms with no effect on what the network sees here (reading, channel-first, tensor types).
_NEUTRAL = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "EnsureTyped", "EnsureType",
            "ToTensord", "ToTensor", "CastToTyped", "CastToType", "AddChanneld", "AddChannel"}
#: Transforms dropped with a note: the pipeline segments the whole volume instead.
_IGNORED = {"CropForegroundd": "CropForegroundd is ignored: PTQSegment runs the sliding window over the whole volume, "
                                 "so voxels outside the foreground box are segmented too rather than set to background"}
_MAX_ZIP_BYTES = 8 << 30


@dataclass
class BundleModel:
    """What a bundle defines: the spec, the weights file, the files read (name -> path) and notes for the user."""

    spec: ModelSpec
    weights: Path
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)


def open_bundle(path: str | Path, scratch: Path) -> Path:
    """The bundle folder: ``path`` itself, or a zip's contents extracted into ``scratch`` (paths checked)."""
    path = Path(path)
    if path.is_dir():
        return _bundle_root(path)
    if not path.is_file():
        raise PTQError(f"MONAI bundle {path} not found: pass the bundle folder or its .zip")
    if not zipfile.is_zipfile(path):
        raise PTQError(f"{path.name} is neither a MONAI bundle folder nor a .zip")
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if sum(m.file_size for m in members) > _MAX_ZIP_BYTES:
            raise PTQError(f"{path.name} unpacks to more than {_MAX_ZIP_BYTES >> 30} GB; unpack it and pass the folder")
        for member in members:
            name = member.filename
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name:
                raise PTQError(f"{path.name} holds a file outside the bundle ({name!r}); it is not unpacked")
        archive.extractall(scratch)
    return _bundle_root(scratch)


def _bundle_root(folder: Path) -> Path:
    """``folder`` or its single sub-folder, whichever holds ``configs/`` (zoo zips wrap the bundle in a folder)."""
    if (folder / "configs").is_dir():
        return folder
    children = [c for c in folder.iterdir() if c.is_dir() and (c / "configs").is_dir()]
    if len(children) == 1:
        return children[0]
    raise PTQError(f"{folder} is not a MONAI bundle: it has no configs/ folder (expected configs/inference.json, "
                   "configs/metadata.json, models/model.pt)")


def read_bundle(root: Path, name: str | None = None) -> BundleModel:
    """The spec, weights and files of the bundle at ``root`` (module docstring), or one clear PTQError."""
    config_path = next((root / "configs" / n for n in _CONFIG_NAMES if (root / "configs" / n).is_file()), None)
    if config_path is None:
        raise PTQError(f"MONAI bundle {root.name} has no configs/inference.json (or .yaml)")
    metadata_path = root / "configs" / "metadata.json"
    if not metadata_path.is_file():
        raise PTQError(f"MONAI bundle {root.name} has no configs/metadata.json (it names the labels)")
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        raise PTQError(f"MONAI bundle {root.name} has no models/model.pt (the weights)")
    config, metadata = _load(config_path), _load(metadata_path)
    notes: list[str] = []
    architecture, arch_args = _network(config, config_path.name)
    preprocessing = _preprocessing(config, config_path.name, notes)
    roi, overlap, blend = _inferer(config, metadata, config_path.name)
    labels = _labels(metadata, arch_args)
    spec = ModelSpec(
        name=_plain_name(name or metadata.get("name") or root.name), architecture=architecture, arch_args=arch_args,
        description=str(metadata.get("description") or f"MONAI bundle {root.name}")[:300], labels=labels,
        roi_size=roi, overlap=overlap, blend=blend, source="bundle", in_channels=int(arch_args.get("in_channels", 1)),
        modality=_modality(metadata), **preprocessing)
    return BundleModel(spec, weights, {"config": config_path, "metadata": metadata_path, "weights": weights}, notes)


def _load(path: Path) -> dict:
    from monai.bundle import ConfigParser  # reads JSON/YAML; evaluates nothing

    try:
        data = ConfigParser.load_config_file(str(path))
    except Exception as exc:  # noqa: BLE001  json/yaml errors of several types
        raise PTQError(f"{path.name} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise PTQError(f"{path.name} must hold an object of fields")
    return data


def _refuse_code(value, key: str, config: str) -> None:
    """Refuse ``$`` (Python), ``@`` (reference) and ``%`` (macro) values: PTQSegment does not evaluate config code."""
    if isinstance(value, str) and value.startswith(("$", "@", "%")):
        kind = {"$": "a Python expression", "@": "a reference", "%": "a macro"}[value[0]]
        raise PTQError(f"{config}: '{key}' is {kind} ({value[:60]!r}); PTQSegment reads bundles as data and does not "
                       "evaluate config code: write the plain value there")
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_code(v, f"{key}.{k}", config)
    if isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_code(v, f"{key}[{i}]", config)


def _network(config: dict, name: str) -> tuple[str, dict]:
    definition = config.get("network_def")
    if not isinstance(definition, dict):
        raise PTQError(f"{name} has no 'network_def' object: the bundle's network cannot be instantiated")
    _refuse_code(definition, "network_def", name)
    target = str(definition.get("_target_", ""))
    candidates = [target, f"monai.networks.nets.{target}"]
    architecture = next((c for c in candidates if c in ALLOWED), None)
    if architecture is None:
        raise PTQError(f"{name}: network_def._target_ {target!r} is not an architecture PTQSegment builds "
                       f"(it builds {', '.join(sorted(a.rsplit('.', 1)[-1] for a in ALLOWED))})")
    args = {k: v for k, v in definition.items() if not k.startswith("_")}
    if args.get("spatial_dims", 3) != 3:
        raise PTQError(f"{name}: network_def has spatial_dims {args['spatial_dims']}: a 2D network; "
                       "PTQSegment runs 3D segmentation networks")
    return architecture, args


def _transforms(config: dict, name: str) -> list[dict]:
    preprocessing = config.get("preprocessing")
    if isinstance(preprocessing, dict) and "transforms" in preprocessing:
        preprocessing = preprocessing["transforms"]
    if not isinstance(preprocessing, list) or not all(isinstance(t, dict) for t in preprocessing):
        raise PTQError(f"{name} has no 'preprocessing' list of transforms PTQSegment can read")
    return preprocessing


def _preprocessing(config: dict, name: str, notes: list[str]) -> dict:
    """Orientation, spacing and intensity of the spec from the bundle's (plain) preprocessing transforms."""
    result: dict = {"orientation": "stored", "spacing_mm": None, "intensity": None}
    for index, transform in enumerate(_transforms(config, name)):
        target = str(transform.get("_target_", "")).rsplit(".", 1)[-1]
        key = f"preprocessing[{index}] ({target})"
        _refuse_code({k: v for k, v in transform.items() if k != "keys"}, key, name)
        if target in _NEUTRAL:
            continue
        if target in _IGNORED:
            notes.append(_IGNORED[target])
        elif target == "Orientationd":
            result["orientation"] = str(transform.get("axcodes", "RAS"))
        elif target == "Spacingd":
            if str(transform.get("mode", "bilinear")) not in ("bilinear", "trilinear"):
                raise PTQError(f"{name}: {key} resamples with mode {transform.get('mode')!r}; PTQSegment resamples "
                               "images linearly only")
            result["spacing_mm"] = tuple(float(v) for v in transform["pixdim"])
        elif target == "ScaleIntensityRanged":
            if not transform.get("clip", False):
                raise PTQError(f"{name}: {key} has clip false; PTQSegment's window always clips")
            result["intensity"] = Intensity("window", *(float(transform[k]) for k in ("a_min", "a_max", "b_min", "b_max")))
        elif target == "NormalizeIntensityd":
            if not transform.get("nonzero", False):
                raise PTQError(f"{name}: {key} normalises over all voxels (nonzero false); PTQSegment's z-score uses "
                               "the non-zero voxels (nonzero true)")
            result["intensity"] = Intensity("zscore")
        else:
            raise PTQError(f"{name}: {key} is a transform PTQSegment cannot reproduce (it maps Orientationd, Spacingd, "
                           "ScaleIntensityRanged, NormalizeIntensityd, and ignores loading/typing transforms)")
    if result["spacing_mm"] is None:
        raise PTQError(f"{name}: the preprocessing has no Spacingd; PTQSegment needs the spacing the network was "
                       "trained at")
    if result["intensity"] is None:
        raise PTQError(f"{name}: the preprocessing has no intensity normalisation (ScaleIntensityRanged or "
                       "NormalizeIntensityd)")
    return result


def _inferer(config: dict, metadata: dict, name: str) -> tuple[tuple[int, int, int], float, str]:
    inferer = config.get("inferer") if isinstance(config.get("inferer"), dict) else {}
    _refuse_code({k: v for k, v in inferer.items() if k in ("roi_size", "overlap", "mode")}, "inferer", name)
    roi = inferer.get("roi_size")
    if roi is None:
        shape = (((metadata.get("network_data_format") or {}).get("inputs") or {}).get("image") or {}).get("spatial_shape")
        roi = shape if isinstance(shape, list) and all(isinstance(v, int) for v in shape) else None
    if not (isinstance(roi, list) and len(roi) == 3 and all(isinstance(v, int) and v > 0 for v in roi)):
        raise PTQError(f"{name}: the inferer has no roi_size of three positive integers (nor metadata a spatial_shape)")
    mode = str(inferer.get("mode", "constant"))  # SlidingWindowInferer's default
    if mode not in ("constant", "gaussian"):
        raise PTQError(f"{name}: the inferer blends windows with mode {mode!r}; PTQSegment blends constant or gaussian")
    return tuple(roi), float(inferer.get("overlap", 0.25)), mode


def _labels(metadata: dict, arch_args: dict):
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    pred = outputs.get("pred") or (next(iter(outputs.values())) if outputs else {})
    channel_def = pred.get("channel_def") if isinstance(pred, dict) else None
    if not isinstance(channel_def, dict) or not channel_def:
        raise PTQError("metadata.json has no network_data_format.outputs.pred.channel_def (the label names)")
    try:
        by_value = {int(k): str(v) for k, v in channel_def.items()}
    except ValueError:
        raise PTQError("metadata.json: channel_def keys must be channel numbers") from None
    if sorted(by_value) != list(range(len(by_value))):
        raise PTQError(f"metadata.json: channel_def has channels {sorted(by_value)}, not 0..N-1")
    out_channels = arch_args.get("out_channels", len(by_value))
    if out_channels != len(by_value):
        raise PTQError(f"metadata.json names {len(by_value)} labels but network_def has out_channels {out_channels}")
    names = [_plain_name(by_value[i].strip().lower().replace(" ", "_")) for i in range(len(by_value))]
    return labels_from_names(names)


def _modality(metadata: dict) -> str:
    image = (((metadata.get("network_data_format") or {}).get("inputs") or {}).get("image") or {})
    modality = str(image.get("modality", "CT"))[:32]
    return modality if modality.replace("_", "").isalnum() else "CT"


def _plain_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-." else "_" for c in str(name))[:128].strip("._-")
    return cleaned or "bundle"
