"""Load network weights safely: plain state dicts only (``torch.load(weights_only=True)``), never pickles.

Understands the wrappers that common checkpoints put around a state dict (MONAI bundles' plain
``model.pt``, Lightning/Ignite ``{"state_dict": ...}`` or ``{"model": ...}``, nnU-Net v2's
``{"network_weights": ...}``) and DataParallel's ``module.`` prefix. A mismatch with the architecture names
the missing and unexpected keys.

nnU-Net (v1 ``.model``, v2 ``checkpoint_final.pth``) and STU-Net checkpoints keep their training logs beside the
weights as numpy scalars (``numpy.float32`` losses and Dice values), which ``weights_only`` refuses by default.
``CHECKPOINT_GLOBALS`` allow-lists exactly what rebuilds those values: numpy's scalar and dtype constructors (under
their numpy 2 and numpy 1 names) and the dtype classes. None of them runs code: they turn bytes into a number.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .errors import PTQError
from .files import file_sha256
from .models import PACKAGED_WEIGHTS
from .spec import ModelSpec

_WRAPPER_KEYS = ("state_dict", "model", "network_weights", "model_state_dict", "net")


def resolve_weights(spec: ModelSpec, weights: str | os.PathLike | None = None, download_dir: str | os.PathLike | None = None,
                    download: bool = False) -> Path:
    """The weights file for ``spec``: the user's (a file; for a bundle model also the bundle folder), the packaged
    one, or the spec's published checkpoint found on this machine (fetched first with ``download``, where a
    library can fetch it). nnU-Net folders are found by ``find_nnunet_folder``."""
    source = spec.weights
    if weights is not None:
        path = Path(weights)
        if path.is_dir() and source.kind == "monai_bundle":
            if not (path / source.path).is_file():
                raise PTQError(f"{path} is not a MONAI bundle of model '{spec.name}': it has no {source.path}")
            return path / source.path
        if not path.is_file():
            raise PTQError(f"weights file {path} not found")
        return path
    if source.kind == "packaged":
        path = PACKAGED_WEIGHTS / source.path
        if not path.is_file():
            raise PTQError(f"model '{spec.name}': its packaged weights {path.name} are missing from this installation; reinstall or pass --weights FILE")
        return path
    if source.kind == "monai_bundle":
        return find_bundle(spec, download_dir, download) / source.path
    if source.kind == "release":
        return find_release(spec, download_dir)
    where = f" ({source.url})" if source.url else ""
    raise PTQError(f"model '{spec.name}' has no published weights{where}: pass --weights FILE (a state dict for "
                   f"{spec.architecture}), or --random-init for speed measurements")


def find_bundle(spec: ModelSpec, bundle_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder of ``spec``'s MONAI model-zoo bundle in the bundle cache (``<cache>/bundles/<name>``, put there by
    hand or by an earlier download); with ``download``, fetched there with ``monai.bundle`` first (needs internet)."""
    from .artifact import default_cache_root

    bundle_root = Path(bundle_dir or default_cache_root() / "bundles")
    folder = bundle_root / spec.weights.name
    target = folder / spec.weights.path
    if not target.is_file() and not download:
        raise PTQError(f"model '{spec.name}': its weights are MONAI bundle '{spec.weights.name}' ({spec.weights.path}), "
                       f"which is not in {bundle_root}: pass --weights with the bundle folder (or the file), put the "
                       "bundle folder there, or add --download to fetch it with monai.bundle")
    if not target.is_file():
        from monai.bundle import download as download_bundle

        try:
            download_bundle(name=spec.weights.name, bundle_dir=str(bundle_root), progress=True)
        except Exception as exc:  # network errors come in many types
            raise PTQError(f"model '{spec.name}': MONAI bundle '{spec.weights.name}' cannot be downloaded "
                           f"({type(exc).__name__}); put the bundle folder in {bundle_root}, or pass --weights") from None
    if not target.is_file():
        raise PTQError(f"MONAI bundle '{spec.weights.name}' has no {spec.weights.path}")
    if spec.weights.sha256 and file_sha256(target) != spec.weights.sha256:
        raise PTQError(f"MONAI bundle '{spec.weights.name}': {spec.weights.path} does not match the expected checksum")
    return folder


def find_release(spec: ModelSpec, weights_dir: str | os.PathLike | None = None) -> Path:
    """``spec``'s released checkpoint file in ``<cache>/weights/<name>`` (no library downloads these)."""
    from .artifact import default_cache_root

    folder = Path(weights_dir or default_cache_root() / "weights")
    path = folder / spec.weights.name
    if not path.is_file():
        raise PTQError(f"model '{spec.name}': its weights are the released checkpoint {spec.weights.name} "
                       f"({spec.weights.url or 'see the authors'}), which is not in {folder}: download it there by hand, "
                       "or pass --weights FILE")
    if spec.weights.sha256 and file_sha256(path) != spec.weights.sha256:
        raise PTQError(f"{path}: does not match the expected checksum of {spec.weights.name}")
    return path


