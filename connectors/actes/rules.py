"""Business rules for an act and its sender, each a precise message naming the field.

One function per rule, returning the message or None; ``ActeMetadata`` (the submission's
metadata) and ``check_act`` (what needs the files, the classification or today) use them.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from broker import ids
from broker.flows.base import FileRule, Problem, UploadedFile
from broker.sniff import FileKind, sniff
from connectors.actes.classification import Classification, format_code, parse_code
from connectors.actes.natures import ANNEX_KINDS, NATURE_RULE, Nature, find_nature
from connectors.actes.natures import nature as nature_of

MAX_TOTAL_BYTES = 157_286_400  # act + annexes, 150 MiB (Pastell, S²LOW)
MAX_OBJET = 500
MAX_NUMERO = 15
NUMERO_RULE = f"1 to {MAX_NUMERO} characters among A-Z, 0-9 and _"
NUMERO_UNIQUE_RULE = (
    "an act number is used once per entity: a new act may not reuse the number of an act "
    "the entity already submitted"
)
TYPE_CODE_RULE = "two digits, _, then 2 to 5 capitals or digits, like 99_DE"
_NUMERO = re.compile(r"[A-Z0-9_]{1,15}")
_DEPARTEMENT = re.compile(r"[09][0-9][0-9AB]")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TYPE_CODE = re.compile(r"[0-9]{2}_[0-9A-Z]{2,5}")
# The official schema's e-mail pattern: anything else is refused by @CTES.
_EMAIL = re.compile(
    r"[_a-zA-Z0-9\-]+(\.[_a-zA-Z0-9\-]+)*@[a-zA-Z0-9\-]+(\.[a-zA-Z0-9\-]+)*"
    r"\.[a-zA-Z]{2,6}"
)

# File roles of an act submission: the flow declares these counts, check_act the content.
FILE_RULES = {
    "acte": FileRule(min=1, max=1, description="the act itself (PDF; XML for BF)"),
    "annexe": FileRule(min=0, description="annexes: PDF, XML, JPEG or PNG"),
}


# -- one rule each -------------------------------------------------------------------------


def siren_problem(value: str) -> str | None:
    return ids.siren_problem(value)


def _unless(ok: object, message: str) -> str | None:
    return None if ok else message


def _error_of(check: Callable[[], object]) -> str | None:
    """The message of the ``ValueError`` a parser raises, if it does."""
    try:
        check()
    except ValueError as exc:
        return str(exc)
    return None


def departement_problem(value: str) -> str | None:
    ok = _DEPARTEMENT.fullmatch(value) and (value[2].isdigit() or value[:2] == "02")
    return _unless(
        ok,
        "département must be 3 characters, 0 or 9, a digit, then a digit, "
        f"A or B (034, 02A, 974), got {value!r}",
    )


def arrondissement_problem(value: str) -> str | None:
    return _unless(re.fullmatch(r"[0-9]", value), f"arrondissement must be 1 digit, got {value!r}")


def authority_nature_problem(value: str) -> str | None:
    return _unless(
        re.fullmatch(r"[0-9]{2}", value),
        f"authority type (IDCL Nature) must be 2 digits, got {value!r}",
    )


def app_problem(value: str) -> str | None:
    return _unless(
        re.fullmatch(r"[A-Z]{4}", value),
        f"application code must be 4 capital letters (EACT, TACT), got {value!r}",
    )


def email_problem(value: str) -> str | None:
    return _unless(
        _EMAIL.fullmatch(value),
        f"{value!r} is not an e-mail address @CTES accepts (letters, digits, _ - . only)",
    )


def nature_problem(value: object) -> str | None:
    return _error_of(lambda: nature_of(value))


def numero_problem(value: str) -> str | None:
    if _NUMERO.fullmatch(value):
        return None
    if not value:
        return f"the act number is empty: {NUMERO_RULE}"
    if len(value) > MAX_NUMERO:
        return f"the act number has {len(value)} characters, at most {MAX_NUMERO} are allowed"
    wrong = sorted({c for c in value if not _NUMERO.fullmatch(c)})
    hint = f" (write {value.upper()!r})" if _NUMERO.fullmatch(value.upper()) else ""
    listed = ", ".join(repr(c) for c in wrong)
    return f"the act number {value!r} contains {listed}: only A-Z, 0-9 and _ are allowed{hint}"


def objet_problem(value: str) -> str | None:
    if not value.strip():
        return "the subject (objet) is empty"
    if len(value) > MAX_OBJET:
        return f"the subject has {len(value)} characters, at most {MAX_OBJET} are allowed"
    control = next(
        (c for c in value if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None
    )
    if control is not None:
        return f"the subject contains the control character U+{ord(control):04X}"
    return None


def code_problem(value: str) -> str | None:
    """The shape of a classification code (at least the two levels every act carries)."""
    return _error_of(lambda: parse_code(value, min_levels=2))


def type_code_problem(value: str) -> str | None:
    return _unless(
        _TYPE_CODE.fullmatch(value), f"typology code must be {TYPE_CODE_RULE}, got {value!r}"
    )


def decision_date_problem(value: dt.date, today: dt.date) -> str | None:
    if value <= today:
        return None
    return f"the decision date {value.isoformat()} is in the future (today is {today.isoformat()})"


def classification_problem(code: str, classification: Classification) -> str | None:
    """Whether ``code`` exists in the entity's current classification."""
    wanted = parse_code(code, min_levels=2)
    if wanted in classification.matieres:
        return None
    since = f"the classification of {classification.date.isoformat()}"
    known = next(
        (
            wanted[:n]
            for n in range(len(wanted) - 1, 0, -1)
            if wanted[:n] in classification.matieres
        ),
        (),
    )
    if len(known) < len(wanted) - 1:
        missing = format_code(wanted[: len(known) + 1])
        return f"classification code {code}: {missing} does not exist in {since}"
    below = classification.children(known)
    if not below:
        return (
            f"classification code {code} has one level too many: {format_code(known)} "
            f"has no sub-level in {since}"
        )
    listed = ", ".join(format_code(c) for c in below)
    return (
        f"classification code {code} does not exist in {since} "
        f"(under {format_code(known)}: {listed})"
    )


