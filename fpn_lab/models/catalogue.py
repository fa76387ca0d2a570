"""The selection table: every preset with its neck, parameter count, mmdet COCO AP and CPU step time.

Parameter counts and CPU seconds per training step are measured by ``bench/step_time.py``
(num_classes=3, batch 2, from scratch, on this project's 2-core CPU machine) and stored in
``fpn_lab/models/measured.json``; presets not measured yet show NaN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fpn_lab.models.registry import get_preset, list_models

MEASURED = Path(__file__).with_name("measured.json")


def measured() -> dict:
    """``{preset: {"params": int, "cpu_step_s": {"256": s, ...}, ...}}`` from ``measured.json``."""
    return json.loads(MEASURED.read_text()).get("presets", {}) if MEASURED.is_file() else {}


def selection_table(include: str = "*"):
    """A pandas DataFrame, one row per preset (sorted by IceVision index, then name)."""
    import pandas as pd

    m = measured()
    rows = []
    for name in list_models(include):
        p = get_preset(name)
        meas = m.get(name, {})
        step = meas.get("cpu_step_s", {})
        rows.append({"selection": p.selection if p.selection is not None else "", "preset": name,
                     "alias": ", ".join(p.aliases), "neck": f"{p.neck} ({p.levels[0]}-{p.levels[-1]})",
                     "params (M)": round(meas["params"] / 1e6, 2) if "params" in meas else math.nan,
                     "COCO box AP (mmdet)": p.coco_box_ap,
                     "CPU s/step @256": step.get("256", math.nan), "CPU s/step @384": step.get("384", math.nan)})
    df = pd.DataFrame(rows)
    order = df["selection"].apply(lambda s: s if s != "" else 99)
    return df.assign(_o=order).sort_values(["_o", "preset"]).drop(columns="_o").reset_index(drop=True)
