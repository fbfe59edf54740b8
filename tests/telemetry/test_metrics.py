"""GET /metrics on the real API (real Triton behind it): Prometheus text a scraper can read."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import photo

pytestmark = pytest.mark.integration


def scrape(api: httpx.Client) -> dict[str, list]:
    answer = api.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(answer.text)}


def value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_requests_faces_triton_calls_and_the_gallery(api: httpx.Client) -> None:
    before = scrape(api)
    assert api.post("/detect", files={"image": ("t1.jpg", photo("t1.jpg").read_bytes())}).status_code == 200
    assert api.get("/identities/no-such-id").status_code == 404
    after = scrape(api)

    def grew(family: str, name: str, **labels: str) -> float:
        return value(after[family], name, **labels) - value(before.get(family, []), name, **labels)

    requests = "frtriton_http_requests"
    assert grew(requests, f"{requests}_total", method="POST", route="/detect", status="200") == 1
    # the route template, never the id: label values stay bounded
    assert grew(requests, f"{requests}_total", route="/identities/{identity_id}", status="404") == 1
    seconds = "frtriton_http_request_duration_seconds"
    assert grew(seconds, f"{seconds}_count", route="/detect") == 1
    assert grew("frtriton_faces_detected", "frtriton_faces_detected_total") == 6  # t1.jpg's six people
    triton = "frtriton_triton_request_duration_seconds"
    assert grew(triton, f"{triton}_count", model="face_detector", outcome="ok") >= 1
    assert value(after["frtriton_http_requests_in_flight"], "frtriton_http_requests_in_flight") >= 0
    total = api.get("/identities").json()["total"]
    assert value(after["frtriton_gallery_identities"], "frtriton_gallery_identities") == total
    assert "frtriton_gallery_faces" in after
