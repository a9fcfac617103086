"""Agreement between two predictions (INT8 vs FP32), per-label Dice, and small report helpers."""

from __future__ import annotations

import numpy as np

from .export import relative_l2


def dice_per_label(reference: np.ndarray, prediction: np.ndarray, label_names: list[str]) -> dict[str, float | None]:
    """Dice of each foreground label between two label maps; None where the label is in neither."""
    scores: dict[str, float | None] = {}
    for value, name in enumerate(label_names):
        if value == 0:
            continue
        ref, pred = reference == value, prediction == value
        total = int(ref.sum()) + int(pred.sum())
        scores[name] = None if total == 0 else float(2.0 * np.logical_and(ref, pred).sum() / total)
    return scores


def agreement_report(reference_logits: np.ndarray, logits: np.ndarray, label_names: list[str],
                     min_agreement: float) -> dict:
    """How closely ``logits`` (e.g. INT8) follow ``reference_logits`` (FP32), both (N, C, *roi)."""
    reference_labels = reference_logits.argmax(1)
    labels = logits.argmax(1)
    agreement = float((reference_labels == labels).mean())
    return {
        "argmax_agreement": agreement,
        "logits_relative_l2": relative_l2(reference_logits, logits),
        "dice_per_label": dice_per_label(reference_labels, labels, label_names),
        "patches": int(len(logits)),
        "min_agreement": float(min_agreement),
        "passed": agreement >= min_agreement,
    }


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def measure_ms(function, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median, min and max wall-clock milliseconds of ``function()`` over ``repeats`` runs after ``warmup``."""
    import statistics
    import time

    for _ in range(warmup):
        function()
    samples = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "repeats": len(samples)}