def classification_date_problem(used: dt.date, current: dt.date) -> str | None:
    """The entity's stored classification against the one the TdT now announces."""
    if used == current:
        return None
    return (
        f"the classification of {used.isoformat()} is not the current one "
        f"({current.isoformat()}): update the classification before sending"
    )


def allowed_types(nature: Nature, classification: Classification | None) -> dict[str, str]:
    """Typology codes for a nature: the classification's when it lists them, else defaults."""
    listed = classification.typology(nature.code) if classification else None
    return listed if listed is not None else nature.default_pj_types


def type_allowed_problem(
    code: str, nature: Nature, classification: Classification | None
) -> str | None:
    allowed = allowed_types(nature, classification)
    if code in allowed:
        return None
    source = (
        f"the classification of {classification.date.isoformat()}"
        if classification and classification.typology(nature.code)
        else "the defaults"
    )
    return (
        f"typology code {code} is not allowed for nature {nature.abbr} by {source} "
        f"(allowed: {', '.join(sorted(allowed))})"
    )


def file_kind_problem(file: UploadedFile, nature: Nature) -> str | None:
    kind = sniff(file.head)
    is_act = file.role == "acte"
    allowed = nature.main_kinds if is_act else ANNEX_KINDS
    if kind in allowed:
        return None
    what = f"the act document {file.name!r}" if is_act else f"the annex {file.name!r}"
    labels = [k.label for k in FileKind if k in allowed]
    expected = f"{', '.join(labels[:-1])} or {labels[-1]}" if len(labels) > 1 else labels[0]
    for_whom = f"an act of nature {nature.abbr}" if is_act else "an annex"
    return f"by its content, {what} is {kind.described}: {for_whom} must be {expected}"


def total_size_problem(total: int) -> str | None:
    if total <= MAX_TOTAL_BYTES:
        return None
    return (
        f"the act and its annexes total {total:,} bytes, more than the "
        f"{MAX_TOTAL_BYTES:,} bytes (150 MiB) allowed"
    )


def entity_problems(
    siren: str, departement: str, arrondissement: str, authority_nature: str | None = None
) -> list[Problem]:
    """The sender's identity as @CTES checks it in the envelope."""
    found = [
        ("siren", siren_problem(siren)),
        ("departement", departement_problem(departement)),
        ("arrondissement", arrondissement_problem(arrondissement)),
    ]
    if authority_nature is not None:
        found.append(("nature", authority_nature_problem(authority_nature)))
    return [Problem(name, message) for name, message in found if message]


