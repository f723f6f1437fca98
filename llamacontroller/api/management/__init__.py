"""The management API under /api/v1, one module per resource. Handlers parse and check the
request, call the service layer (llamacontroller/services) and declare their answer's shape."""

from __future__ import annotations

from fastapi import APIRouter

from llamacontroller.api.errors import ERROR_RESPONSES
from llamacontroller.api.management import catalog, config, history, models, tokens, users

router = APIRouter(prefix="/api/v1", tags=["management"], responses=ERROR_RESPONSES)
for _module in (models, catalog, tokens, users, history, config):
    router.include_router(_module.router)
