"""The XML gate: hostile documents are refused in every encoding, with a located reason,
without a file being opened or a connection made; good documents still parse."""

from __future__ import annotations

import codecs
import errno
import io
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import xmlsafe
from broker.xmlsafe import XmlError, encoding_of, iter_elements, parse_bytes
from connectors.actes.xmlbind import ENCODINGS as ACTES

# The hostile cases, as text: {secret} is a file, {port} a listening socket.
HOSTILE = {
    "external entity": '<!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]><a>&x;</a>',
    "external DTD": '<!DOCTYPE a SYSTEM "http://127.0.0.1:{port}/a.dtd"><a/>',
    "parameter entity": ('<!DOCTYPE a [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/p"> %p;]>'
                         "<a/>"),
    "entity expansion": ('<!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;">'
                         '<!ENTITY z "&y;&y;&y;&y;&y;">]><a>&z;&z;&z;</a>'),
    "XInclude": ('<a xmlns:xi="http://www.w3.org/2001/XInclude">'
                 '<xi:include href="file://{secret}" parse="text"/></a>'),
    "stylesheet": ('<?xml-stylesheet type="text/xsl" href="http://127.0.0.1:{port}/s.xsl"?>'
                   "<a/>"),
    "DOCTYPE behind a long prolog": "<!--" + "-" * 6000 + '--><!DOCTYPE a SYSTEM "file://{secret}"><a/>',
}
# (codec, its name in a declaration, byte order mark)
ENCODED = [
    ("utf-8", "UTF-8", b""), ("utf-8", "UTF-8", codecs.BOM_UTF8),
    ("iso8859-1", "ISO-8859-1", b""),
    ("utf-16-le", "UTF-16", b""), ("utf-16-le", "UTF-16", codecs.BOM_UTF16_LE),
    ("utf-16-be", "UTF-16", b""), ("utf-16-be", "UTF-16", codecs.BOM_UTF16_BE),
    ("utf-32-le", "UTF-32", b""), ("utf-32-le", "UTF-32", codecs.BOM_UTF32_LE),
    ("utf-32-be", "UTF-32", b""), ("utf-32-be", "UTF-32", codecs.BOM_UTF32_BE),
    ("utf-7", "UTF-7", b""), ("utf-7", "UTF-7", b"+/v8"),
]
DECLARATIONS = ["none", "matching", "UTF-8", "ISO-8859-1"]


@dataclass
class Watch:
    """A FIFO that tells whether anything opened it, and a socket that counts connections."""

    secret: Path
    port: int
    opened: list[str] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    fifo = tmp_path_factory.mktemp("gate") / "secret"
    os.mkfifo(fifo)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    found = Watch(fifo, server.getsockname()[1])
    stop = threading.Event()

    def fifo_watch() -> None:
        # Opening the writing end without blocking fails (ENXIO) until a reader opens it.
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                stop.wait(0.001)
                continue
            found.opened.append(str(fifo))
            os.close(fd)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            found.connections.append(str(peer))
            conn.close()

    threads = [threading.Thread(target=fifo_watch, daemon=True),
               threading.Thread(target=accept, daemon=True)]
    for thread in threads:
        thread.start()
    yield found
    stop.set()
    for thread in threads:
        thread.join(2)
    server.close()


def encode(text: str, codec: str, declared: str, bom: bytes, declaration: str) -> bytes:
    name = {"none": None, "matching": declared}.get(declaration, declaration)
    head = f'<?xml version="1.0" encoding="{name}"?>' if name else ""
    return bom + (head + text).encode(codec)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(sorted(HOSTILE)), encoded=st.sampled_from(ENCODED),
       declaration=st.sampled_from(DECLARATIONS), allowed=st.sampled_from([ACTES, ("UTF-8",)]))
def test_every_hostile_case_in_every_encoding_is_refused_with_a_located_reason(
        watch: Watch, case: str, encoded: tuple[str, str, bytes], declaration: str,
        allowed: tuple[str, ...]) -> None:
    codec, declared, bom = encoded
    data = encode(HOSTILE[case].format(secret=watch.secret, port=watch.port), codec, declared,
                  bom, declaration)
    with pytest.raises(XmlError) as whole:
        parse_bytes(data, encodings=allowed)
    with pytest.raises(XmlError) as streamed:
        for _event, element in iter_elements(io.BytesIO(data), encodings=allowed):
            element.clear()
    for refused in (whole.value, streamed.value):
        assert refused.reason and refused.line is not None, (case, codec, str(refused))
    assert watch.opened == [] and watch.connections == []


