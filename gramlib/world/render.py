"""Procedural renderer of the mini world: a concept's *shape* is a mask, a *style* paints it.

Separating the two is what gives the world its domain structure: the same concept mask is
painted as a photo, a sketch, a painting, pixel art, a cartoon or a neon sign, so a model that
recognises concepts across styles has to learn shape, and a few-shot learner trained on one style
meets a real domain shift on another (the phenomenon GRAM's support/query split simulates).

Everything is drawn at ``CANVAS`` pixels and downsampled to the requested image size with a
box filter, so thin strokes survive as grey levels instead of aliasing away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CANVAS = 64
Mask = Image.Image  # mode "L", CANVAS x CANVAS, 255 inside the concept


@dataclass(frozen=True)
class Placement:
    """Where and how big a concept is drawn (all in canvas pixels / degrees)."""

    cx: float
    cy: float
    r: float
    rot: float


# ----------------------------------------------------------------------------------------------
# geometry helpers


def _poly(n: int, p: Placement, start: float = -90.0, radii: tuple[float, ...] = (1.0,)) -> list[tuple[float, float]]:
    pts = []
    for i in range(n * len(radii)):
        a = math.radians(start + p.rot + 360.0 * i / (n * len(radii)))
        rr = p.r * radii[i % len(radii)]
        pts.append((p.cx + rr * math.cos(a), p.cy + rr * math.sin(a)))
    return pts


def _rotated(points: list[tuple[float, float]], p: Placement) -> list[tuple[float, float]]:
    """Map points given in unit coordinates around (0, 0) to the placement (scale, rotate, shift)."""
    a = math.radians(p.rot)
    ca, sa = math.cos(a), math.sin(a)
    return [(p.cx + p.r * (x * ca - y * sa), p.cy + p.r * (x * sa + y * ca)) for x, y in points]


def _ellipse(d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill: int = 255) -> None:
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _new() -> tuple[Mask, ImageDraw.ImageDraw]:
    m = Image.new("L", (CANVAS, CANVAS), 0)
    return m, ImageDraw.Draw(m)


# ----------------------------------------------------------------------------------------------
# shape family


def _circle(p: Placement) -> Mask:
    m, d = _new()
    _ellipse(d, p.cx, p.cy, p.r, p.r)
    return m


def _regular(n: int, start: float = -90.0) -> Callable[[Placement], Mask]:
    def draw(p: Placement) -> Mask:
        m, d = _new()
        d.polygon(_poly(n, p, start), fill=255)
        return m

    return draw


def _star(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_poly(5, p, radii=(1.0, 0.42)), fill=255)
    return m


def _diamond(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)], p), fill=255)
    return m


def _heart(p: Placement) -> Mask:
    m, d = _new()
    pts = []
    for i in range(64):
        t = 2 * math.pi * i / 64
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x / 17.0, y / 17.0))
    d.polygon(_rotated(pts, p), fill=255)
    return m


def _crescent(p: Placement) -> Mask:
    m, d = _new()
    _ellipse(d, p.cx, p.cy, p.r, p.r)
    a = math.radians(p.rot)
    _ellipse(d, p.cx + 0.45 * p.r * math.cos(a), p.cy + 0.45 * p.r * math.sin(a) - 0.2 * p.r, 0.85 * p.r, 0.85 * p.r, fill=0)
    return m


def _cross(p: Placement) -> Mask:
    m, d = _new()
    w = 0.3
    d.polygon(_rotated([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)], p), fill=255)
    return m


def _ring(p: Placement) -> Mask:
    m, d = _new()
    _ellipse(d, p.cx, p.cy, p.r, p.r)
    _ellipse(d, p.cx, p.cy, 0.55 * p.r, 0.55 * p.r, fill=0)
    return m


def _arrow(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(-1, -0.2), (0.2, -0.2), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.2), (-1, 0.2)], p), fill=255)
    return m


# ----------------------------------------------------------------------------------------------
# glyph families (letters and symbols), drawn with the bundled TrueType font


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _glyph(char: str) -> Callable[[Placement], Mask]:
    def draw(p: Placement) -> Mask:
        size = max(8, int(2.1 * p.r))
        tile = Image.new("L", (2 * CANVAS, 2 * CANVAS), 0)
        d = ImageDraw.Draw(tile)
        d.text((CANVAS, CANVAS), char, fill=255, font=_font(size), anchor="mm", stroke_width=max(1, size // 12), stroke_fill=255)
        tile = tile.rotate(-p.rot * 0.5, resample=Image.BILINEAR, center=(CANVAS, CANVAS))
        off = (int(round(p.cx - CANVAS)), int(round(p.cy - CANVAS)))
        m = Image.new("L", (CANVAS, CANVAS), 0)
        m.paste(tile.crop((-off[0], -off[1], -off[0] + CANVAS, -off[1] + CANVAS)), (0, 0))
        return m

    return draw


def _lightning(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(0.2, -1), (-0.5, 0.1), (-0.05, 0.1), (-0.3, 1), (0.55, -0.2), (0.1, -0.2), (0.45, -1)], p), fill=255)
    return m


def _check(p: Placement) -> Mask:
    m, d = _new()
    d.line(_rotated([(-0.8, 0.0), (-0.25, 0.6), (0.85, -0.7)], p), fill=255, width=max(2, int(0.28 * p.r)), joint="curve")
    return m


def _spiral(p: Placement) -> Mask:
    m, d = _new()
    pts = []
    for i in range(120):
        t = i / 119 * 3 * 2 * math.pi
        rr = 0.08 + 0.92 * i / 119
        pts.append((rr * math.cos(t), rr * math.sin(t)))
    d.line(_rotated(pts, p), fill=255, width=max(2, int(0.14 * p.r)))
    return m


def _hourglass(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(-0.7, -1), (0.7, -1), (0.1, 0), (0.7, 1), (-0.7, 1), (-0.1, 0)], p), fill=255)
    return m


# ----------------------------------------------------------------------------------------------
# pattern family: a textured square patch


def _patch(p: Placement, painter: Callable[[ImageDraw.ImageDraw, float, float, float], None]) -> Mask:
    """Draw a pattern on a large tile, rotate it, and keep a square patch of radius p.r."""
    big = Image.new("L", (2 * CANVAS, 2 * CANVAS), 0)
    painter(ImageDraw.Draw(big), CANVAS, CANVAS, max(3.0, p.r / 2.2))
    big = big.rotate(p.rot, resample=Image.NEAREST, center=(CANVAS, CANVAS))
    region = Image.new("L", (2 * CANVAS, 2 * CANVAS), 0)
    ImageDraw.Draw(region).rectangle([CANVAS - p.r, CANVAS - p.r, CANVAS + p.r, CANVAS + p.r], fill=255)
    big = Image.fromarray(np.minimum(np.asarray(big), np.asarray(region)))
    off = (int(round(p.cx - CANVAS)), int(round(p.cy - CANVAS)))
    m = Image.new("L", (CANVAS, CANVAS), 0)
    m.paste(big.crop((-off[0], -off[1], -off[0] + CANVAS, -off[1] + CANVAS)), (0, 0))
    return m


def _pattern(kind: str) -> Callable[[Placement], Mask]:
    def painter(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float) -> None:
        n = int(2 * CANVAS / s) + 2
        w = max(2, int(s * 0.45))
        if kind == "stripes":
            for i in range(n):
                x = i * s
                d.rectangle([x, 0, x + s * 0.5, 2 * CANVAS], fill=255)
        elif kind == "polka_dots":
            for i in range(n):
                for j in range(n):
                    _ellipse(d, i * s + (j % 2) * s / 2, j * s, s * 0.3, s * 0.3)
        elif kind == "checkerboard":
            for i in range(n):
                for j in range(n):
                    if (i + j) % 2 == 0:
                        d.rectangle([i * s, j * s, (i + 1) * s - 1, (j + 1) * s - 1], fill=255)
        elif kind == "zigzag":
            for j in range(n):
                pts = [(i * s * 0.6, j * s * 1.2 + (s * 0.5 if i % 2 else 0)) for i in range(2 * n)]
                d.line(pts, fill=255, width=w // 1 or 1)
        elif kind == "grid":
            for i in range(n):
                d.line([(i * s, 0), (i * s, 2 * CANVAS)], fill=255, width=max(1, w // 2))
                d.line([(0, i * s), (2 * CANVAS, i * s)], fill=255, width=max(1, w // 2))
        elif kind == "waves":
            for j in range(n):
                pts = [(x, j * s * 1.1 + s * 0.35 * math.sin(x / s * 2.0)) for x in range(0, 2 * CANVAS, 2)]
                d.line(pts, fill=255, width=max(1, w // 2 + 1))
        elif kind == "bricks":
            d.rectangle([0, 0, 2 * CANVAS, 2 * CANVAS], fill=255)
            for j in range(n):
                y = j * s * 0.8
                d.line([(0, y), (2 * CANVAS, y)], fill=0, width=max(1, w // 3))
                for i in range(n):
                    x = i * s * 1.6 + (s * 0.8 if j % 2 else 0)
                    d.line([(x, y), (x, y + s * 0.8)], fill=0, width=max(1, w // 3))
        elif kind == "crosshatch":
            for i in range(-n, 2 * n):
                d.line([(i * s, 0), (i * s + 2 * CANVAS, 2 * CANVAS)], fill=255, width=1)
                d.line([(i * s, 2 * CANVAS), (i * s + 2 * CANVAS, 0)], fill=255, width=1)
        elif kind == "concentric_rings":
            for k in range(int(CANVAS / s) + 2, 0, -1):
                _ellipse(d, cx, cy, k * s * 0.9, k * s * 0.9, fill=255 if k % 2 else 0)
        elif kind == "scales":
            for j in range(n):
                for i in range(n):
                    x = i * s + (j % 2) * s / 2
                    y = j * s * 0.6
                    d.arc([x - s / 2, y - s / 2, x + s / 2, y + s / 2], 0, 180, fill=255, width=max(1, w // 2))
        else:  # pragma: no cover - guarded by the spec check
            raise KeyError(kind)

    return lambda p: _patch(p, painter)


# ----------------------------------------------------------------------------------------------
# object family: composed from parts (holes carry the details a sketch keeps)


def _house(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(-0.75, -0.1), (0.75, -0.1), (0.75, 0.9), (-0.75, 0.9)], p), fill=255)
    d.polygon(_rotated([(-0.95, -0.1), (0.0, -0.95), (0.95, -0.1)], p), fill=255)
    d.polygon(_rotated([(-0.15, 0.35), (0.15, 0.35), (0.15, 0.9), (-0.15, 0.9)], p), fill=0)
    d.polygon(_rotated([(0.35, 0.1), (0.6, 0.1), (0.6, 0.35), (0.35, 0.35)], p), fill=0)
    return m


def _tree(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(-0.15, 0.2), (0.15, 0.2), (0.15, 1.0), (-0.15, 1.0)], p), fill=255)
    (x, y), = _rotated([(0.0, -0.3)], p)
    _ellipse(d, x, y, 0.7 * p.r, 0.65 * p.r)
    return m


def _flower(p: Placement) -> Mask:
    m, d = _new()
    for k in range(6):
        a = math.radians(p.rot + 60 * k)
        _ellipse(d, p.cx + 0.55 * p.r * math.cos(a), p.cy + 0.55 * p.r * math.sin(a), 0.38 * p.r, 0.38 * p.r)
    _ellipse(d, p.cx, p.cy, 0.25 * p.r, 0.25 * p.r, fill=0)
    _ellipse(d, p.cx, p.cy, 0.15 * p.r, 0.15 * p.r, fill=255)
    return m


def _sun(p: Placement) -> Mask:
    m, d = _new()
    _ellipse(d, p.cx, p.cy, 0.5 * p.r, 0.5 * p.r)
    for k in range(8):
        a = math.radians(p.rot + 45 * k)
        d.line([(p.cx + 0.65 * p.r * math.cos(a), p.cy + 0.65 * p.r * math.sin(a)),
                (p.cx + p.r * math.cos(a), p.cy + p.r * math.sin(a))], fill=255, width=max(2, int(0.14 * p.r)))
    return m


def _car(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(-1, 0.0), (1, 0.0), (1, 0.45), (-1, 0.45)], p), fill=255)
    d.polygon(_rotated([(-0.55, 0.0), (-0.35, -0.45), (0.35, -0.45), (0.6, 0.0)], p), fill=255)
    d.polygon(_rotated([(-0.3, -0.35), (-0.05, -0.35), (-0.05, -0.05), (-0.42, -0.05)], p), fill=0)
    for wx in (-0.55, 0.55):
        (x, y), = _rotated([(wx, 0.5)], p)
        _ellipse(d, x, y, 0.26 * p.r, 0.26 * p.r)
        _ellipse(d, x, y, 0.1 * p.r, 0.1 * p.r, fill=0)
    return m


def _fish(p: Placement) -> Mask:
    m, d = _new()
    body = [(0.9 * math.cos(t), 0.45 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40)]
    d.polygon(_rotated([(x - 0.1, y) for x, y in body], p), fill=255)
    d.polygon(_rotated([(0.6, 0.0), (1.05, -0.45), (1.05, 0.45)], p), fill=255)
    (x, y), = _rotated([(-0.55, -0.1)], p)
    _ellipse(d, x, y, 0.09 * p.r, 0.09 * p.r, fill=0)
    return m


def _boat(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(-1, 0.35), (1, 0.35), (0.7, 0.8), (-0.7, 0.8)], p), fill=255)
    d.polygon(_rotated([(0.0, -1.0), (0.0, 0.25), (0.75, 0.25)], p), fill=255)
    d.polygon(_rotated([(-0.1, -0.7), (-0.1, 0.25), (-0.65, 0.25)], p), fill=255)
    return m


def _umbrella(p: Placement) -> Mask:
    m, d = _new()
    canopy = [(math.cos(t), -0.9 * math.sin(t)) for t in np.linspace(0, math.pi, 30)]
    d.polygon(_rotated(canopy, p), fill=255)
    d.line(_rotated([(0, 0), (0, 0.8), (-0.25, 0.9)], p), fill=255, width=max(2, int(0.12 * p.r)))
    return m


def _mug(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(-0.6, -0.7), (0.45, -0.7), (0.45, 0.85), (-0.6, 0.85)], p), fill=255)
    (x, y), = _rotated([(0.55, 0.05)], p)
    _ellipse(d, x, y, 0.4 * p.r, 0.38 * p.r)
    _ellipse(d, x, y, 0.2 * p.r, 0.18 * p.r, fill=0)
    return m


def _key(p: Placement) -> Mask:
    m, d = _new()
    (x, y), = _rotated([(-0.55, 0.0)], p)
    _ellipse(d, x, y, 0.42 * p.r, 0.42 * p.r)
    _ellipse(d, x, y, 0.18 * p.r, 0.18 * p.r, fill=0)
    d.polygon(_rotated([(-0.2, -0.1), (1.0, -0.1), (1.0, 0.1), (-0.2, 0.1)], p), fill=255)
    d.polygon(_rotated([(0.6, 0.1), (0.75, 0.1), (0.75, 0.4), (0.6, 0.4)], p), fill=255)
    d.polygon(_rotated([(0.85, 0.1), (1.0, 0.1), (1.0, 0.35), (0.85, 0.35)], p), fill=255)
    return m


def _rocket(p: Placement) -> Mask:
    m, d = _new()
    body = [(0, -1.0), (0.3, -0.55), (0.3, 0.6), (-0.3, 0.6), (-0.3, -0.55)]
    d.polygon(_rotated(body, p), fill=255)
    d.polygon(_rotated([(0.3, 0.2), (0.65, 0.9), (0.3, 0.6)], p), fill=255)
    d.polygon(_rotated([(-0.3, 0.2), (-0.65, 0.9), (-0.3, 0.6)], p), fill=255)
    (x, y), = _rotated([(0, -0.2)], p)
    _ellipse(d, x, y, 0.13 * p.r, 0.13 * p.r, fill=0)
    return m


def _snowman(p: Placement) -> Mask:
    m, d = _new()
    for (oy, rr) in ((0.5, 0.5), (-0.2, 0.36), (-0.72, 0.26)):
        (x, y), = _rotated([(0, oy)], p)
        _ellipse(d, x, y, rr * p.r, rr * p.r)
    return m


def _mushroom(p: Placement) -> Mask:
    m, d = _new()
    cap = [(math.cos(t), -0.75 * math.sin(t) - 0.05) for t in np.linspace(0, math.pi, 30)]
    d.polygon(_rotated(cap, p), fill=255)
    d.polygon(_rotated([(-0.25, -0.05), (0.25, -0.05), (0.3, 0.9), (-0.3, 0.9)], p), fill=255)
    for cx_, cy_ in ((-0.45, -0.35), (0.35, -0.45)):
        (x, y), = _rotated([(cx_, cy_)], p)
        _ellipse(d, x, y, 0.13 * p.r, 0.13 * p.r, fill=0)
    return m


def _kite(p: Placement) -> Mask:
    m, d = _new()
    d.polygon(_rotated([(0, -1), (0.55, -0.35), (0, 0.75), (-0.55, -0.35)], p), fill=255)
    d.line(_rotated([(0, 0.75), (0.15, 0.95), (-0.1, 1.05)], p), fill=255, width=max(1, int(0.08 * p.r)))
    return m


SHAPES: dict[str, Callable[[Placement], Mask]] = {
    "circle": _circle, "square": _regular(4, -45.0), "triangle": _regular(3), "star": _star,
    "hexagon": _regular(6), "pentagon": _regular(5), "diamond": _diamond, "heart": _heart,
    "crescent": _crescent, "cross": _cross, "ring": _ring, "arrow": _arrow,
    **{f"letter_{c}": _glyph(c.upper()) for c in "abehkmrsxz"},
    "question_mark": _glyph("?"), "hash_sign": _glyph("#"), "at_sign": _glyph("@"),
    "ampersand": _glyph("&"), "percent_sign": _glyph("%"), "dollar_sign": _glyph("$"),
    "lightning_bolt": _lightning, "check_mark": _check, "spiral": _spiral, "hourglass": _hourglass,
    **{k: _pattern(k) for k in ("stripes", "polka_dots", "checkerboard", "zigzag", "grid", "waves",
                                 "bricks", "crosshatch", "concentric_rings", "scales")},
    "house": _house, "tree": _tree, "flower": _flower, "sun": _sun, "car": _car, "fish": _fish,
    "boat": _boat, "umbrella": _umbrella, "mug": _mug, "key": _key, "rocket": _rocket,
    "snowman": _snowman, "mushroom": _mushroom, "kite": _kite,
}


def concept_mask(concept: str, p: Placement) -> Mask:
    try:
        return SHAPES[concept](p)
    except KeyError:
        raise KeyError(f"no renderer for concept {concept!r}; known: {sorted(SHAPES)}") from None


# ----------------------------------------------------------------------------------------------
# styles: paint a mask


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _edges(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boolean outline of a mask: pixels inside whose neighbourhood leaves it."""
    img = Image.fromarray(mask)
    inner = np.asarray(img.filter(ImageFilter.MinFilter(3)))
    edge = (mask > 127) & (inner <= 127)
    if thickness > 1:
        edge = np.asarray(Image.fromarray((edge * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(2 * (thickness // 2) + 1))) > 127
    return edge


def _noise(rng: np.random.Generator, scale: int, amp: float) -> np.ndarray:
    """Smooth noise: a coarse random grid upsampled bilinearly."""
    g = rng.normal(0, 1, size=(scale, scale, 3)).astype(np.float32)
    img = Image.fromarray(((g - g.min()) / (np.ptp(g) + 1e-6) * 255).astype(np.uint8))
    up = np.asarray(img.resize((CANVAS, CANVAS), Image.BILINEAR), dtype=np.float32) / 255.0 - 0.5
    return up * amp


def colour_name(hue: float) -> str:
    names = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
    edges = [0.04, 0.11, 0.19, 0.45, 0.55, 0.72, 0.83, 0.95]
    for name, e in zip(names, edges):
        if hue % 1.0 < e:
            return name
    return "red"


def paint(mask: Mask, style: str, rng: np.random.Generator, hue: float) -> np.ndarray:
    """Paint a concept mask in a style; returns a float32 CANVAS x CANVAS x 3 array in [0, 255]."""
    if style == "negative":  # a photo with its colours inverted (before any draw: the same photo, inverted)
        return 255.0 - paint(mask, "photo", rng, hue)
    m = np.asarray(mask)
    inside = (m > 127)[..., None]
    fill = _hsv(hue, rng.uniform(0.55, 0.95), rng.uniform(0.6, 1.0))
    if style == "photo":
        bg_hue = rng.uniform()
        yy = np.linspace(0, 1, CANVAS, dtype=np.float32)[:, None, None]
        bg = _hsv(bg_hue, rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.8)) * (0.8 + 0.4 * yy)
        bg = bg + _noise(rng, 8, 60) + rng.normal(0, 6, (CANVAS, CANVAS, 3))
        shade = np.linspace(1.15, 0.75, CANVAS, dtype=np.float32)
        obj = fill * (shade[:, None, None] if rng.uniform() < 0.5 else shade[None, :, None]) + _noise(rng, 16, 30)
        shadow = np.roll(np.roll(inside, 2, axis=0), 2, axis=1) & ~inside
        img = np.where(inside, obj, np.where(shadow, bg * 0.55, bg))
        img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    elif style == "sketch":
        paper = rng.uniform(215, 250)
        img = np.full((CANVAS, CANVAS, 3), paper, dtype=np.float32) + rng.normal(0, 4, (CANVAS, CANVAS, 1))
        ink = rng.uniform(20, 90)
        for _ in range(2):  # two jittered passes of the pencil
            shift = rng.integers(-1, 2, size=2)
            e = np.roll(_edges(m, thickness=1), tuple(shift), axis=(0, 1))
            img = np.where(e[..., None], ink + rng.normal(0, 12, (CANVAS, CANVAS, 1)), img)
    elif style == "painting":
        img = 127 + _noise(rng, 4, 300) * rng.uniform(0.6, 1.0) + _hsv(rng.uniform(), 0.4, 0.5) * 0.4 - 50
        brush = _noise(rng, 24, 120)
        img = np.where(inside, fill + brush, img)
        img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.6)), dtype=np.float32)
        img = np.round(img / 32.0) * 32.0  # posterised paint
    elif style == "pixel":
        k = int(rng.integers(10, 14))
        small = Image.fromarray(m).resize((k, k), Image.BOX)
        blocky = np.asarray(small.resize((CANVAS, CANVAS), Image.NEAREST)) > 110
        bg = _hsv(rng.uniform(), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.9))
        img = np.where(blocky[..., None], np.round(fill / 64) * 64, np.round(bg / 64) * 64).astype(np.float32)
    elif style == "cartoon":
        bg = _hsv(rng.uniform(), rng.uniform(0.1, 0.3), rng.uniform(0.85, 1.0))
        bright = _hsv(hue, rng.uniform(0.8, 1.0), 1.0)
        img = np.where(inside, bright, bg)
        img = np.where(_edges(m, thickness=3)[..., None], 15.0, img).astype(np.float32)
    elif style == "neon":
        glow_col = _hsv(hue, rng.uniform(0.5, 0.9), 1.0)
        e = _edges(m, thickness=2).astype(np.float32)
        glow = np.asarray(Image.fromarray((e * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2.5)), dtype=np.float32) / 255.0
        base = rng.uniform(5, 35) + _noise(rng, 4, 20)
        img = base + glow[..., None] * glow_col * 1.8 + e[..., None] * 255.0
    elif style == "blueprint":  # white outlines on a blue drafting grid
        img = np.zeros((CANVAS, CANVAS, 3), dtype=np.float32) + _hsv(0.6, 0.8, rng.uniform(0.35, 0.55))
        step = int(rng.integers(6, 10))
        img[::step, :, :] += 40
        img[:, ::step, :] += 40
        img = np.where(_edges(m, thickness=1)[..., None], 235.0, img) + rng.normal(0, 5, (CANVAS, CANVAS, 1))
    elif style == "stipple":  # the shape only as a denser scatter of dots on paper
        img = np.full((CANVAS, CANVAS, 3), rng.uniform(200, 245), dtype=np.float32)
        dots = rng.uniform(size=(CANVAS, CANVAS)) < np.where(m > 127, 0.35, 0.04)
        img = np.where(dots[..., None], _hsv(hue, 0.6, 0.3), img)
    else:
        raise KeyError(f"unknown style {style!r}")
    return np.clip(img, 0, 255).astype(np.float32)


