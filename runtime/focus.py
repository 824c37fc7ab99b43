"""Uses of a defocus map: autofocus from a focus sweep, and thin-lens depth (paper Sec. 1, Fig. 9, Eq. 2).

Focus sweep. While the lens or sensor moves by equal steps, the blur-circle radius of a scene point
grows linearly with the distance from its in-focus position, and the camera's own blur adds in
quadrature: σ_k² ≈ a²(k − k_f)² + σ_floor². σ² is therefore a parabola in the frame index, and the
parabola through σ² at the frame of minimum σ and its two neighbours gives the in-focus position k_f
to a fraction of a frame. The defocus of a point along a sweep is unimodal; a curve that is not says
the point moved, was occluded, or the map is unreliable there. A frame that cannot be read keeps its
place in the sweep as a gap, so the frames after it keep their step positions.

Depth. Thin lens (paper Eq. 2): a point at distance u, with the lens focused at D, spreads into a
blur circle of radius R = f·s/(2N)·|1/D − 1/u| on the sensor, s = f·D/(D − f) the lens-to-sensor
distance, N the f-number. hdme's σ is the second-moment σ of the PSF, and a disc of radius r has
σ = r/2, so the blur-circle radius is R = 2σ pixels (not the paper's √2σ, a Gaussian convention that
would read discs 1.4× too sharp). One σ gives two distances: a point nearer than D and a point
farther than D blur equally. Without a second cue (a second focus setting, a known side) both are
answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdme.console import make_console
from hdme.errors import HdmeError

POINT_RADIUS = 2  # px: a point's σ is the median over a (2r+1)² window, robust to a stray pixel
BLUR_RADIUS_PER_SIGMA = 2.0  # disc radius / second-moment σ


# ---------------------------------------------------------------------------------------------
# Focus sweep


@dataclass
class Target:
    """A point (w = h = 0) or a region x, y, w, h in pixels of the frames."""

    x: int
    y: int
    w: int = 0
    h: int = 0

    @property
    def label(self) -> str:
        return f"({self.x},{self.y})" if self.w == 0 else f"({self.x},{self.y},{self.w}x{self.h})"

    def window(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        height, width = shape
        if self.w == 0:
            x0, x1 = self.x - POINT_RADIUS, self.x + POINT_RADIUS + 1
            y0, y1 = self.y - POINT_RADIUS, self.y + POINT_RADIUS + 1
        else:
            x0, x1, y0, y1 = self.x, self.x + self.w, self.y, self.y + self.h
        if not (0 <= self.x < width and 0 <= self.y < height):
            raise HdmeError(f"target {self.label} lies outside the {width}x{height} frame")
        return slice(max(y0, 0), min(y1, height)), slice(max(x0, 0), min(x1, width))


def parse_targets(points: str | None, regions: str | None) -> list[Target]:
    """``"x,y;x,y"`` points and ``"x,y,w,h;…"`` regions → targets."""
    targets = []
    for text, arity in ((points, 2), (regions, 4)):
        for item in filter(None, (t.strip() for t in (text or "").split(";"))):
            try:
                values = [int(round(float(v))) for v in item.split(",")]
            except ValueError:
                values = []
            if len(values) != arity or min(values) < 0 or (arity == 4 and min(values[2:]) < 1):
                shape = "x,y" if arity == 2 else "x,y,w,h with w, h ≥ 1"
                raise HdmeError(f"'{item}' is not a {'point' if arity == 2 else 'region'} ({shape}, pixels)")
            targets.append(Target(*values))
    if not targets:
        raise HdmeError('give at least one point ("x,y;x,y") or region ("x,y,w,h")')
    return targets


def sample_sigma(sigma: np.ndarray, targets: list[Target]) -> np.ndarray:
    return np.array([float(np.median(sigma[t.window(sigma.shape)])) for t in targets], np.float64)


def focus_position(curve: np.ndarray) -> tuple[int, float]:
    """(frame of minimum σ, sub-frame in-focus position from the parabola through σ² there and at the
    nearest frame on each side). Gaps (NaN) are skipped; the parabola then spans unequal steps."""
    curve = np.asarray(curve, dtype=np.float64)
    present = np.flatnonzero(np.isfinite(curve))
    j = int(np.argmin(curve[present]))
    k = int(present[j])
    if j == 0 or j == len(present) - 1:
        return k, float(k)
    x = present[j - 1 : j + 2].astype(np.float64) - k
    y = curve[present[j - 1 : j + 2]] ** 2
    # y = a·x² + b·x + c through the three points; the vertex is at −b / 2a
    a, b, _ = np.linalg.solve(np.vander(x, 3), y)
    if a <= 0:
        return k, float(k)
    return k, float(k + np.clip(-b / (2.0 * a), x[0] / 2.0, x[2] / 2.0))


def is_unimodal(curve: np.ndarray, tolerance: float | None = None) -> bool:
    """True when σ falls to its minimum and rises after it, ignoring wiggles below ``tolerance`` px
    (default: 5 % of the curve's range plus 0.05 px) and gaps (NaN)."""
    curve = np.asarray(curve, dtype=np.float64)
    curve = curve[np.isfinite(curve)]
    if len(curve) < 3:
        return True
    if tolerance is None:
        tolerance = 0.05 * float(np.ptp(curve)) + 0.05
    k = int(np.argmin(curve))
    falling = np.maximum.accumulate(curve[: k + 1][::-1])[::-1]  # must not rise before the minimum
    rising = np.maximum.accumulate(curve[k:])  # must not fall after it
    return bool(np.all(falling - curve[: k + 1] <= tolerance) and np.all(rising - curve[k:] <= tolerance))


def _listed(curve: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), 4) for v in curve]


