"""Chorus Pro PIVOT reading, speed and memory: the project's streaming reader against bare lxml.

    .venv/bin/python bench/pivot_read.py [--size-mib 100] [--attachments 4]

Generates a PIVOT invoice of about ``--size-mib`` MiB whose attachments (incompressible,
zipped and base64-encoded as Chorus Pro sends them) make up nearly all of it, then, each
in a fresh process so that peak RSS is its own:

* **bare lxml**: ``etree.iterparse`` over the file (``huge_tree``), each ``Contenu``
  base64-decoded from the element's text and its ZIP's member written to a file, every
  element cleared at its end (the raw baseline: what taking the files out costs at all);
* **project**: ``connectors.chorus.pivot.read_pivot`` (the XML gate, the project's PIVOT
  schema, the business rules, each attachment decoded as the file streams and unzipped
  under its limits).

Prints seconds and peak RSS of each, the speed ratio (baseline time / project time) and
the memory ratio (baseline peak / project peak).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BARE = """
import base64, io, sys, time, resource, zipfile
from pathlib import Path
from lxml import etree
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
n = 0
for _event, element in etree.iterparse(sys.argv[1], events=("end",), huge_tree=True,
                                       resolve_entities=False, no_network=True):
    if element.tag == "Contenu":
        n += 1
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(element.text or ""))) as archive:
            for member in archive.infolist():
                (out / f"{n}-{member.filename}").write_bytes(archive.read(member))
    element.clear()
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
PROJECT = """
import sys, time, resource
from pathlib import Path
from connectors.chorus.pivot import read_pivot
start = time.perf_counter()
reading = read_pivot(Path(sys.argv[1]), Path(sys.argv[2]))
assert not reading.problems, reading.problems[:3]
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def generate(path: Path, size: int, attachments: int) -> None:
    from simulators.chorus_samples import Spec, pivot, siret

    rng = random.Random(7)
    # base64 adds a third and the line breaks a little more.
    each = int(size / 1.37 / attachments)
    extra = [(f"annexe-{n}.pdf", rng.randbytes(each)) for n in range(1, attachments + 1)]
    path.write_bytes(pivot(Spec(number="F-BENCH-1", debtor_siret=siret(1), extra=extra)))


def measure(code: str, path: Path, out: Path) -> tuple[float, float]:
    done = subprocess.run([sys.executable, "-c", code, str(path), str(out)], cwd=ROOT,
                          check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds, rss_kib = done.stdout.split()
    return float(seconds), int(rss_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--attachments", type=int, default=4)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.size_mib * 1024 * 1024, args.attachments)
        return
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "facture.xml"
        # Made by a process of its own: a child started from a big parent would inherit its
        # peak RSS (Linux keeps it across exec) and the figures below would be the parent's.
        subprocess.run([sys.executable, __file__, "--generate", str(source),
                        "--size-mib", str(args.size_mib),
                        "--attachments", str(args.attachments)], check=True)
        size = source.stat().st_size / 1024 / 1024
        bare_s, bare_mib = measure(BARE, source, Path(folder) / "bare")
        mine_s, mine_mib = measure(PROJECT, source, Path(folder) / "project")
    print(f"PIVOT of {size:.1f} MiB, {args.attachments} zipped attachments")
    print(f"bare lxml : {bare_s:6.2f} s  {size / bare_s:6.1f} MiB/s  peak RSS {bare_mib:6.1f} MiB")
    print(f"project   : {mine_s:6.2f} s  {size / mine_s:6.1f} MiB/s  peak RSS {mine_mib:6.1f} MiB")
    print(f"speed ratio (bare time / project time): {bare_s / mine_s:.2f}")
    print(f"memory ratio (bare peak / project peak): {bare_mib / mine_mib:.1f}")


if __name__ == "__main__":
    main()
