"""The engine directory: the backend's files + ``manifest.json``, written atomically, checked on load; the cache.

A build writes into a hidden temporary directory beside the target and renames it into place (``files``), so an
interrupted build leaves no half-made engine. The cache key covers everything that changes the engine: weights
hash, spec, calibration set hash, method, options, backend and its version.

An engine directory is data from whoever shared it, never code: ``read_manifest`` checks every field the
project reads against the schema below (types, ranges, the spec's allow-listed architecture, the input shape
against the spec, the file list against the backend's layout) before anything is loaded, and
``verify_engine_files`` checks each file's SHA-256 recorded at build time, so a damaged or swapped file is
"damaged engine: rebuild it", not a crash inside a runtime library.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from .errors import PTQError
from .files import commit_dir as _commit_dir
from .files import JOB_TOKEN_ENV, job_partials, file_sha256, partial_path, remove_stale_partials  # noqa: F401
from .schema import Fields
from .spec import SOURCE_KINDS, ModelSpec

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
#: The files an engine of each backend consists of (what ``Engine.save`` writes, what ``load`` reads).
ENGINE_FILES = {
    "openvino": ("model.xml", "model.bin"),
    "torch": ("network.pt",),
    "tensorrt": ("model.plan", "model.onnx", "tensorrt.json"),
    "tensorrt-rtx": ("model.plan", "model.onnx", "tensorrt.json"),
}
#: A quantized engine also carries its FP32 graph (OpenVINO IR, weights stored as fp16): the reference of
#: ``ptqseg segment --verify``. It is not part of what runs, nor of the engine size.
REFERENCE_FILES = ("reference.xml", "reference.bin")
PRECISIONS = ("int8", "fp32", "bf16", "fp16")
_MAX_MANIFEST_BYTES = 16 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REBUILD = "rebuild the engine with 'ptqseg build'"
_FIELDS = {"format_version", "engine_builder_version", "created", "cache_key", "spec", "backend", "backend_version",
           "precision", "runs_as", "batch_size", "input_shape", "input_name", "weights", "calibration", "kept_in_float",
           "files", "file_sha256", "sizes", "accuracy", "accuracy_control", "build_seconds", "machine", "source"}


def engine_files(backend: str, precision: str) -> tuple[str, ...]:
    """The files of an engine directory of ``backend`` at ``precision``."""
    return ENGINE_FILES[backend] + (REFERENCE_FILES if precision == "int8" else ())


def default_cache_root() -> Path:
    """``$PTQSEG_CACHE`` or ``~/.cache/ptqsegment``."""
    return Path(os.environ.get("PTQSEG_CACHE", Path.home() / ".cache" / "ptqsegment"))


def cache_key(**parts) -> str:
    """A stable hash of the named parts (strings, numbers, lists)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def temporary_dir_for(target: Path) -> Path:
    """A fresh hidden directory beside ``target``; temporaries of dead builds there are removed first."""
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PTQError(f"cannot create {parent} ({exc.strerror}): choose a writable --out") from None
    if not os.access(parent, os.W_OK):
        raise PTQError(f"{parent} is not writable: choose a writable --out")
    remove_stale_partials(parent)
    tmp = partial_path(target)
    tmp.mkdir()
    return tmp


def commit_dir(tmp: Path, target: Path) -> Path:
    """Move the finished ``tmp`` into place as ``target``, replacing an older engine there (never another folder)."""
    target = Path(target)
    if not _replaceable(target):
        shutil.rmtree(tmp, ignore_errors=True)
        raise PTQError(f"{target} exists and is not an engine directory: choose another --out")
    return _commit_dir(tmp, target)


