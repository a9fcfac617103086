"""How closely a quantized engine's label map follows the FP32 one: foreground agreement and per-label Dice.

Measured on the voxels that either map labels as foreground: all-voxel agreement is dominated by air and
background (99 % of a chest CT can be "background" in both) and hides the organ flips a radiologist sees.
Per-label Dice (INT8 vs FP32) is given for every label present in either map, with its FP32 size, so small
organs (kidneys, stomach) are visible; the mean per-label Dice counts the labels of at least ``min_ml``
millilitres in the FP32 map (smaller ones are listed, not averaged: a 10-voxel label's Dice is noise).
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_MIN_ML = 1.0


def min_voxels(spacing_mm, min_ml: float = DEFAULT_MIN_ML) -> int:
    """Voxels of ``spacing_mm`` that make ``min_ml`` millilitres."""
    return max(1, math.ceil(min_ml * 1000.0 / float(np.prod(spacing_mm))))


def compare_labels(reference: np.ndarray, labels: np.ndarray, label_names: list[str], min_count: int = 1) -> dict:
    """INT8-vs-FP32 figures of two label maps on one grid.

    Returns ``foreground_agreement`` (share of voxels labelled foreground by either map that get the same label),
    ``dice`` {name: {"dice", "fp32_voxels", "voxels"}} for labels present in either map, ``mean_dice`` and
    ``min_dice`` over labels with at least ``min_count`` FP32 voxels (None when there is none), and ``voxels``
    (the foreground union).
    """
    reference, labels = np.asarray(reference), np.asarray(labels)
    foreground = (reference > 0) | (labels > 0)
    union = int(np.count_nonzero(foreground))
    agreement = float(np.count_nonzero(reference[foreground] == labels[foreground]) / union) if union else 1.0
    ref_counts = np.bincount(reference.ravel(), minlength=len(label_names))
    counts = np.bincount(labels.ravel(), minlength=len(label_names))
    both = np.bincount(reference[foreground & (reference == labels)].ravel(), minlength=len(label_names))
    dice = {}
    for value, name in enumerate(label_names):
        if value == 0 or ref_counts[value] + counts[value] == 0:
            continue
        dice[name] = {"dice": float(2 * both[value] / (ref_counts[value] + counts[value])),
                      "fp32_voxels": int(ref_counts[value]), "voxels": int(counts[value])}
    counted = [d["dice"] for d in dice.values() if d["fp32_voxels"] >= min_count]
    return {"foreground_agreement": agreement, "voxels": union, "dice": dice,
            "mean_dice": float(np.mean(counted)) if counted else None, "min_dice": float(min(counted)) if counted else None}


def summarize(per_volume: list[dict]) -> dict:
    """Mean and worst foreground agreement over volumes, mean per-label Dice per label and overall."""
    agreements = [v["foreground_agreement"] for v in per_volume]
    by_label: dict[str, list[float]] = {}
    for volume in per_volume:
        for name, entry in volume["dice"].items():
            by_label.setdefault(name, []).append(entry["dice"])
    means = [v["mean_dice"] for v in per_volume if v["mean_dice"] is not None]
    return {"foreground_agreement": float(np.mean(agreements)), "min_foreground_agreement": float(np.min(agreements)),
            "mean_dice": float(np.mean(means)) if means else None,
            "min_dice": float(min(v["min_dice"] for v in per_volume if v["min_dice"] is not None)) if means else None,
            "dice_per_label": {name: float(np.mean(values)) for name, values in by_label.items()}}
