"""Ultralytics YOLO11n trained from scratch on BCCD, on CPU: a reference point outside fpn_lab.

    .venv/bin/python bench/ultralytics_yolo.py                    # 10 epochs, seed 0
    .venv/bin/python bench/ultralytics_yolo.py --epochs 10 30 --seed 0 1 2
    .venv/bin/python bench/ultralytics_yolo.py --quick            # smoke: 1 epoch, 10 % of the images, 64 px

Ultralytics is not a dependency of fpn_lab and is never installed into ``.venv``. This script
finds it in ``bench/.ultralytics-pkgs`` (git-ignored; another folder with ``ULTRALYTICS_PKGS``),
installed there once, without dependencies, so that torch, torchvision, numpy, OpenCV and the rest
come from ``.venv`` and pip never pulls a second torch::

    .venv/bin/python -m pip install --target bench/.ultralytics-pkgs --no-deps -r bench/requirements-ultralytics.txt

What one run measures: ``YOLO("yolo11n.yaml")`` (random initialisation, no pretrained weights,
nothing downloaded) trained with Ultralytics' default detection recipe (the "auto" optimiser,
which picks AdamW for runs this short; mosaic and the other augmentations; 3 warm-up epochs;
``close_mosaic=10``; weight EMA; ...) on the published BCCD split as fpn_lab reads it
(``open_dataset("data/bccd", split="published")``: the 292 trainval images to train, the 72 test
images to evaluate; classes Platelets, RBC, WBC in fpn_lab's label order), ``imgsz`` 320, batch 8,
on the CPU, ``seed=<seed>, deterministic=True``. Note that with ``close_mosaic=10`` a run of 10
epochs or fewer never uses mosaic.

Changed from Ultralytics' defaults, none of which changes what is trained: ``val=False`` (no
validation between epochs, so nothing is chosen on the test split; ``--val-every-epoch`` restores
Ultralytics' per-epoch validation and records its curve), ``plots=False``, ``amp=False``,
``workers=0`` (Ultralytics forces 0 on the CPU anyway), ``pretrained=False``, and the thread
count: importing Ultralytics sets ``OMP_NUM_THREADS=1`` when it is unset, and its CPU device
selection sets torch to (cores - 1) threads, at most 8, so 1 thread on a 2-core machine; here both
are ``--threads`` (default: one per available core, as fpn_lab's training gets; ``--threads 1``
on 2 cores is Ultralytics' own choice), recorded in the result with Ultralytics' own number.

Reported, for the final weights (``last.pt``, Ultralytics' EMA weights, as every Ultralytics run
saves them) evaluated on the 72 test images by Ultralytics' validator (``conf=0.001``,
``iou=0.7``, rectangular 320 px batches): mAP50 and mAP50-95 (Ultralytics' own AP: 101-point
interpolated, all detections), per class mAP50 and mAP50-95; and the same detections scored
by fpn_lab's COCO evaluation (pycocotools, 100 detections per image, ``fpn_lab.metrics.coco``),
the AP / AP50 that fpn_lab's runs report. Seconds: ``train_s`` = the training epochs only
(from each epoch's start to its end, data loading included, validation excluded); ``wall_s`` =
the whole ``model.train()`` call (label caching, model build, the validation of the last epoch
and Ultralytics' final evaluation included).

Offline: Ultralytics' settings live in a fresh ``YOLO_CONFIG_DIR`` inside the run folder with
``sync=False`` and every integration off, ``YOLO_OFFLINE=1`` (no update check, no analytics),
``YOLO_AUTOINSTALL=0`` (no pip), a local font copied in as ``Arial.ttf`` (its dataset check would
otherwise ask GitHub for one). A Python audit hook refuses every DNS lookup and internet
connection for the whole run and records it: the result's ``network_attempts`` must be empty.

Each run writes ``bench/logs/ultralytics/yolo11n_e<epochs>_s<seed>_<imgsz>px_<time>.json`` (the
``--quick`` run writes into its run folder only) and prints a markdown table row; the YOLO-format
copy of the data (labels written here, images linked), Ultralytics' settings, weights and logs go
to ``runs/ultralytics/<time>/``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKGS = Path(os.environ.get("ULTRALYTICS_PKGS") or ROOT / "bench" / ".ultralytics-pkgs")
LOG_DIR = ROOT / "bench" / "logs" / "ultralytics"
RUNS_DIR = ROOT / "runs" / "ultralytics"
DATA_DIR = ROOT / "data" / "bccd"
MODEL = "yolo11n.yaml"
INSTALL = ".venv/bin/python -m pip install --target bench/.ultralytics-pkgs --no-deps -r bench/requirements-ultralytics.txt"

TABLE_HEADER = ("| model | epochs | seed | imgsz | mAP50 | mAP50-95 | COCO AP50 | COCO AP | train s | wall s |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


class NetworkGuard:
    """Audit hook that refuses DNS lookups and internet connections and records each attempt.

    Local sockets (``AF_UNIX`` paths, as multiprocessing uses) are left alone. Raising from an
    audit hook aborts the audited call with that exception, which Ultralytics' online checks
    catch like any other network failure, at once (no time-out to wait for).
    """

    LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"}
    SENDS = {"socket.connect", "socket.sendto"}

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def __call__(self, event: str, args: tuple) -> None:
        if event in self.LOOKUPS:
            what = f"{event}({args[0]!r})"
        elif event in self.SENDS and isinstance(args[1], tuple):
            what = f"{event}({args[1][0]!r}, {args[1][1]})"
        elif event == "urllib.Request":
            what = f"{event}({args[0]!r})"
        else:
            return
        caller = next((f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(traceback.extract_stack())
                       if "/ultralytics/" in f.filename), "")
        self.attempts.append(f"{what} from {caller}" if caller else what)
        raise OSError(f"network access refused by bench/ultralytics_yolo.py (offline benchmark): {what}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, nargs="+", help="epoch counts, one run each (default 10; --quick: 1)")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="Ultralytics seed(s), deterministic=True (default 0)")
    p.add_argument("--imgsz", type=int, help="training and test image size (default 320; --quick: 64)")
    p.add_argument("--fraction", type=float,
                   help="Ultralytics' fraction: share of the training images used (default 1; --quick: 0.1)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads; 0 = OMP_NUM_THREADS if set, else one per available core (default 0)")
    p.add_argument("--val-every-epoch", action="store_true",
                   help="Ultralytics' default val=True: validate on the test split after every epoch and record the "
                        "curve (slower; the reported metrics stay those of last.pt)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 epoch, 10%% of the training images, 64 px (each can be overridden); the result "
                        "goes to the run folder, not bench/logs")
    p.add_argument("--verbose", action="store_true", help="Ultralytics' own log (per-batch progress, summaries)")
    args = p.parse_args(argv)
    defaults = {"epochs": [1], "imgsz": 64, "fraction": 0.1} if args.quick else {"epochs": [10], "imgsz": 320, "fraction": 1.0}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if min(args.epochs) < 1 or args.batch < 1 or args.imgsz < 32 or not 0 < args.fraction <= 1:
        p.error("epochs and batch must be >= 1, imgsz >= 32 and 0 < fraction <= 1")
    return args


def thread_count(requested: int) -> int:
    if requested > 0:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))


def require_ultralytics() -> None:
    """Put ``PKGS`` last on ``sys.path`` (``.venv``'s packages win) and exit with the install command if
    Ultralytics is not there; the import itself waits for the environment variables it reads."""
    if str(PKGS) not in sys.path:
        sys.path.append(str(PKGS))
    if importlib.util.find_spec("ultralytics") is None:
        sys.exit(f"error: Ultralytics is not importable (looked in .venv and {PKGS}).\n"
                 f"It is installed for this benchmark only, outside .venv (fpn_lab does not depend on it); from {ROOT}:\n"
                 f"    {INSTALL}")
    for clash in ("torch", "torchvision", "numpy"):
        if (PKGS / clash).exists():
            print(f"warning: {PKGS / clash} exists (installed without --no-deps?); .venv's copy is used, "
                  f"since {PKGS} comes last on sys.path", file=sys.stderr)


def configure_ultralytics(run_dir: Path, threads: int) -> int:
    """Offline settings (in the fresh ``YOLO_CONFIG_DIR``) and the thread count; returns Ultralytics' own count."""
    from matplotlib import font_manager
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR, torch_utils

    updates = {"sync": False, "datasets_dir": str(run_dir / "datasets"), "weights_dir": str(run_dir / "weights"),
               "runs_dir": str(run_dir), "api_key": "", "vscode_msg": False, "openvino_msg": False}
    updates.update({k: False for k in ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "hub")})
    SETTINGS.update({k: v for k, v in updates.items() if k in SETTINGS})
    # check_det_dataset() calls check_font("Arial.ttf"), which downloads it from GitHub unless it is in the config
    # folder or among matplotlib's fonts; it is only drawn on plots (off here), so any local TTF does.
    font = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    shutil.copyfile(font, USER_CONFIG_DIR / "Arial.ttf")
    # select_device() sets torch.set_num_threads(NUM_THREADS) for CPU training: cores - 1 (at most 8).
    own = torch_utils.NUM_THREADS
    torch_utils.NUM_THREADS = threads
    return own


