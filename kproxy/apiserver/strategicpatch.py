"""Applying a strategic merge patch: a port of k8s.io/apimachinery/pkg/util/strategicpatch.

Why a port and not a re-imagining: `kubectl apply` computes its three-way patch with upstream's
own diff (directives `$setElementOrder/…`, `$retainKeys`, `$deleteFromPrimitiveList/…`,
`$patch: delete|replace`, `null` values) and expects the server to apply it with upstream's
exact semantics — list order included. So the functions below follow upstream's mergeMap,
mergeSlice, mergePatchIntoOriginal, normalizeElementOrder, mergeSortedSlice, ... one for one
(same names, snake_cased), with StrategicMergeMapPatch's options (MergeParallelList and
IgnoreUnmatchedNulls both true). Errors carry upstream's words; `SMPError.sentinel` names the
mergepatch.Err* value so patch.py can give it upstream's HTTP code.

Go's sort.SliceStable is an insertion sort for lists of up to 20 items; it is reproduced as
such (the comparison upstream uses is not a strict order, so the algorithm matters). Longer
lists use the same insertion sort, where Go would merge 20-item blocks: identical whenever the
order is consistent, which it is for every real object.

Inputs are mutated, as upstream's are: pass copies.
"""

from __future__ import annotations

from typing import Any

from kproxy.apiserver.patchmeta import UNKNOWN, Field, Schema

DIRECTIVE = "$patch"
REPLACE, DELETE, MERGE = "replace", "delete", "merge"
RETAIN_KEYS = "$retainKeys"
DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList"
SET_ELEMENT_ORDER = "$setElementOrder"

# mergepatch/errors.go sentinels
ERR_BAD_JSON_DOC = "invalid JSON document"
ERR_NO_LIST_OF_LISTS = "lists of lists are not supported"
ERR_BAD_PRIMITIVE_LIST = "invalid patch format of primitive list"
ERR_BAD_RETAIN_KEYS = "invalid patch format of retainKeys"
ERR_BAD_SET_ELEMENT_ORDER = "invalid patch format of setElementOrder list"
ERR_NOT_MATCH_RETAIN_KEYS = "patch content doesn't match retainKeys list"
ERR_UNSUPPORTED = "strategic merge patch format is not supported"


class SMPError(Exception):
    """An error of the patch; `sentinel` is one of the ERR_* texts when upstream returns that
    sentinel error (patch.py maps those to 400/422), else None (upstream: a plain error, 500)."""

    def __init__(self, message: str, sentinel: bool = False):
        super().__init__(message)
        self.message = message
        self.sentinel = message if sentinel else None


def _sentinel(text: str) -> SMPError:
    return SMPError(text, sentinel=True)


# ------------------------------------------------------------------ Go's %v and reflect.TypeOf


def go_value(v: Any) -> str:
    """fmt's %v of a decoded JSON value: map[k:v ...] with sorted keys, [a b], <nil>."""
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_value(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_value(x) for x in v) + "]"
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e21 else repr(v)
    return str(v)


def go_type(v: Any) -> str:
    """reflect.TypeOf(v).String() for what json (with PreserveInts) decodes."""
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, list):
        return "[]interface {}"
    if v is None:
        return "%!s(<nil>)"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int64"
    if isinstance(v, float):
        return "float64"
    return "string"


def _go_eq(a: Any, b: Any) -> bool:
    """Go interface equality: same dynamic type and value (int64(1) != float64(1))."""
    return type(a) is type(b) and a == b


def _hkey(v: Any) -> Any:
    return (type(v).__name__, v) if not isinstance(v, (dict, list)) else (type(v).__name__, id(v))


def err_bad_arg_type(expected: str, actual: Any) -> SMPError:
    return SMPError(f"expected a {expected}, but received a {go_type(actual)}")


def err_no_merge_key(m: dict, key: str) -> SMPError:
    return SMPError(f"map: {go_value(m)} does not contain declared merge key: {key}")


def err_bad_patch_type(t: Any, m: dict) -> SMPError:
    return SMPError(f"unknown patch type: {t} in map: {go_value(m)}")


