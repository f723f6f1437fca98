"""/api/v1/models/pull, /api/v1/models/convert, /api/v1/jobs, DELETE /api/v1/models/{id}:
getting models from the Hub, making GGUF files, and deleting models with their files."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from llamacontroller.api.deps import ManagerActor, ManagerDep, ServicesDep
from llamacontroller.api.management.models import sse
from llamacontroller.api.management.params import ModelName
from llamacontroller.services import catalog as service

router = APIRouter()

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        min_length=1, max_length=300, description="org/repo, org/repo:QUANT, org/repo:file.gguf or hf.co/org/repo:QUANT"
    )
    revision: str = Field("main", pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


class ConvertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: ModelName
    type: Literal["f16", "q8_0", "q4_k_m"] = "q8_0"


class JobView(BaseModel):
    id: str
    kind: str = Field(description="pull | convert")
    source: str
    state: str = Field(description="queued | running | done | failed | cancelled")
    phase: str = Field(description="What it does now: 'pulling <digest>', 'converting', 'writing manifest'…")
    file: str | None
    bytes: int
    total: int
    progress: float = Field(description="0 to 1")
    speed: int = Field(description="Bytes per second while running")
    eta: float | None = Field(description="Seconds left, while running")
    error: str | None
    model_id: str | None = Field(description="The model it makes")
    created_by: str | None
    created_at: str


class JobList(BaseModel):
    jobs: list[JobView]


class Deleted(BaseModel):
    deleted: str
    origin: str = Field(description="pulled | converted | scanned")
    files: list[str]


@router.post("/models/pull", status_code=202)
async def pull(body: PullRequest, services: ServicesDep, actor: ManagerActor) -> JobView:
    """Start downloading a model from the Hugging Face Hub (a job; follow it at /api/v1/jobs/{id})."""
    job = await service.pull(services, actor, body.source, body.revision)
    return JobView(**job.view())


@router.post("/models/convert", status_code=202)
async def convert(body: ConvertRequest, services: ServicesDep, actor: ManagerActor) -> JobView:
    """Start converting a safetensors model to a GGUF file (a job), served by llama-server when done."""
    job = await service.convert(services, actor, body.model_id, body.type)
    return JobView(**job.view())


@router.delete("/models/{model_id:path}")
async def delete_model(
    model_id: str,
    services: ServicesDep,
    actor: ManagerActor,
    force: Annotated[bool, Query(description="Unload it first if it is loaded")] = False,
) -> Deleted:
    """Delete a pulled, converted or scanned model and its files (never one from the YAML)."""
    return Deleted(**await service.delete(services, actor, model_id, force=force))


@router.get("/jobs")
async def jobs(services: ServicesDep, principal: ManagerDep) -> JobList:
    return JobList(jobs=[JobView(**view) for view in service.jobs(services)])


@router.get("/jobs/{job_id}", response_model=JobView)
async def job(
    job_id: JobId,
    request: Request,
    services: ServicesDep,
    principal: ManagerDep,
    follow: bool = Query(False, description="Stream its progress (SSE) until it ends; so does Accept: event-stream"),
) -> Any:
    found = services.catalog.job(job_id)
    if not follow and "text/event-stream" not in request.headers.get("accept", ""):
        return JobView(**found.view())
    return sse(services.catalog.follow(found.id))


@router.delete("/jobs/{job_id}")
async def cancel(job_id: JobId, services: ServicesDep, actor: ManagerActor) -> JobView:
    """Cancel a queued or running job; what it staged is deleted."""
    return JobView(**(await service.cancel(services, actor, job_id)).view())
