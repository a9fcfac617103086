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


def resolve_weights(spec: ModelSpec, weights: str | os.PathLike | None = None, download_dir: str | os.PathLike | None = None) -> Path:
    """The weights file for ``spec``: the user's, the packaged one, or a downloaded MONAI bundle."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise PTQError(f"weights file {path} not found")
        return path
    source = spec.weights
    if source.kind == "packaged":
        path = PACKAGED_WEIGHTS / source.path
        if not path.is_file():
            raise PTQError(f"model '{spec.name}': its packaged weights {path.name} are missing from this installation; reinstall or pass --weights FILE")
        return path
    if source.kind == "monai_bundle":
        return find_bundle(spec, download_dir) / source.path
    raise PTQError(f"model '{spec.name}' has no pretrained weights: pass --weights FILE (a state dict for {spec.architecture})")


def find_bundle(spec: ModelSpec, bundle_dir: str | os.PathLike | None = None) -> Path:
    """The folder of ``spec``'s MONAI model-zoo bundle: found in the bundle cache (``<cache>/bundles/<name>``,
    put there by hand behind a proxy, or by an earlier download) or downloaded with ``monai.bundle`` (needs internet)."""
    from .artifact import default_cache_root

    bundle_root = Path(bundle_dir or default_cache_root() / "bundles")
    folder = bundle_root / spec.weights.name
    target = folder / spec.weights.path
    if not target.is_file():
        from monai.bundle import download

        try:
            download(name=spec.weights.name, bundle_dir=str(bundle_root), progress=True)
        except Exception as exc:  # network errors come in many types
            raise PTQError(f"model '{spec.name}': MONAI bundle '{spec.weights.name}' is not in {bundle_root} and cannot be "
                           f"downloaded ({type(exc).__name__}); put the bundle folder there, pass --bundle FOLDER|ZIP, "
                           "or pass --weights FILE") from None
    if not target.is_file():
        raise PTQError(f"MONAI bundle '{spec.weights.name}' has no {spec.weights.path}")
    if spec.weights.sha256 and file_sha256(target) != spec.weights.sha256:
        raise PTQError(f"MONAI bundle '{spec.weights.name}': {spec.weights.path} does not match the expected checksum")
    return folder


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
        raise PTQError(f"{Path(weights_path).name} does not fit model '{spec.name}': missing keys {_few(missing)}; "
                       f"unexpected keys {_few(unexpected)}")
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise PTQError(f"{Path(weights_path).name} does not fit model '{spec.name}': {len(wrong)} tensors have other shapes "
                       f"(e.g. {k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the network)")
    network.load_state_dict(state, strict=True)
    return network.eval()


def _few(keys: list[str], limit: int = 4) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