def duplicate_numero(numero: str) -> Problem:
    """The problem to report when the store already holds ``numero`` for the entity."""
    return Problem("numero", f"the act number {numero!r} is already used: {NUMERO_UNIQUE_RULE}")


# -- the submission ------------------------------------------------------------------------


def _rule(check: Callable[[Any], str | None]) -> AfterValidator:
    def validate(value: Any) -> Any:
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


def _nature_code(value: object) -> int:
    return nature_of(value).code


def _day_only(value: object) -> object:
    # A date, not a timestamp or a date-time: what a decision carries.
    is_day = isinstance(value, dt.date) and not isinstance(value, dt.datetime)
    if not is_day and not (isinstance(value, str) and _DAY.fullmatch(value)):
        raise ValueError(f"date must be YYYY-MM-DD, got {value!r}")
    return value


TypeCode = Annotated[str, _rule(type_code_problem)]


class ActeMetadata(BaseModel):
    """Metadata of an act submitted for transmission."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nature: Annotated[int, BeforeValidator(_nature_code)] = Field(
        description=f"nature of the act: {NATURE_RULE}", examples=[1, "DE"]
    )
    numero: Annotated[str, _rule(numero_problem)] = Field(
        description=f"act number, {NUMERO_RULE}, unique per entity", examples=["2024_042"]
    )
    date: Annotated[dt.date, BeforeValidator(_day_only)] = Field(
        description="decision date, YYYY-MM-DD"
    )
    objet: Annotated[str, _rule(objet_problem)] = Field(
        description=f"subject, 1 to {MAX_OBJET} characters"
    )
    classification: Annotated[str, _rule(code_problem)] = Field(
        description="matière code of the current classification", examples=["1.1", "7.10.2"]
    )
    type_piece: TypeCode | None = Field(
        default=None, description="typology code of the act; the nature's default when absent"
    )
    type_pj: list[TypeCode] | None = Field(
        default=None, description="typology code of each annex, in order; default per nature"
    )
    signature: bool = Field(default=False, description="sign the act before sending")
    archive: bool = Field(default=False, description="archive the act once acknowledged")

    @property
    def nature_info(self) -> Nature:
        found = find_nature(self.nature)
        assert found is not None  # checked on validation
        return found

    @property
    def piece_type(self) -> str:
        return self.type_piece or self.nature_info.type_piece

    def annex_types(self, count: int) -> list[str]:
        """The typology code of each of ``count`` annexes."""
        default = self.nature_info.type_piece
        return list(self.type_pj) if self.type_pj is not None else [default] * count


def check_act(
    meta: ActeMetadata,
    files: Sequence[UploadedFile],
    classification: Classification | None,
    today: dt.date,
) -> list[Problem]:
    """What the metadata model cannot check alone: date, classification, typology, files.

    File counts per role are the flow's (``FILE_RULES``); numbers already used are the
    caller's, against the store (``duplicate_numero``).
    """
    nature = meta.nature_info
    found: list[tuple[str, str | None]] = [("date", decision_date_problem(meta.date, today))]
    if classification is not None:
        found.append(
            ("classification", classification_problem(meta.classification, classification))
        )
        if classification.natures and nature.code not in classification.natures:
            found.append(
                (
                    "nature",
                    f"nature {nature.abbr} is not in the classification of "
                    f"{classification.date.isoformat()}",
                )
            )
    found.append(("type_piece", type_allowed_problem(meta.piece_type, nature, classification)))
    annexes = [f for f in files if f.role == "annexe"]
    if meta.type_pj is not None and len(meta.type_pj) != len(annexes):
        found.append(
            (
                "type_pj",
                f"type_pj has {len(meta.type_pj)} code(s) for {len(annexes)} "
                "annex(es): give one code per annex, in the order of the annexes",
            )
        )
    for index, code in enumerate(meta.type_pj or ()):
        found.append((f"type_pj[{index}]", type_allowed_problem(code, nature, classification)))
    for file in files:
        if file.role in FILE_RULES:
            found.append((f"files.{file.role}", file_kind_problem(file, nature)))
    found.append(("files", total_size_problem(sum(f.size for f in files if f.role in FILE_RULES))))
    return [Problem(name, message) for name, message in found if message]
