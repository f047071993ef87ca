"""The method contract: an element-wise method written as a typed function gets its parameter models,
required names, aliases, bounds and base use from its signature (and the planner checks them as for
any method); statistics stages are declared one way, each with the parameters that need it."""

from __future__ import annotations

from typing import Annotated

import pytest
import torch
from pydantic import Field

from surgery.errors import SpecError
from surgery.merge import plan as plan_module
from surgery.merge.methods import REGISTRY
from surgery.merge.methods.elementwise import Models, PerModel, elementwise
from surgery.merge.plan import plan_merge
from surgery.merge.spec import parse_spec


def blend(base: torch.Tensor, models: Models, weight: PerModel[Annotated[float, Field(ge=0, description="w")]],
          lambda_: Annotated[float, Field(gt=0, description="scale of the sum")] = 1.0,
          shift: PerModel[float] = 0.0) -> torch.Tensor:
    """base + lambda * sum_i w_i (m_i - base) + sum_i shift_i."""
    return base + lambda_ * sum(w * (m - base) for w, m in zip(weight, models)) + sum(shift)


BLEND = elementwise(blend, "blend", "a test method", work=2)


def test_the_signature_makes_the_parameter_models():
    assert (BLEND.name, BLEND.base, BLEND.required, BLEND.work) == ("blend", "required", ("weight",), 2)
    weight = BLEND.per_model.model_fields["weight"]
    assert weight.default is None and weight.description == "w"  # required: checked by the plan, per model
    assert set(BLEND.per_model.model_fields) == {"weight", "shift"}
    assert BLEND.shared.model_validate({"lambda": 2}).lambda_ == 2  # the YAML name of `lambda_`
    with pytest.raises(ValueError):
        BLEND.per_model.model_validate({"weight": -1})
    with pytest.raises(ValueError):
        BLEND.shared.model_validate({"lambda_x": 1})  # no unknown keys
    no_base = elementwise(lambda models: models[0], "first", "the first model")
    assert no_base.base == "unused" and no_base.shared.model_fields == {} == no_base.per_model.model_fields


def test_the_function_sees_values_per_model_and_global():
    base = torch.tensor([1.0, 2.0])
    models = [torch.tensor([2.0, 2.0]), torch.tensor([1.0, 4.0])]
    per_model = [BLEND.per_model.model_validate(p) for p in ({"weight": 0.5, "shift": 1}, {"weight": 2})]
    out = BLEND.merge_tensors(base, models, per_model, BLEND.shared.model_validate({"lambda": 3}))
    # base + 3 * (0.5 * [1, 0] + 2 * [0, 2]) + 1 = [1 + 1.5 + 1, 2 + 12 + 1]
    assert torch.equal(out, torch.tensor([3.5, 15.0]))


def test_the_planner_checks_a_function_method_as_any_other(work, monkeypatch):
    monkeypatch.setitem(REGISTRY, "blend", BLEND)  # the planner's registry: the dict it imported
    assert plan_module.REGISTRY is REGISTRY
    spec = {"merge_method": "blend", "base_model": "models/base", "parameters": {"lambda": 0},
            "models": [{"model": "models/math", "parameters": {"weight": 1}}]}
    with pytest.raises(SpecError, match=r"spec.yaml: parameters.lambda: must be in \(0, inf\) \(got 0\)"):
        plan_merge(parse_spec(spec), "spec.yaml", models_dir=work)
    spec["parameters"] = {"lambda": 0.5}
    del spec["models"][0]["parameters"]
    with pytest.raises(SpecError, match=r"models.0.parameters.weight: blend needs 'weight' for model 'models/math'"):
        plan_merge(parse_spec(spec), "spec.yaml", models_dir=work)


def stages(name: str, shared: dict, per_model: list[dict]) -> int:
    method = REGISTRY[name]
    return len(method.stages_for(method.shared.model_validate(shared),
                                 tuple(method.per_model.model_validate(p) for p in per_model)))


def test_a_stage_runs_only_where_the_parameters_need_it():
    dense, sparse = [{"weight": 1, "density": 1.0}] * 2, [{"weight": 1, "density": 1.0}, {"weight": 1, "density": 0.5}]
    assert stages("ties", {}, dense) == 0                       # nothing trimmed: no cut-off to find
    assert stages("ties", {}, sparse) == 2                      # the two histogram passes of the cut-off
    assert stages("ties", {"rescale": True}, sparse) == 3       # and the L1 norms of the rescale
    assert stages("dare_linear", {}, sparse) == 1               # random drop: rescale (on by default) only
    assert stages("dare_linear", {"rescale": False}, sparse) == 0
    assert stages("task_arithmetic", {"rescale": True}, [{"weight": 1}]) == 0  # a compatibility-only option
    assert stages("model_stock", {}, [{}, {}]) == 1 and stages("model_stock", {"filter_wise": True}, [{}, {}]) == 0
    assert stages("slerp", {"t": 0.5}, [{}]) == 1 and stages("linear", {}, [{"weight": 1}]) == 0
