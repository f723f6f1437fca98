"""The fast lane: OpenAI inference POSTs skip FastAPI's routing and dependency machinery.

py-spy showed FastAPI's middleware, routing and dependency solving costing more CPU per proxied
request than the proxying itself (for cheap calls like /tokenize). The lane matches the few
passthrough paths by dictionary lookup and runs the very same handler (`openai.proxy`) with the
same authentication (`deps.get_principal`) and the same error renderer. Everything else goes to
the FastAPI app unchanged.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from llamacontroller.api import openai
from llamacontroller.api.deps import get_principal
from llamacontroller.api.errors import Dialect, error_response, render
from llamacontroller.errors import LlamaControllerError

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
        request = Request(scope, receive)
        try:
            principal = await get_principal(request)
            principal.require("inference")
            response = await openai.proxy(request, self.app.state.services, principal, path)
        except LlamaControllerError as exc:
            response = render(Dialect.OPENAI, exc)
        except Exception:
            log.exception("unhandled error on POST %s", path)
            response = error_response(Dialect.OPENAI, 500, "internal error; see the controller log", "internal_error")
        await response(scope, receive, send)
        return None
