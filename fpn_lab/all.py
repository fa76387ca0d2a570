"""Notebook convenience: ``from fpn_lab.all import *`` brings the getting-started API, one level deep.

It holds IceVision's names (``models``, ``parsers``, ``tfms``, ``Dataset``, ``show_samples``,
``first``, ``COCOMetric``...; :mod:`fpn_lab.icevision`), so IceVision's getting-started code runs
with only its import line changed, and fpn_lab's own (``open_dataset``, ``build_model``,
``make_learner``, ``show_fpn_features``...). Only notebooks use this module; package code imports
from the defining modules.
"""

from pathlib import Path

from fastcore.basics import first

from fpn_lab.checkpoint import check_reload, load_checkpoint, save_checkpoint
from fpn_lab.core.class_map import ClassMap
from fpn_lab.core.records import Record
from fpn_lab.data.dataloaders import Dataset, make_dataloaders
from fpn_lab.data.datasets import open_dataset
from fpn_lab.data.images import load_image
from fpn_lab.data.parsers import COCOBBoxParser, VOCBBoxParser
from fpn_lab.data.splits import FixedSplitter, RandomSplitter, SingleSplitSplitter, VOCImageSetSplitter
from fpn_lab.data.transforms import aug_tfms, resize_and_pad
from fpn_lab.errors import DataError, ModelError, ParamsError, TrainingError
from fpn_lab.icevision import (
    COCOMetric, COCOMetricType, model_choice, model_from_checkpoint, models, parsers, save_icevision_checkpoint,
    show_preds, tfms,
)
from fpn_lab.inference import evaluate, image_losses, predict_dataset, predict_images
from fpn_lab.learner.learner import find_lr, history, make_learner, train
from fpn_lab.metrics.analysis import analyse
from fpn_lab.metrics.coco import per_class_table, records_to_coco
from fpn_lab.models.build import build_model, count_parameters, place_model
from fpn_lab.models.catalogue import selection_table
from fpn_lab.models.registry import get_preset, list_models
from fpn_lab.runner.context import Run, set_seed
from fpn_lab.runner.paths import display_path, project_path, write_json_atomic
from fpn_lab.threads import configure_threads
from fpn_lab.viz.analysis import plot_confusion_matrix, plot_curves, show_worst_images
from fpn_lab.viz.draw import (
    plot_metrics, show_batch, show_fpn_features, show_predictions, show_results, show_samples,
)
from fpn_lab.viz.picker import ModelPicker

__all__ = [
    # IceVision's getting-started names
    "COCOMetric", "COCOMetricType", "ClassMap", "Dataset", "FixedSplitter", "Path", "RandomSplitter",
    "SingleSplitSplitter", "first", "model_choice", "model_from_checkpoint", "models", "parsers",
    "save_icevision_checkpoint", "show_preds", "show_samples", "tfms",
    # fpn_lab's own
    "COCOBBoxParser", "DataError", "ModelError", "ModelPicker", "ParamsError", "Record", "Run", "TrainingError",
    "VOCBBoxParser", "VOCImageSetSplitter", "analyse", "aug_tfms", "build_model", "check_reload", "configure_threads",
    "count_parameters", "display_path", "evaluate", "find_lr", "get_preset", "history", "image_losses", "list_models",
    "load_checkpoint", "load_image", "make_dataloaders", "make_learner", "open_dataset", "per_class_table",
    "place_model", "plot_confusion_matrix", "plot_curves",
    "plot_metrics", "predict_dataset", "predict_images", "project_path", "records_to_coco", "resize_and_pad",
    "save_checkpoint", "selection_table", "set_seed", "show_batch", "show_fpn_features", "show_predictions",
    "show_results", "show_worst_images", "train", "write_json_atomic",
]