# ------------------------------------------------------------------ schema lookups


def _lookup(schema: Schema, key: str) -> Field:
    return schema.get(key, UNKNOWN) if isinstance(schema, dict) else UNKNOWN


def _strategy(f: Field) -> str:
    """extractRetainKeysPatchStrategy: the strategy other than retainKeys ("" when none)."""
    s = [x for x in f.strategies if x != "retainKeys"]
    if len(s) > 1 or len(f.strategies) > 2:
        raise SMPError(f"unexpected patch strategy: [{' '.join(f.strategies)}]")
    return s[0] if s else ""


# ------------------------------------------------------------------ entry point


def strategic_merge_patch(original: dict, patch: dict, schema: Schema) -> dict:
    """StrategicMergeMapPatchUsingLookupPatchMeta: apply `patch` to `original` (both mutated)."""
    return merge_map(original, patch, schema)


def merge_map(original: dict | None, patch: dict, schema: Schema) -> dict:
    if DIRECTIVE in patch:
        return _handle_directive_in_merge_map(patch[DIRECTIVE], patch)
    if original is None:
        original = {}
    _apply_retain_keys_directive(original, patch)
    _merge_patch_into_original(original, patch, schema)
    for k, patch_v in list(patch.items()):
        is_delete_list = False
        if k.startswith(DELETE_FROM_PRIMITIVE_LIST):
            k = _extract_key(k, DELETE_FROM_PRIMITIVE_LIST)
            is_delete_list = True
        if patch_v is None:  # IgnoreUnmatchedNulls
            original.pop(k, None)
            continue
        if k not in original or type(original[k]) is not type(patch_v):
            if not is_delete_list:
                _discard_null_values(patch_v)
                v, keep = _remove_directives(patch_v)
                if keep:
                    original[k] = v
                else:
                    original.pop(k, None)
            continue
        orig_v = original[k]
        if isinstance(orig_v, dict):
            f = _lookup(schema, k)
            original[k] = patch_v if _strategy(f) == REPLACE else merge_map(orig_v, patch_v, f.sub)
        elif isinstance(orig_v, list):
            f = _lookup(schema, k)
            original[k] = _merge_slice_handler(orig_v, patch_v, f, is_delete_list, k)
        else:
            v, keep = _remove_directives(patch_v)
            if keep:
                original[k] = v
            else:
                original.pop(k, None)
    return original


def _handle_directive_in_merge_map(directive: Any, patch: dict) -> dict:
    if directive == REPLACE:
        del patch[DIRECTIVE]
        return patch
    if directive == DELETE:
        return {}
    raise err_bad_patch_type(directive, patch)


def _extract_key(s: str, prefix: str) -> str:
    parts = s.split("/", 1)
    if len(parts) <= 1 or parts[0] != prefix:
        if prefix == DELETE_FROM_PRIMITIVE_LIST:
            raise _sentinel(ERR_BAD_PRIMITIVE_LIST)
        raise _sentinel(ERR_BAD_SET_ELEMENT_ORDER)
    return parts[1]


def _apply_retain_keys_directive(original: dict, patch: dict) -> None:
    if RETAIN_KEYS not in patch:
        return
    retain = patch.pop(RETAIN_KEYS)
    if not isinstance(retain, list):
        raise _sentinel(ERR_BAD_RETAIN_KEYS)
    keep = {_hkey(v) for v in retain}
    for k, v in patch.items():
        if v is None or k.startswith(DELETE_FROM_PRIMITIVE_LIST) or k.startswith(SET_ELEMENT_ORDER):
            continue
        if _hkey(k) not in keep:
            raise _sentinel(ERR_BAD_RETAIN_KEYS)
    for k in list(original):
        if _hkey(k) not in keep:
            del original[k]


