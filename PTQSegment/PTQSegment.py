"""PTQSegment: build a real INT8 engine of a 3D segmentation network with one click, segment the loaded volume with
it, and see what it costs and what it changes (latency, size, precision that really runs, agreement with FP32).

The work is done by ``engine_builder`` (shipped inside this module's folder); the Slicer-side helpers live in
``PTQSegmentLib`` (Logic, node conversion, background process, dependencies). This file holds the Module, the
parameter node, the Widget (wiring only) and the self-test.
"""

import logging
import os
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from PTQSegmentLib import logic as engineLogic
from PTQSegmentLib.logic import AUTO_BACKEND, CUSTOM_MODEL, InputError

#: Milliseconds between two polls of the background process.
POLL_INTERVAL_MS = 200
PRECISIONS = ("int8", "fp32", "bf16", "fp16")


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


@parameterNodeWrapper
class PTQSegmentParameterNode:
    """Everything the panel shows, saved with the scene.

    modelName: a registry name, or "custom" (then customArchitecture + weightsPath).
    calibrationFolder / useSceneVolumes: the calibration data.
    enginePath: the selected built engine; latencyText / statusText: the last results.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelName: str = "demo"
    customArchitecture: str = "demo"
    weightsPath: str = ""
    calibrationFolder: str = ""
    useSceneVolumes: bool = False
    backend: str = AUTO_BACKEND
    precision: str = "int8"
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
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._engines = []
        self._updatingGui = False
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollJob)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PTQSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PTQSegmentLogic()

        models = self.logic.modelNames()
        for name in models:
            self.ui.modelComboBox.addItem(name, name)
            self.ui.architectureComboBox.addItem(name, name)
        self.ui.modelComboBox.addItem(_("Custom weights…"), CUSTOM_MODEL)
        for name in self.logic.backendNames():
            self.ui.backendComboBox.addItem(_("Auto") if name == AUTO_BACKEND else name, name)
        for name in PRECISIONS:
            self.ui.precisionComboBox.addItem(name, name)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for combo in (self.ui.modelComboBox, self.ui.architectureComboBox, self.ui.backendComboBox,
                      self.ui.precisionComboBox, self.ui.engineComboBox):
            combo.connect("currentIndexChanged(int)", self.updateParameterNodeFromGui)
        for pathEdit in (self.ui.weightsPathLineEdit, self.ui.calibrationPathLineEdit):
            pathEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGui)
        self.ui.buildButton.connect("clicked(bool)", self.onBuild)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.refreshEnginesButton.connect("clicked(bool)", self.refreshEngines)

        self.initializeParameterNode()
        self.refreshEngines()

    def cleanup(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
            self.updateGuiFromParameterNode()

    # ---------------------------------------------------------------------------------- parameter node <-> GUI
    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        """The widgets the wrapper does not connect (combo boxes with data, path edits) and the button states."""
        parameters = self._parameterNode
        if parameters is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            _selectData(self.ui.modelComboBox, parameters.modelName)
            _selectData(self.ui.architectureComboBox, parameters.customArchitecture)
            _selectData(self.ui.backendComboBox, parameters.backend)
            _selectData(self.ui.precisionComboBox, parameters.precision)
            _selectData(self.ui.engineComboBox, parameters.enginePath)
            self.ui.weightsPathLineEdit.currentPath = parameters.weightsPath
            self.ui.calibrationPathLineEdit.currentPath = parameters.calibrationFolder
            custom = parameters.modelName == CUSTOM_MODEL
            for widget in (self.ui.architectureLabel, self.ui.architectureComboBox, self.ui.weightsLabel, self.ui.weightsPathLineEdit):
                widget.visible = custom
            self.ui.calibrationPathLineEdit.enabled = not parameters.useSceneVolumes
            self.ui.buildButton.text = _("Build INT8 engine") if parameters.precision == "int8" else _("Build {precision} engine").format(precision=parameters.precision)
            self.ui.statusLabel.text = parameters.statusText
            self.ui.latencyLabel.text = parameters.latencyText
            self.showEngineSummary()
            self.updateButtons()
        finally:
            self._updatingGui = False

    def updateParameterNodeFromGui(self, *args) -> None:
        parameters = self._parameterNode
        if parameters is None or self._updatingGui:
            return
        with slicer.util.NodeModify(parameters):
            parameters.modelName = self.ui.modelComboBox.currentData or ""
            parameters.customArchitecture = self.ui.architectureComboBox.currentData or ""
            parameters.backend = self.ui.backendComboBox.currentData or AUTO_BACKEND
            parameters.precision = self.ui.precisionComboBox.currentData or "int8"
            parameters.enginePath = self.ui.engineComboBox.currentData or ""
            parameters.weightsPath = self.ui.weightsPathLineEdit.currentPath
            parameters.calibrationFolder = self.ui.calibrationPathLineEdit.currentPath

    def updateButtons(self) -> None:
        busy = self._job is not None and self._job.running
        self.ui.buildButton.enabled = not busy
        self.ui.segmentButton.enabled = not busy
        self.ui.cancelButton.enabled = busy
        self.ui.progressBar.visible = busy

    def refreshEngines(self) -> None:
        """List the built engines (stale ones marked) and keep the selection."""
        parameters = self._parameterNode
        weights = {parameters.customArchitecture: parameters.weightsPath} if parameters and parameters.weightsPath else None
        try:
            self._engines = self.logic.listEngines(weights)
        except Exception as exc:  # dependencies not installed yet: the list stays empty until they are
            logging.info(f"PTQSegment: engines not listed ({exc})")
            self._engines = []
        wasUpdating, self._updatingGui = self._updatingGui, True
        self.ui.engineComboBox.clear()
        for record in self._engines:
            self.ui.engineComboBox.addItem(record.title, str(record.path))
        self._updatingGui = wasUpdating
        if parameters is not None:
            _selectData(self.ui.engineComboBox, parameters.enginePath)
            self.updateParameterNodeFromGui()
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

    # ------------------------------------------------------------------------------------------------ actions
    def showStatus(self, text: str, details: str = "") -> None:
        self._parameterNode.statusText = text
        self.ui.statusLabel.text = text
        if details:
            self.ui.detailsTextEdit.setPlainText(details)

    def ensureDependencies(self, backend: str) -> bool:
        """Ask before installing what ``backend`` needs (Auto: the CPU packages); False when the user declined."""
        missing = self.logic.missingDependencies("openvino" if backend == AUTO_BACKEND else backend)
        if not missing:
            return True
        with slicer.util.tryWithErrorDisplay(_("Installing Python packages failed."), waitCursor=True):
            installed = self.logic.installDependencies(missing, slicer.util.confirmOkCancelDisplay)
            if installed:
                return True
        self.showStatus(_("PTQSegment needs Python packages that are not installed; nothing was done."))
        return False

    def onBuild(self) -> None:
        parameters = self._parameterNode
        custom = parameters.modelName == CUSTOM_MODEL
        model = parameters.customArchitecture if custom else parameters.modelName
        if not self.ensureDependencies(parameters.backend):
            return
        try:
            self._job = self.logic.buildEngine(model, calibrationFolder=parameters.calibrationFolder or None,
                                               weightsPath=(parameters.weightsPath or None) if custom else None,
                                               backend=parameters.backend, precision=parameters.precision,
                                               patchesPerVolume=parameters.patchesPerVolume,
                                               useSceneVolumes=parameters.useSceneVolumes, background=True)
        except InputError as exc:
            self.showStatus(str(exc))
            return
        self.startPolling(_("Building the engine…"))

    def onSegment(self) -> None:
        parameters = self._parameterNode
        if not self.ensureDependencies("openvino"):
            return
        try:
            warnings = self.logic.checkSegmentInputs(parameters.inputVolume, self.selectedEngine())
            self._job = self.logic.startSegment(parameters.inputVolume, self.selectedEngine())
        except InputError as exc:
            self.showStatus(str(exc))
            return
        self.startPolling(_("Segmenting…") + ("  " + _("Engine is stale: ") + "; ".join(warnings) if warnings else ""))

    def onCancel(self) -> None:
        if self._job is not None and self._job.running:
            self._job.cancel()
            self.showStatus(_("Cancelling…"))

    def startPolling(self, text: str) -> None:
        self.ui.detailsTextEdit.clear()
        self.ui.progressBar.setRange(0, 0)
        self.showStatus(text)
        self.updateButtons()
        self._timer.start()

    def onPollJob(self) -> None:
        job = self._job
        for event in job.poll():
            if event.get("event") == "log":
                self.ui.detailsTextEdit.appendPlainText(event["line"])
        fraction = job.process.progress.fraction
        self.ui.progressBar.setRange(0, 0 if fraction is None else 100)
        self.ui.progressBar.value = int(100 * (fraction or 0))
        self.ui.progressBar.format = job.stageTitle + (" %p%" if fraction is not None else "")
        if not job.running:
            self._timer.stop()
            self.finishJob(job)

    def finishJob(self, job) -> None:
        parameters = self._parameterNode
        try:
            if job.kind == "build":
                record = self.logic.finishBuild(job)
                parameters.enginePath = str(record.path)
                self.refreshEngines()
                self.showStatus(_("Engine ready: {title}").format(title=record.title), job.process.details)
            else:
                segmentation, timings = self.logic.finishSegment(job, parameters.outputSegmentation)
                parameters.outputSegmentation = segmentation
                parameters.latencyText = self.logic.formatTimings(timings)
                self.showStatus(_("Segmented {name}.").format(name=job.volumeNode.GetName()), job.process.details)
        except InputError as exc:
            self.showStatus(str(exc), job.process.details)
        finally:
            self._job = None
            self.updateButtons()


def _selectData(combo, data) -> None:
    index = combo.findData(data)
    if index >= 0 and index != combo.currentIndex:
        combo.setCurrentIndex(index)


class PTQSegmentLogic(ScriptedLoadableModuleLogic, engineLogic.PTQSegmentLogic):
    """The Logic of ``PTQSegmentLib.logic`` plus the module's parameter node. See there for the API."""

    def __init__(self, scene=None, cacheRoot=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        engineLogic.PTQSegmentLogic.__init__(self, scene=scene, cacheRoot=cacheRoot)

    def getParameterNode(self):
        return PTQSegmentParameterNode(super().getParameterNode())


class PTQSegmentTest(ScriptedLoadableModuleTest):
    """The full click path in a running Slicer (ctest from a Slicer build tree; see docs/slicer.md)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PTQSegment_build_and_segment()
        self.setUp()
        self.test_PTQSegment_bad_input_keeps_panel_usable()

    def _widget(self):
        slicer.util.selectModule("PTQSegment")
        return slicer.modules.ptqsegment.widgetRepresentation().self()

    def _waitForJob(self, widget, timeoutS=600):
        import time

        deadline = time.monotonic() + timeoutS
        while widget._job is not None:
            slicer.app.processEvents()
            self.assertLess(time.monotonic(), deadline, "the background job did not finish in time")
            time.sleep(0.05)

    def test_PTQSegment_build_and_segment(self):
        import tempfile
        from pathlib import Path

        from engine_builder.io import Volume, write_volume
        from engine_builder.phantom import make_phantom

        self.delayDisplay("Writing calibration phantoms and loading a volume")
        work = tempfile.mkdtemp(prefix="ptqsegment-test-")
        for seed in (11, 12):
            hu, _labels, affine = make_phantom(seed, shape=(96, 96, 48), spacing_mm=(4.0, 4.0, 6.0))
            write_volume(Volume(hu, affine), os.path.join(work, "calibration", f"phantom_{seed}.nii.gz"))
        hu, _labels, affine = make_phantom(21, shape=(64, 60, 30), spacing_mm=(5.0, 5.5, 7.0))
        write_volume(Volume(hu, affine), os.path.join(work, "input.nii.gz"))
        volumeNode = slicer.util.loadVolume(os.path.join(work, "input.nii.gz"))

        widget = self._widget()
        parameters = widget._parameterNode
        parameters.inputVolume = volumeNode
        parameters.modelName = "demo"
        parameters.calibrationFolder = os.path.join(work, "calibration")
        parameters.backend = "openvino"
        parameters.patchesPerVolume = 2
        widget.logic._cacheRoot = Path(work) / "cache"

        self.delayDisplay("Building the INT8 engine on the CPU")
        widget.ui.buildButton.click()
        self.assertTrue(widget.ui.cancelButton.enabled)
        self._waitForJob(widget)
        self.assertTrue(parameters.enginePath, widget.ui.statusLabel.text)
        self.assertIn("int8", widget.ui.runsAsLabel.text)
        self.assertIn("same label as FP32", widget.ui.agreementLabel.text)

        self.delayDisplay("Segmenting")
        widget.ui.segmentButton.click()
        self._waitForJob(widget)
        segmentation = parameters.outputSegmentation
        self.assertIsNotNone(segmentation, widget.ui.statusLabel.text)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 7)
        self.assertEqual(segmentation.GetSegmentation().GetNthSegment(0).GetName(), "liver")
        self.assertIn("ms", widget.ui.latencyLabel.text)
        self.assertTrue(widget.ui.buildButton.enabled and widget.ui.segmentButton.enabled)
        self.delayDisplay("Test passed")

    def test_PTQSegment_bad_input_keeps_panel_usable(self):
        widget = self._widget()
        parameters = widget._parameterNode
        parameters.inputVolume = None
        widget.ui.segmentButton.click()
        self.assertIn("Select an input volume", widget.ui.statusLabel.text)
        parameters.calibrationFolder = ""
        parameters.useSceneVolumes = False
        parameters.precision = "int8"
        widget.ui.buildButton.click()
        self.assertIn("calibration", widget.ui.statusLabel.text)
        self.assertTrue(widget.ui.buildButton.enabled and widget.ui.segmentButton.enabled)
        self.delayDisplay("Test passed")
