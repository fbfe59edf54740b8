"""GET /metrics on the real API (real Triton behind it): Prometheus text a scraper can read."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import one_slot_api_with_a_silent_triton, photo

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


def test_requests_the_admission_queue_refuses_are_counted_under_their_route_template(tmp_path: Path) -> None:
    """The queue answers before the router: its 503s still carry the route they were sent to."""
    upload = {"image": ("t1.jpg", photo("t1.jpg").read_bytes())}
    with (
        one_slot_api_with_a_silent_triton(tmp_path / "api.log") as (api, silent),
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        api.client(timeout=300) as client,
    ):
        stuck = pool.submit(client.post, "/embedding", files=upload)
        while value(scrape(client)["frtriton_admission_active"], "frtriton_admission_active") < 1:
            assert not stuck.done(), stuck.result().text
        before = scrape(client)
        refused = [
            client.post("/detect", files=upload),
            client.post("/face-similarity", files={"image_a": upload["image"], "image_b": upload["image"]}),
            client.get("/identities/no-such-id"),
            client.post("/identities/no-such-id/faces", files=upload),
            client.post("/no-such-route"),
        ]
        assert [r.status_code for r in refused] == [503] * 5, [r.text for r in refused]
        after = scrape(client)
        silent.close()  # the stuck request fails (503), and the service moves on
        assert stuck.result().status_code == 503

    requests = "frtriton_http_requests"

    def grew(**labels: str) -> float:
        name = f"{requests}_total"
        return value(after[requests], name, **labels) - value(before.get(requests, []), name, **labels)

    assert grew(method="POST", route="/detect", status="503") == 1
    assert grew(method="POST", route="/face-similarity", status="503") == 1
    # the template, never the raw path: label values stay bounded
    assert grew(method="GET", route="/identities/{identity_id}", status="503") == 1
    assert grew(method="POST", route="/identities/{identity_id}/faces", status="503") == 1
    assert grew(route="/identities/no-such-id") == 0
    assert grew(method="POST", route="unmatched", status="503") == 1  # only what no route would take
    shed = after["frtriton_admission_shed"]
    assert value(shed, "frtriton_admission_shed_total", reason="queue_full") - value(
        before["frtriton_admission_shed"], "frtriton_admission_shed_total", reason="queue_full") == 5
