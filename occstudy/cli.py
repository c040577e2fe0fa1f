"""Command line: a thin layer over the Python API.

``occstudy train`` runs the method in one process; ``occstudy data check`` validates a
dataset folder. Every entry point has ``--smoke`` where it trains anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

SMOKE_NOTE = "tiny built-in data and a few steps per epoch: checks the whole path in under a minute"


def _add_train(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train",
        help="run pretext → fine-tune → evaluate in this process",
        description="Run the whole method in one process and print the test metrics.",
    )
    p.add_argument(
        "--data",
        default="synthetic-faces",
        help="labelled data NAME[:ROOT] (fer2013:PATH, ferplus:PATH, synthetic-faces, ...)",
    )
    p.add_argument(
        "--pretext-data",
        default="synthetic-faces",
        help="unlabelled faces: a folder (recursively) or 'synthetic-faces'",
    )
    p.add_argument(
        "--real-occlusion",
        action="append",
        default=[],
        metavar="NAME:ROOT[@SPLIT]",
        help="real-occlusion test set, e.g. occlusion-ferplus:../shared/data (repeatable)",
    )
    p.add_argument("--variant", default="ss+mask", choices=("none", "ss", "mask", "ss+mask"))
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--stem", default="imagenet", choices=("imagenet", "small"))
    p.add_argument("--pretext-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--pretext-lr", type=float, default=1e-4)
    p.add_argument("--tau", type=float, default=2.0)
    p.add_argument("--lam", "--lambda", dest="lam", type=float, default=0.2)
    p.add_argument("--pretext-policy", default="all")
    p.add_argument("--finetune-policy", default="all")
    p.add_argument(
        "--balanced", action="store_true", help="class-balanced sampling when fine-tuning"
    )
    p.add_argument("--label-fraction", type=float, default=1.0)
    p.add_argument("--pretext-limit", type=int, default=None, help="use at most N unlabelled faces")
    p.add_argument("--train-limit", type=int, default=None, help="use at most N labelled faces")
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--out", default=None, help="folder for checkpoints and results.json (resumes from it)"
    )
    p.add_argument("--json", dest="json_out", default=None, help="also write the metrics JSON here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--smoke", action="store_true", help=SMOKE_NOTE)


def _add_data(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    c = dsub.add_parser("check", help="count images per split and class; fail on a broken layout")
    c.add_argument("name")
    c.add_argument("--root", default=None)
    dsub.add_parser("list", help="list the dataset names")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="occstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_data(sub)
    return parser


class _Progress:
    """A tqdm bar per stage epoch, fed by the pipeline's hooks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.key: tuple[str, int] | None = None
        self.epoch = {"pretext": 0, "finetune": 0}

    def on_step(self, stage: str, step: int, total: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        key = (stage, self.epoch[stage])
        if self.key != key:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(
                total=total,
                desc=f"{stage} epoch {key[1]}",
                unit="step",
                leave=False,
                file=sys.stderr,
            )
            self.key = key
            self.bar.n = 0
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(
            {k: f"{v:.3f}" for k, v in metrics.items() if k.startswith(("loss", "acc"))}
        )

    def on_epoch(self, stage: str, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.epoch[stage] = epoch + 1
        shown = {k: round(v, 4) for k, v in metrics.items() if k not in ("images", "steps")}
        print(f"[{stage}] epoch {epoch}: {shown}", file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from occstudy.evaluate import format_table
    from occstudy.pipeline import DataRef, Hooks, MethodConfig, run_method

    try:
        config = MethodConfig(
            data=DataRef.parse(args.data),
            variant=args.variant,
            pretext_data=args.pretext_data,
            real_occlusion=tuple(DataRef.parse(r) for r in args.real_occlusion),
            image_size=args.image_size,
            stem=args.stem,
            pretext_epochs=args.pretext_epochs,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            pretext_lr=args.pretext_lr,
            tau=args.tau,
            lam=args.lam,
            pretext_policy=args.pretext_policy,
            finetune_policy=args.finetune_policy,
            balanced=args.balanced,
            label_fraction=args.label_fraction,
            pretext_limit=args.pretext_limit,
            train_limit=args.train_limit,
            max_steps=args.max_steps,
            seed=args.seed,
            device=args.device,
        )
        if args.smoke:
            config = replace(
                config,
                synthetic_size=300,
                pretext_epochs=1,
                epochs=1,
                max_steps=2,
                batch_size=min(config.batch_size, 32),
                pretext_limit=min(config.pretext_limit or 300, 300),
                train_limit=min(config.train_limit or 300, 300),
            )
    except ValueError as exc:
        print(f"occstudy train: {exc}", file=sys.stderr)
        return 2
    progress = _Progress(enabled=not args.no_progress)
    hooks = Hooks(on_step=progress.on_step, on_epoch=progress.on_epoch, log_every=1)
    try:
        result = run_method(config, out_dir=args.out, hooks=hooks)
    except (ValueError, FileNotFoundError) as exc:
        print(f"occstudy train: {exc}", file=sys.stderr)
        return 2
    print(format_table(result.results))
    payload = {"metrics": result.summary(), "seconds": result.seconds, "config": config.to_dict()}
    text = json.dumps(payload, indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(json.dumps(result.to_dict(), indent=2))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from occstudy import data as D

    if args.data_cmd == "list":
        for name in D.dataset_names():
            print(name)
        return 0
    try:
        report = D.check_dataset(args.name, args.root)
    except D.DataError as exc:
        print(f"occstudy data check: {exc}", file=sys.stderr)
        return 1
    print(report.format())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return cmd_train(args)
    if args.command == "data":
        return cmd_data(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
