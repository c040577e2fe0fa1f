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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34

from occstudy.recipes import ARCHS, STEMS

#: torchvision ResNets F can be (both end in 512 features); the names live in the torch-free
#: recipes module so that study files and the CLI can check them without importing torch.
_BUILDERS = {"resnet18": resnet18, "resnet34": resnet34}
HEADS: tuple[str, ...] = ("projector", "mask", "classifier")


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

    def forward_trunk(self, c1: Tensor) -> Tensor:
        """Rest of F from conv1 features to the pooled representation h, shape (B, 512)."""
        x = self.maxpool(c1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward_features(self, x: Tensor) -> Tensor:
        """Representation h = F(x).

        Args:
            x: Images (B, C, H, W), any H, W >= 32.

        Returns:
            (B, 512) pooled features.
        """
        return self.forward_trunk(self.forward_conv1(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


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

    def forward_features(self, x: Tensor) -> Tensor:
        """h = F(x), shape (B, 512)."""
        return self.extractor.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Expression logits C(F(x)), shape (B, num_classes)."""
        if self.classifier is None:
            raise RuntimeError("OccNet.forward needs the classifier head; build with 'classifier'")
        return self.classifier(self.forward_features(x))

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
    """Heads the pretext stage of an ablation variant trains."""
    return {"ss": ("projector",), "mask": ("mask",), "ss+mask": ("projector", "mask")}[variant]


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
