"""The demo page at /ui, driven in a real headless Chromium against the real API and Triton.

Playwright (requirements-dev.txt) drives the system's Chromium (Debian: `apt-get install
chromium`), not a browser Playwright downloads; without one the browser tests skip.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ANTISPOOF_DIR, ApiProcess, TritonProcess, photo

pytestmark = pytest.mark.integration

VIEWPORT = {"width": 1280, "height": 900}
ALIGNED_SIZE = 112
ANSWER_TIMEOUT_MS = 60_000  # a first call may wait for Triton to warm up on two shared cores
# A rendered page of text and photos varies far more than this; a blank or failed page does not.
MIN_PAGE_STD = 20.0
MIN_FACE_STD = 15.0
CROP_MARGIN = 0.6  # enrollment photo: the face plus this fraction of its size on each side
BADGE = re.compile(r"^(live|spoof) [01]\.\d\d$")  # "live 0.98", "spoof 0.12"


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no system Chromium: install it (Debian/Ubuntu: apt-get install -y chromium)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="install requirements-dev.txt (playwright)")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    yield page
    context.close()


def screenshot_array(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))


def region(shot: np.ndarray, page, selector: str) -> np.ndarray:
    box = page.locator(selector).bounding_box()
    x, y, w, h = (int(round(box[k])) for k in ("x", "y", "width", "height"))
    return shot[y : y + h, x : x + w]


def natural_width(page, selector: str) -> int:
    return page.eval_on_selector(selector, "img => img.complete ? img.naturalWidth : 0")


# --------------------------------------------------------------------------- served files
def test_ui_page_and_its_scripts_are_served(api: httpx.Client) -> None:
    page = api.get("/ui", follow_redirects=True)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="compare-form"' in page.text and 'id="api-key"' in page.text
    script = api.get("/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "include_aligned=true" in script.text and "include_annotated=true" in script.text
    assert "liveness=true" in script.text and '"antispoof"' in script.text
    assert api.get("/ui/style.css").status_code == 200


# --------------------------------------------------------------------------- in the browser
def test_comparing_two_photos_shows_both_aligned_faces_and_the_decision(api: httpx.Client, page) -> None:
    tom = str(photo("Tom_Hanks_54745.png"))
    page.goto(f"{api.base_url}/ui")
    page.set_input_files("#photo-a", tom)
    page.set_input_files("#photo-b", tom)
    page.click("#compare")
    page.wait_for_selector("#compare-result:not([hidden])")

    assert page.is_hidden("#compare-error")
    assert float(page.text_content("#similarity")) > 0.99
    assert page.text_content("#decision") == "same person"
    for selector in ("#aligned-a", "#aligned-b"):
        assert natural_width(page, selector) == ALIGNED_SIZE

    shot = screenshot_array(page)
    assert shot.shape == (VIEWPORT["height"], VIEWPORT["width"], 3)
    assert shot.std() > MIN_PAGE_STD, "the screenshot is blank"
    face = region(shot, page, "#aligned-a")
    assert face.size and face.std() > MIN_FACE_STD, "the aligned face is not on screen"


def test_a_photo_without_a_face_shows_the_apis_reason(api: httpx.Client, page) -> None:
    page.goto(f"{api.base_url}/ui")
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (90, 120, 160)).save(buffer, "PNG")
    plain = {"name": "plain.png", "mimeType": "image/png", "buffer": buffer.getvalue()}
    page.set_input_files("#photo-a", plain)
    page.set_input_files("#photo-b", str(photo("Tom_Hanks_54745.png")))
    page.click("#compare")
    page.wait_for_selector("#compare-error:not([hidden])")
    assert "no face was detected in image_a" in page.text_content("#compare-error")
    assert page.is_hidden("#compare-result")


def test_detect_panel_shows_the_drawn_photo_and_the_face_count_from_one_call(api: httpx.Client, page) -> None:
    page.goto(f"{api.base_url}/ui")
    posted: list[str] = []
    page.on("request", lambda request: posted.append(request.url) if request.method == "POST" else None)
    page.set_input_files("#detect-photo", str(photo("t1.jpg")))
    page.click("#detect")
    page.wait_for_selector("#detect-result:not([hidden])")
    assert natural_width(page, "#detect-image") == 1280
    assert page.text_content("#detect-count").startswith("6 face(s)")
    # the drawing and the numbers come in one answer: the models run once per click
    assert [url.split("?")[0].rsplit("/", 1)[1] for url in posted] == ["detect"]


@pytest.fixture()
def keyed_api(triton: TritonProcess, tmp_path: Path) -> Iterator[ApiProcess]:
    """A server of its own (an empty gallery that no other test shares) with the key it generated."""
    server = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(tmp_path / "g.db")}, tmp_path / "api.log")
    yield server.start()
    server.stop()


def face_crop(url: str, folder: Path) -> Path:
    """t1.jpg cut down to its best-scoring face with some context: a photo of one person to enroll."""
    source = photo("t1.jpg")
    face = httpx.post(f"{url}/detect", files={"image": source.read_bytes()}, timeout=60).json()["faces"][0]
    x1, y1, x2, y2 = face["bbox"]
    dx, dy = CROP_MARGIN * (x2 - x1), CROP_MARGIN * (y2 - y1)
    path = folder / "enroll.png"
    Image.open(source).crop((int(x1 - dx), int(y1 - dy), int(x2 + dx), int(y2 + dy))).save(path)
    return path


def test_identify_panel_names_a_person_enrolled_with_the_api_key(
    keyed_api: ApiProcess, page, tmp_path: Path
) -> None:
    enroll_photo = face_crop(keyed_api.url, tmp_path)
    page.goto(f"{keyed_api.url}/ui")
    page.set_input_files("#identify-photo", str(photo("t1.jpg")))
    page.click("#identify")  # no key yet: the API's 401 says where the key is, the page shows it
    page.wait_for_selector("#identify-error:not([hidden])")
    shown = page.text_content("#identify-error")
    assert f"missing X-API-Key header: the key is in {keyed_api.key_file.resolve()}" in shown
    assert "enter the API key at the top of the page" in shown and page.is_hidden("#identify-result")
    assert page.get_attribute("#api-key", "aria-invalid") == "true"

    page.click("#enroll-box summary")
    page.fill("#enroll-name", "Chandler")
    page.set_input_files("#enroll-photos", str(enroll_photo))
    page.click("#enroll")
    page.wait_for_function("document.getElementById('enroll-status').textContent.includes('API key')")
    page.fill("#api-key", keyed_api.key)  # what `cat data/api_key` shows on the server
    page.dispatch_event("#api-key", "change")
    assert page.get_attribute("#api-key", "aria-invalid") is None
    page.click("#enroll")
    page.wait_for_function("document.getElementById('enroll-status').textContent.includes('enrolled')")

    page.set_input_files("#identify-photo", str(photo("t1.jpg")))
    page.click("#identify")
    page.wait_for_selector("#identify-result:not([hidden])")
    assert natural_width(page, "#identify-image") == 1280
    names = page.locator("#identify-list li").all_text_contents()
    assert len(names) == 6
    assert sum(n.startswith("Chandler: similarity") for n in names) == 1
    assert sum(n.startswith("unknown") for n in names) == 5


# --------------------------------------------------------------------------- anti-spoofing badges
def sample(name: str) -> str:
    """One of the anti-spoofing authors' photos: image_T1.jpg (live), image_F1/F2.jpg (spoofs)."""
    path = ANTISPOOF_DIR / "samples" / name
    if not path.is_file():
        pytest.skip(f"anti-spoofing samples not found at {path.parent}")
    return str(path)


