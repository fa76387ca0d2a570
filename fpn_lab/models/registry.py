"""One registry of model presets: register once, look up by name, alias or IceVision index.

:mod:`fpn_lab.models.presets` is plain data (the tuple ``PRESETS``); this module is the one place
that registers it, on the first lookup (:func:`_ensure_loaded`), so importing the presets never
imports the registry and there is no import cycle.

Anchors: ``torchvision.models._api`` (duplicate = error) and ``timm.list_models`` (fnmatch).
"""

from __future__ import annotations

import fnmatch
import threading

from fpn_lab.errors import ModelError, did_you_mean

_PRESETS: dict = {}  # name -> Preset
_ALIASES: dict[str, str] = {}  # alias -> name
#: IceVision getting-started notebook's ``selection`` indices. Indices that name a model outside
#: fpn_lab's scope map to a description used in the error message.
_SELECTIONS: dict[int, str] = {}
_loaded = False
ICEVISION_OTHERS = {
    3: "mmdet SSD300 (no FPN)",
    5: "mmdet YOLOF r50_c5 (no FPN)", 6: "mmdet DETR r50 (no FPN)", 7: "mmdet Deformable DETR",
    8: "mmdet FSAF x101 FPN", 9: "mmdet SABL r101 FPN", 10: "mmdet CentripetalNet hourglass104",
    11: "torchvision RetinaNet resnet50_fpn", 12: "ross EfficientDet tf_lite0 (BiFPN; fpn_lab's own EfficientDet-D0 is 'efficientdet_effb0_bifpn_300e')", 13: "ultralytics YOLOv5 small",
}


def register_model(preset):
    """Add a :class:`~fpn_lab.models.presets.Preset` after the catalogue's own presets and return it.

    Raises:
        ModelError: its name or an alias is already a registered name or alias, or its
            ``selection`` index is taken; nothing is registered then.
    """
    _ensure_loaded()
    with _LOCK:
        _add(preset)
    return preset


def _add(preset) -> None:
    """Check every key of ``preset`` first, then insert it (so a refused preset leaves no trace)."""
    names = [preset.name, *preset.aliases]
    for i, n in enumerate(names):
        if n in _PRESETS or n in _ALIASES or n in names[:i]:
            owner = _ALIASES.get(n, n if n in _PRESETS else preset.name)
            raise ModelError(f"model name {n!r} is already registered (by {owner!r}); "
                             "names and aliases must be unique.")
    if preset.selection is not None and preset.selection in _SELECTIONS:
        raise ModelError(f"selection index {preset.selection} is already taken by {_SELECTIONS[preset.selection]!r}.")
    _PRESETS[preset.name] = preset
    _ALIASES.update((a, preset.name) for a in preset.aliases)
    if preset.selection is not None:
        _SELECTIONS[preset.selection] = preset.name


_LOCK = threading.Lock()  # the first lookups may come from several threads at once (fpn-lab batch)


def _ensure_loaded() -> None:
    """Register :data:`fpn_lab.models.presets.PRESETS` once (thread-safe); a duplicate in it empties
    the registry and raises."""
    global _loaded
    if _loaded:
        return
    from fpn_lab.models.presets import PRESETS

    with _LOCK:
        if _loaded:  # another thread filled it while this one waited
            return
        try:
            for preset in PRESETS:
                _add(preset)
        except ModelError:
            for table in (_PRESETS, _ALIASES, _SELECTIONS):
                table.clear()
            raise
        _loaded = True


def list_models(include: str = "*", exclude: str | None = None) -> list[str]:
    """Preset names matching the fnmatch pattern ``include`` and not ``exclude``, sorted."""
    _ensure_loaded()
    return sorted(n for n in _PRESETS if fnmatch.fnmatch(n, include) and not (exclude and fnmatch.fnmatch(n, exclude)))


def get_preset(selection):
    """Resolve ``selection``: an IceVision index (int), a preset name, an alias or a registered preset.

    Raises:
        ModelError: unknown index or name; the message lists valid ones and close matches.
    """
    _ensure_loaded()
    if getattr(selection, "name", None) in _PRESETS and _PRESETS[selection.name] is selection:
        return selection  # already a registered Preset
    if isinstance(selection, bool):
        raise ModelError(f"selection must be an int index or a preset name; got the boolean {selection!r}.")
    if isinstance(selection, int):
        if selection in _SELECTIONS:
            return _PRESETS[_SELECTIONS[selection]]
        valid = ", ".join(f"{i} = {n}" for i, n in sorted(_SELECTIONS.items()))
        why = (f" In IceVision it meant {ICEVISION_OTHERS[selection]}, which fpn_lab does not offer "
               "(it covers MMDetection's FPN detectors).") if selection in ICEVISION_OTHERS else ""
        raise ModelError(f"unknown selection index {selection}.{why} Valid indices: {valid}; or pass a preset "
                         f"name such as {list_models()[0]!r} (see list_models()).")
    if isinstance(selection, str):
        key = selection.strip()
        if key.isdigit():
            return get_preset(int(key))
        if key in _PRESETS:
            return _PRESETS[key]
        if key in _ALIASES:
            return _PRESETS[_ALIASES[key]]
        raise ModelError(f"unknown model {selection!r}.{did_you_mean(key, [*_PRESETS, *_ALIASES])} "
                         f"Registered presets: {', '.join(list_models())}.")
    raise ModelError(f"selection must be an int index or a preset name; got {type(selection).__name__} {selection!r}.")


def selections() -> dict[int, str]:
    """IceVision index -> preset name, for the indices fpn_lab offers."""
    _ensure_loaded()
    return dict(sorted(_SELECTIONS.items()))


def archs() -> list[str]:
    """The detector families registered, sorted: ``['retinanet', 'vfnet', 'yolox']``."""
    _ensure_loaded()
    return sorted({p.arch for p in _PRESETS.values()})


def icevision_backbones(arch: str) -> dict[str, str]:
    """IceVision backbone name -> preset name, for every preset of ``arch`` with an IceVision alias.

    The backbone name is the alias after ``"<arch>."``, as IceVision's
    ``models.mmdet.<arch>.backbones.<name>``; sorted by backbone name.

    >>> icevision_backbones("vfnet")["resnet50_fpn_mstrain_2x"]
    'vfnet_r50_fpn_ms2x'

    Raises:
        ModelError: ``arch`` is not one of :func:`archs`.
    """
    known = archs()
    if arch not in known:
        raise ModelError(f"unknown arch {arch!r}.{did_you_mean(str(arch), known)} "
                         f"Registered archs: {', '.join(known)}.")
    prefix = f"{arch}."
    return {a[len(prefix):]: name for a, name in sorted(_ALIASES.items())
            if a.startswith(prefix) and _PRESETS[name].arch == arch}
