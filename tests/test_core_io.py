import subprocess
import sys

import cv2
import numpy as np
import pytest

from hdme import conventions, datasets
from hdme.errors import HdmeError
from hdme.images import expand_inputs, read_image


def test_sigma_map_round_trip_png_and_npy(tmp_path, rng):
    sigma = rng.uniform(0, 10, (17, 23)).astype(np.float32)
    conventions.save_sigma_map(tmp_path / "m.npy", sigma)
    conventions.save_sigma_map(tmp_path / "m.png", sigma)
    assert np.array_equal(conventions.load_sigma_map(tmp_path / "m.npy"), sigma)
    png = conventions.load_sigma_map(tmp_path / "m.png")
    assert np.abs(png - sigma).max() <= 0.0005 + 1e-6
    raw = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw[0, 0] == round(1000 * float(sigma[0, 0]))
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_sigma_map_errors(tmp_path):
    with pytest.raises(HdmeError, match="no such map"):
        conventions.load_sigma_map(tmp_path / "missing.png")
    cv2.imwrite(str(tmp_path / "8bit.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(HdmeError, match="16-bit"):
        conventions.load_sigma_map(tmp_path / "8bit.png")
    with pytest.raises(HdmeError, match=".npy or .png"):
        conventions.save_sigma_map(tmp_path / "x.jpg", np.zeros((4, 4)))


def test_rescale_sigma_scales_values_with_resolution():
    sigma = np.full((100, 200), 2.0, np.float32)
    half = conventions.rescale_sigma(sigma, (100, 200), (50, 100))
    assert half.shape == (50, 100) and np.allclose(half, 1.0)
    double = conventions.rescale_sigma(sigma, (100, 200), (200, 400))
    assert np.allclose(double, 4.0)


def test_colorize_uses_fixed_scale():
    a = conventions.colorize(np.array([[0.0, 10.0]]))
    b = conventions.colorize(np.array([[0.0, 5.0]]))
    # 5 px must not be stretched to the top colour as a per-frame min–max would.
    assert not np.array_equal(a[0, 1], b[0, 1])
    assert np.array_equal(a[0, 0], b[0, 0])
    pic = conventions.side_by_side(np.zeros((80, 60, 3), np.uint8), np.ones((80, 60), np.float32))
    assert pic.shape[0] == 80 and pic.shape[1] > 120


def test_read_image_variants(tmp_path):
    grey = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)
    cv2.imwrite(str(tmp_path / "g16.png"), grey)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8)]))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    img = read_image(tmp_path / "g16.png")
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    # Fully transparent pixels composite on white.
    assert read_image(tmp_path / "rgba.png").min() == 255
    for name, msg in [("corrupt.jpg", "corrupt"), ("empty.png", "empty"), ("notes.txt", "unsupported"), ("nope.png", "no such")]:
        with pytest.raises(HdmeError, match=msg):
            read_image(tmp_path / name)
    assert [p.name for p in expand_inputs([tmp_path])] == ["corrupt.jpg", "empty.png", "g16.png", "rgba.png"]


def test_real_datasets_load_with_right_polarity():
    if datasets.shared_data_dir() is None:
        pytest.skip("../shared/data is not present")
    rtf = datasets.load_dataset("rtf")
    assert len(rtf) == 3 and rtf[0].sigma.shape == rtf[0].image.shape[:2]
    assert 0.29 < rtf[0].sigma.min() and rtf[0].sigma.max() <= 3.3
    for name in ("cuhk", "dut"):
        samples = datasets.load_dataset(name)
        assert samples and all(s.in_focus.shape == s.image.shape[:2] for s in samples)
        # In-focus regions carry more high-frequency energy than blurred ones (checks the mask polarity).
        ratios = []
        for s in samples:
            lap = np.abs(cv2.Laplacian(cv2.cvtColor(s.image, cv2.COLOR_RGB2GRAY), cv2.CV_64F))
            if s.in_focus.any() and (~s.in_focus).any():
                ratios.append(lap[s.in_focus].mean() / max(lap[~s.in_focus].mean(), 1e-6))
        assert np.median(ratios) > 1.5


def test_missing_dataset_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HDME_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "shared_data_dir", lambda: None)
    with pytest.raises(HdmeError, match="not found"):
        datasets.load_dataset("rtf")


def test_cli_imports_without_torch():
    code = "import sys, hdme.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os

    from hdme.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_side_by_side_on_frames_smaller_than_the_bar_labels():
    for h in (1, 20, 63, 64, 300):
        pic = conventions.side_by_side(np.zeros((h, 40, 3), np.uint8), np.zeros((h, 40), np.float32))
        assert pic.shape[0] == h


def jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``rgb`` whose EXIF (APP1) says ``orientation`` (1–8), as cameras write it."""
    import struct

    jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


# What a viewer shows for each EXIF orientation, from the stored pixels.
SHOWN = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
         5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
         8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_gives_the_layout_viewers_show(tmp_path, orientation):
    stored = np.zeros((40, 64, 3), np.uint8)
    stored[:10, :16] = 255  # a white block in the stored top-left corner
    stored[:, :, 1] = np.linspace(0, 200, 64, dtype=np.uint8)[None, :]
    (tmp_path / "p.jpg").write_bytes(jpeg_with_orientation(stored, orientation))
    img = read_image(tmp_path / "p.jpg")
    expected = SHOWN[orientation](stored)
    assert img.shape == expected.shape
    assert np.abs(img.astype(int) - expected).mean() < 4


def test_float_tiff_range_ignores_non_finite_pixels_and_all_nan_is_refused(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (32, 1))
    cv2.imwrite(str(tmp_path / "clean.tiff"), ramp)
    dirty = ramp.copy()
    dirty[5, 7], dirty[6, 8], dirty[7, 9] = np.inf, np.nan, -np.inf
    cv2.imwrite(str(tmp_path / "dirty.tiff"), dirty)
    cv2.imwrite(str(tmp_path / "nan.tiff"), np.full((32, 48), np.nan, np.float32))
    clean, read = read_image(tmp_path / "clean.tiff"), read_image(tmp_path / "dirty.tiff")
    assert clean.max() == 255
    mask = np.ones((32, 48), bool)
    mask[5:8] = False
    np.testing.assert_array_equal(read[mask], clean[mask])  # one inf does not turn 0–1 into 0–255
    assert read[5, 7, 0] == 255 and read[6, 8, 0] == 0 and read[7, 9, 0] == 0
    with pytest.raises(HdmeError, match="no finite pixel values"):
        read_image(tmp_path / "nan.tiff")


def test_native_decoder_messages_become_part_of_the_one_line(tmp_path, capfd):
    png = bytearray(cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes())
    png[20] ^= 0xFF  # breaks the header's checksum: libpng complains on stderr
    (tmp_path / "crc.png").write_bytes(bytes(png))
    with pytest.raises(HdmeError, match=r"crc.png: corrupt or unreadable image \(libpng error: IHDR: CRC error\)"):
        read_image(tmp_path / "crc.png")
    assert capfd.readouterr().err == ""


def test_listing_skips_hidden_and_temporary_files_and_an_excluded_folder(tmp_path):
    for rel in ("a.png", ".hidden.png", ".a.k3j4h5g6.tmp.png", ".cache/b.png", "maps/a.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.png", "a.png"]
    assert [p.relative_to(tmp_path).as_posix() for p in expand_inputs([tmp_path], exclude=tmp_path / "maps")] == ["a.png"]


def test_listing_skips_the_folders_earlier_predictions_wrote(tmp_path):
    from hdme.images import PREDICTION_MARKER

    for rel in ("a.png", "trip/b.png", "maps/a.png", "trip/maps2/b.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "maps" / PREDICTION_MARKER).touch()
    (tmp_path / "trip" / "maps2" / PREDICTION_MARKER).touch()
    assert [p.relative_to(tmp_path).as_posix() for p in expand_inputs([tmp_path])] == ["a.png", "trip/b.png"]
    # an output folder named as the input is read: the user asked for it
    assert [p.name for p in expand_inputs([tmp_path / "maps"])] == ["a.png"]


def test_help_shows_flags_without_a_value_and_every_option_explained():
    import os

    commands = [["run"], ["train"], ["data", "make"], ["export", "onnx"]]
    code = (f"from hdme.cli import command\nfor args in {commands!r}:\n    print('=' * 20)\n"
            "    try:\n        command()([*args, '--help'], prog_name='hdme')\n    except SystemExit:\n        pass\n")
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"),
                          check=True).stdout
    sections = text.split("=" * 20)[1:]
    assert len(sections) == len(commands)
    for cmd, section in zip(commands, sections):
        rows = [line.strip("│ ").split() for line in section.splitlines() if line.strip("│ ").startswith("--")]
        assert rows and not any("<bool>" in row for row in rows), (cmd, section)
        assert all(len(row) > 2 for row in rows), (cmd, [row for row in rows if len(row) <= 2])
