"""Per-frame visual corruptions: the 15 of Kinetics50-C / VGGSound-C (ImageNet-C, spec 1.3) and the visual parts of
AVRobustBench's pairs (spec 3.2).

Every kernel takes a uint8 H x W x 3 RGB frame and returns values on the 0..255 scale; the caller clips and
truncates to uint8 as the reference does. Where the reference called ImageMagick (motion blur, snow) the kernel
follows ImageMagick's kernel description and rounds its output to 8 bit, as the PNG round trip did.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from avtta.shards import storage
from PIL import Image

from . import ops, tables
from .registry import VIDEO, Context, Params, VisualOp, VisualSampler, new_seed

# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def _unit(img: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    return img.astype(dtype) / dtype(255.0)


def _noise_rng(params: Params) -> np.random.Generator:
    return np.random.default_rng(params["noise_seed"])


def _gray(x: np.ndarray) -> np.ndarray:
    # OpenCV RGB->GRAY weights (0.299, 0.587, 0.114), kept as a trailing axis for broadcasting
    return cv2.cvtColor(x.astype(np.float32, copy=False), cv2.COLOR_RGB2GRAY)[..., None]


def _rot180(a: np.ndarray) -> np.ndarray:
    return a[::-1, ::-1]


def _table(table: tuple, severity: int) -> tuple:
    value = table[severity - 1]
    return value if isinstance(value, tuple) else (value,)


# ---------------------------------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------------------------------


def _sample_noise(table: tuple) -> VisualSampler:
    def sample(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
        return {"c": float(table[severity - 1]), "noise_seed": new_seed(rng)}

    return sample


def gaussian_noise(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    x = _unit(img, np.float32)
    noise = _noise_rng(p).standard_normal(x.shape, dtype=np.float32)
    return np.clip(x + np.float32(p["c"]) * noise, 0, 1) * 255


def shot_noise(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    c = float(p["c"])
    return np.clip(_noise_rng(p).poisson(_unit(img) * c) / c, 0, 1) * 255


def impulse_noise(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    # scikit-image s&p: each element replaced with probability c, by 1 or 0 with probability 1/2 each; one uniform
    # draw decides both (u < c/2 -> salt, c/2 <= u < c -> pepper), which has the same distribution.
    x = _unit(img, np.float32)
    u = _noise_rng(p).random(x.shape, dtype=np.float32)
    c = np.float32(p["c"])
    x[u < c] = 0.0
    x[u < c / 2] = 1.0
    return x * 255


def speckle_noise(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    x = _unit(img, np.float32)
    noise = _noise_rng(p).standard_normal(x.shape, dtype=np.float32)
    return np.clip(x + x * np.float32(p["c"]) * noise, 0, 1) * 255


# ---------------------------------------------------------------------------------------------------------------------
# blur
# ---------------------------------------------------------------------------------------------------------------------


def _sample_fixed(table: tuple, keys: tuple[str, ...]) -> VisualSampler:
    def sample(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
        return {k: v for k, v in zip(keys, _table(table, severity), strict=True)}

    return sample


def defocus_blur(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    kernel = ops.disk(float(p["radius"]), float(p["alias_blur"]))
    # OpenCV filters all channels with the same kernel; default border reflect-101 as the reference
    return np.clip(cv2.filter2D(_unit(img, np.float32), -1, kernel), 0, 1) * 255


def _sample_glass(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    sigma, delta, iterations = tables.GLASS_BLUR[severity - 1]
    return {"sigma": sigma, "delta": delta, "iterations": iterations, "noise_seed": new_seed(rng)}


def glass_blur(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    sigma, delta, iterations = float(p["sigma"]), int(p["delta"]), int(p["iterations"])
    h, w = img.shape[:2]
    # SciPy's filter (what scikit-image's gaussian calls): its exact float rounding decides the uint8 truncation of
    # flat regions, so the result is bit-identical to the reference
    x = (ops.gaussian_blur_scipy(_unit(img), sigma) * 255).astype(np.uint8)
    # offsets in the reference's draw order: per visited pixel dx then dy, pixels in visiting order
    offsets = _noise_rng(p).integers(-delta, delta, size=(iterations, h - 2 * delta, w - 2 * delta, 2))
    for it in range(iterations):
        x = ops.glass_copy(x, delta, offsets[it, ..., 0], offsets[it, ..., 1])
    return np.clip(ops.gaussian_blur_scipy(_unit(x), sigma), 0, 1) * 255


def _sample_motion(table: tuple, angle_range: tuple[float, float]) -> VisualSampler:
    def sample(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
        radius, sigma = table[severity - 1]
        return {"radius": radius, "sigma": sigma, "angle": float(rng.uniform(*angle_range))}

    return sample


def motion_blur(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    # ImageMagick returns 8-bit pixels: rounded (its PNG output), so the caller's truncation changes nothing
    return ops.to_uint8_rounded(ops.motion_blur(img, p["radius"], p["sigma"], p["angle"]))


def zoom_blur(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    x = _unit(img, np.float32)
    out = ops.zoom_sum(x, p["factors"])
    return np.clip((x + out) / (len(p["factors"]) + 1), 0, 1) * 255


def _sample_zoom(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    return {"factors": list(tables.ZOOM_BLUR[severity - 1])}


# ---------------------------------------------------------------------------------------------------------------------
# weather
# ---------------------------------------------------------------------------------------------------------------------


def _sample_layer(table: tuple, angle_range: tuple[float, float]) -> VisualSampler:
    keys = ("loc", "scale", "zoom", "threshold", "blur_radius", "blur_sigma", "blend")

    def sample(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
        params = dict(zip(keys, table[severity - 1], strict=True))
        # reference order: the layer's normal draw, then the angle
        params["noise_seed"] = new_seed(rng)
        params["angle"] = float(rng.uniform(*angle_range))
        return params

    return sample


def _snow_layer(p: Params, hw: tuple[int, int], zoom_fn: Callable[[np.ndarray, float], np.ndarray]) -> np.ndarray:
    layer = _noise_rng(p).normal(p["loc"], p["scale"], size=hw)
    layer = zoom_fn(layer, p["zoom"])
    layer[layer < p["threshold"]] = 0
    layer8 = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    blurred = ops.to_uint8_rounded(ops.motion_blur(layer8, p["blur_radius"], p["blur_sigma"], p["angle"]))
    return blurred.astype(np.float32) / np.float32(255.0)


def _snow(img: np.ndarray, p: Params, zoom_fn: Callable[[np.ndarray, float], np.ndarray]) -> np.ndarray:
    x = _unit(img, np.float32)
    layer = _snow_layer(p, img.shape[:2], zoom_fn)[..., None]
    blend = np.float32(p["blend"])
    x = blend * x + (1 - blend) * np.maximum(x, _gray(x) * np.float32(1.5) + np.float32(0.5))
    return np.clip(x + layer + _rot180(layer), 0, 1) * 255


def snow(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    return _snow(img, p, ops.clipped_zoom)


def snow_avrobustbench(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    # KEEP (item 38): AVRobustBench's whole-image OpenCV zoom; the NumPy-2 decoding failure is fixed by construction.
    return _snow(img, p, ops.clipped_zoom_cv2)


def _frost_dir() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("frost needs the frost pictures of the installed 'imagecorruptions' package")
    return Path(next(iter(spec.submodule_search_locations))) / "frost"


@functools.lru_cache(maxsize=8)
def frost_image(index: int) -> np.ndarray:
    """The ImageNet-C frost picture ``index`` (0-based) as RGB uint8, read from the imagecorruptions package."""
    path = _frost_dir() / tables.FROST_FILES[index]
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # alpha dropped, as the reference
    if bgr is None:
        raise FileNotFoundError(f"cannot read frost picture {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


def _sample_frost(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    c1, c2 = tables.FROST[severity - 1]
    idx = int(rng.integers(len(tables.FROST_FILES)))
    fh, fw = frost_image(idx).shape[:2]
    if fh < hw[0] or fw < hw[1]:
        raise ValueError(f"frost picture {tables.FROST_FILES[idx]} ({fw}x{fh}) is smaller than the frame {hw}")
    top = int(rng.integers(0, fh - hw[0]))  # upper bounds exclusive, as np.random.randint
    left = int(rng.integers(0, fw - hw[1]))
    return {"c1": c1, "c2": c2, "frost": tables.FROST_FILES[idx], "top": top, "left": left}


def frost(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    h, w = img.shape[:2]
    pic = frost_image(tables.FROST_FILES.index(p["frost"]))
    crop = pic[p["top"] : p["top"] + h, p["left"] : p["left"] + w].astype(np.float32)
    return np.clip(np.float32(p["c1"]) * img.astype(np.float32) + np.float32(p["c2"]) * crop, 0, 255)


def _sample_fog(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    c1, c2 = tables.FOG[severity - 1]
    return {"c1": c1, "c2": c2, "noise_seed": new_seed(rng)}


def fog(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    h, w = img.shape[:2]
    mapsize = 1 << max(int(math.ceil(math.log2(max(h, w)))), 1)  # 256 for 224 x 224 frames
    x = _unit(img)
    peak = x.max()
    c1 = float(p["c1"])
    x += c1 * ops.plasma_fractal(_noise_rng(p), mapsize, float(p["c2"]))[:h, :w, None]
    return np.clip(x * peak / (peak + c1), 0, 1) * 255


# ---------------------------------------------------------------------------------------------------------------------
# digital
# ---------------------------------------------------------------------------------------------------------------------


def brightness(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    # HSV value V = max(R, G, B); raising V with H and S fixed scales RGB by V'/V (a black pixel, S = 0, becomes
    # grey V'). Same result as scikit-image's rgb2hsv -> clip(V + c) -> hsv2rgb, without the two conversions.
    x = _unit(img)
    v = x.max(axis=2, keepdims=True)
    v_new = np.minimum(v + float(p["c"]), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(v > 0, x * (v_new / v), v_new)
    return np.clip(out, 0, 1) * 255


def contrast(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    x = _unit(img)
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * float(p["c"]) + means, 0, 1) * 255


def _sample_elastic(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    alpha, sigma, affine = tables.ELASTIC[severity - 1]
    # reference order: affine point offsets (3 x 2, float32), then the dx field, then the dy field
    offsets = rng.uniform(-affine, affine, size=(3, 2)).astype(np.float32)
    return {
        "alpha": alpha,
        "sigma": sigma,
        "affine": affine,
        "point_offsets": offsets.tolist(),
        "noise_seed": new_seed(rng),
    }


def elastic_transform(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    h, w = img.shape[:2]
    x = _unit(img, np.float32)
    center = np.float32((h, w)) // 2
    square = min(h, w) // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square], center - square])
    pts2 = pts1 + np.float32(p["point_offsets"])
    warped = cv2.warpAffine(x, cv2.getAffineTransform(pts1, pts2), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    rng = _noise_rng(p)
    alpha, sigma = float(p["alpha"]), float(p["sigma"])
    dx = (ops.gaussian_blur_reflect_2d(rng.uniform(-1, 1, size=(h, w)), sigma, 3.0) * alpha).astype(np.float32)
    dy = (ops.gaussian_blur_reflect_2d(rng.uniform(-1, 1, size=(h, w)), sigma, 3.0) * alpha).astype(np.float32)
    # SciPy map_coordinates(order=1, mode="reflect") at (row + dy, col + dx); OpenCV's float remap with a
    # half-sample-symmetric border gives the same samples to ~1e-5, every channel at once
    ys = (np.arange(h, dtype=np.float32)[:, None] + dy).astype(np.float32)
    xs = (np.arange(w, dtype=np.float32)[None, :] + dx).astype(np.float32)
    out = cv2.remap(warped, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.clip(out, 0, 1) * 255


def pixelate(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    h, w = img.shape[:2]
    c = float(p["c"])
    small = Image.fromarray(img).resize((int(w * c), int(h * c)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


def jpeg_compression(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(p["quality"]))
    return np.asarray(Image.open(buf).convert("RGB"))


# ---------------------------------------------------------------------------------------------------------------------
# AVRobustBench-only visual parts
# ---------------------------------------------------------------------------------------------------------------------


def _sample_spatter(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    keys = ("loc", "scale", "sigma", "threshold", "intensity", "mode")
    return {**dict(zip(keys, tables.SPATTER[severity - 1], strict=True)), "noise_seed": new_seed(rng)}


def spatter(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    x = _unit(img, np.float32)
    liquid = _noise_rng(p).normal(p["loc"], p["scale"], size=img.shape[:2])
    liquid = ops.gaussian_blur_nearest(liquid, float(p["sigma"]))
    liquid[liquid < p["threshold"]] = 0
    if p["mode"] == 0:  # water
        # the reference converts without clipping; values above 1 are practically impossible after the blur
        liquid8 = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid8, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.filter2D(dist, cv2.CV_8U, emboss)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = liquid8.astype(np.float32) * dist
        peak = m.max()
        m = (m / peak if peak > 0 else m) * np.float32(p["intensity"])
        colour = np.array([175, 238, 238], dtype=np.float32) / 255
        return np.clip(x + m[..., None] * colour, 0, 1) * 255
    # mud
    m = ops.gaussian_blur_nearest((liquid > p["threshold"]).astype(np.float32), float(p["intensity"]))
    m[m < 0.8] = 0
    colour = np.array([63, 42, 20], dtype=np.float32) / 255
    m = m[..., None]
    return np.clip(x * (1 - m) + colour * m, 0, 1) * 255


def rain(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    x = _unit(img, np.float32)
    layer = _noise_rng(p).normal(p["loc"], p["scale"], size=img.shape[:2])
    layer = ops.clipped_zoom_cv2(layer, p["zoom"])
    layer[layer < p["threshold"]] = 0
    layer8 = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    streaks = ops.to_uint8_rounded(ops.motion_blur(layer8, p["blur_radius"], p["blur_sigma"], p["angle"]))
    streaks = (streaks.astype(np.float32) / np.float32(255.0))[..., None]
    colour = np.clip(streaks * np.array([0.5, 0.9, 1.2], dtype=np.float32), 0, 1)
    alpha = np.float32(p["blend"])
    x = alpha * x + (1 - alpha) * np.maximum(x, _gray(x) * np.float32(1.3) + np.float32(0.3))
    return np.clip(x + colour + _rot180(colour), 0, 1) * 255


def _sample_underwater(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    i = severity - 1
    return {
        "kernel": tables.UNDERWATER_KERNEL[i],
        "factor": tables.UNDERWATER_FACTOR[i],
        "contrast": tables.UNDERWATER_CONTRAST[i],
        "haze": tables.UNDERWATER_HAZE[i],
    }


def underwater(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    # FIX (item 36): RGB order kept and the *red* channel attenuated (the reference swapped R and B and attenuated
    # blue); odd kernel sizes only.
    x = img.copy()
    x[..., 0] = (x[..., 0] * float(p["factor"])).astype(np.uint8)
    k = int(p["kernel"])
    x = cv2.GaussianBlur(x, (k, k), 0)
    x = cv2.convertScaleAbs(x, alpha=float(p["contrast"]))
    return cv2.addWeighted(x, 0.85, x, 0.0, 0.15 * float(p["haze"]))


def _sample_smoke(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    c1, c2 = tables.SMOKE[severity - 1]
    return {"c1": c1, "c2": c2, "noise_seed": new_seed(rng)}


def smoke(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    x = _unit(img, np.float32)
    peak = x.max()
    c1 = np.float32(p["c1"])
    haze = _noise_rng(p).random(img.shape[:2], dtype=np.float32)
    k = ops.gaussian_kernel1d(float(p["c2"]), 4.0)
    haze = cv2.sepFilter2D(haze, -1, k, k, borderType=cv2.BORDER_REFLECT)  # = SciPy mode "reflect"
    x = x + c1 * haze[..., None]
    return np.clip(x * peak / (peak + c1), 0, 1) * 255


# outline of the synthetic person cut-out on a 500 x 1340 canvas (x, y)
_PERSON_LEGS = np.array([[150, 760], [350, 760], [330, 1330], [260, 1330], [250, 900], [240, 1330], [170, 1330]])
_PERSON_TORSO = np.array(
    [[120, 300], [380, 300], [470, 720], [400, 730], [360, 480], [350, 800], [150, 800], [140, 480], [100, 730],
     [30, 720]]
)  # fmt: skip


def _synthetic_person(rng: np.random.Generator) -> np.ndarray:
    """A procedurally drawn standing-person cut-out (RGBA, 500 x 1340), used when no crowd images are given."""
    canvas = np.zeros((1340, 500, 4), dtype=np.uint8)
    skin = [int(v) for v in rng.integers((90, 60, 40), (240, 200, 170))]
    shirt = [int(v) for v in rng.integers(0, 256, size=3)]
    trousers = [int(v) for v in rng.integers(0, 160, size=3)]
    cv2.fillPoly(canvas, [_PERSON_LEGS], (*trousers, 255))
    cv2.fillPoly(canvas, [_PERSON_TORSO], (*shirt, 255))
    cv2.ellipse(canvas, (250, 180), (95, 125), 0, 0, 360, (*skin, 255), -1)
    return canvas


@functools.lru_cache(maxsize=16)
def _crowd_image(path: str) -> np.ndarray:
    data = storage.read_bytes(path)  # a local path or a URL; one GET, then decoded from memory
    rgba = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if rgba is None or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"crowd occluder {path} is not an RGBA image")
    return np.ascontiguousarray(rgba[..., [2, 1, 0, 3]])  # FIX (item 37): BGRA -> RGBA


def _crowd_files(ctx: Context) -> list[str]:
    folder = getattr(ctx.options, "crowd_image_dir", None)
    return [] if folder is None else list(_crowd_listing(str(folder)))


@functools.lru_cache(maxsize=16)
def _crowd_listing(folder: str) -> tuple[str, ...]:
    """The ``.png`` occluders of ``folder`` (sorted), listed once per process: every sample draws from it, and on an
    object store a listing is a request."""
    files = tuple(n for n in storage.listdir(folder) if n.endswith(".png"))
    if not files:
        raise FileNotFoundError(f"crowd_image_dir {folder} holds no .png occluder")
    return files


def _sample_crowd(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    scale = tables.CROWD_SCALE[severity - 1]
    files = _crowd_files(ctx)
    occluder = files[int(rng.integers(len(files)))] if files else "synthetic"
    oh, ow = int(scale * hw[0]), int(scale * hw[1])
    x0 = int(rng.integers(0, hw[1] - ow + 1))  # inclusive bounds, as random.randint; x first, as the reference
    y0 = int(rng.integers(0, hw[0] - oh + 1))
    params = {"scale": scale, "occluder": occluder, "y0": y0, "x0": x0}
    if not files:
        params["occluder_seed"] = new_seed(rng)
    return params


def crowd(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    h, w = img.shape[:2]
    if p["occluder"] == "synthetic":
        occ = _synthetic_person(np.random.default_rng(p["occluder_seed"]))
    else:
        occ = _crowd_image(storage.join(str(ctx.options.crowd_image_dir), p["occluder"]))
    oh, ow = int(p["scale"] * h), int(p["scale"] * w)
    # KEEP (item 37): squashed to the frame's aspect ratio, as the reference
    occ = cv2.resize(occ, (ow, oh), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    out = img.astype(np.float32)
    y0, x0 = p["y0"], p["x0"]
    a = occ[..., 3:4] / 255
    region = out[y0 : y0 + oh, x0 : x0 + ow]
    out[y0 : y0 + oh, x0 : x0 + ow] = (1 - a) * region + a * occ[..., :3]
    return out


def _sample_interference(rng: np.random.Generator, severity: int, hw: tuple[int, int], ctx: Context) -> Params:
    limit = tables.INTERFERENCE_MAX_DEG[severity - 1]
    return {"degrees": int(rng.integers(-limit, limit + 1))}


def interference(img: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    # counter-clockwise for positive angles, nearest neighbour, same canvas, black fill (PIL semantics)
    return np.asarray(Image.fromarray(img).rotate(p["degrees"], resample=Image.NEAREST, fillcolor=(0, 0, 0)))


# ---------------------------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------------------------


def _register() -> None:
    t = tables
    ops_ = [
        VisualOp("gaussian_noise", _sample_noise(t.GAUSSIAN_NOISE), gaussian_noise),
        VisualOp("shot_noise", _sample_noise(t.SHOT_NOISE), shot_noise),
        VisualOp("impulse_noise", _sample_noise(t.IMPULSE_NOISE), impulse_noise),
        VisualOp("defocus_blur", _sample_fixed(t.DEFOCUS_BLUR, ("radius", "alias_blur")), defocus_blur, False),
        VisualOp("glass_blur", _sample_glass, glass_blur),
        VisualOp("motion_blur", _sample_motion(t.MOTION_BLUR, t.MOTION_BLUR_ANGLE), motion_blur),
        VisualOp("zoom_blur", _sample_zoom, zoom_blur, False),
        VisualOp("snow", _sample_layer(t.SNOW, t.SNOW_ANGLE), snow),
        VisualOp("frost", _sample_frost, frost),
        VisualOp("fog", _sample_fog, fog),
        VisualOp("brightness", _sample_fixed(t.BRIGHTNESS, ("c",)), brightness, False),
        VisualOp("contrast", _sample_fixed(t.CONTRAST, ("c",)), contrast, False),
        VisualOp("elastic_transform", _sample_elastic, elastic_transform),
        VisualOp("pixelate", _sample_fixed(t.PIXELATE, ("c",)), pixelate, False),
        VisualOp("jpeg_compression", _sample_fixed(t.JPEG_QUALITY, ("quality",)), jpeg_compression, False),
    ]
    for op in ops_:
        VIDEO[op.name] = op


_register()

# visual parts used only by AVRobustBench pairs (looked up by audio_visual.py)
AVRB_VISUAL: dict[str, VisualOp] = {
    "speckle": VisualOp("speckle", _sample_noise(tables.SPECKLE_NOISE), speckle_noise),
    "snow": VisualOp("snow", _sample_layer(tables.SNOW, tables.SNOW_ANGLE), snow_avrobustbench),
    "spatter": VisualOp("spatter", _sample_spatter, spatter),
    "rain": VisualOp("rain", _sample_layer(tables.RAIN, tables.RAIN_ANGLE), rain),
    "underwater": VisualOp("underwater", _sample_underwater, underwater, False),
    "smoke": VisualOp("smoke", _sample_smoke, smoke),
    "crowd": VisualOp("crowd", _sample_crowd, crowd),
    "interference": VisualOp("interference", _sample_interference, interference),
}
