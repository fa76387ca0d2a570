"""The interactive model picker for Jupyter: a dropdown of presets, a Build button and a status line."""

from __future__ import annotations

import html

from fpn_lab.models.catalogue import selection_order
from fpn_lab.models.registry import get_preset


class ModelPicker:
    """A dropdown with every preset (its description, neck and mmdet COCO AP) and a Build button.

    Args:
        selection: the initial choice (IceVision index or preset name, as the ``selection`` parameter).
        num_classes: classes in the data, for Build.
        build_kwargs: passed to :func:`~fpn_lab.models.build.build_model` (``pretrained``, ``neck``...).

    The dropdown lists IceVision's getting-started presets first (0, 1, 4), then the rest
    alphabetically. ``picker.preset`` is the selected preset. ``picker.model`` is the model
    built for it, or None when the selected preset has not been built (the model built for an
    earlier choice is kept in ``picker.built_model`` and comes back if that preset is selected
    again). ``picker.status`` (an HTML line) says what is built and what is selected; while
    Build runs it says ``building <preset>…`` and the button and dropdown are disabled; a failed
    build shows the error there (and re-enables them). Display ``picker.widget`` in a notebook.
    """

    def __init__(self, selection, num_classes: int, **build_kwargs):
        import ipywidgets as w

        start = get_preset(selection).name
        options = []
        for name in selection_order():
            p = get_preset(name)
            index = f"[{p.selection}] " if p.selection is not None else ""
            options.append((f"{index}{name}: {p.description} (COCO AP {p.coco_box_ap})", name))
        self.dropdown = w.Dropdown(options=options, value=start, description="model", layout=w.Layout(width="90%"))
        self.button = w.Button(description="Build", button_style="primary")
        self.status = w.HTML()
        self.output = w.Output()  # what the build prints or warns (weights download, load report)
        self.num_classes, self.build_kwargs = num_classes, build_kwargs
        self.built_model, self.built_name, self._built_line = None, None, ""
        self.button.on_click(self._on_build)
        self.dropdown.observe(self._on_change, names="value")
        self.widget = w.VBox([w.HBox([self.dropdown, self.button]), self.status, self.output])
        self._show()

    @property
    def preset(self):
        return get_preset(self.dropdown.value)

    @property
    def model(self):
        """The built model if it is for the selected preset, else None."""
        return self.built_model if self.built_name == self.dropdown.value else None

    def _show(self, line: str | None = None) -> None:
        """Set the status: ``line`` if given, else the built model (if any) and the selection."""
        if line is None:
            selected, built = html.escape(self.dropdown.value), self.built_name
            todo = f"selected {selected}: not built (press Build, or the notebook's setup cell builds it)"
            if built is None:
                line = todo
            elif built == self.dropdown.value:
                line = self._built_line
            else:
                line = f"{self._built_line}<br>{todo}; select {html.escape(built)} again to use the built model"
        self.status.value = line

    def adopt(self, model) -> None:
        """Take ``model``, built elsewhere (the notebook's model cell), as the built model of its
        preset, so that the status line says it is built."""
        from fpn_lab.models.build import count_parameters

        self.built_model, self.built_name = model, model.preset.name
        self._built_line = (f"built {html.escape(model.preset.name)}: {count_parameters(model) / 1e6:.2f} M "
                            f"parameters, neck {html.escape(type(model.neck).__name__)} ({', '.join(model.levels)})")
        self._show()

    def _on_change(self, change) -> None:
        self._show()

    def _on_build(self, _button) -> None:
        from fpn_lab.models.build import build_model

        name = self.dropdown.value
        self.button.disabled = self.dropdown.disabled = True
        self._show(f"building {html.escape(name)}…")
        self.output.clear_output()
        try:
            with self.output:
                model = build_model(name, num_classes=self.num_classes, **self.build_kwargs)
        except Exception as e:  # shown in the widget: an exception in a click handler only reaches the log
            error = (f"<b>building {html.escape(name)} failed</b>: "
                     f"{html.escape(type(e).__name__)}: {html.escape(str(e))}")
            self._show(error + (f"<br>{self._built_line}" if self.built_name else ""))
            return
        finally:
            self.button.disabled = self.dropdown.disabled = False
        self.adopt(model)
