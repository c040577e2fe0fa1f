"""Command line: a thin layer over the Python API.

``occstudy run`` runs a study on Ray (tracked in MLflow), ``status`` shows what a study has
done, ``ui`` opens the MLflow UI on a study's store, ``predict`` applies a checkpoint to images,
``train`` runs the method in one process, ``data check`` validates a dataset folder. Every
entry point that trains has ``--smoke``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from occstudy.method import (
    ARCHS,
    AUGMENTS,
    OPTIMIZERS,
    PARAMETERS,
    RECIPES,
    SCHEDULES,
    STEMS,
    VARIANTS,
)

RECIPE_NAMES = tuple(RECIPES)
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
        action="append",
        default=None,
        metavar="SOURCE",
        help="unlabelled faces: 'synthetic-faces' (default), a folder (recursively) or a "
        "labelled dataset NAME:ROOT[@SPLIT] (its training split, labels ignored); repeat to "
        "concatenate several sources",
    )
    p.add_argument(
        "--real-occlusion",
        action="append",
        default=[],
        metavar="NAME:ROOT[@SPLIT]",
        help="real-occlusion test set, e.g. occlusion-ferplus:../shared/data (repeatable)",
    )
    p.add_argument("--variant", default="ss+mask", choices=VARIANTS)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument(
        "--recipe",
        default="paper",
        choices=RECIPE_NAMES,
        help="how both stages train: 'paper' (the paper's settings) or 'fast' (learns on a "
        "CPU budget); the options below marked 'recipe' override it",
    )
    rec = "(recipe's value by default)"
    p.add_argument("--arch", default=None, choices=ARCHS, help=f"architecture of F {rec}")
    p.add_argument("--stem", default=None, choices=STEMS, help=f"stem of F {rec}")
    p.add_argument("--pretext-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None, help=f"both stages {rec}")
    p.add_argument("--lr", type=float, default=None, help=f"fine-tune peak lr {rec}")
    p.add_argument("--pretext-lr", type=float, default=None, help=f"pretext peak lr {rec}")
    p.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help=rec)
    p.add_argument("--weight-decay", type=float, default=None, help=rec)
    p.add_argument("--schedule", default=None, choices=SCHEDULES, help=f"per-step lr {rec}")
    p.add_argument("--warmup-epochs", type=float, default=None, help=f"cosine warm-up {rec}")
    p.add_argument("--label-smoothing", type=float, default=None, help=rec)
    p.add_argument("--augment", default=None, choices=AUGMENTS, help=rec)
    p.add_argument(
        "--tta-flip",
        default=None,
        action=argparse.BooleanOptionalAction,
        help=f"test on each face and its mirror image {rec}",
    )
    p.add_argument("--tau", type=float, default=PARAMETERS["tau"].default, help="τ of L_SS")
    p.add_argument(
        "--lam",
        "--lambda",
        dest="lam",
        type=float,
        default=PARAMETERS["lam"].default,
        help="λ, weight of L_mask",
    )
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


def _add_storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage", default=None, help="storage root shared by all nodes (default ./occstudy-runs)"
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite in the storage)",
    )


def _add_study(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="run a study (studies/*.py) on Ray, tracked in MLflow")
    p.add_argument("study", help="study file, e.g. studies/quickstart.py")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the study's shrunk version: checks the path end to end",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: start Ray locally on 127.0.0.1)",
    )
    _add_storage_args(p)
    p.add_argument(
        "--resume", action="store_true", help="finish the last launch; finished trials are kept"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="recompute the pretext stages this study needs"
    )
    p.add_argument(
        "--data-root", default=None, help="folder with the real data sets (sets $OCCSTUDY_DATA)"
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray Train (DDP) workers per trial (overrides Study.resources.workers)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per trial, split evenly among its workers (default workers: one per GPU); "
        "an error when the cluster has none",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the jobs and an estimated wall time from this machine's measured "
        "throughput, then exit without training",
    )
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="with --plan: measure the throughput again instead of using the cached one",
    )

    s = sub.add_parser("status", help="what a study has run, what failed, what remains")
    s.add_argument("study", help="study file or study name")
    _add_storage_args(s)
    s.add_argument("--data-root", default=None)

    u = sub.add_parser("ui", help="the MLflow UI for a study's store (127.0.0.1 by default)")
    u.add_argument("study", help="study file or study name")
    _add_storage_args(u)
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--data-root", default=None)
    u.add_argument(
        "--launch", default=None, help="launch whose views to link (default: the last one)"
    )
    u.add_argument(
        "--open",
        action="store_true",
        help="open the compare view in the default web browser once the server answers",
    )

    rp = sub.add_parser(
        "report",
        help="tables, tests, figures and an HTML page of a study, read from MLflow",
        description=(
            "Build a study's report from its MLflow runs (finished or partly finished): "
            "ablation table with 95 %% intervals and paired tests, λ and label-efficiency "
            "curves, search plots, robustness curve, confusion matrices and mask pictures, as "
            "a self-contained HTML page, Markdown, CSV and JSON."
        ),
    )
    rp.add_argument("study", help="study file or study name")
    _add_storage_args(rp)
    rp.add_argument(
        "--launch", default=None, help="launch to report (default: the last one; 'all': every one)"
    )
    rp.add_argument("--out", default=None, help="output folder (default <study dir>/report)")
    rp.add_argument(
        "--no-log", action="store_true", help="do not log the report to the study's parent run"
    )
    rp.add_argument("--data-root", default=None)

    pr = sub.add_parser("predict", help="expression probabilities and occlusion mask per image")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--checkpoint", required=True, help="a fine-tune checkpoint (best.pt)")
    pr.add_argument(
        "--overlay-dir", default=None, help="save a PNG with the predicted mask per image here"
    )
    pr.add_argument("--device", default="cpu")
    pr.add_argument(
        "--json", dest="json_out", action="store_true", help="print JSON instead of a table"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="occstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_study(sub)
    _add_train(sub)
    _add_data(sub)
    return parser


def _load_study(arg: str, data_root: str | None, storage: str | None = None) -> Any:
    """A Study from a file, or (for status/ui) a bare name whose definition the storage keeps."""
    import os
    from pathlib import Path

    from occstudy.study import Study, StudyError, load_study
    from occstudy.study.layout import StudyLayout

    if data_root:
        os.environ["OCCSTUDY_DATA"] = os.path.abspath(data_root)
    if arg.endswith(".py") or Path(arg).is_file():
        return load_study(arg)
    try:
        saved = StudyLayout.of(arg, storage).study_file
    except ValueError as exc:
        raise StudyError(f"{arg!r} is neither a study file nor a study name: {exc}") from None
    if not saved.is_file():
        raise StudyError(f"{arg!r} is neither a study file nor a study in {saved.parent.parent}/")
    return Study.from_dict(json.loads(saved.read_text()))


def _print_plan(study: Any, args: argparse.Namespace) -> int:
    from occstudy.data import DataError
    from occstudy.study.plan import plan_study

    if args.smoke:
        study = study.smoke()
    try:
        plan = plan_study(
            study,
            storage=args.storage,
            num_cpus=args.num_cpus,
            no_cache=args.no_cache,
            recalibrate=args.recalibrate,
        )
    except DataError as exc:
        print(f"occstudy run --plan: {exc}", file=sys.stderr)
        return 2
    print(plan.format())
    return 0


def _with_resources(study: Any, workers: int | None, gpus_per_trial: float | None) -> Any:
    """``study`` with ``--workers`` / ``--gpus-per-trial`` applied to its resources.

    ``--gpus-per-trial N`` alone runs one DDP worker per GPU (``N`` < 1: one worker sharing a
    GPU); with ``--workers M`` each worker gets ``N / M`` GPUs.
    """
    import math

    from occstudy.study import StudyError

    if workers is None and gpus_per_trial is None:
        return study
    res = study.resources
    if gpus_per_trial is not None and (not math.isfinite(gpus_per_trial) or gpus_per_trial < 0):
        raise StudyError(f"--gpus-per-trial={gpus_per_trial}: must be a finite number >= 0")
    if workers is None:
        n = gpus_per_trial or 0
        workers = max(1, int(n)) if n >= 1 else res.workers
    per_worker = res.gpus_per_worker if gpus_per_trial is None else gpus_per_trial / workers
    try:
        new = replace(res, workers=workers, gpus_per_worker=per_worker)
    except StudyError as exc:
        raise StudyError(f"--workers/--gpus-per-trial: {exc}") from None
    return replace(study, resources=new)


def _resume_command() -> str:
    """The command line of this process with ``--resume`` (added once)."""
    import shlex

    argv = ["occstudy", *sys.argv[1:]]
    if "--resume" not in argv:
        argv.append("--resume")
    return " ".join(shlex.quote(a) for a in argv)


def cmd_run(args: argparse.Namespace) -> int:
    from occstudy.study import RunOptions, StudyError, run_study
    from occstudy.tracking import TrackingError, redact

    try:
        study = _load_study(args.study, args.data_root, args.storage)
    except StudyError as exc:
        print(f"occstudy run: {exc}", file=sys.stderr)
        return 2
    try:
        study = _with_resources(study, args.workers, args.gpus_per_trial)
    except StudyError as exc:
        print(f"occstudy run: {exc}", file=sys.stderr)
        return 2
    if args.plan or args.recalibrate:
        return _print_plan(study, args)
    options = RunOptions(
        storage=args.storage,
        address=args.address,
        tracking_uri=args.tracking_uri,
        resume=args.resume,
        no_cache=args.no_cache,
        smoke=args.smoke,
        num_cpus=args.num_cpus,
        device=args.device,
        progress=not args.quiet,
    )
    if args.address is None and args.device != "auto":
        from occstudy.train import check_device

        try:
            check_device(args.device)
        except ValueError as exc:
            print(f"occstudy run: {exc}", file=sys.stderr)
            return 2
    from occstudy.study.runner import stop_on_signals
    from occstudy.train import StorageFullError

    try:
        with stop_on_signals():
            outcome = run_study(study, options)
    except (TrackingError, StudyError) as exc:
        print(f"occstudy run: {exc}", file=sys.stderr)
        return 2
    except StorageFullError as exc:
        print(
            f"occstudy run: {exc.strerror}. Continue with:\n  {_resume_command()}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt as exc:
        print(
            f"\noccstudy run: interrupted; the launch and its unfinished runs are marked KILLED "
            f"in MLflow. Continue with:\n  {_resume_command()}",
            file=sys.stderr,
        )
        # 130 for SIGINT (Ctrl-C), 143 for SIGTERM, 129 for SIGHUP.
        return 128 + int(getattr(exc, "signum", 2))
    print()
    print(outcome.table)
    print(
        f"study {outcome.study.name}: {len(outcome.rows)} trials ({len(outcome.failed)} failed), "
        f"pretext computed {outcome.pretext_computed}, cached {outcome.pretext_cached}, "
        f"{outcome.seconds / 60:.1f} min"
    )
    print(f"results: {outcome.study_dir}")
    storage = f" --storage {args.storage}" if args.storage else ""
    if outcome.tracking_uri.startswith("sqlite:"):
        print(
            f"MLflow: occstudy ui {outcome.study.name}{storage}   (then open http://127.0.0.1:5000)"
        )
    else:
        print(f"MLflow: {redact(outcome.tracking_uri)} (experiment occstudy/{outcome.study.name})")
    return 1 if outcome.failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from occstudy.study import StudyError
    from occstudy.study.status import format_status, study_status
    from occstudy.tracking import TrackingError

    try:
        study = _load_study(args.study, args.data_root, args.storage)
        print(
            format_status(study_status(study, storage=args.storage, tracking_uri=args.tracking_uri))
        )
    except (StudyError, TrackingError, FileNotFoundError) as exc:
        print(f"occstudy status: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from occstudy.report import ReportError, build_report
    from occstudy.study import StudyError
    from occstudy.tracking import TrackingError

    try:
        study = _load_study(args.study, args.data_root, args.storage)
        result = build_report(
            study,
            storage=args.storage,
            tracking_uri=args.tracking_uri,
            launch=args.launch,
            out=args.out,
            log=not args.no_log,
        )
    except (StudyError, TrackingError, ReportError, FileNotFoundError) as exc:
        print(f"occstudy report: {exc}", file=sys.stderr)
        return 2
    c = result.report.counts
    print(
        f"study {study.name} ({', '.join(result.report.launches)}): {c.complete} of "
        f"{c.expected} trials finished with test results, {c.failed} failed, "
        f"{c.stopped} stopped before testing, {c.running} running"
    )
    print(f"HTML:     {result.files['html']}")
    print(f"Markdown: {result.files['markdown']}")
    print(f"numbers:  {result.out_dir} (trials.csv, cells.csv, comparisons.csv, report.json)")
    if result.logged_to:
        print(f"logged to MLflow run {result.logged_to} under report/")
    print(f"report built in {result.seconds:.1f} s")
    return 0


def _port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, not an address here), or None."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot listen on {host}: {exc}"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the server will: a port left in TIME_WAIT by a previous server is free to use,
        # one that something listens on is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return f"port {port} on {host} is not free ({exc.strerror}); pass another --port"
    return None


def _stop_group(proc: Any, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc`` (a ``subprocess.Popen`` started in a new
    session), then SIGKILL what is left of it after ``grace_s``."""
    import os
    import signal
    import time

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader: a zombie would keep the group alive
            os.killpg(proc.pid, 0)  # raises once the group is empty
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.poll()


