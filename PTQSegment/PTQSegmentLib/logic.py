"""The PTQSegment Logic: build an INT8 engine, segment a volume node with it, list built engines. No Qt.

Usable from Slicer's Python console (``PTQSegment.PTQSegmentLogic()`` adds the parameter node) and from plain
Python on the ``slicer-core`` wheel, where tests pass their own scene::

    logic = PTQSegmentLogic()
    engine = logic.buildEngine("demo", calibrationFolder="/data/unlabeled-ct")     # in-process, blocking
    segmentationNode, timings = logic.segment(volumeNode, engine)

The panel uses the background variants instead (``buildEngine(..., background=True)``, ``startSegment``): the work
runs in a ``ptqseg`` child process and the returned ``Job`` is polled from a timer, then ``finishBuild`` /
``finishSegment`` turn it into an engine or a segmentation node. Every user mistake the panel can make is caught
by ``checkBuildInputs`` / ``checkSegmentInputs`` as an ``InputError`` whose message is one readable line.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import ensureEngineBuilderImportable
from .engine_catalog import GPU_BACKENDS, EngineRecord, GpuInfo, detectGpu, listEngines, staleReasons
from .process import PtqsegProcess, removePartialEngines

ensureEngineBuilderImportable()
from engine_builder.errors import PTQError  # noqa: E402  (light: no torch, no runtime)

#: The model choice that means "a weights file for one of the registry's architectures".
CUSTOM_MODEL = "custom"
#: Kinds of a user's own model ("Custom model…"): file or folder, as ``ptqseg build --onnx/--torchscript/--bundle/--nnunet``.
CUSTOM_SOURCE_KINDS = ("onnx", "torchscript", "bundle", "nnunet")
AUTO_BACKEND = "auto"
#: Backend names as engine_builder registers them (or will: the TensorRT backend is being written).
TENSORRT, TENSORRT_RTX = "tensorrt", "tensorrt-rtx"
#: Compute capabilities (major, minor): TensorRT 10 needs Turing or newer; TensorRT-RTX runs these (its support matrix).
TENSORRT_MIN_CAPABILITY = (7, 5)
TENSORRT_RTX_CAPABILITIES = ((8, 0), (8, 6), (8, 9), (12, 0), (12, 1))
#: Stage names of engine_builder's progress events, as the panel says them.
STAGE_TITLES = {"calibration": "Calibrating", "export": "Exporting", "quantize": "Quantizing (INT8)", "compile": "Compiling",
                "accuracy_check": "Checking INT8 vs FP32", "inference": "Segmenting", "starting": "Starting"}
_PRECISION_NAMES = {"u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16", "i32": "int32"}


class InputError(PTQError):
    """A choice in the panel that cannot work; the message says what to change."""


@dataclass
class Job:
    """A build or a segmentation running in a ``ptqseg`` child process.

    Attributes:
        kind: ``build`` or ``segment``.
        process: the child; ``poll()`` it from a timer.
        workDir: temporary files of this job (scene volumes for calibration, the input and output volumes),
            removed when the job is finished.
    """

    kind: str
    process: PtqsegProcess
    workDir: Path
    outputPath: Path
    volumeNode: object = None
    engine: EngineRecord | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def poll(self) -> list[dict]:
        return self.process.poll()

    def cancel(self) -> None:
        self.process.cancel()

    def wait(self, timeout: float | None = None) -> str:
        return self.process.wait(timeout)

    @property
    def running(self) -> bool:
        return self.process.running

    @property
    def stageTitle(self) -> str:
        stage = self.process.progress.stage
        return STAGE_TITLES.get(stage, stage.replace("_", " ").capitalize())


class PTQSegmentLogic:
    """Build engines, segment volume nodes, list engines. See the module docstring."""

    def __init__(self, scene=None, cacheRoot: str | Path | None = None, python: str | None = None):
        """``scene`` defaults to ``slicer.mrmlScene``; ``cacheRoot`` to ``$PTQSEG_CACHE`` or ``~/.cache/ptqsegment``;
        ``python`` is the interpreter of the child processes (default: ``PythonSlicer`` in Slicer)."""
        self._scene = scene
        self._cacheRoot = Path(cacheRoot) if cacheRoot else None
        self.python = python
        self._openEngines: dict[str, tuple] = {}

    # ----------------------------------------------------------------------------------------------- settings
    @property
    def scene(self):
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene

    @property
    def cacheRoot(self) -> Path:
        if self._cacheRoot is None:
            from engine_builder.artifact import default_cache_root

            return default_cache_root()
        return self._cacheRoot

    @property
    def engineFolders(self) -> list[Path]:
        """Where built engines are listed from: the engine cache every ``ptqseg build`` copies into."""
        return [self.cacheRoot / "engines"]

    @staticmethod
    def modelNames() -> list[str]:
        """Registry model names (the panel adds "Custom weights…")."""
        from engine_builder.models import registry

        return sorted(registry())

    @staticmethod
    def backendNames() -> list[str]:
        """``auto`` followed by the backends engine_builder has (its CPU backends while torch is not installed yet:
        ``engine_builder.backends`` imports torch)."""
        try:
            from engine_builder.backends import backend_names
        except ImportError:
            return [AUTO_BACKEND, "openvino", "torch"]
        return [AUTO_BACKEND, *backend_names()]

    # ------------------------------------------------------------------------------------------ dependencies
    @staticmethod
    def missingDependencies(backend: str = "openvino") -> list:
        from .dependency_handler import missingRequirements

        return missingRequirements(backend)

    @staticmethod
    def installDependencies(missing: list, confirm) -> bool:
        """Install ``missing`` (from ``missingDependencies``) once ``confirm(description)`` returns True."""
        from .dependency_handler import installRequirements

        return installRequirements(missing, confirm)

    # ------------------------------------------------------------------------------------------------ checks
    def resolveBackend(self, choice: str, gpu: GpuInfo | None = None, available: list[str] | None = None) -> str:
        """The backend ``choice`` means here. ``auto``: TensorRT when it is installed and the GPU supports it, else
        TensorRT-RTX on an RTX GPU it supports, else OpenVINO INT8 on the CPU."""
        if choice != AUTO_BACKEND:
            return choice
        import importlib.util

        from engine_builder.backends import backend_names

        available = backend_names() if available is None else available
        gpu = detectGpu() if gpu is None else gpu
        if gpu is not None:
            if TENSORRT in available and gpu.capability >= TENSORRT_MIN_CAPABILITY and importlib.util.find_spec("tensorrt"):
                return TENSORRT
            rtx_supported = gpu.isRtx and gpu.capability in TENSORRT_RTX_CAPABILITIES
            if TENSORRT_RTX in available and rtx_supported and importlib.util.find_spec("tensorrt_rtx_bindings"):
                return TENSORRT_RTX
        return "openvino"

    def checkBuildInputs(self, modelName: str, weightsPath: str | Path | None = None, calibrationFolder: str | Path | None = None,
                         useSceneVolumes: bool = False, backend: str = AUTO_BACKEND, precision: str = "int8",
                         gpu: GpuInfo | None = None, customModel: dict | None = None) -> str:
        """Raise ``InputError`` for a build that cannot work; return the backend it will use.

        ``customModel``: a user's own model instead of ``modelName``, ``{"kind": "onnx"|"torchscript"|"bundle"|"nnunet",
        "path": file or folder, "specFile": spec file (ONNX, TorchScript), "folds": ["0", ...] (nnU-Net)}``.
        """
        from engine_builder.backends import backend_names
        from engine_builder.models import get_spec

        if customModel is not None:
            self._checkCustomModel(customModel)
            resolved = self.resolveBackend(backend, gpu)
            if resolved == "torch" and customModel["kind"] in ("onnx", "torchscript"):
                raise InputError("The torch backend runs only networks PTQSegment knows: choose openvino for an ONNX or TorchScript model.")
            if precision == "int8":
                self._checkCalibration(calibrationFolder, useSceneVolumes)
            return resolved
        if not modelName or modelName == CUSTOM_MODEL:
            raise InputError("Choose the architecture your custom weights belong to.")
        spec = get_spec(modelName)
        resolved = self.resolveBackend(backend, gpu)
        if resolved not in backend_names():
            raise InputError(f"Backend '{resolved}' is not available in this engine_builder (it has: {', '.join(backend_names())}).")
        if resolved in GPU_BACKENDS and (gpu or detectGpu()) is None:
            raise InputError(f"Backend {resolved} needs an NVIDIA GPU and none was found: choose Auto or openvino (CPU).")
        self._checkWeights(spec, weightsPath)
        if precision == "int8":
            self._checkCalibration(calibrationFolder, useSceneVolumes)
        return resolved

    @staticmethod
    def _checkCustomModel(customModel: dict) -> None:
        kind, path = customModel.get("kind"), customModel.get("path")
        if kind not in CUSTOM_SOURCE_KINDS:
            raise InputError(f"Custom model kind '{kind}' is not one of {', '.join(CUSTOM_SOURCE_KINDS)}.")
        if not path or not Path(path).exists():
            raise InputError(f"Custom model {path or '(none)'} not found: choose the {kind} file or folder.")
        if kind in ("onnx", "torchscript") and not (customModel.get("specFile") and Path(customModel["specFile"]).is_file()):
            raise InputError(f"A {kind} model needs its spec file (ROI, spacing, intensity, labels): choose a .json file.")

    @staticmethod
    def _customArguments(customModel: dict) -> list[str]:
        """``ptqseg build`` arguments for a custom model."""
        arguments = [f"--{customModel['kind']}", str(customModel["path"])]
        arguments += ["--spec", str(customModel["specFile"])] if customModel.get("specFile") else []
        arguments += ["--fold", *map(str, customModel["folds"])] if customModel.get("folds") else []
        return arguments + (["--mirror"] if customModel.get("mirror") else [])

    @staticmethod
    def _customRequestModel(customModel: dict):
        from engine_builder.model_source import CustomModel

        folds = tuple(map(str, customModel["folds"])) if customModel.get("folds") else None
        return CustomModel(customModel["kind"], customModel["path"], spec_file=customModel.get("specFile"), folds=folds,
                           mirror=bool(customModel.get("mirror")))

    @staticmethod
    def _checkWeights(spec, weightsPath) -> None:
        if weightsPath:
            if not Path(weightsPath).is_file():
                raise InputError(f"Weights file {weightsPath} not found: choose an existing .pt state-dict file.")
            return
        source = spec.weights
        if source.kind == "packaged":
            from engine_builder.weights import PACKAGED_WEIGHTS

            if not (PACKAGED_WEIGHTS / source.path).is_file():
                raise InputError(f"Model '{spec.name}': its weights ({source.path}) are missing from this installation; "
                                 "reinstall the extension, or pick \"Custom weights…\" and a weights file.")
        elif source.kind == "none":
            raise InputError(f"Model '{spec.name}' has no pretrained weights: pick \"Custom weights…\" and a weights file.")

    def _checkCalibration(self, calibrationFolder, useSceneVolumes: bool) -> None:
        if useSceneVolumes:
            if not self.sceneVolumes():
                raise InputError("No volume is loaded in the scene to calibrate on: load a few unlabeled scans, or choose a calibration folder.")
            return
        if not calibrationFolder or not str(calibrationFolder).strip():
            raise InputError("INT8 needs calibration data: choose a folder of unlabeled volumes, or tick \"use the volumes loaded in the scene\".")
        from engine_builder.sources import find_volumes

        try:
            candidates, skipped = find_volumes(calibrationFolder)
        except PTQError as exc:
            raise InputError(str(exc)) from None
        if not candidates:
            raise InputError(f"No volume found in calibration folder {calibrationFolder} ({len(skipped)} other files): "
                             "put NIfTI, NRRD or DICOM volumes in it.")

    def checkSegmentInputs(self, volumeNode, engine) -> list[str]:
        """Raise ``InputError`` when segmenting cannot work; return warnings (why the engine is stale) otherwise."""
        if volumeNode is None:
            raise InputError("Select an input volume.")
        if volumeNode.GetImageData() is None:
            raise InputError(f"Volume {volumeNode.GetName()} has no voxels.")
        if volumeNode.IsA("vtkMRMLLabelMapVolumeNode") or volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
            raise InputError(f"{volumeNode.GetName()} is not a scalar image volume: select a CT or MR scan.")
        if engine is None or engine == "":
            raise InputError("Build an engine first, or pick one from the list of built engines.")
        record = self.engineRecord(engine)
        if any("not installed" in reason for reason in record.staleReasons):
            raise InputError(f"This engine cannot run here: {'; '.join(record.staleReasons)}. Rebuild it.")
        return record.staleReasons

    def sceneVolumes(self) -> list:
        """Scalar image volumes in the scene (label maps left out)."""
        nodes = self.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        volumes = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
        return [node for node in volumes if not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetImageData() is not None]

    # ---------------------------------------------------------------------------------------------- building
    def buildEngine(self, modelName: str, calibrationFolder: str | Path | None = None, weightsPath: str | Path | None = None,
                    backend: str = AUTO_BACKEND, precision: str = "int8", patchesPerVolume: int = 8,
                    useSceneVolumes: bool = False, background: bool = False,
                    customModel: dict | None = None) -> EngineRecord | Job:
        """Calibrate and build (or reuse from the cache) an engine.

        Args:
            modelName: registry name of the architecture (with ``weightsPath`` for custom weights).
            calibrationFolder: folder of unlabeled volumes; ignored with ``useSceneVolumes``.
            backend: ``auto`` or a backend name; precision: ``int8`` (default), or ``fp32``, ...
            patchesPerVolume: calibration patches drawn from each volume.
            background: False builds in this process and returns the ``EngineRecord``; True starts ``ptqseg build``
                and returns its ``Job`` (then ``finishBuild(job)``).
            customModel: a user's own model instead of ``modelName`` (see ``checkBuildInputs``).
        """
        resolved = self.checkBuildInputs(modelName, weightsPath, calibrationFolder, useSceneVolumes, backend, precision,
                                         customModel=customModel)
        workDir = self._newWorkDir("build")
        try:
            calibration = self._writeSceneVolumes(workDir / "calibration") if useSceneVolumes else calibrationFolder
            model = self._customRequestModel(customModel) if customModel else modelName
            if not background:
                return self._buildInProcess(model, calibration, weightsPath, resolved, precision, patchesPerVolume)
            out = workDir / "engine"
            source = self._customArguments(customModel) if customModel else ["--model", modelName]
            arguments = ["build", *source, "--backend", resolved, "--precision", precision,
                         "--patches", str(int(patchesPerVolume)), "--out", str(out), "--cache", str(self.cacheRoot)]
            arguments += ["--calib", str(calibration)] if calibration and precision == "int8" else []
            arguments += ["--weights", str(weightsPath)] if weightsPath else []
            job = Job("build", PtqsegProcess(arguments, python=self.python).start(), workDir, out)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        finally:
            if not background:
                shutil.rmtree(workDir, ignore_errors=True)
        return job

    def _buildInProcess(self, modelName, calibration, weightsPath, backend, precision, patchesPerVolume) -> EngineRecord:
        from engine_builder.pipeline import BuildRequest, build_engine

        request = BuildRequest(model=modelName, calib=calibration if precision == "int8" else None, weights=weightsPath,
                               backend=backend, precision=precision, patches_per_volume=int(patchesPerVolume), progress=False)
        result = build_engine(request, cache_root=self.cacheRoot)
        return self.engineRecord(result.engine_dir, weightsPath)

    def finishBuild(self, job: Job) -> EngineRecord:
        """The engine a finished build job made (its copy in the engine cache); ``InputError`` when it failed or
        was cancelled. Temporary files go either way."""
        try:
            if job.process.status == "cancelled":
                removePartialEngines(job.outputPath.parent, job.process.pid)
                removePartialEngines(self.cacheRoot / "engines", job.process.pid)
                raise InputError("Build cancelled: no engine was written.")
            if job.process.status != "succeeded":
                raise InputError(f"Build failed: {job.process.errorMessage}")
            from engine_builder.artifact import read_manifest

            manifest = read_manifest(job.outputPath)
            engineDir = self.cacheRoot / "engines" / manifest["cache_key"]
            if not (engineDir / "manifest.json").is_file():  # keep it where the engine list finds it
                engineDir.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(job.outputPath), str(engineDir))
            return self.engineRecord(engineDir)
        finally:
            shutil.rmtree(job.workDir, ignore_errors=True)

    def _writeSceneVolumes(self, folder: Path) -> Path:
        """Write the scene's scalar volumes as NIfTI files into ``folder`` (the calibration folder of a build)."""
        from engine_builder.io import write_volume

        from .nodes import volumeFromNode

        folder.mkdir(parents=True, exist_ok=True)
        for index, node in enumerate(self.sceneVolumes()):
            write_volume(volumeFromNode(node), folder / f"{index:03d}_{_safeName(node.GetName())}.nii.gz", compress=False)
        return folder

    # -------------------------------------------------------------------------------------------- segmenting
    def segment(self, volumeNode, engine, segmentationNode=None) -> tuple[object, dict[str, float]]:
        """Segment ``volumeNode`` with ``engine`` (an ``EngineRecord`` or an engine directory) in this process.

        Returns (segmentation node, timings in ms per stage: preprocess, inference, argmax, inverse_resample from
        engine_builder, plus ``read_volume_node`` and ``create_segments`` on the Slicer side).
        """
        from engine_builder.inference import StageTimer, segment_volume

        from .nodes import segmentationFromLabels, volumeFromNode

        self.checkSegmentInputs(volumeNode, engine)
        record = self.engineRecord(engine)
        timer = StageTimer()
        with timer.stage("read_volume_node"):
            volume = volumeFromNode(volumeNode)
        network, spec = self._openEngine(record)
        result = segment_volume(volume, network, spec, timer.timings)
        with timer.stage("create_segments"):
            segmentationNode = segmentationFromLabels(self.scene, result.labels, spec.labels, volumeNode, segmentationNode)
        return segmentationNode, timer.timings

    def startSegment(self, volumeNode, engine) -> Job:
        """Start ``ptqseg segment`` on ``volumeNode`` in a child process; ``finishSegment(job)`` makes the node."""
        from engine_builder.inference import StageTimer
        from engine_builder.io import write_volume

        from .nodes import volumeFromNode

        self.checkSegmentInputs(volumeNode, engine)
        record = self.engineRecord(engine)
        workDir = self._newWorkDir("segment")
        timer = StageTimer()
        try:  # NRRD keeps the IJK-to-RAS matrix in full double precision (NIfTI would round it to float32)
            with timer.stage("write_input"):
                write_volume(volumeFromNode(volumeNode), workDir / "input.nrrd", compress=False)
            arguments = ["segment", "--engine", str(record.path), "--input", str(workDir / "input.nrrd"),
                         "--output", str(workDir / "labels.nrrd")]
            process = PtqsegProcess(arguments, python=self.python).start()
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return Job("segment", process, workDir, workDir / "labels.nrrd", volumeNode, record, timer.timings)

    def finishSegment(self, job: Job, segmentationNode=None) -> tuple[object, dict[str, float]]:
        """The segmentation node of a finished segment job, and the timings (ms) of every stage, both processes."""
        from engine_builder.inference import StageTimer
        from engine_builder.io import read_volume
        from engine_builder.spec import ModelSpec

        from .nodes import segmentationFromLabels

        try:
            if job.process.status == "cancelled":
                raise InputError("Segmentation cancelled.")
            if job.process.status != "succeeded":
                raise InputError(f"Segmentation failed: {job.process.errorMessage}")
            timer = StageTimer(dict(job.timings))
            timer.timings.update((job.process.result or {}).get("latency_ms", {}))
            with timer.stage("create_segments"):
                labels = read_volume(job.outputPath)
                spec = ModelSpec.from_dict(job.engine.manifest["spec"])
                segmentationNode = segmentationFromLabels(self.scene, labels, spec.labels, job.volumeNode, segmentationNode)
            return segmentationNode, timer.timings
        finally:
            shutil.rmtree(job.workDir, ignore_errors=True)

    def _openEngine(self, record: EngineRecord):
        key = str(record.path.resolve())
        if key not in self._openEngines:
            from engine_builder.pipeline import open_engine

            network, spec, _ = open_engine(record.path)
            self._openEngines = {key: (network, spec)}  # one engine in memory at a time
        return self._openEngines[key]

    # --------------------------------------------------------------------------------------------- engines
    def listEngines(self, weightsPaths: dict[str, str | Path] | None = None) -> list[EngineRecord]:
        """Engines built on this machine, newest first, each with the reasons it is stale (if any)."""
        return listEngines(self.engineFolders, weightsPaths)

    def engineRecord(self, engine, weightsPath: str | Path | None = None) -> EngineRecord:
        """``engine`` (a record or an engine directory) as a freshly checked ``EngineRecord``."""
        from engine_builder.artifact import read_manifest

        path = engine.path if isinstance(engine, EngineRecord) else Path(engine)
        try:
            manifest = read_manifest(path)
        except PTQError as exc:
            raise InputError(str(exc)) from None
        return EngineRecord(path, manifest, staleReasons(manifest, weightsPath))

    # --------------------------------------------------------------------------------------------- reports
    @staticmethod
    def engineSummary(record: EngineRecord) -> dict[str, str]:
        """What the panel shows about an engine: size vs FP32, what precision runs, agreement with FP32, staleness."""
        manifest = record.manifest
        sizes = manifest.get("sizes") or {}
        engineBytes, fp32Bytes = sizes.get("engine_bytes"), sizes.get("fp32_onnx_bytes")
        size = f"{engineBytes / 1e6:.2f} MB" if engineBytes else "unknown"
        if engineBytes and fp32Bytes:
            size += f" vs {fp32Bytes / 1e6:.2f} MB FP32 ({fp32Bytes / engineBytes:.1f}x smaller)"
        return {"engine": f"{record.model}, {manifest['backend_version']}",
                "size": size,
                "precision": describeRuntimePrecision(manifest),
                "agreement": describeAgreement(manifest.get("accuracy")),
                "stale": "; ".join(record.staleReasons)}

    @staticmethod
    def formatTimings(timings: dict[str, float]) -> str:
        """``total 1234 ms (preprocess 100, inference 900, ...)``."""
        stages = ", ".join(f"{name.replace('_', ' ')} {ms:.0f}" for name, ms in timings.items())
        return f"total {sum(timings.values()):.0f} ms ({stages})"

    def _newWorkDir(self, kind: str) -> Path:
        root = self.cacheRoot / "slicer-jobs"
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{kind}-{uuid.uuid4().hex[:8]}-", dir=root))