def totalsegmentator_results() -> Path:
    """Where TotalSegmentator keeps its nnU-Net results folders (``$TOTALSEG_HOME_DIR`` or ``~/.totalsegmentator``)."""
    home = os.environ.get("TOTALSEG_HOME_DIR")
    return (Path(home) if home else Path.home() / ".totalsegmentator") / "nnunet" / "results"


def find_nnunet_folder(spec: ModelSpec, weights: str | os.PathLike | None = None, download: bool = False) -> Path:
    """``spec``'s nnU-Net configuration folder (``<dataset>/<Trainer>__<Plans>__<configuration>``): ``weights`` (the
    dataset folder or the configuration folder), else found in TotalSegmentator's results folder or
    ``<cache>/nnunet``; with ``download``, fetched by TotalSegmentator's own downloader first."""
    from .artifact import default_cache_root

    source = spec.weights
    if weights is not None:
        path = Path(weights)
        found = next((c for c in (path / source.path, path) if (c / "plans.json").is_file()), None)
        if found is None:
            raise PTQError(f"{path} is not the nnU-Net folder of model '{spec.name}': expected {source.name} (or its "
                           f"{source.path}) with plans.json inside")
        return found
    roots = [totalsegmentator_results(), default_cache_root() / "nnunet"]
    if download:
        _download_totalsegmentator(spec)
    for root in roots:
        if (root / source.name / source.path / "plans.json").is_file():
            return root / source.name / source.path
    raise PTQError(f"model '{spec.name}': its weights are the nnU-Net folder {source.name}/{source.path}, found in none "
                   f"of {', '.join(map(str, roots))}: pass --weights with the folder, or add --download to fetch it "
                   "with TotalSegmentator's downloader (pip install TotalSegmentator)")


def _download_totalsegmentator(spec: ModelSpec) -> None:
    """TotalSegmentator's own ``download_pretrained_weights(task_id)`` for a ``DatasetNNN_...`` folder."""
    try:
        from totalsegmentator.libs import download_pretrained_weights
    except ImportError:
        raise PTQError(f"model '{spec.name}': --download uses TotalSegmentator's downloader: pip install TotalSegmentator, "
                       f"or download {spec.weights.url or spec.weights.name} by hand and pass --weights") from None
    try:
        download_pretrained_weights(int(spec.weights.name[7:10]))
    except Exception as exc:  # network errors come in many types
        raise PTQError(f"model '{spec.name}': TotalSegmentator could not download {spec.weights.name} "
                       f"({type(exc).__name__}); download it by hand and pass --weights") from None


def _checkpoint_globals() -> list:
    """numpy scalar/dtype reconstruction, under numpy 2 (``numpy._core``) and numpy 1 (``numpy.core``) names."""
    from numpy._core.multiarray import scalar

    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")
                     and not name.startswith(("Object", "Void", "String", "Str", "Bytes"))]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


def load_checkpoint(path: str | os.PathLike):
    """``torch.load(weights_only=True)`` with numpy's scalars allow-listed (see the module docstring): tensors,
    containers, plain Python values and numpy numbers load; any other object refuses the whole file unread."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PTQError(f"{path.name} is not a plain state dict (it holds Python objects that would have to be unpickled: "
                       f"{_unpickle_reason(exc)}); save it with torch.save(model.state_dict(), file)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise PTQError(f"{path.name} cannot be read as a PyTorch checkpoint ({str(exc).splitlines()[0][:120]})") from None


def _unpickle_reason(exc: Exception) -> str:
    """torch's refusal names the global it would not load: keep that line, not the multi-paragraph advice."""
    lines = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line or "GLOBAL" in line]
    return (lines[0] if lines else str(exc).splitlines()[0])[:160]


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` dict from a checkpoint, refusing anything that needs unpickling code."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise PTQError(f"{path.name} is not a state dict of tensors; save it with torch.save(model.state_dict(), file)")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def load_network(spec: ModelSpec, weights_path: str | os.PathLike | None) -> torch.nn.Module:
    """``spec``'s network with the weights in ``weights_path`` (random init when None), in eval mode."""
    network = spec.build_network()
    if weights_path is None:
        return network
    state = load_state_dict(weights_path)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise PTQError(f"{Path(weights_path).name} does not fit model '{spec.name}': missing keys {few_keys(missing)}; "
                       f"unexpected keys {few_keys(unexpected)}")
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise PTQError(f"{Path(weights_path).name} does not fit model '{spec.name}': {len(wrong)} tensors have other shapes "
                       f"(e.g. {k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the network)")
    network.load_state_dict(state, strict=True)
    return network.eval()


def few_keys(keys: list[str], limit: int = 4) -> str:
    """Up to ``limit`` checkpoint keys for a message ("none" for none, "... and N more" beyond)."""
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
