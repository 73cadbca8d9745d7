"""Field errors worded exactly like the Kubernetes API server's.

Mirrors k8s.io/apimachinery/pkg/util/validation/field/errors.go (FieldError,
its constructors and ErrorBody) and NewInvalid from
k8s.io/apimachinery/pkg/api/errors/errors.go (InvalidError), so that lab users
see the same text ``kubectl`` would show them on a real cluster.

Bad values are rendered like Go does: strings with ``%q``, numbers and bools
bare, ``nil`` as ``null``, and typed Go values (``[]string{...}``,
``map[string]string{...}``, structs) through :class:`GoRepr` helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

# ErrorType values: machine-readable, used as Status cause "reason".
NOT_FOUND = "FieldValueNotFound"
REQUIRED = "FieldValueRequired"
DUPLICATE = "FieldValueDuplicate"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
FORBIDDEN = "FieldValueForbidden"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
INTERNAL = "InternalError"
TYPE_INVALID = "FieldValueTypeInvalid"

_TYPE_TEXT = {
    NOT_FOUND: "Not found",
    REQUIRED: "Required value",
    DUPLICATE: "Duplicate value",
    INVALID: "Invalid value",
    NOT_SUPPORTED: "Unsupported value",
    FORBIDDEN: "Forbidden",
    TOO_LONG: "Too long",
    TOO_MANY: "Too many",
    INTERNAL: "Internal error",
    TYPE_INVALID: "Invalid value",
}

# Types whose message never shows the bad value (upstream ErrorBody).
_VALUELESS_TYPES = {REQUIRED, FORBIDDEN, TOO_LONG, INTERNAL}


class _Omit:
    """Marker for 'do not print a value' (upstream's omitValue)."""

    def __repr__(self) -> str:
        return "OMIT"


OMIT = _Omit()


# --------------------------------------------------------------------------
# Go-style value rendering
# --------------------------------------------------------------------------

_GO_ESCAPES = {
    "\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n",
    "\r": r"\r", "\t": r"\t", "\v": r"\v", "\\": r"\\", '"': r"\"",
}


def go_quote(text: str) -> str:
    """Quote a string the way Go's ``strconv.Quote`` / ``%q`` does."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


@dataclass(frozen=True)
class GoRepr:
    """A value already rendered the way Go's ``%#v`` prints it."""

    text: str

    def __str__(self) -> str:
        return self.text


def _go_scalar(value: Any) -> str:
    """Render a scalar as Go's ``%v`` (numbers, bools) or ``%q`` (strings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return go_quote(value)
    return go_quote(str(value))


def go_string_slice(values: Iterable[Any] | None) -> GoRepr:
    """Render as Go ``[]string{"a", "b"}`` (``[]string(nil)`` for None)."""
    if values is None:
        return GoRepr("[]string(nil)")
    inner = ", ".join(go_quote(str(v)) for v in values)
    return GoRepr("[]string{" + inner + "}")


def go_string_map(mapping: Mapping[str, Any] | None) -> GoRepr:
    """Render as Go ``map[string]string{"k":"v"}``; Go sorts map keys."""
    if mapping is None:
        return GoRepr("map[string]string(nil)")
    inner = ", ".join(
        f"{go_quote(str(k))}:{go_quote(str(mapping[k]))}" for k in sorted(mapping)
    )
    return GoRepr("map[string]string{" + inner + "}")


def go_label_selector(selector: Mapping[str, Any]) -> GoRepr:
    """Render a LabelSelector as ``v1.LabelSelector{...}`` (seen in real errors)."""
    labels = go_string_map(selector.get("matchLabels"))
    exprs = selector.get("matchExpressions")
    if exprs is None:
        rendered = "[]v1.LabelSelectorRequirement(nil)"
    else:
        items = ", ".join(_go_requirement(e) for e in exprs)
        rendered = "[]v1.LabelSelectorRequirement{" + items + "}"
    return GoRepr(f"v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{rendered}}}")


def _go_requirement(expr: Mapping[str, Any]) -> str:
    values = go_string_slice(expr.get("values"))
    return (
        f"v1.LabelSelectorRequirement{{Key:{go_quote(str(expr.get('key', '')))}, "
        f"Operator:{go_quote(str(expr.get('operator', '')))}, Values:{values}}}"
    )


def go_service_port(protocol: str, port: int) -> GoRepr:
    """Render the (protocol, port) key upstream reports for duplicate ports."""
    return GoRepr(
        f'core.ServicePort{{Name:"", Protocol:{go_quote(protocol)}, '
        f"AppProtocol:(*string)(nil), Port:{port}, "
        f'TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:""}}, NodePort:0}}'
    )


def render_value(value: Any) -> str:
    """Render a bad value for an error message, following upstream ErrorBody."""
    if isinstance(value, GoRepr):
        return value.text
    if isinstance(value, (list, tuple)):
        return go_string_slice(value).text
    if isinstance(value, dict):
        return go_string_map(value).text
    return _go_scalar(value)


MAX_VALUE_CHARS = 1024  # a bad value is quoted up to this length in a message


def _bounded(text: str) -> str:
    """A rendered value cut to MAX_VALUE_CHARS: a 1 MB label must not make a 1 MB message."""
    if len(text) <= MAX_VALUE_CHARS:
        return text
    return f"{text[:MAX_VALUE_CHARS]}... ({len(text)} characters)"


# --------------------------------------------------------------------------
# FieldError and constructors
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldError:
    """One field-level validation failure (upstream ``field.Error``)."""

    type: str
    field: str
    bad_value: Any
    detail: str = ""

    def body(self) -> str:
        """The message without the field path (upstream ``ErrorBody``)."""
        text = _TYPE_TEXT[self.type]
        if self.type not in _VALUELESS_TYPES and self.bad_value is not OMIT:
            text += ": " + _bounded(render_value(self.bad_value))
        if self.detail:
            text += ": " + self.detail
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def invalid(path: str, value: Any, detail: str) -> FieldError:
    """A malformed value (failed regex, out of range...)."""
    return FieldError(INVALID, path, value, detail)


def type_invalid(path: str, value: Any, detail: str) -> FieldError:
    """A value of the wrong type for its field."""
    return FieldError(TYPE_INVALID, path, value, detail)


def required(path: str, detail: str = "") -> FieldError:
    """A required value that is missing or empty."""
    return FieldError(REQUIRED, path, "", detail)


def not_found(path: str, value: Any) -> FieldError:
    """A reference to something that does not exist."""
    return FieldError(NOT_FOUND, path, value, "")


def duplicate(path: str, value: Any) -> FieldError:
    """A value that must be unique but is not."""
    return FieldError(DUPLICATE, path, value, "")


def not_supported(path: str, value: Any, valid_values: Iterable[str]) -> FieldError:
    """A value outside an enumeration; lists the valid ones, quoted."""
    quoted = [go_quote(str(v)) for v in valid_values]
    detail = "supported values: " + ", ".join(quoted) if quoted else ""
    return FieldError(NOT_SUPPORTED, path, value, detail)


def forbidden(path: str, detail: str) -> FieldError:
    """A well-formed value not allowed in the current context."""
    return FieldError(FORBIDDEN, path, "", detail)


def too_long(path: str, value: Any, max_length: int) -> FieldError:
    """A value longer than allowed (the value itself is not printed)."""
    return FieldError(TOO_LONG, path, value, f"must have at most {max_length} bytes")


def too_many(path: str, actual: int, max_quantity: int) -> FieldError:
    """A list with more items than allowed."""
    detail = f"must have at most {max_quantity} items" if max_quantity >= 0 else "has too many items"
    value = actual if actual >= 0 else OMIT
    return FieldError(TOO_MANY, path, value, detail)


def internal_error(path: str, message: str) -> FieldError:
    """A failure not caused by user input."""
    return FieldError(INTERNAL, path, None, message)


# --------------------------------------------------------------------------
# InvalidError (upstream NewInvalid)
# --------------------------------------------------------------------------

def aggregate_message(errors: Iterable[FieldError]) -> str:
    """Join errors like upstream ``ToAggregate().Error()`` (dedup, brackets if >1)."""
    seen: list[str] = []
    for err in errors:
        msg = str(err)
        if msg not in seen:
            seen.append(msg)
    if len(seen) == 1:
        return seen[0]
    return "[" + ", ".join(seen) + "]"


def _group_of(kind: str) -> str:
    from kproxy.api import meta  # local import: meta must not depend on errors

    info = meta.KINDS.get(kind)
    return info.group if info else ""


class InvalidError(Exception):
    """An object rejected by validation: HTTP 422, reason Invalid."""

    def __init__(self, kind: str, name: str, errors: Iterable[FieldError], group: str | None = None):
        self.kind = kind
        self.name = name or ""
        self.errors = list(errors)
        self.group = _group_of(kind) if group is None else group
        super().__init__(self.message)

    @property
    def qualified_kind(self) -> str:
        """``Kind`` for the core group, ``Kind.group`` otherwise (GroupKind.String)."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def message(self) -> str:
        name = self.name if len(self.name) <= 2 * 253 else self.name[:253] + f"... ({len(self.name)} characters)"
        head = f"{self.qualified_kind} {go_quote(name)} is invalid"
        if not self.errors:
            return head
        return f"{head}: {aggregate_message(self.errors)}"

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> dict:
        """The ``Status`` object the API server returns for this error."""
        details: dict[str, Any] = {"name": self.name}
        if self.group:
            details["group"] = self.group
        details["kind"] = self.kind
        details["causes"] = [
            {"reason": e.type, "message": e.body(), "field": e.field} for e in self.errors
        ]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": "Invalid",
            "details": details,
            "code": 422,
        }