#: the styles of the web and CC3M-like corpora: pre-training sees (and its captions name) only these
STYLES = ("photo", "sketch", "painting", "pixel", "cartoon", "neon")
#: renderings pre-training never shows nor names, for downstream datasets only: the analogue of EuroSAT's
#: satellite views or DTD's texture close-ups, where a hand-written template misses what matters
#: (issue 14 item 1; measured in notes/prototypes/unseen_styles.py). The corpora draw from STYLES alone.
UNSEEN_STYLES = ("blueprint", "stipple", "negative")


@dataclass(frozen=True)
class RenderOptions:
    """Per-dataset rendering knobs (the spec's ``render`` block)."""

    size: tuple[float, float] = (0.26, 0.44)  # radius as a fraction of the canvas
    clutter_p: float = 0.0  # chance of a small distractor concept in the background
    hard: bool = False  # ImageNet-A analogue: small, occluded, low-contrast, cluttered

    @staticmethod
    def from_spec(block: dict | None) -> "RenderOptions":
        block = dict(block or {})
        unknown = set(block) - {"size", "clutter_p", "hard"}
        if unknown:
            raise ValueError(f"unknown render option(s) {sorted(unknown)}; known: size, clutter_p, hard")
        if "size" in block:
            block["size"] = tuple(block["size"])
        return RenderOptions(**block)


