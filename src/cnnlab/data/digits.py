"""The handwritten digits bundled with cnnlab: 1,797 8x8 images, offline, no download.

``digits.csv.gz`` is the test set of E. Alpaydin and C. Kaynak's "Optical Recognition of
Handwritten Digits" (UCI Machine Learning Repository, 1998, CC BY 4.0), byte for byte the copy
scikit-learn ships for ``load_digits``: one row per image, 64 counts of 0-16 then the label.
Bundling the file spares every start-up scikit-learn and the SciPy import it brings.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.source import Source, SourceData, TensorSplit

DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")


class DigitsSource(Source):
    """The bundled digits (counts 0-16) scaled to uint8 ``(N, 1, 8, 8)``, labels 0-9."""

    title = "digits"

    def load(self) -> SourceData:
        with gzip.open(DIGITS_FILE, "rt") as text:
            rows = np.loadtxt(text, delimiter=",", dtype=np.float64)
        pixels = torch.from_numpy(rows[:, :-1]).reshape(-1, 1, 8, 8)
        images = pixels.mul(255 / 16).round().to(torch.uint8)
        labels = torch.from_numpy(rows[:, -1].astype(np.int64))
        return SourceData({"train": TensorSplit(images, labels)}, [str(n) for n in range(10)])