def focus_sweep(frames, targets: list[Target], predictor, on_frame=None) -> dict:
    """σ of each target in each frame (``frames``: RGB uint8 arrays, None for a frame that could not
    be read: a gap, null in the curves), the in-focus frame per target, and whether each curve is
    unimodal."""
    from hdme.runtime.predict import range_top

    rows = []
    for frame in frames:
        rows.append(np.full(len(targets), np.nan) if frame is None else sample_sigma(np.asarray(predictor.predict(frame)), targets))
        if on_frame:
            on_frame()
    read = np.array([bool(np.isfinite(row).all()) for row in rows], dtype=bool)
    readable = int(read.sum())
    if readable < 3:
        raise HdmeError(f"a focus sweep needs at least 3 frames, got {readable}" + ("" if read.all() else f" of {len(rows)} readable"))
    sigma = np.stack(rows)
    top = range_top(predictor)
    present = np.flatnonzero(read)
    result = {"targets": [], "sigma": [_listed(row) for row in sigma], "gaps": np.flatnonzero(~read).tolist()}
    for i, target in enumerate(targets):
        curve = sigma[:, i]
        frame, position = focus_position(curve)
        result["targets"].append(
            {
                "target": target.label,
                "x": target.x,
                "y": target.y,
                "w": target.w,
                "h": target.h,
                "sigma": _listed(curve),
                "focus_frame": frame,
                "focus_position": round(position, 3),
                "min_sigma": float(curve[frame]),
                "at_sweep_end": frame in (present[0], present[-1]),
                "unimodal": is_unimodal(curve),
                # Frames where the point reads at the top of the predictor's range: its blur there
                # may be larger, and the curve flattens instead of rising.
                "saturated_frames": int(np.sum(curve[present] >= top)),
            }
        )
    return result


