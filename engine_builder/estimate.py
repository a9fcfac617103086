"""The build-time estimate of how an INT8 engine will segment scans it has never seen: leave volumes out.

Patches of the calibration volumes themselves say little about an unseen scan (measured: 99.4 % on such
patches for an engine that relabels 5-19 % of the foreground of unseen CTs). So whole volumes are held out:
the calibration volumes are split into folds; for each fold an engine is quantized on the *other* volumes only,
with the same recipe as the final engine, and the fold's volumes are segmented whole, through the real
sliding-window path, by that engine and by the FP32 reference; ``agreement.compare_labels`` compares the two
label maps on the network grid. With V volumes there are min(V, ``MAX_FOLDS``) folds and at most
``MAX_EVALUATED_PER_FOLD`` volumes segmented per fold (the build's cost stays bounded for large folders).
Fewer than 2 usable volumes: no estimate, and the record says why (a number would have to come from
volumes the engine was calibrated on).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .agreement import compare_labels, min_voxels, summarize
from .calibration import CalibrationSet
from .inference import predict_labels
from .io import read_volume
from .preprocess import preprocess
from .progress import track
from .sanity import check_volume
from .spec import ModelSpec
from .timing import StageTimer

log = logging.getLogger(__name__)
MAX_FOLDS = 4
MAX_EVALUATED_PER_FOLD = 2


def fold_plan(names: list[str], max_folds: int = MAX_FOLDS, per_fold: int = MAX_EVALUATED_PER_FOLD) -> list[tuple[list[str], list[str]]]:
    """(held-out names, names to segment) per fold; volume i goes to fold i mod k. Empty for fewer than 2 volumes."""
    if len(names) < 2:
        return []
    folds = min(len(names), max_folds)
    plan = []
    for fold in range(folds):
        held_out = names[fold::folds]
        plan.append((held_out, held_out[:per_fold]))
    return plan


@dataclass
class ReferenceLabels:
    """Preprocessed held-out volumes and their FP32 label maps (network grid), computed once per build."""

    calibration: CalibrationSet
    spec: ModelSpec
    reference: object  # the FP32 Engine
    images: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)

    def image(self, name: str):
        if name not in self.images:
            volume = next(v for v in self.calibration.volumes if v.name == name)
            checked, _ = check_volume(read_volume(volume.source), self.spec, name)
            self.images[name] = preprocess(checked, self.spec).image
        return self.images[name]

    def fp32(self, name: str) -> np.ndarray:
        if name not in self.labels:
            self.labels[name] = predict_labels(self.image(name), self.reference, self.spec, StageTimer())
        return self.labels[name]


def unavailable(reason: str) -> dict:
    """The estimate record of a build that cannot hold a volume out."""
    return {"kind": "unavailable", "reason": reason, "passed": None}


def held_out_estimate(references: ReferenceLabels, quantize: Callable[[np.ndarray], object], min_agreement: float,
                      progress: bool = False) -> dict:
    """Leave-volume-out INT8-vs-FP32 figures; ``quantize(patches)`` builds an engine with the build's recipe."""
    calibration, spec = references.calibration, references.spec
    plan = fold_plan(calibration.names)
    if not plan:
        return unavailable(f"the calibration folder has {len(calibration.names)} usable volume: a scan the engine was "
                           "not calibrated on is needed to measure it; put at least 2 (better 4 or more) volumes there")
    count = min_voxels(spec.spacing_mm)
    per_volume = []
    for held_out, evaluated in track(plan, "held-out volumes", enabled=progress, unit="fold"):
        engine = quantize(calibration.patches_of([n for n in calibration.names if n not in held_out]))
        for name in evaluated:
            labels = predict_labels(references.image(name), engine, spec, StageTimer())
            figures = compare_labels(references.fp32(name), labels, spec.label_names, count)
            per_volume.append({"volume": name, **figures})
            log.info("held-out %s: foreground agreement %.4f", name, figures["foreground_agreement"])
    summary = summarize(per_volume)
    return {"kind": "held_out_volumes", "folds": len(plan), "volumes": per_volume, **summary,
            "mean_dice_min_ml": 1.0, "min_agreement": float(min_agreement),
            "passed": summary["foreground_agreement"] >= min_agreement}
