"""JSON request bodies for the routes that take images: the form's fields as JSON members, images in base64.

A route that takes images declares them as multipart `File` fields (its other fields as `Form`
fields), as FastAPI routes do. On a router made with `route_class=JsonOrFormRoute` the same
route also accepts `Content-Type: application/json` with the same field names:

    {"image": "<base64>"}                                    /detect, /embedding, /liveness
    {"image_a": "...", "image_b": "..."}                     /face-similarity
    {"image": "...", "top_k": 3, "threshold": 0.4}           /identify
    {"name": "...", "images": ["...", "..."], "metadata": {...}}   /identities
    {"name": "...", "embeddings": [[512 numbers], ...]}     /identities (from embeddings)
    {"image": "...", "threshold": 0.4}                       /identities/{id}/verify

An image is a base64 string (standard or URL-safe alphabet; line breaks and missing padding are
tolerated) or a `data:image/...;base64,` URL. A field the form carries as JSON text (`metadata`,
`embeddings`: marked with `JSON_TEXT`, its value's schema as `contentSchema`, an object by
default) may be the JSON value itself. Query parameters stay query parameters.

How: the content type is looked at in one place, `JsonOrFormRoute`'s request handler. A JSON
body becomes the form the route already reads (a FormData with each image decoded into an
UploadFile named after its field), so everything after that is the multipart path's own:
FastAPI's validation and its 422s (a missing or misnamed field), the limits (MAX_UPLOAD_BYTES on
the decoded bytes; the body limit of `BodySizeLimit` on the JSON as sent), the answers.
What only JSON can get wrong is answered after the route's own dependencies (the API key check
comes first, as for a form): a body that is not JSON (422, as FastAPI's JSON routes say it), not
a JSON object (422), or an image that is not base64 (400 naming the field: `image_b: not valid
base64`). The OpenAPI schema gets an `application/json` request body beside the multipart one
(which stays Swagger UI's default), derived from the same fields.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.message
import enum
import io
import json
import types
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import Depends, HTTPException, Request, Response, params
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import create_model
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.requests import ClientDisconnect

# `json_schema_extra` of a Form field that holds JSON text: a JSON body may carry the value itself.
JSON_TEXT: dict[str, Any] = {"contentMediaType": "application/json"}
JSON_MEDIA_TYPE = "application/json"
IMAGE_DESCRIPTION = "base64, or a data:image/...;base64, URL"
GENERIC_MEDIA_TYPE = "application/octet-stream"
BODY_ERROR = "frtriton.json_body_error"  # request.scope key: what went wrong reading the JSON body
_URL_SAFE = str.maketrans("-_", "+/")


class Kind(enum.Enum):
    IMAGE = "one image"
    IMAGES = "a list of images"
    JSON_TEXT = "JSON text, or the JSON value itself"
    VALUE = "a value, validated by the route as a form value is"
    VALUES = "a list of values"


def _is_list(annotation: Any) -> bool:
    """A list type, or an optional one (`list[UploadFile] | None`: images a route may do without)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) in (list, tuple, set, frozenset, Sequence)


def form_fields(dependant: Dependant) -> dict[str, Kind]:
    """Each form field of a route (by its name in the form) and how a JSON member becomes it; {} without images."""
    fields: dict[str, Kind] = {}
    for field in dependant.body_params:
        info = field.field_info
        if isinstance(info, params.File):
            kind = Kind.IMAGES if _is_list(info.annotation) else Kind.IMAGE
        elif isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("contentMediaType") == (
            JSON_MEDIA_TYPE
        ):
            kind = Kind.JSON_TEXT
        else:
            kind = Kind.VALUES if _is_list(info.annotation) else Kind.VALUE
        fields[field.alias] = kind
    if not any(kind in (Kind.IMAGE, Kind.IMAGES) for kind in fields.values()):
        return {}
    return fields


def is_json(content_type: str | None) -> bool:
    """application/json or any application/*+json, with or without parameters (FastAPI's own rule)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


# --------------------------------------------------------------------------- JSON -> form
class BadBody(Exception):
    """What is wrong with a JSON body: raised by the route's dependencies, after the key check."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def decode_base64(text: str, label: str) -> tuple[bytes, str]:
    """The bytes of one base64 image (plain or a data: URL) and its declared media type.

    Raises BadBody(400) naming `label` when it is not base64.
    """
    media_type = GENERIC_MEDIA_TYPE
    if text[:5].lower() == "data:":
        header, comma, text = text[5:].partition(",")
        media, *options = header.split(";")
        if not comma or "base64" not in (o.strip().lower() for o in options):
            raise BadBody(HTTPException(400, f"{label}: not a base64 data URL (data:image/jpeg;base64,...)"))
        media_type = media.strip() or media_type
    compact = "".join(text.split())  # line breaks of MIME-style base64
    if "-" in compact or "_" in compact:
        compact = compact.translate(_URL_SAFE)
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True), media_type
    except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
        raise BadBody(HTTPException(400, f"{label}: not valid base64")) from None


def _upload(text: str, label: str) -> UploadFile:
    data, media_type = decode_base64(text, label)
    return UploadFile(io.BytesIO(data), size=len(data), filename=label, headers=Headers({"content-type": media_type}))


