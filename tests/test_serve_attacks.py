"""`cxr serve` attacked on loopback: each test reproduces one attack from issue 14 against a real
waitress server on 127.0.0.1 (bounded in count and time), checks the server's answer, and then
that /api/health still answers within a second."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from cxr.config import ServeConfig
from cxr.inference.analysis import Analyser as Engine
from cxr.serve import create_app
from cxr.serve.server import build_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tiny_kermany_run) -> Engine:
    return Engine({"model": str(tiny_kermany_run)})


@pytest.fixture(scope="module")
def kermany_bytes(kermany_train) -> bytes:
    return (kermany_train / "NORMAL" / "IM-0115-0001.jpeg").read_bytes()


@contextlib.contextmanager
def live_server(engine: Engine, per_client: int = 16, header_timeout_s: float = 10.0, **cfg):
    """A guarded waitress server on 127.0.0.1 (a free port), serving in a thread."""
    config = ServeConfig(model=str(engine.run_dir), **cfg)
    server = build_server(config, "127.0.0.1", 0, per_client, header_timeout_s, engine=engine)
    stop = threading.Event()

    def serve():  # waitress's loop, stoppable: closing its sockets from outside breaks select()
        while not stop.is_set():
            server.asyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)
        for channel in list(server._map.values()):
            channel.close()
        server.task_dispatcher.shutdown(timeout=2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.effective_port)
    finally:
        stop.set()
        thread.join(5)


def assert_healthy(port: int) -> None:
    """The server answers /api/health within a second."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    conn.request("GET", "/api/health")
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    assert time.monotonic() - start < 1.0
    conn.close()


def request(port: int, method: str, path: str, body: bytes = b"", headers=None, timeout=10.0):
    """(status, headers, JSON or bytes) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    kind = response.getheader("Content-Type", "")
    return response.status, response, json.loads(data) if "json" in kind else data


def multipart(files: list[tuple[str, str, bytes]], fields: dict | None = None):
    """(body, Content-Type) of a multipart form: files as (field, filename, bytes)."""
    boundary = "cxrtestboundary7MA4YWxkTrZu0gW"
    parts = []
    for name, value in (fields or {}).items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for field, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def raw_exchange(port: int, data: bytes, source: str = "127.0.0.1", wait: float = 3.0) -> bytes:
    """Send raw bytes, read what comes back until the server closes or `wait` passes."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(wait)
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        got = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                got += chunk
                if b"\r\n\r\n" in got and len(got) >= _full_length(got):
                    break
        return got


def _full_length(raw: bytes) -> int:
    head, _, _ = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return 1 << 60


