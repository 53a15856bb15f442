"""PES validation speed and memory: the project's streaming check against bare lxml streaming.

    .venv/bin/python bench/pes_validate.py [--size-mib 128] [--keep FILE]

Generates a PES_Aller of about ``--size-mib`` MiB (bordereaux of pièces and lines, and PJ
of gzip + base64 content), then, each in a fresh process so peak RSS is its own:

* **bare lxml**: ``etree.iterparse`` over the file validating with the project's PES schema
  (``schemas/pes``), each element cleared at its end (the raw baseline: what reading and
  validating the file costs at all);
* **project**: ``connectors.helios.pes.check_pes`` (the XML gate, the same schema, the
  DGFiP's rules, PJ decoding and inflating under their cap).

Prints seconds and peak RSS of each and the speed ratio (baseline time / project time).
Then the same file goes through ``POST /api/v1/documents`` (``flow=helios``) of a ``demat
serve`` started for the run: the API process's RSS growth while it takes the upload (its
peak, ``VmHWM``, against its RSS before) and the answer's time.
The generated file is valid by the DGFiP's schema too (the conformance tests check the
builders it follows).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NS = "http://www.minefi.gouv.fr/cp/helios/pes_v2/Rev0/aller"
SIRET = "21400015000018"


def generate(path: Path, size: int) -> None:
    """A consistent PES_Aller of just under ``size`` bytes: 60 % pièces, 40 % PJ."""
    size -= 1024 * 1024  # the last PJ and the closing tags stay under the cap
    rng = random.Random(7)
    with path.open("w", encoding="iso8859-1") as out:
        out.write('<?xml version="1.0" encoding="ISO-8859-1"?>\n'
                  f'<n:PES_Aller xmlns:n="{NS}">\n<Enveloppe><Parametres><Version V="2"/>'
                  '<TypFic V="PESALR2"/><NomFic V="bench_pes_2026"/></Parametres></Enveloppe>\n'
                  f'<EnTetePES><DteStr V="2026-12-01"/><IdPost V="086016"/><IdColl V="{SIRET}"/>'
                  '<CodCol V="400"/><CodBud V="01"/><LibelleColBud V="Commune de démo"/>'
                  '</EnTetePES>\n<PES_DepenseAller><EnTeteDepense><IdVer V="2"/></EnTeteDepense>\n')
        written, bordereau = 0, 0
        while written < size * 0.6:
            bordereau += 1
            pieces = []
            total = 0
            for p in range(200):
                lines = []
                for n in range(1, 4):
                    cents = rng.randint(100, 10_000_00)
                    total += cents
                    lines.append(f'<LigneDePiece><BlocLignePiece><InfoLignePce><IdLigne V="{n}"/>'
                                 f'<Nature V="60628"/><LibVir1 V="Facture {bordereau}-{p}-{n}"/>'
                                 '<TVAIntraCom V="0"/>'
                                 f'<MtHT V="{cents // 100}.{cents % 100:02d}"/></InfoLignePce>'
                                 "</BlocLignePiece></LigneDePiece>")
                pieces.append(f'<Piece><BlocPiece><InfoPce><IdPce V="{p + 1}"/><TypPce V="01"/>'
                              f'<NatPce V="01"/><Obj V="Mandat {p + 1}"/></InfoPce></BlocPiece>'
                              + "".join(lines) + "</Piece>")
            chunk = (f'<Bordereau Id="B{bordereau}"><BlocBordereau><Exer V="2026"/>'
                     f'<IdBord V="{bordereau}"/><DteBordEm V="2026-12-01"/><TypBord V="01"/>'
                     f'<NbrPce V="{len(pieces)}"/>'
                     f'<MtBordHT V="{total // 100}.{total % 100:02d}"/></BlocBordereau>'
                     + "".join(pieces) + "</Bordereau>\n")
            out.write(chunk)
            written += len(chunk)
        out.write('</PES_DepenseAller>\n<PES_PJ><EnTetePES_PJ><IdVer V="1"/></EnTetePES_PJ>\n')
        n = 0
        while written < size:
            n += 1
            content = base64.b64encode(gzip.compress(rng.randbytes(512 * 1024))).decode()
            pj = (f'<PJ><Contenu><Fichier MIMEType="application/pdf">{content}</Fichier>'
                  f'</Contenu><IdUnique V="{SIRET}DEPENSE2026{n:06d}"/><NomPJ V="f{n}.pdf"/>'
                  f'<Description V="Facture {n}"/></PJ>\n')
            out.write(pj)
            written += len(pj)
        out.write("</PES_PJ>\n</n:PES_Aller>\n")


BARE = """
import sys, time, resource
from lxml import etree
from connectors.helios.schema import aller_schema
start = time.perf_counter()
for _event, element in etree.iterparse(sys.argv[1], events=("end",), huge_tree=True,
                                       resolve_entities=False, no_network=True,
                                       schema=aller_schema()):
    element.clear()
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
PROJECT = """
import sys, time, resource
from pathlib import Path
from connectors.helios.pes import check_pes
start = time.perf_counter()
summary, problems = check_pes(Path(sys.argv[1]))
assert not problems, problems[:3]
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure(code: str, path: Path) -> tuple[float, float]:
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, check=True,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds, rss_kib = done.stdout.split()
    return float(seconds), int(rss_kib) / 1024


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


async def _prepare(data_dir: Path) -> str:
    from broker import accounts
    from broker.settings import Settings
    from broker.store.db import make_engine
    from broker.store.migrate import upgrade
    from broker.wiring import catalog

    url = Settings(data_dir=data_dir).db_url
    await upgrade(url)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await accounts.upsert_entity(conn, SIRET[:9], "Commune du banc", {},
                                         catalog().settings)
            token: str = await accounts.create_token(conn, accounts.OPERATOR, label="bench")
    finally:
        await engine.dispose()
    return token


async def _upload(api_url: str, token: str, path: Path) -> tuple[int, str]:
    import aiohttp

    with path.open("rb") as stream:
        form = aiohttp.FormData()
        form.add_field("flow", "helios")
        form.add_field("entity", SIRET[:9])
        form.add_field("pes", stream, filename=path.name, content_type="application/xml")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http, \
                http.post(f"{api_url}/api/v1/documents", data=form,
                          headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, (await resp.text())[:300]


def through_the_api(path: Path, folder: Path) -> tuple[float, float, float]:
    """(seconds, RSS before in MiB, RSS growth in MiB) of the API taking ``path``."""
    import asyncio

    data_dir = folder / "data"
    data_dir.mkdir()
    token = asyncio.run(_prepare(data_dir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMAT_")}
    env.update({"DEMAT_DATA_DIR": str(data_dir), "DEMAT_PORT": "0", "PYTHONPATH": str(ROOT),
                "DEMAT_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"})
    serve = subprocess.Popen([sys.executable, "-m", "broker", "serve"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert serve.stdout is not None
        api_url = ""
        while not api_url:
            line = serve.stdout.readline()
            if not line:
                raise RuntimeError("demat serve stopped before it listened")
            if line.startswith("API_URL="):
                api_url = line.strip().split("=", 1)[1]
        time.sleep(1.0)  # its first moments settled
        before = _proc_kib(serve.pid, "VmRSS")
        started = time.perf_counter()
        status, said = asyncio.run(_upload(api_url, token, path))
        seconds = time.perf_counter() - started
        peak = _proc_kib(serve.pid, "VmHWM")
        if status != 201:
            raise RuntimeError(f"the API answered {status}: {said}")
    finally:
        serve.terminate()
        serve.wait(30)
    return seconds, before / 1024, (peak - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--keep", type=Path, help="write the generated PES here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.keep or Path(folder) / "bench.xml"
        started = time.perf_counter()
        generate(path, args.size_mib * 1024 * 1024)
        size = path.stat().st_size
        print(f"generated {size / 2**20:.1f} MiB in {time.perf_counter() - started:.1f} s")
        bare_s, bare_rss = measure(BARE, path)
        own_s, own_rss = measure(PROJECT, path)
        api_s, api_before, api_growth = through_the_api(path, Path(folder))
    print(f"bare lxml iterparse + schema: {bare_s:.2f} s, {size / 2**20 / bare_s:.0f} MiB/s, "
          f"peak RSS {bare_rss:.0f} MiB")
    print(f"project check_pes:            {own_s:.2f} s, {size / 2**20 / own_s:.0f} MiB/s, "
          f"peak RSS {own_rss:.0f} MiB")
    print(f"ratio (speed): {bare_s / own_s:.2f}  (target >= 0.8); "
          f"project peak RSS {own_rss:.0f} MiB (target <= 64)")
    print(f"POST /api/v1/documents: 201 in {api_s:.2f} s; API process RSS {api_before:.0f} MiB "
          f"before, growth {api_growth:.0f} MiB while taking it (target < 64)")


if __name__ == "__main__":
    main()
