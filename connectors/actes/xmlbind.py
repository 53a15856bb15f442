"""One writer and one lenient reader for every ACTES message, driven by field annotations.

A field annotated ``X("Emetteur/IDCL/@insee:SIREN")`` lives at that path below the
message element: element steps (``A|B`` reads A, else B, and writes A), then an
attribute (``@name`` in the ACTES namespace, ``@insee:name``) or, for text, the last
element. ``Annexes/Annexe*`` is a repeated element inside a wrapper that is always
written. Fields are written in declaration order, which follows the schema's sequences.

Reading is lenient: elements are matched by local name, attributes with or without
their namespace, unknown elements are ignored, and values outside the schema's
enumerations are kept.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from datetime import date
from typing import Any, ClassVar, Self, Union, get_args, get_origin

from lxml import etree
from pydantic import BaseModel, ConfigDict, ValidationError

from connectors.actes.problems import Loc, MessageError, problems_from

ACTES_NS = "http://www.interieur.gouv.fr/ACTES#v1.1-20040216"
INSEE_NS = "http://xml.insee.fr/schema"
# The encodings ACTES messages may be written in (the format allows no other).
ENCODINGS = ("UTF-8", "ISO-8859-1")
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
NSMAP: dict[str, str] = {"actes": ACTES_NS, "insee": INSEE_NS, "xsi": XSI_NS}
SCHEMA_LOCATION = f"{ACTES_NS} actesv1_1.xsd"
_NIL = f"{{{XSI_NS}}}nil"
_PREFIXES = {"insee": INSEE_NS, "actes": ACTES_NS}


@dataclass(frozen=True)
class X:
    """Where a field lives in the XML (see the module docstring)."""

    path: str
    nillable: bool = False


@dataclass(frozen=True)
class _Binding:
    field: str
    steps: tuple[tuple[str, ...], ...]
    attr: tuple[str, str] | None
    repeated: bool
    nillable: bool
    model: type[ActesModel] | None
    text_is_str: bool

    @property
    def display(self) -> str:
        path = "/".join(step[0] for step in self.steps)
        if self.attr:
            path = f"{path}/@{self.attr[1]}" if path else f"@{self.attr[1]}"
        return path


def local(element: etree._Element) -> str:
    tag = element.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def first_named(root: etree._Element, name: str, text: str | None = None) -> etree._Element:
    """The first element named ``name`` (any namespace), holding ``text`` if given; else
    ``root``: a problem about it is then located at the message itself."""
    return next((e for e in root.iter() if local(e) == name
                 and (text is None or (e.text or "").strip() == text)), root)


def children(element: etree._Element, names: tuple[str, ...]) -> list[etree._Element]:
    return [c for c in element if local(c) in names]


def _child(element: etree._Element, names: tuple[str, ...]) -> etree._Element | None:
    for name in names:  # in order of preference
        for c in element:
            if local(c) == name:
                return c
    return None


def qualified(name: str) -> str:
    return f"{{{ACTES_NS}}}{name}"


def read_attr(element: etree._Element, name: str, namespace: str = ACTES_NS) -> str | None:
    value = element.get(f"{{{namespace}}}{name}")
    return element.get(name) if value is None else value


def text_of(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner type, is a list) with ``None`` removed from unions."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else str
    if get_origin(annotation) is list:
        return get_args(annotation)[0], True
    return annotation, False


def _compile(name: str, spec: X, annotation: Any) -> _Binding:
    path = spec.path.split("/")
    attr = None
    if path[-1].startswith("@"):
        prefix, _, attr_name = path.pop()[1:].rpartition(":")
        attr = (_PREFIXES[prefix or "actes"], attr_name)
    repeated = bool(path) and path[-1].endswith("*")
    if repeated:
        path[-1] = path[-1][:-1]
    inner, is_list = _unwrap(annotation)
    if is_list != repeated:
        raise TypeError(f"{name}: a list field needs a path ending in '*' and the reverse")
    model = inner if isinstance(inner, type) and issubclass(inner, ActesModel) else None
    return _Binding(
        name,
        tuple(tuple(step.split("|")) for step in path),
        attr,
        repeated,
        spec.nillable,
        model,
        inner is str,
    )


@functools.cache
def bindings(cls: type[ActesModel]) -> tuple[_Binding, ...]:
    found = []
    for name, info in cls.model_fields.items():
        specs = [m for m in info.metadata if isinstance(m, X)]
        if specs:
            found.append(_compile(name, specs[0], info.annotation))
    return tuple(found)


class ActesModel(BaseModel):
    """A part of an ACTES message; subclasses with a ``ROOT`` are whole messages."""

    model_config = ConfigDict(frozen=True)

    ROOT: ClassVar[str] = ""
    # Message code (``T-S``) used in file names; None for envelopes.
    CODE: ClassVar[str | None] = None

    def __init_subclass__(
        cls, *, code: str | None = None, root: str | None = None, **kwargs: Any
    ) -> None:
        """``class CourrierSimple(…, code="2-1")``: a message, its root named like the class."""
        super().__init_subclass__(**kwargs)
        if code or root:
            cls.ROOT, cls.CODE = root or cls.__name__, code

    # -- writing -------------------------------------------------------------------------

    def to_element(self) -> etree._Element:
        root = etree.Element(qualified(self.ROOT), nsmap=NSMAP)
        root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
        self.fill(root)
        return root

    def fill(self, element: etree._Element) -> None:
        for b in bindings(type(self)):
            value = getattr(self, b.field)
            if value is None and not b.nillable:
                continue
            if b.repeated:
                parent = _ensure(element, b.steps[:-1])
                for item in value:
                    _put(etree.SubElement(parent, qualified(b.steps[-1][0])), item)
            elif b.attr:
                _ensure(element, b.steps).set(f"{{{b.attr[0]}}}{b.attr[1]}", text_of(value))
            else:
                child = etree.SubElement(_ensure(element, b.steps[:-1]), qualified(b.steps[-1][0]))
                if value is None:
                    child.set(_NIL, "true")
                else:
                    _put(child, value)

    # -- reading -------------------------------------------------------------------------

    @classmethod
    def raw(cls, element: etree._Element) -> dict[str, Any]:
        """The field values found below ``element``, as text or nested dicts, before checks."""
        found: dict[str, Any] = {}
        for b in bindings(cls):
            if b.repeated:
                parent = _find(element, b.steps[:-1])
                items = [] if parent is None else children(parent, b.steps[-1])
                found[b.field] = [_get(b, item) for item in items]
                continue
            target = _find(element, b.steps)
            if target is None:
                continue
            value = read_attr(target, b.attr[1], b.attr[0]) if b.attr else _get(b, target)
            if value is not None:
                found[b.field] = value
        return found

    @classmethod
    def from_element(cls, element: etree._Element) -> Self:
        try:
            return cls.model_validate(cls.raw(element))
        except ValidationError as exc:
            raise MessageError(problems_from(exc, functools.partial(xml_path, cls))) from exc


def _ensure(element: etree._Element, steps: tuple[tuple[str, ...], ...]) -> etree._Element:
    for step in steps:
        found = _child(element, step[:1])
        element = etree.SubElement(element, qualified(step[0])) if found is None else found
    return element


def _find(element: etree._Element, steps: tuple[tuple[str, ...], ...]) -> etree._Element | None:
    for step in steps:
        found = _child(element, step)
        if found is None:
            return None
        element = found
    return element


def _put(element: etree._Element, value: object) -> None:
    if isinstance(value, ActesModel):
        value.fill(element)
    else:
        element.text = text_of(value)


def _get(b: _Binding, element: etree._Element) -> Any:
    if b.model is not None:
        return b.model.raw(element)
    if element.get(_NIL) in ("true", "1"):
        return None
    text = element.text or ""
    if b.text_is_str:
        return text
    # Dates and numbers: whitespace is not significant and an empty element means absent.
    return text.strip() or None


def xml_path(cls: type[ActesModel], loc: Loc) -> str:
    """A pydantic error location as the XML path below the message element."""
    parts: list[str] = []
    model: type[ActesModel] | None = cls
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1] if parts else ''}[{item + 1}]"
            continue
        b = next((b for b in bindings(model) if b.field == item), None) if model else None
        parts.append(b.display if b else str(item))
        model = b.model if b else None
    return "/".join(p for p in parts if p) or cls.ROOT
