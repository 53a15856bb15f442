"""The streaming multipart reader: parts, chunked data, names, and framing errors."""

from __future__ import annotations

import pytest

from broker.multipart import MAX_PART_HEADERS, MultipartReader, boundary_of

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


class Pieces:
    """A body delivered in pieces of ``size`` bytes, like a socket would."""

    def __init__(self, body: bytes, size: int) -> None:
        self._pieces = [body[i:i + size] for i in range(0, len(body), size)]

    async def readany(self) -> bytes:
        return self._pieces.pop(0) if self._pieces else b""


def part(disposition: str, data: bytes, content_type: str | None = None) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def read_all(reader: MultipartReader) -> list[tuple[str | None, str | None, bytes]]:
    out = []
    while (p := await reader.next_part()) is not None:
        out.append((p.name, p.filename, b"".join([c async for c in reader.chunks()])))
    return out


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
async def test_parts_and_data_survive_any_split(size: int) -> None:
    data = bytes(range(256)) * 40 + f"\r\n--{BOUNDARY}x".encode()  # boundary-like bytes inside
    raw = body(part('form-data; name="flow"', b"depot"),
               part('form-data; name="document"; filename="mandat.xml"', data, "text/xml"))
    got = await read_all(MultipartReader(Pieces(raw, size), CONTENT_TYPE))
    assert got == [("flow", None, b"depot"), ("document", "mandat.xml", data)]


async def test_content_type_and_utf8_names() -> None:
    raw = body(part('form-data; name="annexe"; filename="délibération.pdf"', b"%PDF",
                    "application/pdf"))
    reader = MultipartReader(Pieces(raw, 10), CONTENT_TYPE)
    first = await reader.next_part()
    assert first is not None
    assert (first.filename, first.content_type) == ("délibération.pdf", "application/pdf")


@pytest.mark.parametrize("name", ["délibération_€.pdf", "plan – annexe.pdf", "vœu n°3.pdf",
                                  "été 2026 (copie).pdf"])
async def test_file_names_beyond_latin_1_are_kept_exactly(name: str) -> None:
    # RFC 7578: browsers send the name as raw UTF-8 in filename="…".
    raw = body(part(f'form-data; name="annexe"; filename="{name}"', b"%PDF", "application/pdf"))
    got = await read_all(MultipartReader(Pieces(raw, 9), CONTENT_TYPE))
    assert got == [("annexe", name, b"%PDF")]


@pytest.mark.parametrize(("sent", "kept"), [
    ("d%C3%A9lib%C3%A9ration_%E2%82%AC%20%E2%80%93%20v%C5%93u%2010%25.pdf",  # aiohttp
     "délibération_€ – vœu 10%.pdf"),
    ("remise 10%.pdf", "remise 10%.pdf"),  # no escape in it
    ("taux%E9.pdf", "taux%E9.pdf"),  # an escape that is no UTF-8: kept as sent
])
async def test_percent_encoded_file_names_are_decoded_when_they_are_utf8(
        sent: str, kept: str) -> None:
    raw = body(part(f'form-data; name="annexe"; filename="{sent}"', b"%PDF"))
    got = await read_all(MultipartReader(Pieces(raw, 13), CONTENT_TYPE))
    assert got == [("annexe", kept, b"%PDF")]


async def test_extended_filename_wins_over_the_plain_one() -> None:
    raw = body(part("form-data; name=\"document\"; filename=\"d_lib_ration.pdf\"; "
                    "filename*=UTF-8''d%C3%A9lib%C3%A9ration%20%E2%82%AC.pdf", b"x"))
    got = await read_all(MultipartReader(Pieces(raw, 50), CONTENT_TYPE))
    assert got == [("document", "délibération €.pdf", b"x")]


async def test_an_extended_filename_in_a_wrong_charset_is_an_error() -> None:
    raw = body(part("form-data; name=\"document\"; filename*=UTF-8''%E9t%E9.pdf", b"x"))
    with pytest.raises(ValueError, match="filename\\* is not valid UTF-8"):
        await read_all(MultipartReader(Pieces(raw, 50), CONTENT_TYPE))


async def test_extended_filename() -> None:
    raw = body(part("form-data; name=\"document\"; filename*=utf-8''acte%20n%C2%B01.pdf",
                    b"x"))
    got = await read_all(MultipartReader(Pieces(raw, 50), CONTENT_TYPE))
    assert got == [("document", "acte n°1.pdf", b"x")]


async def test_unread_data_is_skipped_by_next_part() -> None:
    raw = body(part('form-data; name="a"', b"1" * 5000), part('form-data; name="b"', b"2"))
    reader = MultipartReader(Pieces(raw, 100), CONTENT_TYPE)
    assert (await reader.next_part()).name == "a"  # type: ignore[union-attr]
    second = await reader.next_part()
    assert second is not None and second.name == "b"
    assert b"".join([c async for c in reader.chunks()]) == b"2"
    assert await reader.next_part() is None


async def test_truncated_body_is_an_error() -> None:
    raw = body(part('form-data; name="document"; filename="a.pdf"', b"x" * 100))[:-30]
    with pytest.raises(ValueError, match=r"closing boundary|ends without"):
        await read_all(MultipartReader(Pieces(raw, 16), CONTENT_TYPE))


async def test_part_without_form_data_disposition_is_an_error() -> None:
    raw = body(part('attachment; filename="a.pdf"', b"x"))
    with pytest.raises(ValueError, match="form-data"):
        await read_all(MultipartReader(Pieces(raw, 16), CONTENT_TYPE))


async def test_oversized_part_headers_are_an_error() -> None:
    raw = body(part('form-data; name="' + "n" * (MAX_PART_HEADERS + 10) + '"', b"x"))
    with pytest.raises(ValueError, match=r"(?i)header"):
        await read_all(MultipartReader(Pieces(raw, 1024), CONTENT_TYPE))


def test_boundary_is_required() -> None:
    assert boundary_of(CONTENT_TYPE) == BOUNDARY.encode()
    with pytest.raises(ValueError, match="boundary"):
        boundary_of("multipart/form-data")
    with pytest.raises(ValueError, match="boundary"):
        boundary_of("application/json; boundary=x")


async def test_large_part_comes_in_chunks_not_whole() -> None:
    data = b"z" * (4 * 1024 * 1024)
    reader = MultipartReader(Pieces(body(part('form-data; name="f"; filename="big"', data)),
                                    64 * 1024), CONTENT_TYPE)
    await reader.next_part()
    sizes = [len(c) async for c in reader.chunks()]
    assert sum(sizes) == len(data)
    assert max(sizes) <= 64 * 1024
