"""Synthetic CT-like torso phantoms with organ labels, for training and testing the demo model.

The phantoms are crude: smooth, randomly deformed ellipsoid-like organs placed in anatomically
plausible positions inside an elliptic body outline, with CT-like intensities in Hounsfield units
(HU) and mild noise. They are good enough to teach a small network where organs are and what they
look like at 3 mm, and to exercise orientation/spacing handling; they are not anatomy.

Label values are the demo model's: 0 background, 1 liver, 2 spleen, 3 kidney_left,
4 kidney_right, 5 stomach, 6 lung, 7 bone.

Coordinates: RAS means the world x axis increases towards the patient's Right, y towards
Anterior, z towards Superior (this is what ``monai.transforms.Orientation(axcodes="RAS")`` and
nibabel use; DICOM/ITK LPS is the same with x and y negated). So in RAS millimetres the liver sits
at larger x than the spleen. Internally the generator paints in a patient frame (u, y, z) in mm
with u = -x pointing to the patient's Left, which reads naturally ("spleen at +u"). The returned
affine maps voxel indices (i, j, k, 1) to RAS millimetres (nibabel convention); depending on the
seed the volume is stored RAS-like (positive diagonal) or LPS-like (negative x and y entries), and
sometimes with a reversed slice axis, so that orientation handling gets exercised.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["LABELS", "make_phantom"]

#: label value -> name (the demo model's label set)
LABELS = {
    0: "background",
    1: "liver",
    2: "spleen",
    3: "kidney_left",
    4: "kidney_right",
    5: "stomach",
    6: "lung",
    7: "bone",
}

LIVER, SPLEEN, KIDNEY_L, KIDNEY_R, STOMACH, LUNG, BONE = 1, 2, 3, 4, 5, 6, 7


class _Canvas:
    """A grid in the painting frame (u = -x towards Left, y Anterior, z Superior; mm) being painted."""

    def __init__(self, shape, spacing, origin):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.axes = [origin[a] + np.arange(self.shape[a], dtype=np.float32) * self.spacing[a] for a in range(3)]
        self.hu = np.full(self.shape, -1000.0, dtype=np.float32)
        self.lab = np.zeros(self.shape, dtype=np.uint8)

    def box(self, lo, hi):
        """Index slices of the voxels whose centres lie in the mm box [lo, hi] (None when empty)."""
        sl = []
        for a in range(3):
            i0 = int(np.searchsorted(self.axes[a], lo[a], side="left"))
            i1 = int(np.searchsorted(self.axes[a], hi[a], side="right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)

    def grids(self, sl):
        """Broadcastable x, y, z coordinate arrays (mm) for a box."""
        x = self.axes[0][sl[0]][:, None, None]
        y = self.axes[1][sl[1]][None, :, None]
        z = self.axes[2][sl[2]][None, None, :]
        return x, y, z

    def paint(self, sl, mask, hu, label=None):
        """Set HU (scalar or array on the box) and optionally a label where ``mask`` is true."""
        if sl is None or not mask.any():
            return
        h = self.hu[sl]
        np.copyto(h, np.asarray(hu, dtype=np.float32), where=mask)
        if label is not None:
            np.copyto(self.lab[sl], np.uint8(label), where=mask)


def _wobble(rng, amp, n=3):
    """A smooth random radial perturbation r -> r * (1 + d(u)) on normalised coordinates u.

    ``d`` is a sum of separable products of sinusoids, so it costs only a few multiplications per
    voxel even on large boxes.
    """
    ks = rng.uniform(0.6, 2.2, size=(n, 3)).astype(np.float32)
    ph = rng.uniform(0, 2 * np.pi, size=(n, 3)).astype(np.float32)
    am = (amp * rng.uniform(0.5, 1.0, size=n) * np.sqrt(2.0 / n)).astype(np.float32)

    def d(u, v, w):
        out = 0.0
        for m in range(n):
            out = out + am[m] * np.sin(ks[m, 0] * u + ph[m, 0]) * np.sin(ks[m, 1] * v + ph[m, 1]) * np.sin(
                ks[m, 2] * w + ph[m, 2]
            )
        return out

    return d


def _blob(cv, rng, center, semi, amp=0.12):
    """Box and mask of a randomly deformed ellipsoid (centre and semi-axes in mm)."""
    c = np.asarray(center, dtype=np.float32)
    a = np.asarray(semi, dtype=np.float32)
    pad = 1.0 + 2.0 * amp
    sl = cv.box(c - a * pad, c + a * pad)
    if sl is None:  # outside the field of view: an empty box
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=bool)
    x, y, z = cv.grids(sl)
    u, v, w = (x - c[0]) / a[0], (y - c[1]) / a[1], (z - c[2]) / a[2]
    r2 = u * u + v * v + w * w
    d = _wobble(rng, amp)(u, v, w)
    return sl, r2 < (1.0 + d) ** 2


def _draw_geometry(rng):
    """Random spacing (mm) and shape for a volume when the caller gives none."""
    inplane = rng.uniform(0.7, 1.5)
    slice_mm = rng.uniform(1.5, 5.0)
    fov = rng.uniform(300.0, 480.0)
    n_xy = int(np.clip(round(fov / inplane), 96, 256))
    n_z = int(np.clip(round(rng.uniform(180.0, 520.0) / slice_mm), 40, 160))
    return (n_xy, n_xy, n_z), (inplane, inplane, slice_mm)


def make_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one synthetic CT-like torso phantom.

    Args:
        seed: everything (geometry, anatomy, intensities, noise, orientation) is drawn from
            ``numpy.random.default_rng(seed)``; the same arguments give the same arrays.
        shape: array shape (i, j, k) in voxels; drawn from the seed when None (in-plane 96-256,
            40-160 slices).
        spacing_mm: voxel size along (i, j, k) in mm (positive); drawn from the seed when None
            (in-plane 0.7-1.5 mm, slices 1.5-5 mm).

    Returns:
        ``(hu, labels, affine)``: ``hu`` int16 CT values in HU (air -1000, fat about -100, soft
        tissue 20-60, bone 300-1200), indexed [i, j, k]; ``labels`` uint8 of the same shape with
        the values in :data:`LABELS`; ``affine`` 4x4 float64 mapping voxel (i, j, k, 1) to RAS mm.
        The absolute diagonal of ``affine[:3, :3]`` equals the spacing; the sign of each axis
        (RAS-like or LPS-like storage) is drawn from the seed.
    """
    rng = np.random.default_rng(seed)
    d_shape, d_spacing = _draw_geometry(rng)
    if spacing_mm is None:
        if shape is not None:  # keep the drawn field of view sensible for the given shape
            fov = rng.uniform(300.0, 480.0)
            ext = rng.uniform(180.0, 520.0)
            spacing_mm = (fov / shape[0], fov / shape[1], float(np.clip(ext / shape[2], 1.0, 6.0)))
        else:
            spacing_mm = d_spacing
    if shape is None:
        shape = d_shape
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing_mm)
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"need 3 positive sizes and spacings, got shape={shape}, spacing_mm={spacing}")

    # --- patient and field of view (painting frame u = -x, y, z in mm; origin = body centre near L1).
    # Below, the variable ``x`` is this u coordinate: positive = patient's Left. ---
    s = rng.uniform(0.85, 1.15)  # body size
    ax0, ay0 = 160.0 * s * rng.uniform(0.92, 1.1), 112.0 * s * rng.uniform(0.9, 1.15)
    zd = rng.uniform(-10.0, 40.0)  # diaphragm (left dome top) height
    z_center = rng.uniform(-170.0, 170.0)
    y_shift = rng.uniform(-25.0, 15.0)
    ext = np.array(shape) * np.array(spacing)
    origin = np.array(
        [
            -ext[0] / 2 + rng.uniform(-20, 20),
            -ext[1] / 2 + y_shift + ext[1] * 0.04,
            z_center - ext[2] / 2,
        ]
    )
    cv = _Canvas(shape, spacing, origin)
    full = tuple(slice(0, n) for n in shape)
    x, y, z = cv.grids(full)

    # --- body outline: elliptic cross-section varying along z, narrower neck, legs at the bottom ---
    zz = cv.axes[2]
    ax_z = ax0 * (1.0 + 0.05 * np.sin(zz / 90.0 + rng.uniform(0, 6.28)))
    ay_z = ay0 * (1.0 + 0.06 * np.sin(zz / 110.0 + rng.uniform(0, 6.28)))
    neck = np.clip((zz - 270.0) / 40.0, 0.0, 1.0)
    ax_z = ax_z * (1 - neck) + 62.0 * s * neck
    ay_z = ay_z * (1 - neck) + 60.0 * s * neck
    ax_z = ax_z.astype(np.float32)[None, None, :]
    ay_z = ay_z.astype(np.float32)[None, None, :]
    yb = np.where(y < 0, y * 1.08, y)  # slightly flatter back
    theta = np.arctan2(yb / ay0, x / ax0)  # (nx, ny, 1): the outline wobble does not vary along z
    rwob = 1.0 + 0.03 * np.sin(2 * theta + rng.uniform(0, 6.28)) + 0.02 * np.sin(3 * theta + rng.uniform(0, 6.28))
    rho2 = (np.abs(x) ** 2.2) * (ax_z ** -2.2) + (yb * yb) * (ay_z ** -2.0)
    rho = np.sqrt(rho2 / (rwob * rwob).astype(np.float32))  # 1 on the skin
    body = rho <= 1.0
    legs = zz[None, None, :] < -270.0
    if legs.any():
        leg_r = 72.0 * s
        leg = ((np.abs(x) - 0.55 * ax0) ** 2 + (y + 0.1 * ay0) ** 2) < leg_r**2
        body = np.where(legs, leg, body)
    fat_mm = rng.uniform(8.0, 35.0)
    inner = rho < 1.0 - fat_mm / ay0
    wall = rho < 1.0 - (fat_mm + 12.0) / ay0
    cv.paint(full, body, rng.uniform(-115, -85))  # subcutaneous fat
    cv.paint(full, inner & body, rng.uniform(35, 60))  # muscle wall
    cav = wall & body
    cv.paint(full, cav, rng.uniform(-95, -60))  # visceral fat, overwritten by organs below
    # posterior muscles (paraspinal) and psoas as soft tissue
    sl, m = _blob(cv, rng, (0, -0.62 * ay0, -60), (0.45 * ax0, 0.32 * ay0, 400), 0.05)
    cv.paint(sl, m & body[sl], rng.uniform(40, 60))

    # --- bowel-like loops in the abdomen/pelvis (background label), some holding gas ---
    loop_hu = rng.uniform(15, 40)
    for _ in range(int(rng.integers(25, 45))):
        c = (rng.uniform(-0.75, 0.75) * ax0, rng.uniform(-0.45, 0.8) * ay0, rng.uniform(-330.0, zd - 40.0))
        r = rng.uniform(10.0, 26.0)
        sl, m = _blob(cv, rng, c, (r, r * rng.uniform(0.7, 1.3), r * rng.uniform(0.7, 1.6)), 0.15)
        m = m & cav[sl]
        cv.paint(sl, m, loop_hu + rng.uniform(-8, 8))
        if rng.random() < 0.35:
            sl, m2 = _blob(cv, rng, c, (0.6 * r, 0.6 * r, 0.6 * r), 0.1)
            cv.paint(sl, m2 & cav[sl], rng.uniform(-950, -700))

    # --- diaphragm height field and thoracic cavity ---
    dome = zd + 38.0 * np.clip(1.0 - ((np.abs(x) - 0.42 * ax0) / (0.55 * ax0)) ** 2, 0, 1)
    dome = dome + np.where(x < 0, 15.0, 0.0) - 45.0 * np.clip(-y / ay0, 0, 1) ** 2  # right higher, posterior recess
    dome = dome.astype(np.float32)
    thorax = (rho < 0.84) & (z > dome) & (z < 265.0 + rng.uniform(-10, 10))
    cv.paint(full, thorax, -850.0, LUNG)
    # mediastinum / heart (background)
    heart_c = (18.0 * s, 0.12 * ay0, zd + 55.0)
    sl, m = _blob(cv, rng, heart_c, (62 * s, 0.5 * ay0, 55 * s), 0.08)
    cv.paint(sl, m & (rho[sl] < 0.86), rng.uniform(30, 60), 0)
    sl = cv.box((-35, -0.75 * ay0, zd), (35, 0.9 * ay0, 330))
    if sl is not None:
        mx, my, mz = cv.grids(sl)
        med = (np.abs(mx - 5.0) < 24.0 + 6.0 * np.sin(mz / 40.0)) & (rho[sl] < 0.86)
        cv.paint(sl, med & (my > -0.55 * ay0), rng.uniform(-60, 20), 0)
    # lung texture: small vessels as random small blobs
    for _ in range(int(rng.integers(60, 120))):
        c = (rng.uniform(-0.8, 0.8) * ax0, rng.uniform(-0.8, 0.7) * ay0, rng.uniform(zd, 260.0))
        r = rng.uniform(1.5, 4.0)
        sl, m = _blob(cv, rng, c, (r, r, r * rng.uniform(1.0, 3.0)), 0.05)
        cv.paint(sl, m & (cv.lab[sl] == LUNG), rng.uniform(-300, 40))

    # --- great vessels (background; contrast level shared with kidneys) ---
    contrast = rng.uniform(0.0, 1.0)
    vessel_hu = 40.0 + 200.0 * contrast
    yv0 = -0.62 * ay0
    for xc, yc, z0, z1, r in ((18.0, yv0 + 38.0, -170.0, zd + 110.0, 12.0), (-22.0, yv0 + 45.0, -170.0, zd + 20.0, 11.0)):
        sl = cv.box((xc - r, yc - r, z0), (xc + r, yc + r, z1))
        if sl is not None:
            vx, vy, _ = cv.grids(sl)
            cv.paint(sl, ((vx - xc) ** 2 + (vy - yc) ** 2 < r * r) & body[sl], vessel_hu, 0)

    below = z < dome - 3.0
    organ_ok = (rho < 0.86) & below

    # --- liver (patient's right = negative u), with a left lobe across the midline ---
    liver_hu = rng.uniform(45, 75) + 40.0 * contrast
    lz = zd - 30.0
    sl, m = _blob(cv, rng, (-0.42 * ax0, 0.02 * ay0, lz), (0.52 * ax0, 0.78 * ay0, 80 * s), 0.12)
    cv.paint(sl, m & organ_ok[sl], liver_hu, LIVER)
    sl, m = _blob(cv, rng, (-0.02 * ax0, 0.42 * ay0, lz + 12), (0.33 * ax0, 0.32 * ay0, 42 * s), 0.12)
    cv.paint(sl, m & organ_ok[sl], liver_hu, LIVER)
    # gallbladder (background)
    sl, m = _blob(cv, rng, (-0.22 * ax0, 0.3 * ay0, lz - 50), (16 * s, 18 * s, 32 * s), 0.1)
    cv.paint(sl, m & organ_ok[sl], rng.uniform(0, 20), 0)

    # --- spleen (left, posterior) ---
    sl, m = _blob(cv, rng, (0.58 * ax0, -0.38 * ay0, zd - 32), (26 * s, 0.4 * ay0, 48 * s), 0.12)
    cv.paint(sl, m & organ_ok[sl], rng.uniform(38, 55) + 50.0 * contrast, SPLEEN)

    # --- stomach (left, anterior), possibly with gas anteriorly ---
    sc = np.array([0.28 * ax0, 0.25 * ay0, zd - 42])
    sa = np.array([0.3 * ax0, 0.3 * ay0, 50 * s])
    sl, m = _blob(cv, rng, sc, sa, 0.15)
    if m.size:
        m = m & organ_ok[sl]
        st_hu = rng.uniform(10, 35) + np.zeros(m.shape, dtype=np.float32)
        if rng.random() < 0.6:
            _, gy, _ = cv.grids(sl)
            st_hu = np.where(gy > sc[1] + sa[1] * rng.uniform(-0.2, 0.6), -950.0, st_hu)
        cv.paint(sl, m, st_hu, STOMACH)

    # --- pancreas-ish soft tissue strip (background) ---
    sl, m = _blob(cv, rng, (0.05 * ax0, -0.05 * ay0, zd - 85), (0.35 * ax0, 14 * s, 14 * s), 0.1)
    cv.paint(sl, m & organ_ok[sl], rng.uniform(30, 50), 0)

    # --- kidneys (left higher), cortex brighter than the sinus ---
    k_hu = 30.0 + 130.0 * contrast
    for lab_val, sign, dz in ((KIDNEY_L, 1.0, -88.0), (KIDNEY_R, -1.0, -102.0)):
        kc = np.array([sign * 0.32 * ax0, -0.48 * ay0, zd + dz + rng.uniform(-10, 10)])
        ka = np.array([27.0 * s, 28.0 * s, 52.0 * s])
        sl, m = _blob(cv, rng, kc, ka, 0.08)
        m = m & (rho[sl] < 0.86)
        kx, ky, kz = cv.grids(sl)
        r_in = ((kx - kc[0] + sign * 10.0) / ka[0]) ** 2 + ((ky - kc[1]) / ka[1]) ** 2 + ((kz - kc[2]) / ka[2]) ** 2
        k_val = np.where(r_in < 0.3, 0.55 * k_hu + rng.uniform(-10, 10), k_hu)
        cv.paint(sl, m, k_val, lab_val)

    # --- spine: vertebral bodies with discs, posterior elements, spinal canal ---
    sl = cv.box((-75, yv0 - 75, -400), (75, yv0 + 30, 400))
    if sl is not None:
        vx, vy, vz = cv.grids(sl)
        ycurve = yv0 + 8.0 * np.sin(vz / 150.0)
        level = 28.0 * s
        disc = np.mod(vz + rng.uniform(0, level), level) < 6.0
        rb = (vx / 21.0) ** 2 + ((vy - ycurve) / 16.0) ** 2
        vb = (rb < 1.0) & ~disc
        cortex = vb & (rb > 0.7)
        canal = (vx**2 + (vy - ycurve + 26.0) ** 2) < 9.0**2
        ring = ((vx**2 + (vy - ycurve + 26.0) ** 2) < 16.0**2) & ~canal & ~disc
        spinous = (np.abs(vx) < 5.0) & (vy < ycurve - 36.0) & (vy > ycurve - 62.0) & ~disc
        transverse = (np.abs(vx) < 42.0) & (np.abs(vy - ycurve + 24.0) < 5.0) & ~disc
        bm = body[sl]
        cv.paint(sl, (rb < 1.0) & disc & bm, rng.uniform(60, 100), 0)
        cv.paint(sl, vb & bm, rng.uniform(180, 320), BONE)
        cv.paint(sl, cortex & bm, rng.uniform(600, 1000), BONE)
        cv.paint(sl, (ring | spinous | transverse) & bm, rng.uniform(450, 900), BONE)
        cv.paint(sl, canal & bm, rng.uniform(10, 30), 0)

    # --- ribs (slope down anteriorly; anterior gap), sternum, scapulae ---
    sl = cv.box((-1.2 * ax0, -1.2 * ay0, zd - 110), (1.2 * ax0, 1.2 * ay0, 290))
    if sl is not None:
        r_rho, (rx, ry, rz) = rho[sl], cv.grids(sl)
        spacing_r = 24.0 * s
        zeff = rz + 38.0 * (ry / ay0 + 1.0) / 2.0
        rib_band = np.mod(zeff + rng.uniform(0, spacing_r), spacing_r) < rng.uniform(8.0, 11.0)
        shell = (r_rho > 0.84) & (r_rho < 0.91)
        gap = (ry > 0.3 * ay0) & (np.abs(rx) < 0.22 * ax0)
        rib = shell & rib_band & ~gap & (rz < 270.0) & (rz > zd - 110 + 20.0 * (ry / ay0 + 1.0))
        cv.paint(sl, rib & body[sl], rng.uniform(350, 700), BONE)
        sternum = (np.abs(rx) < 14.0) & (r_rho > 0.84) & (r_rho < 0.93) & (ry > 0) & (rz > zd + 25) & (rz < 245)
        cv.paint(sl, sternum & body[sl], rng.uniform(300, 550), BONE)
        scap = (np.abs(ry + 0.8 * ay0 - 0.35 * (np.abs(rx) - 0.6 * ax0)) < 4.0)
        scap = scap & (np.abs(rx) > 0.35 * ax0) & (np.abs(rx) < 0.85 * ax0) & (rz > 120) & (rz < 250) & (r_rho < 0.99)
        cv.paint(sl, scap & body[sl] & (r_rho > 0.88), rng.uniform(400, 800), BONE)

    # --- pelvis: iliac wings, sacrum, femoral heads/shafts ---
    zp = -150.0 + rng.uniform(-20, 20)
    sl = cv.box((-1.1 * ax0, -ay0, zp - 140), (1.1 * ax0, ay0, zp + 40))
    if sl is not None:
        px, py, pz = cv.grids(sl)
        pr = np.sqrt((px / (0.78 * ax0)) ** 2 + ((py + 0.2 * ay0) / (0.62 * ay0)) ** 2)
        wing = (np.abs(pr - 0.95) < 0.05) & (py < 0.25 * ay0) & (np.abs(px) > 0.3 * ax0) & (pz > zp - 60) & (pz < zp + 30)
        sacrum = (np.abs(px) < 45.0) & (np.abs(py - yv0 - 5.0 - 0.2 * (pz - zp)) < 9.0) & (pz > zp - 90) & (pz < zp + 10)
        heads = None
        for sgn in (-1.0, 1.0):
            hc = (sgn * 0.5 * ax0, -0.05 * ay0, zp - 100)
            h = (px - hc[0]) ** 2 + (py - hc[1]) ** 2 + (pz - hc[2]) ** 2 < (24.0 * s) ** 2
            shaft = ((px - hc[0] * 1.05) ** 2 + (py - hc[1]) ** 2 < (13.0 * s) ** 2) & (pz < hc[2])
            heads = (h | shaft) if heads is None else (heads | h | shaft)
        cv.paint(sl, (wing | sacrum | heads) & body[sl], rng.uniform(350, 800), BONE)
    sl = cv.box((-ax0 * 1.2, -ay0, -900), (ax0 * 1.2, ay0, zp - 140))
    if sl is not None:
        fx, fy, _ = cv.grids(sl)
        shafts = (np.abs(np.abs(fx) - 0.52 * ax0) ** 2 + (fy + 0.05 * ay0) ** 2) < (13.0 * s) ** 2
        cv.paint(sl, shafts & body[sl], rng.uniform(700, 1200), BONE)

    # --- arms along the body (sometimes), with humeri ---
    if rng.random() < 0.35:
        for sgn in (-1.0, 1.0):
            ac = (sgn * (ax0 + 55.0 * s), -0.1 * ay0)
            sl = cv.box((ac[0] - 48 * s, ac[1] - 48 * s, -120), (ac[0] + 48 * s, ac[1] + 48 * s, 260))
            if sl is None:
                continue
            gx, gy, _ = cv.grids(sl)
            r2 = (gx - ac[0]) ** 2 + (gy - ac[1]) ** 2
            cv.paint(sl, r2 < (45.0 * s) ** 2, rng.uniform(-80, 50), 0)
            cv.paint(sl, r2 < (11.0 * s) ** 2, rng.uniform(600, 1100), BONE)

    # --- scanner table under the patient (background) ---
    if rng.random() < 0.7:
        ty = -(ay0 * 1.1) - rng.uniform(8, 30)
        sl = cv.box((-ax0 * 1.6, ty - 60, -2000), (ax0 * 1.6, ty, 2000))
        if sl is not None:
            tx, tyy, _ = cv.grids(sl)
            curve = ty - 40.0 + 40.0 * (tx / (1.6 * ax0)) ** 2
            cv.paint(sl, np.broadcast_to(np.abs(tyy - curve) < 4.0, cv.hu[sl].shape), rng.uniform(-200, 300), 0)

    # --- image formation: mild blur (partial volume) and noise ---
    sigma_mm = rng.uniform(0.6, 1.2)
    sigma_vox = [min(sigma_mm / sp, 1.0) for sp in spacing]
    hu = ndimage.gaussian_filter(cv.hu, sigma_vox, truncate=2.0)
    noise = rng.standard_normal(shape, dtype=np.float32)
    hu += noise * np.float32(rng.uniform(10.0, 30.0))
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    lab = cv.lab

    # --- storage orientation ---
    # The canvas axis 0 runs along u = -x (towards the patient's Left), so as painted the array is
    # LAS-stored: RAS x = -(u0 + i * su). Then flip axes as drawn from the seed.
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-spacing[0], spacing[1], spacing[2]])
    affine[:3, 3] = [-origin[0], origin[1], origin[2]]
    if rng.random() < 0.5:
        flips = [False, True, False]  # LPS-like storage, as DICOM-derived volumes often are
    else:
        flips = [True, False, False]  # RAS-like storage
    if rng.random() < 0.2:
        flips[2] = True
    for a, f in enumerate(flips):
        if f:
            affine[:3, 3] += affine[:3, a] * (shape[a] - 1)
            affine[:3, a] *= -1.0
            hu = np.flip(hu, axis=a)
            lab = np.flip(lab, axis=a)
    return np.ascontiguousarray(hu), np.ascontiguousarray(lab), affine