def parse_raw(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


# --- 2: a finding repeated in ?heatmaps= ------------------------------------------------------


def test_repeated_heatmap_finding_is_computed_once_and_long_specs_refused(
    engine, kermany_bytes, monkeypatch
):
    asked: list[list[str]] = []
    original = Engine._heatmaps

    def spy(self, image, wanted, *args, **kwargs):
        asked.append(list(wanted))
        return original(self, image, wanted, *args, **kwargs)

    monkeypatch.setattr(Engine, "_heatmaps", spy)
    finding = engine.findings[0]
    body, kind = multipart([("file", "x.jpeg", kermany_bytes)])
    with live_server(engine) as port:
        repeated = ",".join([finding] * 250)
        status, _, answer = request(
            port, "POST", f"/api/predict?heatmaps={repeated}", body, {"Content-Type": kind}
        )
        assert status == 200 and list(answer["heatmaps"]) == [finding]
        assert asked == [[finding]]  # once, not 250 times
        status, _, answer = request(
            port, "POST", f"/api/predict?heatmaps={repeated * 9}", body, {"Content-Type": kind}
        )
        assert status == 400 and "heatmaps=" in answer["error"] and "characters" in answer["error"]
        assert len(asked) == 1
        assert_healthy(port)


# --- 3: slowloris -------------------------------------------------------------------------------


def test_slowloris_from_one_client_leaves_the_server_to_everyone_else(engine):
    """40 connections from 127.0.0.2 that never finish their headers: the client gets 4, the
    rest are refused at once, the 4 are closed after the header deadline, and 127.0.0.1 is
    served throughout."""
    with live_server(engine, per_client=4, header_timeout_s=1.0) as port:
        slow = []
        for _ in range(40):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(3.0)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n")
            slow.append(sock)
        assert_healthy(port)
        start = time.monotonic()
        for _ in range(6):  # keep trickling a header byte: each byte is 'activity'
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            time.sleep(0.4)
            assert_healthy(port)
        answers = []
        for sock in slow:
            got = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(4096):
                    got += chunk
            answers.append(got)
            sock.close()
        refused = [a for a in answers if b" 503 " in a.split(b"\r\n", 1)[0]]
        assert len(refused) >= 36 and all(b"too_many_connections" in a for a in refused)
        timed_out = [a for a in answers if a == b""]  # closed by the server, headers unfinished
        assert len(timed_out) == 40 - len(refused)
        assert time.monotonic() - start < 8
        assert_healthy(port)


# --- 4: deadlines, a bounded queue, health outside it, clients that hung up -------------------


@pytest.fixture()
def slow_model(engine, monkeypatch):
    """The model takes `seconds["forward"]`; `calls` counts forward passes."""
    calls, seconds = [], {"forward": 1.5}
    original = engine.predictor.engine.predict_with_features

    def slow(pixels):  # the engine's forward: under the micro-batcher and without it alike
        calls.append(time.monotonic())
        time.sleep(seconds["forward"])
        return original(pixels)

    monkeypatch.setattr(engine.predictor.engine, "predict_with_features", slow)
    return calls, seconds


@pytest.mark.parametrize("max_batch", [1, 16])  # one model call per request, or shared calls
def test_full_queue_and_passed_deadline_answer_503_while_health_stays_fast(
    engine, kermany_bytes, slow_model, max_batch
):
    calls, seconds = slow_model
    seconds["forward"] = 1.5
    body, kind = multipart([("file", "x.jpeg", kermany_bytes)])
    results: list[tuple[int, object, object]] = []

    def post():
        results.append(
            request(port, "POST", "/api/predict?images=false", body, {"Content-Type": kind})
        )

    # requests 0.25 s apart: the first one's model call has begun when the second arrives, so
    # the second cannot join it (with batching it would be answered with it) and waits
    limits = {"workers": 1, "queue": 1, "deadline_s": 1.0, "max_batch": max_batch}
    with live_server(engine, batch_wait_ms=0, **limits) as port:
        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.25)
        time.sleep(0.05)
        assert_healthy(port)  # while one request runs and one waits
        for t in threads:
            t.join(10)
        statuses = sorted(status for status, _, _ in results)
        # one ran; the waiting one's 1 s deadline passed behind the 1.5 s forward; two found
        # the queue full
        assert statuses == [200, 503, 503, 503]
        for status, response, answer in results:
            if status == 503:
                assert int(response.getheader("Retry-After")) >= 1 and answer["code"] == "busy"
        assert len(calls) == 1
        assert_healthy(port)


