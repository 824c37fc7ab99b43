"""hdme run: files frame by frame, live sources (latest frame, reconnects), sinks, Ctrl-C."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.conventions import load_sigma_map
from hdme.errors import HdmeError
from hdme.runtime.backends import create_backend
from hdme.runtime.pipeline import StreamPipeline, parse_size
from hdme.runtime.sinks import MapSink, Sink, VideoSink
from hdme.runtime.sources import LiveSource, VideoFileSource, classify_source, gstreamer_pipeline, open_source
from runtime_support import shaped_onnx, textured_rgb, tiny_onnx, write_video


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("models") / "tiny.onnx")


def count_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_run_video_saves_a_playable_video_with_every_frame(onnx_path, tmp_path):
    video = write_video(tmp_path / "in.mp4", frames=20, h=64, w=80)
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(app, ["run", str(video), "--model", str(onnx_path), "--save-video", str(out),
                                      "--save-maps", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    assert "20 frames" in result.output and "0 dropped" in result.output
    assert count_frames(out) == 20
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == 64 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) > 160
    maps = sorted((tmp_path / "maps").glob("*.png"))
    assert len(maps) == 20 and load_sigma_map(maps[0]).shape == (64, 80)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_resized_frames_give_sigma_in_frame_pixels(tmp_path):
    model = tiny_onnx(tmp_path / "const.onnx", constant=0.2)  # 2 px at the model's resolution
    video = write_video(tmp_path / "in.avi", frames=3, h=64, w=96)
    stats = StreamPipeline(VideoFileSource(video), create_backend(model), [MapSink(tmp_path / "m", "npy")], size=(32, 48)).run()
    assert stats.frames == 3
    sigma = np.load(tmp_path / "m" / "000000.npy")
    assert sigma.shape == (64, 96)
    np.testing.assert_allclose(sigma, 4.0, atol=1e-3)  # half-size frames: 2 px there is 4 px here


def test_stream_tta_matches_the_photo_predictor(tmp_path):
    from hdme.runtime.predict import DefocusPredictor

    model = tiny_onnx(tmp_path / "m8.onnx", multiple=8)  # frames of 37×53 are padded
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "f0.png"), cv2.cvtColor(textured_rgb(37, 53, seed=3), cv2.COLOR_RGB2BGR))
    for tta in ("none", "flip4"):
        StreamPipeline(open_source(str(folder)), create_backend(model), [MapSink(tmp_path / tta, "npy")], tta=tta).run()
        expected = DefocusPredictor(model, tta=tta).predict(textured_rgb(37, 53, seed=3))
        np.testing.assert_allclose(np.load(tmp_path / tta / "f0.npy"), expected, atol=1e-5)
    assert not np.allclose(np.load(tmp_path / "none" / "f0.npy"), np.load(tmp_path / "flip4" / "f0.npy"), atol=1e-3)


def test_saved_video_gets_normal_permissions_and_max_frames_below_one_is_refused(onnx_path, tmp_path):
    import os

    video = write_video(tmp_path / "in.avi", frames=2)
    old = os.umask(0o022)
    try:
        with VideoFileSource(video) as src:
            StreamPipeline(src, create_backend(onnx_path), [VideoSink(tmp_path / "out.avi")]).run()
    finally:
        os.umask(old)
    assert (tmp_path / "out.avi").stat().st_mode & 0o777 == 0o644
    with VideoFileSource(video) as src, pytest.raises(HdmeError, match="at least 1"):
        StreamPipeline(src, create_backend(onnx_path), max_frames=-1)


def test_max_frames_and_truncated_video_end_cleanly(onnx_path, tmp_path):
    video = write_video(tmp_path / "in.avi", frames=20, h=48, w=64)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])
    backend = create_backend(onnx_path)
    stats = StreamPipeline(VideoFileSource(cut), backend).run()
    assert 5 <= stats.frames < 20
    stats = StreamPipeline(VideoFileSource(video), backend, max_frames=7).run()
    assert stats.frames == 7


def test_image_folder_skips_and_counts_corrupt_frames(onnx_path, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"f{i}.png"), textured_rgb(40, 56, seed=i))
    (folder / "f1b.png").write_bytes(b"broken")
    messages = []
    source = open_source(str(folder), on_message=messages.append)
    stats = StreamPipeline(source, create_backend(onnx_path), [MapSink(tmp_path / "maps", "npy")]).run()
    assert (stats.frames, stats.corrupt) == (3, 1)
    assert any("f1b.png" in m for m in messages)
    assert sorted(p.stem for p in (tmp_path / "maps").glob("*.npy")) == ["f0", "f1", "f2"]


def test_maps_saved_inside_the_frame_folder_are_not_read_as_frames_next_time(onnx_path, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"f{i}.png"), textured_rgb(40, 56, seed=i))
    for _ in range(2):
        stats = StreamPipeline(open_source(str(folder)), create_backend(onnx_path), [MapSink(folder / "maps", "png")]).run()
        assert stats.frames == 2
    assert sorted(p.name for p in (folder / "maps").glob("*.png")) == ["f0.png", "f1.png"]


def test_run_on_images_says_when_they_were_compressed_hard_enough_to_read_blur_low(onnx_path, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, quality in enumerate((20, 90, 25)):
        cv2.imwrite(str(folder / f"f{i}.jpg"), textured_rgb(40, 56, seed=i), [cv2.IMWRITE_JPEG_QUALITY, quality])
    result = CliRunner().invoke(app, ["run", str(folder), "--model", str(onnx_path)])
    assert result.exit_code == 0, result.output
    assert "2 of 3 frames saved as JPEG below quality 30 (down to about 20)" in result.output
    result = CliRunner().invoke(app, ["run", str(folder / "f1.jpg"), "--model", str(onnx_path)])
    assert result.exit_code == 0 and "saved as JPEG" not in result.output


class _InterruptAfter(Sink):
    def __init__(self, n: int) -> None:
        self.n = n

    def write(self, frame_bgr, sigma, name):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return True


def test_ctrl_c_finalises_the_video(onnx_path, tmp_path):
    video = write_video(tmp_path / "in.avi", frames=20, h=64, w=64)
    out = tmp_path / "out.avi"
    sinks = [VideoSink(out, fps=10), _InterruptAfter(6)]
    stats = StreamPipeline(VideoFileSource(video), create_backend(onnx_path), sinks).run()
    assert stats.interrupted
    assert count_frames(out) == 6  # every frame the video sink got before the interrupt, playable
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


class FakeCamera:
    """A camera delivering numbered frames every ``period`` s; after ``unplug_after`` frames it
    stops delivering (unplugged)."""

    def __init__(self, counter: list[int], period: float = 0.002, unplug_after: int | None = None) -> None:
        self.counter, self.period, self.left = counter, period, unplug_after
        self.released = False

    def read(self):
        time.sleep(self.period)
        if self.left is not None:
            if self.left <= 0:
                return False, None
            self.left -= 1
        self.counter[0] += 1
        frame = np.zeros((8, 8, 3), np.uint8)
        frame[0, 0, :2] = divmod(self.counter[0], 256)
        return True, frame

    def release(self):
        self.released = True


def frame_number(frame) -> int:
    hi, lo = frame.image[0, 0, :2]
    return int(hi) * 256 + int(lo)


def test_live_source_keeps_only_the_latest_frame():
    counter = [0]
    camera = FakeCamera(counter)
    source = LiveSource(lambda: camera, "fake camera", on_message=lambda m: None)
    try:
        gaps = []
        for _ in range(5):
            time.sleep(0.05)  # a consumer much slower than the camera
            frame = source.read()
            gaps.append(counter[0] - frame_number(frame))
        assert max(gaps) <= 5, gaps  # (nearly) the newest frame; a queue would lag by ~25 per read
        assert source.dropped >= 20
    finally:
        source.close()
    assert camera.released


def test_live_source_releases_a_capture_that_opens_after_close_gave_up_waiting():
    counter, cameras = [0], []
    opening, may_open = threading.Event(), threading.Event()

    def opener():  # a stream server that answers only after close() has stopped waiting for it
        if not opening.is_set():
            opening.set()
            return None
        may_open.wait(5)
        cameras.append(FakeCamera(counter))
        return cameras[-1]

    source = LiveSource(opener, "slow stream", on_message=lambda m: None, backoff=0.01)
    source.close_timeout = 0.05
    deadline = time.perf_counter() + 5
    while not source._thread.is_alive() and time.perf_counter() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # the capture thread now waits inside the second open
    source.close()
    assert source.read() is None  # close() returned: the source has ended for its reader
    may_open.set()
    source._thread.join(5)
    assert not source._thread.is_alive() and len(cameras) == 1 and cameras[0].released


def test_live_source_reconnects_with_back_off():
    counter = [0]
    opens = []
    messages = []

    def opener():
        opens.append(time.perf_counter())
        if 2 <= len(opens) <= 3:  # unplugged: the first two reopen attempts fail
            return None
        return FakeCamera(counter, unplug_after=5 if len(opens) == 1 else None)

    source = LiveSource(opener, "fake camera", on_message=messages.append, backoff=0.02, max_backoff=0.1)
    try:
        seen = []
        deadline = time.perf_counter() + 5
        while len(seen) < 8 and time.perf_counter() < deadline:
            seen.append(frame_number(source.read()))
        assert len(seen) == 8 and seen == sorted(seen)
        assert source.reconnects == 1 and len(opens) == 4
        delays = [float(m.split("reconnecting in ")[1].split(" s")[0]) for m in messages if "reconnecting in" in m]
        assert delays == [0.02, 0.04, 0.08]
        assert opens[3] - opens[2] >= 0.075 and opens[2] - opens[1] >= 0.035  # the waits grew
        assert messages[-1] == "fake camera: reconnected"
    finally:
        source.close()


class SilentStream(FakeCamera):
    """A stream whose server goes silent after ``unplug_after`` frames: each read then waits
    ``wait`` s before it fails, as FFmpeg's read timeout does."""

    def __init__(self, counter: list[int], unplug_after: int, wait: float) -> None:
        super().__init__(counter, unplug_after=unplug_after)
        self.wait, self.silent_reads = wait, 0

    def read(self):
        if self.left is not None and self.left <= 0:
            self.silent_reads += 1
            time.sleep(self.wait)
            return False, None
        return super().read()


