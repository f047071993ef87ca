"""The designer's form as data: texts to the spec dict, an error to the field that shows it, rows
dropped, a gradient at each layer, and the progress line."""

from __future__ import annotations

import pytest

from surgery.merge.methods import REGISTRY
from surgery.merge.methods.method import is_compat
from tui.spec_form import (
    choices,
    drop_model,
    layer_values,
    owner,
    parse_value,
    per_model_fields,
    shared_fields,
    spec_data,
)
from tui.throughput import Throughput


@pytest.mark.parametrize("text, value", [("0.5", 0.5), ("1", 1), ("true", True), ("", None), ("  ", None),
                                         ("0, 0.5, 1", [0, 0.5, 1]), ("[0.2, 1]", [0.2, 1]), ("sum", "sum"),
                                         ("[1,", "[1,")])
def test_a_text_means_what_it_means_in_yaml(text, value):
    assert parse_value(text) == value


def test_empty_fields_are_left_out():
    texts = {"base_model": "base", "models.0.model": "a", "models.0.parameters.weight": "0.5",
             "models.0.parameters.density": "", "models.1.model": " b ", "parameters.lambda": "",
             "dtype": "float32", "seed": ""}
    assert spec_data("ties", texts, 2) == {
        "merge_method": "ties", "base_model": "base",
        "models": [{"model": "a", "parameters": {"weight": 0.5}}, {"model": "b"}], "dtype": "float32"}


def test_an_error_goes_to_the_closest_enclosing_field():
    slots = ["base_model", "models", "models.0", "models.1", "parameters.lambda"]
    assert owner("models.1.parameters.density.2", slots) == "models.1"
    assert owner("models", slots) == "models"
    assert owner("models.10.model", slots) == "models"  # not models.1: dot boundaries
    assert owner("slices.0", slots) == ""


def test_dropping_a_row_moves_the_later_rows_up():
    texts = {"base_model": "b", "models.0.model": "x", "models.1.model": "y", "models.1.parameters.weight": "2",
             "models.2.model": "z"}
    assert drop_model(texts, 1) == {"base_model": "b", "models.0.model": "x", "models.1.model": "z"}


def test_a_gradient_at_each_layer():
    """Five layers at t = 0, 1/4, 1/2, 3/4, 1 over [0, 1, 0.5]: 0, 0.5, 1, 0.75, 0.5."""
    assert layer_values([0, 1, 0.5], 5) == [0, 0.5, 1, 0.75, 0.5]
    assert layer_values(0.3, 2) == [0.3, 0.3]


def test_the_progress_line():
    now = [100.0]
    meter = Throughput(4096, 3, clock=lambda: now[0])
    meter.add("a", 1024)
    meter.add("a", 1024)
    meter.add("b", 0)
    now[0] = 102.0
    assert meter.line() == "tensor 2/3  1.0 KiB/s  2s left"


def test_choices_of_true_false_and_one_of_parameters():
    """From the method's typed parameters: bools and Literals get their values, numbers none."""
    fields = shared_fields(REGISTRY["ties"])
    assert choices(fields["normalize"]) == ("true", "false")
    assert choices(fields["consensus"]) == ("sum", "count")
    assert choices(fields["lambda"]) is None


def test_compatibility_options_are_not_in_the_forms():
    """Parameters kept for mergekit compatibility only (no effect here) are validated in a spec but
    never offered: ties' int8_mask, task_arithmetic's rescale; where `rescale` works it is offered."""
    hidden = 0
    for method in REGISTRY.values():
        for key, f in {**method.shared.model_fields, **method.per_model.model_fields}.items():
            if is_compat(f):
                hidden += 1
                assert key not in shared_fields(method) and key not in per_model_fields(method)
    assert hidden == 9  # int8_mask of the eight task-vector methods, task_arithmetic's rescale
    assert "int8_mask" in REGISTRY["ties"].shared.model_fields and "int8_mask" not in shared_fields(REGISTRY["ties"])
    assert "rescale" in shared_fields(REGISTRY["ties"]) and "rescale" not in shared_fields(REGISTRY["task_arithmetic"])
