"""The controller's own errors, with no HTTP in them.

Each API dialect renders them in one place (api/errors.py). The tree:

    LlamaControllerError
    ├── BadRequest                 the request itself is wrong (400)
    │   ├── PayloadTooLarge        body over the cap (413)
    │   └── LengthRequired         a chunked body where only a declared length is taken (411)
    ├── Unauthenticated            no or bad credentials (401)
    ├── Forbidden                  credentials lack a scope or model (403)
    ├── NotFound                   no such thing (404)
    │   └── ModelNotFound
    ├── Conflict                   the thing exists already / is in use (409)
    ├── Overloaded                 over a limit; retry later (429, Retry-After)
    ├── ModelUnavailable           the model cannot serve now (503)
    │   ├── StartFailed            the engine did not become healthy
    │   ├── InsufficientMemory     admission refused it
    │   ├── StartInterrupted       an unload or switch stopped the start it waited for
    │   └── DrainTimeout           a busy model could not be stopped in time
    ├── ServiceUnavailable         a service the controller needs (Redis) does not answer (503)
    ├── NotSupported               a known route this server does not offer yet (501)
    ├── InsufficientStorage        no disk space for a download or a conversion (507)
    ├── UpstreamError              the engine failed mid-request (502)
    │   └── IntegrityError         a downloaded file does not match the digest its source listed
    └── UpstreamTimeout            the engine did not answer in time (504)
"""

from __future__ import annotations


class LlamaControllerError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers: dict[str, str] = {}  # extra response headers, e.g. X-RateLimit-*


class BadRequest(LlamaControllerError):
    status = 400
    code = "invalid_request"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class LengthRequired(BadRequest):
    status = 411
    code = "length_required"


class Unauthenticated(LlamaControllerError):
    status = 401
    code = "invalid_api_key"


class Forbidden(LlamaControllerError):
    status = 403
    code = "forbidden"


class NotFound(LlamaControllerError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(LlamaControllerError):
    status = 409
    code = "conflict"


class Overloaded(LlamaControllerError):
    status = 429
    code = "rate_limit_exceeded"


class ModelUnavailable(LlamaControllerError):
    status = 503
    code = "model_unavailable"


class StartFailed(ModelUnavailable):
    code = "model_start_failed"


class StartInterrupted(ModelUnavailable):
    code = "model_unloaded"


class InsufficientMemory(ModelUnavailable):
    code = "insufficient_memory"


class DrainTimeout(ModelUnavailable):
    code = "model_busy"


class ServiceUnavailable(LlamaControllerError):
    status = 503
    code = "service_unavailable"


class NotSupported(LlamaControllerError):
    status = 501
    code = "not_supported"


class InsufficientStorage(LlamaControllerError):
    status = 507
    code = "insufficient_storage"


class UpstreamError(LlamaControllerError):
    status = 502
    code = "upstream_error"


class IntegrityError(UpstreamError):
    code = "integrity_error"


class UpstreamTimeout(LlamaControllerError):
    status = 504
    code = "upstream_timeout"
