"""Decode YAML and JSON into JSON-compatible values only, with bounds.

The API server only ever sees JSON: kubectl converts YAML to JSON first, and a
manifests folder is read by a root-run daemon. So a document is admitted only
when it is JSON-compatible (strings, int64 integers, finite floats, booleans,
null, maps with string keys, lists) and small enough that building it, and
every later walk over it, is cheap. Anything else is refused with the YAML path
of the offending node, never by an exception:

* tags other than the JSON ones (``!!binary``, ``!!set``, ``!!omap``,
  ``!!python/...``, custom tags) and non-string keys (``~:``, ``12345:``,
  ``yes:``, complex keys);
* recursive aliases, and aliases expanding to more than MAX_ALIAS_NODES nodes
  (billion laughs is refused after ~10^5 nodes, in milliseconds: sizes are
  counted while building, nothing is expanded first);
* nesting deeper than MAX_DEPTH (the libyaml parser and our builder are both
  iterative, and JSON's recursive decoder is stopped by RecursionError);
* integers outside int64 (and longer than 100 characters before conversion:
  Python refuses to convert more than 4,300 digits) and non-finite floats.

YAML merge keys (``<<: *base``) are accepted, as kubectl accepts them; explicit
duplicate keys are refused in YAML and JSON alike (go-yaml's wording).
The YAML builder consumes libyaml events directly (one linear pass, no node
graph), which keeps large folders fast.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any, Iterator

import yaml
from yaml.constructor import SafeConstructor

MAX_DEPTH = 100  # nesting levels of maps and lists
MAX_ALIAS_NODES = 100_000  # nodes a document may gain through aliases
INT64 = (-(2 ** 63), 2 ** 63 - 1)
_MAX_NUMBER_TEXT = 100  # characters of an integer literal converted at all

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp", "value")}
_MAP_TAGS = {None, "!", _TAG + "map"}
_SEQ_TAGS = {None, "!", _TAG + "seq"}
_JSON_ONLY = ("only JSON-compatible YAML is accepted: strings, numbers, booleans, null, "
              "maps with string keys and lists")


class Refused(Exception):
    """Why a document is not admitted: ``line`` (0-based, or None), ``path`` and problem."""

    def __init__(self, problem: str, line: int | None = None, path: str = ""):
        super().__init__(problem)
        self.problem, self.line, self.path = problem, line, path

    def reason(self, first_line: int = 1) -> str:
        where = f"line {first_line + self.line}: " if self.line is not None else ""
        path = self.path if len(self.path) <= 120 else self.path[:100] + "..."
        at = f"{path}: " if path else ""
        return f"{where}{at}{self.problem}"


def field_path(parts: list) -> str:
    """``["spec", "ports", 0, "port"]`` as ``spec.ports[0].port``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _type_word(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _tag(tag: str) -> str:
    """``!!binary`` for ``tag:yaml.org,2002:binary``, as YAML files spell it."""
    return _short(("!!" + tag[len(_TAG):]) if tag.startswith(_TAG) else tag)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------

class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser: ~10x faster
    """The parser and resolver only; values are built by :func:`yaml_documents`.

    Timestamps stay strings (no implicit timestamp resolver) so objects remain
    JSON-serialisable, as kubectl's YAML-to-JSON conversion leaves them.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _TAG + "timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_CONSTRUCTOR = SafeConstructor()
_NO_KEY = object()


class _Frame:
    """A map or list being built."""

    __slots__ = ("value", "is_map", "key", "key_line", "merges", "size", "height", "anchor", "index")

    def __init__(self, is_map: bool, anchor: str | None):
        self.is_map = is_map
        self.value: Any = {} if is_map else []
        self.key: Any = _NO_KEY
        self.key_line = 0
        self.merges: list[dict] = []
        self.size = 1  # nodes, aliases counted expanded
        self.height = 1
        self.anchor = anchor
        self.index = 0


class _Builder:
    """Turns the events of one document into a value, enforcing every bound."""

    def __init__(self, loader: _Loader):
        self.loader = loader
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int, int] | None] = {}  # None: still being built
        self.alias_budget = MAX_ALIAS_NODES
        self.result: Any = None
        self.done = False

    def path(self, extra: Any = _NO_KEY) -> str:
        parts: list = []
        for frame in self.stack:
            if frame.is_map:
                if frame.key is not _NO_KEY:
                    parts.append("<<" if frame.key is _MERGE else frame.key)  # never the sentinel's repr
            else:
                parts.append(frame.index)
        if extra is not _NO_KEY:
            parts.append(extra)
        return field_path(parts)

    def refuse(self, problem: str, line: int) -> Refused:
        return Refused(problem, line, self.path())

    # -- events ---------------------------------------------------------------------------
    def feed(self, event: yaml.Event) -> None:
        line = event.start_mark.line
        if isinstance(event, yaml.ScalarEvent):
            self._register(event.anchor, None, line)
            value, tag = self._scalar(event, line)
            self._add(value, 1, 0, line, merge=tag == _TAG + "merge")
            self._register(event.anchor, (value, 1, 0), line)
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            is_map = isinstance(event, yaml.MappingStartEvent)
            if event.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
                raise self.refuse(f"tag {_tag(event.tag)} is not allowed: {_JSON_ONLY}", line)
            top = self.stack[-1] if self.stack else None
            if top is not None and top.is_map and top.key is _NO_KEY:
                raise self.refuse(f"a map key must be a string, not a {'map' if is_map else 'list'}: {_JSON_ONLY}",
                                  line)
            if len(self.stack) >= MAX_DEPTH:
                raise self.refuse(f"nesting deeper than {MAX_DEPTH} levels is not accepted", line)
            self._register(event.anchor, None, line)
            self.stack.append(_Frame(is_map, event.anchor))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            frame = self.stack.pop()
            value = frame.value
            if frame.is_map and frame.merges:
                merged: dict = {}
                for extra in reversed(frame.merges):  # earlier merged maps win, explicit keys win over all
                    merged.update(extra)
                merged.update(value)
                value = merged
            self._register(frame.anchor, (value, frame.size, frame.height), line)
            self._add(value, frame.size, frame.height, line)
        elif isinstance(event, yaml.AliasEvent):
            self._alias(event.anchor, line)

    def _register(self, anchor: str | None, entry: tuple | None, line: int) -> None:
        if anchor is not None:
            self.anchors[anchor] = entry

    def _alias(self, anchor: str, line: int) -> None:
        if anchor not in self.anchors:
            raise self.refuse(f"found undefined alias {_short(anchor)}", line)
        entry = self.anchors[anchor]
        if entry is None:
            raise self.refuse(f"recursive alias *{_short(anchor)} (an alias inside its own anchor) is not accepted",
                              line)
        value, size, height = entry
        self.alias_budget -= size
        if self.alias_budget < 0:
            raise self.refuse(f"document contains excessive aliasing (more than {MAX_ALIAS_NODES} nodes "
                              "through aliases)", line)
        if len(self.stack) + height > MAX_DEPTH:
            raise self.refuse(f"nesting deeper than {MAX_DEPTH} levels is not accepted", line)
        if isinstance(value, (dict, list)):
            value = copy.deepcopy(value)  # a JSON document is a tree: no shared parts
        self._add(value, size, height, line, merge_value=True)

    def _scalar(self, event: yaml.ScalarEvent, line: int) -> tuple[Any, str]:
        tag, text = event.tag, event.value
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, text, event.implicit)
        if tag == _TAG + "merge":
            return text, tag
        if tag not in _SCALAR_TAGS:
            raise self.refuse(f"tag {_tag(tag)} is not allowed: {_JSON_ONLY}", line)
        if tag in (_TAG + "str", _TAG + "timestamp", _TAG + "value"):
            return text, tag
        try:
            if tag == _TAG + "null":
                return None, tag
            if tag == _TAG + "bool":
                return _CONSTRUCTOR.construct_yaml_bool(yaml.ScalarNode(tag, text)), tag
            if tag == _TAG + "int":
                if len(text) > _MAX_NUMBER_TEXT:
                    raise ValueError
                value = _CONSTRUCTOR.construct_yaml_int(yaml.ScalarNode(tag, text))
                if not INT64[0] <= value <= INT64[1]:
                    raise ValueError
                return value, tag
            value = _CONSTRUCTOR.construct_yaml_float(yaml.ScalarNode(tag, text))
        except (ValueError, KeyError, TypeError, OverflowError):
            kind = "an integer" if tag == _TAG + "int" else f"a {tag.removeprefix(_TAG)}"
            raise self.refuse(f"{_short(text)} ({len(text)} characters) is not {kind} kproxy accepts: "
                              "integers must fit in 64 bits", line) from None
        if not math.isfinite(value):
            raise self.refuse(f"{_short(text)} is not a finite number: JSON has no infinity or NaN", line)
        return value, tag

    def _add(self, value: Any, size: int, height: int, line: int, merge: bool = False,
             merge_value: bool = False) -> None:
        if not self.stack:
            self.result, self.done = value, True
            return
        top = self.stack[-1]
        top.size += size
        top.height = max(top.height, height + 1)
        if not top.is_map:
            top.value.append(value)
            top.index += 1
            return
        if top.key is _NO_KEY:
            if merge:
                top.key, top.key_line = _MERGE, line
                return
            if not isinstance(value, str):
                shown = "null" if value is None else json.dumps(value) if isinstance(value, (bool, int, float)) \
                    else _type_word(value)
                raise self.refuse(f"map keys must be strings, found the {_type_word(value)} key {_short(shown)}: "
                                  f"{_JSON_ONLY}", line)
            if value in top.value:
                raise Refused(f'key {json.dumps(_short(value))} already set in map', line, self.path())
            top.key, top.key_line = value, line
            return
        if top.key is _MERGE:
            maps = value if isinstance(value, list) else [value]
            if not all(isinstance(m, dict) for m in maps):
                raise self.refuse("a merge key (<<) takes a map or a list of maps", line)
            top.merges.extend(maps)
        else:
            top.value[top.key] = value
        top.key = _NO_KEY


_MERGE = object()


def _split_yaml(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, chunk) for each ``---``-separated chunk (kubectl splits so)."""
    start, lines = 1, []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if _SEPARATOR.match(line.rstrip("\r\n")):
            yield start, "".join(lines)
            start, lines = number + 1, []
        else:
            lines.append(line)
    yield start, "".join(lines)


_SEPARATOR = re.compile(r"^---[ \t]*(#.*)?$")


def yaml_documents(text: str) -> Iterator[tuple[Any, str | None]]:
    """(value, None) per non-null YAML document, or (None, reason with whole-file line numbers)."""
    for first_line, chunk in _split_yaml(text):
        loader = _Loader(chunk)
        builder: _Builder | None = None
        try:
            while loader.check_event():
                event = loader.get_event()
                if isinstance(event, yaml.DocumentStartEvent):
                    builder = _Builder(loader)
                elif isinstance(event, yaml.DocumentEndEvent):
                    if builder is not None and builder.result is not None:
                        yield builder.result, None
                    builder = None
                elif builder is not None and not isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent)):
                    builder.feed(event)
        except Refused as exc:
            yield None, exc.reason(first_line)
        except yaml.YAMLError as exc:
            yield None, _yaml_reason(exc, first_line)
        finally:
            loader.dispose()


