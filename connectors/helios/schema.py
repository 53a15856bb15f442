"""The project's own PES V2 schemas (``schemas/pes/``), each compiled once per process.

They are read through a resolver that serves only the files of that folder: compiling
never reaches the network nor any other file.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from broker.xmlsafe import VALIDATING
from connectors import schema_files

ALLER = "PES_Aller.xsd"
ACQUIT = "PES_Acquit.xsd"
RETOUR = "PES_Retour.xsd"


def schema_dir() -> Path:
    return schema_files.schema_dir("pes", ALLER)


class _OnlyHere(etree.Resolver):
    """Serves the files of one folder and refuses every other address."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self._folder = folder.resolve()

    def resolve(self, system_url: str, public_id: str,  # type: ignore[override]
                context: object) -> object:
        path = Path(system_url.removeprefix("file://")).resolve()
        if path.parent != self._folder or not path.is_file():
            raise ValueError(f"the PES schemas may include only files of {self._folder}, "
                             f"not {system_url}")
        return self.resolve_filename(str(path), context)  # type: ignore[attr-defined]


@functools.cache
def compiled(name: str) -> etree.XMLSchema:
    folder = schema_dir()
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    parser.resolvers.add(_OnlyHere(folder))
    return etree.XMLSchema(etree.parse(str(folder / name), parser))


def aller_schema() -> etree.XMLSchema:
    return compiled(ALLER)


def acquit_schema() -> etree.XMLSchema:
    return compiled(ACQUIT)


def retour_schema() -> etree.XMLSchema:
    return compiled(RETOUR)


# ===== schema errors told while a document streams =====

# How libxml2 words a schema error: the element (maybe "{namespace}name"), the attribute.
_TOLD = re.compile(r"Element '([^']+)'(?:, attribute '([^']+)')?: (.*)", re.DOTALL)
_QNAME = re.compile(r"\{([^}]*)\}")
_PREFIXES = {"http://www.w3.org/2000/09/xmldsig#": "ds:"}
# libxml2 ranks the first of several siblings [1]; a path here names it bare.
_FIRST = re.compile(r"\[1\](?=/|$)")


@dataclass(frozen=True)
class Refusal:
    """One schema error: the element it is about (live, while it is in the tree) or its
    path and line (when told before the tree could be reached), and what was expected."""

    element: etree._Element | None
    path: str | None
    line: int | None
    attribute: str | None
    reason: str


def _readable(text: str) -> str:
    """Qualified names as a PES reader writes them: ds:Signature, PES_Aller."""
    return _QNAME.sub(lambda found: _PREFIXES.get(found.group(1), ""), text)


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


class Watch:
    """Ties each schema error libxml2 tells during a streamed parse to its element.

    libxml2 validating inside the parser says neither line nor node; but it tells each
    error while the element is the last one built (its start) or just closed (its end),
    so the element is the deepest of that name on the tree's last-child chain. Errors
    told before the caller has seen any element (hence the tree) are tied once it has:
    by validating a copy of the little read so far, which gives line and path. Past
    ``limit`` errors, they are only counted.
    """

    def __init__(self, schema: etree.XMLSchema, said: Callable[[Refusal], None],
                 limit: int) -> None:
        self.root: etree._Element | None = None
        self.told_count = 0
        self._schema, self._said, self._limit = schema, said, limit
        self._early: list[str] = []
        self._quiet = False

    def seen(self, element: etree._Element) -> None:
        """Called with the first element the parse hands over: the tree is reachable."""
        self.root = element.getroottree().getroot()
        early, self._early = self._early, []
        if early:
            self._tie_early(early)

    def told(self, message: str) -> None:
        if self._quiet:
            return
        self.told_count += 1
        if self.told_count > self._limit:
            return
        if self.root is None:
            self._early.append(message)
            return
        name, attribute, reason = self._split(message)
        self._said(Refusal(self._deepest(name), None, None, attribute, reason))

    def finish(self) -> None:
        """Errors never tied to the tree (it was never reached) are said as they are."""
        for message in self._early:
            name, attribute, reason = self._split(message)
            self._said(Refusal(None, _readable(name), None, attribute, reason))
        self._early = []

    @staticmethod
    def _split(message: str) -> tuple[str, str | None, str]:
        found = _TOLD.match(message.strip())
        if found is None:
            return "", None, _readable(message.strip())
        return found.group(1), found.group(2), _readable(found.group(3).strip())

    def _deepest(self, name: str) -> etree._Element | None:
        local, node, found = _local(name), self.root, None
        while node is not None:
            if _local(node.tag) == local:
                found = node
            node = _last_element(node)
        return found

    def _tie_early(self, early: list[str]) -> None:
        assert self.root is not None
        self._quiet = True  # this validation's own errors are not the document's
        try:
            with VALIDATING:  # the schema's error log is one for all threads
                self._schema.validate(copy.deepcopy(self.root))
                log = [(e.message, e.line, e.path)
                       for e in self._schema.error_log]  # type: ignore[attr-defined]
        finally:
            self._quiet = False
        for message in early:
            name, attribute, reason = self._split(message)
            match = next((i for i, (said, _line, _path) in enumerate(log) if said == message),
                         None)
            if match is None:
                self._said(Refusal(None, _readable(name), None, attribute, reason))
                continue
            _said, line, path = log.pop(match)
            below_root = _FIRST.sub("", _readable("/".join((path or "").split("/")[2:])))
            # The root itself is named, as the rules name it.
            said_path = below_root or _local(_readable(name))
            self._said(Refusal(None, said_path, line or None, attribute, reason))


def _last_element(node: etree._Element) -> etree._Element | None:
    """The last child element, found from the end (a unit may hold many)."""
    try:
        child: etree._Element | None = node[-1]
    except IndexError:
        return None
    while child is not None and not isinstance(child.tag, str):  # comments, PIs
        child = child.getprevious()
    return child


class _Hook(etree.PyErrorLog):  # type: ignore[misc]
    """The thread's lxml error log: it hands schema errors to the thread's watch, if any,
    as libxml2 tells them (the only moment the element is known); the rest is dropped,
    as lxml's own global log would let it go."""

    def receive(self, entry: etree._LogEntry) -> None:
        watch: Watch | None = getattr(_thread, "watch", None)
        if watch is not None and entry.domain == etree.ErrorDomains.SCHEMASV \
                and entry.level >= etree.ErrorLevels.ERROR:
            watch.told(entry.message)


_thread = threading.local()


@contextlib.contextmanager
def watching(watch: Watch) -> Iterator[Watch]:
    """``watch`` hears the schema errors of the parses this thread runs meanwhile."""
    if not getattr(_thread, "hooked", False):
        etree.use_global_python_log(_Hook())
        _thread.hooked = True
    outer, _thread.watch = getattr(_thread, "watch", None), watch
    try:
        yield watch
    finally:
        _thread.watch = outer
