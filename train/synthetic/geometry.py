"""The voxel grid and soft geometric primitives (capsules, ellipsoids, chains) the phantoms are drawn with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# ----------------------------------------------------------------------------------------------- grid and rendering
@dataclass
class Grid:
    """A voxel grid in the body frame.

    Args:
        shape: ``(D, H, W)`` voxels (slices, rows, columns).
        spacing: ``(sz, sy, sx)`` in mm.
        origin: body-frame ``(z, y, x)`` in mm of voxel ``[0, 0, 0]``'s centre.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def __post_init__(self) -> None:
        d, h, w = self.shape
        sz, sy, sx = self.spacing
        oz, oy, ox = self.origin
        self.z = (oz + sz * np.arange(d, dtype=np.float32)).reshape(d, 1, 1)
        self.y = (oy + sy * np.arange(h, dtype=np.float32)).reshape(1, h, 1)
        self.x = (ox + sx * np.arange(w, dtype=np.float32)).reshape(1, 1, w)
        self.voxel = float(min(self.spacing))
        # Origin and spacing per float dtype for the vectorised :meth:`box`: an array minus a Python float is
        # computed in the array's dtype, so float32 corners must meet float32 copies to give the same indices.
        self._frame = {np.dtype(t): (np.asarray(self.origin, dtype=t), np.asarray(self.spacing, dtype=t))
                       for t in (np.float32, np.float64)}
        self._stop = np.asarray(self.shape, dtype=np.int64)

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index slices covering the body-frame box ``lo..hi`` (each ``(z, y, x)`` mm); None when outside."""
        if (isinstance(lo, np.ndarray) and isinstance(hi, np.ndarray) and lo.shape == hi.shape == (3,)
                and lo.dtype == hi.dtype and lo.dtype in self._frame):
            # Three axes at once (called for every tree branch): the same floor/ceil in the same dtype as below.
            o, s = self._frame[lo.dtype]
            a = np.maximum(np.floor((lo - o) / s).astype(np.int64), 0)
            b = np.minimum(np.ceil((hi - o) / s).astype(np.int64) + 1, self._stop)
            if (a >= b).any():
                return None
            a, b = a.tolist(), b.tolist()
            return slice(a[0], b[0]), slice(a[1], b[1]), slice(a[2], b[2])
        out = []
        for axis in range(3):
            s, o, n = self.spacing[axis], self.origin[axis], self.shape[axis]
            a = int(np.floor((lo[axis] - o) / s))
            b = int(np.ceil((hi[axis] - o) / s)) + 1
            a, b = max(a, 0), min(b, n)
            if a >= b:
                return None
            out.append(slice(a, b))
        return tuple(out)

    def coords(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable ``(z, y, x)`` coordinate arrays (mm) of a box from :meth:`box`."""
        return self.z[box[0]], self.y[:, box[1]], self.x[:, :, box[2]]

    def points_mm(self, flat_index: np.ndarray) -> np.ndarray:
        """Body-frame ``(N, 3)`` positions (z, y, x) of flat voxel indices."""
        k, j, i = np.unravel_index(flat_index, self.shape)
        return np.stack(
            [self.z.ravel()[k], self.y.ravel()[j], self.x.ravel()[i]], axis=1
        ).astype(np.float64)


def capsule_fraction(grid: Grid, a, b, ra: float, rb: float, *, min_radius: float = 0.0):
    """Anti-aliased occupancy (0..1) of a tapered capsule from point ``a`` to ``b`` (``(z, y, x)`` mm).

    Radii ``ra``/``rb`` are in mm; ``min_radius`` (mm) keeps thin objects (wires) from vanishing between voxel
    centres. Returns ``(box, fraction)`` or ``None`` when the capsule misses the grid. The fraction ramps linearly
    over one voxel across the surface, a cheap stand-in for the partial-volume effect.
    """
    return capsule_fractions(grid, a, b, [(ra, rb)], min_radius=min_radius)[0]


