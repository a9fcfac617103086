"""Volume node <-> ``engine_builder.io.Volume``, and a label map -> a segmentation node with named, coloured segments.

Index order is the trap: ``slicer.util.arrayFromVolume`` returns the voxels as ``[k, j, i]`` (VTK's memory order,
slice first), while ``engine_builder`` works on ``[i, j, k]`` with the IJK -> RAS affine. Every conversion goes
through the node's IJK-to-RAS matrix, so oblique and anisotropic volumes keep their geometry exactly.

A volume under a parent transform: the voxels and the IJK-to-RAS matrix are the volume's own (local) ones, so
``ptqseg`` segments the untransformed volume, and the segmentation is placed under the same parent transform, with
the volume's local geometry as its reference geometry: each transform is applied once, by the scene. Non-linear
transforms are refused (``checkTransform``): a label map on the volume's grid cannot follow them.
Works in Slicer and on the ``slicer-core`` wheel (plain Python, no Qt).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

#: Terminology context of Slicer's "3D Slicer General Anatomy" list, where the labels' codes come from.
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"
#: The category of a label table written before labels carried their category.
DEFAULT_CATEGORY = "SCT^123037004^Anatomical Structure"
EMPTY_CODE = "^^"


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
    """Slicer's serialized terminology entry for a spec label (its category, type and modifier, each
    ``"scheme^code^meaning"``, in the General Anatomy context), or "" for a label without a type."""
    if not label.terminology:
        return ""
    category = label.terminology_category or DEFAULT_CATEGORY
    modifier = label.terminology_modifier or EMPTY_CODE
    return "~".join([TERMINOLOGY_CONTEXT, category, label.terminology, modifier, ANATOMY_CONTEXT, EMPTY_CODE, EMPTY_CODE])


def segmentTerminology(segment) -> str:
    """The serialized terminology entry of a ``vtkSegment`` ("" when it has none; ``GetTerminology`` is newer than 5.8)."""
    import slicer
    import vtk

    value = vtk.reference("")
    segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value)
    return str(value)


def terminologyProblem(terminologiesLogic, entry: str) -> str | None:
    """Why the serialized terminology ``entry`` is not in the terminology context it names, as loaded in
    ``terminologiesLogic`` (a ``vtkSlicerTerminologiesModuleLogic``), or None when its category, type and modifier
    are all there. In Slicer the General Anatomy list is loaded at startup; the self-test checks segments with it."""
    import slicer

    parsed = slicer.vtkSlicerTerminologyEntry()
    if not slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(entry, parsed):
        return f"not a terminology entry: {entry}"
    context = parsed.GetTerminologyContextName()
    category = _findCoded(lambda i, found: terminologiesLogic.GetNthCategoryInTerminology(context, i, found),
                          terminologiesLogic.GetNumberOfCategoriesInTerminology(context), parsed.GetCategoryObject(),
                          slicer.vtkSlicerTerminologyCategory)
    if category is None:
        return f"category {_code(parsed.GetCategoryObject())} is not in '{context}'"
    typeObject = _findCoded(lambda i, found: terminologiesLogic.GetNthTypeInTerminologyCategory(context, category, i, found),
                            terminologiesLogic.GetNumberOfTypesInTerminologyCategory(context, category), parsed.GetTypeObject(),
                            slicer.vtkSlicerTerminologyType)
    if typeObject is None:
        return f"type {_code(parsed.GetTypeObject())} is not in category {_code(category)} of '{context}'"
    modifier = parsed.GetTypeModifierObject()
    if not modifier.GetCodeValue():
        return None
    count = terminologiesLogic.GetNumberOfTypeModifiersInTerminologyType(context, category, typeObject)
    found = _findCoded(lambda i, found: terminologiesLogic.GetNthTypeModifierInTerminologyType(context, category, typeObject, i, found),
                       count, modifier, slicer.vtkSlicerTerminologyType)
    return None if found is not None else f"modifier {_code(modifier)} is not a modifier of {_code(typeObject)} in '{context}'"


def _findCoded(nth, count: int, wanted, objectClass):
    """The first of ``count`` coded entries (``nth(i, object)`` fills one) with ``wanted``'s scheme and code."""
    for index in range(count):
        candidate = objectClass()
        if nth(index, candidate) and (candidate.GetCodingSchemeDesignator(), candidate.GetCodeValue()) == \
                (wanted.GetCodingSchemeDesignator(), wanted.GetCodeValue()):
            return candidate
    return None


def _code(coded) -> str:
    return f"{coded.GetCodingSchemeDesignator()}^{coded.GetCodeValue()}^{coded.GetCodeMeaning()}"


class TransformError(ValueError):
    """A volume under a transform that a segmentation on its voxel grid cannot follow."""


def checkTransform(volumeNode) -> None:
    """Raise ``TransformError`` when ``volumeNode`` sits under a non-linear transform (linear ones are followed)."""
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is not None and not transformNode.IsTransformToWorldLinear():
        raise TransformError(f"{volumeNode.GetName()} is under a non-linear transform ({transformNode.GetName()}): harden "
                             "the transform on the volume first (Data module: right-click the volume, Harden transform).")


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
    """A segmentation node holding ``labels`` (``Volume`` of label values on the reference volume's own grid).

    One segment per non-background label of ``specLabels`` (even when empty, so the table is the model's), with
    the label's name as ID and name, its colour and its terminology. The node sits under the reference volume's
    parent transform, with the volume's local geometry as reference geometry (see the module docstring).

    Returns the segmentation node (``segmentationNode`` emptied and refilled, or a new one).
    """
    import slicer
    import vtk

    checkTransform(referenceVolumeNode)
    ensureSegmentationConverters()
    if segmentationNode is None:
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{referenceVolumeNode.GetName()} segmentation")
    segmentationNode.CreateDefaultDisplayNodes()
    transformId = referenceVolumeNode.GetTransformNodeID()
    # Same parent first: the reference geometry is then the volume's own, with no transform folded into it.
    segmentationNode.SetAndObserveTransformNodeID(transformId)
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
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
        labelmapNode.SetAndObserveTransformNodeID(transformId)  # in the segmentation's frame: imported without resampling
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode, segmentIds):
            raise RuntimeError("importing the label map into the segmentation failed")
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