def _yaml_reason(exc: yaml.YAMLError, first_line: int) -> str:
    """PyYAML's message as ``line N: problem``, with N counted in the whole file."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character libyaml refuses (NUL, other controls)
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        return (f"unacceptable character #x{char:04x} at character {exc.position} of the document: "
                f"{exc.reason}")
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return problem.splitlines()[0] if problem else type(exc).__name__
    return f"line {first_line + mark.line}: {problem}"


# --------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------

class _Duplicate(dict):
    """A JSON object that repeated a key (the first repeated one is kept)."""

    repeated: str = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    marked = _Duplicate(out)
    marked.repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
    return marked


def _parse_int(text: str) -> int:
    value = int(text) if len(text) <= _MAX_NUMBER_TEXT else None
    if value is None or not INT64[0] <= value <= INT64[1]:
        raise Refused(f"the number {_short(text)} ({len(text)} digits) does not fit in 64 bits")
    return value


def _parse_constant(text: str) -> Any:
    raise Refused(f"{text} is not a JSON number")


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_int=_parse_int, parse_constant=_parse_constant)


def json_documents(text: str) -> Iterator[tuple[Any, str | None]]:
    """A stream of JSON values: (value, None) each, or (None, reason); stops at the first bad one."""
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return
        try:
            value, pos = _DECODER.raw_decode(text, pos)
            check_json_value(value)
        except json.JSONDecodeError as exc:
            yield None, str(exc)
            return
        except Refused as exc:
            yield None, exc.reason()
            return
        except RecursionError:
            yield None, f"nesting deeper than {MAX_DEPTH} levels is not accepted"
            return
        if value is not None:
            yield value, None


def check_json_value(value: Any) -> None:
    """Refuse what JSON decoding let through: depth, repeated keys, non-finite floats."""
    stack: list[tuple[Any, list]] = [(value, [])]
    while stack:
        node, parts = stack.pop()
        if len(parts) >= MAX_DEPTH and isinstance(node, (dict, list)):  # the 101st nested collection
            raise Refused(f"nesting deeper than {MAX_DEPTH} levels is not accepted", None, field_path(parts[:MAX_DEPTH]))
        if isinstance(node, dict):
            if isinstance(node, _Duplicate):
                raise Refused(f'key {json.dumps(_short(node.repeated))} already set in map', None, field_path(parts))
            stack.extend((v, parts + [k]) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, parts + [i]) for i, v in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            raise Refused("is not a finite number: JSON has no infinity or NaN", None, field_path(parts))