def _invalid(kind: str, message: str, loc: tuple, **ctx: Any) -> BadBody:
    error: dict[str, Any] = {"type": kind, "loc": loc, "msg": message, "input": {}}
    if ctx:
        error["ctx"] = ctx
    return BadBody(RequestValidationError([error]))


def form_from_json(body: bytes, fields: dict[str, Kind]) -> FormData:
    """The form a JSON body stands for: images decoded into UploadFiles, the rest as the form would carry it.

    Values that do not fit (an image that is a number, a list for a single value) are passed on as
    they are, so the route's validation answers 422 for them as it does for a form. Unknown members
    are left out (a form's unknown fields are ignored); null is an absent member. Raises BadBody.
    """
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        is_json_error = isinstance(error, json.JSONDecodeError)
        position, reason = (error.pos, error.msg) if is_json_error else (error.start, str(error))
        raise _invalid("json_invalid", "JSON decode error", ("body", position), error=reason) from None
    if not isinstance(value, dict):
        raise _invalid("dict_type", "Input should be a valid dictionary: send a JSON object", ("body",))
    items: list[tuple[str, Any]] = []
    for name, kind in fields.items():
        member = value.get(name)
        if member is None:
            continue
        if kind is Kind.IMAGE and isinstance(member, str):
            items.append((name, _upload(member, name)))
        elif kind is Kind.IMAGES and isinstance(member, list):
            items += [
                (name, _upload(item, f"{name}[{index}]") if isinstance(item, str) else item)
                for index, item in enumerate(member)
            ]
        elif kind is Kind.IMAGES and isinstance(member, str):  # one image, as one form part would be
            items.append((name, _upload(member, f"{name}[0]")))
        elif kind is Kind.JSON_TEXT and not isinstance(member, str):
            items.append((name, json.dumps(member)))
        elif kind is Kind.VALUES and isinstance(member, list):  # a repeated form field
            items += [(name, item) for item in member]
        else:
            items.append((name, member))
    return FormData(items)


# --------------------------------------------------------------------------- the route class
class _FormRequest(Request):
    """A request whose form is already known (made from its JSON body)."""

    def __init__(self, request: Request, form: FormData) -> None:
        super().__init__(request.scope, request.receive)
        self._prepared = form

    async def form(self, **_: Any) -> FormData:  # type: ignore[override]
        return self._prepared


async def report_body_errors(request: Request) -> None:
    """A route dependency (after the router's, so after the key check): what the JSON body got wrong."""
    if (error := request.scope.get(BODY_ERROR)) is not None:
        raise error.error


REPORT_BODY_ERRORS = Depends(report_body_errors)
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class JsonOrFormRoute(APIRoute):
    """A route whose images come as a multipart form or as a JSON body (see the module docstring).

    Routes without a File field are plain APIRoutes (the added dependency does nothing for them).
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["dependencies"] = [*(kwargs.get("dependencies") or []), REPORT_BODY_ERRORS]
        super().__init__(path, endpoint, **kwargs)
        if fields := form_fields(self.dependant):
            documented = {"requestBody": {"content": {JSON_MEDIA_TYPE: {"schema": json_body_schema(self, fields)}}}}
            self.openapi_extra = merged(documented, self.openapi_extra or {})

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        fields = form_fields(self.dependant)
        if not fields:
            return handler

        async def handle(request: Request) -> Response:
            if not is_json(request.headers.get("content-type")):
                return await handler(request)
            try:
                body = await request.body()
            except ClientDisconnect:
                raise HTTPException(400, "the request body was cut off") from None
            try:
                form = await asyncio.to_thread(form_from_json, body, fields)
            except BadBody as error:
                request.scope[BODY_ERROR] = error
                form = FormData()
            del body
            return await handler(_FormRequest(request, form))

        return handle


# --------------------------------------------------------------------------- OpenAPI
def json_body_schema(route: APIRoute, fields: dict[str, Kind]) -> dict[str, Any]:
    """The JSON schema of the route's JSON body: its form's fields, images as base64 strings."""
    model = create_model(  # the same field infos (constraints, defaults, descriptions) as the form
        f"{route.unique_id}_json",
        **{f.alias: (f.field_info.annotation, f.field_info) for f in route.dependant.body_params},
    )
    schema = model.model_json_schema()
    schema.pop("title", None)
    properties = schema["properties"]
    for name, kind in fields.items():
        described = {k: properties[name][k] for k in ("title", "description") if k in properties[name]}
        note = f"{described['description']}: " if "description" in described else ""
        if kind is Kind.IMAGE:
            properties[name] = {**described, "type": "string", "description": note + IMAGE_DESCRIPTION}
        elif kind is Kind.IMAGES:
            properties[name] = {
                **described,
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": f"{note}each image {IMAGE_DESCRIPTION}",
            }
        elif kind is Kind.JSON_TEXT:  # the JSON value itself (an object unless the field says: contentSchema)
            value = field_extra(route, name).get("contentSchema", {"type": "object"})
            properties[name] = {**described, "anyOf": [value, {"type": "string", **JSON_TEXT}, {"type": "null"}]}
    return schema


def field_extra(route: APIRoute, alias: str) -> dict[str, Any]:
    """The `json_schema_extra` of one of the route's form fields ({} without one)."""
    field = next(f for f in route.dependant.body_params if f.alias == alias)
    extra = field.field_info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, nested dicts merged key by key (`extra` wins)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