def render(concept: str, style: str, rng: np.random.Generator, image_size: int = 32,
           options: RenderOptions = RenderOptions(), distractors: tuple[str, ...] = ()) -> tuple[np.ndarray, dict]:
    """Render one image; returns (uint8 HxWx3 array, attributes used by captions and ground truth)."""
    lo, hi = (0.2, 0.3) if options.hard else options.size
    r = rng.uniform(lo, hi) * CANVAS
    margin = r * 0.9
    p = Placement(rng.uniform(margin, CANVAS - margin), rng.uniform(margin, CANVAS - margin), r, rng.uniform(-20, 20))
    hue = rng.uniform()
    mask = np.asarray(concept_mask(concept, p)).copy()
    clutter = options.hard or (distractors and rng.uniform() < options.clutter_p)
    if clutter and distractors:
        n_extra = int(rng.integers(1, 3)) if options.hard else 1
        extra = np.zeros_like(mask)
        for _ in range(n_extra):
            other = distractors[int(rng.integers(len(distractors)))]
            q = Placement(rng.uniform(0, CANVAS), rng.uniform(0, CANVAS), rng.uniform(0.08, 0.16) * CANVAS, rng.uniform(-40, 40))
            extra = np.maximum(extra, np.asarray(concept_mask(other, q)))
        # distractors are painted as part of the scene but never over the main concept
        mask = np.maximum(mask, np.where(mask > 127, 0, extra))
    if options.hard:
        # occluding bar across the object
        bar = Image.new("L", (CANVAS, CANVAS), 0)
        a = rng.uniform(0, math.pi)
        dx, dy = math.cos(a) * CANVAS, math.sin(a) * CANVAS
        ImageDraw.Draw(bar).line([(p.cx - dx, p.cy - dy), (p.cx + dx, p.cy + dy)], fill=255, width=max(2, int(0.25 * r)))
        occ = np.asarray(bar) > 127
    img = paint(Image.fromarray(mask), style, rng, hue)
    if options.hard:
        img = np.where(occ[..., None], img.mean(axis=(0, 1), keepdims=True) * 0.9, img)
        img = img * 0.8 + img.mean() * 0.2  # low contrast
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((image_size, image_size), Image.BOX)
    size_word = "small" if r < 0.3 * CANVAS else ("large" if r > 0.4 * CANVAS else None)
    return np.asarray(out), {"hue": hue, "colour": colour_name(hue), "size": size_word}
