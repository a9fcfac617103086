"""The PTQSegment Logic: build an INT8 engine, segment a volume node with it, list built engines. No Qt.

Usable from Slicer's Python console (``PTQSegment.PTQSegmentLogic()`` adds the parameter node) and from plain
Python on the ``slicer-core`` wheel, where tests pass their own scene::

    logic = PTQSegmentLogic()
    engine = logic.buildEngine("demo", calibrationFolder="/data/unlabeled-ct")     # blocks until built
    segmentationNode, timings = logic.segment(volumeNode, engine)

Nothing heavy runs in the calling process: builds, segmentations and capability questions (which backends work
here, which GPU) run in a ``ptqseg`` child process; this process reads JSON, package metadata and volume nodes.
The blocking calls above wait for the child; the panel uses the background variants instead
(``buildEngine(..., background=True)``, ``startSegment``), whose ``Job`` is polled from a timer and turned into an
engine or a segmentation node by ``finishBuild`` / ``finishSegment``. Every choice in the panel that cannot work
is refused by ``checkBuildInputs`` / ``checkSegmentInputs`` as an ``InputError`` whose message is one readable line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from engine_builder.capabilities import AUTO_BACKEND, BACKEND_NAMES  # standard library only
from engine_builder.errors import PTQError
from engine_builder.timing import StageTimer

from .engine_catalog import EngineRecord, listEngines, staleReasons
from .nodes import TransformError, checkTransform
from .process import CANCEL_GRACE_S, PtqsegProcess, pythonExecutable

#: The model choice that means "a weights file for one of the registry's architectures".
CUSTOM_MODEL = "custom"
#: Kinds of a user's own model ("Custom model…"): file or folder, as ``ptqseg build --onnx/--torchscript/--bundle/--nnunet``.
CUSTOM_SOURCE_KINDS = ("onnx", "torchscript", "bundle", "nnunet")
#: Precisions the panel offers; which ones a backend builds here comes from ``capabilities()``.
PRECISIONS = ("int8", "fp32", "fp16", "bf16")
#: Seconds to wait for ``ptqseg capabilities`` (it imports torch, OpenVINO and TensorRT: seconds, more from a cold disk).
CAPABILITIES_TIMEOUT_S = 180.0
#: Stage names of engine_builder's progress events, as the panel says them.
STAGE_TITLES = {"calibration": "Calibrating", "export": "Exporting", "quantize": "Quantizing (INT8)", "compile": "Compiling",
                "estimate": "Checking INT8 on held-out volumes", "held-out volumes": "Checking INT8 on held-out volumes",
                "accuracy_control": "Keeping harmful layers in float", "inference": "Segmenting",
                "verify": "Checking this scan against FP32", "starting": "Starting"}
#: Windows of each scan the panel checks against the FP32 reference (``ptqseg segment --verify``).
DEFAULT_VERIFY_WINDOWS = 4
_PRECISION_NAMES = {"u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16", "i32": "int32"}

#: ``ptqseg capabilities`` answers, per interpreter, for this session (Slicer's process); cleared after an install.
_SESSION_CAPABILITIES: dict[str, dict] = {}


class InputError(PTQError):
    """A choice in the panel that cannot work; the message says what to change."""


@dataclass
class Job:
    """A build or a segmentation running in a ``ptqseg`` child process.

    Attributes:
        kind: ``build`` or ``segment``.
        process: the child; ``poll()`` it from a timer.
        workDir: temporary files of this job (scene volumes for calibration, the input and output volumes),
            removed when the job is finished or discarded.
        outputPath: the label file a segment job writes.
        volumeNode, engine: what a segment job segments, and with which engine.
        timings: milliseconds per stage spent on the Slicer side so far.
        verification: a finished segment job's per-scan check (``ptqseg segment --verify``), None without one.
    """

    kind: str
    process: PtqsegProcess
    workDir: Path
    outputPath: Path | None = None
    volumeNode: object = None
    engine: EngineRecord | None = None
    timings: dict[str, float] = field(default_factory=dict)
    verification: dict | None = None

    def poll(self) -> list[dict]:
        return self.process.poll()

    def cancel(self, grace_s: float = CANCEL_GRACE_S) -> None:
        """Stop the child's whole process tree (see ``PtqsegProcess.cancel``)."""
        self.process.cancel(grace_s)

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
        ``python`` is the interpreter (or launcher) of the child processes (default: ``PythonSlicer`` in Slicer)."""
        self._scene = scene
        self._cacheRoot = Path(cacheRoot) if cacheRoot else None
        self.python = python

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
        """Where built engines are listed from: the engine cache every ``ptqseg build`` writes into."""
        return [self.cacheRoot / "engines"]

    @staticmethod
    def modelNames() -> list[str]:
        """Registry model names (the panel adds "custom": your own weights for one of them)."""
        from engine_builder.models import registry

        return sorted(registry())

    @staticmethod
    def modelSummary(name: str) -> str:
        """A registry model in a few lines for the panel: description, input, weights, label set ("" for "custom")."""
        from engine_builder.describe import describe_model
        from engine_builder.models import registry

        spec = registry().get(name)
        return describe_model(spec) if spec is not None else ""

    @staticmethod
    def backendNames() -> list[str]:
        """``auto`` followed by every backend engine_builder has; which of them work here: ``capabilities()``."""
        return [AUTO_BACKEND, *BACKEND_NAMES]

    # ------------------------------------------------------------------------------------------ capabilities
    def capabilities(self, refresh: bool = False) -> dict:
        """What works here (``engine_builder.capabilities.probe``), asked once per session through a child process.

        Blocks until the child answers; the panel starts ``startCapabilitiesQuery`` instead and gives its process to
        ``acceptCapabilities``. ``refresh`` asks again (after installing packages the answer changes).
        """
        known = None if refresh else self.knownCapabilities()
        if known is not None:
            return known
        process = self.startCapabilitiesQuery()
        try:
            process.wait(CAPABILITIES_TIMEOUT_S)
        except TimeoutError:
            process.cancel(0)
            raise InputError("Checking which backends work here took too long; see the Python console.") from None
        return self.acceptCapabilities(process)

    def startCapabilitiesQuery(self) -> PtqsegProcess:
        """Start ``ptqseg capabilities`` in a child process; ``acceptCapabilities(process)`` once it ended."""
        return PtqsegProcess(["capabilities", "--json"], python=self.python).start()

    def acceptCapabilities(self, process: PtqsegProcess) -> dict:
        """The answer of a finished capabilities query, kept for the session; ``InputError`` when it failed."""
        answer = (process.result or {}).get("capabilities")
        if process.status != "succeeded" or not isinstance(answer, dict):
            raise InputError(f"Could not check which backends work here: {process.errorMessage or process.status}")
        _SESSION_CAPABILITIES[self._interpreter] = answer
        return answer

    def knownCapabilities(self) -> dict | None:
        """The session's capabilities answer when one was received, without asking (None: not known yet)."""
        return _SESSION_CAPABILITIES.get(self._interpreter)

    def forgetCapabilities(self) -> None:
        """Drop the session's answer: the next ``capabilities()`` asks again (packages were installed)."""
        _SESSION_CAPABILITIES.pop(self._interpreter, None)

    @property
    def _interpreter(self) -> str:
        return self.python or pythonExecutable()

    def precisionsFor(self, backend: str, capabilities: dict) -> list[str]:
        """The precisions ``backend`` (or ``auto``) builds here, per ``capabilities``."""
        info = capabilities["backends"].get(self.resolveBackend(backend, capabilities)) or {}
        return list(info.get("precisions") or [])

    # ------------------------------------------------------------------------------------------ dependencies
    @staticmethod
    def missingDependencies(backend: str = "openvino") -> list:
        from .dependency_handler import missingRequirements

        return missingRequirements(backend)

    def installDependencies(self, missing: list, confirm) -> bool:
        """Install ``missing`` (from ``missingDependencies``) once ``confirm(description)`` returns True; the
        session's capabilities answer is dropped, since what works here has changed."""
        from .dependency_handler import installRequirements

        installed = installRequirements(missing, confirm)
        if installed and missing:
            self.forgetCapabilities()
        return installed

    # ------------------------------------------------------------------------------------------------ checks
    @staticmethod
    def resolveBackend(choice: str, capabilities: dict) -> str:
        """The backend ``choice`` means here: itself, or for ``auto`` what ``capabilities`` chose (TensorRT when it
        works here, else TensorRT-RTX, else OpenVINO INT8 on the CPU)."""
        return capabilities["auto_backend"] if choice == AUTO_BACKEND else choice

    def checkBuildInputs(self, modelName: str, weightsPath: str | Path | None = None, calibrationFolder: str | Path | None = None,
                         useSceneVolumes: bool = False, backend: str = AUTO_BACKEND, precision: str = "int8",
                         capabilities: dict | None = None, customModel: dict | None = None) -> str:
        """Raise ``InputError`` for a build that cannot work; return the backend it will use.

        ``capabilities`` defaults to ``capabilities()`` (asked through a child process once per session).
        ``customModel``: a user's own model instead of ``modelName``, ``{"kind": "onnx"|"torchscript"|"bundle"|"nnunet",
        "path": file or folder, "specFile": spec file (ONNX, TorchScript), "folds": ["0", ...] (nnU-Net)}``.
        """
        capabilities = self.capabilities() if capabilities is None else capabilities
        resolved = self.resolveBackend(backend, capabilities)
        self._checkBackend(resolved, precision, capabilities)
        if customModel is not None:
            self._checkCustomModel(customModel)
            if resolved == "torch" and customModel["kind"] in ("onnx", "torchscript"):
                raise InputError("The torch backend runs only networks PTQSegment knows: choose openvino for an ONNX or "
                                 "TorchScript model.")
        else:
            self._checkWeights(self._spec(modelName), chosenPath(weightsPath))
        if precision == "int8":
            self._checkCalibration(chosenPath(calibrationFolder), useSceneVolumes)
        return resolved

    @staticmethod
    def _spec(modelName: str):
        from engine_builder.models import get_spec

        if not modelName or modelName == CUSTOM_MODEL:
            raise InputError("Choose the architecture your custom weights belong to.")
        try:
            return get_spec(modelName)
        except PTQError as exc:
            raise InputError(f"Model: {exc}.") from None

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
    def _checkBackend(backend: str, precision: str, capabilities: dict) -> None:
        info = capabilities["backends"].get(backend)
        if info is None:
            raise InputError(f"Unknown backend '{backend}': choose one of {', '.join(BACKEND_NAMES)}.")
        if not info["usable"]:
            raise InputError(f"Backend {backend} cannot run here: {info['reason']}. Choose Auto or openvino (CPU).")
        if precision not in info["precisions"]:
            raise InputError(f"Backend {backend} builds {', '.join(info['precisions'])} here, not {precision}: "
                             "choose another precision (Advanced).")

    @staticmethod
    def _checkWeights(spec, weightsPath: Path | None) -> None:
        if weightsPath is not None:
            if not weightsPath.is_file():
                raise InputError(f"Weights file {weightsPath} not found: choose an existing .pt state-dict file.")
            return
        source = spec.weights
        if source.kind == "packaged":
            from engine_builder.models import PACKAGED_WEIGHTS

            if not (PACKAGED_WEIGHTS / source.path).is_file():
                raise InputError(f"Model '{spec.name}': its weights ({source.path}) are missing from this installation; "
                                 "reinstall the extension, or choose the model \"custom\" and a weights file.")
        elif source.kind == "none":
            raise InputError(f"Model '{spec.name}' has no pretrained weights: choose the model \"custom\" and a weights file.")

    def _checkCalibration(self, calibrationFolder: Path | None, useSceneVolumes: bool) -> None:
        if useSceneVolumes:
            if not self.sceneVolumes():
                raise InputError("No volume is loaded in the scene to calibrate on: load a few unlabeled scans, or choose a calibration folder.")
            return
        if calibrationFolder is None:
            raise InputError("INT8 needs calibration data: choose a folder of unlabeled volumes, or tick \"use the volumes loaded in the scene\".")
        checkCalibrationFolder(calibrationFolder)

    def checkSegmentInputs(self, volumeNode, engine) -> list[str]:
        """Raise ``InputError`` when segmenting cannot work; return warnings (why the engine is stale) otherwise."""
        if volumeNode is None:
            raise InputError("Select an input volume.")
        if volumeNode.GetImageData() is None:
            raise InputError(f"Volume {volumeNode.GetName()} has no voxels.")
        if volumeNode.IsA("vtkMRMLLabelMapVolumeNode") or volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
            raise InputError(f"{volumeNode.GetName()} is not a scalar image volume: select a CT or MR scan.")
        try:
            checkTransform(volumeNode)
        except TransformError as exc:
            raise InputError(str(exc)) from None
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
        """Calibrate and build (or reuse from the cache) an engine, in a ``ptqseg build`` child process.

        Args:
            modelName: registry name of the architecture (with ``weightsPath`` for custom weights).
            calibrationFolder: folder of unlabeled volumes; ignored with ``useSceneVolumes``.
            backend: ``auto`` or a backend name; precision: ``int8`` (default), or ``fp32``, ...
            patchesPerVolume: calibration patches drawn from each volume.
            background: False waits for the child and returns the ``EngineRecord``; True returns the running ``Job``
                at once (then ``finishBuild(job)``).
            customModel: a user's own model instead of ``modelName`` (see ``checkBuildInputs``).
        """
        weightsPath, calibrationFolder = chosenPath(weightsPath), chosenPath(calibrationFolder)
        resolved = self.checkBuildInputs(modelName, weightsPath, calibrationFolder, useSceneVolumes, backend, precision,
                                         customModel=customModel)
        workDir = self._newWorkDir("build")
        try:
            calibration = self._writeSceneVolumes(workDir / "calibration") if useSceneVolumes else calibrationFolder
            source = self._customArguments(customModel) if customModel else ["--model", modelName]
            arguments = ["build", *source, "--backend", resolved, "--precision", precision,
                         "--patches", str(int(patchesPerVolume)), "--device", deviceFor(resolved, precision),
                         "--cache", str(self.cacheRoot)]  # the engine is written once, into the cache
            arguments += ["--calib", str(calibration)] if calibration and precision == "int8" else []
            arguments += ["--weights", str(weightsPath)] if weightsPath else []
            job = Job("build", PtqsegProcess(arguments, python=self.python).start(), workDir)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return job if background else self.finishBuild(self._waitFor(job))

    def finishBuild(self, job: Job) -> EngineRecord:
        """The engine a finished build job made (in the engine cache); ``InputError`` when it failed or was
        cancelled. The job's temporary files go either way."""
        try:
            if job.process.status == "cancelled":
                raise InputError("Build cancelled: no engine was written.")
            if job.process.status != "succeeded":
                raise InputError(f"Build failed: {job.process.errorMessage}")
            return self.engineRecord(Path(job.process.result["engine_dir"]))
        finally:
            self.discardJob(job)

    def discardJob(self, job: Job) -> None:
        """Remove what a finished job leaves behind: its work folder and, unless it succeeded, the temporary
        engine directories its build left in the cache (found by the job's token, since a killed build cannot
        remove them itself)."""
        from engine_builder.artifact import job_partials

        if job.process.status != "succeeded":
            for folder in self.engineFolders:
                for partial in job_partials(folder, job.process.token):
                    shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(job.workDir, ignore_errors=True)

    def _writeSceneVolumes(self, folder: Path) -> Path:
        """Write the scene's scalar volumes as NIfTI files into ``folder`` (the calibration folder of a build)."""
        from engine_builder.io import write_volume

        from .nodes import volumeFromNode

        try:
            folder.mkdir(parents=True, exist_ok=True)
            for index, node in enumerate(self.sceneVolumes()):
                write_volume(volumeFromNode(node), folder / f"{index:03d}_{_safeName(node.GetName())}.nii.gz", compress=False)
        except (OSError, PTQError) as exc:
            raise InputError(f"Cannot write the scene's volumes for calibration into {folder}: "
                             f"{getattr(exc, 'strerror', None) or exc}. Check the cache folder ($PTQSEG_CACHE).") from None
        return folder

    # -------------------------------------------------------------------------------------------- segmenting
    def segment(self, volumeNode, engine, segmentationNode=None) -> tuple[object, dict[str, float]]:
        """Segment ``volumeNode`` with ``engine`` (an ``EngineRecord`` or an engine directory) in a ``ptqseg
        segment`` child process, waiting for it. Returns what ``finishSegment`` returns."""
        return self.finishSegment(self._waitFor(self.startSegment(volumeNode, engine)), segmentationNode)

    def startSegment(self, volumeNode, engine, verifyWindows: int = DEFAULT_VERIFY_WINDOWS) -> Job:
        """Start ``ptqseg segment`` on ``volumeNode`` in a child process; ``finishSegment(job)`` makes the node.

        ``verifyWindows``: for a quantized engine, also run that many windows of this scan through the engine's FP32
        reference and report the agreement (``job.verification``); 0: no check."""
        from engine_builder.io import write_volume

        from .nodes import volumeFromNode

        self.checkSegmentInputs(volumeNode, engine)
        record = self.engineRecord(engine)
        workDir = self._newWorkDir("segment")
        timings: dict[str, float] = {}
        try:  # NRRD keeps the IJK-to-RAS matrix in full double precision (NIfTI would round it to float32)
            with StageTimer(timings).stage("write_input"):
                write_volume(volumeFromNode(volumeNode), workDir / "input.nrrd", compress=False)
            arguments = ["segment", "--engine", str(record.path), "--input", str(workDir / "input.nrrd"),
                         "--output", str(workDir / "labels.nrrd"), "--device", deviceFor(record.backend, record.precision)]
            if verifyWindows > 0 and record.precision == "int8":
                arguments += ["--verify", str(int(verifyWindows))]
            process = PtqsegProcess(arguments, python=self.python).start()
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return Job("segment", process, workDir, workDir / "labels.nrrd", volumeNode, record, timings)

    def finishSegment(self, job: Job, segmentationNode=None) -> tuple[object, dict[str, float]]:
        """The segmentation node of a finished segment job, and the timings (ms) of every stage in both processes:
        ``write_input`` and ``create_segments`` here, the child's ``read``, ``preprocess``, ``inference``, ... ."""
        from engine_builder.io import read_volume
        from engine_builder.spec import ModelSpec

        from .nodes import segmentationFromLabels

        try:
            if job.process.status == "cancelled":
                raise InputError("Segmentation cancelled.")
            if job.process.status != "succeeded":
                raise InputError(f"Segmentation failed: {job.process.errorMessage}")
            if job.volumeNode.GetScene() is not self.scene:
                raise InputError(f"{job.volumeNode.GetName()} is no longer in the scene: nothing was added.")
            timings = {**job.timings, **((job.process.result or {}).get("latency_ms") or {})}
            job.verification = (job.process.result or {}).get("verification")
            with StageTimer(timings).stage("create_segments"):
                labels = read_volume(job.outputPath)
                spec = ModelSpec.from_dict(job.engine.manifest["spec"])
                segmentationNode = segmentationFromLabels(self.scene, labels, spec.labels, job.volumeNode, segmentationNode)
            return segmentationNode, timings
        finally:
            self.discardJob(job)

    def _waitFor(self, job: Job) -> Job:
        """Wait for ``job`` (the blocking calls); a failure while waiting stops the child."""
        try:
            job.wait()
        except BaseException:
            job.cancel(0)
            job.wait(60)
            self.discardJob(job)
            raise
        return job

    # --------------------------------------------------------------------------------------------- engines
    def listEngines(self, weightsPaths: dict[str, str | Path] | None = None) -> list[EngineRecord]:
        """Engines built on this machine, newest first, each with the reasons it is stale (if any). Reads JSON and
        package metadata only; the GPU comparison uses the session's capabilities once they are known."""
        return listEngines(self.engineFolders, weightsPaths, self.knownCapabilities())

    def engineRecord(self, engine, weightsPath: str | Path | None = None) -> EngineRecord:
        """``engine`` (a record or an engine directory) as a freshly checked ``EngineRecord``."""
        from engine_builder.artifact import read_manifest

        path = engine.path if isinstance(engine, EngineRecord) else Path(engine)
        try:
            manifest = read_manifest(path)
        except PTQError as exc:
            raise InputError(str(exc)) from None
        return EngineRecord(path, manifest, staleReasons(manifest, weightsPath, capabilities=self.knownCapabilities()))

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
        try:
            root.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=f"{kind}-{uuid.uuid4().hex[:8]}-", dir=root))
        except OSError as exc:
            raise InputError(f"Cannot create a work folder in {root}: {exc.strerror}. Set $PTQSEG_CACHE to a writable folder.") from None


