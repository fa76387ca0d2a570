"""Notebook parameters: load a params YAML and validate it against the notebook's ``parameters`` cell.

Papermill injects whatever it is given, so a typo (``epoch: 3``) or a YAML type trap (``lr: 1e-3``
is a *string* in YAML 1.1; ``no`` is a boolean) would surface cells later, deep in training. Here
every key must be a parameter of the notebook, and every value must have the type of the
parameter's default (see :func:`coerce`), before a kernel starts.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from fpn_lab.errors import ParamsError, did_you_mean


def load_params_file(path: str | Path) -> dict:
    """Read a params YAML. An empty or comment-only file means no overrides (``{}``).

    Raises:
        ParamsError: missing file, invalid YAML, or a top level that is not a mapping.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"params file not found: {path}.") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of parameter: value; got a "
                          f"{type(data).__name__} ({str(data)[:60]!r}).")
    return data


def notebook_parameters(notebook: str | Path) -> dict[str, dict]:
    """``{name: {"default": value, "type": "int"|"float"|"str"|"bool"|...}}`` from the tagged cell.

    Raises:
        ParamsError: the notebook has no cell tagged ``parameters``.
    """
    import papermill as pm

    try:
        found = pm.inspect_notebook(str(notebook))
    except ValueError as e:  # e.g. no kernelspec in the notebook's metadata
        raise ParamsError(f"{notebook}: cannot read its parameters ({e}); open it in Jupyter and choose the "
                          "'Python (fpn_lab)' kernel, then save.") from None
    if not found:
        raise ParamsError(f"{notebook} has no cell tagged 'parameters'; papermill cannot inject values. "
                          "Tag the cell holding the defaults with 'parameters'.")
    _check_all_parsed(notebook, found)
    out = {}
    for name, info in found.items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            raise ParamsError(f"{notebook}: the default of parameter {name!r} ({info['default']!r}) is not a "
                              "literal; parameters cells must hold plain values.") from None
        out[name] = {"default": default, "type": type(default).__name__, "help": info.get("help", "")}
    return out


