"""Request and response bodies of the points endpoints (metrics/api.py).

Inputs are strict: a step is a JSON integer, not "5" or 5.0 or true, and unknown keys are
errors, so a typo such as "acc" for "accuracy" is reported instead of silently dropped. The
job's bodies are jobs/api_schemas.py.

A batch comes in one of two shapes with the same fields and rules: rows (`MetricsIn`, a list
of `PointIn`) or columns (`MetricColumnsIn`, one list per field: `PointColumnsIn`). The
column shape validates as a few lists inside pydantic-core, with no object per point.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Self

from ninja import Schema
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    StrictFloat,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from jobs.api_schemas import JobOut
from metrics.points import KEY_NAME_RE, MAX_STORED_STEP

# Databases store epochs as signed 32-bit integers (steps: metrics.points.MAX_STORED_STEP).
MAX_EPOCH = 2**31 - 1

# JSON has no NaN: a diverged loss may be sent as one of these strings.
NON_FINITE_LOSSES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# Unix seconds up to the year 9999: what a database timestamp can hold.
MAX_TIMESTAMP = 253_402_300_799.0


# --- points -------------------------------------------------------------------------------------


def _number_or_non_finite(error_type: str, message: str) -> GetPydanticSchema:
    """A float, or one of NON_FINITE_LOSSES' strings (refused otherwise with `message`).

    From JSON (model_validate_json) the check is one union inside pydantic-core and the
    strings stay strings: a Python validator would run once per point and make pydantic build
    Python objects from the JSON first, which made model_validate_json no faster than
    json.loads. From Python (model_validate) the strings become floats in a validator, as
    before; that path gives the API's error messages (trainmon/api_bodies.py).
    """

    def to_float(value: object) -> object:
        if isinstance(value, str):
            try:
                return NON_FINITE_LOSSES[value]
            except KeyError:
                raise PydanticCustomError(error_type, message) from None
        return value

    def schema(source: object, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.json_or_python_schema(
            json_schema=core_schema.union_schema(
                [
                    core_schema.float_schema(strict=True),
                    core_schema.literal_schema(list(NON_FINITE_LOSSES)),
                ],
                custom_error_type=error_type,
                custom_error_message=message,
            ),
            python_schema=core_schema.no_info_before_validator_function(
                to_float, core_schema.float_schema(strict=True)
            ),
        )

    return GetPydanticSchema(schema)


def non_finite(value: float | str) -> float:
    """A Loss or NamedValue as a float: its string spellings as NaN or an infinity."""
    return NON_FINITE_LOSSES[value] if isinstance(value, str) else value


# From JSON, left as the strings "NaN", "Infinity", "-Infinity": read with non_finite().
Loss = Annotated[
    float | str,
    _number_or_non_finite(
        "loss_string",
        'A loss must be a number, or one of the strings "NaN", "Infinity", "-Infinity".',
    ),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "enum": list(NON_FINITE_LOSSES)},
            ],
            "description": 'A number; NaN or an infinity (as "NaN", "Infinity", "-Infinity") '
            "means the training diverged: the job fails at that step.",
        }
    ),
]
NamedValue = Annotated[
    float | str,
    _number_or_non_finite(
        "value_string",
        'A value must be a number, or one of the strings "NaN", "Infinity", "-Infinity".',
    ),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "enum": list(NON_FINITE_LOSSES)},
            ],
            "description": 'A number; NaN and the infinities (as "NaN", "Infinity", '
            '"-Infinity") are stored and drawn as gaps.',
        }
    ),
]
KeyName = Annotated[str, StringConstraints(pattern=KEY_NAME_RE)]
# A point's fields, for both shapes of a batch.
Step = Annotated[StrictInt, Field(ge=0, le=MAX_STORED_STEP)]
Epoch = Annotated[StrictInt, Field(ge=1, le=MAX_EPOCH)]
Accuracy = Annotated[StrictFloat, Field(ge=0, le=1, allow_inf_nan=False)]
LearningRate = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]
Timestamp = Annotated[StrictFloat, Field(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False)]


STEP_DESCRIPTION = "0-based or 1-based: both work."
EPOCH_DESCRIPTION = "1-based; derived from the step when left out and the job has a length."
TIMESTAMP_DESCRIPTION = "When the point was measured, unix seconds (default: when it arrives)."


class PointIn(BaseModel):
    # A plain pydantic model, not a ninja Schema: a batch holds up to 10,000 of them and
    # Schema's ORM-attribute support costs time on every one.
    model_config = ConfigDict(extra="forbid")

    step: Step = Field(description=STEP_DESCRIPTION)
    epoch: Epoch | None = Field(None, description=EPOCH_DESCRIPTION)
    loss: Loss | None = Field(
        None, description="The headline loss; a point without it writes only its metrics."
    )
    accuracy: Accuracy | None = None
    learning_rate: LearningRate | None = None
    metrics: dict[KeyName, NamedValue] | None = Field(
        None,
        description='Named series at this step, e.g. {"val_loss": 0.41, "train/grad_norm": '
        "1.7}. Names: letters, digits, _ - . / : and space, at most 250 characters.",
    )
    timestamp: Timestamp | None = Field(None, description=TIMESTAMP_DESCRIPTION)


POINTS_DESCRIPTION = (
    "At most TRAINMON_API_MAX_POINTS (10,000) points; steps unique. Stored all or nothing; "
    "steps already stored are skipped and counted as duplicates."
)


# The bodies of POST .../metrics/ as documented; the endpoint validates with
# metrics_body_for's model, which takes either and adds the size limit.
class MetricsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: list[PointIn] = Field(description=POINTS_DESCRIPTION)


class PointColumnsIn(BaseModel):
    """A batch as columns: element i of every list belongs to point i.

    The same fields and rules as PointIn; null stands for a field the point leaves out. A
    column left out is null throughout.
    """

    model_config = ConfigDict(extra="forbid")

    step: list[Step] = Field(description=f"One per point: the batch's length. {STEP_DESCRIPTION}")
    epoch: list[Epoch | None] | None = Field(None, description=EPOCH_DESCRIPTION)
    loss: list[Loss | None] | None = Field(
        None, description="The headline loss; null: the point writes only its metrics."
    )
    accuracy: list[Accuracy | None] | None = None
    learning_rate: list[LearningRate | None] | None = None
    metrics: dict[KeyName, list[NamedValue | None]] | None = Field(
        None,
        description='Named series, one list per name, e.g. {"val_loss": [null, 0.41]}; null: '
        "no value at that point. Names: letters, digits, _ - . / : and space, at most 250 "
        "characters.",
    )
    timestamp: list[Timestamp | None] | None = Field(None, description=TIMESTAMP_DESCRIPTION)


COLUMNS_DESCRIPTION = (
    "The points as columns, every list as long as `step`: the shape GET .../metrics/ answers "
    "in, and the fastest to send and to validate. The same limit and rules as `points`."
)


class MetricColumnsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: PointColumnsIn = Field(description=COLUMNS_DESCRIPTION)


class MetricsBody(BaseModel):
    """What the endpoint validates: a MetricsIn or a MetricColumnsIn, exactly one of them."""

    model_config = ConfigDict(extra="forbid")

    points: list[PointIn] | None = None
    columns: PointColumnsIn | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        if (self.points is None) == (self.columns is None):
            raise PydanticCustomError(
                "one_shape",
                'Send "points" (a list of points) or "columns" (a list per field): one of the two.',
            )
        return self


@functools.cache
def metrics_body_for(limit: int) -> type[MetricsBody]:
    """MetricsBody refusing more than `limit` points (error type "too_long" at ("points",)
    or ("columns", "step")).

    pydantic-core counts the points before validating them, so an oversized batch is refused
    as a whole; a Python validator would do the same but slow down model_validate_json. The
    limit is a setting (tests change it), hence a class per value. The other columns need no
    limit of their own: they must be as long as `step`, and the body size is bounded.
    """
    columns = create_model(
        "PointColumnsIn",
        __base__=PointColumnsIn,
        step=(list[Step], Field(max_length=limit)),
    )
    return create_model(
        "MetricsBody",
        __base__=MetricsBody,
        points=(list[PointIn] | None, Field(None, max_length=limit)),
        columns=(columns | None, None),
    )


class MetricsOut(Schema):
    created: int = Field(description="Headline points stored by this request.")
    duplicates: int = Field(description="Headline points at steps already stored: skipped.")
    named_created: int = Field(description="Named values stored by this request.")
    named_duplicates: int = Field(
        description="Named values at a (key, step) already stored: skipped."
    )
    discarded: int = Field(
        description="Points from the first non-finite loss on: not stored, the job failed."
    )
    job: JobOut


class SeriesOut(Schema):
    """Columns of the job's points after `after`, in step order."""

    steps: list[int]
    loss: list[float]
    accuracy: list[float | None]
    learning_rate: list[float | None]
    total: int = Field(description="Points stored after `after`.")
    downsampled: bool = Field(
        description="True when more than max_points were stored: the range was downsampled "
        "(each bucket keeps its lowest and highest loss and its last point)."
    )
    last_step: int | None = Field(description="Pass as `after` to get only newer points.")


class KeyOut(Schema):
    """One named series of the job, with its running statistics."""

    key: str
    count: int = Field(description="Points stored.")
    first_step: int | None
    last_step: int | None
    last: float | None = Field(description="The value at last_step; null when not finite.")
    min: float | None = Field(description="Over finite values.")
    max: float | None = Field(description="Over finite values.")


class KeysOut(Schema):
    keys: list[KeyOut] = Field(description="By name.")


class NamedSeriesOut(Schema):
    """Columns of one key's points after `after`, in step order."""

    steps: list[int]
    values: list[float | None] = Field(description="null where the value is NaN or infinite.")
    total: int = Field(description="Points stored after `after`.")
    downsampled: bool
    last_step: int | None = Field(description="Pass as `after` to get only newer points.")


class NamedSeriesSetOut(Schema):
    keys: dict[str, NamedSeriesOut] = Field(description="The asked keys the job has.")
