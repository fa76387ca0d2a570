"""The interactive model picker for Jupyter: a dropdown of presets and a Build button."""

from __future__ import annotations

from fpn_lab.models.registry import get_preset, list_models


class ModelPicker:
    """A dropdown with every preset (its description, neck and mmdet COCO AP) and a Build button.

    Args:
        selection: the initial choice (IceVision index or preset name, as the ``selection`` parameter).
        num_classes: classes in the data, for Build.
        build_kwargs: passed to :func:`~fpn_lab.models.build.build_model` (``pretrained``, ``neck``...).

    ``picker.preset`` is the chosen preset; after Build, ``picker.model`` is the built model
    (otherwise None). Display ``picker.widget`` in a notebook.
    """

    def __init__(self, selection, num_classes: int, **build_kwargs):
        import ipywidgets as w

        start = get_preset(selection).name
        options = []
        for name in list_models():
            p = get_preset(name)
            index = f"[{p.selection}] " if p.selection is not None else ""
            options.append((f"{index}{name}: {p.description} (COCO AP {p.coco_box_ap})", name))
        self.dropdown = w.Dropdown(options=options, value=start, description="model", layout=w.Layout(width="90%"))
        self.button = w.Button(description="Build", button_style="primary")
        self.output = w.Output()
        self.num_classes, self.build_kwargs, self.model = num_classes, build_kwargs, None
        self.button.on_click(self._on_build)
        self.dropdown.observe(self._on_change, names="value")
        self.widget = w.VBox([w.HBox([self.dropdown, self.button]), self.output])

    @property
    def preset(self):
        return get_preset(self.dropdown.value)

    def _on_change(self, change) -> None:
        self.model = None  # a model built for the previous choice no longer applies

    def _on_build(self, _button) -> None:
        from fpn_lab.models.build import build_model, count_parameters

        self.output.clear_output()
        with self.output:
            self.model = build_model(self.preset, num_classes=self.num_classes, **self.build_kwargs)
            print(f"built {self.preset.name}: {count_parameters(self.model) / 1e6:.2f} M parameters, "
                  f"neck {type(self.model.neck).__name__} ({', '.join(self.model.levels)})")
