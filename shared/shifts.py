"""Deterministic domain shifts of image data sets: the "last mile" a device adapts to.

A shift is a pure function of each image, so it is identical for the training and test
splits, for every batch order and on every machine. Named variants, selected as
``DATASET:NAME`` (e.g. ``fashion-mnist:rotate30``):

* ``rotate<D>``: rotation by D degrees (1..359) counter-clockwise (as displayed, rows
  downwards) about the image centre,
  bilinear, black outside the original frame;
* ``noise<S>``: additive Gaussian noise of standard deviation S grey levels (1..255),
  clipped to 0..255; the noise of an image is drawn from a counter-based generator keyed
  by a hash of the image itself, so the same image always gets the same noise;
* ``invert``: contrast inversion, ``255 - x``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from bitfleet.errors import DataError
from bitfleet.prng import splitmix64

SHIFT_NAMES = ("rotate<degrees>", "noise<sigma>", "invert")
_PATTERN = re.compile(r"^(rotate|noise)(\d+)$|^(invert)$")
# Rows transformed at once: bounds the float temporaries on 60k-image splits.
_ROW_CHUNK = 4096

Shift = Callable[[NDArray[np.uint8]], NDArray[np.uint8]]


def parse_shift(name: str) -> Shift:
    """The transform a shift name stands for; a clear :class:`DataError` otherwise."""
    match = _PATTERN.match(name)
    if match is None:
        raise DataError(
            f"unknown shift {name!r}; use one of {', '.join(SHIFT_NAMES)} "
            "(e.g. rotate30, noise64, invert)"
        )
    family, number, invert = match.groups()
    if invert:
        return invert_images
    value = int(number)
    if family == "rotate":
        if not 1 <= value <= 359:
            raise DataError(f"rotation {value} is out of range: use 1..359 degrees")
        return lambda x: rotate_images(x, value)
    if not 1 <= value <= 255:
        raise DataError(f"noise sigma {value} is out of range: use 1..255 grey levels")
    return lambda x: noise_images(x, value)


def invert_images(x: NDArray[np.uint8]) -> NDArray[np.uint8]:
    return (255 - x).astype(np.uint8)


def rotate_images(x: NDArray[np.uint8], degrees: float) -> NDArray[np.uint8]:
    """Bilinear rotation about the centre; pixels from outside the frame are 0."""
    side = _side(x)
    corners, weights = _rotation_taps(side, degrees)
    out = np.empty_like(x)
    for start in range(0, len(x), _ROW_CHUNK):
        rows = x[start : start + _ROW_CHUNK].astype(np.float32)
        padded = np.concatenate([rows, np.zeros((len(rows), 1), np.float32)], axis=1)
        value = sum(padded[:, c] * w for c, w in zip(corners, weights, strict=True))
        out[start : start + _ROW_CHUNK] = np.clip(np.rint(value), 0, 255)
    return out


def noise_images(x: NDArray[np.uint8], sigma: int) -> NDArray[np.uint8]:
    """Gaussian noise (Box-Muller on splitmix64 draws keyed by each image's own hash)."""
    keys = _image_hashes(x)
    index = np.arange(x.shape[1], dtype=np.uint64)
    out = np.empty_like(x)
    for start in range(0, len(x), _ROW_CHUNK):
        counters = keys[start : start + _ROW_CHUNK, None] + np.uint64(2) * index
        first = _uniform(splitmix64(counters))
        second = _uniform(splitmix64(counters + np.uint64(1)))
        gauss = np.sqrt(-2.0 * np.log(first)) * np.cos(2.0 * math.pi * second)
        noisy = x[start : start + _ROW_CHUNK] + sigma * gauss
        out[start : start + _ROW_CHUNK] = np.clip(np.rint(noisy), 0, 255)
    return out


def _side(x: NDArray[np.uint8]) -> int:
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise DataError(f"shifts need square images; {x.shape[1]} features are not a square number")
    return side


def _rotation_taps(
    side: int, degrees: float
) -> tuple[list[NDArray[np.intp]], list[NDArray[np.float32]]]:
    """For each output pixel, its four source pixels and bilinear weights.

    Sources outside the frame point at index ``side**2``: the zero column appended to
    the images.
    """
    centre = (side - 1) / 2
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float64)
    angle = math.radians(degrees)
    # Inverse mapping: each output pixel samples the input at the rotated-back position.
    dy, dx = rows - centre, cols - centre
    src_r = centre + dy * math.cos(angle) + dx * math.sin(angle)
    src_c = centre - dy * math.sin(angle) + dx * math.cos(angle)
    r0, c0 = np.floor(src_r), np.floor(src_c)
    fr, fc = src_r - r0, src_c - c0
    corners, weights = [], []
    for dr, dc, w in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < side) & (c >= 0) & (c < side)
        flat = np.where(inside, r * side + c, side * side).astype(np.intp)
        corners.append(flat.ravel())
        weights.append(w.ravel().astype(np.float32))
    return corners, weights


def _image_hashes(x: NDArray[np.uint8]) -> NDArray[np.uint64]:
    """A 64-bit hash per row: splitmix64 chained over the row's bytes, 8 at a time."""
    width = -(-x.shape[1] // 8) * 8
    padded = np.zeros((len(x), width), dtype=np.uint8)
    padded[:, : x.shape[1]] = x
    words = padded.view("<u8")
    state = np.zeros(len(x), dtype=np.uint64)
    for column in range(words.shape[1]):
        state = splitmix64(state ^ words[:, column])
    return state


def _uniform(bits: NDArray[np.uint64]) -> NDArray[np.float64]:
    """53 random bits as a float in (0, 1]: never 0, so the logarithm is finite."""
    return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
