"""Decoding and checking image files in worker processes; reporting undecodable ones.

Used by both storages: in memory (every image decoded once, resized) and per sample (every
file checked once with PIL, so that a bad file is reported before training, not mid-epoch).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from cnnlab.cluster import allocated_cpus
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Most files per task handed to a worker process: large enough to amortize the hand-over,
# small enough that the workers finish together.
_CHUNK = 1024
# File names listed in the bad-image warning; the count always covers all of them.
_LISTED = 20

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class FileOptions:
    """How image files are checked or decoded once: ``decode_workers`` processes (None: one
    per core), ``on_bad_image`` (``skip`` with one warning, or ``error``), results cached in
    ``cache_dir`` (None: no cache)."""

    cache_dir: str | None = None
    decode_workers: int | None = None
    on_bad_image: str = "skip"

    def __post_init__(self) -> None:
        self.on_bad_image = validate_on_bad_image(self.on_bad_image)
        self.decode_workers = resolve_workers(self.decode_workers)

    def cache_file(self, kind: str, root: Path, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return Path(self.cache_dir) / f"{kind}-{root.resolve().name}-{key}.pt"


def check_bad_images(bad: dict[str, str], on_bad_image: str, root: Path) -> None:
    """Raise (``error``) or warn once (``skip``) about undecodable ``{relative path: reason}``."""
    if not bad:
        return
    names = sorted(bad)
    if on_bad_image == "error":
        first = names[0]
        raise DataError(
            f"Image {root / first} cannot be decoded ({bad[first]})"
            + (
                f"; {len(names) - 1} other image(s) cannot be decoded either"
                if len(names) > 1
                else ""
            )
            + ". Delete or replace such files, or set data.on_bad_image=skip to leave them out."
        )
    listed = ", ".join(f"{n} ({bad[n]})" for n in names[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    log.warning(
        "Skipped %d undecodable image(s) under %s: %s%s.",
        len(names),
        root,
        listed,
        more,
    )


def validate_on_bad_image(value: str) -> str:
    if value not in ("skip", "error"):
        raise ConfigError(
            f"data.on_bad_image={value!r} is not valid; use 'skip' (leave undecodable images out "
            "with one warning) or 'error' (stop and name the file)."
        )
    return value


def resolve_workers(workers: int | None) -> int:
    """``workers``, or one per CPU core this process may use when None."""
    if workers is None:
        return allocated_cpus()
    if workers < 1:
        raise ConfigError(f"data.decode_workers={workers} must be >= 1 (or null for all cores).")
    return workers


def parallel_chunks(fn: Callable[[Sequence[T]], R], items: Sequence[T], workers: int) -> list[R]:
    """``fn`` over chunks of ``items`` (in order), in worker processes when ``workers > 1``.

    Processes rather than threads: decoding small images is dominated by per-call Python
    overhead that holds the GIL. Forked workers inherit the imported modules, so they start at
    once; nothing in them touches CUDA.
    """
    size = max(1, min(_CHUNK, -(-len(items) // max(workers, 1))))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    if workers <= 1 or len(chunks) <= 1:
        return [fn(c) for c in chunks]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        min(workers, len(chunks)), mp_context=context, initializer=_one_thread
    ) as pool:
        return list(pool.map(fn, chunks))


def _one_thread() -> None:
    """Worker processes already run in parallel: keep torch's own thread pool out of it."""
    import torch

    torch.set_num_threads(1)


def _reason(err: Exception) -> str:
    """A one-line reason; torchvision prefixes its decoder errors with the C++ source location."""
    text = " ".join(str(err).split()) or "cannot decode"
    if ".cpp:" in text:
        text = text.rsplit(", ", 1)[-1]
    return f"{type(err).__name__}: {text}"


# ---- checking files for the per-sample (file) path ------------------------------------------
def _verify_chunk(paths: Sequence[str]) -> list[str | None]:
    """``None`` for each file PIL can decode, else the reason it cannot."""
    from PIL import Image

    out: list[str | None] = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
            # verify() does not decode JPEG data: also decode, at 1/8 scale where the format
            # allows (draft), which still reads every byte and so catches truncated files.
            with Image.open(path) as im:
                im.draft(im.mode, (1, 1))
                im.load()
            out.append(None)
        except Exception as err:  # any decoder failure marks the file bad
            out.append(_reason(err))
    return out


def find_bad_images(paths: Sequence[str], workers: int) -> dict[str, str]:
    """``{path: reason}`` of the files in ``paths`` that PIL cannot decode."""
    results = parallel_chunks(_verify_chunk, paths, workers)
    flat = [r for chunk in results for r in chunk]
    return {p: r for p, r in zip(paths, flat, strict=True) if r is not None}


# ---- decoding into memory --------------------------------------------------------------------
def _decode_chunk(
    paths: Sequence[str], size: int, channels: int
) -> tuple[np.ndarray, list[str | None]]:
    """Decode ``paths`` to ``uint8 (n, channels, size, size)``, resized where needed.

    torchvision's decoders (JPEG, PNG, WebP, GIF) are several times faster than PIL on small
    images; formats they do not read (BMP, PPM, TIFF, ...) fall back to PIL.
    """
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                raw = f.read()
            if not raw:
                raise ValueError("empty file")
            try:
                image = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=mode)
            except RuntimeError:
                with Image.open(io.BytesIO(raw)) as pil:
                    pixels = np.asarray(pil.convert("RGB" if channels == 3 else "L"))
                image = torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels).copy())
                image = image.permute(2, 0, 1)
            if image.ndim == 4:  # animated formats: keep the first frame
                image = image[0]
            if tuple(image.shape[-2:]) != (size, size):
                image = TF.resize(image, [size, size], antialias=True)
            out[i] = image.numpy()
            errors.append(None)
        except Exception as err:  # any decoder failure marks the file bad
            errors.append(_reason(err))
    return out, errors


def decode_images(
    paths: Sequence[str], image_size: int, channels: int, workers: int
) -> tuple[np.ndarray, dict[str, str]]:
    """All decodable ``paths`` as ``uint8 (N, C, S, S)`` in order, and ``{bad path: reason}``.

    Images of another size are resized to ``image_size x image_size`` (aspect ratio not kept);
    ``channels`` 3 converts to RGB, 1 to grey.
    """
    decode = partial(_decode_chunk, size=image_size, channels=channels)
    results = parallel_chunks(decode, paths, workers)
    if not results:
        return np.zeros((0, channels, image_size, image_size), dtype=np.uint8), {}
    images = np.concatenate([r[0] for r in results])
    errors = [e for r in results for e in r[1]]
    bad = {p: e for p, e in zip(paths, errors, strict=True) if e is not None}
    if bad:
        images = images[np.array([e is None for e in errors], dtype=bool)]
    return images, bad
