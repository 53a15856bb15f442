"""The ACTES naming grammar: IDActe, archive, envelope, message and file names.

Builders are strict (what they produce must pass @CTES); the parser is lenient about
what the préfecture sends (any ``_k`` suffix or none, lowercase numbers, test SIRENs).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from connectors.actes import rules
from connectors.actes.natures import nature as nature_of

_DAY = "%Y%m%d"
_ID_ACTE = re.compile(
    r"(?P<dpt>[0-9]{2}[0-9AB])-(?P<siren>[0-9]{9})-(?P<date>[0-9]{8})-"
    r"(?P<num>[a-zA-Z0-9_]{1,15})-(?P<na>[A-Z]{2})"
)
_MESSAGE = re.compile(
    r"(?:(?P<type>[0-9A-Z]{2}_[0-9A-Z]{2,5})-)?"
    r"(?P<dpt>[0-9]{2}[0-9AB])-(?P<siren>[0-9]{1,9})-(?P<date>[0-9]{8})?-"
    r"(?P<num>[a-zA-Z0-9_]{1,15})?-(?P<na>[A-Z]{2})?-(?P<t>[0-9])-(?P<s>[0-9])"
    r"(?:_(?P<k>[0-9]+))?\.(?P<ext>[A-Za-z0-9]{1,5})"
)
_SERVICE = r"SPREF[0-9]{4}|PREF[0-9]{3}|SGAR[0-9]{3}"
_ENVELOPE = re.compile(
    r"(?P<ano>ANO_)?(?:(?P<itc>[A-Z]{3})-)?(?P<app>[A-Z0-9]{2,8})--"
    rf"(?:(?P<service>{_SERVICE})-(?P<psiren>[0-9]{{9}})-|(?P<siren>[0-9]{{9}})--)"
    r"(?P<date>[0-9]{8})-(?P<n>[0-9]+)\.(?P<ext>xml|tar\.gz)"
)


def _day(value: str | None) -> dt.date | None:
    return dt.datetime.strptime(value, _DAY).date() if value else None


def _require(problem: str | None) -> None:
    if problem:
        raise ValueError(problem)


@dataclass(frozen=True)
class IdActe:
    """``<DPT>-<SIREN>-<YYYYMMDD>-<NumeroInterne>-<NA>``: known before the AR comes back."""

    departement: str
    siren: str
    date: dt.date
    numero: str
    nature: str  # abbreviation

    def __str__(self) -> str:
        day = self.date.strftime(_DAY)
        return f"{self.departement}-{self.siren}-{day}-{self.numero}-{self.nature}"


def id_acte(departement: str, siren: str, date: dt.date, numero: str, nature: int | str) -> str:
    """The IDActe of an act, checking each part."""
    for problem in (
        rules.departement_problem(departement),
        rules.siren_problem(siren),
        rules.numero_problem(numero),
    ):
        _require(problem)
    return str(IdActe(departement, siren, date, numero, nature_of(nature).abbr))


def parse_id_acte(value: str) -> IdActe:
    found = _ID_ACTE.fullmatch(value.strip())
    if not found:
        raise ValueError(f"{value!r} is not an IDActe (DPT-SIREN-YYYYMMDD-NUMBER-NA)")
    day = _day(found["date"])
    assert day is not None
    return IdActe(found["dpt"], found["siren"], day, found["num"], found["na"])


def message_base(departement: str, siren: str, code: str, act: IdActe | None = None) -> str:
    """``034-491011698-20171207-CL20171227_06-DE-1-1`` for a message about ``act`` (whose
    IDActe gives département and SIREN); date, number and nature are left empty for a
    message not tied to an act (``044-214400152----7-1``)."""
    if code.count("-") != 1:
        raise ValueError(f"message code must be T-S, like 1-1, got {code!r}")
    if act is None:
        return f"{departement}-{siren}----{code}"
    return f"{act}-{code}"


def file_name(base: str, index: int, extension: str, type_code: str | None = None) -> str:
    """``_0`` the message, ``_1`` the act, ``_2``… the annexes; typology code in front."""
    name = f"{base}_{index}.{extension}"
    return f"{type_code}-{name}" if type_code else name


def envelope_name(app: str, siren: str, day: dt.date, serial: int) -> str:
    """Envelope of a sending from the collectivité: ``EACT--214502494--20170717-5.xml``."""
    _require(rules.app_problem(app) or rules.siren_problem(siren))
    return f"{app}--{siren}--{day.strftime(_DAY)}-{serial}.xml"


def prefecture_envelope_name(app: str, service: str, siren: str, day: dt.date, serial: int) -> str:
    """Envelope from the préfecture: ``EACT--SPREF0441-214400152-20181012-9.xml``."""
    if not re.fullmatch(_SERVICE, service):
        raise ValueError(f"service must be SPREFdddd, PREFddd or SGARddd, got {service!r}")
    return f"{app}--{service}-{siren}-{day.strftime(_DAY)}-{serial}.xml"


def archive_name(itc: str, envelope: str) -> str:
    """``SLO-EACT--214502494--20170717-5.tar.gz`` from the TdT trigram and the envelope name."""
    if not re.fullmatch(r"[A-Z]{3}", itc):
        raise ValueError(f"the TdT code (ITC) must be 3 capital letters, got {itc!r}")
    return f"{itc}-{envelope.removesuffix('.xml')}.tar.gz"


@dataclass(frozen=True)
class MessageFileName:
    """A message or attached file name as received."""

    type_code: str | None
    departement: str
    siren: str
    date: dt.date | None
    numero: str | None
    nature: str | None
    code: str  # T-S
    index: int | None
    extension: str

    @property
    def id_acte(self) -> IdActe | None:
        if self.date and self.numero and self.nature:
            return IdActe(self.departement, self.siren, self.date, self.numero, self.nature)
        return None


@dataclass(frozen=True)
class EnvelopeName:
    """An envelope or archive name, either direction, anomaly or not."""

    app: str
    siren: str
    date: dt.date
    serial: int
    service: str | None  # set when the préfecture sent it
    itc: str | None  # set on archive names
    anomaly: bool
    extension: str


def parse_name(name: str) -> MessageFileName | EnvelopeName:
    """What a received name says; ``ValueError`` when it follows neither grammar."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    found = _MESSAGE.fullmatch(base)
    if found:
        return MessageFileName(
            found["type"],
            found["dpt"],
            found["siren"],
            _day(found["date"]),
            found["num"],
            found["na"],
            f"{found['t']}-{found['s']}",
            int(found["k"]) if found["k"] is not None else None,
            found["ext"].lower(),
        )
    found = _ENVELOPE.fullmatch(base)
    if found:
        day = _day(found["date"])
        assert day is not None
        return EnvelopeName(
            found["app"],
            found["siren"] or found["psiren"],
            day,
            int(found["n"]),
            found["service"],
            found["itc"],
            bool(found["ano"]),
            found["ext"],
        )
    raise ValueError(f"{base!r} follows neither the ACTES message/file nor the envelope naming")


def type_code(file_name: str) -> str | None:
    """The typology code a received file name starts with (``32_DP-…``), if any."""
    try:
        parsed = parse_name(file_name)
    except ValueError:
        return None
    return parsed.type_code if isinstance(parsed, MessageFileName) else None