def test_live_source_reconnects_after_one_read_that_waited_in_vain():
    counter, streams, messages = [0], [], []

    def opener():
        streams.append(SilentStream(counter, unplug_after=3 if not streams else None, wait=0.3))
        return streams[-1]

    source = LiveSource(opener, "rtsp stream", on_message=messages.append, backoff=0.01, stall_s=0.2)
    try:
        seen = [frame_number(source.read()) for _ in range(6)]
        assert seen == sorted(seen) and len(streams) == 2
        assert streams[0].silent_reads == 1 and streams[0].released  # not fail_reads (3) waits
        assert messages[-1] == "rtsp stream: reconnected"
    finally:
        source.close()


def test_live_source_gives_up_after_max_reconnects():
    counter = [0]
    calls = []

    def opener():
        calls.append(1)
        return FakeCamera(counter, unplug_after=2) if len(calls) == 1 else None

    source = LiveSource(opener, "fake camera", on_message=lambda m: None, backoff=0.01, max_reconnects=2)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    assert len(frames) >= 1 and len(calls) == 3
    source.close()
    never = LiveSource(lambda: None, "camera 9", on_message=lambda m: None, backoff=0.01, max_reconnects=2)
    assert never.read() is None
    never.close()


def test_live_source_that_is_not_up_yet_is_waited_for():
    counter = [0]
    opens, messages = [], []

    def opener():  # a camera or server that comes up on the third try
        opens.append(1)
        return FakeCamera(counter) if len(opens) >= 3 else None

    source = LiveSource(opener, "late camera", on_message=messages.append, backoff=0.02, max_backoff=0.1)
    try:
        frame = source.read()
        # the source keeps only the latest frame, so a busy machine may have dropped the first one;
        # either way indices count the camera's frames from its first, not the failed attempts
        assert frame is not None and frame.index == frame_number(frame) - 1 and len(opens) == 3
        assert messages[0] == "late camera: not available yet, connecting in 0.02 s (attempt 1)"
        assert messages[-1] == "late camera: connected" and source.reconnects == 0
    finally:
        source.close()


