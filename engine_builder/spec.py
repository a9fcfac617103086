"""ModelSpec: everything about a segmentation model that is data, not code.

A spec names the network (an allow-listed class and its constructor arguments, or ``""`` for a user's own
graph that travels as ONNX), the patch the network sees (ROI size in voxels, target spacing in mm,
orientation, axis order), how intensities are normalised, the labels (name, colour, optional terminology),
where pretrained weights come from and which preprocessing/sliding-window flavour reproduces the tool the
model was trained with (``pipeline``: MONAI's, or nnU-Net's). Preprocessing, export, calibration, the engine
manifest and the Slicer segment table are all derived from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .architectures import is_allowed, network_class
from .errors import PTQError
from .schema import Fields, plain_json

INTENSITY_KINDS = ("window", "zscore", "zscore_minmax", "ct_clip_zscore", "nnunet_zscore", "none")
WEIGHTS_KINDS = ("packaged", "monai_bundle", "nnunet", "release", "none")
#: What the network computes with, for quantizers that treat the two differently (NNCF's transformer model type
#: quantizes MatMul inputs and leaves Softmax/LayerNorm/GELU patterns in float); hybrids with attention are
#: ``transformer``.
NETWORK_KINDS = ("cnn", "transformer")
#: Where a spec came from. Graph sources carry the network as a graph file only (architecture "").
SOURCE_KINDS = ("registry", "onnx", "torchscript", "bundle", "nnunet")
GRAPH_SOURCES = ("onnx", "torchscript")
#: ``monai``: reorient, trilinear resampling, MONAI's sliding window. ``nnunet``: nnU-Net v2's own steps
#: (crop to the non-zero box, order-3 spline resampling with separate z for anisotropic data, its tile
#: positions and Gaussian), for models trained with nnU-Net.
PIPELINES = ("monai", "nnunet")
#: ``orientation`` value meaning "as stored in the file, no reorientation" (what nnU-Net does).
STORED = "stored"
#: How overlapping sliding windows are blended (MONAI ``BlendMode``; nnU-Net's pipeline is always Gaussian).
BLEND_MODES = ("gaussian", "constant")
_AXES = ("LR", "PA", "IS")


@dataclass(frozen=True)
class Label:
    """One output channel of the network.

    Attributes:
        value: the voxel value in the label map (also the channel index).
        name: a short machine-readable name (``liver``).
        color: RGB in 0..255.
        terminology: optional segmentation type as a ``"scheme^code^meaning"`` triple (``"SCT^10200004^Liver"``),
            as Slicer's terminology files write it.
        terminology_category: the category that type is filed under in Slicer's "General Anatomy" list
            (``"SCT^123037004^Anatomical Structure"``, ``"SCT^85756007^Tissue"``); None: not given.
        terminology_modifier: the type's modifier, e.g. laterality ``"SCT^7771000^Left"``; None: none.
    """

    value: int
    name: str
    color: tuple[int, int, int] = (128, 128, 128)
    terminology: str | None = None
    terminology_category: str | None = None
    terminology_modifier: str | None = None


@dataclass(frozen=True)
class Intensity:
    """Intensity normalisation.

    ``kind="window"``: clip to [a_min, a_max] (HU for CT) and scale linearly to [b_min, b_max].
    ``kind="zscore"``: subtract the mean and divide by the standard deviation of the non-zero voxels (MR; MONAI's
    ``NormalizeIntensity(nonzero=True)``).
    ``kind="zscore_minmax"``: ``zscore``, then scale the whole image's minimum..maximum linearly to [b_min, b_max]
    (MONAI ``NormalizeIntensity(nonzero=True)`` + ``ScaleIntensity(minv=b_min, maxv=b_max)``, the MONAI zoo's
    whole-body CT SegResNet).
    ``kind="ct_clip_zscore"``: clip to [a_min, a_max] (nnU-Net: the dataset's 0.5 and 99.5 foreground percentiles,
    HU), subtract ``mean`` and divide by ``std`` (the dataset's foreground statistics, HU): nnU-Net's CT scheme.
    ``kind="nnunet_zscore"``: nnU-Net's per-image z-score, over the whole (cropped) image, or with ``use_mask`` over
    its hole-filled non-zero region only (voxels outside keep their value).
    ``kind="none"``: intensities as read.
    """

    kind: str = "window"
    a_min: float = -1000.0
    a_max: float = 1000.0
    b_min: float = 0.0
    b_max: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    use_mask: bool = False

    def __post_init__(self) -> None:
        if self.kind not in INTENSITY_KINDS:
            raise PTQError(f"unknown intensity normalisation '{self.kind}': use one of {', '.join(INTENSITY_KINDS)}")


@dataclass(frozen=True)
class WeightsSource:
    """Where pretrained weights come from.

    kind: ``packaged`` (a file shipped inside engine_builder/models/weights), ``monai_bundle`` (a MONAI model-zoo
    bundle called ``name``; ``path`` is the weights file inside it), ``nnunet`` (an nnU-Net v2 results folder:
    ``name`` is the dataset folder, ``path`` the ``<Trainer>__<Plans>__<configuration>`` folder inside it),
    ``release`` (a checkpoint file the authors published, ``name`` its file name, downloaded by hand from ``url``)
    or ``none`` (the user passes ``--weights``; ``url`` may say where a checkpoint can be had, if anywhere).
    ``sha256`` pins the expected file where known.
    """

    kind: str = "none"
    name: str = ""
    path: str = ""
    sha256: str = ""
    url: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation model as data. See the module docstring."""

    name: str
    description: str
    architecture: str
    arch_args: Mapping[str, Any]
    labels: tuple[Label, ...]
    roi_size: tuple[int, int, int] = (96, 96, 96)
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    orientation: str = "RAS"
    intensity: Intensity = field(default_factory=Intensity)
    overlap: float = 0.25
    weights: WeightsSource = field(default_factory=WeightsSource)
    modality: str = "CT"
    clinical_use: bool = False
    source: str = "registry"
    in_channels: int = 1
    pipeline: str = "monai"
    axis_order: tuple[int, int, int] = (0, 1, 2)
    blend: str = "gaussian"
    network_kind: str = "cnn"

    def __post_init__(self) -> None:
        values = [label.value for label in self.labels]
        if values != list(range(len(values))):
            raise PTQError(f"model '{self.name}': label values must be 0..N-1 in order, got {values}")
        if self.out_channels != len(self.labels):
            raise PTQError(
                f"model '{self.name}': the network has {self.out_channels} output channels but {len(self.labels)} labels"
            )
        declared = dict(self.arch_args).get("in_channels", self.in_channels)
        if declared != self.in_channels:
            raise PTQError(f"model '{self.name}': in_channels {self.in_channels} but the network takes {declared}")
        if (self.architecture == "") != (self.source in GRAPH_SOURCES):
            raise PTQError(f"model '{self.name}': only a graph source ({', '.join(GRAPH_SOURCES)}) has no architecture")
        if sorted(self.axis_order) != [0, 1, 2]:
            raise PTQError(f"model '{self.name}': axis_order {self.axis_order} is not a permutation of 0, 1, 2")
        if self.network_kind not in NETWORK_KINDS:
            raise PTQError(f"model '{self.name}': network_kind {self.network_kind!r} is not one of {', '.join(NETWORK_KINDS)}")

    @property
    def out_channels(self) -> int:
        args = dict(self.arch_args)
        return int(args.get("out_channels", len(self.labels)))

    @property
    def graph_only(self) -> bool:
        """True when the network exists only as a graph file (a user's ONNX or TorchScript model)."""
        return self.source in GRAPH_SOURCES

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def build_network(self):
        """Instantiate the torch network (random weights), in eval mode; only allow-listed architectures."""
        if self.graph_only:
            raise PTQError(f"model '{self.name}' is a {self.source} graph, not a network definition PTQSegment knows: "
                           "the torch backend cannot run it; use --backend openvino")
        return network_class(self.architecture)(**_plain(self.arch_args)).eval()

    def to_dict(self) -> dict:
        """JSON form. Fields added after format 2 are left out at their defaults, so registry specs keep their
        manifests and fingerprints (cache keys) byte for byte."""
        data = _plain(dataclasses.asdict(self))
        for key, default in _OPTIONAL_SPEC_FIELDS.items():
            if data[key] == _plain(default):
                del data[key]
        for key, default in _OPTIONAL_INTENSITY_FIELDS.items():
            if data["intensity"][key] == default:
                del data["intensity"][key]
        for key, default in _OPTIONAL_WEIGHTS_FIELDS.items():
            if data["weights"][key] == default:
                del data["weights"][key]
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "model spec", hint: str = "") -> "ModelSpec":
        """A spec from untrusted JSON (a manifest's ``spec``, a user's spec file), every field checked.

        Refuses unknown fields, wrong types and out-of-range values with one line naming the field; the
        architecture must be allow-listed (``architectures.py``) and its arguments plain JSON.
        """
        fields = data if isinstance(data, Fields) else Fields(data, where, hint)
        fields.only(f.name for f in dataclasses.fields(cls))
        source = fields.string("source", SOURCE_KINDS, required=False, default="registry")
        architecture = fields.string("architecture")
        if source in GRAPH_SOURCES:
            if architecture != "":
                fields.fail(f"must be empty for a {source} graph (its network is the graph file), not {architecture!r}",
                            "architecture")
        elif not is_allowed(architecture):
            fields.fail(f"names {architecture!r}, which is not an allow-listed network architecture", "architecture")
        arch_args = fields.object("arch_args")
        if source in GRAPH_SOURCES and arch_args.data:
            fields.fail(f"must be empty for a {source} graph", "arch_args")
        labels = tuple(_label_from(item) for item in fields.objects("labels", 2, 4096))
        if [label.value for label in labels] != list(range(len(labels))):
            fields.fail("must have values 0..N-1 in order", "labels")
        out_channels = arch_args.data.get("out_channels", len(labels))
        if out_channels != len(labels):
            fields.fail(f"has {len(labels)} labels but the network has {out_channels} output channels", "labels")
        in_channels = fields.integer("in_channels", 1, 64, required=False, default=arch_args.data.get("in_channels", 1))
        if arch_args.data.get("in_channels", in_channels) != in_channels:
            fields.fail(f"is {in_channels} but the network takes {arch_args.data['in_channels']}", "in_channels")
        orientation = fields.string("orientation", required=False, default="RAS")
        if orientation != STORED and \
                sorted(next((i for i, pair in enumerate(_AXES) if c in pair), -1) for c in orientation) != [0, 1, 2]:
            fields.fail(f"is {orientation!r}, not three axis codes such as 'RAS' or 'LPS', or '{STORED}'", "orientation")
        axis_order = fields.integers("axis_order", 3, 0, 2) if fields.has("axis_order") else (0, 1, 2)
        if sorted(axis_order) != [0, 1, 2]:
            fields.fail(f"is {list(axis_order)}, not a permutation of 0, 1, 2", "axis_order")
        return cls(
            name=fields.string("name", plain_name=True),
            description=fields.string("description", required=False, default=""),
            architecture=architecture,
            arch_args=plain_json(arch_args.data, fields, "arch_args"),
            labels=labels,
            roi_size=fields.integers("roi_size", 3, 8, 1024),
            spacing_mm=fields.numbers("spacing_mm", 3, 0.0, 100.0, lo_open=True),
            orientation=orientation,
            intensity=_intensity_from(fields.object("intensity")),
            overlap=fields.number("overlap", 0.0, 0.95, required=False, default=0.25),
            weights=_weights_from(fields.object("weights", required=False)),
            modality=fields.string("modality", required=False, default="CT", max_length=32),
            clinical_use=fields.boolean("clinical_use", required=False, default=False),
            source=source,
            in_channels=in_channels,
            pipeline=fields.string("pipeline", PIPELINES, required=False, default="monai"),
            axis_order=axis_order,
            blend=fields.string("blend", BLEND_MODES, required=False, default="gaussian"),
            network_kind=fields.string("network_kind", NETWORK_KINDS, required=False, default="cnn"),
        )

    def fingerprint(self) -> str:
        """SHA-256 of the spec's canonical JSON: part of the engine cache key."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _label_from(fields: Fields) -> Label:
    fields.only(f.name for f in dataclasses.fields(Label))
    extra = {f.name: fields.string(f.name, required=False, default=f.default, max_length=256)
             for f in dataclasses.fields(Label) if f.name not in ("value", "name", "color")}
    return Label(value=fields.integer("value", 0, 1 << 16), name=fields.string("name", max_length=128),
                 color=fields.integers("color", 3, 0, 255) if fields.has("color") else (128, 128, 128), **extra)


def _intensity_from(fields: Fields) -> Intensity:
    fields.only(f.name for f in dataclasses.fields(Intensity))
    intensity = Intensity(kind=fields.string("kind", INTENSITY_KINDS),
                          **{k: fields.number(k, required=False, default=getattr(Intensity, k))
                             for k in ("a_min", "a_max", "b_min", "b_max", "mean", "std")},
                          use_mask=fields.boolean("use_mask", required=False, default=False))
    if intensity.kind in ("window", "ct_clip_zscore") and not intensity.a_min < intensity.a_max:
        fields.fail(f"has a_min {intensity.a_min} >= a_max {intensity.a_max}", "a_min")
    if intensity.kind == "zscore_minmax" and not intensity.b_min < intensity.b_max:
        fields.fail(f"has b_min {intensity.b_min} >= b_max {intensity.b_max}", "b_min")
    if intensity.kind == "ct_clip_zscore" and not intensity.std > 0:
        fields.fail(f"is {intensity.std}, must be above 0", "std")
    return intensity


def _weights_from(fields: Fields | None) -> WeightsSource:
    if fields is None:
        return WeightsSource()
    fields.only(f.name for f in dataclasses.fields(WeightsSource))
    kind = fields.string("kind", WEIGHTS_KINDS)
    path = fields.string("path", required=False, default="", max_length=512)
    escapes = "\\" in path or path.startswith("/") or ".." in path.split("/")
    if escapes or (kind in ("packaged", "nnunet", "release") and "/" in path):
        fields.fail(f"is {path!r}: a weights path must stay inside its package, bundle or folder", "path")
    return WeightsSource(kind=kind, name=fields.string("name", required=False, default="", plain_name=False, max_length=256),
                         path=path, sha256=fields.string("sha256", required=False, default="", max_length=64),
                         url=fields.string("url", required=False, default="", max_length=512))


# Fields added after engine format 2, left out of ``to_dict`` at these defaults (see ``ModelSpec.to_dict``).
_OPTIONAL_SPEC_FIELDS = {"source": "registry", "in_channels": 1, "pipeline": "monai", "axis_order": (0, 1, 2),
                         "blend": "gaussian", "network_kind": "cnn"}
_OPTIONAL_INTENSITY_FIELDS = {"mean": 0.0, "std": 1.0, "use_mask": False}
_OPTIONAL_WEIGHTS_FIELDS = {"url": ""}


def _plain(value: Any) -> Any:
    """Tuples and mappings to JSON-friendly lists and dicts (specs are stored in manifests)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def labels_from_table(items: Any, where: str) -> tuple[Label, ...]:
    """Labels from a table's list of ``{"value", "name", "color"?, "terminology"?, ...}`` objects (values 0..N-1 in
    order), each field checked; a label without a colour of its own gets the palette's colour for its value."""
    labels = tuple(_label_from(item) for item in Fields({"labels": items}, where).objects("labels", 2, 4096))
    if [label.value for label in labels] != list(range(len(labels))):
        raise PTQError(f"{where}: label values must be 0..N-1 in order")
    colored = {item["value"] for item in items if "color" in item}
    return tuple(label if label.value in colored else dataclasses.replace(label, color=_PALETTE[label.value % len(_PALETTE)])
                 for label in labels)


def labels_from_names(names: Sequence[str], colors: Mapping[str, tuple[int, int, int]] | None = None) -> tuple[Label, ...]:
    """Labels 0..N-1 from names (``background`` first), with colours from ``colors`` or a fixed palette."""
    colors = colors or {}
    return tuple(
        Label(value=i, name=n, color=tuple(colors.get(n, _PALETTE[i % len(_PALETTE)])) if i else (0, 0, 0))
        for i, n in enumerate(names)
    )


# A qualitative palette (distinct hues) for labels that have no colour of their own.
_PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
]