@pytest.mark.parametrize(("data", "reason"), [
    (codecs.BOM_UTF16_LE + '<?xml version="1.0"?><a/>'.encode("utf-16-le"),
     "encoding UTF-16LE (its byte order mark) is not accepted here: expected UTF-8 or "
     "ISO-8859-1"),
    (b'<?xml version="1.0" encoding="UTF-7"?><a/>',
     "encoding UTF-7 (its declaration) is not accepted here: expected UTF-8 or ISO-8859-1"),
    ('<?xml version="1.0" encoding="UTF-32"?><a/>'.encode("utf-32-be"),
     "encoding UTF-32BE (its first bytes) is not accepted here: expected UTF-8 or ISO-8859-1"),
    (codecs.BOM_UTF8 + b'<?xml version="1.0" encoding="ISO-8859-1"?><a/>',
     "the byte order mark says UTF-8 but the declaration says ISO-8859-1"),
    ('<?xml version="1.0" encoding="ISO-8859-1"?><a/>'.encode("utf-16-le"),
     "the first bytes say UTF-16LE but the declaration says ISO-8859-1"),
    (b'<?xml version="1.0" encoding="klingon"?><a/>', "unknown encoding 'klingon' declared"),
    (b'<?xml version="1.0"?>\n<a>caf\xe9</a>', "byte 0xE9 at offset 28 is not valid UTF-8"),
    (b"   \n", "empty file: no XML document in it"),
    (b'<?xml version="1.0"?>\n<a>\n  <b x="1', "the file ends before the document does "
     "(truncated?): AttValue: ' expected"),
])
def test_refusals_name_what_was_found(data: bytes, reason: str) -> None:
    with pytest.raises(XmlError) as refused:
        parse_bytes(data, encodings=ACTES)
    assert refused.value.reason == reason


@pytest.mark.parametrize("data", [
    '<?xml version="1.0" encoding="ISO-8859-1"?><a>été</a>'.encode("iso8859-1"),
    '<?xml version="1.0" encoding="iso-8859-1"?><a>été</a>'.encode("iso8859-1"),
    '<?xml version="1.0" encoding="UTF-8"?><a>été</a>'.encode(),
    codecs.BOM_UTF8 + "<a>été</a>".encode(),
    "<a>été</a>".encode(),
    '<?xml version="1.0" encoding="latin1"?><a>été</a>'.encode("iso8859-1"),
])
def test_documents_in_the_formats_encodings_are_read(data: bytes) -> None:
    assert parse_bytes(data, encodings=ACTES).text == "été"
    texts = [e.text for _ev, e in iter_elements(io.BytesIO(data), encodings=ACTES)]
    assert texts == ["été"]


def test_a_format_limited_to_utf8_refuses_latin1() -> None:
    with pytest.raises(XmlError, match=r"encoding ISO-8859-1 \(its declaration\) is not "
                       r"accepted here: expected UTF-8$"):
        encoding_of(b'<?xml version="1.0" encoding="ISO-8859-1"?><a/>')


def test_the_gate_decodes_with_the_encoding_it_judged() -> None:
    # The parser is told the encoding found: it cannot read the bytes some other way.
    assert xmlsafe.parser(encoding="ISO-8859-1") is not None
    data = '<?xml version="1.0" encoding="ISO-8859-1"?><a>\u00e9</a>'.encode("iso8859-1")
    assert parse_bytes(data, encodings=ACTES).text == "\u00e9"


def test_a_schema_checked_from_many_threads_at_once_says_each_documents_problems(
        tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from lxml import etree

    from broker.xmlsafe import load_schema, schema_problems

    xsd = tmp_path / "n.xsd"
    xsd.write_text('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
                   '<xs:element name="n" type="xs:date"/></xs:schema>')
    schema = load_schema(xsd)
    good, bad = etree.fromstring(b"<n>2026-12-03</n>"), etree.fromstring(b"<n>03/12/2026</n>")

    def check(n: int) -> tuple[bool, list[str]]:
        is_bad = n % 2 == 0
        return is_bad, schema_problems(schema, bad if is_bad else good)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(check, range(4000)))
    assert all(bool(problems) == is_bad for is_bad, problems in results)