def _check_all_parsed(notebook, found: dict) -> None:
    """Papermill skips parameter lines it cannot parse; a skipped parameter would reject valid params."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    names = [t.id for node in ast.parse(cell.source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
    missing = [n for n in names if n not in found]
    if missing:
        raise ParamsError(f"{notebook}: papermill could not parse the parameters {missing}; keep each on one line "
                          "as `name = literal  # comment`.")


def coerce(name: str, value, default, syntax: str = "yaml"):
    """Check ``value`` against the type of ``default``; returns ``(value, note or None)``.

    ``syntax`` is where the value was written, for the words of the errors: ``"yaml"`` (a params
    file or ``--set``: ``null``, ``true``) or ``"python"`` (the notebook's parameter cell: ``None``,
    ``True``).

    Rules, for the traps of YAML 1.1 (what PyYAML reads):

    * ``null`` is accepted where the default is ``None`` or a string (an optional path or name);
      for numbers, booleans, lists and dicts it is an error. The *string* ``"None"`` is an error
      (write ``null``).
    * float parameter: an int is widened; a numeric string (``1e-3`` is a string in YAML 1.1) is
      converted with a note. int parameter: a numeric string is converted with a note.
    * a boolean where a string, number or list item is expected is an error (``no``, ``yes``,
      ``on``, ``off`` are booleans in YAML: quote them).
    * lists: each item must have the type of the default's items (when the default has items).
    * ``selection`` takes an int index or a preset name; ``detection_threshold`` a score in
      ``[0, 1]`` or ``"auto"``.
    """
    if name == "detection_threshold":
        from fpn_lab.metrics.analysis import check_threshold

        if isinstance(value, str) and re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)(e-?\d+)?\s*", value):  # --set detection_threshold=0.4
            value = float(value)
        return check_threshold(value), None
    expected = type(default)
    python = syntax == "python"
    null, true_false = ("None", "True or False") if python else ("null", "true or false")
    if value is None:
        if default is None or expected is str:
            return None, None
        raise ParamsError(f"{name}: got {null}, but it needs a {expected.__name__} (default {default!r}).")
    if isinstance(value, str) and value.strip() in ("None", "none") and expected is not str:
        raise ParamsError(f"{name}: got the string {value!r}; write {null} (without quotes) for no value.")
    if isinstance(value, str) and value.strip() == "None" and not python:
        raise ParamsError(f"{name}: got the string 'None'; write null for no value, or quote another name.")
    if name == "selection" and isinstance(value, (int, str)) and not isinstance(value, bool):
        return value, None
    if expected is bool:
        if isinstance(value, bool):
            return value, None
        raise ParamsError(f"{name}: expected {true_false}, got {type(value).__name__} {value!r}.")
    if isinstance(value, bool):
        if python:
            raise ParamsError(f"{name}: expected {expected.__name__} (default {default!r}), got the boolean {value!r}.")
        raise ParamsError(f"{name}: expected {expected.__name__}, got the boolean {value!r}; YAML reads "
                          "yes/no/on/off/true/false as booleans: quote the value (on the command line: "
                          f"--set \"{name}='{'yes' if value else 'no'}'\").")
    if expected is float and isinstance(value, int):
        return float(value), None
    if expected in (float, int) and isinstance(value, str):
        try:
            converted = expected(value)
        except ValueError:
            raise ParamsError(f"{name}: expected {expected.__name__}, got str {value!r}.") from None
        return converted, f"{name}: converted the string {value!r} to the {expected.__name__} {converted!r}"
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value), None
    if expected is list and isinstance(value, list):
        return _coerce_list(name, value, default, syntax), None
    if default is None or isinstance(value, expected):
        return value, None
    raise ParamsError(f"{name}: expected {expected.__name__} (default {default!r}), got {type(value).__name__} {value!r}.")


def _coerce_list(name: str, value: list, default: list, syntax: str = "yaml") -> list:
    item_type = type(default[0]) if default else None
    for i, item in enumerate(value):
        if isinstance(item, bool) and item_type is not bool:
            hint = "" if syntax == "python" else "; YAML reads yes/no/on/off as booleans: quote it"
            raise ParamsError(f"{name}[{i}] is a boolean ({item!r}){hint}.")
        if item_type is not None and not isinstance(item, item_type):
            raise ParamsError(f"{name}[{i}]: expected {item_type.__name__}, got {type(item).__name__} {item!r}.")
    return value


def validate_params(params: dict, notebook: str | Path, spec: dict | None = None,
                    syntax: str = "yaml") -> tuple[dict, list[str]]:
    """Validate ``params`` against ``notebook``'s parameters (``spec``: its
    :func:`notebook_parameters`, when already read); returns ``(params, notes)``. ``syntax``:
    ``"yaml"`` (params files, ``--set``) or ``"python"`` (the notebook's own cell, checked by
    :meth:`~fpn_lab.runner.context.Run.start`) words the errors in that language.

    Raises:
        ParamsError: an unknown key (with close matches) or a value of the wrong type.
    """
    spec = spec if spec is not None else notebook_parameters(notebook)
    out, notes = {}, []
    for key, value in params.items():
        if key not in spec:
            raise ParamsError(f"unknown parameter {key!r} for {Path(notebook).name}.{did_you_mean(key, spec)} "
                              f"Parameters: {', '.join(spec)}.")
        out[key], note = coerce(key, value, spec[key]["default"], syntax)
        if note:
            notes.append(note)
    _check_values(out)
    merged = {**{k: v["default"] for k, v in spec.items()}, **out}
    if "lr" in merged and "lr_find_iters" in merged and not merged["lr"] and not merged["lr_find_iters"]:
        example = "lr = 0.003" if syntax == "python" else "lr: 0.003"
        raise ParamsError(f"lr = 0 asks for lr_find's suggestion, but lr_find_iters = 0 skips lr_find: set lr (e.g. "
                          f"{example}) or lr_find_iters >= 10.")
    return out, notes


def _check_values(params: dict) -> None:
    """Values that would fail in the first cells fail here, before a kernel starts and before a
    run folder exists: an unknown ``selection``, an ``image_size`` that is not a multiple of 32,
    a ``data_dir`` that does not exist, a bad ``data_format`` / ``split`` / ``valid_annotations``
    (``split`` absent counts as the notebooks' default ``"published"``), and a ``data_dir``
    whose layout does not fit them (:func:`~fpn_lab.data.datasets.find_layout`: file names only,
    nothing parsed)."""
    from fpn_lab.data.datasets import check_choices, find_layout
    from fpn_lab.data.transforms import Letterbox
    from fpn_lab.errors import FpnLabError
    from fpn_lab.models.registry import get_preset
    from fpn_lab.runner.paths import project_path

    try:
        if "selection" in params:
            get_preset(params["selection"])
        if isinstance(params.get("image_size"), int):
            Letterbox(params["image_size"])
    except FpnLabError as e:
        raise ParamsError(str(e)) from None
    from fpn_lab.learner.schedule import check_one_cycle
    from fpn_lab.threads import check_num_threads

    if "num_threads" in params:
        check_num_threads(params["num_threads"])
    if "one_cycle" in params:
        check_one_cycle(params["one_cycle"])
    for key in ("epochs", "batch_size"):
        if isinstance(params.get(key), int) and params[key] < 1:
            raise ParamsError(f"{key}: {params[key]} must be a positive int.")
    if isinstance(params.get("no_aug_epochs"), int) and params["no_aug_epochs"] < 0:
        raise ParamsError(f"no_aug_epochs: {params['no_aug_epochs']} must be >= 0 (0: off; N: the last N epochs "
                          "without augmentation).")
    opts = ("adam", "sgd", "recipe")
    if "opt" in params and params["opt"] not in opts:
        raise ParamsError(f"opt: {params['opt']!r} is not one of {list(opts)}.")
    from fpn_lab.mmdet_adapter.necks import NECK_TYPES

    necks = ("", *NECK_TYPES)
    if params.get("neck") not in (None, *necks):
        raise ParamsError(f"neck: {params['neck']!r} is not one of {list(necks)} ('' keeps the preset's neck).")
    if params.get("neck") == "nasfpn" and isinstance(params.get("image_size"), int) and params["image_size"] < 128:
        raise ParamsError(f"image_size: {params['image_size']} is too small for neck: nasfpn, which needs 128 px or more "
                          "(it pools down to P7, stride 128); raise image_size or choose another neck.")
    if "track" in params:
        from fpn_lab.errors import FpnLabError
        from fpn_lab.runner.tracking import check_track

        try:
            check_track(params["track"])
        except FpnLabError as e:  # a missing extra too: a parameter that cannot work here
            raise ParamsError(str(e)) from None
    from fpn_lab.device import check_amp, check_device
    from fpn_lab.distributed import LR_SCALING

    if "device" in params:
        check_device(params["device"])
        if params["device"] == "cpu":
            check_amp(params.get("amp", False), "cpu")

    if "lr_scaling" in params and params["lr_scaling"] not in LR_SCALING:
        raise ParamsError(f"lr_scaling: {params['lr_scaling']!r} is not one of {list(LR_SCALING)} (linear: lr x the number "
                          "of processes under torchrun; none: lr as given).")
    if params.get("sync_bn") and params.get("device") == "cpu":  # "auto" is checked where it resolves
        raise ParamsError("sync_bn: true needs device: cuda (torch's SyncBatchNorm has no CPU implementation); on the "
                          "CPU each process keeps its own BatchNorm statistics. Set sync_bn: false.")
    name = params.get("run_name")
    if name and (Path(name).name != name or name in (".", "..")):
        raise ParamsError(f"run_name: {name!r} must be a plain folder name (no '/' or '..'); runs go under runs/.")
    weights = params.get("weights")
    if weights and not project_path(weights).is_file():
        raise ParamsError(f"weights: {weights!r} is not a file (looked in {project_path(weights)}).")

    for key in ("data_dir", "data_format", "split"):
        if key in params and params[key] is None or key == "data_dir" and params.get(key, "x") == "":
            raise ParamsError(f"{key}: got {params[key]!r}; it needs a value (data_dir: the dataset folder; data_format: "
                              "'voc', 'coco' or '' to detect; split: 'published', 'random' or 'file').")
    data_dir = params.get("data_dir")
    if isinstance(data_dir, str) and data_dir and not project_path(data_dir).is_dir():
        raise ParamsError(f"data_dir: {data_dir!r} is not a folder (looked in {project_path(data_dir)}); relative "
                          "paths are resolved against the project root.")
    # the dataset: choices, then (when data_dir is given) its layout by file names, as open_dataset reads it;
    # an absent split is the notebooks' default "published"
    fmt, split = params.get("data_format") or "", params.get("split", "published")
    valid = params.get("valid_annotations")
    try:
        check_choices(fmt, split, valid)
    except FpnLabError as e:
        raise ParamsError(str(e)) from None
    if valid and not project_path(valid).is_file():
        raise ParamsError(f"valid_annotations: {valid!r} is not a file (looked in {project_path(valid)}); relative "
                          "paths are resolved against the project root.")
    if isinstance(data_dir, str) and data_dir:
        try:
            find_layout(project_path(data_dir), data_format=fmt, split=split,
                        valid_annotations=project_path(valid) if valid else "")
        except FpnLabError as e:
            raise ParamsError(f"data_dir: {e}") from None


def parse_set(items) -> dict:
    """``["epochs=3", "lr=1e-3"]`` (CLI ``--set``) to a dict, values read as YAML scalars."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ParamsError(f"--set takes key=value; got {item!r}.")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value != "" else ""
    return out
