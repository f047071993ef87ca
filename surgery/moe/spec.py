"""mergekit-moe's config, typed: `base_model`, `experts` (each a `source_model` with positive and
negative prompts, optional `noise_scale` and `residual_scale`), `gate_mode`, `experts_per_token`,
`shared_experts`, `architecture`, `dtype`, plus our `seed` (random gates and noise). Errors are
located as `file: field.path: problem`, and the checks mergekit makes before building are made here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from surgery import spec_file
from surgery.errors import SpecError

PROMPTED = ("hidden", "hidden_avg", "cheap_embed")  # gate modes computed from the prompts


class Expert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_model: str
    positive_prompts: list[str] | None = Field(None, description="prompts this expert should receive")
    negative_prompts: list[str] | None = Field(None, description="prompts it should not; subtracted from its gate")
    noise_scale: float | None = Field(None, ge=0, description="std of Gaussian noise added to its MLP weights (seeded)")
    residual_scale: float | None = Field(None, description="factor on its down projection (its residual output)")


class MoESpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str
    experts: list[Expert] = Field(min_length=1)
    gate_mode: Literal["hidden", "hidden_avg", "cheap_embed", "random", "uniform_random"] = "hidden"
    experts_per_token: int = Field(2, ge=1)
    shared_experts: list[Expert] | None = None
    architecture: str | None = Field(None, description="mixtral or qwen (Qwen2-MoE); default mixtral, qwen with "
                                     "a shared expert")
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    seed: int = Field(0, description="seeds random gates and expert noise")

    def models(self) -> list[tuple[str, str]]:
        """Every model with its spec field: base, experts, shared experts."""
        out = [(self.base_model, "base_model")]
        out += [(e.source_model, f"experts.{i}.source_model") for i, e in enumerate(self.experts)]
        shared = enumerate(self.shared_experts or [])
        return out + [(e.source_model, f"shared_experts.{i}.source_model") for i, e in shared]


SHAPE = "with at least base_model and experts"


def load_moe_spec(path: str, allow_identical: bool = False) -> MoESpec:
    """Read and validate a MoE spec file; every error gives the field and its YAML line."""
    found = spec_file.read(path, "MoE spec", SHAPE)
    return parse_moe_spec(found.data, path, allow_identical, found.text)


def parse_moe_spec(data: dict, file: str = "<moe spec>", allow_identical: bool = False,
                   text: str | None = None) -> MoESpec:
    spec_file.mapping(data, file, f"a MoE spec is a YAML mapping {SHAPE}")
    spec = spec_file.validate(MoESpec, data, file, text)
    check(spec, file, allow_identical, text)
    return spec


def check(spec: MoESpec, file: str, allow_identical: bool = False, text: str | None = None) -> None:
    """mergekit's refusals, located: too few experts for `experts_per_token`, prompts missing where
    the gates are computed from them, every expert prompted alike, every expert the same model."""
    def refuse(field: str, problem: str) -> SpecError:
        return spec_file.located(file, field, problem, text)

    n = len(spec.experts)
    if spec.experts_per_token > n:
        raise refuse("experts_per_token", f"{spec.experts_per_token} is more than the {n} expert(s); each token is "
                     f"routed to experts_per_token of the experts, so give at most {n}")
    if spec.gate_mode in PROMPTED:
        for field, experts in (("experts", spec.experts), ("shared_experts", spec.shared_experts or [])):
            for i, e in enumerate(experts):
                if not e.positive_prompts:
                    raise refuse(f"{field}.{i}", f"gate_mode {spec.gate_mode} computes each router row from the "
                                 "expert's prompts; give it at least one positive_prompts entry")
        prompts = {(tuple(e.positive_prompts or ()), tuple(e.negative_prompts or ())) for e in spec.experts}
        if n > 1 and len(prompts) == 1:
            raise refuse("experts", "every expert has the same positive and negative prompts, so every router row "
                         "is the same and no token prefers any expert; give each expert prompts of what should be "
                         "routed to it (as mergekit-moe requires)")
    if n > 1 and len({e.source_model for e in spec.experts}) == 1 and not allow_identical:
        raise refuse("experts", f"every expert is {spec.experts[0].source_model!r}: the MoE would give the dense "
                     "model's outputs at a higher cost; use different experts, or pass --allow-identical-experts "
                     "if you will train it further")
