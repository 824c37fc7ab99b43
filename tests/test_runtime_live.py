"""hdme run --serve: the live page's endpoints over real HTTP, stalled viewers, a real browser."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.errors import HdmeError
from hdme.runtime.backends import create_backend
from hdme.runtime.live import BOUNDARY, HISTORY_S, LiveServer, LiveView, parse_address
from headless_chromium import HeadlessChromium, find_chromium
from runtime_support import PacedSource, served_pipeline, textured_rgb, tiny_onnx, write_video

BAR = 56  # px of the scale bar right of the σ map


@pytest.fixture(scope="module")
def constant_model(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("models") / "const.onnx", constant=0.2)  # σ = 2 px everywhere


def live_run(model, h=48, w=64, fps=60.0, max_fps=10.0, images=None):
    """A pipeline on a paced fake source, served on an ephemeral port of 127.0.0.1."""
    images = images or [cv2.cvtColor(textured_rgb(h, w, seed=i), cv2.COLOR_RGB2BGR) for i in range(3)]
    return served_pipeline(PacedSource(images, fps=fps), create_backend(model, "onnxruntime"), max_fps)


def get(url: str, method: str = "GET", timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def stats(server) -> dict:
    return json.loads(get(server.url + "api/stats")[1])


def wait_until(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def mjpeg_parts(url: str, count: int) -> list[tuple[int, np.ndarray]]:
    """The first ``count`` pictures of an MJPEG stream, with their frame numbers."""
    parts = []
    with urllib.request.urlopen(url + "stream.mjpg", timeout=10) as r:
        assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        while len(parts) < count:
            if r.readline().strip() != f"--{BOUNDARY}".encode():
                continue
            headers = dict(line.decode().split(": ", 1) for line in iter(lambda: r.readline().strip(), b""))
            jpeg = r.read(int(headers["Content-Length"]))
            parts.append((int(headers["X-Frame"]), cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)))
    return parts


def test_parse_address():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    for bad in ("web", "host:", "70000", ":80x"):
        with pytest.raises(HdmeError, match="HOST:"):
            parse_address(bad)


def test_before_the_first_frame_the_page_says_it_waits(constant_model):
    with LiveServer(LiveView(create_backend(constant_model, "onnxruntime")), "127.0.0.1", 0) as server:
        figures = stats(server)
        assert (figures["frames"], figures["source_state"], figures["frame_size"]) == (0, "waiting for frames", None)
        assert get(server.url + "frame.jpg")[0] == 503
        assert get(server.url + "api/points?x=1&y=1", "POST")[0] == 400


def test_endpoints_give_the_page_figures_pictures_and_points(constant_model):
    with live_run(constant_model, h=48, w=64) as (server, view):
        status, page = get(server.url)
        assert status == 200 and b"stream.mjpg" in page and b"api/stats" in page
        first = wait_until(lambda: (s := stats(server))["frames"] >= 5 and s)
        assert first["engine"]["name"] == "onnxruntime" and first["engine"]["precision"] == "fp32"
        assert first["source_state"] == "streaming" and first["frame_size"] == [64, 48] and first["fps"] > 0
        infer = first["latency_ms"]["infer"]
        assert 0 < infer["p50"] <= infer["p99"]
        assert view.encoded == 0  # nobody watched: nothing was drawn or encoded

        status, jpeg = get(server.url + "frame.jpg")
        picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert status == 200 and picture.shape == (48, 2 * 64 + BAR, 3)

        status, body = get(server.url + "api/points?x=10&y=20", "POST")
        point = json.loads(body)
        assert status == 200 and (point["x"], point["y"]) == (10, 20) and point["sigma"] == pytest.approx(2.0, abs=1e-3)
        later = wait_until(lambda: (s := stats(server))["points"] and len(s["points"][0]["history"]) >= 5 and s)
        history = np.array(later["points"][0]["history"])
        assert np.all(history[:, 0] <= 0) and np.all(np.diff(history[:, 0]) >= 0)  # seconds before now, in order
        assert later["history_s"] == HISTORY_S  # the span the page draws its history over
        np.testing.assert_allclose(history[:, 1], 2.0, atol=1e-3)

        status, body = get(server.url + "api/points?x=64&y=3", "POST")
        assert status == 400 and "outside the 64x48 frame" in json.loads(body)["error"]
        assert get(server.url + "api/points?x=one", "POST")[0] == 400
        assert get(server.url + "api/points", "DELETE")[0] == 200 and stats(server)["points"] == []
        assert get(server.url + "nothing")[0] == 404


def test_viewers_get_the_latest_frames_at_the_capped_rate_and_share_the_encoding(constant_model):
    with live_run(constant_model, fps=100.0, max_fps=10.0) as (server, view):
        wait_until(lambda: view.latest >= 3)
        results, start = [None] * 3, time.perf_counter()

        def watch(k):
            results[k] = mjpeg_parts(server.url, 6)

        viewers = [threading.Thread(target=watch, args=(k,)) for k in range(3)]
        for t in viewers:
            t.start()
        for t in viewers:
            t.join(timeout=20)
        elapsed = time.perf_counter() - start
        for parts in results:
            numbers = [n for n, _ in parts]
            assert len(parts) == 6 and numbers == sorted(set(numbers))
            assert max(np.diff(numbers)) > 1  # frames arrived faster than pictures: viewers skip to the latest
            assert all(p.shape == (48, 2 * 64 + BAR, 3) for _, p in parts)
        assert view.encoded <= 10.0 * elapsed + 2  # three viewers, one encoding per picture


def test_a_stalled_viewer_blocks_neither_the_pipeline_nor_other_viewers(constant_model):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(2)]  # large JPEGs
    with live_run(constant_model, fps=60.0, max_fps=30.0, images=noise) as (server, view):
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = server.url.split("/")[2].split(":")
        stalled.connect((host, int(port)))
        stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        try:
            def stuck():  # that viewer takes no more pictures, while frames keep coming
                encoded, latest = view.encoded, view.latest
                time.sleep(1.0)
                return view.encoded == encoded and view.latest > latest

            assert wait_until(stuck, timeout=60)
            before = view.latest
            parts = mjpeg_parts(server.url, 5)  # another viewer is served meanwhile
            assert [n for n, _ in parts] == sorted({n for n, _ in parts}) and parts[0][0] >= before
            assert wait_until(lambda: view.latest >= before + 10, timeout=60)  # the pipeline kept going
            assert wait_until(lambda: view.viewers == 1)  # the other viewer left; the stalled one is still stuck
        finally:
            stalled.close()
        assert wait_until(lambda: view.viewers == 0)  # its connection thread ended once the socket went


def test_the_page_says_when_the_camera_is_reconnecting(constant_model):
    from hdme.runtime.sources import LiveSource
    from test_runtime_stream import FakeCamera

    counter, opens = [0], []

    def opener():  # frames, unplugged, two failed reopen attempts, then frames again
        opens.append(1)
        if 2 <= len(opens) <= 3:
            return None
        return FakeCamera(counter, period=0.02, unplug_after=10 if len(opens) == 1 else None)

    source = LiveSource(opener, "fake camera", on_message=lambda m: None, backoff=0.3, max_backoff=0.6)
    with served_pipeline(source, create_backend(constant_model, "onnxruntime"), 10.0) as (server, view):
        source.on_message = view.note_source_message  # as hdme run wires them
        states = []
        deadline = time.monotonic() + 20
        while len(opens) < 4 or stats(server)["frames"] < 20:
            assert time.monotonic() < deadline, states
            states.append(stats(server)["source_state"])
            time.sleep(0.02)
        reconnecting = [s for s in states if s == "reconnecting"]
        assert reconnecting and states.index("reconnecting") > states.index("streaming")
        assert wait_until(lambda: stats(server)["source_state"] == "streaming")
        assert stats(server)["source_message"] == "fake camera: reconnected"


def test_run_serve_keeps_the_last_frame_until_ctrl_c(constant_model, tmp_path):
    video = write_video(tmp_path / "v.avi", frames=12, h=48, w=64)
    hdme = Path(sys.executable).with_name("hdme")
    proc = subprocess.Popen([str(hdme), "run", str(video), "--model", str(constant_model), "--serve", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a hung run fails the test instead of hanging it
    watchdog.start()
    try:
        url = next(line.split("live view: ")[1].strip() for line in proc.stdout if "live view: " in line)
        assert url.startswith("http://127.0.0.1:")
        ended = wait_until(lambda: (s := json.loads(get(url + "api/stats")[1]))["source_state"] == "ended" and s, 30)
        assert ended["frames"] == 12 and ended["source"] == str(video)
        assert get(url + "frame.jpg")[0] == 200
        output = ""
        for line in proc.stdout:
            output += line
            if "still serving its last frame" in line:
                break
        assert get(url + "api/stats")[0] == 200  # still up after the run's summary
        proc.send_signal(signal.SIGINT)
        output += proc.communicate(timeout=20)[0]
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "12 frames" in output and "still serving its last frame" in output


def test_run_serve_ends_with_max_frames_instead_of_waiting(constant_model, tmp_path):
    video = write_video(tmp_path / "v.avi", frames=12, h=48, w=64)
    hdme = Path(sys.executable).with_name("hdme")
    # A run that kept serving would wait for Ctrl-C: the timeout fails the test instead of hanging it.
    result = subprocess.run([str(hdme), "run", str(video), "--model", str(constant_model), "--serve", "127.0.0.1:0",
                             "--max-frames", "5"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 frames" in result.stdout and "still serving" not in result.stdout


def test_run_serve_bad_address_is_one_line(constant_model, tmp_path):
    video = write_video(tmp_path / "v.avi", frames=2)
    result = CliRunner().invoke(app, ["run", str(video), "--model", str(constant_model), "--serve", "localhost:web"])
    assert isinstance(result.exception, HdmeError) and "[HOST:]PORT" in str(result.exception)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["run", str(video), "--model", str(constant_model), "--serve", str(port)])
    assert isinstance(result.exception, HdmeError) and f"cannot serve on 127.0.0.1:{port}" in str(result.exception)


# The page's pixels as a number, so a test can tell that the streamed picture changes.
PICTURE_DIGEST = """(() => {
  const img = document.getElementById("stream");
  if (!img.naturalWidth) return null;
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d"); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let h = 0; for (let k = 0; k < d.length; k += 7) h = (h * 31 + d[k]) >>> 0;
  return [img.naturalWidth, h];
})()"""


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_the_page_plays_in_a_headless_browser(constant_model):
    with live_run(constant_model, h=120, w=160, fps=30.0, max_fps=15.0) as (server, view):
        with HeadlessChromium(find_chromium()) as browser:
            browser.open(server.url)
            width, first = browser.wait_for(PICTURE_DIGEST)
            assert width == 2 * 160 + BAR
            assert browser.wait_for(f"(({PICTURE_DIGEST}) || [0, {first}])[1] !== {first}")  # new frames arrive
            frames = int(browser.wait_for("document.getElementById('frames').textContent"))
            assert browser.wait_for(f"+document.getElementById('frames').textContent > {frames}")  # figures update
            assert browser.evaluate("document.getElementById('engine').textContent").startswith("onnxruntime fp32")
            assert browser.evaluate("document.getElementById('state').textContent") == "streaming"

            left, top = browser.evaluate("(r => [r.left, r.top])(document.getElementById('stream').getBoundingClientRect())")
            browser.click(left + 160 + 100, top + 30)  # on the σ map, at frame pixel (100, 30)
            listed = browser.wait_for("document.getElementById('pointlist').textContent")
            assert "(100, 30)" in listed and "σ = 2.00 px" in listed
            assert browser.evaluate("document.querySelectorAll('.mark').length") == 2  # on the frame and the map
            assert stats(server)["points"][0]["x"] == 100
