"""CLI of the runtime stage: ``hdme predict``, ``hdme run`` and the ``hdme bench`` group.

Only typer and the core are imported here; backends, OpenCV pipelines and benchmarks are
imported inside each command so that ``hdme --help`` stays fast and torch-free.
"""

from __future__ import annotations

import typer

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks: latency of the inference backends, accuracy on real data, reports.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
