"""Files and requests crafted to hurt, sent to the real service: each gets a clear 4xx and the service stays healthy.

Every hostile file is built here, in memory (nothing binary is committed): decompression bombs
whose headers claim billions of pixels, degenerate sizes, animations, multi-frame TIFF, broken
and truncated files, huge or malformed EXIF, a photo tiled with thousands of tiny faces, and
request bodies of gigabytes. After each case the service must still answer /health and still
find the six faces of a normal photo.
"""

from __future__ import annotations

import io
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ApiProcess, TritonProcess, photo

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
TWO_GIB = 2 * 1024 * MIB
DEFAULT_MAX_UPLOAD_BYTES = 20 * MIB  # settings.max_upload_bytes
DEFAULT_MAX_REQUEST_BYTES = 64 * MIB  # settings.max_request_bytes
T1_FACES = 6  # t1.jpg, the normal photo that must keep working
# Generous bounds (no timing): the server must neither buffer nor keep draining a huge body.
RSS_GROWTH_LIMIT_MB = 200
DRAIN_LIMIT_BYTES = 4 * DEFAULT_MAX_REQUEST_BYTES  # what it may read past the limit before it hangs up


# --------------------------------------------------------------------------- file builders
def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of zeros: a few hundred KB that decode to width x height pixels."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    rows_per_step = 1000
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * rows_per_step) for _ in range(height // rows_per_step)]
    parts += [compressor.compress(row * (height % rows_per_step)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def png_with_chunk_before_idat(kind: bytes, data: bytes) -> bytes:
    plain = encode(Image.new("RGB", (64, 48), (128, 128, 128)), "PNG")
    ihdr_end = 8 + 25  # signature + IHDR chunk
    return plain[:ihdr_end] + png_chunk(kind, data) + plain[ihdr_end:]


def gif_with_sizes(screen: tuple[int, int], frame: tuple[int, int] | None = None) -> bytes:
    """A 1x1 GIF whose logical screen (and optionally first frame) claims another size."""
    data = encode(Image.new("P", (1, 1)), "GIF")
    data = data[:6] + struct.pack("<HH", *screen) + data[10:]
    if frame is not None:
        descriptor = data.index(b"\x2c")  # image descriptor: left, top, width, height
        data = data[: descriptor + 5] + struct.pack("<HH", *frame) + data[descriptor + 9 :]
    return data


def webp_claiming(width: int, height: int) -> bytes:
    """A small lossless WebP whose VP8L header claims width x height (14 bits each, so up to 16384)."""
    data = encode(Image.new("RGB", (64, 48), (120, 80, 40)), "WEBP", lossless=True)
    start = data.index(b"VP8L") + 8
    assert data[start] == 0x2F  # VP8L signature byte
    bits = (width - 1) | ((height - 1) << 14)  # alpha hint and version bits left at 0
    return data[: start + 1] + struct.pack("<I", bits) + data[start + 5 :]


def tiff_bomb(width: int, height: int) -> bytes:
    """A greyscale TIFF whose one strip is ~100 MB of zeros deflated to ~100 KB."""
    compressor = zlib.compressobj(9)
    strip = b"".join(compressor.compress(b"\0" * 10 * MIB) for _ in range(10)) + compressor.flush()
    long, short = 4, 3  # TIFF field types
    ifd_offset = 8
    entries = [  # tag, type, value; 273 (strip offset) points just past the IFD
        (256, long, width), (257, long, height), (258, short, 8), (259, short, 8),  # deflate
        (262, short, 1), (273, long, 0), (277, short, 1), (278, long, height), (279, long, len(strip)),
    ]  # fmt: skip
    strip_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == short else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + struct.pack("<I", 0) + strip


def face_jpeg() -> bytes:
    return photo("yaoming.jpg").read_bytes()


def jpeg_start_of_frame(data: bytes) -> int:
    return data.index(b"\xff\xc0")  # baseline SOF0: length, precision, height, width, components


def jpeg_claiming(width: int, height: int) -> bytes:
    data = face_jpeg()
    sof = jpeg_start_of_frame(data)
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def jpeg_without_components() -> bytes:
    data = face_jpeg()
    sof = jpeg_start_of_frame(data)
    return data[: sof + 9] + b"\x00" + data[sof + 10 :]


def jpeg_with_garbage_huffman_table() -> bytes:
    data = face_jpeg()
    table = data.index(b"\xff\xc4")
    length = struct.unpack(">H", data[table + 2 : table + 4])[0]
    return data[: table + 4] + b"\xff" * (length - 2) + data[table + 2 + length :]


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def plain(width: int, height: int, fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB", (width, height), (128, 128, 128)), fmt)


def frames(fmt: str, **options) -> bytes:
    first, second = Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (64, 48), (30, 30, 200))
    return encode(first, fmt, save_all=True, append_images=[second], **options)


def random_bytes() -> bytes:
    return np.random.default_rng(6).bytes(5000)


# --------------------------------------------------------------------------- helpers
def post_image(api: httpx.Client, path: str, data: bytes, name: str = "upload.bin") -> httpx.Response:
    return api.post(path, files={"image": (name, data)})


def assert_still_serving(api: httpx.Client) -> None:
    """Alive, and a normal photo still gets its faces (Triton and the pipeline are fine too)."""
    assert api.get("/health").status_code == 200
    response = post_image(api, "/detect", photo("t1.jpg").read_bytes(), "t1.jpg")
    assert response.status_code == 200, response.text
    assert len(response.json()["faces"]) == T1_FACES


# --------------------------------------------------------------------------- refused files
# (case id, builder, status, words the `detail` must contain)
REFUSED: list[tuple[str, Callable[[], bytes], int, str]] = [
    # decompression bombs: refused from the header, before a pixel is decoded
    ("png-bomb-50000x50000", lambda: png_bomb(50_000, 50_000), 413, "more pixels than the limit"),
    ("png-bomb-10000x10000", lambda: png_bomb(10_000, 10_000), 413, "10000x10000 = 100000000 pixels"),
    ("gif-screen-65535x65535", lambda: gif_with_sizes((65535, 65535)), 413, "more pixels than the limit"),
    ("gif-screen-9000x9000", lambda: gif_with_sizes((9000, 9000)), 413, "9000x9000"),
    ("gif-frame-65535x65535", lambda: gif_with_sizes((1, 1), (65535, 65535)), 413, "more pixels than the limit"),
    ("webp-16384x16384", lambda: webp_claiming(16384, 16384), 413, "more pixels than the limit"),
    ("webp-10000x10000", lambda: webp_claiming(10_000, 10_000), 413, "10000x10000"),
    ("tiff-bomb-100000x100000", lambda: tiff_bomb(100_000, 100_000), 413, "more pixels than the limit"),
    ("tiff-bomb-8000x8000", lambda: tiff_bomb(8000, 8000), 413, "8000x8000 = 64000000 pixels"),
    ("jpeg-claiming-65000x65000", lambda: jpeg_claiming(65_000, 65_000), 413, "more pixels than the limit"),
    # sizes no face fits in
    ("1x1", lambda: plain(1, 1), 400, "at least 16 pixels"),
    ("1x100000", lambda: plain(1, 100_000), 400, "1x100000: each side must be at least 16 pixels"),
    ("100000x1", lambda: plain(100_000, 1), 400, "100000x1: each side must be at least 16 pixels"),
    ("100000x20", lambda: plain(100_000, 20), 400, "more than 20 times apart"),
    ("20x60000-jpeg", lambda: plain(20, 60_000, "JPEG"), 400, "more than 20 times apart"),
    # animations and multi-frame files
    ("animated-gif", lambda: frames("GIF"), 400, "animated or multi-frame GIF"),
    ("animated-webp", lambda: frames("WEBP"), 400, "animated or multi-frame WEBP"),
    ("apng", lambda: frames("PNG"), 400, "animated or multi-frame PNG"),
    ("multi-frame-tiff", lambda: frames("TIFF"), 400, "animated or multi-frame TIFF"),
    # broken, truncated, not an image
    ("empty", lambda: b"", 400, "empty"),
    ("random-bytes", random_bytes, 400, "not a decodable image"),
    ("pdf", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", 400, "not a decodable"),
    ("unsupported-ico", lambda: encode(Image.new("RGB", (32, 32)), "ICO"), 400, "unsupported image format ICO"),
    ("truncated-jpeg", lambda: truncated(face_jpeg()), 400, "JPEG image is truncated or corrupt"),
    ("truncated-png", lambda: truncated(encode(Image.open(io.BytesIO(face_jpeg())), "PNG")), 400, "PNG image is trunc"),
    ("truncated-tiff", lambda: truncated(plain(200, 200, "TIFF")), 400, "truncated or corrupt"),
    ("jpeg-header-only", lambda: face_jpeg()[: face_jpeg().index(b"\xff\xda") + 14], 400, "truncated or corrupt"),
    ("jpeg-no-components", jpeg_without_components, 400, "not a decodable image"),
    ("jpeg-garbage-huffman", jpeg_with_garbage_huffman_table, 400, "JPEG image is truncated or corrupt"),
    ("jpeg-size-0x0", lambda: jpeg_claiming(0, 0), 400, "not a decodable image"),
    ("png-bad-crc", lambda: (lambda d: d[:40] + bytes([d[40] ^ 0xFF]) + d[41:])(plain(64, 48)), 400, "not a decod"),
    ("png-ztxt-bomb", lambda: png_with_chunk_before_idat(b"zTXt", b"k\0\0" + zlib.compress(b"\0" * 100 * MIB, 9)),
     400, "not a decodable image"),
    ("png-iccp-bomb", lambda: png_with_chunk_before_idat(b"iCCP", b"p\0\0" + zlib.compress(b"\0" * 100 * MIB, 9)),
     400, "not a decodable image"),
    # metadata that pushes the file past the byte limit
    ("exif-21mb", lambda: encode(Image.new("RGB", (64, 48)), "PNG", exif=b"Exif\0\0II*\0" + b"\0" * 21 * MIB),
     413, f"larger than {DEFAULT_MAX_UPLOAD_BYTES} bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "status", "message"), [pytest.param(b, s, m, id=i) for i, b, s, m in REFUSED])
def test_a_hostile_file_gets_a_clear_4xx_and_the_service_stays_healthy(
    api: httpx.Client, data: Callable[[], bytes], status: int, message: str
) -> None:
    payload = data()
    for path in ("/detect", "/embedding"):
        response = post_image(api, path, payload)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert message in response.json()["detail"], (path, response.json())
        assert api.get("/health").status_code == 200
    assert_still_serving(api)


def test_enrollment_rejects_each_hostile_image_by_name_and_stores_nothing(api: httpx.Client) -> None:
    images = [("images", ("bomb.png", png_bomb(50_000, 50_000))), ("images", ("strip.png", plain(1, 100_000))),
              ("images", ("anim.gif", frames("GIF"))), ("images", ("cut.jpg", truncated(face_jpeg())))]  # fmt: skip
    before = api.get("/identities").json()["total"]
    response = api.post("/identities", data={"name": "Mallory"}, files=images)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "nothing was stored" in detail
    assert "image 0: image has more pixels than the limit" in detail
    assert "image 1: image is 1x100000" in detail
    assert "image 2: animated" in detail
    assert "image 3: the JPEG image is truncated or corrupt" in detail
    assert api.get("/identities").json()["total"] == before
    too_many = [("images", (f"{i}.jpg", face_jpeg())) for i in range(11)]  # default MAX_ENROLL_IMAGES is 10
    response = api.post("/identities", data={"name": "Mallory"}, files=too_many)
    assert response.status_code == 413 and "at most 10 images" in response.json()["detail"]
    assert_still_serving(api)


# --------------------------------------------------------------------------- odd but valid files are served
def exif_bytes(entries: dict[int, object]) -> bytes:
    exif = Image.Exif()
    for tag, value in entries.items():
        exif[tag] = value
    return exif.tobytes()


def raw_exif_ifd(entries: list[tuple[int, int, int, int]], next_ifd: int = 0) -> bytes:
    """Little-endian EXIF with one IFD at offset 8 of (tag, type, count, value-or-offset) entries."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *entry) for entry in entries)
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", next_ifd)


ORIENTATION, IMAGE_DESCRIPTION, EXIF_IFD_POINTER = 0x0112, 0x010E, 0x8769
ASCII, SHORT, LONG = 2, 3, 4


def face_with_exif(fmt: str, exif: bytes) -> bytes:
    return encode(Image.open(io.BytesIO(face_jpeg())).convert("RGB"), fmt, exif=exif)


# Hostile metadata on a real photo: the photo is fine, so it is served (200) with its face.
SERVED: list[tuple[str, Callable[[], bytes], bool]] = [  # (id, builder, rotated by EXIF orientation 6)
    ("jpeg-exif-60kb", lambda: face_with_exif("JPEG", exif_bytes({IMAGE_DESCRIPTION: "A" * 60_000, ORIENTATION: 6})),
     True),
    ("png-exif-15mb", lambda: face_with_exif("PNG", exif_bytes({IMAGE_DESCRIPTION: "B" * 15 * MIB, ORIENTATION: 6})),
     True),
    ("webp-exif-15mb", lambda: face_with_exif("WEBP", exif_bytes({IMAGE_DESCRIPTION: "C" * 15 * MIB})), False),
    ("jpeg-5000-exif-tags", lambda: face_with_exif("JPEG", raw_exif_ifd(
        [(0x9000 + k % 1000, ASCII, 4, 0x41414141) for k in range(5000)])), False),
    ("jpeg-orientation-65535", lambda: face_with_exif("JPEG", exif_bytes({ORIENTATION: 65535})), False),
    ("jpeg-exif-ifd-loop", lambda: face_with_exif("JPEG", raw_exif_ifd(
        [(ORIENTATION, SHORT, 1, 6), (EXIF_IFD_POINTER, LONG, 1, 8)], next_ifd=8)), True),
    ("jpeg-exif-count-past-end", lambda: face_with_exif("JPEG", raw_exif_ifd(
        [(IMAGE_DESCRIPTION, ASCII, 0x7FFFFFFF, 0x7FFFFF00)])), False),
]  # fmt: skip


@pytest.mark.parametrize(("data", "rotated"), [pytest.param(b, r, id=i) for i, b, r in SERVED])
def test_hostile_metadata_on_a_real_photo_is_ignored_and_the_face_is_found(
    api: httpx.Client, data: Callable[[], bytes], rotated: bool
) -> None:
    upright = Image.open(io.BytesIO(face_jpeg()))
    expected = upright.size[::-1] if rotated else upright.size
    body = post_image(api, "/detect", data()).json()
    assert (body["width"], body["height"]) == expected
    assert len(body["faces"]) == 1
    assert_still_serving(api)


def test_a_cmyk_jpeg_is_decoded_and_gives_the_same_face(api: httpx.Client) -> None:
    # imaging.py converts CMYK on purpose (print workflows save photos that way): served, not refused.
    cmyk = encode(Image.open(io.BytesIO(face_jpeg())).convert("CMYK"), "JPEG", quality=95)
    response = post_image(api, "/embedding", cmyk, "cmyk.jpg")
    assert response.status_code == 200, response.text
    reference = post_image(api, "/embedding", face_jpeg(), "rgb.jpg").json()["embedding"]
    assert float(np.dot(response.json()["embedding"], reference)) > 0.9


# --------------------------------------------------------------------------- thousands of tiny faces
FACE_TILE_PX = 16
FACE_GRID = 40  # 40 x 40 = 1600 faces in a 640x640 photo


def tiled_faces() -> bytes:
    """yaoming's face, cropped with a margin, shrunk to 16 px and tiled 40 x 40."""
    image = Image.open(io.BytesIO(face_jpeg())).convert("RGB")
    width, height = image.size
    face = image.crop((int(0.2 * width), int(0.15 * height), int(0.85 * width), int(0.85 * height)))
    tile = face.resize((FACE_TILE_PX, FACE_TILE_PX), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (FACE_TILE_PX * FACE_GRID, FACE_TILE_PX * FACE_GRID))
    for row in range(FACE_GRID):
        for column in range(FACE_GRID):
            canvas.paste(tile, (column * FACE_TILE_PX, row * FACE_TILE_PX))
    return encode(canvas, "PNG")


def test_thousands_of_tiny_faces_are_capped_and_the_answer_says_so(api: httpx.Client) -> None:
    data = tiled_faces()
    body = post_image(api, "/detect", data, "crowd.png").json()
    assert body["capped"] is True
    assert body["max_faces"] < FACE_GRID * FACE_GRID
    assert len(body["faces"]) == body["max_faces"]
    scores = [face["score"] for face in body["faces"]]
    assert scores == sorted(scores, reverse=True)  # the best-scoring faces are the ones kept
    identified = api.post("/identify", files={"image": ("crowd.png", data)})
    assert identified.status_code == 200 and len(identified.json()["faces"]) == body["max_faces"]
    normal = post_image(api, "/detect", photo("t1.jpg").read_bytes()).json()
    assert "capped" not in normal and "max_faces" not in normal  # an ordinary answer keeps its shape
    assert_still_serving(api)


# --------------------------------------------------------------------------- gigabyte request bodies
@pytest.fixture(scope="module")
def own_api(triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """An API process of this module's own, so its memory can be read from /proc."""
    folder: Path = tmp_path_factory.mktemp("hostile-api")
    server = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db")}, folder / "api.log")
    server.start()
    yield server
    server.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


MULTIPART_HEAD = b'--x\r\nContent-Disposition: form-data; name="image"; filename="huge.jpg"\r\n\r\n'
MULTIPART_TYPE = "multipart/form-data; boundary=x"


def request_head(port: int, extra: str) -> bytes:
    head = f"POST /detect HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {MULTIPART_TYPE}\r\n{extra}\r\n"
    return head.encode()


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 30 s of silence)."""
    sock.settimeout(30)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:  # it hung up with our unread body in its buffer: the answer came first
        pass
    return received


def test_a_declared_2_gib_body_is_refused_at_once_and_the_connection_closed(own_api: ApiProcess) -> None:
    with socket.create_connection(("127.0.0.1", own_api.port)) as sock:
        sock.sendall(request_head(own_api.port, f"Content-Length: {TWO_GIB}\r\n") + MULTIPART_HEAD + b"\0" * MIB)
        answer = read_response(sock)  # the server answers and hangs up without waiting for 2 GiB
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"connection: close" in head.lower()
    assert b"request body larger than" in body
    assert httpx.get(f"{own_api.url}/health").status_code == 200


def test_a_streamed_2_gib_body_without_length_is_cut_off_and_memory_stays_bounded(own_api: ApiProcess) -> None:
    pid = own_api.process.pid
    before = rss_mb(pid)
    streamed = 0

    def two_gib() -> Iterator[bytes]:
        nonlocal streamed
        yield MULTIPART_HEAD
        block = b"\0" * MIB
        while streamed < TWO_GIB:
            streamed += len(block)
            yield block
        yield b"\r\n--x--\r\n"

    response = httpx.post(
        f"{own_api.url}/detect", content=two_gib(), headers={"Content-Type": MULTIPART_TYPE}, timeout=120
    )
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body larger than {DEFAULT_MAX_REQUEST_BYTES} bytes"}
    assert streamed < DRAIN_LIMIT_BYTES  # the server hung up instead of draining 2 GiB
    assert rss_mb(pid) - before < RSS_GROWTH_LIMIT_MB
    assert httpx.get(f"{own_api.url}/health").status_code == 200


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_an_upload_cut_off_mid_stream_by_the_client_leaves_no_trace(own_api: ApiProcess, framing: str) -> None:
    pid = own_api.process.pid
    before = rss_mb(pid)
    sent = 30 * MIB  # under every limit: the server is still reading when the client vanishes
    declared = 50 * MIB
    extra = "Transfer-Encoding: chunked\r\n" if framing == "chunked" else f"Content-Length: {declared}\r\n"
    with socket.create_connection(("127.0.0.1", own_api.port)) as sock:
        sock.sendall(request_head(own_api.port, extra))
        payload = MULTIPART_HEAD + b"\0" * sent
        if framing == "chunked":
            payload = b"%x\r\n" % len(payload) + payload + b"\r\n"
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_RDWR)  # gone mid-body
    with httpx.Client(base_url=own_api.url, timeout=60) as client:
        assert_still_serving(client)
    assert rss_mb(pid) - before < RSS_GROWTH_LIMIT_MB
    assert "unhandled error" not in own_api.log_path.read_text()  # app.py logs every 500 this way