def chosenPath(value: str | os.PathLike | None) -> Path | None:
    """A path the user chose, or None for "none chosen": the parameter node stores an unset path as ``Path(".")``
    (``pathlib.Path("")``), and the path widgets give absolute paths, so "." and "" both mean unset."""
    if value is None or str(value).strip() in ("", "."):
        return None
    return Path(value)


def deviceFor(backend: str, precision: str) -> str:
    """``--device`` of a build or segmentation: torch fp16 engines run only on CUDA; everything else is given
    ``cpu`` (TensorRT engines run on the GPU whatever this says)."""
    return "cuda" if backend == "torch" and precision == "fp16" else "cpu"


def checkCalibrationFolder(folder: Path) -> None:
    """Raise ``InputError`` unless ``folder`` holds at least one volume file or DICOM series (no runtime import)."""
    from engine_builder.sources import find_volumes

    try:
        sources, skipped = find_volumes(folder)
    except PTQError as exc:
        raise InputError(str(exc)) from None
    if not sources:
        raise InputError(f"No volume found in calibration folder {folder} ({len(skipped)} other files): "
                         "put NIfTI, NRRD or DICOM volumes in it.")


def describeRuntimePrecision(manifest: dict) -> str:
    """What really runs, from the compiled engine's own report: ``18 convolutions: 15 in int8, 3 in fp32; 54% of
    convolution time in int8`` (the time share where the build profiled one window)."""
    runs = (manifest.get("runs_as") or {}).get("convolutions_by_precision") or {}
    if not runs:
        return f"{manifest.get('precision')} (as built; the runtime reports no per-layer precision)"
    counts: dict[str, int] = {}
    for precision, count in runs.items():
        name = _PRECISION_NAMES.get(precision, precision)
        counts[name] = counts.get(name, 0) + int(count)
    total = sum(counts.values())
    parts = [f"{count} in {name}" for name, count in sorted(counts.items(), key=lambda item: -item[1])]
    text = f"{total} convolutions: " + ", ".join(parts)
    share = (manifest.get("runs_as") or {}).get("int8_conv_time_share")
    if manifest.get("precision") == "int8" and isinstance(share, (int, float)) and not isinstance(share, bool):
        text += f"; {share:.0%} of convolution time in int8"
    return text


def describeAgreement(accuracy: dict | None) -> str:
    """The build-time INT8-vs-FP32 estimate on held-out calibration volumes, in words (or why there is none)."""
    from engine_builder.describe import describe_accuracy

    return describe_accuracy(accuracy)


def _safeName(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60] or "volume"
