"""The model catalog: pulled and converted models (a database table), and the jobs that make them.

A job is a pull from the Hub or a conversion to GGUF. Its plan (which files, which digests, which
output) is fixed when it is submitted and stored with it, so a job interrupted by a stop or a
crash resumes at the next start from the bytes already on disk. Files are staged under
`models_dir/.downloads/<job>/` (a scan never looks there) and moved into place only when all of
them are complete and verified: the key file (the GGUF, or a folder's config.json) last.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from llamacontroller import paths
from llamacontroller.catalog import hub
from llamacontroller.catalog.fetch import Cancelled, fetch
from llamacontroller.catalog.hub import Plan, Source
from llamacontroller.catalog.scan import model_id_for
from llamacontroller.config import ModelEntry, Settings
from llamacontroller.db.models import CatalogJob, CatalogModel, utcnow
from llamacontroller.db.records import AuditLog
from llamacontroller.errors import (
    BadRequest,
    Conflict,
    InsufficientStorage,
    LlamaControllerError,
    NotFound,
    NotSupported,
)
from llamacontroller.supervisor.spawn import spawn, terminate

log = logging.getLogger(__name__)

STAGING = ".downloads"
DISK_MARGIN = 256 * 2**20  # left free after a download or conversion
SAVE_EVERY = 2.0
CONVERT_TYPES = {"f16": ("f16", None), "q8_0": ("q8_0", None), "q4_k_m": ("f16", "Q4_K_M")}


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (JobState.QUEUED, JobState.RUNNING)


@dataclass
class Job:
    id: str
    kind: str  # pull | convert
    source: str
    plan: dict[str, Any]
    created_by: str | None
    created_at: datetime = field(default_factory=utcnow)
    state: JobState = JobState.QUEUED
    done_bytes: int = 0
    total_bytes: int = 0
    error: str | None = None
    model_id: str | None = None
    phase: str = "queued"
    file: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False  # the controller is stopping: leave the job to resume at the next start
    _since: tuple[float, int] = (0.0, 0)  # when this run's transfer began, and the bytes there were then
    _finished: float = 0.0  # when the transfer ended: the speed shown afterwards is its average

    def progress(self, n: int) -> None:
        self.done_bytes += n

    def view(self) -> dict[str, Any]:
        started, at_start = self._since
        elapsed = (self._finished or time.monotonic()) - started if started else 0.0
        speed = (self.done_bytes - at_start) / elapsed if elapsed > 0.05 else 0.0
        left = max(0, self.total_bytes - self.done_bytes)
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "state": self.state.value,
            "phase": self.phase,
            "file": self.file,
            "bytes": self.done_bytes,
            "total": self.total_bytes,
            "progress": round(self.done_bytes / self.total_bytes, 4) if self.total_bytes else 0.0,
            "speed": round(speed),
            "eta": round(left / speed, 1) if speed > 0 and self.state in ACTIVE else None,
            "error": self.error,
            "model_id": self.model_id,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
        }


@dataclass
class Owned:
    """A model the catalog made, and every file it owns (deleted with it)."""

    entry: ModelEntry
    origin: str  # pulled | converted
    source: str
    paths: list[str]


class Catalog:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        audit: AuditLog,
        *,
        taken: Callable[[str], bool],
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.audit = audit
        self.changed: Callable[[], Awaitable[Any]] = _nothing  # models were added or removed
        self._taken = taken  # is this model name in use?
        self.models: dict[str, Owned] = {}
        self.jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(2)

    @property
    def models_dir(self) -> Path:
        return Path(self.settings.models.models_dir).absolute()

    @property
    def endpoint(self) -> str:
        from huggingface_hub import constants

        return (self.settings.models.hf_endpoint or constants.ENDPOINT).rstrip("/")

    @property
    def token(self) -> str | None:
        from huggingface_hub import get_token

        configured = self.settings.models.hf_token
        return configured.get_secret_value() if configured else get_token()

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        async with self.sessions() as db:
            for made in (await db.execute(select(CatalogModel))).scalars():
                self.models[made.id] = _owned(made)
            rows = (await db.execute(select(CatalogJob).order_by(CatalogJob.created_at))).scalars().all()
        for row in rows:
            job = Job(
                id=row.id,
                kind=row.kind,
                source=row.source,
                plan=row.plan,
                created_by=row.created_by,
                created_at=row.created_at,
                state=JobState(row.state),
                done_bytes=row.done_bytes,
                total_bytes=row.total_bytes,
                error=row.error,
                model_id=row.model_id,
                phase=row.state,
            )
            self.jobs[job.id] = job
            if job.state in ACTIVE:
                log.info("resuming %s job %s (%s)", job.kind, job.id, job.source)
                job.state = JobState.QUEUED
                self._launch(job)

    async def close(self) -> None:
        for job in self.jobs.values():
            job.stopping = True
            job.cancel.set()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def entries(self) -> list[ModelEntry]:
        return [owned.entry for owned in self.models.values()]

    def origin(self, model_id: str) -> str | None:
        owned = self.models.get(model_id)
        return owned.origin if owned else None

    def by_source(self, source: str) -> Owned | None:
        return next((o for o in self.models.values() if o.source.lower() == source.lower()), None)

    def active_job(self, source: str) -> Job | None:
        return next((j for j in self.jobs.values() if j.state in ACTIVE and j.source.lower() == source.lower()), None)

    # ------------------------------------------------------------------------------ pull

    async def pull(self, source: Source, created_by: str | None, revision: str = "main") -> Job:
        """Plan a pull (asking the Hub which files), check it can land, and start it."""
        running = self.active_job(source.name)
        if running is not None:
            return running
        plan = await asyncio.to_thread(hub.plan, source, endpoint=self.endpoint, token=self.token, revision=revision)
        running = self.active_job(plan.source)
        if running is not None:
            return running
        model_id = _pulled_id(plan)
        if model_id in self.models or self._taken(model_id) or self._taken(plan.source):
            raise Conflict(f"{plan.source} is there already as model {model_id!r}; delete it to pull it again")
        target = self.models_dir / plan.folder
        if plan.kind == "safetensors" and target.exists():
            raise Conflict(f"{target} exists already; delete it to pull {plan.repo} again")
        for f in plan.files:
            if (target / hub.safe_path(f.path)).exists():
                raise Conflict(f"{target / f.path} exists already; delete it to pull again")
        self._check_disk(plan.total)
        job = Job(
            id=secrets.token_hex(8),
            kind="pull",
            source=plan.source,
            plan=plan.as_json(),
            created_by=created_by,
            total_bytes=plan.total,
            model_id=model_id,
        )
        await self._save(job)
        self.jobs[job.id] = job
        self._launch(job)
        return job

    def _check_disk(self, need: int) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.models_dir).free
        if free - need < DISK_MARGIN:
            raise InsufficientStorage(
                f"not enough disk space in {self.models_dir}: {need / 2**30:.2f} GiB needed, "
                f"{free / 2**30:.2f} GiB free (keeping {DISK_MARGIN // 2**20} MiB spare)"
            )

    def _launch(self, job: Job) -> None:
        work = self._run_pull if job.kind == "pull" else self._run_convert
        task = asyncio.create_task(self._run(job, work), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))

    async def _run(self, job: Job, work: Callable[[Job], Any]) -> None:
        async with self._slots:
            if job.cancel.is_set():
                return
            job.state, job.phase = JobState.RUNNING, "starting"
            await self._save(job)
            try:
                await work(job)
            except Cancelled:
                if job.stopping:
                    return  # stays `running` in the database: resumed at the next start
                job.state, job.phase = JobState.CANCELLED, "cancelled"
                shutil.rmtree(self._stage(job), ignore_errors=True)
            except LlamaControllerError as exc:
                job.state, job.phase, job.error = JobState.FAILED, "failed", exc.message
                if not isinstance(exc, InsufficientStorage):
                    shutil.rmtree(self._stage(job), ignore_errors=True)
            except Exception as exc:
                log.exception("%s job %s failed", job.kind, job.id)
                job.state, job.phase, job.error = JobState.FAILED, "failed", f"{type(exc).__name__}: {exc}"
                shutil.rmtree(self._stage(job), ignore_errors=True)
            else:
                job.state, job.phase = JobState.DONE, "done"
                shutil.rmtree(self._stage(job), ignore_errors=True)
            await self._save(job)
            result = "ok" if job.state is JobState.DONE else f"{job.state.value}: {job.error or ''}"
            await self.audit.record(
                f"model.{job.kind}", actor=job.created_by, target=job.source, after={"job": job.id}, result=result[:256]
            )

    def _stage(self, job: Job) -> Path:
        return self.models_dir / STAGING / job.id

    async def _run_pull(self, job: Job) -> None:
        plan = Plan.from_json(dict(job.plan))
        stage = self._stage(job)
        # What is staged already counts (a resumed job); fetch() reports it again as it re-hashes.
        job.done_bytes = 0
        job._since = (time.monotonic(), sum(_size(stage / f.path) for f in plan.files))
        self._check_disk(plan.total - job._since[1])
        saver = asyncio.create_task(self._save_every(job))
        try:
            await self._download(job, plan, stage)
        except asyncio.CancelledError:
            job.stopping = True  # the controller stops: the job stays `running`, to resume
            raise
        finally:
            saver.cancel()
        job._finished = time.monotonic()
        job.phase, job.file = "writing manifest", None
        installed = _install(plan, stage, self.models_dir / plan.folder)
        entry = _pulled_entry(plan, self.models_dir, job.model_id or _pulled_id(plan))
        await self._register(Owned(entry, "pulled", plan.source, installed), job.created_by)

    async def _save_every(self, job: Job) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY)
            await self._save(job)

    async def _download(self, job: Job, plan: Plan, stage: Path) -> None:
        from huggingface_hub import hf_hub_url

        token = self.token
        headers = {"User-Agent": "llamacontroller", **({"Authorization": f"Bearer {token}"} if token else {})}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            for remote in plan.files:
                job.phase, job.file = f"pulling {remote.sha256 or remote.git_oid or remote.path}", remote.path
                url = hf_hub_url(plan.repo, remote.path, revision=plan.revision, endpoint=plan.endpoint or None)
                await fetch(session, url, headers, remote, stage / remote.path, job.progress, job.cancel)

    async def _register(self, owned: Owned, created_by: str | None) -> None:
        entry = owned.entry
        async with self.sessions() as db, db.begin():
            db.add(
                CatalogModel(
                    id=entry.id,
                    origin=owned.origin,
                    source=owned.source,
                    backend=entry.backend,
                    path=entry.path or "",
                    files={"paths": owned.paths, "args": entry.args, "aliases": entry.aliases},
                    size=sum(_size(Path(p)) for p in owned.paths),
                    created_by=created_by,
                )
            )
        self.models[entry.id] = owned
        await self.changed()

    # --------------------------------------------------------------------------- convert

    async def convert(self, entry: ModelEntry, outtype: str, created_by: str | None) -> Job:
        """Start converting a safetensors model to GGUF at `outtype` (f16, q8_0, q4_k_m)."""
        outtype = outtype.lower()
        if outtype not in CONVERT_TYPES:
            raise BadRequest(f"type must be one of {', '.join(CONVERT_TYPES)}", param="type")
        source = Path(entry.path or "")
        if entry.backend == "remote" or not (source / "config.json").is_file():
            raise BadRequest(f"{entry.id!r} is not a safetensors model folder; only those convert to GGUF")
        python, script, quantize = paths.converter_python(), paths.converter_dir() / "convert_hf_to_gguf.py", None
        if CONVERT_TYPES[outtype][1]:
            quantize = paths.llama_quantize_binary()
        missing = [
            what
            for what, there in (
                ("a python with torch and transformers (make engines)", python is not None),
                (str(script), script.is_file()),
                (str(quantize), quantize is None or quantize.is_file()),
            )
            if not there
        ]
        if missing:
            raise NotSupported(f"the converter is not installed (run make setup): missing {', '.join(missing)}")
        model_id = f"{entry.id[:120]}-{outtype}"
        output = self.models_dir / f"{model_id_for(model_id.replace('/', '--'))}.gguf"
        if model_id in self.models or self._taken(model_id) or output.exists():
            raise Conflict(f"{model_id!r} exists already; delete it to convert again")
        self._check_disk(2 * _size(source))
        job = Job(
            id=secrets.token_hex(8),
            kind="convert",
            source=f"{entry.id} -> {outtype}",
            plan={"source_id": entry.id, "folder": str(source), "type": outtype, "output": str(output)},
            created_by=created_by,
            total_bytes=100,
            model_id=model_id,
        )
        await self._save(job)
        self.jobs[job.id] = job
        self._launch(job)
        return job

    async def _run_convert(self, job: Job) -> None:
        plan, stage = job.plan, self._stage(job)
        stage.mkdir(parents=True, exist_ok=True)
        outtype, quant = CONVERT_TYPES[plan["type"]]
        converted = stage / f"model-{outtype}.gguf"
        job.done_bytes, job.phase = 0, "converting"
        python = str(paths.converter_python())
        script = str(paths.converter_dir() / "convert_hf_to_gguf.py")
        share = 50 if quant else 100
        argv = [python, script, plan["folder"], "--outfile", str(converted), "--outtype", outtype]
        await self._step(job, argv, 0, share)
        result = converted
        if quant:
            job.phase = "quantizing"
            result = stage / "model.gguf"
            await self._step(job, [str(paths.llama_quantize_binary()), str(converted), str(result), quant], 50, 50)
        output = Path(plan["output"])
        output.parent.mkdir(parents=True, exist_ok=True)
        result.replace(output)
        job.done_bytes = 100
        entry = ModelEntry(id=job.model_id or "", backend="llamacpp", path=str(output))
        await self._register(Owned(entry, "converted", plan["source_id"], [str(output)]), job.created_by)

    async def _step(self, job: Job, argv: list[str], base: int, share: int) -> None:
        """Run one converter program, reading its percentages (tqdm) or `[ i/ n]` tensor counts."""
        proc = await spawn(argv)
        tail: list[str] = []
        assert proc.stdout is not None
        try:
            buffer = b""
            while chunk := await proc.stdout.read(4096):
                if job.cancel.is_set():
                    raise Cancelled
                buffer = (buffer + chunk)[-8192:]
                text = buffer.decode(errors="replace")
                tail = re.split(r"[\r\n]+", text)[-12:]
                percent = _last_percent(text)
                if percent is not None:
                    job.done_bytes = base + share * percent // 100
            code = await proc.wait()
        finally:
            await terminate(proc, 5)
        if code != 0:
            lines = " | ".join(line.strip() for line in tail if line.strip())[-600:]
            program = Path(argv[1] if argv[0].endswith("python") else argv[0]).name
            raise BadRequest(f"{program} failed ({code}): {lines}")

    # ---------------------------------------------------------------------- jobs, delete

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id[:40]!r} not found")
        return job

    async def cancel(self, job_id: str) -> Job:
        job = self.job(job_id)
        if job.state not in ACTIVE:
            raise Conflict(f"job {job.id} is {job.state.value} already")
        job.cancel.set()
        task = self._tasks.get(job.id)
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=5)
            if not done:  # a converter that prints nothing for a while: stop it now
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if job.state in ACTIVE:  # it was still queued, or stopped above
            job.state, job.phase = JobState.CANCELLED, "cancelled"
            await asyncio.to_thread(shutil.rmtree, self._stage(job), ignore_errors=True)
            await self._save(job)
        return job

    async def follow(self, job_id: str, interval: float = 0.25) -> AsyncIterator[dict[str, Any]]:
        """The job's view whenever it changes, until it ends."""
        job = self.job(job_id)
        last: dict[str, Any] | None = None
        while True:
            view = job.view()
            if view != last:
                yield view
                last = view
            if job.state not in ACTIVE:
                return
            await asyncio.sleep(interval)

    async def forget(self, model_id: str) -> list[str]:
        """Drop a catalog model and delete every file it owns; returns the paths deleted."""
        owned = self.models.pop(model_id)
        async with self.sessions() as db, db.begin():
            await db.execute(delete(CatalogModel).where(CatalogModel.id == model_id))
        removed = await asyncio.to_thread(remove_files, [Path(p) for p in owned.paths], self.models_dir)
        await self.changed()
        return removed

    async def _save(self, job: Job) -> None:
        async with self.sessions() as db, db.begin():
            row = await db.get(CatalogJob, job.id)
            if row is None:
                row = CatalogJob(id=job.id, kind=job.kind, source=job.source, plan=job.plan, created_by=job.created_by)
                row.created_at = job.created_at
                db.add(row)
            row.state = job.state.value
            row.done_bytes = job.done_bytes
            row.total_bytes = job.total_bytes
            row.error = job.error
            row.model_id = job.model_id
            row.updated_at = utcnow()


