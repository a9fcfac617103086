"""The Slicer module's files agree with each other, checked without Slicer: the .ui parses, every widget the Widget
code uses exists in it, every parameter-bound widget names a parameter of the parameter node, the CMake lists name
existing files (and every PTQSegmentLib module), the icon is a 128x128 PNG and the extension description is complete."""

from __future__ import annotations

import ast
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "PTQSegment"
sys.path.insert(0, str(MODULE))
UI = MODULE / "Resources" / "UI" / "PTQSegment.ui"
SCRIPT = MODULE / "PTQSegment.py"


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def parameter_fields() -> set[str]:
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PTQSegmentParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_ui_parses_with_a_qmrmlwidget_root_and_unique_names():
    root = ET.parse(UI).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "PTQSegment"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_widget_the_code_uses_exists_in_the_ui():
    used = set(re.findall(r"\.ui\.(\w+)", SCRIPT.read_text(encoding="utf-8")))
    assert used, "the Widget uses no widget?"
    missing = used - set(ui_widgets())
    assert not missing, f"used in PTQSegment.py but not in PTQSegment.ui: {sorted(missing)}"


def bound_widgets() -> dict[str, str]:
    """Widget name -> the parameter-node field its ``SlicerParameterName`` property names."""
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    return bound


def test_parameter_bound_widgets_name_parameter_node_fields():
    fields = parameter_fields()
    bound = bound_widgets()
    assert set(bound.values()) <= fields, set(bound.values()) - fields
    assert len(set(bound.values())) == len(bound), "two widgets bound to one field"


def test_every_panel_field_is_bound_through_the_parameter_node_wrapper():
    """Inputs, paths, choices and the status and latency lines: all through the wrapper, as the template does; only
    the engine list (data, not a fixed choice) is wired by hand."""
    inputs = {"QComboBox", "ctkPathLineEdit", "qMRMLNodeComboBox", "QCheckBox", "QSpinBox"}
    widgets = ui_widgets()
    unbound = {name for name, widget in widgets.items() if widget.get("class") in inputs} - set(bound_widgets())
    assert unbound == {"engineComboBox"}, unbound
    assert {"statusLabel", "latencyLabel"} <= set(bound_widgets())
    assert set(bound_widgets().values()) == parameter_fields() - {"enginePath"}


def test_paths_are_paths_and_choices_are_choices():
    """ctkPathLineEdit binds to pathlib.Path, a QComboBox to a str with a Choice annotation (the wrapper's rules)."""
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PTQSegmentParameterNode")
    annotations = {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}
    classes = {name: widget.get("class") for name, widget in ui_widgets().items()}
    for widget, field in bound_widgets().items():
        if classes[widget] == "ctkPathLineEdit":
            assert annotations[field] == "pathlib.Path", field
        if classes[widget] == "QComboBox":
            assert annotations[field].startswith("Annotated[str, Choice("), field
    assert annotations["precision"] == "Annotated[str, Choice(list(PRECISIONS))]"


def test_the_self_test_runs_every_test_method():
    """ctest runs ``runTest``: each ``test_`` method of ``PTQSegmentTest`` must be called from it."""
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PTQSegmentTest")
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    run_test = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    called = {node.attr for node in ast.walk(run_test) if isinstance(node, ast.Attribute) and node.attr.startswith("test_")}
    assert methods and methods == called, methods ^ called


def test_mrml_selectors_get_the_scene():
    connections = ET.parse(UI).getroot().find("connections")
    receivers = {c.findtext("receiver") for c in connections if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    selectors = {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors and selectors <= receivers


def cmake_list(text: str, variable: str) -> list[str]:
    body = re.search(rf"set\({variable}\n(.*?)\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "PTQSegment") for line in body.splitlines() if line.strip()]


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts, resources = cmake_list(text, "MODULE_PYTHON_SCRIPTS"), cmake_list(text, "MODULE_PYTHON_RESOURCES")
    for name in scripts + resources:
        assert (MODULE / name).is_file(), name
    lib = {f"PTQSegmentLib/{p.name}" for p in (MODULE / "PTQSegmentLib").glob("*.py")}
    assert lib <= set(scripts), lib - set(scripts)
    from PTQSegmentLib.dependency_handler import REQUIREMENT_FILES  # the installed module reads them from Resources

    needed = {f"Resources/{name}" for names in REQUIREMENT_FILES.values() for name in names}
    assert needed <= set(resources), needed - set(resources)
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "engine_builder" in text  # shipped inside the module


def test_icon_is_a_128_pixel_png():
    data = (MODULE / "Resources" / "Icons" / "PTQSegment.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_extension_description_matches_the_extension_cmake():
    s4ext = dict(line.split(" ", 1) for line in (REPO / "PTQSegment.s4ext").read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.startswith("#") and " " in line)
    for key in ("scm", "scmurl", "scmrevision", "homepage", "contributors", "category", "iconurl", "status", "description",
                "screenshoturls", "enabled"):
        assert s4ext.get(key, "").strip(), key
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f'set(EXTENSION_CATEGORY "{s4ext["category"].strip()}")' in cmake
    assert f'set(EXTENSION_HOMEPAGE "{s4ext["homepage"].strip()}")' in cmake
    assert f'set(EXTENSION_ICONURL "{s4ext["iconurl"].strip()}")' in cmake
    assert "add_subdirectory(PTQSegment)" in cmake
