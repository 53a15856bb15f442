"""Tokens and passwords never reach a log line."""

from __future__ import annotations

import io
import json

import structlog

from broker import logs


def test_secrets_are_masked_whatever_the_field(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    logs.configure("json", "info")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(out))
    log = structlog.get_logger("t")
    log.info("calling peer", url="amqp://demat:s3cret@rabbit/", token="dmt_abcdefghijklmnop",
             note="header was Bearer dmt_abcdefghijklmnop", password="hunter2",
             document="01ABC")
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    text = json.dumps(line)
    assert "s3cret" not in text and "hunter2" not in text and "abcdefghijklmnop" not in text
    assert line["url"] == "amqp://demat:***@rabbit/" and line["token"] == "***"
    assert line["document"] == "01ABC" and line["event"] == "calling peer"