def _replaceable(target: Path) -> bool:
    """Absent, empty, or an engine directory: one listing, so a concurrent replacement cannot fool the check."""
    try:
        entries = os.listdir(target)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False
    return not entries or MANIFEST in entries


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest`` into the (temporary) engine folder, with the SHA-256 of every engine file."""
    folder = Path(folder)
    manifest["file_sha256"] = {name: file_sha256(folder / name) for name in manifest["files"]}
    with open(folder / MANIFEST, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=False, default=str)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The checked manifest of an engine directory; one clear PTQError for anything that is not a sound engine."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise PTQError(f"{folder} is not an engine directory (no {MANIFEST}): build one with 'ptqseg build'")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise PTQError(f"engine {folder}: {MANIFEST} is {path.stat().st_size >> 20} MB, not a manifest: {_REBUILD}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise PTQError(f"engine {folder}: {MANIFEST} is damaged ({reason}): {_REBUILD}") from None
    validate_manifest(manifest, f"engine {folder}")
    return manifest


def validate_manifest(manifest, where: str) -> None:
    """Check a manifest's fields (see the module docstring); PTQError naming the first bad field."""
    fields = Fields(manifest, where, _REBUILD)
    version = fields.integer("format_version")
    if version != FORMAT_VERSION:
        raise PTQError(f"{where} was written by another engine format ({version}, this version reads {FORMAT_VERSION}): "
                       f"{_REBUILD}")
    fields.only(_FIELDS)
    backend = fields.string("backend", ENGINE_FILES)
    fields.string("backend_version", max_length=200)
    precision = fields.string("precision", PRECISIONS)
    batch = fields.integer("batch_size", 1, 256)
    spec = ModelSpec.from_dict(fields.object("spec"))
    shape = fields.integers("input_shape", 5, 1, 4096)
    if shape != (batch, spec.in_channels, *spec.roi_size):
        fields.fail(f"is {list(shape)}, not [batch_size, in_channels, *roi_size] = "
                    f"{[batch, spec.in_channels, *spec.roi_size]}", "input_shape")
    files = fields.strings("files", plain_names=True)
    if sorted(files) != sorted(engine_files(backend, precision)):
        fields.fail(f"lists {files}, a {backend} {precision} engine is {list(engine_files(backend, precision))}", "files")
    hashes = fields.object("file_sha256")
    hashes.only(files)
    for name in files:
        if not _SHA256.match(hashes.string(name)):
            hashes.fail("is not a SHA-256 hex digest", name)
    _validate_source(fields, spec)
    _validate_report_fields(fields)


def _validate_source(fields: Fields, spec: ModelSpec) -> None:
    """``source`` (optional: engines of format 2 built before it existed are registry models): the model's kind,
    which must be the spec's, and the SHA-256 of each file it was read from."""
    source = fields.object("source", required=False)
    if source is None:
        if spec.source != "registry":
            fields.fail(f"is missing for a {spec.source} model", "source")
        return
    source.only(("kind", "files", "notes"))
    if source.string("kind", SOURCE_KINDS) != spec.source:
        source.fail(f"says {source.data['kind']!r}, the spec says {spec.source!r}", "kind")
    digests = source.object("files")
    for name in digests.data:
        if not _SHA256.match(digests.string(name, max_length=64)):
            digests.fail("is not a SHA-256 hex digest", name)
    source.strings("notes", required=False)


def _validate_report_fields(fields: Fields) -> None:
    """The optional fields that reports (``ptqseg info``, the Slicer panel) read."""
    for key in ("cache_key", "created", "engine_builder_version", "input_name"):
        fields.string(key, required=False, max_length=200)
    fields.number("build_seconds", 0, required=False)
    fields.strings("kept_in_float", required=False)
    for key in ("weights", "machine"):
        fields.object(key, required=False)
    runs_as = fields.object("runs_as", required=False)
    if runs_as is not None:
        _validate_profile(runs_as)
    sizes = fields.object("sizes", required=False)
    if sizes is not None:
        sizes.integer("engine_bytes", 0)
        sizes.integer("fp32_onnx_bytes", 1)
    for key in ("calibration", "accuracy", "accuracy_control"):
        if fields.data.get(key) is not None:
            fields.object(key)


def _validate_profile(runs_as: Fields) -> None:
    """The build-time profile of one window that ``ptqseg info`` prints: the int8 share of convolution time (0..1),
    the window's ms and ms per layer type."""
    runs_as.number("int8_conv_time_share", 0.0, 1.0, required=False)
    profile = runs_as.object("profile", required=False)
    if profile is not None:
        profile.number("window_ms", 0.0, required=False)
        by_type = profile.object("by_layer_type", required=False)
        for name in by_type.data if by_type is not None else ():
            by_type.number(name, 0.0)


def verify_engine_files(folder: str | os.PathLike, manifest: dict) -> None:
    """Every engine file present and byte-identical to the build (SHA-256 in the manifest)."""
    for name in manifest["files"]:
        path = Path(folder) / name
        if not path.is_file():
            raise PTQError(f"damaged engine {folder}: {name} is missing: {_REBUILD}")
        if file_sha256(path) != manifest["file_sha256"][name]:
            raise PTQError(f"damaged engine {folder}: {name} is not the file it was built with "
                           f"(changed, truncated or replaced): {_REBUILD}")


def copy_engine(source: Path, target: Path) -> Path:
    """Copy a finished engine directory to ``target`` atomically."""
    tmp = temporary_dir_for(target)
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        return commit_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
