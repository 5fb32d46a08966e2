"""Deterministic building blocks shared by the kernels (no randomness here).

Each helper reproduces one operation of the reference code (spec/corruptions.md 1.2) with a faster formulation;
the docstring says where the result is exact and where it is not.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=64)
def gaussian_kernel1d(sigma: float, truncate: float) -> np.ndarray:
    """SciPy's discrete Gaussian (radius ``int(truncate * sigma + 0.5)``, normalised to sum 1)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def gaussian_blur_nearest(img: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scikit-image ``gaussian(img, sigma, mode="nearest", truncate)`` on the two spatial axes (channels apart).

    Same kernel as SciPy; OpenCV's separable filter with replicated border = SciPy's ``nearest`` mode.
    """
    k = gaussian_kernel1d(float(sigma), float(truncate))
    return cv2.sepFilter2D(img, -1, k, k, borderType=cv2.BORDER_REPLICATE)


def gaussian_blur_scipy(img: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scikit-image ``gaussian(img, sigma, mode="nearest", channel_axis=-1)`` exactly: the SciPy call it makes."""
    sigmas = (sigma, sigma, 0.0)[: img.ndim]
    return ndimage.gaussian_filter(img, sigmas, mode="nearest", truncate=truncate)


@functools.lru_cache(maxsize=32)
def _reflect_filter_matrix(n: int, sigma: float, truncate: float) -> np.ndarray:
    # Column j = filtered unit impulse at j, so M @ u equals gaussian_filter1d(u, mode="reflect") exactly, also when
    # the kernel is wider than the signal (elastic severity 1: radius 512 on 224 samples).
    return ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode="reflect", truncate=truncate).astype(np.float32)


