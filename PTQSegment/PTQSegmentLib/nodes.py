"""Volume node <-> ``engine_builder.io.Volume``, and a label map -> a segmentation node with named, coloured segments.

Index order is the trap: ``slicer.util.arrayFromVolume`` returns the voxels as ``[k, j, i]`` (VTK's memory order,
slice first), while ``engine_builder`` works on ``[i, j, k]`` with the IJK -> RAS affine. Every conversion goes
through the node's IJK-to-RAS matrix, so oblique and anisotropic volumes keep their geometry exactly.
Works in Slicer and on the ``slicer-core`` wheel (plain Python, no Qt).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

#: Terminology context of Slicer's general anatomy list, where the spec's SNOMED CT types live.
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = "SCT^123037004^Anatomical Structure"
#: Laterality modifiers for labels named ``*_left`` / ``*_right``.
LATERALITY = {"left": "SCT^7771000^Left", "right": "SCT^24028007^Right"}


def ijkToRas(volumeNode) -> np.ndarray:
    """The node's 4x4 IJK -> RAS matrix (mm) as a numpy array."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def setIjkToRas(volumeNode, affine: np.ndarray) -> None:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(affine[r, c]))
    volumeNode.SetIJKToRASMatrix(matrix)


def volumeFromNode(volumeNode):
    """A scalar volume node as ``Volume(array[i, j, k], affine IJK -> RAS)`` (a copy of the voxels)."""
    import slicer

    from engine_builder.io import Volume

    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("the volume node has no image data")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"{volumeNode.GetName()} has several components per voxel; pick a scalar volume")
    array = slicer.util.arrayFromVolume(volumeNode)  # [k, j, i]
    return Volume(np.ascontiguousarray(array.transpose(2, 1, 0)), ijkToRas(volumeNode))


def updateNodeFromVolume(volumeNode, volume) -> None:
    """Put ``volume``'s voxels and geometry into ``volumeNode``."""
    import slicer

    slicer.util.updateVolumeFromArray(volumeNode, np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    setIjkToRas(volumeNode, volume.affine)


def terminologyEntry(label) -> str:
    """Slicer's serialized terminology for a spec label with a ``"SCT^code^meaning"`` type ("" when it has none)."""
    if not label.terminology:
        return ""
    side = label.name.rsplit("_", 1)[-1].lower()
    modifier = LATERALITY.get(side, "^^")
    return "~".join([TERMINOLOGY_CONTEXT, ANATOMICAL_STRUCTURE, label.terminology, modifier, ANATOMY_CONTEXT, "^^", "^^"])


def ensureSegmentationConverters() -> None:
    """Register the labelmap <-> surface conversion rules when nothing did (plain ``slicer-core``; Slicer's
    Segmentations module registers them at startup)."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def segmentationFromLabels(scene, labels, specLabels, referenceVolumeNode, segmentationNode=None, name: str | None = None):
    """A segmentation node holding ``labels`` (``Volume`` of label values on the reference volume's grid).

    One segment per non-background label of ``specLabels`` (even when empty, so the table is the model's), with
    the label's name as ID and name, its colour and its terminology. The geometry is the reference volume's, and
    the node sits under the same parent transform.

    Returns the segmentation node (``segmentationNode`` emptied and refilled, or a new one).
    """
    import slicer
    import vtk

    ensureSegmentationConverters()
    if segmentationNode is None:
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{referenceVolumeNode.GetName()} segmentation")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    segmentationNode.SetAndObserveTransformNodeID(None)  # the label map is imported untransformed, like the voxels it came from
    segmentation = segmentationNode.GetSegmentation()
    segmentation.RemoveAllSegments()
    segmentIds = vtk.vtkStringArray()  # position v-1 receives label value v
    for label in specLabels:
        if label.value == 0:
            continue
        segmentId = segmentation.AddEmptySegment(label.name, label.name, [c / 255.0 for c in label.color])
        entry = terminologyEntry(label)
        if entry:
            segmentation.GetSegment(segmentId).SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
        segmentIds.InsertNextValue(segmentId)
    with scratchNodes(scene, keep=segmentationNode):
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "PTQSegment labels")
        updateNodeFromVolume(labelmapNode, labels)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode, segmentIds):
            raise RuntimeError("importing the label map into the segmentation failed")
    segmentationNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
    return segmentationNode


def labelsFromSegmentation(scene, segmentationNode, referenceVolumeNode) -> np.ndarray:
    """The segmentation as label values ``[i, j, k]`` on the reference volume's grid (segment n -> value n)."""
    import slicer
    import vtk

    segmentIds = vtk.vtkStringArray()
    segmentationNode.GetSegmentation().GetSegmentIDs(segmentIds)
    with scratchNodes(scene):
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "PTQSegment export")
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentationNode, segmentIds, labelmapNode,
                                                                                     referenceVolumeNode):
            raise RuntimeError("exporting the segmentation to a label map failed")
        return np.ascontiguousarray(slicer.util.arrayFromVolume(labelmapNode).transpose(2, 1, 0))


@contextmanager
def scratchNodes(scene, keep=None):
    """Remove every node added to ``scene`` inside the block (temporary label maps and the display and colour
    nodes that conversions add to them), except ``keep`` and the nodes it references."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        kept = set()
        if keep is not None:
            kept.add(keep.GetID())
            kept.update(keep.GetNthDisplayNode(i).GetID() for i in range(keep.GetNumberOfDisplayNodes()))
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before and node.GetID() not in kept and not node.IsA("vtkMRMLSubjectHierarchyNode"):
                scene.RemoveNode(node)
