"""The Jupyter model picker (ipywidgets work without a front end)."""

from fpn_lab.viz.picker import ModelPicker


def test_picker_chooses_and_builds():
    picker = ModelPicker(4, num_classes=3)
    assert picker.preset.name == "yolox_s_pafpn_300e" and picker.model is None
    assert any("[0] vfnet_r50_fpn_ms2x" in label for label, _ in picker.dropdown.options)
    picker.dropdown.value = "yolox_tiny_pafpn_300e"
    picker.button.click()
    assert picker.model is not None and picker.model.preset.name == "yolox_tiny_pafpn_300e"
    picker.dropdown.value = "retinanet_r18_fpn_1x"
    assert picker.model is None and picker.preset.name == "retinanet_r18_fpn_1x"
