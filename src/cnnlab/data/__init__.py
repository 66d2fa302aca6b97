"""Datasets: where images come from (sources) and how they are held (storages).

- ``source.py``: what a source returns (``TensorSplit``/``FileSplit`` splits, class names).
- one source per dataset, no Lightning in them: ``cifar.py``, ``mnist.py``, ``celeba.py``,
  ``image_folder.py``, ``digits.py``, ``synthetic.py``; downloads and MD5 checks in
  ``download.py``.
- ``datamodule.py``: the one ``ClassificationDataModule`` (source + storage + split rules +
  class subset + normalization), its config defaults generated in ``schema.py``.
- storages: ``memory.py`` (decode once, cache, batch loader, device residency) and
  ``per_sample.py`` (Dataset + DataLoader with v2 ``transforms.py``); both use ``decode.py``
  (decoding/checking image files in processes) and ``cache.py`` (the on-disk cache).
- ``splits.py`` (class subsets, train/val/test rules), ``normalize.py`` and ``augment.py`` (on the
  training device).
"""
