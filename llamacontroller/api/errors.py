"""The one place errors become HTTP responses, in the caller's dialect.

- OpenAI routes (`/v1/...`, `/tokenize`...): `{"error": {"message", "type", "param", "code"}}`
- Ollama routes (`/api/...`): `{"error": "..."}`
- Management routes (`/api/v1/...`): `{"error": {"code", "message"}}`
Never an HTML page or a traceback.
"""

from __future__ import annotations

import html
import json
import logging
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from llamacontroller.errors import LlamaControllerError, ServiceUnavailable

log = logging.getLogger(__name__)


class Dialect(StrEnum):
    OPENAI = "openai"
    OLLAMA = "ollama"
    MANAGEMENT = "management"
    HTML = "html"  # the dashboard


OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ManagementError(BaseModel):
    """What every management error looks like."""

    error: ErrorDetail


# Every status a management route answers besides its success, declared in the OpenAPI schema
# (schemathesis checks each answer against it).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ManagementError, "description": description}
    for status, description in {
        400: "The request is invalid",
        401: "No valid credential",
        403: "The credential lacks a scope or a model, or a CSRF token is wrong",
        404: "No such model, user or token",
        405: "Method not allowed",
        409: "Conflict (exists already, or in use)",
        411: "A chunked body where a Content-Length is needed",
        413: "Request body too large",
        429: "Over a limit; retry later",
        502: "The Hugging Face Hub failed or sent a file that does not match its digest",
        503: "The model or the database cannot serve now",
        507: "Not enough disk space for a download or a conversion",
    }.items()
}


def dialect_for(path: str) -> Dialect:
    if path.startswith("/ui"):
        return Dialect.HTML
    if path.startswith("/api/v1/") or path == "/api/v1":
        return Dialect.MANAGEMENT
    if path.startswith("/api/"):
        return Dialect.OLLAMA
    return Dialect.OPENAI


def error_body(dialect: Dialect, status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    if dialect is Dialect.OLLAMA:
        return {"error": message}
    if dialect is Dialect.MANAGEMENT:
        return {"error": {"code": code, "message": message}}
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    dialect: Dialect,
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if dialect is Dialect.HTML:
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Error</title></head>'
            f'<body><main><h1>{status}</h1><p role="alert">{html.escape(message)}</p>'
            '<p><a href="./">Back to the dashboard</a></p></main></body></html>'
        )
        return Response(page, status_code=status, media_type="text/html", headers=headers)
    body = json.dumps(error_body(dialect, status, message, code, param)).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def render(dialect: Dialect, exc: LlamaControllerError) -> Response:
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(dialect, exc.status, exc.message, exc.code, exc.param, headers)


def _path(request: Request) -> str:
    root = request.scope.get("root_path", "")
    path: str = request.scope["path"]
    return path[len(root) :] if root and path.startswith(root) else path


def install(app: FastAPI) -> None:
    @app.exception_handler(LlamaControllerError)
    async def _ours(request: Request, exc: LlamaControllerError) -> Response:
        return render(dialect_for(_path(request)), exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        first = exc.errors()[0]["loc"][-1] if exc.errors() else None
        return error_response(
            dialect_for(_path(request)), 400, problems, "invalid_request", str(first) if first else None
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return error_response(
            dialect_for(_path(request)), exc.status_code, message, code, headers=dict(exc.headers or {})
        )

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> Response:
        return render(dialect_for(_path(request)), database_unavailable(exc))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            dialect_for(_path(request)), 500, "internal error; see the controller log", "internal_error"
        )


def database_unavailable(exc: DBAPIError) -> ServiceUnavailable:
    """The database did not answer (or refused the connection): 503 with Retry-After, not a 500.
    Inference with a cached token goes on meanwhile; usage rows wait in the writer's queue."""
    log.error("database error: %s", str(exc.orig or exc).splitlines()[0][:300])
    return ServiceUnavailable("the database is unavailable; retry shortly", retry_after=5)
