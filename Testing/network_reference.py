"""Deterministic weights, inputs and output summaries for comparing a network with a reference implementation.

The reference outputs in ``Testing/data/*_reference.json`` were computed once, outside this repository, by
loading ``deterministic_state`` into the authors' own network class (named with its commit in each file)
and running it on ``smooth_input``; the tests load the same weights into this package's class and compare
``output_summary``. Everything here is integer hashing and float64 arithmetic, so the weights and inputs
are identical on every machine and torch version (no random number generator is involved).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _uniform(name: str, count: int) -> np.ndarray:
    """``count`` values in [-1, 1) from an integer hash of the element index, seeded by ``name``."""
    index = np.arange(count, dtype=np.uint64) + np.uint64(zlib.crc32(name.encode()))
    mixed = (index * np.uint64(2654435761)) % np.uint64(1 << 32)
    mixed ^= mixed >> np.uint64(16)
    mixed = (mixed * np.uint64(73244475)) % np.uint64(1 << 32)
    mixed ^= mixed >> np.uint64(16)
    return mixed.astype(np.float64) / float(1 << 31) - 1.0


def deterministic_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A state dict with well-scaled, reproducible values for parameter ``shapes`` (name -> shape).

    Weight matrices and kernels get variance 1/fan_in, normalisation scales 1 +- 0.1, biases +-0.05, position
    embeddings +-0.02, so activations stay in a normal range through deep networks.
    """
    state = {}
    for name, shape in shapes.items():
        shape = tuple(shape)
        count = int(np.prod(shape)) if shape else 1
        u = _uniform(name, count)
        if "pos" in name and "embed" in name:
            values = 0.02 * u
        elif len(shape) == 1 and name.endswith("weight"):
            values = 1.0 + 0.1 * u  # norm scales (and a PReLU slope)
        elif len(shape) == 1:
            values = 0.05 * u
        else:
            values = u * np.sqrt(3.0 * shape[0] / count)  # uniform with variance 1 / fan_in
        state[name] = torch.from_numpy(values.reshape(shape).astype(np.float32))
    return state


def smooth_input(shape: tuple[int, ...]) -> torch.Tensor:
    """A smooth, image-like float32 tensor of ``shape`` (batch, channels, D, H, W), values in about [-1.5, 1.5]."""
    batch, channels, *spatial = shape
    d, h, w = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in spatial), indexing="ij")
    volumes = [np.sin(2 * np.pi * (d / 17 + c / 5)) * np.cos(2 * np.pi * h / 23) + 0.5 * np.sin(2 * np.pi * (w + d) / 29 + b)
               for b in range(batch) for c in range(channels)]
    return torch.from_numpy(np.stack(volumes).reshape(shape).astype(np.float32))


def sample_voxels(spatial: tuple[int, int, int], count: int = 24) -> list[tuple[int, int, int]]:
    """``count`` fixed voxel positions spread over a volume of shape ``spatial``."""
    return [((7 * k + 1) % spatial[0], (11 * k + 3) % spatial[1], (13 * k + 5) % spatial[2]) for k in range(count)]


def output_summary(logits: torch.Tensor) -> dict:
    """Per-channel means and the logits at ``sample_voxels`` of the first image: a small fingerprint of the output."""
    first = logits[0].double()
    return {
        "shape": list(logits.shape),
        "channel_mean": first.mean(dim=(1, 2, 3)).tolist(),
        "voxels": [first[:, d, h, w].tolist() for d, h, w in sample_voxels(tuple(first.shape[1:]))],
    }


def summary_difference(reference: dict, value: dict) -> float:
    """Largest absolute difference between two summaries, relative to the largest reference magnitude."""
    assert reference["shape"] == value["shape"], (reference["shape"], value["shape"])
    ref = np.concatenate([np.ravel(reference["channel_mean"]), np.ravel(reference["voxels"])])
    val = np.concatenate([np.ravel(value["channel_mean"]), np.ravel(value["voxels"])])
    return float(np.abs(ref - val).max() / np.abs(ref).max())
