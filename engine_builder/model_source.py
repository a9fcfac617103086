"""Where a model comes from, and its FP32 ONNX graph: the one input every backend builds from.

    resolve(model, weights=None, batch=1, allow_random_weights=False, download=False) -> ModelSource

``model`` is a registry name, a ``ModelSpec`` (an allow-listed architecture), or a ``CustomModel`` naming a
user's file: an ONNX graph or a TorchScript archive with a spec file, a MONAI bundle (folder or zip), or an
nnU-Net v2 results folder. A registry spec is the model's published configuration; its weights come from
``--weights`` or from where the spec says the published checkpoint is (``weights.resolve_weights``: the packaged
file, a MONAI bundle's weights file, a released file), looked for on this machine and downloaded only with
``download``. A registry spec whose weights are an nnU-Net folder takes its configuration from that folder's plans
(under the registry's name, colours and terminology), since nnU-Net's plans are part of the checkpoint. Everything is checked here, before any work (spec against graph, labels against
outputs, weights against the network), with one line per problem. The source then gives the FP32 graph for a
batch size (``ModelSource.fp32_graph``): the network exported with ``export.export_onnx``, or the user's ONNX
with its symbolic dimensions fixed. ``files`` (name -> SHA-256) goes into the engine cache key and the manifest.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PTQError
from .files import file_sha256
from .spec import ModelSpec

#: The kinds a user passes on the command line (``--onnx``, ``--torchscript``, ``--bundle``, ``--nnunet``).
CUSTOM_KINDS = ("onnx", "torchscript", "bundle", "nnunet")


@dataclass(frozen=True)
class CustomModel:
    """A user's model file or folder.

    Attributes:
        kind: one of ``CUSTOM_KINDS``.
        path: the ONNX file, TorchScript file, bundle folder/zip or nnU-Net results folder.
        spec_file: the spec file (JSON/YAML) that ONNX and TorchScript models need.
        folds: nnU-Net fold names (``"0"``, ``"all"``); None for every fold present (an ensemble).
        mirror: nnU-Net test-time mirroring.
        name: a name for the model (default: from the files).
    """

    kind: str
    path: str | Path
    spec_file: str | Path | None = None
    folds: tuple[str, ...] | None = None
    mirror: bool = False
    name: str | None = None


@dataclass
class ModelSource:
    """A resolved model: its spec, the torch network (None for graph-only sources), the user's ONNX graph (ONNX
    sources), the files it was read from (name -> SHA-256) and notes worth telling the user."""

    kind: str
    spec: ModelSpec
    network: object | None
    onnx_path: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    weights_path: Path | None = None

    @property
    def random_weights(self) -> bool:
        """A registry network built without weights (``--random-init``): speed and size only."""
        return self.kind == "registry" and "weights" not in self.files

    def fp32_graph(self, folder: str | Path, batch: int):
        """The FP32 graph (``backends.FP32Graph``) for ``batch`` windows per call, written into ``folder``."""
        from .backends import FP32Graph
        from .export import export_onnx

        path = Path(folder) / "fp32.onnx"
        if self.onnx_path is not None:
            from .byom.onnx_graph import fixed_graph, load_graph

            fixed_graph(load_graph(self.onnx_path), self.spec, batch, path, self.onnx_path.name)
        else:
            try:
                export_onnx(self.network, path, self.spec.roi_size, self.spec.in_channels, batch)
            except (RuntimeError, TypeError) as exc:
                raise PTQError(f"{self.spec.name} cannot be exported at batch {batch} and ROI {list(self.spec.roi_size)} "
                               f"({str(exc).splitlines()[0][:160]})") from None
            if self.kind == "torchscript":
                from .byom.onnx_graph import check_graph, load_graph

                check_graph(load_graph(path), self.spec, batch, f"TorchScript model {self.spec.name}")
        return FP32Graph(self.spec, None if self.spec.graph_only else self.network, path, batch)

    def record(self) -> dict:
        """The manifest's ``source``: kind, file hashes, notes."""
        return {"kind": self.kind, "files": dict(self.files), "notes": list(self.notes)}

    def fingerprint(self) -> str:
        """What identifies the model's numbers for the cache key: its files' hashes (the spec is keyed apart)."""
        return ",".join(f"{name}={digest}" for name, digest in sorted(self.files.items())) or "random-init"


def resolve(model, weights: str | Path | None = None, batch: int = 1, allow_random_weights: bool = False,
            download: bool = False) -> ModelSource:
    """The ``ModelSource`` for a registry name, a ``ModelSpec`` or a ``CustomModel`` (module docstring)."""
    if isinstance(model, CustomModel):
        if weights is not None:
            raise PTQError(f"--weights belongs to --model; a {model.kind} model carries its own weights")
        return _RESOLVERS[model.kind](model, batch)
    from .models import get_spec

    spec = model if isinstance(model, ModelSpec) else get_spec(model)
    random_init = allow_random_weights and weights is None  # speed benchmarks only
    if spec.weights.kind == "nnunet" and not random_init:
        from .weights import find_nnunet_folder

        source = _nnunet_source(CustomModel("nnunet", find_nnunet_folder(spec, weights, download)), batch)
        return dataclasses.replace(source, spec=_registry_flavoured(source.spec, spec))
    return _registry_source(spec, weights, random_init, download)


