"""Networks of the method: extractor F, projection head R, mask network U_o, classifier C.

F is torchvision's ResNet-34 (the paper's) or ResNet-18 (``arch``; ``weights=None``: the method
trains from scratch and nothing is downloaded). Two choices the paper leaves open, made here:

* **Input channels.** FER2013, FER+ and CK+ are grey, so by default F takes one channel and its
  first convolution is rebuilt for ``in_chans`` (torchvision's has 3).
* **Stem.** The paper uses the standard ResNet stem (7x7/2 convolution + max-pool) for 224x224
  inputs and, as far as it says, for CK+ at 48x48 too. ``stem="imagenet"`` keeps that (default;
  at 48x48 the last stage sees 2x2 maps). ``stem="small"`` replaces conv1 by a 3x3/1 convolution
  and keeps the max-pool (output stride 16 instead of 32): about 4x the compute at the same
  size, often better on 48-64 px faces. ``stem="stride2"`` is a 3x3/2 convolution without the
  max-pool: the same output stride 16 as ``small`` with conv1's maps a quarter the size (what
  CIFAR-style ResNets on 48 px FER use; 4x the compute of ``imagenet``). U_o attaches after conv1
  (conv + BN + ReLU) in all of them.

As in timm, the networks split into ``forward_features`` (images -> last feature map) and
``forward_head`` (feature map -> pooled features or logits), and checkpoints carry a
:class:`ModelConfig` (architecture, input and normalisation, class names) so that a trained
model can be rebuilt and fed without knowing how it was trained.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34

from occstudy.method import get_variant
from occstudy.recipes import ARCHS, STEMS

#: torchvision ResNets F can be (both end in 512 features); the names live in the torch-free
#: recipes module so that study files and the CLI can check them without importing torch.
_BUILDERS = {"resnet18": resnet18, "resnet34": resnet34}
HEADS: tuple[str, ...] = ("projector", "mask", "classifier")

#: Normalisation of float [0, 1] images before F. Training, evaluation and the figures call
#: :func:`occstudy.data.normalize` with its defaults, ``(x - 0.5) / 0.5``; these constants
#: record those defaults in checkpoints (a test checks that the two agree).
NORM_MEAN: float = 0.5
NORM_STD: float = 0.5
#: Allowed :attr:`ModelConfig.image_size`. 32 is MethodConfig's floor (F downsamples 32x);
#: the ceiling exists because predict allocates images of this side: a crafted checkpoint
#: asking for 10^6 px once exhausted the machine's memory.
IMAGE_SIZE_RANGE: tuple[int, int] = (32, 1024)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """How to rebuild a trained network and feed it, as stored in its checkpoints.

    The counterpart of timm's ``pretrained_cfg``: everything :mod:`occstudy.predict` needs
    besides the weights. Values are validated on construction, so a config read from a
    checkpoint is either sane or a ``ValueError`` naming the field.

    Attributes:
        arch: Architecture of F, one of :data:`ARCHS`.
        stem: Stem of F, one of :data:`STEMS`.
        in_chans: Input channels, 1 (grey) or 3 (RGB).
        image_size: Side of the square input the network was trained at, in
            :data:`IMAGE_SIZE_RANGE`.
        class_names: Name of each classifier output, in label-index order (at least 2,
            unique, non-empty). Lists are accepted and stored as a tuple.
        mean: Subtracted from float [0, 1] pixels: one value for every channel or one per
            channel.
        std: Divides the centred pixels (> 0), one value or one per channel like ``mean``.
    """

    arch: str
    stem: str
    in_chans: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...] = (NORM_MEAN,)
    std: tuple[float, ...] = (NORM_STD,)

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, why: str) -> ValueError:
            return ValueError(f"ModelConfig.{name}={value!r}: {why}")

        if self.arch not in ARCHS:
            raise bad("arch", self.arch, f"must be one of {ARCHS}")
        if self.stem not in STEMS:
            raise bad("stem", self.stem, f"must be one of {STEMS}")
        if not isinstance(self.in_chans, int) or isinstance(self.in_chans, bool):
            raise bad("in_chans", self.in_chans, "must be 1 or 3")
        if self.in_chans not in (1, 3):
            raise bad("in_chans", self.in_chans, "must be 1 or 3")
        lo, hi = IMAGE_SIZE_RANGE
        size = self.image_size
        if not isinstance(size, int) or isinstance(size, bool) or not lo <= size <= hi:
            raise bad("image_size", size, f"must be an int in [{lo}, {hi}]")
        names = self.class_names
        # A str is a sequence too: "abc" would silently become three classes.
        if not isinstance(names, (tuple, list)):
            raise bad("class_names", names, "must be a tuple of class names")
        if len(names) < 2:
            raise bad("class_names", names, "needs at least 2 classes")
        if not all(isinstance(n, str) and n for n in names):
            raise bad("class_names", names, "every name must be a non-empty str")
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        if dupes:
            # Predictions map name -> probability: a repeated name would drop a class.
            raise bad("class_names", names, f"names must be unique, repeated: {dupes}")
        object.__setattr__(self, "class_names", tuple(names))
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)):
                raise bad(name, values, "must be a tuple of numbers")
            if len(values) not in (1, self.in_chans):
                raise bad(
                    name,
                    values,
                    f"needs 1 value (all channels) or {self.in_chans} (one per channel)",
                )
            if not all(_is_number(v) and math.isfinite(v) for v in values):
                raise bad(name, values, "values must be finite numbers")
            if name == "std" and any(v <= 0 for v in values):
                raise bad(name, values, "values must be > 0")
            object.__setattr__(self, name, tuple(float(v) for v in values))

    @property
    def num_classes(self) -> int:
        """Number of classifier outputs."""
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (str, int, float, lists), as stored in checkpoints.

        Checkpoints are read with ``torch.load(weights_only=True)``, which refuses arbitrary
        classes, so the dataclass itself is never pickled.
        """
        return {
            "arch": self.arch,
            "stem": self.stem,
            "in_chans": self.in_chans,
            "image_size": self.image_size,
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`.

        Args:
            data: A mapping with exactly the keys of :meth:`to_dict`.

        Returns:
            The validated config.

        Raises:
            ValueError: ``data`` is not a mapping, lacks keys or has unknown ones (all named),
                or a value is invalid (see the class).
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"ModelConfig.from_dict: expected a mapping, got {type(data).__name__}"
            )
        expected = [f.name for f in fields(cls)]
        missing = [k for k in expected if k not in data]
        unknown = sorted(repr(k) for k in data if k not in expected)
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing keys {missing}")
            if unknown:
                # Strict on purpose: an unknown key means a newer or foreign writer whose
                # meaning this reader cannot honour.
                problems.append(f"unknown keys [{', '.join(unknown)}]")
            raise ValueError(
                f"ModelConfig.from_dict: {'; '.join(problems)} (expected exactly {expected})"
            )
        return cls(**{k: data[k] for k in expected})


class ResNetExtractor(nn.Module):
    """Extractor F: a torchvision ResNet trunk without its ImageNet classifier.

    Args:
        in_chans: Input channels (1 for grey faces, 3 for colour).
        stem: ``imagenet`` (7x7/2 conv + max-pool), ``small`` (3x3/1 conv + max-pool) or
            ``stride2`` (3x3/2 conv, no max-pool).
        arch: ``resnet34`` (the paper's) or ``resnet18``.
    """

    num_features = 512
    conv1_channels = 64

    def __init__(self, in_chans: int = 1, stem: str = "imagenet", arch: str = "resnet34") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"ResNetExtractor: arch must be one of {ARCHS}, got {arch!r}")
        if in_chans not in (1, 3):
            raise ValueError(f"ResNetExtractor: in_chans must be 1 or 3, got {in_chans!r}")
        if stem not in STEMS:
            raise ValueError(f"ResNetExtractor: stem must be one of {STEMS}, got {stem!r}")
        net = _BUILDERS[arch](weights=None)
        if stem in ("small", "stride2"):
            stride = 1 if stem == "small" else 2
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=stride, padding=1, bias=False)
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.in_chans = in_chans
        self.stem = stem
        self.arch = arch
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool: nn.Module = nn.Identity() if stem == "stride2" else net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        if stem != "imagenet":
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward_conv1(self, x: Tensor) -> Tensor:
        """Output of the first convolution block (conv1 + BN + ReLU), where U_o attaches.

        Args:
            x: Images (B, C, H, W).

        Returns:
            (B, 64, H/2, W/2) for the ImageNet and stride2 stems, (B, 64, H, W) for the small
            stem.
        """
        return self.relu(self.bn1(self.conv1(x)))

    def forward_stages(self, c1: Tensor) -> Tensor:
        """Max-pool (except ``stride2``) and the four residual stages.

        Args:
            c1: Output of :meth:`forward_conv1`, (B, 64, h, w).

        Returns:
            (B, 512, h', w') feature map of the last stage.
        """
        x = self.maxpool(c1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_trunk(self, c1: Tensor) -> Tensor:
        """Rest of F from conv1 features (B, 64, h, w) to the pooled representation h, (B, 512)."""
        return self.forward_head(self.forward_stages(c1))

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map of the last stage, before pooling (timm's ``forward_features``).

        Args:
            x: Images (B, C, H, W), any H, W >= 32.

        Returns:
            (B, 512, ceil(H/32), ceil(W/32)) with the ``imagenet`` stem, (B, 512, ceil(H/16),
            ceil(W/16)) with ``small`` and ``stride2``.
        """
        return self.forward_stages(self.forward_conv1(x))

    def forward_head(self, feats: Tensor) -> Tensor:
        """Global average pooling: F has no classifier, its head is the pooling.

        Args:
            feats: Feature map from :meth:`forward_features`, (B, 512, h, w).

        Returns:
            Representation h, (B, 512).
        """
        if feats.dim() != 4:
            raise ValueError(
                f"forward_head expects a (B, 512, h, w) feature map, got shape {tuple(feats.shape)}"
            )
        return torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Representation h = F(x): images (B, C, H, W) -> (B, 512)."""
        return self.forward_head(self.forward_features(x))


class ProjectionHead(nn.Module):
    """Projection head R: two fully connected layers, h (B, in) -> z (B, out)."""

    def __init__(self, in_dim: int = 512, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class MaskHead(nn.Module):
    """Mask recognition network U_o: two convolutions and an upsampling to the input size.

    Maps conv1 features (B, 64, h, w) to occlusion logits (B, 1, H, W) at the input resolution.
    """

    def __init__(self, in_channels: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, 1, kernel_size=1)

    def forward(self, c1: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.conv2(F.relu(self.bn(self.conv1(c1)), inplace=True))
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class Classifier(nn.Module):
    """Classifier C: two fully connected layers, h (B, in) -> logits (B, num_classes)."""

    def __init__(
        self, in_dim: int = 512, num_classes: int = 7, hidden_dim: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"Classifier: num_classes must be >= 2, got {num_classes!r}")
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class OccNet(nn.Module):
    """F with whichever of R, U_o and C a stage needs.

    The pretext stage builds ``heads=("projector", "mask")`` (or one of them, by variant); the
    fine-tune stage builds ``("classifier",)`` and may keep ``mask`` so that the mask network's
    IoU can still be measured. Heads a stage does not use are not built, so DDP sees no unused
    parameters.

    Args:
        in_chans: Input channels.
        stem: Stem of F (see :class:`ResNetExtractor`).
        arch: Architecture of F, ``resnet34`` or ``resnet18``.
        heads: Which heads to build, from ``projector``, ``mask``, ``classifier``.
        num_classes: Classes of C (needed with ``classifier``).
        proj_dim: Output dimension of R.
    """

    def __init__(
        self,
        *,
        in_chans: int = 1,
        stem: str = "imagenet",
        arch: str = "resnet34",
        heads: Sequence[str] = ("classifier",),
        num_classes: int = 7,
        proj_dim: int = 128,
    ) -> None:
        super().__init__()
        unknown = set(heads) - set(HEADS)
        if unknown:
            raise ValueError(f"OccNet: unknown heads {sorted(unknown)}; valid: {HEADS}")
        self.extractor = ResNetExtractor(in_chans=in_chans, stem=stem, arch=arch)
        d = ResNetExtractor.num_features
        # C is built right after F, before the optional heads: under one seed every variant of
        # the ablation then starts fine-tuning from the same C, whether or not U_o is carried.
        self.classifier = Classifier(d, num_classes) if "classifier" in heads else None
        self.projector = ProjectionHead(d, d, proj_dim) if "projector" in heads else None
        self.mask_head = MaskHead(ResNetExtractor.conv1_channels) if "mask" in heads else None

    @classmethod
    def from_config(
        cls, config: ModelConfig, *, heads: Sequence[str] = ("classifier",), proj_dim: int = 128
    ) -> OccNet:
        """The network a :class:`ModelConfig` describes (untrained), with ``heads``."""
        return cls(
            in_chans=config.in_chans,
            stem=config.stem,
            arch=config.arch,
            heads=heads,
            num_classes=config.num_classes,
            proj_dim=proj_dim,
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map of F's last stage, before pooling (timm's ``forward_features``).

        Args:
            x: Images (B, C, H, W), any H, W >= 32.

        Returns:
            (B, 512, h, w): h = ceil(H/32) with the ``imagenet`` stem, ceil(H/16) with
            ``small`` and ``stride2`` (likewise w).
        """
        return self.extractor.forward_features(x)

    def forward_head(self, feats: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooling and classifier C (timm's ``forward_head``).

        Args:
            feats: Feature map from :meth:`forward_features`, (B, 512, h, w).
            pre_logits: Stop after pooling and return the representation h.

        Returns:
            Expression logits (B, num_classes), or h (B, 512) with ``pre_logits``.
        """
        h = self.extractor.forward_head(feats)
        if pre_logits:
            return h
        if self.classifier is None:
            raise RuntimeError(
                "OccNet needs the classifier head for logits; build with 'classifier' "
                "(or call forward_head with pre_logits=True)"
            )
        return self.classifier(h)

    def forward(self, x: Tensor) -> Tensor:
        """Expression logits C(F(x)): images (B, C, H, W) -> (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def forward_with_mask(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Expression logits (B, num_classes) and occlusion-mask logits (B, 1, H, W) in one pass."""
        if self.classifier is None or self.mask_head is None:
            raise RuntimeError("forward_with_mask needs the classifier and mask heads")
        c1 = self.extractor.forward_conv1(x)
        logits = self.classifier(self.extractor.forward_trunk(c1))
        return logits, self.mask_head(c1, (x.shape[-2], x.shape[-1]))

    def predict_mask(self, x: Tensor) -> Tensor:
        """Occlusion-mask logits of U_o, shape (B, 1, H, W)."""
        if self.mask_head is None:
            raise RuntimeError("predict_mask needs the mask head")
        return self.mask_head(self.extractor.forward_conv1(x), (x.shape[-2], x.shape[-1]))

    def forward_pretext(
        self, x_clean: Tensor, x_occluded: Tensor, *, need_z: bool = True, need_mask: bool = True
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """One pass of F over clean and occluded faces together (2K images).

        Args:
            x_clean: Clean faces (K, C, H, W).
            x_occluded: Their occluded copies (K, C, H, W).
            need_z: Compute the projections (variants with L_SS).
            need_mask: Compute U_o's mask logits on the occluded faces (variants with L_mask).

        Returns:
            ``(z_occluded (K, D), z_clean (K, D), mask_logits (K, 1, H, W))``, ``None`` for
            what was not asked for.
        """
        k = x_clean.shape[0]
        size = (x_clean.shape[-2], x_clean.shape[-1])
        if need_z:
            if self.projector is None:
                raise RuntimeError("forward_pretext(need_z=True) needs the projector head")
            c1 = self.extractor.forward_conv1(torch.cat([x_clean, x_occluded], dim=0))
            z = self.projector(self.extractor.forward_trunk(c1))
            z_clean, z_occ = z[:k], z[k:]
            c1_occ = c1[k:]
        else:
            z_clean = z_occ = None
            # L_mask only depends on conv1 of the occluded faces: skip the rest of F.
            c1_occ = self.extractor.forward_conv1(x_occluded)
        mask_logits = None
        if need_mask:
            if self.mask_head is None:
                raise RuntimeError("forward_pretext(need_mask=True) needs the mask head")
            mask_logits = self.mask_head(c1_occ, size)
        return z_occ, z_clean, mask_logits


def heads_for_pretext(variant: str) -> tuple[str, ...]:
    """Heads the pretext stage of an ablation variant trains (:attr:`Variant.heads`)."""
    return get_variant(variant).heads


class PretextNet(nn.Module):
    """An OccNet whose ``forward`` is :meth:`OccNet.forward_pretext`, so that a DDP wrapper
    (which only synchronises gradients through ``forward``) can train the pretext stage."""

    def __init__(self, net: OccNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, x_clean: Tensor, x_occluded: Tensor, *, need_z: bool = True, need_mask: bool = True
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self.net.forward_pretext(x_clean, x_occluded, need_z=need_z, need_mask=need_mask)
