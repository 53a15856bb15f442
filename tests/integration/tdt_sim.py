"""The TdT simulator as the integration tests hold it: its app, URL and certificates."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulators.common import stats_of
from simulators.tdt import CertFiles


@dataclass
class Tdt:
    app: web.Application
    url: str
    certs: CertFiles

    @property
    def config(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "cert": str(self.certs.client_cert),
            "key": str(self.certs.client_key),
            "ca": str(self.certs.ca),
            "poll_after": 1,
            "timeout": 5,
        }

    @property
    def stats(self) -> dict[str, int]:
        return stats_of(self.app)

    @property
    def ssl(self) -> ssl.SSLContext:
        """The collectivité's side of TLS, for the control routes."""
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        context.load_cert_chain(self.certs.client_cert, self.certs.client_key)
        return context
