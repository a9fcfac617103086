"""What a build learns about its quantized engine's accuracy, and what it does when the answer is too low.

1. **Estimate** (``estimate.held_out_estimate``): leave whole calibration volumes out, quantize on the rest with
   the build's recipe, segment the held-out volumes whole with that engine and with the FP32 reference.
2. **Accuracy control by default**: when the estimate falls below ``min_agreement`` (or ``--max-drop`` is given),
   the final engine is quantized again with NNCF's accuracy control, which keeps the operations that hurt most
   in float until the foreground agreement on validation windows (drawn from every calibration volume, apart
   from the calibration patches, FP32 labels as the reference) drops by at most ``max_drop``. The operations it
   kept in float are then kept in float in every fold too, and the estimate is measured again, so the recorded
   figure describes the engine that ships. The record says what stayed in float and what it cost per window.

The FP32 reference is an OpenVINO FP32 engine of the same ONNX graph (no torch network needed: a user's own
ONNX model is estimated the same way).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from .backends.base import BuildOptions, Engine, ValidationWindows
from .calibration import CalibrationSet, sample_volume
from .estimate import ReferenceLabels, held_out_estimate, unavailable
from .evaluate import measure_ms
from .progress import stage

log = logging.getLogger(__name__)
#: Accuracy control's allowed drop of foreground agreement on its validation windows when it is switched on by
#: a low estimate: stricter than the estimate's threshold, because those windows come from volumes the
#: quantizer saw (the re-measured estimate is what counts).
AUTO_MAX_DROP = 0.005
VALIDATION_SEED_OFFSET = 7919


@dataclasses.dataclass
class Assessment:
    """The engine to ship and what is known about it (manifest fields ``accuracy`` and ``accuracy_control``)."""

    engine: Engine
    accuracy: dict | None
    accuracy_control: dict | None
    warnings: list[str]


def assess(backend, graph, calibration: CalibrationSet, precision: str, options: BuildOptions, engine: Engine,
           reference: Engine, min_agreement: float, accuracy_control: str = "auto", patches_per_volume: int = 8,
           seed: int = 0, runnable: bool = True) -> Assessment:
    """Estimate ``engine``'s accuracy on held-out volumes; rebuild it under accuracy control where asked/needed."""
    if not runnable:
        return Assessment(engine, unavailable("this engine cannot run on this machine (no supported GPU): "
                                              "build it where it runs to measure it"), None, [])
    references = ReferenceLabels(calibration, graph.spec, reference)

    def estimate(opts: BuildOptions) -> dict:
        with stage("estimate"):
            return held_out_estimate(references, lambda patches: backend.build(graph, patches, precision, opts),
                                     min_agreement, progress=opts.progress)

    accuracy = estimate(options)
    explicit = options.max_drop is not None
    wanted = explicit or (accuracy_control == "auto" and accuracy.get("passed") is False)
    control = None
    if wanted and precision == "int8" and getattr(backend, "supports_accuracy_control", False):
        engine, accuracy, control = _controlled(backend, graph, calibration, precision, options, engine, references,
                                                accuracy, estimate, patches_per_volume, seed)
    warnings = []
    if accuracy.get("passed") is False:
        warnings.append(f"{precision} agrees with FP32 on {accuracy['foreground_agreement']:.1%} of the foreground of "
                        f"calibration volumes it was not calibrated on (worst {accuracy['min_foreground_agreement']:.1%}), "
                        f"below {min_agreement:.0%}: add calibration volumes like the scans you will segment, "
                        "or use the fp32/bf16 engine")
        log.warning(warnings[-1])
    return Assessment(engine, accuracy, control, warnings)


def _controlled(backend, graph, calibration, precision, options, engine, references, before, estimate,
                patches_per_volume, seed):
    """Accuracy control on all volumes, then the estimate again with its float operations kept in every fold."""
    validation = validation_windows(calibration, references, patches_per_volume, seed)
    max_drop = options.max_drop if options.max_drop is not None else AUTO_MAX_DROP
    window = calibration.volumes[0].patches[:1]
    before_ms = measure_ms(lambda: engine.infer(window), repeats=3)["median"]
    with stage("accuracy_control"):
        controlled = backend.build(graph, calibration.patches, precision,
                                   dataclasses.replace(options, validation=validation, max_drop=max_drop))
    kept = controlled.kept_in_float()
    after_ms = measure_ms(lambda: controlled.infer(window), repeats=3)["median"]
    keep_options = dataclasses.replace(options, keep_float=tuple(dict.fromkeys([*options.keep_float, *kept])),
                                       max_drop=None, validation=None)
    after = estimate(keep_options)
    record = {"max_drop": max_drop, "max_reverted": options.extra.get("max_reverted"),
              "validation_windows": int(len(validation.windows)),
              "validation_agreement": validation.agreement(_labels(controlled, validation.windows)),
              "kept_in_float": kept, "estimate_before": _summary(before),
              "window_ms_before": round(before_ms, 1), "window_ms_after": round(after_ms, 1)}
    log.info("accuracy control kept %d operations in float: estimate %.4f -> %.4f, window %.0f -> %.0f ms", len(kept),
             before.get("foreground_agreement", float("nan")), after.get("foreground_agreement", float("nan")),
             before_ms, after_ms)
    return controlled, after, record


def validation_windows(calibration: CalibrationSet, references: ReferenceLabels, per_volume: int, seed: int) -> ValidationWindows:
    """Windows of every calibration volume apart from its calibration patches, with the FP32 labels."""
    rng = np.random.default_rng(seed + VALIDATION_SEED_OFFSET)
    windows = np.concatenate([sample_volume(references.image(v.name), references.spec, per_volume, rng)
                              for v in calibration.volumes])
    return ValidationWindows(windows, _labels(references.reference, windows), references.spec.overlap)


def _labels(engine: Engine, windows: np.ndarray) -> np.ndarray:
    return np.concatenate([engine.infer_labels(windows[i : i + engine.batch_size])
                           for i in range(0, len(windows), engine.batch_size)])


def _summary(accuracy: dict) -> dict:
    keys = ("kind", "foreground_agreement", "min_foreground_agreement", "mean_dice", "min_dice", "passed")
    return {k: accuracy.get(k) for k in keys}
