"""labelSelector and fieldSelector query parameters, parsed and refused as the API server does.

`parse_label_selector(s)` follows k8s.io/apimachinery/pkg/labels/selector.go token by token
(its lexer, its recursive-descent parser and its error texts: `unable to parse requirement:
found '...', expected: ...`), so `kubectl get pods -l 'app in (web'` gets upstream's words. The
requirements are turned into a LabelSelector (matchLabels/matchExpressions) and matched by
kproxy.api.meta.selector_matches, the one implementation of label matching in kproxy; only
`=`/`==`/`!=` with their "exact match" semantics and Gt/Lt (which LabelSelector has no word
for) are matched here.

`parse_field_selector(kind, s)` follows pkg/fields/selector.go for the grammar (`,`-separated
terms, `!=` `==` `=`, backslash escapes) and, per kind, the API server's field label conversion
functions (which labels a kind accepts, with their exact refusal — `field label not supported:
X` for pods, nodes, events, ...; `"X" is not a known field selector: only "metadata.name",
"metadata.namespace"` for kinds with no conversion function) and its ToSelectableFields
(where each label's value comes from; an accepted label a kind never sets reads as "").

Both raise SelectorError(message); the REST layer answers 400 BadRequest with that message.
"""

from __future__ import annotations

from typing import Any, Callable

from kproxy.api import errors as fe
from kproxy.api.meta import selector_matches
from kproxy.api.validation.common import is_label_value, is_qualified_name


