"""The base of every recipe section: unknown keys are errors (with a did-you-mean), defaults are validated like
given values, assignments are validated, and .inf/.nan are never a learning rate, epoch count or weight."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_default=True, validate_assignment=True, allow_inf_nan=False
    )