def _merge_patch_into_original(original: dict, patch: dict, schema: Schema) -> None:
    """$setElementOrder/<list>: merge that list now and order it as the directive says."""
    for key, order in list(patch.items()):
        if not key.startswith(SET_ELEMENT_ORDER):
            continue
        del patch[key]
        if not isinstance(order, list):
            raise err_bad_arg_type("[]interface {}", order)
        okey = _extract_key(key, SET_ELEMENT_ORDER)
        found_orig, found_patch = okey in original, okey in patch
        orig_list: list = []
        patch_list: list = []
        if found_orig:
            if not isinstance(original[okey], list):
                raise err_bad_arg_type("[]interface {}", original[okey])
            orig_list = original[okey]
        if found_patch:
            if not isinstance(patch[okey], list):
                raise err_bad_arg_type("[]interface {}", patch[okey])
            patch_list = patch[okey]
        f = _lookup(schema, okey)
        _strategy(f)
        _validate_patch_with_set_order_list(patch_list, order, f.merge_key)
        if found_orig and not found_patch:
            merged = orig_list
        elif found_patch and not found_orig:
            merged, _ = _remove_directives(patch_list)
        elif found_orig and found_patch:
            merged = _merge_slice_handler(orig_list, patch_list, f, False, okey)  # may write through orig_list
        else:
            continue
        if not f.merge_key:
            patch_items, server_only = _partition_primitives(merged, order)
        else:
            patch_items, server_only = _partition_maps(merged, order, f.merge_key)
        kind = _slice_element_type(orig_list, patch_list)
        original[okey] = _normalize_element_order(patch_items, server_only, order, orig_list, f.merge_key, kind)
        patch.pop(okey, None)


def _validate_patch_with_set_order_list(patch_list: list, order: list, merge_key: str) -> None:
    if not order or not patch_list:
        return
    non_delete = _extract_to_delete_items(patch_list)[0] if merge_key else patch_list
    pi = si = 0
    while pi < len(non_delete) and si < len(order):
        if _contains_directive(non_delete[pi]):
            pi += 1
            continue
        if _merge_key_value_equal(non_delete[pi], order[si], merge_key):
            pi += 1
        si += 1
    if pi < len(non_delete) and si >= len(order):
        raise SMPError(f"The order in patch list:\n{go_value(patch_list)}\n doesn't match {SET_ELEMENT_ORDER} "
                       f"list:\n{go_value(order)}\n")


def _contains_directive(item: Any) -> bool:
    return isinstance(item, dict) and DIRECTIVE in item


def _merge_key_value_equal(left: Any, right: Any, merge_key: str) -> bool:
    if not merge_key:
        return _go_eq(left, right)
    if not isinstance(left, dict):
        raise err_bad_arg_type("map[string]interface {}", left)
    if not isinstance(right, dict):
        raise err_bad_arg_type("map[string]interface {}", right)
    if merge_key not in left:
        raise err_no_merge_key(left, merge_key)
    if merge_key not in right:
        raise err_no_merge_key(right, merge_key)
    return _go_eq(left[merge_key], right[merge_key])


def _merge_slice_handler(original: list, patch: Any, f: Field, is_delete_list: bool, name: str) -> list:
    if not isinstance(patch, list):
        raise err_bad_arg_type("[]interface {}", patch)
    if _strategy(f) == MERGE or is_delete_list:
        return _merge_slice(original, patch, f, is_delete_list, name)
    return patch


def _merge_slice(original: list, patch: list, f: Field, is_delete_list: bool, name: str) -> list:
    """mergeSlice. `original` is also Go's backing array as the caller sees it: upstream's
    in-place deletes and appends show through in the caller's `originalFieldValue` (which
    orders $setElementOrder results), so they are reproduced, then copied back into it."""
    if not original and not patch:
        return original
    kind = _slice_element_type(original, patch)
    merge_key = f.merge_key
    first = _GoSlice.of(original)
    if kind is not dict:
        if is_delete_list:
            gone = {_hkey(v) for v in patch}
            return [v for v in original if _hkey(v) not in gone]
        orig = first
        merged = _deduplicate_scalars(orig.append(*patch))
    else:
        if not merge_key:
            raise SMPError(f"cannot merge lists without merge key for {name}")
        orig, patch = _merge_slice_with_special_elements(first, patch, merge_key)
        merged = _merge_slice_without_special_elements(orig, patch, merge_key, f.sub)
    original[:] = first.arr[:len(original)]
    server_order = orig.items()
    merged_items = merged.items()
    if not merge_key:
        patch_items, server_only = _partition_primitives(merged_items, patch)
    else:
        patch_items, server_only = _partition_maps(merged_items, patch, merge_key)
    return _normalize_element_order(patch_items, server_only, patch, server_order, merge_key, kind)