def test_live_source_through_the_pipeline_drops_instead_of_lagging(onnx_path):
    counter = [0]
    source = LiveSource(lambda: FakeCamera(counter, period=0.001), "fake camera", on_message=lambda m: None)

    class Slow(Sink):
        def write(self, frame_bgr, sigma, name):
            time.sleep(0.02)
            return True

    # The pipeline is under test, not an engine: ONNX Runtime, installed everywhere, keeps it comparable.
    stats = StreamPipeline(source, create_backend(onnx_path, "onnxruntime"), [Slow()], size=(32, 32), max_frames=10).run()
    assert stats.frames == 10 and stats.dropped > 10
    assert max(stats.stage_ms["end-to-end"]) < 500


class _SlowSink(Sink):
    def write(self, frame_bgr, sigma, name):
        time.sleep(0.04)
        return True


class _InFlight(Sink):
    """Records, at each frame it gets, how many frames the pipeline has read but not yet delivered."""

    def __init__(self, source) -> None:
        self.source, self.written, self.in_flight = source, 0, []

    def write(self, frame_bgr, sigma, name):
        self.written += 1
        self.in_flight.append(self.source.reads - self.written)
        return True


@pytest.mark.parametrize("busy", ["model", "sinks"])
def test_live_frames_do_not_queue_behind_a_busy_model_or_busy_sinks(onnx_path, busy):
    class CountedLiveSource(LiveSource):
        reads = 0

        def read(self):
            frame = super().read()
            self.reads += 1
            return frame

    counter = [0]
    source = CountedLiveSource(lambda: FakeCamera(counter, period=0.001), "fake camera", on_message=lambda m: None)
    probe = _InFlight(source)
    # Frames enlarged for the model so that inference, not the camera, sets the pace; or slow sinks.
    size, sinks = ((480, 640), [probe]) if busy == "model" else ((32, 32), [probe, _SlowSink()])
    StreamPipeline(source, create_backend(onnx_path), sinks, size=size, max_frames=12).run()
    # Read while the model or the sinks are busy, frames would queue up (up to six here) and each
    # would wait for all ahead of it; read when they are free, the sinks hold one frame and the
    # model the next.
    assert max(probe.in_flight) <= 1, probe.in_flight