def gaussian_blur_reflect_2d(field: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """SciPy ``gaussian_filter(field, sigma, mode="reflect", truncate)`` of a 2-D field.

    A separable OpenCV filter when the kernel is shorter than the field; otherwise (elastic severity 1: radius 512 on
    224 samples, several reflections) two products with the exact filter matrices, by OpenCV's gemm because NumPy's
    multithreaded BLAS is slower than single-threaded code on small matrices when the cores are shared. Both in
    float32 (~1e-7 relative to SciPy's float64; the reference casts the displacement field to float32 anyway).
    """
    h, w = field.shape
    k = gaussian_kernel1d(float(sigma), float(truncate))
    if k.size // 2 < min(h, w):  # one reflection suffices: OpenCV's BORDER_REFLECT is SciPy's "reflect"
        # float32 (twice the SIMD width; ~1e-7 relative difference, the reference casts the field to float32 anyway)
        src = np.asarray(field, dtype=np.float32)
        return cv2.sepFilter2D(src, -1, k.astype(np.float32), k.astype(np.float32), borderType=cv2.BORDER_REFLECT)
    mh = _reflect_filter_matrix(h, float(sigma), float(truncate))
    mw = mh if w == h else _reflect_filter_matrix(w, float(sigma), float(truncate))
    tmp = cv2.gemm(mh, np.ascontiguousarray(field, dtype=np.float32), 1.0, None, 0.0)
    return cv2.gemm(tmp, mw, 1.0, None, 0.0, flags=cv2.GEMM_2_T)


@functools.lru_cache(maxsize=16)
def disk(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's anti-aliased disk kernel (spec 1.2)."""
    if radius <= 8:
        coords = np.arange(-8, 8 + 1)
        ksize = (3, 3)
    else:
        coords = np.arange(-radius, radius + 1)
        ksize = (5, 5)
    xx, yy = np.meshgrid(coords, coords)
    kernel = np.asarray(xx**2 + yy**2 <= radius**2, dtype=np.float32)
    kernel /= kernel.sum()
    return cv2.GaussianBlur(kernel, ksize=ksize, sigmaX=alias_blur)


@functools.lru_cache(maxsize=64)
def _zoom_plan(size: int, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # ImageNet-C clipped_zoom along one axis: crop ch = ceil(size / z) centrally, scipy zoom (order 1,
    # grid_mode=False: output i samples input i * (ch - 1) / (out - 1)), trim (out - size) // 2 centrally.
    ch = int(math.ceil(size / z))
    top = (size - ch) // 2
    out = int(round(ch * z))
    trim = (out - size) // 2
    pos = np.arange(trim, trim + size, dtype=np.float64) * ((ch - 1) / (out - 1) if out > 1 else 0.0)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, ch - 1)
    frac = pos - i0
    i1 = np.minimum(i0 + 1, ch - 1)
    return i0 + top, i1 + top, frac


def clipped_zoom(img: np.ndarray, z: float) -> np.ndarray:
    """ImageNet-C ``clipped_zoom`` (centre crop, bilinear ``scipy.ndimage.zoom``, central trim) for H x W (x C).

    Separable linear interpolation written as gathers; equals SciPy's order-1 zoom up to float rounding.
    """
    h, w = img.shape[:2]
    r0, r1, fr = _zoom_plan(h, float(z))
    c0, c1, fc = _zoom_plan(w, float(z))
    dtype = img.dtype if img.dtype.kind == "f" else np.float32
    fr = fr.astype(dtype)
    fc = fc.astype(dtype)
    extra = (1,) * (img.ndim - 2)
    rows = img[r0] + fr.reshape(-1, 1, *extra) * (img[r1] - img[r0])
    return rows[:, c0] + fc.reshape(1, -1, *extra) * (rows[:, c1] - rows[:, c0])


@functools.lru_cache(maxsize=64)
def _zoom_maps(h: int, w: int, z: float) -> tuple[np.ndarray, np.ndarray]:
    r0, _, fr = _zoom_plan(h, z)
    c0, _, fc = _zoom_plan(w, z)
    rows = (r0 + fr).astype(np.float32)
    cols = (c0 + fc).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(cols[None, :], (h, w))), np.ascontiguousarray(
        np.broadcast_to(rows[:, None], (h, w))
    )


def zoom_sum(img: np.ndarray, factors: tuple[float, ...] | list[float]) -> np.ndarray:
    """Sum of ``clipped_zoom(img, z)`` over ``factors`` for a float32 H x W x C image.

    Each zoom samples the centre crop at ``top + i * (ch - 1) / (out - 1)`` (+ trim) bilinearly; OpenCV's remap
    with float32 maps on a float32 image interpolates with float weights, equal to SciPy's order-1 zoom to ~1e-5.
    Every sample stays inside the image, so the border mode never matters.
    """
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    for z in factors:
        mx, my = _zoom_maps(h, w, float(z))
        out += cv2.remap(img, mx, my, cv2.INTER_LINEAR).reshape(img.shape)
    return out


def clipped_zoom_cv2(img: np.ndarray, z: float) -> np.ndarray:
    """AVRobustBench ``clipped_zoom``: resize the whole image to ``int(H z) x int(W z)`` (OpenCV bilinear), crop."""
    h, w = img.shape[:2]
    nh, nw = int(h * z), int(w * z)
    big = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (nh - h) // 2, (nw - w) // 2
    return big[top : top + h, left : left + w]


@functools.lru_cache(maxsize=256)
def _motion_taps(radius: float, sigma: float, angle_deg: float) -> tuple[tuple[float, int, int], ...]:
    width = 2 * int(math.ceil(radius)) + 1
    weights = np.exp(-(np.arange(width, dtype=np.float64) ** 2) / (2.0 * sigma * sigma))
    weights /= weights.sum()
    a = math.radians(angle_deg)
    # Tap i reads the pixel offset by (round(i cos a), round(i sin a)) (x, y; y down); ceil(v - 0.5) is how
    # ImageMagick rounds. Taps landing on the same offset are merged.
    merged: dict[tuple[int, int], float] = {}
    for i in range(width):
        key = (math.ceil(i * math.cos(a) - 0.5), math.ceil(i * math.sin(a) - 0.5))
        merged[key] = merged.get(key, 0.0) + float(weights[i])
    return tuple((w, dx, dy) for (dx, dy), w in merged.items())


def motion_blur(img: np.ndarray, radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """ImageMagick ``MotionBlurImage`` (spec 1.2): a weighted sum of shifted copies, edge pixels replicated.

    One-sided Gaussian taps along the angle. A line kernel is sparse, so summing shifted views of an edge-padded copy
    beats any dense 2-D filter (measured: also DFT and tap groups as 1-D filters). The sum is built with OpenCV's
    running average, which reads the uint8 views directly: with ``alpha_k = w_k / (w_1 + ... + w_k)`` after the last
    tap it holds exactly ``sum_k w_k x_k`` (the weights sum to 1), up to float32 rounding. When the line is
    axis-aligned the kernel is a single row or column and OpenCV's direct filter is used. Float32 output, unrounded.
    """
    taps = _motion_taps(float(radius), float(sigma), float(angle_deg))
    dxs = [t[1] for t in taps]
    dys = [t[2] for t in taps]
    x0, x1, y0, y1 = min(dxs), max(dxs), min(dys), max(dys)
    if x0 == x1 or y0 == y1:
        kernel = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.float32)
        for w, dx, dy in taps:
            kernel[dy - y0, dx - x0] += w
        # correlation: dst(x, y) = sum k(j, i) src(x + j - ax, y + i - ay); anchor at offset (0, 0)
        return cv2.filter2D(
            img.astype(np.float32, copy=False), -1, kernel, anchor=(-x0, -y0), borderType=cv2.BORDER_REPLICATE
        )
    h, w_ = img.shape[:2]
    top, left = max(-y0, 0), max(-x0, 0)
    padded = cv2.copyMakeBorder(img, top, max(y1, 0), left, max(x1, 0), cv2.BORDER_REPLICATE)
    out = np.zeros((h, w_, *img.shape[2:]), dtype=np.float32)
    total = 0.0
    for w, dx, dy in sorted(taps, key=lambda t: -t[0]):  # largest weight first: smallest rounding error
        total += w
        cv2.accumulateWeighted(padded[top + dy : top + dy + h, left + dx : left + dx + w_], out, w / total)
    return out


def to_uint8_rounded(x: np.ndarray) -> np.ndarray:
    """Round to the nearest 8-bit value with saturation, in one OpenCV pass (ImageMagick's output quantisation)."""
    return cv2.convertScaleAbs(x)  # values are >= 0 here, so the absolute value is a no-op


def plasma_fractal(rng: np.random.Generator, mapsize: int = 256, wibbledecay: float = 3.0) -> np.ndarray:
    """ImageNet-C's diamond-square height map in [0, 1] (perturbation ``wibble * U(-wibble, wibble)``, KEEP)."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal mapsize={mapsize} is not a power of two")
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0.0
    step = mapsize
    wibble = 100.0
    while step >= 2:
        half = step // 2
        corners = maparray[0:mapsize:step, 0:mapsize:step]
        acc = corners + np.roll(corners, -1, axis=0)
        acc = acc + np.roll(acc, -1, axis=1)
        maparray[half:mapsize:step, half:mapsize:step] = acc / 4 + wibble * rng.uniform(-wibble, wibble, acc.shape)
        centres = maparray[half:mapsize:step, half:mapsize:step]
        corners = maparray[0:mapsize:step, 0:mapsize:step]
        rows = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        maparray[0:mapsize:step, half:mapsize:step] = rows / 4 + wibble * rng.uniform(-wibble, wibble, rows.shape)
        cols = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        maparray[half:mapsize:step, 0:mapsize:step] = cols / 4 + wibble * rng.uniform(-wibble, wibble, cols.shape)
        step //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def glass_copy(img: np.ndarray, delta: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """One pass of ImageNet-C's sequential "swap" loop, which in fact copies (spec 1.3, glass blur step 2).

    The loop visits (h, w) for h = H - delta .. delta + 1 and, inside, w = W - delta .. delta + 1 (both descending)
    and sets ``x[h, w] = x[h + dy, w + dx]`` with the value *current at that moment*. A visited pixel is written once,
    so its value is final right after its visit. Hence the value pixel p receives is the final value of its source
    q if q was visited before p (q in the visited block and later in raster order, i.e. a larger flat index), else
    q's original value. Following these pointers until they leave the "visited earlier" relation (pointer jumping,
    at most a few dozen vectorised rounds since each step continues with probability < 1/2) gives every pixel's
    original source, and one gather applies the whole pass. Exact, not an approximation.

    Args:
        img: H x W x C array (any dtype); not modified.
        delta: maximum displacement.
        dx, dy: integer offsets in ``[-delta, delta)`` of shape (H - 2 delta, W - 2 delta) for the visited block,
            row r / column c of which is pixel (H - delta - r, W - delta - c), i.e. in visiting order.
    """
    h, w = img.shape[:2]
    nh, nw = h - 2 * delta, w - 2 * delta
    if dx.shape != (nh, nw) or dy.shape != (nh, nw):
        raise ValueError(f"glass_copy offsets have shape {dx.shape}/{dy.shape}, expected {(nh, nw)}")
    # visited pixel coordinates in array layout (ascending), offsets flipped to match
    hh = np.arange(delta + 1, h - delta + 1)
    ww = np.arange(delta + 1, w - delta + 1)
    ody = dy[::-1, ::-1].astype(np.int64)
    odx = dx[::-1, ::-1].astype(np.int64)
    sh = hh[:, None] + ody
    sw = ww[None, :] + odx
    src = np.arange(h * w, dtype=np.int64)  # identity for unvisited pixels
    visited_flat = (hh[:, None] * w + ww[None, :]).ravel()
    src_of_visited = (sh * w + sw).ravel()
    src[visited_flat] = src_of_visited
    visited = np.zeros(h * w, dtype=bool)
    visited[visited_flat] = True
    # "continues": the source was visited before, so its value then was its own final value
    cont = np.zeros(h * w, dtype=bool)
    cont[visited_flat] = visited[src_of_visited] & (src_of_visited > visited_flat)
    result = src.copy()
    active = np.flatnonzero(cont)
    while active.size:
        nxt = result[active]  # a visited pixel whose final value p copies
        result[active] = src[nxt]
        keep = cont[nxt]
        active = active[keep]
    flat = img.reshape(h * w, *img.shape[2:])
    return flat[result].reshape(img.shape)
