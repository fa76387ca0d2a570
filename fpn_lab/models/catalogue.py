"""The selection table: every preset with its neck, parameter count, mmdet COCO AP and CPU step time.

Parameter counts and CPU seconds per training step are measured by ``bench/step_time.py``
(num_classes=3, batch 2, from scratch, on this project's 2-core CPU machine) and stored in
``fpn_lab/models/measured.json``; presets not measured yet show NaN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fpn_lab.models.registry import get_preset, list_models, selections

MEASURED = Path(__file__).with_name("measured.json")


def measured() -> dict:
    """``{preset: {"params": int, "cpu_step_s": {"256": s, ...}, ...}}`` from ``measured.json``."""
    return json.loads(MEASURED.read_text()).get("presets", {}) if MEASURED.is_file() else {}


def selection_order(include: str = "*") -> list[str]:
    """Preset names matching ``include``: IceVision's getting-started presets in index order
    (0 VFNet, 1 RetinaNet, 2 Faster R-CNN, 4 YOLOX), then the rest alphabetically."""
    names = list_models(include)
    first = [n for _, n in sorted(selections().items()) if n in names]
    return first + [n for n in names if n not in first]


def selection_table(include: str = "*"):
    """One row per preset matching the fnmatch pattern ``include``, in :func:`selection_order`.

    Returns:
        ``pandas.DataFrame`` indexed by preset name (index name ``"preset"``), so Jupyter shows
        the names at the left and no meaningless 0..N row numbers; read the name with
        ``df.index`` and a row with ``df.loc["yolox_s_pafpn_300e"]``. Columns: ``selection``
        (IceVision index, ``""`` for presets without one), ``alias`` (IceVision names),
        ``neck`` (type and levels), ``params (M)``, ``COCO box AP (mmdet)`` (%),
        ``CPU s/step @256`` and ``CPU s/step @384`` (seconds; NaN until measured).
    """
    import pandas as pd

    m = measured()
    rows = []
    for name in selection_order(include):
        p = get_preset(name)
        meas = m.get(name, {})
        step = meas.get("cpu_step_s", {})
        rows.append({"preset": name, "selection": p.selection if p.selection is not None else "",
                     "alias": ", ".join(p.aliases), "neck": f"{p.neck} ({p.levels[0]}-{p.levels[-1]})",
                     "params (M)": round(meas["params"] / 1e6, 2) if "params" in meas else math.nan,
                     "COCO box AP (mmdet)": p.coco_box_ap,
                     "CPU s/step @256": step.get("256", math.nan), "CPU s/step @384": step.get("384", math.nan)})
    columns = ["preset", "selection", "alias", "neck", "params (M)", "COCO box AP (mmdet)",
               "CPU s/step @256", "CPU s/step @384"]
    return pd.DataFrame(rows, columns=columns).set_index("preset")
