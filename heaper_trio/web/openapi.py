"""The OpenAPI 3.1 document, built from the route specs (``routing.ROUTES``).

Schemas in the document are the very dicts the request validator enforces.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from heaper_trio.web.routing import ROUTES, RouteSpec

STATUS_TEXT = {
    400: "Malformed input (not JSON, missing/unknown/wrong-typed field, bad encoding)",
    401: "Missing, invalid, expired or revoked token",
    403: "Not yours, or the account may not do this",
    304: "Not Modified: If-None-Match or If-Modified-Since matched (no body)",
    404: "Unknown id, or no route at this URL (an empty path parameter)",
    405: "Method not allowed (a route word where an id would go: DELETE /api/heap/add)",
    409: "Conflicting state",
    413: "Too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Well-formed but invalid",
    429: "Rate limited; see Retry-After",
    503: "A dependency is unavailable",
}

ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "error", "message"],
    "properties": {
        "success": {"const": False},
        "error": {"type": "string", "description": "stable machine-readable code"},
        "message": {"type": "string", "description": "text for people"},
        "field": {"type": "string", "description": "the offending field, for 400s"},
    },
}


BYTES = {"type": "string", "contentMediaType": "application/octet-stream"}
FILE_HEADERS = {
    "ETag": {"schema": {"type": "string"}},
    "Last-Modified": {"schema": {"type": "string"}},
    "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}},
}


def _binary(spec: RouteSpec) -> dict[str, Any]:
    """A file's answers: 200 whole, 206 one range, 304 unchanged (no body), 416 a range
    outside the file (the error envelope with ``Content-Range: bytes */size``)."""
    content = {mime: {"schema": BYTES} for mime in spec.binary}
    return {
        "200": {"description": "The whole file", "headers": FILE_HEADERS, "content": content},
        "206": {
            "description": "One byte range of the file (Range; several ranges get 200)",
            "headers": {**FILE_HEADERS, "Content-Range": {"schema": {"type": "string"}}},
            "content": content,
        },
        "304": {"description": STATUS_TEXT[304]},
        "416": {
            "description": STATUS_TEXT[416],
            "headers": {"Content-Range": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    }


def _operation_id(spec: RouteSpec) -> str:
    """``post_api_heap_id``: method and path in lower case, anything else as one underscore."""
    return f"{spec.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', spec.path.lower()).strip('_')}"


@lru_cache(maxsize=4)
def openapi_document(version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for spec in ROUTES:
        op: dict[str, Any] = {
            "summary": spec.summary,
            "tags": [spec.tag],
            "operationId": _operation_id(spec),
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": spec.response or {}}},
                },
                **{
                    str(code): {
                        "description": STATUS_TEXT.get(code, "Error"),
                        "content": {
                            "application/json": {
                                "schema": spec.other_bodies.get(
                                    code, {"$ref": "#/components/schemas/Error"}
                                )
                            }
                        },
                    }
                    for code in spec.errors
                },
            },
        }
        if spec.binary:
            op["responses"].update(_binary(spec))
        if spec.text:
            op["responses"]["200"]["content"] = {spec.text: {"schema": {"type": "string"}}}
        if spec.websocket:
            op["responses"] = {
                "101": {"description": "Switching Protocols: a WebSocket (see docs/protocol.md)"}
            }
            op["x-websocket"] = True
        if spec.description:
            op["description"] = spec.description
        if spec.deprecated:
            op["deprecated"] = True
        if spec.auth in ("access", "refresh", "access_or_query"):
            op["security"] = [{"bearer": []}]
        elif spec.auth == "optional":
            op["security"] = [{}, {"bearer": []}]
        else:
            op["security"] = []
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": spec.path_params.get(name, {"type": "string"}),
            }
            for name in re.findall(r"\{(\w+)\}", spec.path)
        ]
        params += [
            {"name": name, "in": "query", "required": name in spec.required_query, "schema": schema}
            for name, schema in spec.query.items()
        ]
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {
                "required": bool(spec.body.get("required") or spec.body.get("anyOf")),
                "content": {"application/json": {"schema": spec.body}},
            }
        elif spec.content:
            op["requestBody"] = {
                "required": True,
                "content": {mime: {"schema": schema} for mime, schema in spec.content.items()},
            }
        paths.setdefault(spec.path, {})[spec.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "heaper_trio",
            "version": version,
            "description": "Self-hosted Heaper server. Errors use the envelope "
            '{"success": false, "error": code, "message": text}. Times are Unix ms.',
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)"}
            },
        },
    }
