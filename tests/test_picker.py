"""The Jupyter model picker (ipywidgets work without a front end)."""

from fpn_lab.errors import ModelError
from fpn_lab.models.registry import list_models, selections
from fpn_lab.viz.picker import ModelPicker

CHEAPEST = "yolox_tiny_pafpn_300e"


def test_dropdown_lists_icevision_presets_first_then_the_rest_alphabetically():
    picker = ModelPicker(4, num_classes=3)
    names = [value for _, value in picker.dropdown.options]
    first = list(selections().values())
    assert names == first + sorted(set(list_models()) - set(first))
    assert picker.dropdown.options[0][0].startswith("[0] vfnet_r50_fpn_ms2x")
    assert picker.preset.name == "yolox_s_pafpn_300e" and picker.model is None
    assert "selected yolox_s_pafpn_300e: not built" in picker.status.value


def test_picker_builds_and_keeps_the_built_line_when_the_selection_changes():
    picker = ModelPicker(4, num_classes=2)
    picker.dropdown.value = CHEAPEST
    picker.button.click()
    assert picker.model is not None and picker.model.preset.name == CHEAPEST
    assert picker.status.value.startswith(f"built {CHEAPEST}: ") and not picker.button.disabled
    picker.dropdown.value = "retinanet_r18_fpn_1x"
    assert picker.model is None and picker.preset.name == "retinanet_r18_fpn_1x"
    assert picker.status.value.startswith(f"built {CHEAPEST}: ")  # still there, and the selection is named
    assert "selected retinanet_r18_fpn_1x: not built" in picker.status.value
    picker.dropdown.value = CHEAPEST  # back to the built preset: its model applies again
    assert picker.model is picker.built_model and "not built" not in picker.status.value


def test_build_shows_building_disables_the_button_and_reports_errors(monkeypatch):
    import fpn_lab.models.build as build

    picker = ModelPicker(CHEAPEST, num_classes=3, pretrained=True)
    during = []

    def failing_build(name, *, num_classes, **kwargs):
        during.append((name, num_classes, kwargs, picker.button.disabled, picker.dropdown.disabled,
                       picker.status.value))
        raise ModelError("weights for yolox_tiny could not be downloaded <offline>")

    monkeypatch.setattr(build, "build_model", failing_build)
    picker.button.click()
    assert during == [(CHEAPEST, 3, {"pretrained": True}, True, True, f"building {CHEAPEST}…")]
    assert not picker.button.disabled and not picker.dropdown.disabled and picker.model is None
    assert f"building {CHEAPEST} failed" in picker.status.value
    assert "ModelError: weights for yolox_tiny could not be downloaded &lt;offline&gt;" in picker.status.value


def test_a_model_built_by_a_later_cell_is_adopted_by_the_status_line():
    """The status stayed "selected X: not built" after the notebook's model cell built X."""
    from fpn_lab.models.build import build_model

    picker = ModelPicker(CHEAPEST, num_classes=2)
    assert "not built" in picker.status.value
    picker.adopt(build_model(CHEAPEST, num_classes=2))
    assert picker.model is picker.built_model and picker.status.value.startswith(f"built {CHEAPEST}: ")
