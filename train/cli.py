"""CLI of the training stage: ``hdme data …`` and ``hdme train``. torch is imported inside commands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
