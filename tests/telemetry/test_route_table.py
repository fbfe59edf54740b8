"""RouteTable: the route template a request falls under when the router never saw it.

Built from small real FastAPI apps (an included router, a path parameter, a route outside the
schema); no server.
"""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI

from app import create_app
from telemetry.metrics import UNMATCHED_ROUTE, RouteTable


def small_app() -> FastAPI:
    router = APIRouter()

    @router.get("/people")
    def people() -> list:
        return []

    @router.get("/people/search")  # registered before the template that would also match it
    def search() -> list:
        return []

    @router.get("/people/{person_id}")
    def person(person_id: str) -> dict:
        return {}

    @router.post("/people/{person_id}/faces")
    def add_face(person_id: str) -> dict:
        return {}

    app = FastAPI()
    app.include_router(router)
    return app


@pytest.mark.parametrize(
    ("method", "path", "label"),
    [
        ("GET", "/people", "/people"),
        ("GET", "/people/ada", "/people/{person_id}"),
        ("POST", "/people/ada/faces", "/people/{person_id}/faces"),
        ("GET", "/people/search", "/people/search"),  # the first route that matches, as the router picks
        ("HEAD", "/people/ada", "/people/{person_id}"),  # HEAD wherever GET is
        ("DELETE", "/people/ada", "/people/{person_id}"),  # path matches, method not: the router's 405 route
        ("GET", "/docs", "/docs"),  # outside the schema, from the app's own routes
        ("GET", "/people/ada/faces/1", UNMATCHED_ROUTE),
        ("GET", "/nothing-here", UNMATCHED_ROUTE),
        ("GET", "/people/", UNMATCHED_ROUTE),
    ],
)
def test_a_request_is_labelled_by_the_template_of_the_route_that_would_take_it(
    method: str, path: str, label: str
) -> None:
    assert RouteTable.of(small_app()).label(method, path) == label


def test_included_routers_of_the_service_are_resolved_to_their_templates() -> None:
    table = RouteTable.of(create_app())
    assert table.label("POST", "/detect") == "/detect"
    assert table.label("POST", "/face-similarity") == "/face-similarity"
    assert table.label("GET", "/identities/3f2a") == "/identities/{identity_id}"
    assert table.label("POST", "/identities/3f2a/merge") == "/identities/{identity_id}/merge"
    assert table.label("POST", "/no-such-route") == UNMATCHED_ROUTE


def test_an_app_without_a_schema_still_labels_its_own_routes() -> None:
    class Broken(FastAPI):
        def openapi(self) -> dict:
            raise ValueError("a schema that cannot be built")

    app = Broken()

    @app.get("/items/{item_id}", include_in_schema=False)
    def item(item_id: str) -> dict:
        return {}

    assert RouteTable.of(app).label("GET", "/items/7") == "/items/{item_id}"
