"""Big JSON bodies: requests validated, responses rendered by pydantic-core.

Ninja's body parameter runs json.loads, then validates the dicts: for a 10,000-point batch
that took twice the time of `model_validate_json`, and the 10,000 dicts kept the garbage
collector busy. An endpoint that takes a big body calls `json_body(request, Model)` instead
and passes `openapi_extra=json_body_schema(Documented, ...)`, so the OpenAPI document still
describes the body, in each shape Model takes (TrainmonAPI in trainmon/api.py adds the
models' schemas to the components).

`json_response(model)` renders an answer as pydantic does (`model_dump_json`), for big
answers: ninja's renderer (json.dumps with its encoder, after validating the answer again)
took 3 ms for 2,000 points x 4 columns, pydantic 0.25 ms. Only for answers without dates:
ninja's encoder writes those its own way (milliseconds).

A body the fast path refuses is parsed again as ninja does (`python_body`): the errors, their
messages and locations are then exactly those ninja gave, for the handlers in
trainmon/api_errors.py to answer alike.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.openapi.schema import REF_TEMPLATE
from ninja.schema import NinjaGenerateJsonSchema
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from trainmon.api_errors import HTTP_BAD_REQUEST, JSON_CONTENT_TYPE

M = TypeVar("M", bound=BaseModel)

# The models json_body_schema documented: their schemas go into the OpenAPI components.
DOCUMENTED: dict[str, type[BaseModel]] = {}
# Where ninja's body parameter (named "payload" in the views) puts a body's errors.
BODY_LOC = ("body", "payload")


def json_body(request: HttpRequest, model: type[M]) -> M:
    """The request's JSON body validated as `model`, or the exception ninja would raise."""
    body = request.body  # RequestDataTooBig past DATA_UPLOAD_MAX_MEMORY_SIZE, as in ninja
    if body:
        try:
            return model.model_validate_json(body)
        except PydanticValidationError:
            pass
    return python_body(request, model)


def python_body(request: HttpRequest, model: type[M]) -> M:
    """As ninja's body parameter named "payload": json.loads, then `model.model_validate`.

    Invalid JSON is HttpError 400 "Cannot parse request body", an empty body a "Field
    required" error, invalid input a ValidationError whose locations start with BODY_LOC.
    """
    if not request.body:
        raise NinjaValidationError([{"type": "missing", "loc": BODY_LOC, "msg": "Field required"}])
    try:
        data = json.loads(request.body)
    except Exception as error:  # as ninja: UnicodeDecodeError too
        message = "Cannot parse request body"
        if settings.DEBUG:
            message += f" ({error})"
        raise HttpError(HTTP_BAD_REQUEST, message) from error
    try:
        return model.model_validate(data)
    except PydanticValidationError as error:
        errors = error.errors(include_url=False)
        raise NinjaValidationError([{**e, "loc": (*BODY_LOC, *e["loc"])} for e in errors]) from None


def json_body_schema(
    *models: type[BaseModel], examples: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An operation's `openapi_extra`: a required JSON request body, one of `models`, with
    named `examples` (OpenAPI Example objects) if given."""
    refs = []
    for model in models:
        DOCUMENTED[model.__name__] = model
        refs.append({"$ref": REF_TEMPLATE.format(model=model.__name__)})
    media: dict[str, Any] = {"schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}
    if examples:
        media["examples"] = examples
    return {"requestBody": {"content": {"application/json": media}, "required": True}}


def documented_schemas() -> dict[str, Any]:
    """The component schemas of the documented bodies and of the models they refer to."""
    schemas: dict[str, Any] = {}
    for name, model in DOCUMENTED.items():
        schema = model.model_json_schema(
            ref_template=REF_TEMPLATE, schema_generator=NinjaGenerateJsonSchema
        )
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return schemas


def json_response(body: BaseModel) -> HttpResponse:
    """`body` as a 200 JSON answer, rendered by pydantic-core (non-finite floats as null)."""
    return HttpResponse(body.model_dump_json(), content_type=JSON_CONTENT_TYPE)