@pytest.fixture(scope="module")
def live_ui(live_triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API against a Triton that serves the anti-spoofing model too."""
    # API_KEY_OPEN: the demo mode; these tests are about the badges (the key has its own tests above).
    env = {"TRITON_URL": live_triton.url, "API_KEY_OPEN": "true"}
    server = ApiProcess(env, tmp_path_factory.mktemp("live-ui") / "api.log").start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def core_ui(core_triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API against a Triton without the anti-spoofing model."""
    env = {"TRITON_URL": core_triton.url, "API_KEY_OPEN": "true"}
    server = ApiProcess(env, tmp_path_factory.mktemp("core-ui") / "api.log").start()
    yield server.url
    server.stop()


def requested_urls(page) -> list[str]:
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def compare_and_detect(page, url: str, liveness: str) -> None:
    """Open the page, wait until it knows whether the model is there, compare T1 with F2, detect t1.jpg."""
    page.goto(f"{url}/ui")
    page.wait_for_selector(f"body[data-liveness='{liveness}']")
    page.set_input_files("#photo-a", sample("image_T1.jpg"))
    page.set_input_files("#photo-b", sample("image_F2.jpg"))
    page.click("#compare")
    page.wait_for_selector("#compare-result:not([hidden])")
    page.set_input_files("#detect-photo", str(photo("t1.jpg")))
    page.click("#detect")
    page.wait_for_selector("#detect-result:not([hidden])")


def test_with_the_anti_spoofing_model_every_face_gets_a_live_or_spoof_badge(live_ui: str, page) -> None:
    urls = requested_urls(page)
    compare_and_detect(page, live_ui, "on")
    assert page.is_visible("#liveness-note")
    live, spoof = page.text_content("#liveness-a"), page.text_content("#liveness-b")
    assert BADGE.match(live) and live.startswith("live "), live  # the authors' live sample
    assert BADGE.match(spoof) and spoof.startswith("spoof "), spoof  # and their print attack
    assert page.get_attribute("#liveness-a", "class").split() == ["badge", "live"]
    assert page.get_attribute("#liveness-b", "class").split() == ["badge", "spoof"]
    shot = screenshot_array(page)
    green = region(shot, page, "#liveness-a").reshape(-1, 3).mean(axis=0)
    red = region(shot, page, "#liveness-b").reshape(-1, 3).mean(axis=0)
    assert green[1] > green[0] + 30 and red[0] > red[1] + 30, (green, red)  # green badge, red badge on screen

    badges = page.locator("#detect-faces li .badge").all_text_contents()
    assert len(badges) == 6 and all(BADGE.match(text) for text in badges), badges
    assert page.text_content("#detect-count").startswith("6 face(s)")
    page.set_input_files("#identify-photo", str(photo("t1.jpg")))
    page.click("#identify")
    page.wait_for_selector("#identify-result:not([hidden])")
    assert len(page.locator("#identify-list li .badge").all_text_contents()) == 6
    checked = [u for u in urls if "liveness=true" in u]
    assert {u.split("/")[-1].split("?")[0] for u in checked} == {"face-similarity", "detect", "identify"}, checked


def test_without_the_anti_spoofing_model_the_page_shows_no_badge_and_asks_for_none(core_ui: str, page) -> None:
    urls = requested_urls(page)
    compare_and_detect(page, core_ui, "off")
    assert page.is_hidden("#liveness-note")
    assert page.text_content("#decision") in ("same person", "different people")
    assert page.text_content("#detect-count").startswith("6 face(s)")
    assert page.locator(".badge >> visible=true").count() == 0
    assert page.is_hidden("#detect-faces") and page.locator("#detect-faces li").count() == 0
    assert not [u for u in urls if "liveness" in u], "without the model the page must call the API as before"
