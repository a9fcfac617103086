"""A user's spec file (JSON, or YAML where PyYAML is installed): the data fields of ``ModelSpec`` for a model
that arrives as a graph (ONNX or TorchScript), so without an architecture.

    {"name": "my_net", "roi_size": [96, 96, 96], "spacing_mm": [1.5, 1.5, 1.5], "orientation": "RAS",
     "intensity": {"kind": "window", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1},
     "labels": [{"value": 0, "name": "background"}, {"value": 1, "name": "liver", "color": [221, 130, 101]}],
     "overlap": 0.25, "in_channels": 1, "modality": "CT"}

``labels`` may also name one of PTQSegment's label tables (``"labels": "btcv"``: ``engine_builder/models/labels/
<name>.json``, with colours and terminology). Every field is checked (unknown ones refused) with one line naming the
field, as for engine manifests.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PTQError
from ..schema import Fields
from ..spec import ModelSpec

#: The fields a spec file may have (the rest of ModelSpec is set by the source).
SPEC_FILE_FIELDS = ("name", "description", "roi_size", "spacing_mm", "orientation", "intensity", "labels", "overlap",
                    "in_channels", "modality", "axis_order", "blend")
_MAX_BYTES = 4 << 20


def read_document(path: str | Path, what: str) -> dict:
    """A JSON (or YAML) file as a dict; one line for a missing, oversized or unparsable file."""
    path = Path(path)
    if not path.is_file():
        raise PTQError(f"{what} {path} not found")
    if path.stat().st_size > _MAX_BYTES:
        raise PTQError(f"{what} {path} is {path.stat().st_size >> 20} MB, not a spec file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise PTQError(f"{what} {path.name} is YAML: pip install pyyaml, or write it as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PTQError(f"{what} {path.name} is not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PTQError(f"{what} {path.name} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise PTQError(f"{what} {path.name} must hold an object of fields, not {type(data).__name__}")
    return data


def read_spec_file(path: str | Path, source: str) -> ModelSpec:
    """The ``ModelSpec`` of a ``source`` graph (``onnx`` or ``torchscript``) described by the spec file ``path``."""
    data = read_document(path, "spec file")
    where = f"spec file {Path(path).name}"
    Fields(data, where).only(SPEC_FILE_FIELDS)
    missing = [key for key in ("name", "roi_size", "spacing_mm", "intensity", "labels") if key not in data]
    if missing:
        Fields(data, where).fail("is missing", missing[0])
    if isinstance(data.get("labels"), str):
        data = {**data, "labels": _table_labels(data["labels"], where)}
    full = {**data, "architecture": "", "arch_args": {}, "source": source,
            "description": data.get("description", f"user's {source} model {data.get('name', '')}")}
    return ModelSpec.from_dict(full, where)


def _table_labels(table: str, where: str) -> list:
    """The labels of the packaged label table ``table`` as spec-file objects; one line naming the known tables."""
    from ..models import LABEL_TABLES, label_table_data

    known = sorted(path.stem for path in LABEL_TABLES.glob("*.json"))
    if table not in known:
        raise PTQError(f"{where}: field 'labels' names {table!r}, which is not a label table "
                       f"(PTQSegment has {', '.join(known)}); or give the labels as a list")
    return label_table_data(table)["labels"]
