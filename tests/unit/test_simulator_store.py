"""A simulator's store: a given dir is kept, a temporary one is removed at cleanup."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from simulators.common import store_dir_of


async def test_a_temporary_store_is_removed_and_a_given_one_kept(tmp_path: Path) -> None:
    app = web.Application()
    temporary, remove = store_dir_of(None, "test")
    (temporary / "x").write_text("x")
    await remove(app)
    assert not temporary.exists()

    given, keep = store_dir_of(tmp_path / "store", "test")
    (given / "x").write_text("x")
    await keep(app)
    assert (tmp_path / "store" / "x").read_text() == "x"
