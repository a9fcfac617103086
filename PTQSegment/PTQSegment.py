"""PTQSegment: build a real INT8 engine of a 3D segmentation network with one click, segment the loaded volume with
it, and see what it costs and what it changes (latency, size, precision that really runs, agreement with FP32).

The work is done by ``engine_builder`` (shipped inside this module's folder) in ``ptqseg`` child processes; the
Slicer-side helpers live in ``PTQSegmentLib`` (Logic, node conversion, background process, panel helpers,
dependencies). This file holds the Module, the parameter node, the Widget (wiring only) and the self-test.
"""

import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from PTQSegmentLib import logic as engineLogic
from PTQSegmentLib.logic import AUTO_BACKEND, CUSTOM_MODEL, CUSTOM_SOURCE_KINDS, PRECISIONS, chosenPath
from PTQSegmentLib.panel import JobRunner, reportFailures

#: Milliseconds between two polls of the background process.
POLL_INTERVAL_MS = 200
MODELS = tuple(engineLogic.PTQSegmentLogic.modelNames())
BACKENDS = tuple(engineLogic.PTQSegmentLogic.backendNames())


class PTQSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PTQ Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["PTQSegment developers"]
        self.parent.helpText = _("""
<p>Builds a real <b>INT8</b> engine of a 3D segmentation network by <b>post-training quantization</b> (PTQ) and
segments the selected volume with it.</p>
<p><b>What INT8 PTQ does:</b> the trained network's weights and activations are stored and computed as 8-bit
integers instead of 32-bit floats. A few unlabeled scans like yours (the <i>calibration</i> data) are run through the
network to measure each layer's value range; no labels and no retraining are needed. The engine is about 4x smaller
and, on CPUs with VNNI/AMX and on NVIDIA GPUs with TensorRT, several times faster.</p>
<p><b>Agreement:</b> at build time, held-out calibration patches are segmented by the INT8 engine and by the
original FP32 network; the figure is the fraction of voxels that get the same label. 99%+ means the INT8 engine
segments like the original; below the threshold the panel says so: rebuild with more calibration data, or keep
more layers in float (Advanced).</p>
<p><b>Backends:</b> <i>openvino</i> runs on any x86 CPU, INT8 convolutions quantized by NNCF (the panel lists how
many convolutions really run in int8 and how many stayed in float); <i>torch</i> builds float engines for comparison;
<i>tensorrt</i> needs an NVIDIA GPU and the TensorRT packages; <i>tensorrt-rtx</i> an RTX GPU (Ampere or newer).
<i>Auto</i> picks TensorRT, then TensorRT-RTX, then OpenVINO.</p>
<p>Demo and research use: not a medical device.
See <a href="https://github.com/PTQSegment/SlicerPTQSegment/blob/main/docs/slicer.md">the documentation</a>.</p>
""")
        self.parent.acknowledgementText = _("""
Built on MONAI, OpenVINO and NNCF, and on the shape of Slicer's scripted-module template and of the
MONAIAuto3DSeg and TotalSegmentator extensions.
""")


#: The "Custom model" kind that is weights for a registry architecture (the others are CUSTOM_SOURCE_KINDS).
WEIGHTS_KIND = "weights"


