"""A user's TorchScript file, loaded without unpickling Python objects, and exported to ONNX.

``torch.jit.load`` reads a TorchScript archive (a zip with the compiled ``code/`` and ``constants.pkl``) with
TorchScript's own C++ unpickler, which builds tensors and TorchScript values only. Anything else that ends in
``.pt`` (a ``torch.save`` pickle of a Python class, a plain ``pickle`` file) is refused before ``torch.jit.load``
sees it, by looking at the archive's entries: such files are never unpickled.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import PTQError


def check_archive(path: Path) -> None:
    """Refuse anything that is not a TorchScript archive, without unpickling it."""
    if not path.is_file():
        raise PTQError(f"TorchScript file {path} not found")
    if not zipfile.is_zipfile(path):
        raise PTQError(f"{path.name} is not a TorchScript archive (not a zip: a pickle or another format); "
                       "save the model with torch.jit.save(torch.jit.script(model) or torch.jit.trace(model, x), file)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    has_code = any("/code/" in name for name in names)
    has_constants = any(name.endswith("/constants.pkl") for name in names)
    if not (has_code and has_constants):
        raise PTQError(f"{path.name} is a torch.save checkpoint of Python objects, not TorchScript (no compiled code "
                       "inside); it is not unpickled: save the model with torch.jit.save(torch.jit.script(model), file)")


def load_torchscript(path: str | Path):
    """The TorchScript module in ``path`` on the CPU, in eval mode."""
    import torch

    path = Path(path)
    check_archive(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise PTQError(f"{path.name} cannot be loaded as TorchScript ({str(exc).splitlines()[0][:160]})") from None
    return module.eval()
