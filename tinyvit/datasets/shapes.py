"""The built-in synthetic shapes: coloured shapes on noisy backgrounds, with object masks."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .._checks import check_choice, check_float, check_int, describe
from .._files import check_memory
from .base import ImageDataset


# All shapes that can be drawn; the default set is the six most distinct ones.
SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "frame")
DEFAULT_SHAPES = SHAPE_CLASSES[:6]
SHAPES_N_TRAIN, SHAPES_N_VAL = 20000, 2000      # the built-in data's training and held-out sizes


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (k, 2) points about the origin by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _regular(k: int, radius: float, start: float = -math.pi / 2) -> np.ndarray:
    a = start + 2 * math.pi * np.arange(k) / k
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _outline(kind: str, r: float) -> list[tuple[np.ndarray, int]]:
    """Polygons (vertices relative to the centre, fill value) for one shape of radius r.

    Each shape fits in the disc of radius r, so a centre at least r from every
    border keeps it inside the image (also after the small rotation).
    """
    if kind in ("square", "frame"):
        sq = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * (0.75 * r)
        polys = [(sq, 255)]
        if kind == "frame":
            polys.append((sq * 0.55, 0))
        return polys
    if kind == "triangle":
        tri = _regular(3, r)
        tri[:, 1] += 0.25 * r                    # centre the bounding box vertically
        return [(tri, 255)]
    if kind == "diamond":                        # a rhombus, taller than wide
        return [(np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], float) * r, 255)]
    if kind == "cross":                          # a plus sign, arms 0.55 r thick
        t = 0.275 * r
        a = min(0.95 * r, math.sqrt(r * r - t * t))   # arm ends stay inside the disc
        pts = [(-t, -a), (t, -a), (t, -t), (a, -t), (a, t), (t, t),
               (t, a), (-t, a), (-t, t), (-a, t), (-a, -t), (-t, -t)]
        return [(np.array(pts, float), 255)]
    if kind == "star":                           # five points, inner radius 0.42 r
        outer = _regular(5, r)
        inner = _regular(5, 0.42 * r, start=-math.pi / 2 + math.pi / 5)
        star = np.empty((10, 2))
        star[0::2], star[1::2] = outer, inner
        return [(star, 255)]
    raise ValueError(f"kind: expected one of {SHAPE_CLASSES}, got {kind!r}")  # pragma: no cover


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, X: float, Y: float, R: float, angle: float) -> None:
    """Draw one filled shape (value 255, holes 0) centred at (X, Y) with radius R, in canvas pixels."""
    if kind in ("circle", "ring"):
        draw.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
        if kind == "ring":
            q = 0.55 * R
            draw.ellipse([X - q, Y - q, X + q, Y + q], fill=0)
        return
    for pts, fill in _outline(kind, R):
        pts = _rotate(pts, angle) + (X, Y)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)


_STRIP = 64     # images drawn side by side on one canvas


def _draw_coverages(kinds, cx, cy, r, angle, size: int, ss: int) -> np.ndarray:
    """Anti-aliased coverage (n, size, size) uint8 0..255 of n shapes.

    Shapes are drawn at ``ss`` times the resolution, _STRIP of them side by
    side on one canvas (each stays inside its own tile), and the canvas is
    box-averaged down by ``ss``: edges get fractional coverage instead of
    jaggies, and Pillow is called once per strip rather than once per image.
    """
    n = len(kinds)
    out = np.empty((n, size, size), dtype=np.uint8)                   # (n, S, S)
    tile = size * ss
    for start in range(0, n, _STRIP):
        stop = min(start + _STRIP, n)
        canvas = Image.new("L", (tile * (stop - start), tile), 0)
        draw = ImageDraw.Draw(canvas)
        for j, i in enumerate(range(start, stop)):
            _draw_shape(draw, kinds[i], (cx[i] + j * size) * ss, cy[i] * ss, r[i] * ss, angle[i])
        small = np.asarray(canvas.reduce(ss)) if ss > 1 else np.asarray(canvas)   # (S, S * tiles)
        out[start:stop] = small.reshape(size, stop - start, size).transpose(1, 0, 2)
    return out


def shapes_bytes(n: int, image_size: int) -> int:
    """Memory make_shapes needs for n images of side S: float32 RGB, plus the coverage and mask."""
    return n * image_size * image_size * (3 * 4 + 2)


def make_shapes(n: int = SHAPES_N_TRAIN, image_size: int = 32, seed: int = 0, *,
                classes: Sequence[str] | None = None, size_range=(0.5, 0.85),
                max_rotation: float = 10.0, noise: float = 0.05, min_contrast: float = 0.3,
                supersample: int = 4) -> ImageDataset:
    """Synthetic coloured shapes on a noisy background, with object masks.

    n            number of images; classes are balanced (counts differ by at most one)
    image_size   side S of the square images (S >= 8)
    seed         same seed -> identical arrays; different seeds -> different images
    classes      names from SHAPE_CLASSES (default DEFAULT_SHAPES: circle, square,
                 triangle, cross, ring, star; add "diamond", "frame" for a harder set)
    size_range   shape diameter as a fraction of S, drawn uniformly
    max_rotation rotation in degrees drawn from [-max_rotation, max_rotation];
                 kept small so a rotated square never looks like a diamond
    noise        std of the Gaussian pixel noise added everywhere
    min_contrast minimum brightness difference |Y(fg) - Y(bg)| (Y = 0.299 R +
                 0.587 G + 0.114 B); objects may be lighter or darker than the
                 background, so brightness does not give the class away either
    supersample  drawing resolution factor (anti-aliasing)

    Colours are drawn independently of the class, so only the shape tells the
    classes apart. Returns images (n, S, S, 3) float32 in [0, 1], labels (n,),
    masks (n, S, S) bool (object covers at least half of the pixel).
    """
    n = check_int("n", n, minimum=1)
    S = check_int("image_size", image_size, minimum=8)
    seed = check_int("seed", seed, minimum=0)
    ss = check_int("supersample", supersample, minimum=1, maximum=16)
    classes = tuple(DEFAULT_SHAPES if classes is None else classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected at least two distinct names from {SHAPE_CLASSES}, got {classes}")
    for c in classes:
        check_choice("classes", c, SHAPE_CLASSES)
    if not isinstance(size_range, (tuple, list)) or len(size_range) != 2:
        raise TypeError(f"size_range: expected a pair (low, high) of fractions, got {describe(size_range)}")
    lo = check_float("size_range[0]", size_range[0], minimum=0.05, maximum=1.0)
    hi = check_float("size_range[1]", size_range[1], minimum=lo, maximum=1.0)
    max_rot = check_float("max_rotation", max_rotation, minimum=0.0, maximum=180.0)
    noise = check_float("noise", noise, minimum=0.0, maximum=1.0)
    min_contrast = check_float("min_contrast", min_contrast, minimum=0.0, maximum=0.8)
    check_memory("image_size", S, 2 * (S * ss) ** 2, f"drawing one image at {ss}x supersampling")
    check_memory("n", n, shapes_bytes(n, S), f"{n} images of {S}x{S} with their masks")

    rng = np.random.default_rng(seed)
    K = len(classes)
    labels = rng.permutation(np.arange(n) % K).astype(np.int64)
    radius = rng.uniform(lo, hi, size=n) * S / 2                       # (n,)
    cx = rng.uniform(radius, S - radius)                              # centre keeps the shape inside
    cy = rng.uniform(radius, S - radius)
    angle = np.deg2rad(rng.uniform(-max_rot, max_rot, size=n))
    bg, fg = _contrasting_colours(rng, n, min_contrast)              # (n, 3) each
    kinds = [classes[k] for k in labels]
    cover = _draw_coverages(kinds, cx, cy, radius, angle, S, ss)     # (n, S, S) 0..255
    images = _blend(cover, bg, fg, noise, rng)                        # (n, S, S, 3)
    masks = cover >= 128
    return ImageDataset(images, labels, list(classes), masks, name=f"shapes{S}")


def _contrasting_colours(rng, n: int, min_contrast: float):
    """Background and foreground colours (n, 3) each, redrawn until their brightness differs
    by at least min_contrast (Y = 0.299 R + 0.587 G + 0.114 B)."""
    bg = rng.uniform(0.0, 1.0, size=(n, 3))
    fg = rng.uniform(0.0, 1.0, size=(n, 3))
    luma = np.array([0.299, 0.587, 0.114])                           # brightness of an RGB colour
    for _ in range(1000):                                             # redraw low-contrast pairs
        low = np.abs((fg - bg) @ luma) < min_contrast
        if not low.any():
            break
        k = int(low.sum())
        bg[low] = rng.uniform(0.0, 1.0, size=(k, 3))
        fg[low] = rng.uniform(0.0, 1.0, size=(k, 3))
    return bg, fg


def _blend(cover, bg, fg, noise: float, rng) -> np.ndarray:
    """Colours blended by coverage plus noise, a chunk of images at a time so the temporaries
    stay small: image = bg + alpha * (fg - bg) + noise * N(0, 1), clipped to [0, 1]."""
    n, S = cover.shape[0], cover.shape[1]
    images = np.empty((n, S, S, 3), dtype=np.float32)                 # (n, S, S, 3)
    bg32 = bg.astype(np.float32)[:, None, None, :]                    # (n, 1, 1, 3)
    diff32 = (fg - bg).astype(np.float32)[:, None, None, :]
    chunk = 256
    for s0 in range(0, n, chunk):
        s1 = min(s0 + chunk, n)
        out = images[s0:s1]
        alpha = cover[s0:s1, :, :, None].astype(np.float32)
        alpha /= np.float32(255.0)                                    # (b, S, S, 1)
        np.multiply(alpha, diff32[s0:s1], out=out)
        out += bg32[s0:s1]
        if noise > 0:
            z = rng.standard_normal(out.shape, dtype=np.float32)
            z *= np.float32(noise)
            out += z
        np.clip(out, 0.0, 1.0, out=out)
    return images
