"""ModelSpec: everything about a segmentation model that is data, not code.

A spec names the network (a MONAI class and its constructor arguments), the patch the network sees
(ROI size in voxels, target spacing in mm, orientation), how intensities are normalised, the labels
(name, colour, optional terminology) and where pretrained weights come from. Preprocessing, export,
calibration, the engine manifest and the Slicer segment table are all derived from it.
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

INTENSITY_KINDS = ("window", "zscore")
WEIGHTS_KINDS = ("packaged", "monai_bundle", "none")
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
    ``kind="zscore"``: subtract the mean and divide by the standard deviation of the non-zero voxels (MR).
    """

    kind: str = "window"
    a_min: float = -1000.0
    a_max: float = 1000.0
    b_min: float = 0.0
    b_max: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in INTENSITY_KINDS:
            raise PTQError(f"unknown intensity normalisation '{self.kind}': use 'window' or 'zscore'")


@dataclass(frozen=True)
class WeightsSource:
    """Where pretrained weights come from.

    kind: ``packaged`` (a file shipped inside engine_builder/models/weights), ``monai_bundle`` (downloaded
    with ``monai.bundle.download``; ``path`` is the file inside the bundle) or ``none`` (the user passes
    ``--weights``). ``sha256`` pins the expected file where known.
    """

    kind: str = "none"
    name: str = ""
    path: str = ""
    sha256: str = ""


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

    def __post_init__(self) -> None:
        values = [label.value for label in self.labels]
        if values != list(range(len(values))):
            raise PTQError(f"model '{self.name}': label values must be 0..N-1 in order, got {values}")
        if self.out_channels != len(self.labels):
            raise PTQError(
                f"model '{self.name}': the network has {self.out_channels} output channels but {len(self.labels)} labels"
            )

    @property
    def out_channels(self) -> int:
        args = dict(self.arch_args)
        return int(args.get("out_channels", len(self.labels)))

    @property
    def in_channels(self) -> int:
        return int(dict(self.arch_args).get("in_channels", 1))

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def build_network(self):
        """Instantiate the torch network (random weights), in eval mode; only allow-listed architectures."""
        return network_class(self.architecture)(**_plain(self.arch_args)).eval()

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Any, where: str = "model spec", hint: str = "") -> "ModelSpec":
        """A spec from untrusted JSON (a manifest's ``spec``, a user's spec file), every field checked.

        Refuses unknown fields, wrong types and out-of-range values with one line naming the field; the
        architecture must be allow-listed (``architectures.py``) and its arguments plain JSON.
        """
        fields = data if isinstance(data, Fields) else Fields(data, where, hint)
        fields.only(f.name for f in dataclasses.fields(cls))
        architecture = fields.string("architecture")
        if not is_allowed(architecture):
            fields.fail(f"names {architecture!r}, which is not an allow-listed network architecture", "architecture")
        arch_args = fields.object("arch_args")
        labels = tuple(_label_from(item) for item in fields.objects("labels", 2, 4096))
        if [label.value for label in labels] != list(range(len(labels))):
            fields.fail("must have values 0..N-1 in order", "labels")
        out_channels = arch_args.data.get("out_channels", len(labels))
        if out_channels != len(labels):
            fields.fail(f"has {len(labels)} labels but the network has {out_channels} output channels", "labels")
        orientation = fields.string("orientation", required=False, default="RAS")
        if sorted(next((i for i, pair in enumerate(_AXES) if c in pair), -1) for c in orientation) != [0, 1, 2]:
            fields.fail(f"is {orientation!r}, not three axis codes such as 'RAS' or 'LPS'", "orientation")
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
                             for k in ("a_min", "a_max", "b_min", "b_max")})
    if intensity.kind == "window" and not intensity.a_min < intensity.a_max:
        fields.fail(f"has a_min {intensity.a_min} >= a_max {intensity.a_max}", "a_min")
    return intensity


def _weights_from(fields: Fields | None) -> WeightsSource:
    if fields is None:
        return WeightsSource()
    fields.only(f.name for f in dataclasses.fields(WeightsSource))
    kind = fields.string("kind", WEIGHTS_KINDS)
    path = fields.string("path", required=False, default="", max_length=512)
    escapes = "\\" in path or path.startswith("/") or ".." in path.split("/")
    if escapes or (kind == "packaged" and "/" in path):
        fields.fail(f"is {path!r}: a weights path must stay inside its package or bundle", "path")
    return WeightsSource(kind=kind, name=fields.string("name", required=False, default="", plain_name=False, max_length=256),
                         path=path, sha256=fields.string("sha256", required=False, default="", max_length=64))


def _plain(value: Any) -> Any:
    """Tuples and mappings to JSON-friendly lists and dicts (specs are stored in manifests)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
