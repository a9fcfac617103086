"""Engines and registry models described in words: what ``ptqseg info``/``build``/``models`` print and what the
Slicer panel shows.

Reads only the (checked) manifest or a spec, imports nothing heavy: the Slicer module calls it in Slicer's own process.
"""

from __future__ import annotations


def describe_accuracy(accuracy: dict | None) -> str:
    """The build-time INT8-vs-FP32 estimate in one line, or why there is none."""
    if not accuracy:
        return "not measured (no calibration volumes)"
    if accuracy.get("kind") != "held_out_volumes":
        return f"not measured: {accuracy.get('reason', 'no estimate in this engine')}"
    volumes = len(accuracy.get("volumes", []))
    text = (f"{accuracy['foreground_agreement']:.2%} of foreground voxels get the FP32 label on {volumes} calibration "
            f"volume{'s' if volumes != 1 else ''} the engine was not calibrated on (worst {accuracy['min_foreground_agreement']:.2%}")
    if accuracy.get("mean_dice") is not None:
        text += f"; mean per-label Dice {accuracy['mean_dice']:.3f}, worst {accuracy['min_dice']:.3f}"
    text += ")"
    if accuracy.get("passed") is False:
        text += f": BELOW the {accuracy.get('min_agreement', 0.98):.0%} threshold"
    return text


def describe_verification(verification: dict | None) -> str:
    """The per-scan check (``segment --verify``) in one line; "" when there was none."""
    if not verification:
        return ""
    text = (f"This scan: INT8 gives the FP32 label to {verification['foreground_agreement']:.1%} of foreground voxels "
            f"in {verification['windows']} checked windows ({verification['seconds']:.1f} s)")
    if not verification.get("passed", True):
        text += (f": BELOW {verification.get('min_agreement', 0.98):.0%}; review this segmentation, "
                 "or segment the scan with the fp32 engine")
    return text


def describe_accuracy_control(control: dict) -> str:
    """What accuracy control kept in float and what it cost."""
    before = control.get("estimate_before") or {}
    text = f"accuracy control kept {len(control.get('kept_in_float', []))} operations in float"
    if before.get("foreground_agreement") is not None:
        text += f" (estimate before: {before['foreground_agreement']:.2%})"
    if control.get("window_ms_before") and control.get("window_ms_after"):
        text += f"; one window {control['window_ms_before']:.0f} -> {control['window_ms_after']:.0f} ms"
    return text


def describe_int8_time_share(runs_as: dict) -> str:
    """The share of convolution time in int8 kernels (OpenVINO's per-layer profile of one window at build time)
    and the largest layer types of that window, in one line."""
    text = f"{runs_as['int8_conv_time_share']:.0%} of convolution time in int8 kernels"
    profile = runs_as.get("profile") or {}
    if profile.get("window_ms"):
        largest = list((profile.get("by_layer_type") or {}).items())[:3]
        text += (f" (one window {profile['window_ms']:.0f} ms at build time; largest: "
                 + ", ".join(f"{name} {ms:.0f} ms" for name, ms in largest) + ")")
    return text


def describe_manifest(manifest: dict) -> str:
    """A human summary: what runs, sizes, agreement, what stayed in float."""
    sizes = manifest["sizes"]
    source = manifest.get("source") or {}
    lines = [
        f"model      {manifest['spec']['name']} ({manifest['spec']['architecture'].rsplit('.', 1)[-1] or 'graph'}, "
        f"{len(manifest['spec']['labels'])} labels)",
        f"source     {source.get('kind', 'registry')}" + "".join(f", {name} {digest[:12]}" for name, digest in
                                                             sorted(source.get("files", {}).items())),
        f"backend    {manifest['backend']} ({manifest['backend_version']}), precision {manifest['precision']}, "
        f"batch {manifest['batch_size']}",
        f"size       {sizes['engine_bytes'] / 1e6:.2f} MB engine vs {sizes['fp32_onnx_bytes'] / 1e6:.2f} MB FP32 "
        f"({sizes['engine_bytes'] / sizes['fp32_onnx_bytes']:.2f}x)"
        + (f", + {sizes['reference_bytes'] / 1e6:.2f} MB FP32 reference for --verify" if sizes.get("reference_bytes") else ""),
    ]
    runs = manifest.get("runs_as", {}).get("convolutions_by_precision")
    if runs:
        lines.append("runs as    convolutions " + ", ".join(f"{n} {p}" for p, n in sorted(runs.items())))
    share = manifest.get("runs_as", {}).get("int8_conv_time_share")
    if share is not None and manifest["precision"] == "int8":
        lines.append(f"runs as    {describe_int8_time_share(manifest['runs_as'])}")
    layers = manifest.get("runs_as", {}).get("layers_by_precision")
    if layers:
        lines.append("runs as    layers " + ", ".join(f"{n} {p}" for p, n in sorted(layers.items())))
    for note in ("int8_note", "layers_note"):  # TensorRT: what the engine has (not) confirmed about its precision
        if manifest.get("runs_as", {}).get(note):
            lines.append(f"note       {manifest['runs_as'][note]}")
    calibration = manifest.get("calibration")
    if calibration and calibration.get("method"):
        lines.append(f"calibrated {calibration['method']} on {calibration['patches']} patches from "
                     f"{len(calibration['sources'])} volumes (set {calibration['set_hash'][:12]})")
    if manifest["precision"] != "fp32":
        lines.append(f"agreement  {describe_accuracy(manifest.get('accuracy'))}")
    control = manifest.get("accuracy_control")
    if control:
        lines.append(f"control    {describe_accuracy_control(control)}")
    if manifest.get("kept_in_float"):
        lines.append(f"in float   {len(manifest['kept_in_float'])} ops: {', '.join(manifest['kept_in_float'][:6])}"
                     + (" ..." if len(manifest["kept_in_float"]) > 6 else ""))
    lines.append(f"built in   {manifest['build_seconds']:.1f} s on {manifest['machine']['cpu']}")
    return "\n".join(lines)




def weights_origin(spec) -> str:
    """Where a registry model's weights come from, in words (``spec.weights``)."""
    source = spec.weights
    return {"packaged": f"shipped ({source.path})",
            "monai_bundle": f"MONAI bundle {source.name} ({source.path}; --download fetches it)",
            "nnunet": f"nnU-Net folder {source.name}/{source.path} (--download: TotalSegmentator's downloader)",
            "release": f"released file {source.name}, by hand from {source.url or 'the authors'}",
            "none": "none published: --weights FILE" + (f" (see {source.url})" if source.url else "")}[source.kind]


def describe_model(spec, max_labels: int = 40) -> str:
    """A registry model in a few lines: description, input, weights and its label set (the first ``max_labels``)."""
    names = [label.name for label in spec.labels[1:]]
    shown = ", ".join(names[:max_labels]) + (f" and {len(names) - max_labels} more" if len(names) > max_labels else "")
    return (f"{spec.description}\n"
            f"{spec.modality}, {' x '.join(f'{s:g}' for s in spec.spacing_mm)} mm, window {' x '.join(map(str, spec.roi_size))} voxels\n"
            f"Weights: {weights_origin(spec)}\n"
            f"Labels ({len(names)}): {shown}")