class _GoSlice:
    """A Go slice: a window of `n` items on a shared backing array whose length is the capacity.
    Decoded JSON lists get append's power-of-two capacities (json.Unmarshal and the unstructured
    converter both keep them)."""

    __slots__ = ("arr", "n")

    def __init__(self, arr: list, n: int):
        self.arr, self.n = arr, n

    @classmethod
    def of(cls, items: list) -> "_GoSlice":
        cap = 1 if items else 0
        while cap < len(items):
            cap *= 2
        return cls(list(items) + [None] * (cap - len(items)), len(items))

    def items(self) -> list:
        return self.arr[:self.n]

    def append(self, *vals: Any) -> "_GoSlice":
        need = self.n + len(vals)
        if need <= len(self.arr):
            self.arr[self.n:need] = vals
            return _GoSlice(self.arr, need)
        arr = self.arr[:self.n] + list(vals)
        return _GoSlice(arr + [None] * (max(need, 2 * len(self.arr)) - need), need)

    def delete_at(self, k: int) -> "_GoSlice":
        """append(s[:k], s[k+1:]...): shifts in place."""
        self.arr[k:self.n - 1] = self.arr[k + 1:self.n]
        return _GoSlice(self.arr, self.n - 1)


def _merge_slice_with_special_elements(original: _GoSlice, patch: list, merge_key: str) -> tuple[_GoSlice, list]:
    plain: list = []
    replace = False
    for v in patch:
        if DIRECTIVE not in v:
            plain.append(v)
            continue
        d = v[DIRECTIVE]
        if d == DELETE:
            if merge_key not in v:
                raise err_no_merge_key(v, merge_key)
            while (i := _find(original.items(), merge_key, v[merge_key])) >= 0:
                original = original.delete_at(i)
        elif d == REPLACE:
            replace = True
        elif d == MERGE:
            raise SMPError("merging lists cannot yet be specified in the patch")
        else:
            raise err_bad_patch_type(d, v)
    if replace:
        return _GoSlice.of(plain), []
    return original, plain


def _find(items: list, key: str, value: Any) -> int:
    """findMapInSliceBasedOnKeyValue: the index of the map whose `key` is `value`, or -1."""
    for i, v in enumerate(items):
        if not isinstance(v, dict):
            raise SMPError(f"value for key {i} is not a map")
        if key in v and _go_eq(v[key], value):
            return i
    return -1


def _merge_slice_without_special_elements(original: _GoSlice, patch: list, merge_key: str,
                                          sub: Schema) -> _GoSlice:
    for v in patch:
        if merge_key not in v:
            raise err_no_merge_key(v, merge_key)
        i = _find(original.items(), merge_key, v[merge_key])
        if i >= 0:
            original.arr[i] = merge_map(original.arr[i], v, sub)
        else:
            original = original.append(v)
    return original


def _slice_element_type(*slices: list) -> type:
    prev: type | None = None
    for s in slices:
        for v in s:
            t = type(v)
            if prev is None:
                prev = t
                if t is list:
                    raise _sentinel(ERR_NO_LIST_OF_LISTS)
            elif prev is not t:
                raise SMPError("list element types are not identical: " + go_value(list(slices)))
    if prev is None:
        raise SMPError("no elements in any of the given slices")
    return prev


def _deduplicate_scalars(s: _GoSlice) -> _GoSlice:
    """Upstream's 'clever' in-place deduplication (it reorders, and writes through the backing
    array: both matter afterwards)."""
    arr = s.arr
    length = s.n - 1
    i = 0
    while i < length:
        j = i + 1
        while j <= length:
            if _go_eq(arr[i], arr[j]):
                arr[j] = arr[length]
                length -= 1
                j -= 1
            j += 1
        i += 1
    return _GoSlice(arr, length + 1)


