#!/usr/bin/env python
"""Train the project's DEMO segmentation model (demo only, not for clinical use).

The network is ``get_spec("demo").build_network()`` (a small MONAI 3D UNet, 8 labels). It is trained
on synthetic phantoms from :mod:`engine_builder.phantom` together with the few real labelled CTs in
the shared test-data folder (TotalSegmentator test files; their labels are TotalSegmentator model
outputs, mapped by name onto the demo labels). The MSD spleen crop with its manual spleen label is
kept out of training and used only to report a held-out spleen Dice.

Every volume goes through the preprocessing the inference code applies: orientation RAS, resampling
to the spec's spacing (``SPEC.spacing_mm``, 1.5 mm; bilinear for images, nearest for labels), HU
window [-1000, 1000] -> [0, 1].

Typical use (from the repository root)::

    # 1. preprocess the real volumes once into a small compressed .npz cache (needs SimpleITK + MONAI)
    python scripts/train_demo_model.py --prepare-cache --data ../shared/data --cache .carry/train_data
    # 2. train (CUDA or CPU); reads the cache, falls back to --data when the cache is missing
    python scripts/train_demo_model.py --device cuda --steps 8000 --time-limit 420
    # 3. (optional) re-evaluate saved weights and draw the figures
    python scripts/train_demo_model.py --eval-only --device cpu

Distillation (stage 4): real CTs without (whole-chest) labels can be pseudo-labelled by a TEACHER
network run at its own spacing, e.g. the 3 mm model (commit 93a191a) on the chest CT::

    git show 93a191a:engine_builder/models/weights/demo_unet.pt > /tmp/demo_3mm.pt
    # writes .carry/train_data/chest_ct_teacher.npz (only the teacher caches; the others come from 1.)
    python scripts/train_demo_model.py --prepare-cache --teacher /tmp/demo_3mm.pt --teacher-spacing 3 \
        --teacher-volumes chest_ct
    # train with the teacher-labelled volumes added to the real training volumes
    python scripts/train_demo_model.py --device cuda --init engine_builder/models/weights/demo_unet.pt \
        --teacher-volumes chest_ct ...

Teacher labels are the teacher's argmax on the volume's own grid (``engine_builder.inference.
segment_volume``, FP32 torch), resampled (nearest) to the spec's grid with the image; everything
outside the body (largest connected component above -500 HU, holes filled per axial slice) is set
to background. A teacher-labelled volume is a TRAINING volume from then on (pseudo labels, not a
reference); evaluation marks it so when ``--teacher-volumes`` names it.

Outputs: weights (plain state dict, ``--out``), a JSON report (``--report``) and two PNG figures
(``--fig-dir``; skipped with a message when matplotlib is missing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine_builder.models import get_spec  # noqa: E402
from engine_builder.phantom import make_phantom  # noqa: E402

SPEC = get_spec("demo")
N_LABELS = len(SPEC.labels)
NAMES = [lab.name for lab in SPEC.labels]
ROI = 96
WIN = (-1000.0, 1000.0)

# Real volumes: cache name -> (image path, label path or None, kind of label). Paths relative to --data.
REAL = {
    "tseg_ct": ("totalsegmentator/example_ct.nii.gz", "totalsegmentator/example_seg_fast_force_split.nii.gz", "tseg"),
    "tseg_dicom": ("totalsegmentator/example_ct_dicom", "totalsegmentator/example_seg_dicom.nii.gz", "tseg"),
    "msd_spleen": ("msd_spleen/sub-spleen2_ct.nii.gz", "msd_spleen/sub-spleen2_ct_seg-manual.nii.gz", "spleen"),
    "chest_ct": ("chest_ct/lung_ct_phase00.nii.gz", None, None),
}
TRAIN_REAL = ("tseg_ct", "tseg_dicom")  # msd_spleen is held out; chest_ct has no labels

BONE_PREFIXES = ("vertebrae_", "rib_", "hip_", "femur_", "humerus_", "scapula_", "clavicula_")
BONE_NAMES = ("sternum", "sacrum", "skull", "costal_cartilages")


# ----------------------------------------------------------------------------------------------
# preprocessing (MONAI, exactly as the inference code does it)
# ----------------------------------------------------------------------------------------------


def preprocess(array_ijk: np.ndarray, affine_ras: np.ndarray, is_label: bool) -> np.ndarray:
    """Orientation RAS + resampling to SPEC.spacing_mm (+ HU window for images) with MONAI; returns [x, y, z]."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation, ScaleIntensityRange, Spacing

    t = MetaTensor(torch.as_tensor(np.ascontiguousarray(array_ijk), dtype=torch.float32)[None], affine=torch.as_tensor(affine_ras))
    t = Orientation(axcodes=SPEC.orientation)(t)
    t = Spacing(pixdim=SPEC.spacing_mm, mode="nearest" if is_label else "bilinear")(t)
    if not is_label:
        t = ScaleIntensityRange(a_min=WIN[0], a_max=WIN[1], b_min=0.0, b_max=1.0, clip=True)(t)
    return np.asarray(t.array[0])