def capsule_fractions(grid: Grid, a, b, radii, *, min_radius: float = 0.0) -> list:
    """:func:`capsule_fraction` of several capsules on the same axis ``a`` -> ``b``, ``radii`` ``[(ra, rb), ...]``
    with the largest first (an airway wall and its lumen): the projection ``t`` and the distance to the axis are
    computed once, on the largest box, and each capsule's ramp on its own (contained) box. Each voxel's value is
    the same float32 computation as for a single capsule, so the results are identical."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    out, t, dist, outer = [], None, None, None
    for ra, rb in radii:
        ra, rb = max(ra, min_radius), max(rb, min_radius)
        r = max(ra, rb) + grid.voxel
        box = grid.box(lo - r, hi + r)
        if box is None:
            out.append(None)
            continue
        if outer is None:
            outer = box
            t, dist = _axis_distance(grid, box, a, b)
        elif any(s.start < o.start or s.stop > o.stop for s, o in zip(box, outer)):
            raise ValueError("capsule_fractions: radii must come largest first")
        sub = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer))
        ts, ds = t[sub], dist[sub]
        sd = ds - (ra + ts * (rb - ra))  # float64 when the radii are NumPy float64 scalars, as before
        frac = np.minimum(np.maximum(0.5 - sd / grid.voxel, 0.0), 1.0)
        out.append((box, frac.astype(np.float32, copy=False)))
    return out


def _axis_distance(grid: Grid, box, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over ``box``: ``t``, the clipped projection (0..1) of each voxel centre on the segment ``a`` -> ``b``
    (float32 mm), and the distance (mm) from the voxel centre to the point ``a + t (b - a)``."""
    z, y, x = grid.coords(box)
    d = b - a
    dd = float(d @ d) or 1e-6
    (a0, a1, a2), (d0, d1, d2) = a, d
    # The offsets from a are (n, 1, 1), (1, n, 1), (1, 1, n) arrays, computed once; every full-box step below is
    # the same float32 operation, in the same order, as t = clip(((z-a0) d0 + (y-a1) d1 + (x-a2) d2) / dd) and
    # dist = sqrt((z-a0 - t d0)^2 + (y-a1 - t d1)^2 + (x-a2 - t d2)^2), but in place (fewer temporaries).
    zr, yr, xr = z - a0, y - a1, x - a2
    t = zr * d0 + yr * d1 + xr * d2  # broadcasts to the full box only at the last addition
    t /= dd
    np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)
    dist = np.multiply(t, d0)
    np.subtract(zr, dist, out=dist)
    np.square(dist, out=dist)
    tmp = np.multiply(t, d1)
    np.subtract(yr, tmp, out=tmp)
    dist += np.square(tmp, out=tmp)
    np.multiply(t, d2, out=tmp)
    np.subtract(xr, tmp, out=tmp)
    dist += np.square(tmp, out=tmp)
    np.sqrt(dist, out=dist)
    return t, dist


def ellipsoid_fraction(grid: Grid, center, axes, rotation: np.ndarray | None = None, *, grow: float = 0.0):
    """Anti-aliased occupancy of an ellipsoid with semi-axes ``axes`` (mm, in its own frame) grown by ``grow`` mm.

    ``rotation`` (3x3, body frame <- ellipsoid frame, rows/cols in (z, y, x) order) orients it. Returns
    ``(box, fraction)`` or ``None``.
    """
    c = np.asarray(center, dtype=np.float32)
    ax = np.asarray(axes, dtype=np.float32) + grow
    reach = float(ax.max()) + grid.voxel
    box = grid.box(c - reach, c + reach)
    if box is None:
        return None
    z, y, x = grid.coords(box)
    dz, dy, dx = z - c[0], y - c[1], x - c[2]
    if rotation is None:
        u, v, w = dz, dy, dx
    else:
        rt = np.asarray(rotation, dtype=np.float32).T  # ellipsoid frame <- body frame
        u = rt[0, 0] * dz + rt[0, 1] * dy + rt[0, 2] * dx
        v = rt[1, 0] * dz + rt[1, 1] * dy + rt[1, 2] * dx
        w = rt[2, 0] * dz + rt[2, 1] * dy + rt[2, 2] * dx
    rho = np.sqrt((u / ax[0]) ** 2 + (v / ax[1]) ** 2 + (w / ax[2]) ** 2)
    # Distance to the surface is approximately (rho - 1) * local radius; the smallest semi-axis is a safe scale.
    frac = np.clip(0.5 - (rho - 1.0) * float(ax.min()) / grid.voxel, 0.0, 1.0)
    return box, frac.astype(np.float32, copy=False)


def blend(volume: np.ndarray, placed, value, *, where: np.ndarray | None = None, scale: float = 1.0) -> None:
    """Blend ``value`` (HU, scalar or array shaped like the box) into ``volume`` with a ``placed`` occupancy."""
    if placed is None:
        return
    box, frac = placed
    if scale != 1.0:
        frac = frac * scale
    if where is not None:
        frac = frac * where[box]
    sub = volume[box]
    sub += frac * (value - sub)


def paint_max(target: np.ndarray, placed) -> None:
    """Accumulate an occupancy into ``target`` with max (idempotent where pieces overlap)."""
    if placed is None:
        return
    box, frac = placed
    np.maximum(target[box], frac, out=target[box])


def chain_fraction(grid: Grid, target: np.ndarray, points, radii, *, min_radius: float = 0.0) -> None:
    """Max-accumulate the occupancy of a polyline of tapered capsules (``points`` (N, 3) mm, ``radii`` (N,) mm)."""
    for i in range(len(points) - 1):
        paint_max(target, capsule_fraction(grid, points[i], points[i + 1], radii[i], radii[i + 1],
                                           min_radius=min_radius))


