"""Where the project's own XML schemas are (``schemas/<family>/``)."""

from __future__ import annotations

from pathlib import Path


def schema_dir(family: str, main: str) -> Path:
    """``schemas/<family>`` of the source tree, else of the working directory (an installed
    copy run from a checkout, as the Dockerfile does), found by its ``main`` file."""
    candidates = [
        Path(__file__).resolve().parents[1] / "schemas" / family,
        Path.cwd() / "schemas" / family,
    ]
    for candidate in candidates:
        if (candidate / main).is_file():
            return candidate
    raise FileNotFoundError(f"no {main} in " + ", ".join(str(c) for c in candidates))
