"""Query and path parameters shared by the management routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

# Bounded so that no value overflows a database integer (SQLite and PostgreSQL alike: a huge
# offset was a 500 that also reset the keep-alive connection).
MAX_ID = 2**31 - 1
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**9)]
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
ModelName = Annotated[str, Field(min_length=1, max_length=128)]