def chain_placed(grid: Grid, points, radii, *, min_radius: float = 0.0):
    """Occupancy of a capsule chain as ``(box, fraction)`` over the chain's own bounding box (or None)."""
    points = np.asarray(points, dtype=np.float32)
    r = float(np.max(radii)) + 2 * grid.voxel
    box = grid.box(points.min(axis=0) - r, points.max(axis=0) + r)
    if box is None:
        return None
    local = np.zeros(tuple(s.stop - s.start for s in box), dtype=np.float32)
    origin = tuple(grid.origin[i] + box[i].start * grid.spacing[i] for i in range(3))
    sub = Grid(local.shape, grid.spacing, origin)
    chain_fraction(sub, local, points, radii, min_radius=min_radius)
    return box, local


def splat_segments(grid: Grid, segments) -> np.ndarray:
    """Volume fraction (0..1) occupied by thin tapered tubes ``[(a, b, (ra, rb)), ...]`` (mm), by trilinear
    splatting of points every half voxel along each segment, each carrying its slab volume ``pi r^2 ds``.

    For tubes thinner than a voxel this gives the partial-volume occupancy of :func:`capsule_fraction` at a
    fraction of the cost (one ``bincount`` for all segments). The points of all segments are built in one pass
    (``n`` points per segment, cached ``linspace`` fractions) and the eight trilinear corners from per-axis
    weights and bounds; every value is the same float64 operation as a per-segment loop, in the same order, so
    the bincount sums the same numbers in the same sequence.
    """
    step = 0.5 * grid.voxel
    a_all, d_all, ts, counts, r0, dr, ds = [], [], [], [], [], [], []
    for a, b, (ra, rb) in segments:
        a = np.asarray(a)
        d = np.asarray(b) - a
        length = float(np.sqrt(d.dot(d)))  # what np.linalg.norm computes for a real vector, without its overhead
        n = max(2, int(np.ceil(length / step)) + 1)
        a_all.append(a)
        d_all.append(d)
        ts.append(_unit_steps(n))
        counts.append(n)
        r0.append(ra)
        dr.append(rb - ra)
        ds.append(length / (n - 1))
    t = np.concatenate(ts)
    seg = np.repeat(np.arange(len(counts)), counts)
    p = np.asarray(a_all, dtype=np.float64)[seg] + t[:, None] * np.asarray(d_all, dtype=np.float64)[seg]
    r = np.asarray(r0, dtype=np.float64)[seg] + t * np.asarray(dr, dtype=np.float64)[seg]
    w = np.pi * r * r * np.asarray(ds, dtype=np.float64)[seg]
    w = w / float(np.prod(grid.spacing))
    idx = (p - np.asarray(grid.origin)) / np.asarray(grid.spacing)
    base = np.floor(idx).astype(np.int64)
    frac = idx - base
    d_, h_, w_ = grid.shape
    shape = np.asarray(grid.shape)
    side = (1.0 - frac, frac)  # trilinear weight per axis for offset 0 / 1
    inside = ((base >= 0) & (base < shape), (base + 1 >= 0) & (base + 1 < shape))
    lin = (base[:, 0] * h_ + base[:, 1]) * w_ + base[:, 2]
    flats, weights = [], []
    for corner in range(8):
        oz, oy, ox = (corner >> 2) & 1, (corner >> 1) & 1, corner & 1
        ok = inside[oz][:, 0] & inside[oy][:, 1] & inside[ox][:, 2]
        flats.append((lin + (oz * h_ * w_ + oy * w_ + ox))[ok])
        weights.append((w * (side[oz][:, 0] * side[oy][:, 1] * side[ox][:, 2]))[ok])
    out = np.bincount(np.concatenate(flats), weights=np.concatenate(weights), minlength=d_ * h_ * w_)
    return np.minimum(out, 1.0).astype(np.float32).reshape(grid.shape)


_UNIT_STEPS: dict[int, np.ndarray] = {}


def _unit_steps(n: int) -> np.ndarray:
    """``np.linspace(0, 1, n)``, cached (segment lengths repeat; read-only so no caller can alter the cache)."""
    out = _UNIT_STEPS.get(n)
    if out is None:
        out = np.linspace(0.0, 1.0, n)
        out.flags.writeable = False
        _UNIT_STEPS[n] = out
    return out


def smooth_path(points, n: int = 24) -> np.ndarray:
    """Catmull-Rom resampling of a few control points ``(K, 3)`` into ``n`` points along a smooth curve."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        t = np.linspace(0, 1, n)[:, None]
        return p[0] + t * (p[-1] - p[0])
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    seg = len(p) - 1
    out = []
    for s in np.linspace(0, seg, n):
        i = min(int(s), seg - 1)
        t = s - i
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    return np.asarray(out)


def rotation_zyx(axial_deg: float = 0.0, coronal_deg: float = 0.0) -> np.ndarray:
    """Rotation (body <- object frame, (z, y, x) order): ``axial_deg`` about z, then ``coronal_deg`` about y."""
    a, c = np.deg2rad(axial_deg), np.deg2rad(coronal_deg)
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])  # turns y towards x
    ry = np.array([[np.cos(c), 0, -np.sin(c)], [0, 1, 0], [np.sin(c), 0, np.cos(c)]])  # turns z towards x
    return rz @ ry
