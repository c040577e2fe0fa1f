"""Procedural grey faces: a faithful, file-free miniature of occluded expression recognition.

Each image is a face with random *identity* (face ellipse size and position, skin and
background tone, optional hair, eye spacing, feature darkness, lighting gradient, noise) and
one of the 7 expressions of :data:`EMOTIONS7`. The expression is carried **only** by the eyes
(openness), brows (height, tilt) and mouth (curvature, openness, width, asymmetry), so
covering the eyes or mouth removes real information, exactly as in real FER.

Difficulty: each image shows its expression at a random intensity (0.6-1.1 of the
prototype, so weak expressions resemble neutral), with per-parameter jitter and pixel noise,
so a small CNN learns it well but not trivially perfectly, and occlusion hurts.

Generation is vectorised in torch (chunks of images, no per-image Python loop).
"""

from __future__ import annotations

import math

import torch

from .errors import DataError
from .faceset import FaceSet
from .labels import EMOTIONS7

NAME = "synthetic-faces"
LABEL_SPACE = "synthetic-7"
PARAM_NAMES = (
    "eye_open",
    "brow_raise",
    "brow_tilt",
    "mouth_curve",
    "mouth_open",
    "mouth_width",
    "mouth_asym",
)
# Prototype expression parameters, rows in EMOTIONS7 order; columns as PARAM_NAMES.
PROTOTYPES = torch.tensor(
    [
        [1.00, 0.0, 0.0, 0.0, 0.00, 1.00, 0.0],  # neutral
        [0.75, 0.0, 0.0, 1.0, 0.35, 1.20, 0.0],  # happiness: smile, squint
        [1.60, 1.0, 0.0, 0.0, 1.00, 0.70, 0.0],  # surprise: wide eyes, raised brows, O mouth
        [0.80, 0.0, 1.0, -0.8, 0.00, 0.90, 0.0],  # sadness: inner brows up, frown
        [0.70, -0.6, -1.0, -0.2, 0.00, 0.80, 0.0],  # anger: lowered inner brows, pressed lips
        [0.55, -0.3, -0.5, -0.5, 0.25, 0.95, 0.8],  # disgust: squint, asymmetric upper lip
        [1.45, 0.7, 0.8, -0.3, 0.50, 1.10, 0.0],  # fear: wide eyes, raised tilted brows
    ]
)
PARAM_LOW = torch.tensor([0.15, -1.2, -1.5, -1.5, 0.0, 0.6, -1.0])
PARAM_HIGH = torch.tensor([2.0, 1.5, 1.5, 1.5, 1.3, 1.4, 1.0])
_JITTER = torch.tensor([0.12, 0.15, 0.15, 0.15, 0.08, 0.06, 0.15])
#: Expression intensity range: the low end keeps weak expressions close to neutral.
INTENSITY = (0.6, 1.1)
_CHUNK = 256
# Feature geometry in face units (scaled by the face's size). Sized so that a ResNet-34 from
# scratch picks expressions up within a few hundred steps at 48 px: at the first version's
# sizes (eye height 0.05, brow 0.022, mouth curve 0.08) the features were 1-2 px apart and
# a short run stayed at chance.
_EYE_W, _EYE_H = 0.14, 0.075
_BROW_GAP, _BROW_RAISE, _BROW_TILT, _BROW_W, _BROW_TH = 0.14, 0.10, 0.08, 0.16, 0.035
_MOUTH_W, _MOUTH_CURVE, _MOUTH_ASYM, _LIP, _MOUTH_OPEN = 0.28, 0.14, 0.05, 0.02, 0.12


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def sample_identities(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random identity parameters.

    Args:
        n: Number of faces.
        generator: CPU generator.

    Returns:
        Dict of float32 ``(n,)`` tensors (normalised coordinates, image spans ``[-1, 1]``).
    """
    g = generator
    ident = {
        "cx": _uniform(n, -0.07, 0.07, g),
        "cy": _uniform(n, -0.05, 0.07, g),
        "rx": _uniform(n, 0.58, 0.74, g),
        "ry": _uniform(n, 0.76, 0.92, g),
        "skin": _uniform(n, 0.45, 0.80, g),
        "background": _uniform(n, 0.05, 0.40, g),
        "hair": _uniform(n, 0.0, 0.3, g) * (torch.rand(n, generator=g) < 0.6),
        "hair_tone": _uniform(n, 0.05, 0.30, g),
        "eye_dx": _uniform(n, 0.42, 0.55, g),
        "eye_y": _uniform(n, 0.18, 0.26, g),
        "mouth_y": _uniform(n, 0.45, 0.55, g),
        "dark": _uniform(n, 0.55, 0.85, g),
        "light_angle": _uniform(n, 0.0, 2 * math.pi, g),
        "light": _uniform(n, 0.0, 0.35, g),
        "noise": _uniform(n, 0.03, 0.09, g),
    }
    return ident


def expression_params(
    labels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image expression parameters.

    Args:
        labels: int64 ``(n,)`` indices into EMOTIONS7.
        generator: Draws intensity and jitter; ``None`` gives the exact prototypes.

    Returns:
        float32 ``(n, 7)`` in :data:`PARAM_NAMES` order, clamped to the valid range.
    """
    proto = PROTOTYPES[labels]
    if generator is None:
        return proto.clone()
    n = labels.numel()
    intensity = _uniform(n, *INTENSITY, generator)[:, None]
    params = PROTOTYPES[0] + intensity * (proto - PROTOTYPES[0])
    params = params + _JITTER * torch.randn(n, len(PARAM_NAMES), generator=generator)
    return torch.maximum(torch.minimum(params, PARAM_HIGH), PARAM_LOW)


def _ramp(t: torch.Tensor) -> torch.Tensor:
    # Linear one-pixel edge: exactly 0 outside a shape, so features never leak beyond it.
    return (t + 0.5).clamp_(0.0, 1.0)


def _geometry(ident: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    scale = ident["ry"] / 0.85
    return {
        "scale": scale,
        "eye_x": ident["eye_dx"] * ident["rx"],
        "eye_y": ident["cy"] - ident["eye_y"] * ident["ry"],
        "mouth_y": ident["cy"] + ident["mouth_y"] * ident["ry"],
    }


def render(
    ident: dict[str, torch.Tensor],
    params: torch.Tensor,
    image_size: int,
    noise_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Render faces.

    Args:
        ident: Identity parameters from :func:`sample_identities`, each ``(n,)``.
        params: float ``(n, 7)`` expression parameters.
        image_size: Output side ``S``.
        noise_generator: Draws pixel noise; ``None`` renders noise-free.

    Returns:
        float32 ``(n, 1, S, S)`` in ``[0, 1]``.
    """
    n, s = params.shape[0], image_size
    px = 2.0 / s
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) * px - 1.0
    y = coords.view(1, s, 1)
    x = coords.view(1, 1, s)

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.view(n, 1, 1)

    geo = _geometry(ident)
    cx, cy, rx, ry = (col(ident[k]) for k in ("cx", "cy", "rx", "ry"))
    sc = col(geo["scale"])

    # Most terms are separable in x and y: build them as (n, 1, S) / (n, S, 1) rows and
    # columns and broadcast only once, which keeps generation fast on CPU.
    # Identity: background, face ellipse, hair, soft shading.
    d2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    d = d2.sqrt()
    face = _ramp((1 - d) * (torch.minimum(rx, ry) / px))
    skin = col(ident["skin"]) * (1 - 0.18 * d2.clamp_(max=1))
    bg = col(ident["background"])
    img = torch.lerp(bg.expand_as(skin), skin, face)
    hair_line = cy - ry + col(ident["hair"]) * ry
    hair = face * (_ramp((hair_line - y) / px) * (col(ident["hair"]) > 0))
    img = torch.lerp(img, col(ident["hair_tone"]).expand_as(img), hair)

    p = [col(params[:, i]) for i in range(len(PARAM_NAMES))]
    eye_open, brow_raise, brow_tilt, curve, mouth_open, width, asym = p
    ex, ey, my = col(geo["eye_x"]), col(geo["eye_y"]), col(geo["mouth_y"])

    ew = _EYE_W * sc
    eh = _EYE_H * sc * eye_open
    edge = torch.minimum(ew, eh) / px
    ey2 = ((y - ey) / eh) ** 2
    brow_y = ey - (_BROW_GAP + _BROW_RAISE * brow_raise) * sc
    bw, bth = _BROW_W * sc, _BROW_TH * sc
    feat: torch.Tensor | None = None
    for side in (-1.0, 1.0):
        ecx = cx + side * ex
        de = (((x - ecx) / ew) ** 2 + ey2).sqrt_()
        eye = _ramp((1 - de).mul_(edge))
        u = side * (x - ecx) / bw  # u > 0 towards the outer end of the brow
        line = brow_y + _BROW_TILT * sc * brow_tilt * u
        brow = _ramp((bth - (y - line).abs_()) / px).mul_(_ramp((1 - u.abs()) * bw / px))
        both = torch.maximum(eye, brow)
        feat = both if feat is None else torch.maximum(feat, both)
    assert feat is not None
    mw = _MOUTH_W * sc * width
    u = (x - cx) / mw
    inside = (1 - u**2).clamp(min=0)
    centre = my - _MOUTH_CURVE * sc * curve * (u**2 - 0.5) + _MOUTH_ASYM * sc * asym * u
    half = _LIP * sc + _MOUTH_OPEN * sc * mouth_open * inside.sqrt()
    mouth = _ramp((half - (y - centre).abs_()) / px).mul_(_ramp((1 - u.abs()) * mw / px))
    feat = torch.maximum(feat, mouth)
    img = img * (1 - col(ident["dark"]) * feat)

    angle = col(ident["light_angle"])
    img = img * (1 + col(ident["light"]) * (x * torch.cos(angle) + y * torch.sin(angle)))
    if noise_generator is not None:
        img = img + col(ident["noise"]) * torch.randn(n, s, s, generator=noise_generator)
    return img.clamp_(0.0, 1.0).unsqueeze(1)


def region_boxes(ident: dict[str, torch.Tensor], image_size: int) -> dict[str, torch.Tensor]:
    """Pixel boxes that contain every possible eye/brow and mouth rendering of each face.

    Useful to place synthetic occluders and to test that expressions live only there.

    Args:
        ident: Identity parameters, each ``(n,)``.
        image_size: Image side ``S``.

    Returns:
        ``{"eyes": (n, 4), "mouth": (n, 4)}`` int64 ``(x0, y0, x1, y1)`` half-open pixel boxes.
    """
    geo = _geometry(ident)
    sc, cx = geo["scale"], ident["cx"]
    hi = PARAM_HIGH
    eyes_x = geo["eye_x"] + max(_EYE_W, _BROW_W) * sc
    eyes_top = geo["eye_y"] - (_BROW_GAP + _BROW_RAISE * hi[1] + _BROW_TILT * hi[2] + _BROW_TH) * sc
    eyes_bottom = geo["eye_y"] + _EYE_H * sc * hi[0]
    mouth_x = _MOUTH_W * sc * hi[5]
    reach = (_MOUTH_CURVE * hi[3] * 0.5 + _MOUTH_ASYM * hi[6] + _LIP + _MOUTH_OPEN * hi[4]) * sc
    mouth_top = geo["mouth_y"] - reach
    mouth_bottom = geo["mouth_y"] + reach

    def to_px(v: torch.Tensor, up: bool) -> torch.Tensor:
        # One extra pixel for the ramp edge, then clip to the image.
        p = (v + 1.0) / 2.0 * image_size
        p = torch.ceil(p) + 1 if up else torch.floor(p) - 1
        return p.clamp(0, image_size).to(torch.int64)

    eyes = torch.stack(
        [
            to_px(cx - eyes_x, False),
            to_px(eyes_top, False),
            to_px(cx + eyes_x, True),
            to_px(eyes_bottom, True),
        ],
        dim=1,
    )
    mouth = torch.stack(
        [
            to_px(cx - mouth_x, False),
            to_px(mouth_top, False),
            to_px(cx + mouth_x, True),
            to_px(mouth_bottom, True),
        ],
        dim=1,
    )
    return {"eyes": eyes, "mouth": mouth}


def synthetic_faces(n: int, *, seed: int = 0, image_size: int = 48) -> FaceSet:
    """Generate ``n`` labelled synthetic faces, deterministic in ``seed``.

    Args:
        n: Number of images.
        seed: Seed; the same ``(n, seed, image_size)`` gives identical images.
        image_size: Side ``S`` of the grey images.

    Returns:
        FaceSet of uint8 ``(n, 1, S, S)`` images over EMOTIONS7 (label space
        ``synthetic-7``), labels uniform over the 7 classes.
    """
    if not isinstance(n, int) or n < 0:
        raise DataError(f"synthetic-faces: n must be a non-negative int, got {n!r}")
    if not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"synthetic-faces: image_size must be an int >= 8, got {image_size!r}")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(0, len(EMOTIONS7), (n,), generator=g)
    ident = sample_identities(n, g)
    params = expression_params(labels, g)
    images = torch.empty(n, 1, image_size, image_size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        chunk = render({k: v[sl] for k, v in ident.items()}, params[sl], image_size, g)
        images[sl] = chunk.mul_(255).round_().to(torch.uint8)
    return FaceSet(
        images=images,
        labels=labels,
        classes=EMOTIONS7,
        name=f"{NAME}[seed={seed}]",
        label_space=LABEL_SPACE,
    )
