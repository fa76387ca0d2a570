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
    """Values that would fail in the notebook's cells fail here, before a kernel starts and before a
    run folder exists. Each part checks its own parameters: the model (``selection``, ``weights``:
    :func:`~fpn_lab.models.build.check_model_params`), the data (``image_size``, ``data_dir``,
    ``data_format``, ``split``, ``valid_annotations`` and the folder's layout:
    :func:`~fpn_lab.data.datasets.check_data_params`), the threads, the training
    (:func:`~fpn_lab.learner.schedule.check_training_params`), the neck
    (:func:`~fpn_lab.mmdet_adapter.necks.check_neck_params`), tracking, the device
    (:func:`~fpn_lab.device.check_device_params`) and the processes
    (:func:`fpn_lab.distributed.check_params`); the runner checks ``run_name``. Path parameters are
    resolved against the project root (:func:`~fpn_lab.runner.paths.project_path`)."""
    from fpn_lab import distributed
    from fpn_lab.data.datasets import check_data_params
    from fpn_lab.device import check_device_params
    from fpn_lab.errors import FpnLabError
    from fpn_lab.learner.schedule import check_training_params
    from fpn_lab.mmdet_adapter.necks import check_neck_params
    from fpn_lab.models.build import check_model_params
    from fpn_lab.runner.paths import project_path
    from fpn_lab.runner.tracking import check_track
    from fpn_lab.threads import check_num_threads

    check_model_params(params, project_path)
    check_data_params(params, project_path)
    if "num_threads" in params:
        check_num_threads(params["num_threads"])
    check_training_params(params)
    check_neck_params(params)
    if "track" in params:
        try:
            check_track(params["track"])
        except FpnLabError as e:  # a missing extra too: a parameter that cannot work here
            raise ParamsError(str(e)) from None
    check_device_params(params)
    distributed.check_params(params)
    name = params.get("run_name")
    if name and (Path(name).name != name or name in (".", "..")):
        raise ParamsError(f"run_name: {name!r} must be a plain folder name (no '/' or '..'); runs go under runs/.")


def parse_set(items) -> dict:
    """``["epochs=3", "lr=1e-3"]`` (CLI ``--set``) to a dict, values read as YAML scalars."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ParamsError(f"--set takes key=value; got {item!r}.")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value != "" else ""
    return out