def test_classify_sources(tmp_path):
    video = write_video(tmp_path / "v.avi", frames=2)
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(40, 40))
    assert classify_source("0") == "camera"
    assert classify_source("rtsp://cam.local:554/stream") == "url"
    assert classify_source("HTTP://host/mjpg") == "url"
    assert classify_source("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv") == "gstreamer"
    assert classify_source(str(tmp_path)) == "folder"
    assert classify_source(str(tmp_path / "a.png")) == "image"
    assert classify_source(str(video)) == "video"
    with pytest.raises(HdmeError, match="no such file"):
        classify_source(str(tmp_path / "missing.mp4"))
    assert gstreamer_pipeline("v4l2src").endswith("appsink drop=true max-buffers=1 sync=false")
    assert gstreamer_pipeline("v4l2src ! appsink name=s") == "v4l2src ! appsink name=s"
    assert parse_size("480x640") == (480, 640)
    with pytest.raises(HdmeError):
        parse_size("480by640")


def test_run_bad_source_and_bad_sink_are_one_line(onnx_path, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    result = CliRunner().invoke(app, ["run", str(junk), "--model", str(onnx_path)])
    assert isinstance(result.exception, HdmeError) and "not a readable video" in str(result.exception)
    video = write_video(tmp_path / "v.avi", frames=2)
    result = CliRunner().invoke(app, ["run", str(video), "--model", str(onnx_path), "--save-video", str(tmp_path / "o.gifv")])
    assert isinstance(result.exception, HdmeError) and "videos are written as" in str(result.exception)
    assert threading.active_count() < 10
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"not a jpeg")
    result = CliRunner().invoke(app, ["run", str(bad_image), "--model", str(onnx_path)])
    assert isinstance(result.exception, HdmeError), result.output
    assert str(result.exception) == f"{bad_image}: no frame could be read (1 unreadable)"
    # a mistyped source fails before the engine loads: no backend line is printed
    result = CliRunner().invoke(app, ["run", str(tmp_path / "missing.mp4"), "--model", str(onnx_path)])
    assert isinstance(result.exception, HdmeError) and "no such file" in str(result.exception)
    assert "backend" not in result.output


