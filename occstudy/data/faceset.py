"""In-memory labelled face image set: the one container every loader returns."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import DataError


@dataclass(frozen=True, eq=False)
class FaceSet:
    """A set of face images held as one uint8 tensor.

    Attributes:
        images: uint8 ``(N, C, H, W)``, ``C`` = 1 (grey) or 3 (RGB).
        labels: int64 ``(N,)`` indices into ``classes``; ``-1`` when unlabelled.
        classes: Class names (``EMOTIONS7`` or ``EMOTIONS``); ``()`` when unlabelled.
        name: Human-readable origin, e.g. ``"fer2013:PrivateTest"``.
        label_space: Annotation source and size, e.g. ``"fer2013-7"``, ``"ferplus-8"``,
            ``"none"``.
        paths: Source file of each image (for messages); ``()`` when generated.
        groups: int64 ``(N,)`` grouping id (CK+ subject, occlusion region) or ``None``.
        group_names: Name of each group id (``group_names[g]`` names ``groups == g``) when the
            groups are categories worth reporting separately (the occluded face region of
            Occlusion-FERPlus); ``()`` when they are not (CK+ subjects) or there are none.
            :func:`occstudy.evaluate.evaluate` breaks accuracy down by group only when set.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    label_space: str
    paths: tuple[str, ...] = ()
    groups: torch.Tensor | None = None
    group_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        imgs, labels = self.images, self.labels
        if not isinstance(imgs, torch.Tensor) or imgs.dtype != torch.uint8 or imgs.dim() != 4:
            raise DataError(
                f"FaceSet {self.name!r}: images must be a uint8 (N, C, H, W) tensor, got "
                f"{getattr(imgs, 'dtype', type(imgs))} {tuple(getattr(imgs, 'shape', ()))}"
            )
        if imgs.shape[1] not in (1, 3):
            raise DataError(f"FaceSet {self.name!r}: channels must be 1 or 3, got {imgs.shape[1]}")
        n = imgs.shape[0]
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
            raise DataError(f"FaceSet {self.name!r}: labels must be an int64 tensor")
        if labels.shape != (n,):
            raise DataError(f"FaceSet {self.name!r}: labels shape {tuple(labels.shape)} != ({n},)")
        if n and labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < -1 or hi >= len(self.classes):
                raise DataError(
                    f"FaceSet {self.name!r}: labels in [{lo}, {hi}] do not index "
                    f"{len(self.classes)} classes"
                )
        if self.paths and len(self.paths) != n:
            raise DataError(f"FaceSet {self.name!r}: {len(self.paths)} paths for {n} images")
        if self.groups is not None and (
            self.groups.dtype != torch.int64 or self.groups.shape != (n,)
        ):
            raise DataError(f"FaceSet {self.name!r}: groups must be int64 ({n},)")
        if self.group_names:
            if self.groups is None:
                raise DataError(f"FaceSet {self.name!r}: group_names given without groups")
            lo, hi = (int(self.groups.min()), int(self.groups.max())) if n else (0, 0)
            if lo < 0 or hi >= len(self.group_names):
                raise DataError(
                    f"FaceSet {self.name!r}: groups in [{lo}, {hi}] do not index "
                    f"{len(self.group_names)} group names"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        _, c, h, w = self.images.shape
        return (
            f"FaceSet(name={self.name!r}, n={len(self)}, shape=({c}, {h}, {w}), "
            f"label_space={self.label_space!r})"
        )

    def fingerprint(self) -> str:
        """Content hash identifying the data, for checkpoints and caches.

        Returns:
            The first 16 hex digits of a sha256 over image bytes, labels and class names.
        """
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.labels.detach().cpu().contiguous().numpy().tobytes())
        h.update("\x1f".join(self.classes).encode())
        return h.hexdigest()[:16]

    def subset(self, index: torch.Tensor | Sequence[int]) -> FaceSet:
        """Select images by position.

        Args:
            index: int64 ``(K,)`` positions (or a boolean ``(N,)`` mask, or a list of ints).

        Returns:
            A new FaceSet with ``K`` images in the given order.
        """
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.to(torch.int64).flatten()
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise DataError(f"FaceSet {self.name!r}: subset index out of range for {len(self)}")
        paths = tuple(self.paths[i] for i in idx.tolist()) if self.paths else ()
        return FaceSet(
            images=self.images[idx],
            labels=self.labels[idx],
            classes=self.classes,
            name=self.name,
            label_space=self.label_space,
            paths=paths,
            groups=None if self.groups is None else self.groups[idx],
            group_names=self.group_names,
        )

    def class_counts(self) -> dict[str, int]:
        """Number of images per class, in ``classes`` order (``"unlabelled"`` for -1)."""
        counts = {c: 0 for c in self.classes}
        bins = torch.bincount(self.labels[self.labels >= 0], minlength=len(self.classes))
        for c, k in zip(self.classes, bins.tolist(), strict=False):
            counts[c] = int(k)
        unlabelled = int((self.labels < 0).sum())
        if unlabelled:
            counts["unlabelled"] = unlabelled
        return counts

    def stratified_fraction(self, fraction: float, seed: int) -> FaceSet:
        """Seeded, class-stratified subset (label-efficiency studies).

        Each present class keeps ``max(1, round(fraction * count))`` images, so rare classes
        never vanish. Original order is preserved.

        Args:
            fraction: Fraction in ``(0, 1]``.
            seed: Seed of the selection.

        Returns:
            The subset.
        """
        if not 0.0 < fraction <= 1.0:
            raise DataError(f"fraction must be in (0, 1], got {fraction}")
        if fraction == 1.0:
            return self
        g = torch.Generator().manual_seed(int(seed))
        keep: list[torch.Tensor] = []
        for label in torch.unique(self.labels).tolist():
            members = (self.labels == label).nonzero().flatten()
            k = max(1, round(fraction * members.numel()))
            perm = torch.randperm(members.numel(), generator=g)
            keep.append(members[perm[:k]])
        idx = torch.sort(torch.cat(keep)).values if keep else torch.zeros(0, dtype=torch.int64)
        return self.subset(idx)

    def concat(self, other: FaceSet) -> FaceSet:
        """Concatenate two sets with the same label space and image shape.

        Args:
            other: Set with identical ``classes``, ``label_space`` and ``(C, H, W)``.

        Returns:
            The ``N + M`` image set named ``"<self>+<other>"``.
        """
        if other.classes != self.classes or other.label_space != self.label_space:
            raise DataError(
                f"cannot concat {self.name!r} ({self.label_space}) with {other.name!r} "
                f"({other.label_space}): label spaces differ"
            )
        if other.images.shape[1:] != self.images.shape[1:]:
            raise DataError(
                f"cannot concat {self.name!r} and {other.name!r}: image shapes "
                f"{tuple(self.images.shape[1:])} vs {tuple(other.images.shape[1:])}"
            )
        groups = None
        if self.groups is not None and other.groups is not None:
            groups = torch.cat([self.groups, other.groups])
        # Names only survive when both sides mean the same thing by each group id.
        same_names = groups is not None and self.group_names == other.group_names
        group_names = self.group_names if same_names else ()
        paths = self.paths + other.paths if self.paths and other.paths else ()
        return FaceSet(
            images=torch.cat([self.images, other.images]),
            labels=torch.cat([self.labels, other.labels]),
            classes=self.classes,
            name=f"{self.name}+{other.name}",
            label_space=self.label_space,
            paths=paths,
            groups=groups,
            group_names=group_names,
        )