class SelectorError(ValueError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# ------------------------------------------------------------------ label selectors

_SPECIAL = set("=!(),><")
_WHITESPACE = set(" \t\r\n")
_KEYWORDS = {")": "ClosedPar", ",": "Comma", "!": "DoesNotExist", "==": "DoubleEquals", "=": "Equals",
             ">": "GreaterThan", "in": "In", "<": "LessThan", "!=": "NotEquals", "notin": "NotIn",
             "(": "OpenPar"}
_BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"
_END, _ID, _ERROR = "EndOfString", "Identifier", "Error"


def _lex(s: str) -> list[tuple[str, str]]:
    """Lexer.Lex until the end of the string."""
    out: list[tuple[str, str]] = []
    pos, n = 0, len(s)
    while True:
        while pos < n and s[pos] in _WHITESPACE:
            pos += 1
        if pos >= n:
            out.append((_END, ""))
            return out
        if s[pos] in _SPECIAL:  # scanSpecialSymbol: the longest operator
            buf, last = "", None
            while pos < n and s[pos] in _SPECIAL:
                buf += s[pos]
                if buf in _KEYWORDS:
                    last = buf
                    pos += 1
                elif last is not None:
                    break
                else:
                    pos += 1
            out.append((_KEYWORDS[last], last) if last else (_ERROR, f"error expected: keyword found '{buf}'"))
        else:
            start = pos
            while pos < n and s[pos] not in _SPECIAL and s[pos] not in _WHITESPACE:
                pos += 1
            word = s[start:pos]
            out.append((_KEYWORDS.get(word, _ID), word))


class _Parser:
    def __init__(self, s: str):
        self.items = _lex(s)
        self.pos = 0

    def lookahead(self, values: bool = True) -> tuple[str, str]:
        return self._ctx(self.items[self.pos], values)

    def consume(self, values: bool = True) -> tuple[str, str]:
        self.pos += 1
        return self._ctx(self.items[self.pos - 1], values)

    @staticmethod
    def _ctx(item: tuple[str, str], values: bool) -> tuple[str, str]:
        tok, lit = item
        return (_ID, lit) if values and tok in ("In", "NotIn") else (tok, lit)

    def parse(self) -> list[tuple[str, str, list[str]]]:
        reqs = []
        while True:
            tok, lit = self.lookahead()
            if tok in (_ID, "DoesNotExist"):
                try:
                    reqs.append(self.requirement())
                except SelectorError as e:
                    raise SelectorError(f"unable to parse requirement: {e.message}") from None
                t, lit = self.consume()
                if t == _END:
                    return reqs
                if t == "Comma":
                    t2, l2 = self.lookahead()
                    if t2 not in (_ID, "DoesNotExist"):
                        raise SelectorError(f"found '{l2}', expected: identifier after ','")
                else:
                    raise SelectorError(f"found '{lit}', expected: ',' or 'end of string'")
            elif tok == _END:
                return reqs
            else:
                raise SelectorError(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def requirement(self) -> tuple[str, str, list[str]]:
        op = ""
        tok, lit = self.consume()
        if tok == "DoesNotExist":
            op = "!"
            tok, lit = self.consume()
        if tok != _ID:
            raise SelectorError(f"found '{lit}', expected: identifier")
        errs = is_qualified_name(lit)
        if errs:
            raise SelectorError(str(fe.invalid("<nil>", lit, "; ".join(errs))))
        key = lit
        if self.lookahead()[0] in (_END, "Comma"):
            return _new_requirement(key, op or "exists", [])
        if op:
            return _new_requirement(key, op, [])
        tok, lit = self.consume(values=False)
        ops = {"In": "in", "Equals": "=", "DoubleEquals": "==", "GreaterThan": "gt", "LessThan": "lt",
               "NotIn": "notin", "NotEquals": "!="}
        if tok not in ops:
            raise SelectorError(f"found '{lit}', expected: {_BINARY_OPERATORS}")
        op = ops[tok]
        values = self.values() if op in ("in", "notin") else self.exact_value()
        return _new_requirement(key, op, sorted(values))

    def values(self) -> set[str]:
        tok, lit = self.consume()
        if tok != "OpenPar":
            raise SelectorError(f"found '{lit}' expected: '('")
        tok, lit = self.lookahead()
        if tok in (_ID, "Comma"):
            s = self.identifiers()
            if self.consume()[0] != "ClosedPar":
                raise SelectorError(f"found '{lit}', expected: ')'")
            return s
        if tok == "ClosedPar":
            self.consume()
            return {""}
        raise SelectorError(f"found '{lit}', expected: ',', ')' or identifier")

    def identifiers(self) -> set[str]:
        s: set[str] = set()
        while True:
            tok, lit = self.consume()
            if tok == _ID:
                s.add(lit)
                tok2, lit2 = self.lookahead()
                if tok2 == "Comma":
                    continue
                if tok2 == "ClosedPar":
                    return s
                raise SelectorError(f"found '{lit2}', expected: ',' or ')'")
            if tok == "Comma":
                if not s:
                    s.add("")
                tok2 = self.lookahead()[0]
                if tok2 == "ClosedPar":
                    s.add("")
                    return s
                if tok2 == "Comma":
                    s.add("")
            else:
                raise SelectorError(f"found '{lit}', expected: ',', or identifier")

    def exact_value(self) -> set[str]:
        if self.lookahead()[0] in (_END, "Comma"):
            return {""}
        tok, lit = self.consume()
        if tok == _ID:
            return {lit}
        raise SelectorError(f"found '{lit}', expected: identifier")


def _new_requirement(key: str, op: str, values: list[str]) -> tuple[str, str, list[str]]:
    """NewRequirement's checks of the values (the key was checked by the parser)."""
    errs: list[fe.FieldError] = []
    if op in ("gt", "lt"):
        for i, v in enumerate(values):
            if not v.lstrip("+-").isdigit():
                errs.append(fe.invalid(f"values[{i}]", v, "for 'Gt', 'Lt' operators, the value must be an integer"))
    for i, v in enumerate(values):
        bad = is_label_value(v)
        if bad:
            errs.append(fe.invalid(f"values[{i}][{key}]", v, "; ".join(bad)))
    if errs:
        raise SelectorError(fe.aggregate_message(errs))
    return key, op, values


def parse_label_requirements(s: str) -> list[tuple[str, str, list[str]]]:
    """The selector's requirements (key, operator, sorted values), sorted by key as upstream's
    parse() sorts them; operators are "=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt"."""
    return sorted(_Parser(s or "").parse(), key=lambda r: r[0])


def parse_label_selector(s: str) -> Callable[[dict], bool]:
    """A predicate over a labels dict; an empty selector matches everything."""
    reqs = parse_label_requirements(s)
    match_labels: dict[str, str] = {}
    exprs: list[dict[str, Any]] = []
    extra: list[Callable[[dict], bool]] = []
    for key, op, values in reqs:
        if op in ("=", "=="):
            if key in match_labels and match_labels[key] != values[0]:
                return lambda labels: False
            match_labels[key] = values[0]
        elif op in ("in", "notin"):
            exprs.append({"key": key, "operator": "In" if op == "in" else "NotIn", "values": values})
        elif op == "!=":
            exprs.append({"key": key, "operator": "NotIn", "values": values})
        elif op in ("exists", "!"):
            exprs.append({"key": key, "operator": "Exists" if op == "exists" else "DoesNotExist"})
        else:
            extra.append(_int_compare(key, op, int(values[0])))
    selector = {"matchLabels": match_labels, "matchExpressions": exprs}
    return lambda labels: selector_matches(selector, labels or {}) and all(f(labels or {}) for f in extra)


def _int_compare(key: str, op: str, bound: int) -> Callable[[dict], bool]:
    def check(labels: dict) -> bool:
        v = labels.get(key)
        if v is None or not v.lstrip("+-").isdigit():
            return False
        return int(v) > bound if op == "gt" else int(v) < bound
    return check


# ------------------------------------------------------------------ field selectors

_META = ("metadata.name", "metadata.namespace")


def _get(obj: dict, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def _pod_ip(pod: dict) -> str:
    ips = _get(pod, "status.podIPs") or []
    return (ips[0].get("ip") or "") if ips else _text(_get(pod, "status.podIP"))


def _event_source(ev: dict) -> str:
    return _text(_get(ev, "source.component")) or _text(ev.get("reportingComponent"))


_P: Callable[[str], Callable[[dict], str]] = lambda path: (lambda o: _text(_get(o, path)))  # noqa: E731
_FALSE_IF_UNSET = lambda path: (lambda o: _text(bool(_get(o, path))))  # noqa: E731

# kind -> (the labels its conversion function accepts -> how ToSelectableFields reads them,
#          refusal wording). Labels accepted but never set (pods' status.podIPs) read as "".
_INVOLVED = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
_FIELDS: dict[str, dict[str, Callable[[dict], str]]] = {
    "Pod": {"metadata.name": _P("metadata.name"), "metadata.namespace": _P("metadata.namespace"),
            "spec.nodeName": _P("spec.nodeName"), "spec.restartPolicy": _P("spec.restartPolicy"),
            "spec.schedulerName": _P("spec.schedulerName"),
            "spec.serviceAccountName": _P("spec.serviceAccountName"),
            "spec.hostNetwork": _FALSE_IF_UNSET("spec.hostNetwork"), "status.phase": _P("status.phase"),
            "status.podIP": _pod_ip, "status.podIPs": lambda o: "",
            "status.nominatedNodeName": _P("status.nominatedNodeName")},
    "Node": {"metadata.name": _P("metadata.name"), "spec.unschedulable": _FALSE_IF_UNSET("spec.unschedulable")},
    "Namespace": {"metadata.name": _P("metadata.name"), "status.phase": _P("status.phase")},
    "Service": {"metadata.name": _P("metadata.name"), "metadata.namespace": _P("metadata.namespace"),
                "spec.clusterIP": _P("spec.clusterIP"), "spec.type": _P("spec.type")},
    "Event": {"metadata.name": _P("metadata.name"), "metadata.namespace": _P("metadata.namespace"),
              **{f"involvedObject.{f}": _P(f"involvedObject.{f}") for f in _INVOLVED},
              "reason": _P("reason"), "reportingComponent": _P("reportingComponent"),
              "source": _event_source, "type": _P("type")},
}
# events.k8s.io/v1 Events: the same storage, the wire names regarding.* / reportingController.
_EVENTS_V1_ALIASES = {**{f"regarding.{f}": f"regarding.{f}" for f in _INVOLVED},
                      "reportingController": "reportingController", "reason": "reason", "type": "type"}
_POD_ALIASES = {"spec.host": "spec.nodeName"}  # pods: what old clients send


def _default_refusal(label: str) -> str:
    return f'"{label}" is not a known field selector: only "metadata.name", "metadata.namespace"'


def _field_reader(kind: str, group: str, label: str) -> Callable[[dict], str]:
    """The kind's field label conversion (refusals) and the label's value reader."""
    if kind == "Event" and group == "events.k8s.io":
        if label in _META:
            return _P(label)
        if label in _EVENTS_V1_ALIASES:  # read from either shape: the storage is core/v1's
            core = _FIELDS["Event"].get(label.replace("regarding.", "involvedObject.")
                                        .replace("reportingController", "source"))
            wire = _P(_EVENTS_V1_ALIASES[label])
            return lambda o: wire(o) or (core(o) if core else "")
        raise SelectorError(f"field label not supported: {label}")
    table = _FIELDS.get(kind)
    if table is None:  # DefaultMetaV1FieldSelectorConversion (and the core kinds that use its wording)
        if label in _META:
            return _P(label)
        raise SelectorError(_default_refusal(label))
    if kind == "Pod":
        label = _POD_ALIASES.get(label, label)
    if label not in table:
        raise SelectorError(f"field label not supported: {label}")
    return table[label]


def _split_terms(s: str) -> list[str]:
    terms, start, in_slash = [], 0, False
    for i, c in enumerate(s):
        if in_slash:
            in_slash = False
        elif c == "\\":
            in_slash = True
        elif c == ",":
            terms.append(s[start:i])
            start = i + 1
    terms.append(s[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    for i in range(len(term)):
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op):]
    return None


def _unescape(s: str) -> str:
    out, in_slash = [], False
    for c in s:
        if in_slash:
            if c not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{c}")
            out.append(c)
            in_slash = False
        elif c == "\\":
            in_slash = True
        elif c in ",=":
            raise SelectorError(f"invalid field selector: unescaped character in value: {ord(c)}")
        else:
            out.append(c)
    return "".join(out)


def parse_field_selector(kind: str, s: str, group: str = "") -> Callable[[dict], bool]:
    """A predicate over whole objects of `kind` (`group` tells events.k8s.io Events apart)."""
    terms: list[tuple[Callable[[dict], str], bool, str]] = []
    for part in sorted(_split_terms(s)) if s else []:
        if part == "":
            continue
        split = _split_term(part)
        if split is None:
            raise SelectorError(f"invalid selector: '{s}'; can't understand '{part}'")
        lhs, op, rhs = split
        terms.append((lhs, op != "!=", _unescape(rhs)))  # type: ignore[arg-type]
    readers = [(_field_reader(kind, group, lhs), eq, value) for lhs, eq, value in terms]  # type: ignore[arg-type]
    return lambda obj: all((read(obj) == value) == eq for read, eq, value in readers)