def _partition_primitives(items: list, by: list) -> tuple[list, list]:
    inside = {_hkey(v) for v in by}
    return [v for v in items if _hkey(v) in inside], [v for v in items if _hkey(v) not in inside]


def _partition_maps(items: list, by: list, merge_key: str) -> tuple[list, list]:
    patch, server = [], []
    for v in items:
        if not isinstance(v, dict):
            raise err_bad_arg_type("map[string]interface {}", v)
        if merge_key not in v:
            raise err_no_merge_key(v, merge_key)
        (patch if _find(by, merge_key, v[merge_key]) >= 0 else server).append(v)
    return patch, server


def _extract_to_delete_items(items: list) -> tuple[list, list]:
    keep, gone = [], []
    for v in items:
        if not isinstance(v, dict):
            raise err_bad_arg_type("map[string]interface {}", v)
        (gone if v.get(DIRECTIVE) == DELETE else keep).append(v)
    return keep, gone


def _index(items: list, value: Any, merge_key: str, kind: type) -> int:
    def val(x: Any) -> Any:
        if kind is dict:
            return x.get(merge_key) if isinstance(x, dict) else None
        return x
    target = val(value)
    for i, v in enumerate(items):
        if _go_eq(target, val(v)):
            return i
    return -1


def _normalize_slice_order(to_sort: list, order: list, merge_key: str, kind: type) -> list:
    to_delete: list = []
    if kind is dict:
        for lst in (to_sort, order):
            for item in lst:
                if not isinstance(item, dict):
                    raise err_bad_arg_type("map[string]interface {}", item)
                if merge_key not in item:
                    raise err_no_merge_key(item, merge_key)
        to_sort, to_delete = _extract_to_delete_items(to_sort)
    to_sort = list(to_sort)

    def less(a: Any, b: Any) -> bool:
        ia = _index(order, a, merge_key, kind)
        if ia >= 0:
            ib = _index(order, b, merge_key, kind)
            if ib >= 0:
                return ia < ib
        return True

    for i in range(1, len(to_sort)):  # Go's insertionSort_func, what SliceStable runs on ≤ 20 items
        j = i
        while j > 0 and less(to_sort[j], to_sort[j - 1]):
            to_sort[j], to_sort[j - 1] = to_sort[j - 1], to_sort[j]
            j -= 1
    return to_sort + to_delete


def _merge_sorted_slice(left: list, right: list, server_order: list, merge_key: str, kind: type) -> list:
    out: list = []
    i = j = 0
    for _ in range(len(left) + len(right)):
        if i >= len(left) and j < len(right):
            out.append(right[j])
            j += 1
        elif j >= len(right) and i < len(left):
            out.append(left[i])
            i += 1
        else:
            li = _index(server_order, left[i], merge_key, kind)
            ri = _index(server_order, right[j], merge_key, kind)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out


def _normalize_element_order(patch: list, server_only: list, patch_order: list, server_order: list,
                             merge_key: str, kind: type) -> list:
    patch = _normalize_slice_order(patch, patch_order, merge_key, kind)
    server_only = _normalize_slice_order(server_only, server_order, merge_key, kind)
    return _merge_sorted_slice(server_only, patch, server_order, merge_key, kind)


def _remove_directives(obj: Any) -> tuple[Any, bool]:
    if isinstance(obj, dict):
        if DIRECTIVE in obj:
            return None, False
        for k in list(obj):
            v, keep = _remove_directives(obj[k])
            if keep:
                obj[k] = v
            else:
                del obj[k]
        return obj, True
    if isinstance(obj, list):
        out = []
        for v in obj:
            nv, keep = _remove_directives(v)
            if keep:
                out.append(nv)
        return out, True
    return obj, True


def _discard_null_values(v: Any) -> None:
    if isinstance(v, dict):
        for k in list(v):
            if v[k] is None:
                del v[k]
            else:
                _discard_null_values(v[k])
    elif isinstance(v, list):
        for x in v:
            _discard_null_values(x)
