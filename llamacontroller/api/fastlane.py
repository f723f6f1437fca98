"""The fast lane: OpenAI inference POSTs skip FastAPI's routing and dependency machinery.

py-spy and cProfile showed FastAPI's middleware, routing and dependency solving, and Starlette's
Request/Headers/URL objects, costing more CPU per proxied request than the proxying itself (for
cheap calls like /tokenize). The lane matches the passthrough paths by dictionary lookup, reads
the few headers it needs in one pass over the raw ASGI headers, and runs the very same handler
(`openai.proxy`) with the same token check and the same error renderer. Requests that
authenticate with a session cookie (the dashboard) take the full `get_principal` path; everything
else goes to the FastAPI app unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope, Send

from llamacontroller.api import openai
from llamacontroller.api.deps import credential, get_principal, receive_body
from llamacontroller.api.dispatch import Origin
from llamacontroller.api.errors import Dialect, error_response, render
from llamacontroller.auth.principal import Principal
from llamacontroller.errors import LlamaControllerError

if TYPE_CHECKING:
    from llamacontroller.app import Services

log = logging.getLogger(__name__)


class FastLane:
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        root = scope.get("root_path", "")
        path = scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :]
        if path not in openai.PASSTHROUGH:
            return await self.app(scope, receive, send)
        scope["app"] = self.app  # what Request.app (and so the services) resolve through
        services: Services = self.app.state.services
        headers = scope["headers"]
        authorization = api_key = length = None
        for name, value in headers:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                api_key = value.decode("latin-1")
            elif name == b"content-length":
                length = value.decode("latin-1")
        try:
            token = credential(authorization, api_key)
            principal: Principal
            if token is None:  # a dashboard session, or no credential: the full check decides
                principal = await get_principal(Request(scope, receive))
            else:
                principal = await services.auth.verify(token)
            principal.require("inference")
            body = await receive_body(receive, length)
            response = openai.proxy(Origin.from_headers(scope, headers), body, services, principal, path)
        except LlamaControllerError as exc:
            response = render(Dialect.OPENAI, exc)
        except ClientDisconnect:
            return None
        except Exception:
            log.exception("unhandled error on POST %s", path)
            response = error_response(Dialect.OPENAI, 500, "internal error; see the controller log", "internal_error")
        await response(scope, receive, send)
        return None