def test_display_without_a_desktop_is_one_line(monkeypatch):
    from hdme.runtime.sinks import DisplaySink

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if not __import__("sys").platform.startswith("linux"):
        pytest.skip("the display check applies to Linux desktops")
    with pytest.raises(HdmeError, match="a display window needs a desktop session"):
        DisplaySink()


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["rtsp", "camera"])
def test_run_waits_for_a_source_that_is_not_up_and_native_libraries_stay_quiet(onnx_path, kind):
    import signal
    import subprocess
    import sys

    source = f"rtsp://127.0.0.1:{_free_loopback_port()}/late" if kind == "rtsp" else "97"
    code = f"import sys; sys.argv = ['hdme', 'run', {source!r}, '--model', {str(onnx_path)!r}]; from hdme.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # also under a background job
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 60  # starting up takes long on a loaded machine
        while len(lines) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)  # two attempts: it waits with back-off instead of giving up
        still_waiting = proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    assert still_waiting, err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(f"{'camera ' if kind == 'camera' else ''}{source}: not available yet, connecting in")
                         for line in lines), err


def test_stream_options_do_not_leak_into_video_files_opened_later(onnx_path, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    stream = open_source(f"rtsp://127.0.0.1:{_free_loopback_port()}/x", on_message=lambda m: None,
                         backoff=0.01, max_reconnects=1)
    assert stream.read() is None  # nothing listens: one attempt, then it gives up
    stream.close()
    # FFmpeg's low-delay stream flags, left in the environment, made a file lose frames
    assert "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in __import__("os").environ
    video = write_video(tmp_path / "in.mp4", frames=20, h=64, w=80)
    with VideoFileSource(video) as src:
        assert sum(1 for _ in iter(src.read, None)) == 20


def test_run_stats_keep_a_bounded_window_of_latencies():
    from hdme.runtime.pipeline import STATS_WINDOW, RunStats

    stats = RunStats()
    for i in range(STATS_WINDOW + 500):
        stats.stage_ms["infer"].append(float(i))
    assert len(stats.stage_ms["infer"]) == STATS_WINDOW
    # the summary speaks of the last STATS_WINDOW frames: the 500 oldest samples are gone
    assert stats.summary()["stages"]["infer"]["min"] == 500.0


def test_a_run_that_fails_midway_reports_its_own_error_and_keeps_the_video(tmp_path):
    # The second frame is of a size the fixed-size model rejects: the run fails after one frame.
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "000.png"), textured_rgb(64, 64))
    cv2.imwrite(str(frames / "001.png"), textured_rgb(40, 48))
    fixed = shaped_onnx(tmp_path / "fixed.onnx", [1, 3, 64, 64], 1)
    out = tmp_path / "out.avi"
    result = CliRunner().invoke(app, ["run", str(frames), "--model", str(fixed), "--backend", "onnxruntime",
                                      "--save-video", str(out)])
    assert isinstance(result.exception, HdmeError), result.exception
    assert "fixed.onnx failed on a [1,3,40,48] input" in str(result.exception)
    assert out.is_file() and cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp.avi")] == []
