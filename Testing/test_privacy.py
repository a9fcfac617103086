"""No telemetry: importing the OpenVINO backend makes openvino_telemetry unimportable and NNCF use its stub.

Each check runs in a fresh Python process so that the import order is controlled (and so that NNCF's own
"pytest is imported" switch, which also selects the stub, cannot make the test pass by itself). A control
process without engine_builder shows that NNCF's real telemetry object is what would be used otherwise, so
the main check can fail. A second case: openvino_telemetry already imported by someone else before
engine_builder; its senders must become no-ops. Nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO


def _run(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                            encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_openvino_backend_disables_telemetry():
    report = _run("""
        import json, sys
        import engine_builder.backends.openvino  # first: before nncf or openvino_telemetry
        import nncf
        import nncf.telemetry.wrapper as wrapper
        try:
            import openvino_telemetry
            importable = True
        except ImportError:
            importable = False
        # The converter that builds engines uses the stub too.
        import openvino.tools.ovc.convert_impl as convert_impl
        print(json.dumps({
            "pytest_loaded": "pytest" in sys.modules,
            # NNCFTelemetryStub is MagicMock, whose instances each get their own subclass: isinstance, not type is
            "stub_class": isinstance(wrapper.telemetry, wrapper.NNCFTelemetryStub)
                          and not isinstance(wrapper.telemetry, wrapper.NNCFTelemetry),
            "telemetry_type": type(wrapper.telemetry).__name__,
            "importable": importable,
            "ovc_telemetry": convert_impl.tm.__name__,
        }))
    """)
    assert report["pytest_loaded"] is False
    assert report["stub_class"], report
    assert report["importable"] is False
    assert report["ovc_telemetry"].endswith("telemetry_stub"), report


def test_control_without_engine_builder_nncf_would_send():
    """The package is installed here: without engine_builder, NNCF picks its real telemetry object."""
    pytest.importorskip("openvino_telemetry")
    report = _run("""
        import json
        import nncf.telemetry.wrapper as wrapper
        print(json.dumps({"stub": isinstance(wrapper.telemetry, wrapper.NNCFTelemetryStub),
                          "telemetry_type": type(wrapper.telemetry).__name__}))
    """)
    assert report == {"stub": False, "telemetry_type": "NNCFTelemetry"}


def test_already_imported_telemetry_is_silenced():
    pytest.importorskip("openvino_telemetry")
    report = _run("""
        import json
        import openvino_telemetry
        original = openvino_telemetry.Telemetry.send_event
        import engine_builder.backends.openvino
        t = openvino_telemetry.Telemetry
        names = ("send_event", "send_error", "send_stack_trace", "start_session", "end_session", "force_shutdown")
        replaced = {n: getattr(t, n) is not getattr(original, "__func__", original) for n in names if hasattr(t, n)}
        results = [getattr(t, n)(None, "category", "action", "label") for n in ("send_event", "start_session")]
        print(json.dumps({"replaced": replaced, "results": results,
                          "send_event_is_original": t.send_event is original}))
    """)
    assert report["send_event_is_original"] is False
    assert report["replaced"] and all(report["replaced"].values()), report
    assert report["results"] == [None, None]
