"""Split rules: class subsets, and train/val/test sets carved out by fractions or counts."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cnnlab.data.source import Split
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


def class_subset_map(source_names: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """``new_label[old_label]``: ``0..k-1`` for the listed ``classes``, -1 for the others."""
    unknown = [c for c in classes if c not in source_names]
    if unknown:
        raise ConfigError(
            f"data.classes has {unknown}, which the dataset does not have. "
            f"Valid class names: {list(source_names)}."
        )
    new_label = torch.full((len(source_names),), -1, dtype=torch.long)
    for i, c in enumerate(classes):
        new_label[list(source_names).index(c)] = i
    return new_label


def select_classes(split: Split, source_names: Sequence[str], classes: Sequence[str]) -> Split:
    """Keep the samples of ``classes``, relabelled ``0..k-1`` in the listed order."""
    mapped = class_subset_map(source_names, classes)[split.labels]
    kept = split.subset(torch.nonzero(mapped >= 0).flatten())
    kept.labels = mapped[mapped >= 0]
    return kept


def _order(n: int, seed: int, head: bool) -> torch.Tensor:
    if head:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _grouped_by_class(labels: torch.Tensor) -> bool:
    """Labels of more than one class, each class's samples all together (a folder's listing)."""
    if labels.ndim != 1 or len(labels) < 2:
        return False
    classes = labels.unique().numel()
    return classes > 1 and int((labels[1:] != labels[:-1]).sum()) == classes - 1


def random_sample(split: Split, count: int, seed: int) -> Split:
    """``count`` samples of ``split`` drawn at random with ``seed`` (all of it when smaller).

    Not the first ones: a folder dataset lists its images class by class.
    """
    return split.subset(_order(len(split), seed, head=False)[:count])


def take(
    split: Split, amount: float | int | str, key: str, *, seed: int, head: bool, dataset: str
) -> tuple[Split, Split]:
    """Split off ``amount`` (a fraction in (0, 1) or a count) of ``split``: (taken, rest).

    Taken at random with ``seed``, or the first samples with ``head``. The rest (the training
    part) keeps the source's order; the part taken (an evaluation part) keeps the seeded
    order: see :func:`resplit`.
    """
    n = len(split)
    if isinstance(amount, str) or amount <= 0:
        raise ConfigError(
            f"data.{key}={amount!r} is not valid: use a fraction in (0, 1), a number of "
            "images, 'test' or 'official'."
        )
    count = round(amount * n) if amount < 1 else int(amount)
    if not 0 < count < n:
        raise ConfigError(
            f"data.{key}={amount!r} takes {count} of the {n} available images of {dataset}, "
            f"which leaves no data on one side; choose a value in (0, 1) or a count between 1 "
            f"and {n - 1}."
        )
    order = _order(n, seed, head)
    taken, rest = order[:count], order[count:].sort().values
    return split.subset(taken), split.subset(rest)


def split_sizes(sizes: Mapping[str, float | int | str], n: int, dataset: str) -> dict[str, int]:
    """Counts for ``{part: count | fraction | "rest"}`` of ``n`` samples (``data.split``)."""
    unknown = sorted(set(sizes) - set(SPLIT_NAMES))
    if unknown or "train" not in sizes or "test" not in sizes:
        raise ConfigError(
            f"data.split={dict(sizes)} must give train and test (and optionally val), each a "
            "count, a fraction, or 'rest' for what the others leave; e.g. "
            "{train: 0.8, val: 0.1, test: 0.1} or {train: 468, val: 4214, test: rest}."
        )
    counts: dict[str, int] = {}
    for part, value in sizes.items():
        if value == "rest":
            continue
        if isinstance(value, str) or not value > 0:
            raise ConfigError(f"data.split.{part}={value!r} must be a positive count or fraction.")
        counts[part] = round(value * n) if value < 1 else int(value)
    rest = [part for part, value in sizes.items() if value == "rest"]
    if len(rest) > 1:
        raise ConfigError(f"data.split: only one part can be 'rest', not {rest}.")
    if rest:
        counts[rest[0]] = n - sum(counts.values())
    elif all(isinstance(v, float) for v in sizes.values()) and abs(sum(sizes.values()) - 1) < 1e-9:
        last = list(sizes)[-1]  # fractions that add up to 1 cover every sample
        counts[last] = n - sum(c for p, c in counts.items() if p != last)
    if sum(counts.values()) > n or any(c <= 0 for c in counts.values()):
        raise ConfigError(
            f"data.split={dict(sizes)} asks for {counts} of the {n} images of {dataset}; "
            "lower the counts so that every part gets at least one image."
        )
    return {part: counts[part] for part in sizes}


def resplit(split: Split, sizes: Mapping[str, int], seed: int) -> dict[str, Split]:
    """Consecutive runs of one seeded permutation of ``split``, ``sizes[part]`` each.

    The training part keeps the source's order (its loader shuffles each epoch); validation and
    test keep the seeded order, so that their batches mix the classes even where the source
    lists them class by class (an image folder). That matters where a batch's own statistics
    normalize it (``module.eval_norm=batch``, as the notebooks measured): a batch of one class
    loses the class signal.
    """
    order = _order(len(split), seed, head=False)
    out, start = {}, 0
    for part, count in sizes.items():
        taken = order[start : start + count]
        out[part] = split.subset(taken.sort().values if part == "train" else taken)
        start += count
    return out


def arrange(
    splits: dict[str, Split],
    *,
    split: Mapping[str, float | int | str] | None,
    val_split: float | int | str,
    test_split: float | int,
    seed: int,
    head: bool,
    dataset: str,
) -> tuple[dict[str, Split], str]:
    """train/val/test from a source's splits, and a line saying how they were made.

    A source without a test set is divided by ``split`` (sizes per part) or else loses
    ``test_split`` of its training images to a test set; validation is then ``val_split`` of
    train, the test set (``test``) or the source's own (``official``). The source's own
    evaluation splits, when it lists them class by class (an image folder's ``test/``), come in
    a seeded order instead, as the parts taken here do (see :func:`resplit`).
    """
    out = {k: v for k, v in splits.items() if len(v) or k == "train"}
    how = []
    for part in ("val", "test"):
        if part in out and _grouped_by_class(out[part].labels):
            out[part] = out[part].subset(_order(len(out[part]), seed, head=False))
            how.append(f"{part} in a seeded order (the source lists it class by class)")
    if "test" not in out:
        if split:
            sizes = split_sizes(split, len(out["train"]), dataset)
            out.update(resplit(out["train"], sizes, seed))
            how.append(f"seeded split of {sum(sizes.values())} images by data.split {sizes}")
        elif test_split:
            out["test"], out["train"] = take(
                out["train"], test_split, "test_split", seed=seed, head=head, dataset=dataset
            )
            how.append(f"test = {test_split} of train (data.test_split)")
        else:
            raise ConfigError(
                f"{dataset} has no test split of its own: set data.test_split to a fraction "
                "(e.g. 0.2) of the training images to hold out for testing, or data.split."
            )
    if val_split == "test":
        out["val"] = out["test"]
        how.append("val = test")
    elif val_split == "official":
        if "val" not in out:
            raise ConfigError(
                f"data.val_split=official, but {dataset} has no validation split of its own; "
                "use a fraction (e.g. 0.1), 'test', or data.split with a val part."
            )
    elif split and "val" in split and "val" in out:
        raise ConfigError(
            f"data.split gives {dataset} a val part, and data.val_split={val_split!r} would "
            "take another; set data.val_split=official to use the val part of data.split."
        )
    else:
        out["val"], out["train"] = take(
            out["train"], val_split, "val_split", seed=seed, head=head, dataset=dataset
        )
        how.append(f"val = {val_split} of train ({'first images' if head else 'seeded'})")
    return {k: out[k] for k in SPLIT_NAMES}, "; ".join(how) or "the source's own splits"


def refuse_zero_steps(images: int, batch_size: int, drop_last: bool, trainer: Any) -> None:
    """Refuse, before training starts, a run whose every training batch would be dropped."""
    devices = max(int(getattr(trainer, "world_size", 1) or 1), 1)
    per_device = -(-images // devices)  # a DDP rank's share of the training images
    if drop_last and per_device < batch_size:
        share = f" ({per_device} per device on {devices} devices)" if devices > 1 else ""
        raise ConfigError(
            f"The training split has {images} images{share}, fewer than data.batch_size="
            f"{batch_size}, and data.drop_last=true drops that incomplete batch: the run would "
            f"take no optimizer step. Use data.batch_size={per_device} or smaller, or "
            "data.drop_last=false."
        )
