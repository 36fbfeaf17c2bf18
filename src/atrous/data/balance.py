"""Class weights from pixel counts, for losses on unbalanced data (pure numpy).

Both take per-class pixel counts as ``atrous check-data`` gathers them (``DataReport.pixels``
and ``DataReport.present_pixels``); a class with no pixels gets weight 0 (nothing to weigh, and
no division by zero).
"""

from __future__ import annotations

import numpy as np


def median_frequency_weights(pixels: np.ndarray, present_pixels: np.ndarray) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus 2015): w_c = median(freq) / freq_c, where
    freq_c = pixels_c / present_pixels_c (present_pixels_c: all pixels of the images in which
    class c occurs) and the median runs over the classes that occur."""
    pixels = np.asarray(pixels, dtype=np.float64)
    present = np.asarray(present_pixels, dtype=np.float64)
    seen = (pixels > 0) & (present > 0)
    weights = np.zeros_like(pixels)
    if seen.any():
        frequency = pixels[seen] / present[seen]
        weights[seen] = np.median(frequency) / frequency
    return weights


def inverse_log_weights(pixels: np.ndarray, c: float = 1.02) -> np.ndarray:
    """ENet's weights (Paszke et al. 2016): w_c = 1 / ln(c + p_c), p_c = pixels_c / Σ pixels;
    ``c`` = 1.02 keeps them between about 1.4 and 50."""
    pixels = np.asarray(pixels, dtype=np.float64)
    total = pixels.sum()
    weights = np.zeros_like(pixels)
    if total > 0:
        seen = pixels > 0
        weights[seen] = 1.0 / np.log(c + pixels[seen] / total)
    return weights
