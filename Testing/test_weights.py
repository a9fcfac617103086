"""engine_builder.weights: safe loading of state dicts, checkpoint wrappers, and mismatches named by key.

Covers: plain state dicts, ``{"state_dict": ...}`` / ``{"model": ...}`` / nnU-Net ``{"network_weights": ...}``
wrappers and DataParallel's ``module.`` prefix load into the network with identical outputs; missing and
unexpected keys and wrong shapes raise PTQError naming them; a pickled nn.Module and an object of a custom
class are refused WITHOUT being unpickled (a class whose unpickling would write a marker file proves it);
a damaged file and a missing file are clear errors; the shipped demo weights exist and fit (a FAILURE, not a
skip, when absent). Nothing is mocked.
"""

from __future__ import annotations

import pytest
import torch

from conftest import SHIPPED_DEMO_WEIGHTS
from engine_builder.errors import PTQError
from engine_builder.models import get_spec
from engine_builder.weights import load_network, load_state_dict, resolve_weights

DEMO = get_spec("demo")


class Booby:
    """Unpickling this writes a file: if the marker exists, the loader executed pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    network = DEMO.build_network()
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        y = network(x)
    return network, x, y


def _outputs_match(path, reference):
    _, x, y = reference
    loaded = load_network(DEMO, path)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "network_weights", "module_prefix", "wrapped_prefix"])
def test_wrappers_and_prefix_load_identically(tmp_path, reference, wrap):
    state = reference[0].state_dict()
    payload = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {"lr": torch.tensor(0.1)}},
        "network_weights": {"network_weights": state, "trainer_name": "nnUNetTrainer"},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
        "wrapped_prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    torch.save(payload, tmp_path / "w.pt")
    assert set(load_state_dict(tmp_path / "w.pt")) == set(state)
    _outputs_match(tmp_path / "w.pt", reference)


def test_missing_and_unexpected_keys_are_named(tmp_path, reference):
    state = dict(reference[0].state_dict())
    removed = sorted(state)[0]
    del state[removed]
    state["extra.head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(PTQError) as info:
        load_network(DEMO, tmp_path / "w.pt")
    message = str(info.value)
    assert "w.pt" in message and "demo" in message
    assert f"missing keys {removed}" in message
    assert "unexpected keys extra.head.weight" in message


def test_other_architecture_is_refused_with_key_lists(tmp_path):
    torch.save(get_spec("unet").build_network().state_dict(), tmp_path / "spleen.pt")
    with pytest.raises(PTQError, match=r"missing keys .*unexpected keys .*and \d+ more"):
        load_network(DEMO, tmp_path / "spleen.pt")


def test_wrong_shapes_are_named(tmp_path, reference):
    state = dict(reference[0].state_dict())
    key = next(k for k, v in state.items() if v.ndim == 5)
    state[key] = torch.zeros(2, 2, 3, 3, 3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(PTQError, match=f"{key}: \\(2, 2, 3, 3, 3\\) in the file"):
        load_network(DEMO, tmp_path / "w.pt")


def test_pickled_module_is_refused(tmp_path, reference):
    torch.save(reference[0], tmp_path / "whole_model.pt")
    with pytest.raises(PTQError, match="not a plain state dict"):
        load_state_dict(tmp_path / "whole_model.pt")


def test_custom_class_is_never_unpickled(tmp_path):
    marker = tmp_path / "UNPICKLED"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Booby(marker)}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(PTQError, match="evil.pt is not a plain state dict"):
        load_state_dict(tmp_path / "evil.pt")
    assert not marker.exists(), "the checkpoint's pickled code was executed"
    # Sanity check of the trap itself: an unrestricted load does run it.
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_non_tensor_values_and_damaged_files(tmp_path):
    torch.save({"a": torch.zeros(1), "b": [1, 2, 3]}, tmp_path / "mixed.pt")
    with pytest.raises(PTQError, match="not a state dict of tensors"):
        load_state_dict(tmp_path / "mixed.pt")
    (tmp_path / "damaged.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PTQError, match="damaged.pt cannot be read"):
        load_state_dict(tmp_path / "damaged.pt")
    with pytest.raises(PTQError, match="not found"):
        resolve_weights(DEMO, tmp_path / "absent.pt")


def test_model_without_weights_asks_for_them():
    with pytest.raises(PTQError, match="--weights"):
        resolve_weights(get_spec("segresnet"))


def test_shipped_demo_weights_exist_and_fit():
    """The demo weights ship with the package: missing or not fitting is a failure, never a skip."""
    assert SHIPPED_DEMO_WEIGHTS.is_file(), f"shipped demo weights missing: {SHIPPED_DEMO_WEIGHTS}"
    assert resolve_weights(DEMO) == SHIPPED_DEMO_WEIGHTS
    network = load_network(DEMO, SHIPPED_DEMO_WEIGHTS)
    with torch.no_grad():
        assert network(torch.zeros(1, 1, 32, 32, 32)).shape == (1, len(DEMO.labels), 32, 32, 32)
