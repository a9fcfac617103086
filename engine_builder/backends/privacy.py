"""No telemetry leaves the machine: these are patient images.

OpenVINO's converter and NNCF both report usage through the ``openvino_telemetry`` package (opt-in by
consent). We make that package unimportable before either is imported, so both fall back to their own
no-op stubs; if it was already imported (e.g. by another Slicer module), its senders are replaced by no-ops.
"""

from __future__ import annotations

import sys

_SENDERS = ("send_event", "send_error", "send_stack_trace", "start_session", "end_session", "force_shutdown")


def disable_telemetry() -> None:
    """Call before importing openvino or nncf."""
    module = sys.modules.get("openvino_telemetry")
    if module is None:
        sys.modules["openvino_telemetry"] = None  # import now raises ImportError -> the libraries use their stubs
        return
    telemetry_class = getattr(module, "Telemetry", None)
    for name in _SENDERS:
        if telemetry_class is not None and hasattr(telemetry_class, name):
            setattr(telemetry_class, name, lambda *args, **kwargs: None)