def plot_sweep(result: dict, frame_names: list[str], path: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hdme.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for t in result["targets"]:
        curve = np.array([np.nan if v is None else v for v in t["sigma"]], np.float64)  # a gap breaks the line
        line = ax.plot(curve, marker="o", ms=3, label=f"{t['target']}: focus at {t['focus_position']:.2f}")
        ax.axvline(t["focus_position"], color=line[0].get_color(), ls="--", lw=0.8)
    ax.set_xlabel("frame")
    ax.set_ylabel("σ (px)")
    ax.set_ylim(bottom=0)
    ax.set_title("Focus sweep: defocus per frame (minimum = in focus)")
    if len(frame_names) <= 12:
        ax.set_xticks(range(len(frame_names)), frame_names, rotation=45, ha="right", fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def run_focus_sweep(frames: list[str], points: str | None, regions: str | None, method: str, model: str | None,
                    backend: str, plot: Path | None, json_path: Path | None, extend_range: bool = False) -> dict:
    """``hdme focus-sweep``: read the frames, run the sweep, print, plot, write JSON."""
    from rich.progress import track
    from rich.table import Table

    from hdme.images import expand_inputs, read_image
    from hdme.io import check_output_file, write_json
    from hdme.runtime.classic import predictor_for

    for path in (plot, json_path):
        if path:
            check_output_file(path)

    console = make_console(stderr=True)
    targets = parse_targets(points, regions)
    paths = expand_inputs(frames)
    if len(paths) < 3:
        raise HdmeError(f"a focus sweep needs at least 3 frames, got {len(paths)}")
    predictor = predictor_for(method, model, backend, report=lambda line: console.print(line, style="yellow"),
                              extend_range=extend_range)

    def frames_or_gaps():
        for path in paths:
            try:
                yield read_image(path)
            except HdmeError as exc:
                console.print(f"skipping frame {exc} (its place in the sweep stays empty)", style="yellow")
                yield None

    result = focus_sweep(track(frames_or_gaps(), total=len(paths), description="sweep", console=console, transient=True), targets, predictor)
    result["frames"] = [str(p) for p in paths]
    table = Table(title="Focus sweep")
    for col in ("target", "in-focus frame", "position", "min σ px", "unimodal"):
        table.add_column(col)
    for t in result["targets"]:
        table.add_row(t["target"], paths[t["focus_frame"]].name, f"{t['focus_position']:.2f}", f"{t['min_sigma']:.2f}", "yes" if t["unimodal"] else "NO")
    make_console().print(table)
    for t in result["targets"]:
        if not t["unimodal"]:
            console.print(f"warning: σ at {t['target']} is not unimodal over the sweep (moved, occluded, or unreliable there)", style="yellow")
        if t["at_sweep_end"]:
            console.print(f"warning: σ at {t['target']} is smallest at an end of the sweep; focus may lie beyond it", style="yellow")
    if plot:
        plot_sweep(result, [p.name for p in paths], plot)
        console.print(f"plot: {plot}")
    if json_path:
        write_json(json_path, result)
        console.print(f"results: {json_path}")
    return result


# ---------------------------------------------------------------------------------------------
# Thin-lens depth


@dataclass
class Lens:
    focal_mm: float
    f_number: float
    pixel_um: float
    focus_m: float

    def __post_init__(self) -> None:
        for name, value in (("focal length (mm)", self.focal_mm), ("f-number", self.f_number),
                            ("pixel pitch (µm)", self.pixel_um), ("focus distance (m)", self.focus_m)):
            if not np.isfinite(value) or value <= 0:
                raise HdmeError(f"the {name} must be a positive number, got {value}")
        if self.focus_m * 1000.0 <= self.focal_mm:
            raise HdmeError(f"the focus distance ({self.focus_m} m) must exceed the focal length ({self.focal_mm} mm)")

    @property
    def sensor_distance_mm(self) -> float:
        f, d = self.focal_mm, self.focus_m * 1000.0
        return f * d / (d - f)

    @property
    def blur_per_dioptre_px(self) -> float:
        """Blur-circle radius in px per unit of |1/D − 1/u| (1/mm): f·s/(2N) / pitch."""
        return self.focal_mm * self.sensor_distance_mm / (2.0 * self.f_number) / (self.pixel_um / 1000.0)


def sigma_at_distance(distance_m: np.ndarray, lens: Lens) -> np.ndarray:
    """Forward thin-lens model: σ px of a point at ``distance_m``."""
    u = np.asarray(distance_m, dtype=np.float64) * 1000.0
    radius_px = lens.blur_per_dioptre_px * np.abs(1.0 / (lens.focus_m * 1000.0) - 1.0 / u)
    return radius_px / BLUR_RADIUS_PER_SIGMA


def distances_from_sigma(sigma_px: np.ndarray, lens: Lens) -> tuple[np.ndarray, np.ndarray]:
    """The two distances (m) that blur to σ: (near, far). Far is inf where σ is at least the blur of a
    point at infinity; near is NaN where no real object (beyond the focal length) blurs that much."""
    sigma = np.maximum(np.asarray(sigma_px, dtype=np.float64), 0.0)
    dioptre = BLUR_RADIUS_PER_SIGMA * sigma / lens.blur_per_dioptre_px  # |1/D − 1/u| in 1/mm
    inv_focus = 1.0 / (lens.focus_m * 1000.0)
    inv_near = inv_focus + dioptre
    inv_far = inv_focus - dioptre
    with np.errstate(divide="ignore"):
        near = np.where(inv_near < 1.0 / lens.focal_mm, 1.0 / inv_near / 1000.0, np.nan)
        far = np.where(inv_far > 0, 1.0 / np.maximum(inv_far, 1e-300) / 1000.0, np.inf)
    return near, far


def _load_sigma_or_predict(path: Path, method: str, model: str | None, backend: str, report,
                           extend_range: bool = False) -> tuple[np.ndarray, float | None]:
    """The σ map of ``path`` and, when it was predicted here, the share of its pixels at the top of
    the predictor's range (None for a map read from a file: how it was made is not known)."""
    import cv2

    from hdme.conventions import load_sigma_map
    from hdme.images import read_image
    from hdme.runtime.classic import predictor_for
    from hdme.runtime.predict import saturated_share

    if path.suffix.lower() == ".npy":
        return load_sigma_map(path), None
    if path.suffix.lower() == ".png" and path.is_file():
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is not None and raw.dtype == np.uint16 and raw.ndim == 2:
            return load_sigma_map(path), None
    predictor = predictor_for(method, model, backend, report=report, extend_range=extend_range)
    sigma = predictor.predict(read_image(path))
    return sigma, saturated_share(sigma, predictor)


def run_depth(source: Path, lens: Lens, method: str, model: str | None, backend: str, points: str | None, out: Path | None,
              extend_range: bool = False) -> dict:
    """``hdme depth``: σ map (given, or predicted from an image) → near and far distance maps."""
    from rich.table import Table

    if out is not None and out.suffix.lower() != ".npz":
        raise HdmeError(f"{out}: depth maps are written as .npz (arrays near_m, far_m, sigma_px)")
    console = make_console(stderr=True)
    sigma, saturated = _load_sigma_or_predict(source, method, model, backend, lambda line: console.print(line, style="yellow"),
                                              extend_range)
    near, far = distances_from_sigma(sigma, lens)
    infinity_sigma = float(sigma_at_distance(np.array([np.inf]), lens)[0])
    targets = parse_targets(points, None) if points else []
    table = Table(title=f"Thin-lens depth: f {lens.focal_mm} mm, f/{lens.f_number}, pixel {lens.pixel_um} µm, focused at {lens.focus_m} m")
    for col in ("where", "σ px", "near m", "far m"):
        table.add_column(col, justify="right")

    def add(label: str, s: float) -> None:
        n, f = distances_from_sigma(np.array([s]), lens)
        table.add_row(label, f"{s:.3f}", f"{n[0]:.3f}", "∞" if np.isinf(f[0]) else f"{f[0]:.3f}")

    add("image median", float(np.median(sigma)))
    for t in targets:
        add(t.label, float(sample_sigma(sigma, [t])[0]))
    make_console().print(table)
    console.print(
        f"One σ gives two distances: a point nearer than {lens.focus_m} m and one farther blur alike (near/far ambiguity); "
        f"σ is the PSF's second-moment σ, the blur-circle radius is 2σ. A point at infinity blurs to σ = {infinity_sigma:.3f} px; "
        "larger σ has only the near solution."
    )
    if out:
        from hdme.io import atomic_path

        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, near_m=near.astype(np.float32), far_m=far.astype(np.float32), sigma_px=sigma.astype(np.float32))
        console.print(f"depth maps: {out}")
    return {"near_m": near, "far_m": far, "sigma_px": sigma, "sigma_at_infinity": infinity_sigma, "saturated": saturated}