@pytest.mark.parametrize("max_batch", [1, 16])
def test_work_for_a_client_that_hung_up_is_dropped(engine, kermany_bytes, slow_model, max_batch):
    calls, seconds = slow_model
    seconds["forward"] = 1.0
    body, kind = multipart([("file", "x.jpeg", kermany_bytes)])
    head = (
        f"POST /api/predict?images=false HTTP/1.1\r\nHost: localhost\r\nContent-Type: {kind}"
        f"\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with live_server(engine, workers=1, queue=4, deadline_s=30, max_batch=max_batch) as port:
        first = threading.Thread(target=raw_exchange, args=(port, head + body))
        first.start()
        time.sleep(0.3)  # the first request is in the model now
        for _ in range(3):  # three more wait their turn, and hang up
            with socket.socket() as sock:
                sock.connect(("127.0.0.1", port))
                sock.sendall(head + body)
                time.sleep(0.1)
        first.join(10)
        time.sleep(0.6)  # each waiting request notices within its 0.25 s poll
        assert len(calls) == 1
        assert_healthy(port)


# --- 5: bodies refused on Content-Length, before they are read ---------------------------------


@pytest.mark.parametrize(
    ("method", "path", "length", "words"),
    [
        ("POST", "/api/health", 50_000_000, "takes no upload"),  # under the 101 MB ceiling
        ("GET", "/", 50_000_000, "takes no upload"),
        ("POST", "/api/predict", 3 * 2**20, "--max-upload-mb"),
        ("POST", "/api/predict/batch", 200 * 2**20, "--max-batch-mb"),
    ],
)
def test_oversized_body_is_refused_before_it_is_sent(engine, method, path, length, words):
    with live_server(engine, max_upload_mb=1.0, max_batch_mb=100.0) as port:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
        raw = raw_exchange(port, head + b"\0" * 1000)  # the answer comes without the body
        status, headers, answer = parse_raw(raw)
        assert (
            status == 413
            and words in answer["error"]
            and answer["code"] == "request_entity_too_large"
        )
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert_healthy(port)


def test_chunked_body_over_the_route_limit_is_cut_off(engine):
    with live_server(engine) as port:
        chunk = b"%x\r\n%s\r\n" % (32 * 1024, b"\0" * 32 * 1024)
        head = b"POST /api/health HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        status, _, answer = parse_raw(raw_exchange(port, head + chunk * 4))
        assert status == 413 and "takes no upload" in answer["error"]
        assert_healthy(port)


# --- 9: nothing on disk, checked at the system-call level --------------------------------------

_SERVE_ONE = """
import http.client, sys, threading
from cxr.config import ServeConfig
from cxr.serve.server import build_server
cfg = ServeConfig(model=sys.argv[1], display_size=4096)
server = build_server(cfg, "127.0.0.1", 0)
threading.Thread(target=server.run, daemon=True).start()
body = open(sys.argv[2], "rb").read()
conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=60)
print("REQUEST-START", flush=True)
conn.request("POST", "/api/predict?heatmaps=all&overlays=true&filename=x.png", body=body,
             headers={"Content-Type": "image/png"})
reply = conn.getresponse()
data = reply.read()
print("STATUS", reply.status, "BYTES", len(data), flush=True)
"""


def test_large_response_is_never_spooled_to_a_temporary_file(
    tiny_kermany_run, nih_samples, tmp_path
):
    """strace every file the server process opens: a response over waitress's 1 MiB default
    outbuf_overflow must not go through a temporary file (named or O_TMPFILE)."""
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    pixels = cv2.imread(str(nih_samples / "images" / "00000001_000.png"), cv2.IMREAD_GRAYSCALE)
    image = tmp_path / "big.png"
    cv2.imwrite(str(image), cv2.resize(pixels, (2048, 2048)))
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    trace = tmp_path / "trace.txt"
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,creat",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            _SERVE_ONE,
            str(tiny_kermany_run),
            str(image),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    status, size = done.stdout.split("STATUS ", 1)[1].split()[0::2]
    assert status == "200" and int(size) > 2**20  # over waitress's default outbuf_overflow
    opened = trace.read_text().splitlines()
    tmp_opens = [line for line in opened if "O_TMPFILE" in line or str(tmp) in line]
    assert not tmp_opens, tmp_opens[:3]
    assert not list(tmp.iterdir())


def test_schemathesis_finds_no_failure_in_the_api(engine, tmp_path):
    """Every check schemathesis has (status codes, schemas, headers, Allow, negative data)
    against the live API, bounded: 5 examples per operation, a fixed seed."""
    import shutil
    import subprocess

    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(cli).exists():
        pytest.skip("schemathesis is not installed (pip install -e .[dev])")
    config = Path(__file__).parent / "schemathesis.toml"
    with live_server(engine) as port:
        done = subprocess.run(
            [
                cli,
                "--config-file",
                str(config),
                "run",
                f"http://127.0.0.1:{port}/api/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "5",
                "--seed",
                "1",
                "--workers",
                "1",
                "--request-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout[-4000:]
        assert_healthy(port)


# --- 13: waitress's own errors are the API's JSON ----------------------------------------------


def test_malformed_request_and_huge_headers_get_json_errors(engine):
    with live_server(engine) as port:
        status, headers, answer = parse_raw(raw_exchange(port, b"GARBAGE\r\n\r\n"))
        assert status == 400 and answer["status"] == 400 and headers["Cache-Control"] == "no-store"
        huge = (
            b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n"
        )
        status, headers, answer = parse_raw(raw_exchange(port, huge))
        assert status == 431 and answer["code"] == "request_header_fields_too_large"
        assert headers["Content-Type"] == "application/json"
        assert_healthy(port)


def test_one_oversized_file_in_a_batch_gets_its_own_error(engine, kermany_bytes):
    big = kermany_bytes + b"\0" * (2 * 2**20)  # over a 1 MB per-image limit
    body, kind = multipart(
        [
            ("files", "a.jpeg", kermany_bytes),
            ("files", "big.jpeg", big),
            ("files", "b.jpeg", kermany_bytes),
        ]
    )
    with live_server(engine, max_upload_mb=1.0) as port:
        status, _, answer = request(
            port, "POST", "/api/predict/batch", body, {"Content-Type": kind}
        )
        assert status == 200 and (answer["n_ok"], answer["n_failed"]) == (2, 1)
        item = answer["results"][1]
        assert item["file"] == "big.jpeg" and item["status"] == 413
        assert "--max-upload-mb" in item["error"]
        assert_healthy(port)


def test_access_log_has_one_line_per_request_without_file_names(engine, kermany_bytes, caplog):
    body, kind = multipart([("file", "patient-jane-doe.jpeg", kermany_bytes)])
    with caplog.at_level("INFO", logger="cxr.access"), live_server(engine) as port:
        request(port, "POST", "/api/predict?images=false", body, {"Content-Type": kind})
        request(port, "GET", "/api/nothing-here")
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "cxr.access"]
    assert len(lines) == 2
    method, path, status, ms, size = lines[0].split()
    assert (method, path, status) == ("POST", "/api/predict", "200")
    assert ms.endswith("ms") and float(ms[:-2]) > 0 and int(size[:-1]) > 100
    assert lines[1].split()[:3] == ["GET", "/api/nothing-here", "404"]
    assert not any("jane" in line for line in lines)


def test_queue_depth_warning_is_said_once_a_minute():
    import logging

    from cxr.serve.transport import _OncePerMinute

    logger = logging.getLogger("test.queue.depth")
    logger.addFilter(_OncePerMinute())
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    for depth in range(50):
        logger.warning("Task queue depth is %d", depth)
    assert len(records) == 1


# --- 11: what a web page on another site can do to a local server ----------------------------


def make_client(engine, **cfg):
    return create_app({"model": str(engine.run_dir), **cfg}, engine=engine).test_client()


def test_dns_rebinding_and_cross_site_posts_are_refused(engine, kermany_bytes):
    client = make_client(engine)
    upload = {"file": (io.BytesIO(kermany_bytes), "x.jpeg")}
    rebound = client.get("/api/model", headers={"Host": "attacker.example:8000"})
    assert rebound.status_code == 400 and rebound.get_json()["code"] == "host_not_allowed"
    for headers in (
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        upload = {"file": (io.BytesIO(kermany_bytes), "x.jpeg")}
        refused = client.post("/api/predict", data=upload, headers=headers)
        assert refused.status_code == 403 and refused.get_json()["code"] == "cross_site"
    same = client.post(
        "/api/predict?images=false",
        headers={"Origin": "http://localhost"},
        data={"file": (io.BytesIO(kermany_bytes), "x.jpeg")},
    )
    assert same.status_code == 200
    anywhere = make_client(engine, allowed_hosts=["*"])
    assert anywhere.get("/api/health", headers={"Host": "x.example"}).status_code == 200


def test_model_info_shows_no_server_paths(engine, tiny_kermany_run):
    text = make_client(engine).get("/api/model").get_data(as_text=True)
    assert str(tiny_kermany_run.parent) not in text
    assert "shared/data" not in text and "/work" not in text


def test_static_route_is_not_a_file_existence_oracle(engine, tmp_path):
    web = tmp_path / "web"
    (web / "assets").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>front end</title>")
    client = make_client(engine, web_dir=str(web))
    missing = client.get("/no-such-file.txt")
    for probe in (
        "/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/assets/..%2f..%2f..%2fetc/hostname",
        "/%2e%2e/%2e%2e/etc/passwd",
    ):
        answer = client.get(probe)
        assert (answer.status_code, answer.data) == (missing.status_code, missing.data), probe


# --- 12: a token for servers on the network ----------------------------------------------------


def test_token_file_guards_the_api_but_not_health(engine, tmp_path):
    token = "s3cret-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    client = make_client(engine, token_file=str(tmp_path / "token"))
    assert client.get("/api/health").status_code == 200
    refused = client.get("/api/model")
    assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers
    assert client.get("/api/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/model", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    browser = make_client(engine, token_file=str(tmp_path / "token"))
    landing = browser.get(f"/?token={token}")
    assert landing.status_code == 303 and "HttpOnly" in landing.headers["Set-Cookie"]
    assert browser.get("/api/model").status_code == 200  # the cookie carries it now


# --- 10: --save-uploads keeps accepted images only, within a cap ------------------------------


def test_save_uploads_keeps_only_accepted_images_within_the_cap(engine, kermany_bytes, tmp_path):
    folder = tmp_path / "kept"
    client = make_client(engine, save_uploads=str(folder), save_uploads_max_mb=0.05)
    junk = [(io.BytesIO(b"not an image %d" % i), f"notes{i}.txt") for i in range(30)]
    answer = client.post("/api/predict/batch", data={"files": junk})
    assert answer.status_code == 200 and answer.get_json()["n_failed"] == 30
    assert not list(folder.iterdir())  # refused uploads are never written
    for name in ("胸部.jpeg", "肺.jpeg"):
        ok = client.post(
            "/api/predict?images=false", data={"file": (io.BytesIO(kermany_bytes), name)}
        )
        assert ok.status_code == 200
    kept = sorted(p.name for p in folder.iterdir())
    assert (
        len(kept) == 2
        and kept[0].endswith(("胸部.jpeg", "肺.jpeg"))
        and kept[0][-7:] != kept[1][-7:]
    )
    for _ in range(5):  # the cap (50 KB) stops the folder growing; answers still come
        ok = client.post(
            "/api/predict?images=false", data={"file": (io.BytesIO(kermany_bytes), "more.jpeg")}
        )
        assert ok.status_code == 200
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 0.05 * 2**20


# --- 13: errors that say the truth -------------------------------------------------------------


def test_errors_name_their_real_cause(engine, kermany_bytes):
    client = make_client(engine)
    not_allowed = client.get("/api/predict")
    assert not_allowed.status_code == 405 and not_allowed.headers["Allow"] == "POST"
    wrong_method = client.put("/api/health")
    assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["Allow"]
    typo = client.post("/api/predictt", data=b"x")
    assert typo.status_code == 404 and typo.get_json()["code"] == "not_found"

    broken = client.post(
        "/api/predict", data=b"--nope\r\ngarbage", headers={"Content-Type": "multipart/form-data"}
    )
    assert broken.status_code == 400 and "multipart" in broken.get_json()["error"]

    body, kind = multipart([("file", "", kermany_bytes)])
    unnamed = client.post("/api/predict?images=false", data=body, headers={"Content-Type": kind})
    assert unnamed.status_code == 200 and unnamed.get_json()["file"] == "upload"

    both = client.post(
        "/api/predict?heatmaps=none",
        data={"file": (io.BytesIO(kermany_bytes), "x.jpeg"), "heatmaps": "all"},
    )
    assert both.status_code == 400 and "once" in both.get_json()["error"]

    parts = [("files", f"f{i}.png", b"x") for i in range(1100)]
    body, kind = multipart(parts)
    many = client.post("/api/predict/batch", data=body, headers={"Content-Type": kind})
    assert many.status_code == 413 and "parts" in many.get_json()["error"]
    assert "MB per" not in many.get_json()["error"]


def test_refused_batch_item_keeps_the_ood_detail(engine, kermany_bytes, monkeypatch):
    from cxr.errors import NotAChestXray

    ood = {
        "checked": True,
        "ok": False,
        "score": 9.0,
        "threshold": 1.0,
        "reason": "far",
        "action": "refuse",
    }

    def refuse(decoded, pixels, features, name):
        raise NotAChestXray("refused by the gate", path=name, ood=ood)

    monkeypatch.setattr(engine, "check_gate", refuse)
    client = make_client(engine)
    answer = client.post(
        "/api/predict/batch", data={"files": [(io.BytesIO(kermany_bytes), "x.jpeg")]}
    )
    item = answer.get_json()["results"][0]
    assert item["status"] == 422 and item["ood"] == ood


# --- 14: the command line -----------------------------------------------------------------------


def test_cli_serve_refuses_bad_settings_with_clear_errors(tiny_kermany_run, capsys):
    from cxr.cli import main

    model = ["serve", "--model", str(tiny_kermany_run)]
    assert main([*model, "--threads", "0"]) != 0
    assert "--threads" in capsys.readouterr().err
    assert main([*model, "--port", "99999"]) != 0
    assert "99999" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main([*model, "--device", "cuda"]) != 0
        err = capsys.readouterr().err
        assert "GPU" in err and "Traceback" not in err


def test_cli_serve_on_a_busy_port_and_an_open_bind(tiny_kermany_run, capsys, monkeypatch):
    from cxr.cli import main
    from cxr.serve.transport import GuardedServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tiny_kermany_run), "--port", str(port)]) != 0
        err = capsys.readouterr().err
        assert f"127.0.0.1:{port}" in err and "--port" in err and "Traceback" not in err
    monkeypatch.setattr(GuardedServer, "run", lambda self: None)  # start up, then stop at once
    assert (
        main(["serve", "--model", str(tiny_kermany_run), "--host", "0.0.0.0", "--port", str(port)])
        == 0
    )
    assert "without --token-file" in capsys.readouterr().err


def test_no_second_model_copy_until_a_heatmap_is_asked_for(tiny_kermany_run, kermany_bytes):
    from cxr.explain import gradcam as explain

    fresh = Engine({"model": str(tiny_kermany_run)})
    client = make_client(fresh)
    upload = {"file": (io.BytesIO(kermany_bytes), "x.jpeg")}
    assert client.post("/api/predict?heatmaps=none&images=false", data=upload).status_code == 200
    assert fresh.predictor.model not in explain._TWINS
    upload = {"file": (io.BytesIO(kermany_bytes), "x.jpeg")}
    assert client.post("/api/predict?heatmaps=top&images=false", data=upload).status_code == 200
    assert fresh.predictor.model in explain._TWINS


_SERVE_ONNX_PROBE = """
import json, sys
import cxr.inference.predictor as predictor
import cxr.serve.transport as transport
from cxr.cli import main

built = []
real_load_run = predictor.load_run
predictor.load_run = lambda *a, **k: built.append(1) or real_load_run(*a, **k)

def report(server):  # instead of serving: what `cxr serve` holds once it is ready
    heavy = ("sklearn", "matplotlib", "optuna", "mlflow", "cxr.report", "cxr.train")
    print(json.dumps({"imported": [m for m in heavy if m in sys.modules],
                      "torch_model_built": bool(built)}))

transport.GuardedServer.run = report
main(["serve", "--model", sys.argv[1], "--backend", "onnx", "--port", sys.argv[2]])
"""


def test_cli_serve_on_onnx_builds_no_torch_model_and_imports_no_training_code(
    tiny_kermany_run, tmp_path
):
    """Idle footprint: `cxr serve --backend onnx` loads neither the PyTorch model (until a
    heatmap is asked for) nor the training, evaluation and report stack."""
    import shutil
    import subprocess

    from cxr.inference.export import export_run

    run = tmp_path / "run"
    shutil.copytree(tiny_kermany_run, run)
    export_run(run)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_ONNX_PROBE, str(run), str(port)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    held = json.loads(done.stdout.strip().splitlines()[-1])
    assert held == {"imported": [], "torch_model_built": False}, held


def test_onnx_server_builds_the_torch_model_only_for_a_heatmap(
    tiny_kermany_run, kermany_bytes, tmp_path
):
    import shutil

    from cxr.inference.export import export_run

    run = tmp_path / "run"
    shutil.copytree(tiny_kermany_run, run)
    export_run(run)
    fresh = Engine({"model": str(run), "backend": "onnx"})
    client = make_client(fresh, backend="onnx")
    upload = {"file": (io.BytesIO(kermany_bytes), "x.jpeg")}
    answer = client.post("/api/predict?heatmaps=none&images=false", data=upload)
    assert answer.status_code == 200 and not fresh.predictor.model_built
    assert answer.get_json()["heatmap_grid"] is None  # measured on the torch model: not built
    upload = {"file": (io.BytesIO(kermany_bytes), "x.jpeg")}
    answer = client.post("/api/predict?heatmaps=top&images=false", data=upload)
    assert answer.status_code == 200 and answer.get_json()["heatmaps"]
    assert fresh.predictor.model_built and answer.get_json()["heatmap_grid"] == 2  # 48 px / 32


def test_pydicom_chatter_is_logged_at_debug_only():
    import logging

    from cxr.serve.server import configure_logging

    pydicom_log = logging.getLogger("pydicom")
    try:
        configure_logging("info")
        assert not pydicom_log.isEnabledFor(logging.ERROR)  # a bad upload's traceback: hidden
        assert logging.getLogger("cxr.access").isEnabledFor(logging.INFO)
        configure_logging("debug")
        assert pydicom_log.isEnabledFor(logging.DEBUG)
    finally:
        pydicom_log.setLevel(logging.NOTSET)
        logging.getLogger().setLevel(logging.WARNING)