def _serve_until_signal(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` in its own process group until it exits or this process gets SIGINT,
    SIGTERM or SIGHUP; then stop the whole group (the server and any worker it started), so
    that nothing is left holding the port. Returns the server's exit code, or 128 + signal."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    received: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        received.append(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    code = 0
    try:
        while not received:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # Whatever the server left in its group (workers) goes with it.
        _stop_group(proc)
    return 128 + received[0] if received else code


def _print_views(study: Any, layout: Any, uri: str, base: str, launch: str | None) -> str | None:
    """Print the MLflow UI links of a launch (see :mod:`occstudy.tracking.views`); returns the
    compare view's URL, or None when the study has no launch yet."""
    from occstudy.tracking.reader import ReportError
    from occstudy.tracking.views import launch_views

    try:
        views = launch_views(uri, study.name, launch=launch, known_launches=layout.launches())
    except ReportError as exc:
        print(f"  ({exc})")
        return None
    urls = views.urls(base)
    print(f"{views.launch}: {len(views.trials)} fine-tune trial(s)")
    print(f"  compare the trials side by side:  {urls['compare']}")
    print(f"  trials table (params, test acc):  {urls['trials']}")
    print(f"  charts, grouped by variant:       {urls['charts']}")
    if "report" in urls:
        print(f"  report page:                      {urls['report']}")
    page = layout.report_dir / "report.html"
    if page.is_file():
        print(f"  report page (file):               {page.resolve().as_uri()}")
    if "report" not in urls and not page.is_file():
        print(f"  report page: none yet (occstudy report {study.name})")
    return urls["compare"]


def _open_when_ready(url: str, host: str, port: int, timeout_s: float = 60.0) -> None:
    """Open ``url`` in the default browser once ``host:port`` accepts connections (a thread)."""
    import socket
    import threading
    import time
    import webbrowser

    def wait_then_open() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=1):
                    webbrowser.open(url)
                    return
            except OSError:
                time.sleep(0.3)

    threading.Thread(target=wait_then_open, daemon=True).start()


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from occstudy.study import StudyError
    from occstudy.study.layout import StudyLayout
    from occstudy.tracking import disable_telemetry, redact

    try:
        study = _load_study(args.study, args.data_root, args.storage)
    except StudyError as exc:
        print(f"occstudy ui: {exc}", file=sys.stderr)
        return 2
    layout = StudyLayout.of(study.name, args.storage)
    uri = layout.tracking_uri(args.tracking_uri)
    if not uri.startswith("sqlite:"):
        from occstudy.tracking import TrackingError, check_reachable

        try:
            check_reachable(uri)
        except TrackingError as exc:
            print(f"occstudy ui: {exc}", file=sys.stderr)
            return 2
        shown = redact(uri)
        print(f"this study logs to a tracking server: open {shown}")
        if uri.startswith(("http://", "https://")):
            _print_views(study, layout, uri, shown, args.launch)
        return 0
    if not layout.mlflow_db.exists():
        print(
            f"occstudy ui: no MLflow store at {layout.mlflow_db}; run the study first",
            file=sys.stderr,
        )
        return 2
    problem = _port_problem(args.host, args.port)
    if problem is not None:
        print(f"occstudy ui: {problem}", file=sys.stderr)
        return 2
    disable_telemetry()
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI for {study.name} on {base} (Ctrl-C to stop)")
    compare = _print_views(study, layout, uri, base, args.launch)
    sys.stdout.flush()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    # The UI only: no job executor (its worker processes cost memory and nothing here uses
    # them).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if args.open:
        _open_when_ready(compare or base, args.host, args.port)
    return _serve_until_signal(cmd, env)


def cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from occstudy.predict import format_predictions, load_model, predict_images, save_overlay

    try:
        model, info = load_model(args.checkpoint, device=args.device)
        preds = predict_images(model, info, args.images, device=args.device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"occstudy predict: {exc}", file=sys.stderr)
        return 2
    if args.overlay_dir:
        out = Path(args.overlay_dir)
        out.mkdir(parents=True, exist_ok=True)
        for p in preds:
            save_overlay(p, p.path, out / (Path(p.path).stem + "_mask.png"))
    if args.json_out:
        print(
            json.dumps(
                [
                    {
                        "path": p.path,
                        "label": p.label,
                        "probabilities": p.probabilities,
                        "occluded_fraction": p.occluded_fraction,
                    }
                    for p in preds
                ],
                indent=2,
            )
        )
    else:
        print(format_predictions(preds))
    return 0


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
    from occstudy.train import StorageFullError

    def parse(option: str, text: str) -> DataRef:
        try:
            return DataRef.parse(text)
        except ValueError as exc:
            raise ValueError(f"{option} {text!r}: {exc}") from None

    try:
        config = MethodConfig(
            data=parse("--data", args.data),
            variant=args.variant,
            # Repeated --pretext-data concatenates sources; none given: the built-in faces.
            pretext_data=tuple(args.pretext_data or ("synthetic-faces",)),
            real_occlusion=tuple(parse("--real-occlusion", r) for r in args.real_occlusion),
            image_size=args.image_size,
            recipe=args.recipe,
            arch=args.arch,
            stem=args.stem,
            pretext_epochs=args.pretext_epochs,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            pretext_lr=args.pretext_lr,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            warmup_epochs=args.warmup_epochs,
            label_smoothing=args.label_smoothing,
            augment=args.augment,
            tta_flip=args.tta_flip,
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
    except StorageFullError as exc:
        print(
            f"occstudy train: {exc.strerror}: the same command continues from the checkpoints "
            f"in {args.out}",
            file=sys.stderr,
        )
        return 1
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
    commands = {
        "run": cmd_run,
        "status": cmd_status,
        "ui": cmd_ui,
        "report": cmd_report,
        "predict": cmd_predict,
        "train": cmd_train,
        "data": cmd_data,
    }
    if getattr(args, "storage", None) is not None:
        from occstudy.study.layout import storage_problem

        why = storage_problem(args.storage)
        if why is not None:
            print(f"occstudy {args.command}: {why}", file=sys.stderr)
            return 2
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