async def _nothing() -> None:
    return None


def remove_files(files: list[Path], models_dir: Path) -> list[str]:
    """Delete files and folders that lie inside `models_dir` (a link is removed, never followed);
    then the folders they leave empty, up to `models_dir`. Anything outside is refused."""
    root = models_dir.resolve()
    removed = []
    for path in files:
        parent = path.parent.resolve()
        if parent != root and root not in parent.parents:
            raise BadRequest(f"{path} is outside models_dir ({models_dir}); not deleted")
        target = parent / path.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        else:
            continue
        removed.append(str(path))
        folder = parent
        while folder != root and root in folder.parents and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    return removed


def _install(plan: Plan, stage: Path, target: Path) -> list[str]:
    """Move the staged files into `target`, the key file last; returns what the model owns."""
    key = plan.model_file or "config.json"
    ordered = sorted(plan.files, key=lambda f: f.path == key)
    for remote in ordered:
        final = target / hub.safe_path(remote.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        (stage / remote.path).replace(final)
    if plan.kind == "safetensors":
        return [str(target)]
    return [str(target / f.path) for f in plan.files]


def _pulled_id(plan: Plan) -> str:
    if plan.kind == "safetensors":
        return plan.repo[:128]
    tag = (plan.quant or model_id_for(Path(plan.model_file).name)).lower()
    return f"{plan.repo}:{tag}"[:128]


def _pulled_entry(plan: Plan, models_dir: Path, model_id: str) -> ModelEntry:
    target = models_dir / plan.folder
    aliases = [plan.source] if plan.source.lower() != model_id.lower() else []
    if plan.kind == "safetensors":
        return ModelEntry(id=model_id, backend="auto", path=str(target), aliases=aliases)
    args = ["--mmproj", str(target / plan.mmproj)] if plan.mmproj else []
    return ModelEntry(id=model_id, backend="llamacpp", path=str(target / plan.model_file), aliases=aliases, args=args)


def _owned(row: CatalogModel) -> Owned:
    files = row.files or {}
    entry = ModelEntry(
        id=row.id,
        backend=row.backend,
        path=row.path,
        args=list(files.get("args", [])),
        aliases=list(files.get("aliases", [])),
    )
    return Owned(entry, row.origin, row.source, list(files.get("paths", [])))


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _last_percent(text: str) -> int | None:
    counts = re.findall(r"\[\s*(\d+)/\s*(\d+)\]", text)
    if counts:
        done, total = counts[-1]
        return min(100, int(done) * 100 // max(1, int(total)))
    percents = re.findall(r"(\d{1,3})%\|", text)
    return min(100, int(percents[-1])) if percents else None