def _sitk_read(path: Path):
    """Read a NIfTI file or a DICOM folder with SimpleITK: (array [i, j, k], RAS affine)."""
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = direction @ np.diag(img.GetSpacing())
    aff[:3, 3] = img.GetOrigin()
    return arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff  # LPS -> RAS


def map_tseg_labels(seg: np.ndarray, names: dict[str, str]) -> np.ndarray:
    """TotalSegmentator v2 class indices -> demo labels, by class name."""
    lut = np.zeros(max(int(k) for k in names) + 1, dtype=np.uint8)
    demo = {n: i for i, n in enumerate(NAMES)}
    for k, name in names.items():
        if name in ("liver", "spleen", "kidney_left", "kidney_right", "stomach"):
            lut[int(k)] = demo[name]
        elif name.startswith("lung_"):
            lut[int(k)] = demo["lung"]
        elif name.startswith(BONE_PREFIXES) or name in BONE_NAMES:
            lut[int(k)] = demo["bone"]
    return lut[np.clip(seg.astype(np.int64), 0, len(lut) - 1)]


def load_real_from_data(data: Path, name: str):
    """Preprocess one real volume from the raw files: (image float32 [0,1], labels uint8 or None)."""
    img_rel, lab_rel, kind = REAL[name]
    arr, aff = _sitk_read(data / img_rel)
    img = preprocess(arr.astype(np.float32), aff, False)
    if lab_rel is None:
        return img, None
    seg, saff = _sitk_read(data / lab_rel)
    if kind == "tseg":
        names = json.loads((data / "totalsegmentator/labels_total_v2.json").read_text())
        seg = map_tseg_labels(seg, names)
    else:
        seg = np.where(seg > 0, NAMES.index("spleen"), 0).astype(np.uint8)
    lab = preprocess(seg.astype(np.float32), saff, True).round().astype(np.uint8)
    if lab.shape != img.shape:
        raise RuntimeError(f"{name}: label grid {lab.shape} differs from image grid {img.shape}")
    return img, lab