@parameterNodeWrapper
class PTQSegmentParameterNode:
    """Everything the panel shows, saved with the scene; every field but ``enginePath`` is bound to its widget by
    the wrapper (``SlicerParameterName`` in the .ui).

    modelName: a registry name, or "custom": then customKind says what the user's model is: "weights" (a state dict
    for customArchitecture, in weightsPath) or one of CUSTOM_SOURCE_KINDS (customModelPath, with specFile for ONNX and
    TorchScript), as ``ptqseg build --onnx/--torchscript/--bundle/--nnunet``.
    weightsPath / calibrationFolder: chosen files; an unset path is ``Path(".")`` (see ``chosenPath``).
    useSceneVolumes: calibrate on the scene's volumes instead of a folder.
    backend, precision: choices; which ones work here is greyed in by the capabilities answer.
    enginePath: the selected built engine (the engine list is data, so its combo box is wired by hand).
    statusText / latencyText: the last results, shown in labels.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelName: Annotated[str, Choice([*MODELS, CUSTOM_MODEL])] = "demo"
    customKind: Annotated[str, Choice([WEIGHTS_KIND, *CUSTOM_SOURCE_KINDS])] = WEIGHTS_KIND
    customArchitecture: Annotated[str, Choice(list(MODELS))] = "demo"
    weightsPath: pathlib.Path
    customModelPath: pathlib.Path
    specFile: pathlib.Path
    calibrationFolder: pathlib.Path
    useSceneVolumes: bool = False
    backend: Annotated[str, Choice(list(BACKENDS))] = AUTO_BACKEND
    precision: Annotated[str, Choice(list(PRECISIONS))] = "int8"
    patchesPerVolume: Annotated[int, WithinRange(1, 64)] = 8
    enginePath: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    statusText: str = ""
    latencyText: str = ""


class PTQSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to the Logic and the parameter node; no numerics here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.jobs = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._engines = []
        self._capabilitiesQuery = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PTQSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self._modelTooltip = self.ui.modelComboBox.toolTip  # the .ui's; a registry model's summary replaces it
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PTQSegmentLogic()
        self.jobs = JobRunner(self.logic, slicer.mrmlScene, self.onJobFinished)  # cancels its job when the scene closes

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.engineComboBox.connect("currentIndexChanged(int)", self.onEngineSelected)
        self.ui.buildButton.connect("clicked(bool)", self.onBuild)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.refreshEnginesButton.connect("clicked(bool)", self.refreshEngines)

        self.initializeParameterNode()
        self.refreshEngines()
        self.askCapabilities()

    def cleanup(self) -> None:
        self._timer.stop()
        if self.jobs is not None:
            self.jobs.close()
        if self._capabilitiesQuery is not None:
            self._capabilitiesQuery.cancel(0)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = self.logic.sceneVolumes()
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.updateGui()

    # ----------------------------------------------------------------------------------------------- the GUI
    def updateGui(self, caller=None, event=None) -> None:
        """What the wrapper does not bind: visibility, enabled states, the engine selection and its summary."""
        parameters = self._parameterNode
        if parameters is None:
            return
        custom = parameters.modelName == CUSTOM_MODEL
        weights = custom and parameters.customKind == WEIGHTS_KIND
        source = custom and not weights
        for widget, shown in ((self.ui.customKindLabel, custom), (self.ui.customKindComboBox, custom),
                              (self.ui.architectureLabel, weights), (self.ui.architectureComboBox, weights),
                              (self.ui.weightsLabel, weights), (self.ui.weightsPathLineEdit, weights),
                              (self.ui.customPathLabel, source), (self.ui.customPathLineEdit, source),
                              (self.ui.specLabel, source and parameters.customKind in ("onnx", "torchscript")),
                              (self.ui.specPathLineEdit, source and parameters.customKind in ("onnx", "torchscript"))):
            widget.visible = shown
        self.ui.modelComboBox.toolTip = self.logic.modelSummary(parameters.customArchitecture if custom
                                                                else parameters.modelName) or self._modelTooltip
        self.ui.calibrationPathLineEdit.enabled = not parameters.useSceneVolumes
        self.ui.buildButton.text = (_("Build INT8 engine") if parameters.precision == "int8"
                                    else _("Build {precision} engine").format(precision=parameters.precision))
        _selectData(self.ui.engineComboBox, parameters.enginePath)
        self.showEngineSummary()
        self.updateChoices()
        self.updateButtons()

    def updateChoices(self) -> None:
        """Grey out the backends that cannot run here and the precisions the chosen backend cannot build here,
        once the capabilities answer is known (the tooltip says why)."""
        capabilities = self.logic.knownCapabilities()
        if capabilities is None or self._parameterNode is None:
            return
        for index, name in enumerate(BACKENDS):
            info = capabilities["backends"].get(name, {"usable": True})
            _enableItem(self.ui.backendComboBox, index, info["usable"], info.get("reason") or "")
        buildable = self.logic.precisionsFor(self._parameterNode.backend, capabilities)
        for index, name in enumerate(PRECISIONS):
            _enableItem(self.ui.precisionComboBox, index, name in buildable, _("not built by this backend here"))

    def updateButtons(self) -> None:
        busy = self.jobs is not None and self.jobs.running
        self.ui.buildButton.enabled = not busy
        self.ui.segmentButton.enabled = not busy
        self.ui.cancelButton.enabled = busy
        self.ui.progressBar.visible = busy

    def onEngineSelected(self, index=None) -> None:
        if self._parameterNode is not None:
            self._parameterNode.enginePath = self.ui.engineComboBox.currentData or ""

    def refreshEngines(self) -> None:
        """List the built engines (stale ones marked) and keep the selection."""
        with reportFailures(_("Listing engines"), self.showStatus):
            parameters = self._parameterNode
            weights = chosenPath(parameters.weightsPath) if parameters else None
            self._engines = self.logic.listEngines({parameters.customArchitecture: weights} if weights else None)
            wasBlocked = self.ui.engineComboBox.blockSignals(True)
            self.ui.engineComboBox.clear()
            for record in self._engines:
                self.ui.engineComboBox.addItem(record.title, str(record.path))
            self.ui.engineComboBox.blockSignals(wasBlocked)
            if parameters is not None:
                if not parameters.enginePath and self._engines:
                    parameters.enginePath = str(self._engines[0].path)
                _selectData(self.ui.engineComboBox, parameters.enginePath)
            self.showEngineSummary()

    def selectedEngine(self):
        path = self.ui.engineComboBox.currentData
        return next((record for record in self._engines if str(record.path) == path), None)

    def showEngineSummary(self) -> None:
        record = self.selectedEngine()
        summary = self.logic.engineSummary(record) if record else {}
        self.ui.engineInfoLabel.text = (_("STALE: ") + summary["stale"]) if summary.get("stale") else (summary.get("engine", _("no engine built yet")))
        self.ui.sizeLabel.text = summary.get("size", "")
        self.ui.runsAsLabel.text = summary.get("precision", "")
        self.ui.agreementLabel.text = summary.get("agreement", "")

    # ------------------------------------------------------------------------------------------ capabilities
    def askCapabilities(self) -> None:
        """Ask the child process what works here, in the background (the answer is kept for the session); not
        before the packages are installed (the first Build or Segment asks, with consent)."""
        if self.logic.knownCapabilities() is not None or self._capabilitiesQuery is not None:
            self.updateChoices()
            return
        if self.logic.missingDependencies(AUTO_BACKEND):
            return
        with reportFailures(_("Checking the backends"), self.showStatus):
            self._capabilitiesQuery = self.logic.startCapabilitiesQuery()
            self._timer.start()

    def capabilitiesNow(self) -> dict:
        """The capabilities answer, waiting for the background query (or asking) when it is not there yet."""
        query, self._capabilitiesQuery = self._capabilitiesQuery, None
        with slicer.util.WaitCursor():
            if query is not None:
                query.wait(engineLogic.CAPABILITIES_TIMEOUT_S)
                capabilities = self.logic.acceptCapabilities(query)
            else:
                capabilities = self.logic.capabilities()
        self.onCapabilitiesKnown()
        return capabilities

    def onCapabilitiesKnown(self) -> None:
        self.updateChoices()
        self.refreshEngines()  # GPU staleness is judged once the GPU is known

    # ------------------------------------------------------------------------------------------------ actions
    def showStatus(self, text: str, details: str = "") -> None:
        """One line in the status label (through the parameter node when there is one) and the details below."""
        if self._parameterNode is not None:
            self._parameterNode.statusText = text
        else:
            self.ui.statusLabel.text = text
        if details:
            self.ui.detailsTextEdit.setPlainText(details)

    def ensureDependencies(self, backend: str) -> bool:
        """Ask before installing what ``backend`` needs (Auto: the CPU packages); False when the user declined."""
        missing = self.logic.missingDependencies(backend)
        if not missing:
            return True
        with slicer.util.WaitCursor():
            installed = self.logic.installDependencies(missing, slicer.util.confirmOkCancelDisplay)
        if not installed:
            self.showStatus(_("PTQSegment needs Python packages that are not installed; nothing was done."))
            return False
        if self._capabilitiesQuery is not None:  # started before the install: its answer is out of date
            self._capabilitiesQuery.cancel(0)
            self._capabilitiesQuery = None
        self.askCapabilities()
        return True

    def onBuild(self) -> None:
        with reportFailures(_("Build"), self.showStatus):
            parameters = self._parameterNode
            if not self.ensureDependencies(parameters.backend):
                return
            self.capabilitiesNow()  # buildEngine checks the choices against it
            custom = parameters.modelName == CUSTOM_MODEL
            weights = custom and parameters.customKind == WEIGHTS_KIND
            model = parameters.customArchitecture if custom else parameters.modelName
            job = self.logic.buildEngine(model, calibrationFolder=parameters.calibrationFolder,
                                         weightsPath=parameters.weightsPath if weights else None, backend=parameters.backend,
                                         precision=parameters.precision, patchesPerVolume=parameters.patchesPerVolume,
                                         useSceneVolumes=parameters.useSceneVolumes, background=True,
                                         customModel=customModelOf(parameters) if custom and not weights else None)
            self.startJob(job, _("Building the engine…"))

    def onSegment(self) -> None:
        with reportFailures(_("Segmentation"), self.showStatus):
            parameters, engine = self._parameterNode, self.selectedEngine()
            if not self.ensureDependencies(engine.backend if engine else "openvino"):
                return
            warnings = self.logic.checkSegmentInputs(parameters.inputVolume, engine)
            job = self.logic.startSegment(parameters.inputVolume, engine)
            self.startJob(job, _("Segmenting…") + ("  " + _("Engine is stale: ") + "; ".join(warnings) if warnings else ""),
                          parameters.outputSegmentation)

    def onCancel(self) -> None:
        with reportFailures(_("Cancel"), self.showStatus):
            if self.jobs.running:
                self.jobs.cancel()
                self.showStatus(_("Cancelling…"))

    def startJob(self, job, text: str, segmentationNode=None) -> None:
        self.jobs.start(job, segmentationNode)
        self.ui.detailsTextEdit.clear()
        self.ui.progressBar.setRange(0, 0)
        self.showStatus(text)
        self.updateButtons()
        self._timer.start()

    def onPoll(self) -> None:
        """Timer: follow the capabilities query and the running job; stop when neither runs."""
        with reportFailures(_("Background process"), self.showStatus):
            self.pollCapabilities()
            job = self.jobs.job
            for event in self.jobs.poll():
                if event.get("event") == "log":
                    self.ui.detailsTextEdit.appendPlainText(event["line"])
            if self.jobs.running:
                fraction = job.process.progress.fraction
                self.ui.progressBar.setRange(0, 0 if fraction is None else 100)
                self.ui.progressBar.value = int(100 * (fraction or 0))
                self.ui.progressBar.format = job.stageTitle + (" %p%" if fraction is not None else "")
        if not self.jobs.running and self._capabilitiesQuery is None:
            self._timer.stop()

    def pollCapabilities(self) -> None:
        query = self._capabilitiesQuery
        if query is None:
            return
        query.poll()
        if not query.running:
            self._capabilitiesQuery = None
            self.logic.acceptCapabilities(query)
            self.onCapabilitiesKnown()

    def onJobFinished(self, outcome) -> None:
        """The job ended (``PTQSegmentLib.panel.Outcome``): show it; keep its results in the parameter node (none
        after a scene close: the node was reset)."""
        parameters = self._parameterNode
        if parameters is not None and outcome.engine is not None:
            parameters.enginePath = str(outcome.engine.path)
        if parameters is not None and outcome.segmentation is not None:
            parameters.outputSegmentation = outcome.segmentation
            parameters.latencyText = self.logic.formatTimings(outcome.timings)
        self.showStatus(outcome.message, outcome.details)
        if outcome.kind == "build":
            self.refreshEngines()
        self.updateButtons()


def _selectData(combo, data) -> None:
    index = combo.findData(data)
    if index >= 0 and index != combo.currentIndex:
        combo.setCurrentIndex(index)


def _enableItem(combo, index: int, enabled: bool, reason: str) -> None:
    """Enable or grey out one item of a combo box (its model is a QStandardItemModel), with the reason as tooltip."""
    item = combo.model().item(index)
    if item is not None:
        item.setEnabled(enabled)
        item.setToolTip("" if enabled else reason)


class PTQSegmentLogic(ScriptedLoadableModuleLogic, engineLogic.PTQSegmentLogic):
    """The Logic of ``PTQSegmentLib.logic`` plus the module's parameter node. See there for the API."""

    def __init__(self, scene=None, cacheRoot=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        engineLogic.PTQSegmentLogic.__init__(self, scene=scene, cacheRoot=cacheRoot)

    def getParameterNode(self):
        return PTQSegmentParameterNode(super().getParameterNode())


class PTQSegmentTest(ScriptedLoadableModuleTest):
    """The full click path in a running Slicer (ctest from a Slicer build tree; see docs/slicer.md): what the
    slicer-core tests cannot see (Qt widgets, the parameter-node GUI binding, the PythonSlicer launcher, Slicer's own
    terminology list)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_PTQSegment_build_and_segment, self.test_PTQSegment_bad_input_keeps_panel_usable,
                     self.test_PTQSegment_scene_close_cancels_the_build):
            self.setUp()
            test()

    def _widget(self):
        slicer.util.selectModule("PTQSegment")
        return slicer.modules.ptqsegment.widgetRepresentation().self()

    def _waitForJob(self, widget, timeoutS=600):
        import time

        deadline = time.monotonic() + timeoutS
        while widget.jobs.running:
            slicer.app.processEvents()
            self.assertLess(time.monotonic(), deadline, "the background job did not finish in time")
            time.sleep(0.05)

    def _workFolder(self, widget) -> pathlib.Path:
        """Calibration phantoms in a fresh folder, and the widget's engine cache inside it."""
        import tempfile

        from engine_builder.io import Volume, write_volume
        from engine_builder.phantom import make_phantom

        work = pathlib.Path(tempfile.mkdtemp(prefix="ptqsegment-test-"))
        for seed in (11, 12):
            hu, _labels, affine = make_phantom(seed, shape=(96, 96, 48), spacing_mm=(4.0, 4.0, 6.0))
            write_volume(Volume(hu, affine), work / "calibration" / f"phantom_{seed}.nii.gz")
        widget.logic._cacheRoot = work / "cache"
        return work

    def test_PTQSegment_build_and_segment(self):
        from engine_builder.io import Volume, write_volume
        from engine_builder.phantom import make_phantom
        from PTQSegmentLib.nodes import segmentTerminology, terminologyProblem

        self.delayDisplay("Writing calibration phantoms and loading a volume")
        widget = self._widget()
        work = self._workFolder(widget)
        hu, _labels, affine = make_phantom(21, shape=(64, 60, 30), spacing_mm=(5.0, 5.5, 7.0))
        write_volume(Volume(hu, affine), work / "input.nii.gz")
        volumeNode = slicer.util.loadVolume(str(work / "input.nii.gz"))

        parameters = widget._parameterNode
        parameters.inputVolume = volumeNode
        parameters.modelName = "demo"
        parameters.calibrationFolder = work / "calibration"
        parameters.backend = "openvino"
        parameters.precision = "int8"
        parameters.patchesPerVolume = 2
        self.assertEqual(widget.ui.calibrationPathLineEdit.currentPath, str(work / "calibration"))  # bound by the wrapper

        self.delayDisplay("Building the INT8 engine on the CPU")
        widget.ui.buildButton.click()
        self.assertTrue(widget.ui.cancelButton.enabled, widget.ui.statusLabel.text)
        self._waitForJob(widget)
        self.assertTrue(parameters.enginePath, widget.ui.statusLabel.text)
        self.assertEqual(widget.ui.statusLabel.text, parameters.statusText)
        self.assertIn("int8", widget.ui.runsAsLabel.text)
        self.assertIn("get the FP32 label", widget.ui.agreementLabel.text)

        self.delayDisplay("Segmenting")
        widget.ui.segmentButton.click()
        self._waitForJob(widget)
        segmentation = parameters.outputSegmentation
        self.assertIsNotNone(segmentation, widget.ui.statusLabel.text)
        segments = segmentation.GetSegmentation()
        self.assertEqual(segments.GetNumberOfSegments(), 7)
        self.assertEqual(segments.GetNthSegment(0).GetName(), "liver")
        terminologies = slicer.modules.terminologies.logic()  # Slicer's own General Anatomy list, loaded at startup
        for index in range(segments.GetNumberOfSegments()):
            segment = segments.GetNthSegment(index)
            self.assertIsNone(terminologyProblem(terminologies, segmentTerminology(segment)), segment.GetName())
        self.assertIn("ms", widget.ui.latencyLabel.text)
        self.assertTrue(widget.ui.buildButton.enabled and widget.ui.segmentButton.enabled)
        self.delayDisplay("Test passed")

    def test_PTQSegment_bad_input_keeps_panel_usable(self):
        widget = self._widget()
        parameters = widget._parameterNode
        parameters.inputVolume = None
        widget.ui.segmentButton.click()
        self.assertIn("Select an input volume", widget.ui.statusLabel.text)
        parameters.calibrationFolder = pathlib.Path()
        parameters.useSceneVolumes = False
        parameters.backend = "openvino"
        parameters.precision = "int8"
        widget.ui.buildButton.click()
        self.assertIn("calibration", widget.ui.statusLabel.text)
        parameters.backend = "torch"
        widget.ui.buildButton.click()
        self.assertIn("not int8", widget.ui.statusLabel.text)
        self.assertTrue(widget.ui.buildButton.enabled and widget.ui.segmentButton.enabled)
        self.delayDisplay("Test passed")

    def test_PTQSegment_scene_close_cancels_the_build(self):
        import time

        from engine_builder.artifact import job_partials

        widget = self._widget()
        work = self._workFolder(widget)
        parameters = widget._parameterNode
        parameters.modelName = "demo"
        parameters.calibrationFolder = work / "calibration"
        parameters.backend = "openvino"
        parameters.precision = "int8"
        parameters.patchesPerVolume = 3
        widget.ui.buildButton.click()
        job = widget.jobs.job
        self.assertIsNotNone(job, widget.ui.statusLabel.text)
        deadline = time.monotonic() + 300
        while job.running and not job_partials(work / "cache" / "engines", job.process.token):
            slicer.app.processEvents()  # until the build has its temporary engine directory
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        slicer.mrmlScene.Clear()
        self._waitForJob(widget, timeoutS=60)
        self.assertEqual(job.process.status, "cancelled")
        self.assertEqual(job_partials(work / "cache" / "engines", job.process.token), [])
        self.assertTrue(widget.ui.buildButton.enabled and not widget.ui.cancelButton.enabled)
        self.delayDisplay("Test passed")


def customModelOf(parameters) -> dict:
    """The Logic's ``customModel`` for the panel's "Custom model" choice (kind, model file or folder, spec file)."""
    specFile = chosenPath(parameters.specFile)
    return {"kind": parameters.customKind, "path": str(chosenPath(parameters.customModelPath) or ""),
            "specFile": str(specFile) if specFile and parameters.customKind in ("onnx", "torchscript") else None}
