"""The four-variant ablation (none / ss / mask / ss+mask) on real data, in one process.

Pretext on an unlabelled folder (LFW here, the stand-in for VGGFace2), fine-tune on FER2013
Training (model selection on PublicTest), test on PrivateTest — clean, R8, R16, R24, eye, mouth,
objects — and on Occlusion-FERPlus in FER2013's label space. The data is loaded once and shared
by the four runs; each run keeps resumable checkpoints under ``--out/<variant>``, so an
interrupted ablation continues where it stopped.

Run (about an hour on 2 CPU cores at the defaults):
    .venv/bin/python bench/real_ablation.py --data-root ../shared/data --out runs/real-ablation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from occstudy.losses import VARIANTS
from occstudy.pipeline import DataRef, Hooks, MethodConfig, load_method_data, run_method


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-root", default=os.environ.get("OCCSTUDY_DATA", "../shared/data"))
    ap.add_argument("--out", default="runs/real-ablation")
    ap.add_argument("--pretext-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = ap.parse_args(argv)
    root = Path(args.data_root)
    base = MethodConfig(
        data=DataRef("fer2013", str(root / "fer2013")),
        pretext_data=str(root / "lfw"),
        real_occlusion=(DataRef("occlusion-ferplus", str(root)),),
        variant="ss+mask",
        image_size=args.image_size,
        pretext_epochs=args.pretext_epochs,
        epochs=args.epochs,
        seed=args.seed,
        device="auto",
    )
    t0 = time.perf_counter()
    data = load_method_data(base)
    print(
        f"data loaded in {time.perf_counter() - t0:.1f}s: pretext {len(data.pretext or [])}, "
        f"train {len(data.train)}, val {len(data.val)}, test {len(data.test)}, "
        f"real {[(k, len(v)) for k, v in data.real.items()]}",
        flush=True,
    )

    def on_epoch(stage: str, epoch: int, metrics: dict[str, float]) -> None:
        shown = {k: round(v, 4) for k, v in metrics.items() if k not in ("images", "steps")}
        print(f"  {stage} epoch {epoch}: {shown}", flush=True)

    hooks = Hooks(on_epoch=on_epoch)
    rows = {}
    for variant in args.variants:
        t1 = time.perf_counter()
        config = replace(base, variant=variant)
        result = run_method(
            config,
            out_dir=Path(args.out) / variant,
            data=data if variant != "none" else replace(data, pretext=None),
            hooks=hooks,
        )
        rows[variant] = {
            "metrics": result.summary(),
            "seconds": result.seconds,
            "val_acc": [h["val_acc"] for h in result.finetune_history],
        }
        print(
            f"[{variant}] done in {time.perf_counter() - t1:.0f}s: "
            + ", ".join(
                f"{k}={100 * v:.2f}" for k, v in result.summary().items() if k.endswith(".acc")
            ),
            flush=True,
        )
    total = time.perf_counter() - t0
    protocols = [
        k.split(".")[1] for k in next(iter(rows.values()))["metrics"] if k.endswith(".acc")
    ]
    print()
    print("| variant | " + " | ".join(protocols) + " |")
    print("|---|" + "---|" * len(protocols))
    for variant, row in rows.items():
        print(
            f"| {variant} | "
            + " | ".join(f"{100 * row['metrics'][f'test.{p}.acc']:.2f}" for p in protocols)
            + " |"
        )
    print(
        f"\naccuracy %, FER2013 PrivateTest (+ Occlusion-FERPlus, FER2013 labels); wall time {total / 60:.1f} min"
    )
    print(
        f"machine: {platform.machine()} | torch {torch.__version__} | threads {torch.get_num_threads()}"
    )
    print(
        "repeat: .venv/bin/python bench/real_ablation.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ablation.json").write_text(
        json.dumps({"rows": rows, "wall_s": total}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
