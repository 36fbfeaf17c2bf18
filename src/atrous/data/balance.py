"""Class weights from a training set's pixel counts, for a class-weighted cross-entropy.

Both recipes read per-class counts that ``atrous check-data`` gathers (``pixels[c]``: pixels
labelled c; ``present_pixels[c]``: all pixels of the images in which c appears):

- median-frequency balancing (Eigen & Fergus, "Predicting Depth, Surface Normals and Semantic
  Labels with a Common Multi-Scale Convolutional Architecture", ICCV 2015; used by SegNet):
  ``freq_c = pixels_c / present_pixels_c``, ``w_c = median(freq) / freq_c``;
- inverse log frequency (Paszke et al., "ENet: A Deep Neural Network Architecture for Real-Time
  Semantic Segmentation", 2016): ``p_c = pixels_c / sum(pixels)``, ``w_c = 1 / ln(c + p_c)``
  with c = 1.02, which bounds every weight by 1 / ln(1.02) ≈ 50.5.

A class with no labelled pixel gets weight 0 in both: this data cannot teach it, and the
formulas would otherwise give it the largest weight (or divide by zero).

    weights = class_weights("median_frequency", report.pixels, report.present_pixels)
"""

from __future__ import annotations

from typing import Literal

import numpy as np

#: How the cross-entropy weights its classes (``LossConfig.class_weighting``).
ClassWeighting = Literal["none", "median_frequency", "inverse_log"]
CLASS_WEIGHTINGS: tuple[str, ...] = ("none", "median_frequency", "inverse_log")


def _counts(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite non-negative counts, else a ValueError."""
    counts = np.asarray(values, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(f"{name} must be one count per class, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{name} must be finite non-negative pixel counts, got {counts}")
    return counts


def median_frequency_weights(pixels: np.ndarray, present_pixels: np.ndarray) -> np.ndarray:
    """Eigen & Fergus weights ``median(freq) / freq_c``; the median runs over the classes seen.

    ``freq_c`` is the share of class c in the images where c appears, so a class that is rare
    but large where present is not over-weighted. The median class gets weight 1; unseen classes
    get 0. Raises ValueError if the counts disagree in length, exceed the image totals, or no
    class has a pixel.
    """
    pixels = _counts(pixels, "pixels")
    present = _counts(present_pixels, "present_pixels")
    if pixels.shape != present.shape:
        raise ValueError(f"pixels has {pixels.size} classes but present_pixels has {present.size}")
    if np.any(pixels > present):
        raise ValueError(
            "pixels of a class exceed the pixels of the images it appears in "
            f"(pixels {pixels}, present_pixels {present})"
        )
    seen = pixels > 0
    if not seen.any():
        raise ValueError("no class has a labelled pixel: class weights are undefined")
    freq = np.divide(pixels, present, out=np.zeros_like(pixels), where=seen)
    weights = np.zeros_like(pixels)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return weights


def inverse_log_weights(pixels: np.ndarray, c: float = 1.02) -> np.ndarray:
    """ENet weights ``1 / ln(c + p_c)`` with ``p_c`` the class's share of labelled pixels.

    ``c`` > 1 keeps the logarithm positive and caps the weights at ``1 / ln(c)``; unseen classes
    get 0. Raises ValueError for ``c`` <= 1 or when no class has a pixel.
    """
    pixels = _counts(pixels, "pixels")
    if c <= 1:
        raise ValueError(f"inverse-log weighting needs c > 1 (ENet uses 1.02), got {c}")
    total = pixels.sum()
    if total == 0:
        raise ValueError("no class has a labelled pixel: class weights are undefined")
    seen = pixels > 0
    weights = np.zeros_like(pixels)
    weights[seen] = 1.0 / np.log(c + pixels[seen] / total)
    return weights


def class_weights(
    method: ClassWeighting, pixels: np.ndarray, present_pixels: np.ndarray
) -> np.ndarray:
    """The weights ``method`` (a ``LossConfig.class_weighting``) gives these counts.

    "none" gives every class weight 1; "inverse_log" does not use ``present_pixels``.
    """
    if method == "none":
        return np.ones_like(_counts(pixels, "pixels"))
    if method == "median_frequency":
        return median_frequency_weights(pixels, present_pixels)
    if method == "inverse_log":
        return inverse_log_weights(pixels)
    raise ValueError(
        f"unknown class weighting {method!r}; available: {', '.join(CLASS_WEIGHTINGS)}"
    )
