"""Jobs: folder scans (start, abort, list running, recent history), reindexing files,
regenerating one file's metadata. The work is in ``services/scans``; these parse and shape."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from heaper_trio.errors import BadRequest
from heaper_trio.records import User
from heaper_trio.services.scans.service import KEEP_FINISHED_PER_USER
from heaper_trio.web.json_files import regenerated_json
from heaper_trio.web.routes_heaps import ID, ONE_HEAP
from heaper_trio.web.routing import route, services
from heaper_trio.web.schema import boolean, integer, obj, open_obj, parse_int, string

bp = Blueprint("jobs", __name__)

SCAN = open_obj(
    scan_id=string(),
    kind=string(enum=["scan", "reindex", "regenerate", "upload_expiry"]),
    heap_id=string(),
    path=string(),
    state=string(enum=["queued", "running", "aborting", "finishing", "done", "aborted", "failed"]),
    files_seen=integer(),
    files_done=integer(),
    bytes=integer(),
    started_at=integer(),
    finished_at={"type": ["integer", "null"]},
    files_new=integer(),
    files_changed=integer(),
    files_unchanged=integer(),
    files_missing=integer(),
    folders=integer(),
    duplicates=integer(),
    skipped=integer(),
    errors=integer(),
    bytes_hashed=integer(),
    current_path=string(),
    files_per_s={"type": "number"},
    error={"type": ["string", "null"]},
)
STARTED = open_obj(success=boolean(), scan_id=string(), scan=SCAN)
SCANS = {"type": "array", "items": SCAN}
HISTORY_LIMIT = integer(minimum=1, maximum=KEEP_FINISHED_PER_USER)
HISTORY_DEFAULT = 20


def _heap(body: dict[str, Any], required: bool) -> str | None:
    heap_id = body.get("heap_id") or body.get("workspace_id")
    if heap_id is None and required:
        raise BadRequest(
            "heap_id is required", code="missing_field", details={"field": "body.heap_id"}
        )
    return heap_id  # type: ignore[no-any-return]


@route(
    bp,
    "POST",
    "/api/scan_folder",
    tag="jobs",
    errors=(403, 404, 409),
    summary="Index a folder on the server in place, as file and folder blocks of a heap; "
    "without a path, every folder scanned into the heap again.",
    description="`path` is a folder under one of the server's scan_roots (admins) or under "
    "`<root>/<your user id>/` (everyone else); a relative path is taken from there. Each "
    "file becomes a file block (files_v0: name, size, mtime, MIME type, SHA-256, width, "
    "height, duration), served from where it is; each folder a folder block its files and "
    "folders are tagged with. Scanning again only reads new and changed files, marks files "
    "gone from disk `missing` and un-marks those back. `.heaperignore` files (gitignore "
    "syntax) leave files out; links are not followed. The scan runs in the background: "
    "progress comes as scan.* events on /ws and /api/ws, in GET /api/active_scans while it "
    "runs and in GET /api/scans. Without `path`, every folder scanned into the heap before "
    "(the topmost ones: a folder inside another is scanned with it) is scanned again, each "
    "as a job of its own, started together: `scans` lists them (`scan_id` and `scan` are "
    "the first), `skipped` the folders that no longer pass the checks below, with the "
    "code each would answer (if every one fails, the first failure is the answer). "
    "403 scanning_disabled (no scan_roots), 403 scan_path_forbidden (outside what you may "
    "scan), 400 not_a_directory, 404 nothing_scanned (no path, and no folder was scanned "
    "into the heap yet), 409 scan_running (a scan of this folder, or of one inside or "
    "around it, runs in this heap; by heap: of any of its folders, and none is started).",
    body=obj(
        {},
        {"heap_id": ID, "workspace_id": ID, "path": string(minLength=1, maxLength=4096)},
        **ONE_HEAP,
    ),
    response=open_obj(
        success=boolean(),
        scan_id=string(),
        scan=SCAN,
        scans=SCANS,
        skipped={
            "type": "array",
            "items": open_obj(path=string(), error=string()),
        },
    ),
)
async def scan_folder(user: User, body: dict[str, Any]) -> dict[str, Any]:
    heap_id = _heap(body, True)
    assert heap_id is not None
    if "path" not in body:
        started = await services().scans.scan_heap(user, heap_id)
        jobs = [j.as_dict() for j in started.jobs]
        return {
            "success": True,
            "scan_id": jobs[0]["scan_id"],
            "scan": jobs[0],
            "scans": jobs,
            "skipped": [{"path": p, "error": code} for p, code in started.skipped],
        }
    job = (await services().scans.scan_folder(user, heap_id, body["path"])).as_dict()
    return {"success": True, "scan_id": job["scan_id"], "scan": job, "scans": [job]}


@route(
    bp,
    "POST",
    "/api/abort_scan",
    tag="jobs",
    errors=(404,),
    summary="Stop a scan or reindex job: it ends within a second, keeping what it stored.",
    description="What was read before the abort is committed (whole files and their "
    "blocks only); the missing-file pass is skipped. Any server process sharing the "
    "database can abort a job another one runs (it answers `aborting`; the job ends "
    "`aborted` within a second or so). Aborting a finished job answers its final state. "
    "404 scan_not_found (also for another user's job).",
    body=obj({"scan_id": string(minLength=1, maxLength=64)}),
    response=STARTED,
)
async def abort_scan(user: User, body: dict[str, Any]) -> dict[str, Any]:
    job = await services().scans.abort(user, body["scan_id"])
    return {"success": True, "scan_id": job.scan_id, "scan": job.as_dict()}


@route(
    bp,
    "GET",
    "/api/active_scans",
    tag="jobs",
    summary="Your running scan and reindex jobs (an admin's: everyone's).",
    description="`state` is running, aborting or finishing (marking missing files). A job "
    "leaves the list when it ends; how it ended is in GET /api/scans and the final scan.* "
    "event. Jobs of every server process sharing the database; a job whose process "
    "died is failed (error `process_died`) soon after job_heartbeat_timeout and leaves the "
    "list.",
    response=open_obj(success=boolean(), scans=SCANS),
)
async def active_scans(user: User) -> dict[str, Any]:
    jobs = await services().scans.active(user)
    return {"success": True, "scans": [j.as_dict() for j in jobs]}


@route(
    bp,
    "GET",
    "/api/scans",
    tag="jobs",
    summary="Your recent scan and reindex jobs, running and finished, newest first.",
    description=f"Your own jobs only (an admin's too). `limit` is 1-{KEEP_FINISHED_PER_USER} "
    f"(default {HISTORY_DEFAULT}; else 400 invalid_value). `state` is running, aborting, "
    "finishing, done, aborted or failed; a finished job is kept for a day, your last "
    f"{KEEP_FINISHED_PER_USER} of them. Jobs of every server process sharing the database.",
    query={"limit": HISTORY_LIMIT},
    response=open_obj(success=boolean(), scans=SCANS),
)
async def scan_history(user: User) -> dict[str, Any]:
    limit = parse_int(request.args.get("limit", str(HISTORY_DEFAULT)), HISTORY_LIMIT, "query.limit")
    jobs = await services().scans.history(user, limit)
    return {"success": True, "scans": [j.as_dict() for j in jobs]}


@route(
    bp,
    "POST",
    "/api/reindex_files",
    tag="jobs",
    errors=(403, 409),
    summary="Probe every file of a heap (or of all your heaps) again, in the background.",
    description="MIME type, width, height and duration are read again and the files_v0 "
    "entries that differ are updated; cached thumbnails are dropped. Files your blocks "
    "only name (bytes never sent by you) are skipped like unknown ones. Reported like a "
    "scan (kind `reindex`, scan.* events, active_scans). 403 heap_forbidden, 409 "
    "scan_running if one runs already.",
    body=obj({}, {"heap_id": ID, "workspace_id": ID}),
    response=STARTED,
)
async def reindex_files(user: User, body: dict[str, Any]) -> dict[str, Any]:
    job = await services().scans.reindex_files(user, _heap(body, False))
    return {"success": True, "scan_id": job.scan_id, "scan": job.as_dict()}


@route(
    bp,
    "POST",
    "/api/regenerate_file",
    tag="jobs",
    errors=(404, 409),
    summary="Probe one file again and drop its cached thumbnails (answers when done).",
    description="`file_hash` or `file_id`: a file one of your blocks holds. Its row and "
    "your blocks' files_v0 entries get the new MIME type and dimensions; thumbnails are "
    "made again on next request. 404 file_not_found (also for a file your blocks only "
    "name, whose bytes you never sent), 404 file_content_missing, 409 file_changed (a "
    "scanned file changed on disk since its scan: it is being scanned again).",
    body=obj(
        {},
        {
            "file_hash": string(pattern="^[0-9a-fA-F]{64}$"),
            "file_id": string(minLength=1, maxLength=64),
            "hash": string(pattern="^[0-9a-fA-F]{64}$"),
        },
        anyOf=[{"required": ["file_hash"]}, {"required": ["hash"]}, {"required": ["file_id"]}],
    ),
    response=open_obj(
        success=boolean(),
        file_hash=string(),
        file_id=string(),
        mime_type=string(),
        blocks_changed=integer(),
    ),
)
async def regenerate_file(user: User, body: dict[str, Any]) -> dict[str, Any]:
    key = body.get("file_hash") or body.get("hash") or body.get("file_id")
    if not key:
        raise BadRequest(
            "file_hash or file_id is required",
            code="missing_field",
            details={"field": "body.file_hash"},
        )
    return regenerated_json(await services().scans.regenerate_file(user, key))