def describeRuntimePrecision(manifest: dict) -> str:
    """What really runs, from the compiled engine's own report: ``15 of 18 convolutions in int8, 3 in fp32``."""
    runs = (manifest.get("runs_as") or {}).get("convolutions_by_precision") or {}
    if not runs:
        return f"{manifest.get('precision')} (as built; the runtime reports no per-layer precision)"
    counts: dict[str, int] = {}
    for precision, count in runs.items():
        name = _PRECISION_NAMES.get(precision, precision)
        counts[name] = counts.get(name, 0) + int(count)
    total = sum(counts.values())
    parts = [f"{count} in {name}" for name, count in sorted(counts.items(), key=lambda item: -item[1])]
    return f"{total} convolutions: " + ", ".join(parts)


def describeAgreement(accuracy: dict | None) -> str:
    """The INT8-vs-FP32 agreement measured at build time, in words."""
    if not accuracy:
        return "not measured (no held-out calibration patch)"
    verdict = "" if accuracy.get("passed", True) else f", BELOW the {accuracy.get('min_agreement', 0.98):.0%} threshold"
    patches = accuracy.get("patches")
    return (f"{accuracy['argmax_agreement']:.2%} of voxels get the same label as FP32"
            + (f" on {patches} held-out patches" if patches else "") + verdict)


def _safeName(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "volume"
