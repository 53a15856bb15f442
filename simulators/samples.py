"""Sample documents the simulators and the demo produce."""

from __future__ import annotations

from connectors.textpdf import simple_pdf

__all__ = ["simple_pdf"]