def _registry_source(spec: ModelSpec, weights, random_init: bool, download: bool) -> ModelSource:
    from .weights import load_network, resolve_weights

    weights_path = None if random_init else resolve_weights(spec, weights, download=download)
    network = load_network(spec, weights_path)  # fails early on weights that do not fit
    files = {"weights": file_sha256(weights_path)} if weights_path else {}
    return ModelSource("registry", spec, network, files=files, weights_path=weights_path)


def _graph_spec(custom: CustomModel):
    from .byom.spec_file import read_spec_file

    if custom.spec_file is None:
        raise PTQError(f"a {custom.kind} model needs a spec file: pass --spec my_net.json (ROI, spacing, intensity, labels)")
    spec = read_spec_file(custom.spec_file, custom.kind)
    if spec.in_channels != 1:
        raise PTQError(f"spec file {Path(custom.spec_file).name}: field 'in_channels' is {spec.in_channels}; "
                       "PTQSegment segments one volume at a time (one input channel)")
    return spec


def _onnx_source(custom: CustomModel, batch: int) -> ModelSource:
    from .byom.onnx_graph import check_graph, load_graph

    spec = _graph_spec(custom)
    path = Path(custom.path)
    check_graph(load_graph(path), spec, batch, path.name)
    files = {"graph": file_sha256(path), "spec_file": file_sha256(custom.spec_file)}
    return ModelSource("onnx", spec, None, path, files)


def _torchscript_source(custom: CustomModel, batch: int) -> ModelSource:
    import torch

    from .byom.torchscript import load_torchscript

    spec = _graph_spec(custom)
    path = Path(custom.path)
    module = load_torchscript(path)
    example = torch.zeros((1, spec.in_channels, *spec.roi_size))
    try:
        with torch.no_grad():
            output = module(example)
    except RuntimeError as exc:
        raise PTQError(f"{path.name} cannot run on a {list(example.shape)} window (batch, channels, *roi_size) "
                       f"({str(exc).splitlines()[0][:120]}): is it a 3D network with {spec.in_channels} input channel?") from None
    if not hasattr(output, "shape") or tuple(output.shape) != (1, len(spec.labels), *spec.roi_size):
        shape = list(output.shape) if hasattr(output, "shape") else type(output).__name__
        raise PTQError(f"{path.name} returns {shape} for a {list(example.shape)} window, not "
                       f"[1, {len(spec.labels)}, *roi_size]: the spec file's 'labels' must match the output channels")
    files = {"graph": file_sha256(path), "spec_file": file_sha256(custom.spec_file)}
    return ModelSource("torchscript", spec, module, None, files)


def _bundle_source(custom: CustomModel, batch: int = 1) -> ModelSource:
    from .byom.bundle import open_bundle, read_bundle
    from .weights import load_network

    scratch = Path(tempfile.mkdtemp(prefix="ptqseg-bundle-"))
    try:
        bundle = read_bundle(open_bundle(custom.path, scratch), custom.name)
        spec = bundle.spec
        try:
            network = load_network(spec, bundle.weights)
        except (TypeError, ValueError) as exc:
            raise PTQError(f"the bundle's network_def cannot be instantiated as {spec.architecture} "
                           f"({str(exc).splitlines()[0][:160]})") from None
        files = {name: file_sha256(path) for name, path in bundle.files.items()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ModelSource("bundle", spec, network, files=files, notes=bundle.notes)


def _registry_flavoured(spec: ModelSpec, registry: ModelSpec) -> ModelSpec:
    """A folder's spec (nnU-Net plans) under its registry name, with the registry's label colours and terminology."""
    known = {label.name: label for label in registry.labels}
    labels = tuple(dataclasses.replace(known[l.name], value=l.value) if l.name in known else l for l in spec.labels)
    return dataclasses.replace(spec, name=registry.name, description=registry.description, labels=labels,
                               weights=registry.weights)


def _nnunet_source(custom: CustomModel, batch: int) -> ModelSource:
    from .byom.nnunet import read_nnunet

    model = read_nnunet(custom.path, list(custom.folds) if custom.folds else None, custom.mirror)
    files = {name: file_sha256(path) for name, path in model.files.items()}
    return ModelSource("nnunet", model.spec, model.network, files=files, notes=model.notes)


_RESOLVERS = {"onnx": _onnx_source, "torchscript": _torchscript_source, "bundle": _bundle_source,
              "nnunet": _nnunet_source}