def write_yolo_dataset(split, out: Path) -> Path:
    """YOLO-format copy of fpn_lab's split: images linked, one label file per image, ``data.yaml``.

    Labels: ``class cx cy w h`` normalised by the record's (upright) image size, classes in
    fpn_lab's order (sorted names). Ultralytics finds ``labels/x/NAME.txt`` for ``images/x/NAME.jpg``.
    """
    import yaml

    for part, records in (("train", split.train), ("test", split.valid)):
        images, labels = out / "images" / part, out / "labels" / part
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for r in records:
            if (r.iscrowd | r.difficult).any():
                print(f"warning: {r.filepath.name} has crowd/difficult boxes; Ultralytics trains and scores them as "
                      "ordinary boxes", file=sys.stderr)
            (images / r.filepath.name).symlink_to(r.filepath.resolve())
            rows = []
            for (x1, y1, x2, y2), label in zip(r.boxes.tolist(), r.labels.tolist()):
                cx, cy = (x1 + x2) / 2 / r.width, (y1 + y2) / 2 / r.height
                w, h = (x2 - x1) / r.width, (y2 - y1) / r.height
                rows.append(f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
            (labels / f"{r.filepath.stem}.txt").write_text("".join(rows))
    data = {"path": str(out), "train": "images/train", "val": "images/test", "test": "images/test",
            "names": dict(enumerate(split.class_map.names))}
    data_yaml = out / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    return data_yaml


def epoch_timer(model, total_epochs: int, verbose: bool) -> tuple[list[float], set[int]]:
    """Callbacks that time each epoch's training part (start of epoch to ``on_train_epoch_end``) and
    record torch's thread count while training."""
    import torch

    seconds: list[float] = []
    threads: set[int] = set()
    start = [0.0]

    def on_start(trainer) -> None:
        start[0] = time.perf_counter()

    def on_end(trainer) -> None:
        seconds.append(time.perf_counter() - start[0])
        threads.add(torch.get_num_threads())
        if not verbose:
            losses = trainer.label_loss_items(trainer.tloss, prefix="train")
            loss = ", ".join(f"{k.split('/')[-1]} {float(v):.3f}" for k, v in losses.items())
            print(f"  epoch {trainer.epoch + 1}/{total_epochs}: {seconds[-1]:.1f} s, {loss}", flush=True)

    model.add_callback("on_train_epoch_start", on_start)
    model.add_callback("on_train_epoch_end", on_end)
    return seconds, threads


def validation_curve(results_csv: Path) -> list[dict]:
    """Per-epoch test-split mAP from Ultralytics' ``results.csv`` (``--val-every-epoch``)."""
    if not results_csv.exists():
        return []
    with results_csv.open(newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]
    return [{"epoch": int(float(row["epoch"])), "time_s": float(row["time"]),
             "mAP50": float(row["metrics/mAP50(B)"]), "mAP50-95": float(row["metrics/mAP50-95(B)"])}
            for row in rows]


def coco_scores(predictions_json: Path, split) -> dict:
    """Ultralytics' test detections (its ``save_json`` output) scored by fpn_lab's COCO evaluation."""
    from fpn_lab.metrics.coco import score_detections

    ids = {r.filepath.stem: r.image_id for r in split.valid}
    detections = json.loads(predictions_json.read_text())
    for d in detections:  # Ultralytics' image_id is the file stem; category_id is label + 1, as VOC's in fpn_lab
        d["image_id"] = ids[str(d["image_id"])]
        d.pop("file_name", None)
    scores = score_detections(split.valid, detections, split.class_map)[0]
    return {"AP": scores["AP"], "AP50": scores["AP50"], "AP75": scores["AP75"],
            "per_class_AP": scores["per_class_AP"], "detections": len(detections)}


def run_one(YOLO, data_yaml: Path, split, run_dir: Path, epochs: int, seed: int, args, guard: NetworkGuard) -> dict:
    name = f"e{epochs}_s{seed}"
    first_attempt = len(guard.attempts)
    model = YOLO(MODEL)
    epoch_seconds, train_threads = epoch_timer(model, epochs, args.verbose)
    print(f"training {MODEL} from scratch: {epochs} epoch(s), seed {seed}, {args.imgsz} px, batch {args.batch}, "
          f"fraction {args.fraction}", flush=True)
    t0 = time.perf_counter()
    model.train(data=str(data_yaml), epochs=epochs, imgsz=args.imgsz, batch=args.batch, seed=seed,
                deterministic=True, device="cpu", workers=0, amp=False, plots=False, pretrained=False,
                val=args.val_every_epoch, fraction=args.fraction, project=str(run_dir / "train"), name=name,
                exist_ok=True, verbose=args.verbose)
    wall = time.perf_counter() - t0
    trainer = model.trainer
    last = Path(trainer.last)

    val_dir = run_dir / "val" / name
    metrics = YOLO(str(last)).val(data=str(data_yaml), split="test", imgsz=args.imgsz, batch=args.batch,
                                  device="cpu", workers=0, plots=False, save_json=True, project=str(val_dir.parent),
                                  name=val_dir.name, exist_ok=True, verbose=args.verbose)
    box, names = metrics.box, metrics.names
    per_class = {names[int(c)]: {"mAP50": float(box.all_ap[i, 0]), "mAP50-95": float(box.all_ap[i].mean())}
                 for i, c in enumerate(box.ap_class_index)}
    coco = coco_scores(val_dir / "predictions.json", split)

    import torch
    import torchvision
    import ultralytics

    return {
        "model": MODEL, "pretrained": False, "epochs": epochs, "seed": seed, "deterministic": True,
        "imgsz": args.imgsz, "batch": args.batch, "fraction": args.fraction, "quick": args.quick,
        "val_every_epoch": args.val_every_epoch, "device": "cpu",
        "threads": sorted(train_threads)[0] if len(train_threads) == 1 else sorted(train_threads),
        "ultralytics_default_threads": args.ultralytics_threads,
        "dataset": {"dir": str(DATA_DIR.relative_to(ROOT)), "split": "published", "train_images": len(split.train),
                    "test_images": len(split.valid), "classes": split.class_map.names},
        "weights": "last.pt (EMA)",
        "mAP50": float(box.map50), "mAP50-95": float(box.map), "precision": float(box.mp), "recall": float(box.mr),
        "per_class": per_class,
        "coco": coco,
        "train_s": round(sum(epoch_seconds), 2), "wall_s": round(wall, 2),
        "epoch_train_s": [round(s, 2) for s in epoch_seconds],
        "validation_curve": validation_curve(Path(trainer.save_dir) / "results.csv") if args.val_every_epoch else [],
        "network_attempts": guard.attempts[first_attempt:],
        "versions": {"ultralytics": ultralytics.__version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "python": platform.python_version(),
                     # Ultralytics adds its albumentations transforms (blur, CLAHE, ... at p=0.01) when it is installed
                     "albumentations": package_version("albumentations")},
        "cpu": {"cores_available": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine()},
        "run_dir": str(run_dir.relative_to(ROOT)),
        "weights_file": str(last.relative_to(ROOT)) if last.is_relative_to(ROOT) else str(last),
    }


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def table_row(r: dict) -> str:
    return (f"| YOLO11n (Ultralytics {r['versions']['ultralytics']}, scratch) | {r['epochs']} | {r['seed']} | {r['imgsz']} "
            f"| {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {r['coco']['AP50']:.3f} | {r['coco']['AP']:.3f} "
            f"| {r['train_s']:.0f} | {r['wall_s']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_ultralytics()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RUNS_DIR / (f"{stamp}-quick" if args.quick else stamp)
    config_dir = run_dir / "yolo_config"
    config_dir.mkdir(parents=True)

    # Before torch and Ultralytics are imported: OpenMP reads its thread count once, and Ultralytics reads these
    # variables at import (it would set OMP_NUM_THREADS=1 when unset).
    threads = thread_count(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.update({"YOLO_CONFIG_DIR": str(config_dir), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0",
                       "YOLO_VERBOSE": "1" if args.verbose else "0"})
    guard = NetworkGuard()
    sys.addaudithook(guard)

    import torch
    import ultralytics

    torch.set_num_threads(threads)
    args.ultralytics_threads = configure_ultralytics(run_dir, threads)
    from fpn_lab.data.datasets import open_dataset

    split = open_dataset(DATA_DIR, split="published")
    data_yaml = write_yolo_dataset(split, run_dir / "dataset")
    print(f"Ultralytics {ultralytics.__version__} from {Path(ultralytics.__file__).parent.parent}, torch "
          f"{torch.__version__} ({threads} threads); BCCD published split: {len(split.train)} train / "
          f"{len(split.valid)} test images, classes {split.class_map.names}; run folder {run_dir.relative_to(ROOT)}",
          flush=True)

    rows = []
    for epochs in args.epochs:
        for seed in args.seed:
            result = run_one(ultralytics.YOLO, data_yaml, split, run_dir, epochs, seed, args, guard)
            out_dir = run_dir if args.quick else LOG_DIR
            out_dir.mkdir(parents=True, exist_ok=True)
            out = out_dir / f"yolo11n_e{epochs}_s{seed}_{args.imgsz}px_{stamp}.json"
            out.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
            rows.append(table_row(result))
            per_class = ", ".join(f"{k} {v['mAP50-95']:.3f}" for k, v in result["per_class"].items())
            print(f"\n{rows[-1]}\n  per-class mAP50-95: {per_class}\n  result: {out.relative_to(ROOT)}"
                  + (f"\n  network attempts refused: {result['network_attempts']}" if result["network_attempts"] else ""),
                  flush=True)
    print("\n" + TABLE_HEADER + "\n" + "\n".join(rows))
    if guard.attempts:
        print(f"\nwarning: {len(guard.attempts)} network attempt(s) refused: {guard.attempts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
