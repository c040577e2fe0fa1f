"""Throughput of occstudy's pretext and fine-tune steps against a minimal plain-PyTorch loop.

Both loops run the same network (ResNet-34 + heads), the same loss, batch size and image size
on the same data, interleaved in one process so that the machine's state affects both alike.
The plain loop is what a researcher would write by hand: float batches already in memory,
occluded copies made by a fixed square mask, no augmentation, no bookkeeping. occstudy's loop
adds random crop/flip, a fresh synthetic occlusion per image (policy ``all``) and its metrics —
the ratio says what all of that costs. The occlusion generator's share of a step is timed
separately on the same batches.

Run:  .venv/bin/python bench/bench_steps.py [--steps 12] [--image-size 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from occstudy.data import synthetic_faces, to_float
from occstudy.losses import pretext_loss
from occstudy.models import OccNet, PretextNet
from occstudy.occlusion import make_policy
from occstudy.train import (
    Runtime,
    finetune_one_epoch,
    make_optimizer,
    pretext_one_epoch,
    seeded_generator,
)


def plain_pretext_steps(
    model: PretextNet, opt: torch.optim.Optimizer, batches: list[torch.Tensor], mask: torch.Tensor
) -> float:
    """Seconds per step of a hand-written pretext loop (ss+mask)."""
    model.train()
    start = time.perf_counter()
    for imgs in batches:
        x = (imgs.float() / 255 - 0.5) / 0.5
        x_occ = x * (1 - mask) + 0.0 * mask
        z_o, z_c, m = model(x, x_occ)
        loss = pretext_loss(
            "ss+mask",
            z_occluded=z_o,
            z_clean=z_c,
            mask_logits=m,
            mask=mask.expand(x.shape[0], -1, -1, -1),
            tau=2.0,
            lam=0.2,
        ).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
    return (time.perf_counter() - start) / len(batches)


def plain_finetune_steps(
    model: OccNet,
    opt: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    mask: torch.Tensor,
) -> float:
    model.train()
    start = time.perf_counter()
    for i, (imgs, y) in enumerate(batches):
        x = (imgs.float() / 255 - 0.5) / 0.5
        if i % 2:
            x = x * (1 - mask)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
    return (time.perf_counter() - start) / len(batches)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=12, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved blocks per loop")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, bs = args.image_size, args.batch_size
    runtime = Runtime.auto("cpu")
    ds = synthetic_faces(bs * args.steps, seed=0, image_size=size)
    ubatches = [ds.images[i * bs : (i + 1) * bs] for i in range(args.steps)]
    lbatches = [
        (ds.images[i * bs : (i + 1) * bs], ds.labels[i * bs : (i + 1) * bs])
        for i in range(args.steps)
    ]
    fbatches = [to_float(b) for b in ubatches]
    mask = torch.zeros(1, 1, size, size)
    s = size // 3
    mask[:, :, s : 2 * s, s : 2 * s] = 1.0
    policy = make_policy("all")

    pre_net = PretextNet(OccNet(heads=("projector", "mask")))
    pre_opt = make_optimizer(pre_net, 1e-4)
    ft_net = OccNet(heads=("classifier",), num_classes=7)
    ft_opt = make_optimizer(ft_net, 1e-4)

    # Warm-up (allocator, oneDNN kernels) for both paths.
    plain_pretext_steps(pre_net, pre_opt, ubatches[:2], mask)
    plain_finetune_steps(ft_net, ft_opt, lbatches[:2], mask)

    res: dict[str, list[float]] = {
        k: [] for k in ("plain_pre", "occ_pre", "plain_ft", "occ_ft", "occl")
    }
    for r in range(args.repeats):
        res["plain_pre"].append(plain_pretext_steps(pre_net, pre_opt, ubatches, mask))
        m = pretext_one_epoch(
            pre_net,
            ((b, b) for b in ubatches),
            pre_opt,
            variant="ss+mask",
            policy=policy,
            tau=2.0,
            lam=0.2,
            image_size=size,
            runtime=runtime,
            generator=seeded_generator(r),
        )
        res["occ_pre"].append(m["seconds"] / m["steps"])
        res["plain_ft"].append(plain_finetune_steps(ft_net, ft_opt, lbatches, mask))
        m = finetune_one_epoch(
            ft_net,
            iter(lbatches),
            ft_opt,
            policy=policy,
            occlusion_prob=0.5,
            image_size=size,
            runtime=runtime,
            generator=seeded_generator(r, 1),
        )
        res["occ_ft"].append(m["seconds"] / m["steps"])
        g = seeded_generator(r, 2)
        start = time.perf_counter()
        for x in fbatches:
            policy(x, g)
        res["occl"].append((time.perf_counter() - start) / len(ubatches))

    med = {k: statistics.median(v) for k, v in res.items()}
    pre_ratio = med["plain_pre"] / med["occ_pre"]
    ft_ratio = med["plain_ft"] / med["occ_ft"]
    share = med["occl"] / med["occ_pre"]
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} | {platform.system()} | "
        f"torch {torch.__version__} | threads {args.threads} | python {sys.version.split()[0]}"
    )
    print(
        f"setup: batch {bs}, {size}x{size} grey, ResNet-34, {args.steps} steps x {args.repeats} interleaved blocks, medians"
    )
    print(
        f"pretext  (ss+mask): plain {bs / med['plain_pre']:7.1f} img/s | occstudy {bs / med['occ_pre']:7.1f} img/s | ratio {pre_ratio:.3f} (goal >= 0.95)"
    )
    print(
        f"fine-tune          : plain {bs / med['plain_ft']:7.1f} img/s | occstudy {bs / med['occ_ft']:7.1f} img/s | ratio {ft_ratio:.3f} (goal >= 0.95)"
    )
    print(
        f"occlusion generator ('all' policy): {1000 * med['occl']:.2f} ms per batch = {100 * share:.2f}% of an occstudy pretext step (goal < 3%)"
    )
    print(
        f"repeat: .venv/bin/python bench/bench_steps.py --steps {args.steps} --repeats {args.repeats} --batch-size {bs} --image-size {size} --threads {args.threads}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
