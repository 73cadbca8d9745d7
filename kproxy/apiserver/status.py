"""Failures as the API server reports them: `Status` objects with its reason, code and words.

Why exact words: kubectl prints the server's message after `Error from server (Reason):`, and
scripts and course material match on it (`services "x" not found`, `Operation cannot be
fulfilled on ...`). Each constructor mirrors one of k8s.io/apimachinery/pkg/api/errors'
New* functions; `ApiError` carries a Status through the handlers to the response.
"""
from __future__ import annotations

import json

from aiohttp import web


class ApiError(Exception):
    """A request refused with a Status (raised anywhere in a handler, answered by the server)."""

    def __init__(self, status: dict):
        super().__init__(status.get("message", ""))
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status.get("code", 500))


def status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
          "reason": reason}
    if details is not None:
        st["details"] = details
    st["code"] = code
    return st


def success(name: str, group: str, resource: str, uid: str = "") -> dict:
    """What a delete answers for kinds that do not return the deleted object (finalizeDelete)."""
    details = {"name": name, **({"group": group} if group else {}), "kind": resource}
    if uid:
        details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def qualified(resource: str, group: str) -> str:
    """GroupResource.String(): `services`, `deployments.apps`."""
    return f"{resource}.{group}" if group else resource


def _details(name: str, group: str, resource: str) -> dict:
    return {"name": name, **({"group": group} if group else {}), "kind": resource}


def not_found(resource: str, group: str, name: str) -> dict:
    return status(404, "NotFound", f'{qualified(resource, group)} "{name}" not found', _details(name, group, resource))


def already_exists(resource: str, group: str, name: str) -> dict:
    return status(409, "AlreadyExists", f'{qualified(resource, group)} "{name}" already exists',
                  _details(name, group, resource))


def conflict(resource: str, group: str, name: str,
             why: str = "the object has been modified; please apply your changes to the latest version and try again"
             ) -> dict:
    return status(409, "Conflict", f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {why}',
                  _details(name, group, resource))


def expired(message: str) -> dict:
    """410 Gone: a watch or list from a resourceVersion the cache no longer holds."""
    return status(410, "Expired", message)


def unauthorized() -> dict:
    return status(401, "Unauthorized", "Unauthorized")


def forbidden(resource: str, group: str, name: str, why: str) -> dict:
    what = f'{qualified(resource, group)} "{name}"' if name else qualified(resource, group)
    return status(403, "Forbidden", f"{what} is forbidden: {why}", _details(name, group, resource))


def method_not_allowed() -> dict:
    return status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource",
                  {})


def too_large(limit: int) -> dict:
    """A body over the API server's limit (handlers/rest.go limitedReadBody)."""
    return status(413, "RequestEntityTooLarge", f"Request entity too large: limit is {limit}")


def bad_request(message: str) -> dict:
    return status(400, "BadRequest", message)


def no_route() -> dict:
    """An unknown path (the API server's 404 page_not_found for its API paths)."""
    return status(404, "NotFound", "the server could not find the requested resource", {})


def unsupported_media(content_type: str) -> dict:
    return status(415, "UnsupportedMediaType", f'the body of the request was in an unknown format - accepted media '
                  'types include: application/json, application/yaml, application/vnd.kubernetes.protobuf')


def timeout(message: str) -> dict:
    return status(504, "Timeout", message)


def internal(message: str) -> dict:
    return status(500, "InternalError", f"Internal error occurred: {message}",
                  {"causes": [{"message": message}]})


def invalid(kind: str, name: str, errors) -> dict:
    """422 Invalid with field causes (discovery.invalid_status: the API server's message)."""
    from kproxy.apiserver.discovery import invalid_status  # discovery imports this module
    return invalid_status(kind, name, list(errors))


def response(st: dict) -> web.Response:
    return web.Response(status=int(st.get("code", 200)), text=json.dumps(st), content_type="application/json")


def status_response(code: int, reason: str, message: str, details: dict | None = None) -> web.Response:
    """An API error as the API server answers it: a Status object, for a failure no helper above names."""
    return response(status(code, reason, message, details))