def body_box(img: np.ndarray, margin: int = 6) -> tuple[slice, ...]:
    """Bounding box of the voxels above -900 HU (window units > 0.05), grown by ``margin`` voxels."""
    idx = np.argwhere(img > 0.05)
    if idx.size == 0:
        return tuple(slice(0, n) for n in img.shape)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, img.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def prepare_cache(data: Path, cache: Path) -> None:
    """Write ``<name>.npz`` per real volume: ``hu`` int16 (rounded HU after resampling, -1000..1000),
    ``lab`` uint8 (when labelled), ``offset`` of the stored box in the full grid and ``full_shape``.

    Training volumes are cropped to the body (air outside is what ``_crop`` pads with anyway), so the
    cache stays small enough to travel to a device; evaluation volumes are stored whole.
    """
    cache.mkdir(parents=True, exist_ok=True)
    for name in REAL:
        img, lab = load_real_from_data(data, name)
        box = body_box(img) if name in TRAIN_REAL else tuple(slice(0, n) for n in img.shape)
        arrays = {
            "hu": np.round(img[box] * (WIN[1] - WIN[0]) + WIN[0]).astype(np.int16),
            "offset": np.array([b.start for b in box]),
            "full_shape": np.array(img.shape),
            "spacing_mm": np.array(SPEC.spacing_mm),
        }
        if lab is not None:
            arrays["lab"] = lab[box]
        for old in (cache / f"{name}_img.npy", cache / f"{name}_lab.npy"):
            old.unlink(missing_ok=True)  # a stale cache of another spacing must not be read
        np.savez_compressed(cache / f"{name}.npz", **arrays)
        counts = np.bincount(arrays["lab"].ravel(), minlength=N_LABELS).tolist() if lab is not None else None
        print(f"cached {name}: {img.shape} stored {arrays['hu'].shape} label voxels {counts}")


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Body on a RAS grid [x, y, z]: largest connected component of HU > -500, holes filled per axial slice."""
    from scipy import ndimage

    comp, n = ndimage.label(hu > -500)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    body = comp == int(sizes.argmax())
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body


def prepare_teacher_cache(data: Path, cache: Path, teacher: Path, teacher_spacing: float, names) -> None:
    """Write ``<name>_teacher.npz`` (same layout as the training caches) with TEACHER labels.

    The teacher runs at ``teacher_spacing`` mm (the spec with only its spacing replaced) through the
    project's own inference (``segment_volume`` with a FP32 ``TorchEngine``); its label map on the
    volume's grid is resampled (nearest) to the spec's grid like any label, and set to background
    outside the body. Where a volume already has real labels (``REAL[name]`` with a label file),
    those are kept and the teacher only fills voxels the real labels leave as background with lung.
    """
    import dataclasses

    from engine_builder.backends.torch_backend import TorchEngine
    from engine_builder.inference import segment_volume
    from engine_builder.io import Volume as IOVolume
    from engine_builder.weights import load_network

    spec_t = dataclasses.replace(SPEC, spacing_mm=(teacher_spacing,) * 3)
    engine = TorchEngine(load_network(spec_t, teacher), "fp32", 2, "cpu")
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        img_rel, lab_rel, _ = REAL[name]
        arr, aff = _sitk_read(data / img_rel)
        t0 = time.time()
        seg = segment_volume(IOVolume(arr.astype(np.float32), aff), engine, spec_t).labels.array
        img = preprocess(arr.astype(np.float32), aff, False)
        tlab = preprocess(seg.astype(np.float32), aff, True).round().astype(np.uint8)
        hu = img * (WIN[1] - WIN[0]) + WIN[0]
        tlab[~body_mask(hu)] = 0
        if lab_rel is not None:  # keep the real labels; the teacher adds lung only where they have none
            _, lab = load_real_from_data(data, name)
            tlab = np.where((lab == 0) & (tlab == NAMES.index("lung")), tlab, lab).astype(np.uint8)
        box = body_box(img, margin=16)
        arrays = {
            "hu": np.round(hu[box]).astype(np.int16),
            "lab": tlab[box],
            "offset": np.array([b.start for b in box]),
            "full_shape": np.array(img.shape),
            "spacing_mm": np.array(SPEC.spacing_mm),
            "teacher": np.array(str(teacher.name)),
            "teacher_spacing_mm": np.array(spec_t.spacing_mm),
        }
        np.savez_compressed(cache / f"{name}_teacher.npz", **arrays)
        counts = np.bincount(arrays["lab"].ravel(), minlength=N_LABELS).tolist()
        print(f"cached {name}_teacher: {img.shape} stored {arrays['hu'].shape} teacher label voxels {counts} "
              f"({time.time() - t0:.0f}s)")


def chest_checks(img: np.ndarray, pred: np.ndarray) -> dict:
    """Label-free plausibility checks on a chest CT (model grid): lung outside the body, share of the
    air-like voxels inside the body (HU < -500) labelled lung, organ labels (1-5) in the upper two
    thirds of the slices (z >= nz / 3 on the RAS grid; the chest above the liver dome mostly)."""
    hu = img * (WIN[1] - WIN[0]) + WIN[0]
    body = body_mask(hu)
    lung = pred == NAMES.index("lung")
    air_in = (hu < -500) & body
    upper = np.zeros(pred.shape, bool)
    upper[:, :, pred.shape[2] // 3:] = True
    organs = (pred >= 1) & (pred <= 5) & upper
    ml = float(np.prod(SPEC.spacing_mm)) / 1000.0
    out = {
        "lung_total": int(lung.sum()),
        "lung_outside_body": int((lung & ~body).sum()),
        "lung_inside_body": int((lung & body).sum()),
        "air_like_inside_body": int(air_in.sum()),
        "air_like_inside_body_labelled_lung": int((air_in & lung).sum()),
        "organs_1to5_upper_two_thirds": int(organs.sum()),
        "organs_1to5_upper_by_label": [int(((pred == c) & upper).sum()) for c in range(1, 6)],
        "bone_outside_body": int(((pred == NAMES.index("bone")) & ~body).sum()),
        "body_voxels": int(body.sum()),
    }
    out["lung_outside_body_L"] = round(out["lung_outside_body"] * ml / 1000.0, 3)
    out["share_air_inside_body_labelled_lung"] = round(out["air_like_inside_body_labelled_lung"] / max(1, out["air_like_inside_body"]), 4)
    out["organs_1to5_upper_two_thirds_mL"] = round(out["organs_1to5_upper_two_thirds"] * ml, 1)
    out["bone_outside_body_mL"] = round(out["bone_outside_body"] * ml, 1)
    return out


def load_teacher(name: str, cache: Path):
    """A teacher-labelled training volume from ``<name>_teacher.npz``: (image float32 [0,1], labels)."""
    z = np.load(cache / f"{name}_teacher.npz")
    if not np.allclose(z["spacing_mm"], SPEC.spacing_mm):
        raise RuntimeError(f"{name}_teacher.npz was prepared at {z['spacing_mm'].tolist()} mm, the spec says {SPEC.spacing_mm}")
    return (z["hu"].astype(np.float32) - WIN[0]) / (WIN[1] - WIN[0]), z["lab"]


def load_real(name: str, data: Path, cache: Path):
    f = cache / f"{name}.npz"
    if f.exists():
        z = np.load(f)
        if not np.allclose(z["spacing_mm"], SPEC.spacing_mm):
            raise RuntimeError(f"{f} was prepared at {z['spacing_mm'].tolist()} mm, the spec says {SPEC.spacing_mm}")
        img = (z["hu"].astype(np.float32) - WIN[0]) / (WIN[1] - WIN[0])
        return img, (z["lab"] if "lab" in z.files else None)
    return load_real_from_data(data, name)


# ----------------------------------------------------------------------------------------------
# training data: phantom pool + real volumes, random crops
# ----------------------------------------------------------------------------------------------


def phantom_item(seed: int):
    """One phantom through the same preprocessing: (image float16, labels uint8)."""
    hu, lab, aff = make_phantom(seed)
    img = preprocess(hu.astype(np.float32), aff, False).astype(np.float16)
    lab = preprocess(lab.astype(np.float32), aff, True).round().astype(np.uint8)
    return img, lab


def make_pool(n: int, seed0: int, workers: int):
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return pool.map(phantom_item, range(seed0, seed0 + n), chunksize=2)
    return [phantom_item(s) for s in range(seed0, seed0 + n)]


class Volume:
    """A preprocessed volume with, per label, a subsample of voxel positions for foreground crops."""

    def __init__(self, img: np.ndarray, lab: np.ndarray, rng: np.random.Generator):
        self.img, self.lab = img, lab
        self.fg = {}
        flat = lab.ravel()
        for c in range(1, N_LABELS):
            idx = np.flatnonzero(flat == c)
            if idx.size:
                self.fg[c] = rng.choice(idx, size=min(idx.size, 2000), replace=False)


def _crop(arr: np.ndarray, center, size, fill):
    """Crop ``size`` around ``center`` with constant padding outside the array."""
    out = np.full(size, fill, dtype=arr.dtype)
    src, dst = [], []
    for c, s, n in zip(center, size, arr.shape):
        lo = int(c) - s // 2
        a0, a1 = max(lo, 0), min(lo + s, n)
        if a1 <= a0:
            return out
        src.append(slice(a0, a1))
        dst.append(slice(a0 - lo, a1 - lo))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def sample_crop(vol: Volume, rng: np.random.Generator, size):
    if vol.fg and rng.random() < 0.75:
        c = rng.choice(list(vol.fg))
        center = np.unravel_index(int(rng.choice(vol.fg[c])), vol.lab.shape)
        center = [int(ci + rng.integers(-size[a] // 3, size[a] // 3 + 1)) for a, ci in enumerate(center)]
    else:
        center = [int(rng.integers(0, n)) for n in vol.lab.shape]
    return _crop(vol.img, center, size, 0), _crop(vol.lab, center, size, 0)


class CropStream(torch.utils.data.IterableDataset):
    """Endless random crops (variable size for scale augmentation; resized to 96^3 on the device)."""

    def __init__(self, phantoms, reals, real_frac: float, seed: int, fov_prob: float = 0.0):
        self.phantoms, self.reals, self.real_frac, self.seed = phantoms, reals, real_frac, seed
        self.fov_prob = fov_prob

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            if self.reals and rng.random() < self.real_frac:
                vol = self.reals[int(rng.integers(len(self.reals)))]
            else:
                vol = self.phantoms[int(rng.integers(len(self.phantoms)))]
            scale = rng.uniform(0.85, 1.2)
            size = tuple(int(round(ROI * scale * rng.uniform(0.95, 1.05))) for _ in range(3))
            img, lab = sample_crop(vol, rng, size)
            if rng.random() < self.fov_prob:
                img, lab = fov_mask(img, lab, rng)
            yield torch.from_numpy(img.astype(np.float32)), torch.from_numpy(lab.astype(np.int64))


def fov_mask(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator):
    """Simulate a small field of view / thin slab: keep a random sub-box, air (0) and background outside.

    Sliding-window inference pads small volumes with 0 (= -1000 HU), so a cropped scan looks like
    organs next to air; this teaches the network to segment such crops from local appearance.
    """
    keep = []
    for a, n in enumerate(img.shape):
        frac = rng.uniform(0.4, 1.0) if a < 2 else rng.uniform(0.15, 1.0)
        m = max(8, int(n * frac))
        lo = int(rng.integers(0, n - m + 1))
        keep.append(slice(lo, lo + m))
    img2 = np.zeros_like(img)
    lab2 = np.zeros_like(lab)
    img2[tuple(keep)] = img[tuple(keep)]
    lab2[tuple(keep)] = lab[tuple(keep)]
    return img2, lab2


def collate(batch):
    """Resize each crop to 96^3 (trilinear image / nearest label) and stack."""
    import torch.nn.functional as F

    imgs, labs = [], []
    for img, lab in batch:
        if img.shape != (ROI, ROI, ROI):
            img = F.interpolate(img[None, None], size=(ROI,) * 3, mode="trilinear", align_corners=False)[0]
            lab = F.interpolate(lab[None, None].float(), size=(ROI,) * 3, mode="nearest")[0].long()
        else:
            img, lab = img[None], lab[None]
        imgs.append(img)
        labs.append(lab)
    return torch.stack(imgs), torch.stack(labs)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Intensity augmentation in window units ([0,1] = 2000 HU): scale, shift, noise; no flips."""
    b = x.shape[0]
    dev = x.device
    scale = 1.0 + (torch.rand(b, 1, 1, 1, 1, generator=gen) - 0.5) * 0.16
    shift = (torch.rand(b, 1, 1, 1, 1, generator=gen) - 0.5) * 0.04
    sigma = torch.rand(b, 1, 1, 1, 1, generator=gen) * 0.012
    noise = torch.randn(x.shape, generator=gen) * sigma
    return ((x - 0.5) * scale.to(dev) + 0.5 + shift.to(dev) + noise.to(dev)).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def segment(net, img: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Sliding-window prediction on a preprocessed volume: (labels uint8, max softmax prob float16)."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None].to(device)
    logits = sliding_window_inference(x, (ROI,) * 3, 4, net, overlap=SPEC.overlap, mode="gaussian")
    prob = torch.softmax(logits.float(), 1)[0]
    conf, pred = prob.max(0)
    return pred.cpu().numpy().astype(np.uint8), conf.cpu().numpy().astype(np.float16)


def dice_table(pred: np.ndarray, ref: np.ndarray, labels) -> dict:
    out = {}
    for c in labels:
        p, r = pred == c, ref == c
        if r.sum() == 0:
            out[NAMES[c]] = {"dice": None, "ref_voxels": 0, "pred_voxels": int(p.sum())}
        else:
            out[NAMES[c]] = {
                "dice": round(float(2 * (p & r).sum() / (p.sum() + r.sum())), 4),
                "ref_voxels": int(r.sum()),
                "pred_voxels": int(p.sum()),
            }
    return out


def figure(img, pred, path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        print(f"matplotlib missing: figure {path} skipped")
        return False
    colors = np.array([lab.color for lab in SPEC.labels], dtype=float) / 255.0
    colors[3] = (0.2, 0.6, 1.0)  # distinguish the two kidneys in the figure
    colors[5] = (0.3, 0.75, 0.3)  # stomach: the spec colour is too close to the liver's
    colors[6] = (0.3, 0.8, 0.9)  # lung in a visible colour
    colors[7] = (1.0, 1.0, 0.3)
    cmap = ListedColormap(colors)
    nx, ny, nz = img.shape
    ax_slices = np.linspace(0.3, 0.75, 3) * nz
    views = [("axial", int(k)) for k in ax_slices] + [("coronal", ny // 2)]
    fig, axes = plt.subplots(2, len(views), figsize=(4 * len(views), 8))
    for col, (kind, idx) in enumerate(views):
        if kind == "axial":  # radiological display: patient right on the image left, anterior up
            im2, lb2 = img[::-1, :, idx].T[::-1], pred[::-1, :, idx].T[::-1]
        else:  # coronal: patient right on the image left, superior up
            im2, lb2 = img[::-1, idx, :].T[::-1], pred[::-1, idx, :].T[::-1]
        aspect = 1.0
        for row in range(2):
            a = axes[row, col]
            a.imshow(im2, cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
            if row == 1:
                a.imshow(np.ma.masked_equal(lb2, 0), cmap=cmap, vmin=0, vmax=N_LABELS - 1, alpha=0.45, aspect=aspect, interpolation="nearest")
            a.set_title(f"{kind} {idx}" + (" + labels" if row else ""), fontsize=9)
            a.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in range(1, N_LABELS)]
    fig.legend(handles, NAMES[1:], loc="lower center", ncol=N_LABELS - 1, fontsize=9)
    fig.suptitle(title + f"  (demo model, not for clinical use; image shown on the {SPEC.spacing_mm[0]:g} mm grid, window -1000..1000 HU)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    print(f"wrote {path}")
    return True


def evaluate(net, args, device: str) -> dict:
    net.eval()
    res = {}
    for name in REAL:
        try:
            img, lab = load_real(name, args.data, args.cache)
        except Exception as exc:  # data folder absent: say so and go on
            print(f"skip {name}: {exc}")
            continue
        t0 = time.time()
        pred, conf = segment(net, img, device)
        entry = {
            "grid": list(img.shape),
            "spacing_mm": list(SPEC.spacing_mm),
            "held_out": name not in TRAIN_REAL and name not in args.teacher_volumes,
            "teacher_labelled_training_volume": name in args.teacher_volumes,
            "predicted_voxels": np.bincount(pred.ravel(), minlength=N_LABELS).tolist(),
            "median_max_softmax": round(float(np.median(conf.astype(np.float32))), 4),
            "fraction_max_softmax_below_0.6": round(float((conf < 0.6).mean()), 5),
            "seconds": round(time.time() - t0, 2),
        }
        if lab is not None:
            labels = [NAMES.index("spleen")] if name == "msd_spleen" else list(range(1, N_LABELS))
            entry["dice"] = dice_table(pred, lab, labels)
        if name == "chest_ct":
            entry["chest_checks"] = chest_checks(img, pred)
            print("chest_checks", json.dumps(entry["chest_checks"]))
        tf = args.cache / f"{name}_teacher.npz"
        if tf.exists():  # agreement with the teacher's pseudo labels (on the stored body box)
            z = np.load(tf)
            o = z["offset"]
            tl = z["lab"]
            if tuple(z["full_shape"]) == pred.shape:
                sub = pred[o[0]:o[0] + tl.shape[0], o[1]:o[1] + tl.shape[1], o[2]:o[2] + tl.shape[2]]
                entry["dice_vs_teacher_labels"] = dice_table(sub, tl, list(range(1, N_LABELS)))
        res[name] = entry
        print(name, json.dumps(entry.get("dice", entry["predicted_voxels"])))
        if args.fig_dir is not None and name in ("chest_ct", "msd_spleen"):
            fname = "demo_chest_ct.png" if name == "chest_ct" else "demo_msd_spleen.png"
            figure(img, pred, args.fig_dir / fname, f"{name}: demo model prediction")
    return res


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared test-data folder")
    p.add_argument("--cache", type=Path, default=REPO / ".carry" / "train_data", help="preprocessed .npz cache")
    p.add_argument("--prepare-cache", action="store_true", help="only preprocess the real volumes into --cache")
    p.add_argument("--eval-only", action="store_true", help="evaluate --out weights and draw figures, no training")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=8000, help="maximum optimiser steps")
    p.add_argument("--time-limit", type=float, default=0.0, help="stop training after this many seconds (0: none)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--phantoms", type=int, default=256, help="size of the pre-generated phantom pool")
    p.add_argument("--real-frac", type=float, default=0.4, help="probability that a crop comes from a real volume")
    p.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 1)))
    p.add_argument("--fov-prob", type=float, default=0.3, help="probability of the small-field-of-view augmentation")
    p.add_argument("--init", type=Path, default=None, help="start from these weights (fine-tuning stage)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", type=Path, default=None,
                   help="with --prepare-cache: teacher weights; writes <name>_teacher.npz for --teacher-volumes only")
    p.add_argument("--teacher-spacing", type=float, default=3.0, help="spacing (mm) the teacher runs at")
    p.add_argument("--teacher-volumes", nargs="*", default=[], choices=sorted(REAL),
                   help="real volumes pseudo-labelled by the teacher; training adds <name>_teacher.npz from --cache")
    p.add_argument("--quant-noise", action="store_true",
                   help="simulate 8-bit rounding in every convolution while fine-tuning (scripts/quant_noise.py)")
    p.add_argument("--out", type=Path, default=REPO / "engine_builder/models/weights/demo_unet.pt")
    p.add_argument("--report", type=Path, default=REPO / "docs/models/demo_training.json")
    p.add_argument("--fig-dir", type=Path, default=REPO / "docs/models")
    args = p.parse_args(argv)

    if args.prepare_cache:
        if args.teacher is not None:
            prepare_teacher_cache(args.data, args.cache, args.teacher, args.teacher_spacing, args.teacher_volumes)
        else:
            prepare_cache(args.data, args.cache)
        return 0

    device = args.device
    torch.manual_seed(args.seed)
    net = SPEC.build_network()
    report = {}
    if args.eval_only:
        net.load_state_dict(torch.load(args.out, map_location="cpu", weights_only=True), strict=True)
        if args.report.exists():
            report = json.loads(args.report.read_text())
        net.to(device)
        report["evaluation"] = evaluate(net, args, device)
        report["evaluation_device"] = device
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1) + "\n")
        return 0

    from monai.losses import DiceCELoss

    if args.init is not None:
        net.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True), strict=True)
        print(f"initialised from {args.init}")

    t_start = time.time()
    rng = np.random.default_rng(args.seed)
    reals = []
    for name in TRAIN_REAL:
        try:
            img, lab = load_real(name, args.data, args.cache)
            reals.append(Volume(img.astype(np.float16), lab, rng))
            print(f"real {name}: {img.shape}")
        except Exception as exc:
            print(f"real volume {name} unavailable ({exc}); training on phantoms only for it")
    for name in args.teacher_volumes:
        img, lab = load_teacher(name, args.cache)  # no fallback: the teacher labels must have been prepared
        reals.append(Volume(img.astype(np.float16), lab, rng))
        print(f"teacher-labelled {name}: {img.shape} label voxels {np.bincount(lab.ravel(), minlength=N_LABELS).tolist()}")
    print(f"generating {args.phantoms} phantoms with {args.workers} workers ...", flush=True)
    pool = make_pool(args.phantoms, 1000 * (args.seed + 1), args.workers)
    phantoms = [Volume(img, lab, rng) for img, lab in pool]
    t_pool = time.time() - t_start
    print(f"phantom pool ready in {t_pool:.1f}s", flush=True)

    loader = torch.utils.data.DataLoader(
        CropStream(phantoms, reals, args.real_frac, args.seed, args.fov_prob),
        batch_size=args.batch,
        num_workers=args.workers,
        collate_fn=collate,
        pin_memory=device.startswith("cuda"),
        prefetch_factor=4 if args.workers else None,
        persistent_workers=bool(args.workers),
        multiprocessing_context="fork" if args.workers else None,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )
    noise = None
    if args.quant_noise:
        from quant_noise import add_quantization_noise

        noise = add_quantization_noise(net)
        print(f"simulating 8-bit rounding in {len(noise)} convolutions")
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    use_amp = device.startswith("cuda")
    gen = torch.Generator().manual_seed(args.seed)
    t_train = time.time()
    step, losses, log = 0, [], []
    net.train()
    for x, y in loader:
        progress = step / args.steps
        if args.time_limit > 0:
            progress = max(progress, (time.time() - t_train) / args.time_limit)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / 200)
        lr = args.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        x = augment(x, gen).to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = net(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % 100 == 0 or step == 1:
            m = float(np.mean(losses[-100:]))
            el = time.time() - t_train
            log.append({"step": step, "loss": round(m, 4), "lr": round(lr, 6), "seconds": round(el, 1)})
            print(f"step {step} loss {m:.4f} lr {lr:.2e} {el:.0f}s ({step / el:.2f} it/s)", flush=True)
    t_done = time.time()
    net.eval()
    if noise is not None:
        from quant_noise import remove_quantization_noise

        remove_quantization_noise(net, noise)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, args.out)
    print(f"saved {args.out}")

    report = {
        "model": "demo",
        "note": "DEMO ONLY, not for clinical use. Dice on tseg_ct/tseg_dicom is on TRAINING volumes "
        "(reference = TotalSegmentator model output); msd_spleen is held out (manual spleen label).",
        "steps": step,
        "batch": args.batch,
        "roi": ROI,
        "lr": args.lr,
        "phantom_pool": args.phantoms,
        "real_fraction": args.real_frac,
        "train_real_volumes": [n for n in TRAIN_REAL],
        "train_teacher_labelled_volumes": list(args.teacher_volumes),
        "seed": args.seed,
        "fov_prob": args.fov_prob,
        "quant_noise": bool(args.quant_noise),
        "init": str(args.init) if args.init is not None else None,
        "device": device if not device.startswith("cuda") else f"{device} ({torch.cuda.get_device_name()})",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds_phantom_pool": round(t_pool, 1),
        "seconds_training": round(t_done - t_train, 1),
        "final_loss_mean_last_100": round(float(np.mean(losses[-100:])), 4) if losses else None,
        "loss_log": log,
        "command": " ".join(["python", "scripts/train_demo_model.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    report["evaluation"] = evaluate(net, args, device)
    report["evaluation_device"] = device
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
