"""Plain text as a PDF: A4 pages of Helvetica lines, made without a PDF library.

For the summaries a person reads beside a signature (a PES's bordereaux shown to the
signer as i-Parapheur's ``VisuelPDF``) and for the simulators' bordereaux.
"""

from __future__ import annotations

from collections.abc import Iterable

LINES_PER_PAGE = 46


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def simple_pdf(lines: Iterable[str]) -> bytes:
    """A PDF showing ``lines``, as many A4 pages as they need (WinAnsi: what cp1252 cannot
    write shows as '?')."""
    shown = list(lines) or [""]
    pages = [shown[i:i + LINES_PER_PAGE] for i in range(0, len(shown), LINES_PER_PAGE)]
    # Objects: 1 catalog, 2 page tree, 3 font, then a page and its content per page.
    kids = " ".join(f"{4 + 2 * n} 0 R" for n in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for n, page in enumerate(pages):
        text = " ".join(f"({_escape(line)}) '" for line in page)
        content = f"BT /F1 11 Tf 60 800 Td 16 TL {text} ET".encode("cp1252", "replace")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
                       b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
                       % (5 + 2 * n))
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)
