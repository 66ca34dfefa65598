"""The add-on's session with the backend, and its controller: one connection, one timer.

``connect`` reaches the backend the way the preferences say (launch it, a connection file,
or host/ports/key) and performs the ``hello`` handshake. ``tick`` runs from
``bpy.app.timers``: it drains ``Client.poll(timeout=0)`` (never blocks), mirrors progress
into the window-manager properties the panel draws, and writes previews into the job's
object in place. The final splats arrive the same way, never by a request the timer waits
on: jobs are submitted with ``deliver_result``, so ``job_done`` carries them (protocol 1.3)
and they replace the preview in the same object. From an older backend, or for a job
imported from the list, ``fetch_result`` sends a ``get_result`` without waiting and a later
tick shows its ``result``.

Everything here is plain functions over a module-level :class:`Connection`; the operators
in ``ops.py`` are thin wrappers that forward errors to ``self.report``.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from . import splats
from .core.backend_launcher import BackendCommand, BackendLaunchError, BackendProcess, launch_backend
from .core.errors import PortraitSplatError
from .core.splat_arrays import SplatArrays
from .prefs import default_state_dir, get_prefs

TICK_BUSY = 0.1  # seconds between polls while a job runs
TICK_IDLE = 1.0
HEARTBEAT_TIMEOUT = 10.0  # seconds without a heartbeat before the panel warns


class UserError(PortraitSplatError):
    """Something the user can fix; ``hint`` says how. Operators report it, nothing more."""

    code = "user_error"

    def __init__(self, message: str, hint: str = "", code: str | None = None):
        super().__init__(message, hint=hint, code=code)

    def __str__(self) -> str:  # one line in Blender's report bar: "What happened. What to do"
        return f"{self.message.rstrip('.')}. {self.hint}" if self.hint else self.message


@dataclass
class Connection:
    client: object | None = None  # core.client.Client
    process: BackendProcess | None = None  # set when we launched the backend
    welcome: object | None = None
    job_scene: dict[str, str] = field(default_factory=dict)  # job id -> scene name
    last_error: str = ""


_conn = Connection()


def connection() -> Connection:
    return _conn


def runtime(context=None):
    wm = (context or bpy.context).window_manager
    if wm is None:
        wm = bpy.data.window_managers[0]
    return wm.portraitsplat


# --------------------------------------------------------------------------- connect
def _client_module():
    # Imported lazily: pyzmq comes from the extension's wheels and may be missing in a
    # development install; saying so beats failing to register the add-on.
    try:
        from .core import client as client_mod
        from .core import connection as connection_mod
        from .core import protocol as protocol_mod
    except ImportError as exc:
        raise UserError(
            f"pyzmq is not available in this Blender ({exc})",
            "Install the PortraitSplat extension zip (it bundles pyzmq), not the source folder",
        ) from exc
    return client_mod, connection_mod, protocol_mod


def connect(context, timeout: float = 15.0):
    """Connect (launching the backend first if configured) and return the ``welcome``."""
    if _conn.client is not None:
        return _conn.welcome
    client_mod, connection_mod, protocol_mod = _client_module()
    prefs = get_prefs(context)
    mode = prefs.connection_mode
    if mode == "LAUNCH":
        state_dir = Path(bpy.path.abspath(prefs.state_dir) if prefs.state_dir else default_state_dir())
        command = BackendCommand(
            python=bpy.path.abspath(prefs.python_path),
            connection_file=state_dir / "connection.json",
            state_dir=state_dir,
            workdir=Path(bpy.path.abspath(prefs.backend_dir)) if prefs.backend_dir else None,
        )
        try:
            _conn.process = launch_backend(command, timeout=float(prefs.launch_timeout))
        except BackendLaunchError as exc:
            raise UserError(f"Could not start the backend: {exc.message}", exc.hint) from exc
        target = command.connection_file
    elif mode == "FILE":
        target = Path(bpy.path.abspath(prefs.connection_file)) if prefs.connection_file else None
        if target is None or not target.is_file():
            raise UserError(
                f"No backend connection file at '{target or ''}'",
                "Start the backend with 'python -m backend serve --connection-file FILE' and choose FILE "
                "in the add-on preferences, or let the add-on launch it",
            )
    else:
        if not prefs.request_port or not prefs.pub_port:
            raise UserError(
                "Backend ports are not set", "Enter both ports from the backend's connection file in the preferences"
            )
        target = connection_mod.ConnectionInfo(
            ip=prefs.host or "127.0.0.1",
            router_port=int(prefs.request_port),
            pub_port=int(prefs.pub_port),
            key=prefs.key,
        )
    try:
        client = client_mod.Client(target, name=f"portraitsplat-blender/{bpy.app.version_string}")
    except connection_mod.ConnectionFileError as exc:
        _stop_process()
        raise UserError(str(exc), "Restart the backend, or check the connection settings") from exc
    try:
        welcome = client.connect(timeout=timeout)
    except (protocol_mod.ProtocolError, client_mod.ServiceError) as exc:
        client.close()
        _stop_process()
        raise _connect_error(exc, protocol_mod.PROTOCOL_VERSION) from exc
    _conn.client, _conn.welcome = client, welcome
    rt = runtime(context)
    rt.connected = True
    rt.available_pipelines = ",".join(welcome.pipelines)
    rt.backend_info = f"{welcome.server_version} on {welcome.device}"
    set_status(context, f"Connected: backend {welcome.server_version}, {welcome.device}")
    ensure_timer()
    return welcome


def _connect_error(exc, our_version: str) -> UserError:
    """Turn a failed handshake into what the user should do about it."""
    code, message = getattr(exc, "code", ""), getattr(exc, "message", str(exc))
    if code == "version_mismatch":
        return UserError(
            f"The backend speaks another protocol version than this add-on ({our_version}): {message}",
            "Install the add-on and the backend from the same PortraitSplat release",
        )
    if code == "bad_signature":
        return UserError("The backend rejected our signature", "Copy the key from the backend's connection file")
    if code == "timeout":
        return UserError(f"Backend not reachable: {message}", getattr(exc, "hint", ""))
    return UserError(f"Backend refused the connection: {message}", getattr(exc, "hint", ""))


def disconnect(context, *, stop_backend: bool = True) -> None:
    if _conn.client is not None:
        if stop_backend and _conn.process is not None:
            try:
                _conn.client.shutdown(timeout=3.0)
            except Exception as exc:  # noqa: BLE001 - the process is stopped below anyway
                print(f"PortraitSplat: backend shutdown request failed: {exc}")
        _conn.client.close()
    _conn.client = None
    _conn.welcome = None
    if stop_backend:
        _stop_process()
    rt = runtime(context)
    rt.connected = False
    rt.active_job = ""
    set_status(context, "Disconnected")


def _stop_process() -> None:
    if _conn.process is not None:
        _conn.process.stop()
        _conn.process = None


def pipeline_available(context, pipeline: str) -> tuple[bool, str]:
    """(available, reason) from the backend's ``welcome``; unknown before connecting."""
    welcome = _conn.welcome
    if welcome is None or pipeline in welcome.pipelines:
        return True, ""
    if pipeline in welcome.unavailable:
        return False, welcome.unavailable[pipeline]
    if not welcome.pipelines and welcome.worker_state in ("starting", "restarting"):
        return True, ""  # not known until the worker is up; the server queues the job meanwhile
    return False, "this backend does not offer it"


def _refresh_welcome(context) -> None:
    """Ask again once the worker is ready: the first welcome may predate it."""
    client, welcome = _conn.client, _conn.welcome
    hb = getattr(client, "last_heartbeat", None)
    up = ("ready", "busy")
    if welcome is None or welcome.worker_state in up or hb is None or hb.worker_state not in up:
        return
    try:
        _conn.welcome = welcome = client.connect(timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - the next heartbeat tries again
        print(f"PortraitSplat: could not refresh the backend's welcome: {exc}")
        return
    rt = runtime(context)
    rt.available_pipelines = ",".join(welcome.pipelines)
    rt.backend_info = f"{welcome.server_version} on {welcome.device}"


# --------------------------------------------------------------------------- jobs
def submit(context, settings, *, pipeline: str = "", options: dict | None = None) -> str:
    """Queue a job from the panel settings; ``pipeline``/``options`` override them (scripts)."""
    from .props import style_prompt

    pipeline = pipeline or settings.pipeline
    path = bpy.path.abspath(settings.photo)
    if not settings.photo or not os.path.isfile(path):
        raise UserError(f"No photo at '{settings.photo}'", "Pick a portrait photo (JPEG or PNG) in the panel")
    connect(context)
    ok, why = pipeline_available(context, pipeline)
    if not ok:
        raise UserError(f"The '{pipeline}' pipeline is unavailable: {why}", "Pick another pipeline, or fix the backend")
    with open(path, "rb") as fh:
        image = fh.read()
    job_id = _call(
        lambda c: c.submit(
            image,
            pipeline=pipeline,
            preset=settings.preset,
            seed=settings.seed,
            style_prompt=style_prompt(settings) if pipeline != "photo" else "",
            options=options or {},
            image_name=os.path.basename(path),
            deliver_result=True,
        )
    )
    _conn.job_scene[job_id] = context.scene.name
    rt = runtime(context)
    rt.active_job = job_id
    rt.stage, rt.progress, rt.eta, rt.previews_received = "queued", 0.0, -1.0, 0
    set_status(context, f"Job {job_id} queued")
    ensure_timer()
    return job_id


def cancel(context, job_id: str | None = None) -> str:
    rt = runtime(context)
    job_id = job_id or rt.active_job
    if not job_id:
        raise UserError("No job is running")
    state = _call(lambda c: c.cancel(job_id))
    set_status(context, f"Job {job_id}: {state}")
    return state


def refresh_jobs(context) -> None:
    records = _call(lambda c: c.list_jobs(limit=50))
    rt = runtime(context)
    rt.jobs.clear()
    for rec in records:
        item = rt.jobs.add()
        item.job_id = str(rec.get("job_id", ""))
        item.state = str(rec.get("state", ""))
        item.pipeline = str(rec.get("pipeline", ""))
        n = rec.get("n_gaussians")
        item.label = f"{rec.get('image_name') or item.job_id} ({item.pipeline}/{rec.get('preset', '')}" + (
            f", {n:,} splats)" if n else ")"
        )


def delete_job(context, job_id: str) -> int:
    """Delete an ended job on the backend and refresh the list; returns the bytes freed."""
    freed = _call(lambda c: c.delete_job(job_id))
    refresh_jobs(context)
    set_status(context, f"Job {job_id} deleted")
    return freed


def fetch_result(context, job_id: str) -> None:
    """Ask for a finished job's splats without waiting: a later tick shows them."""
    if job_id in getattr(_conn.client, "fetches_in_flight", list)():
        return
    _call(lambda c: c.fetch_result(job_id, include_ply=False))
    set_status(context, f"Job {job_id}: fetching the result")
    ensure_timer()


def _show_final(context, job_id: str, arrays: SplatArrays) -> bpy.types.Object:
    scene = bpy.data.scenes.get(_conn.job_scene.get(job_id, "")) or context.scene
    obj = show_splats(scene, job_id, arrays, state="final")
    rt = runtime(context)
    if rt.active_job == job_id:
        rt.active_job = ""
        rt.progress, rt.stage, rt.eta = 1.0, "done", -1.0
    set_status(context, f"Job {job_id} done: {len(obj.data.vertices)} splats in '{obj.name}'")
    return obj


def show_splats(scene, job_id: str, arrays: SplatArrays, *, state: str) -> bpy.types.Object:
    obj = splats.find_object(job_id)
    if obj is None:
        obj = splats.create_splat_object(scene, f"Splat {job_id[:8]}", arrays, tag=job_id, state=state)
    else:
        splats.update_splat_object(obj, arrays, state=state)
    return obj


def _call(fn):
    if _conn.client is None:
        raise UserError("Not connected to the backend", "Press Connect in the PortraitSplat panel")
    client_mod, _, protocol_mod = _client_module()
    try:
        return fn(_conn.client)
    except client_mod.ServiceError as exc:
        raise UserError(exc.message, exc.hint) from exc
    except protocol_mod.ProtocolError as exc:
        raise UserError(f"Backend protocol error: {exc}") from exc


# --------------------------------------------------------------------------- timer
def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK_BUSY, persistent=True)


def stop_timer() -> None:
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)


def tick():
    """Timer callback: returns the next interval, or None to stop (when disconnected)."""
    if _conn.client is None:
        return None
    context = bpy.context
    try:
        messages = _conn.client.poll(timeout=0)
    except Exception as exc:  # noqa: BLE001 - keep the timer alive; tell the user
        set_status(context, f"Lost the backend: {exc}", error=True)
        return TICK_IDLE
    for msg in messages:
        try:
            handle_message(context, msg)
        except UserError as exc:
            set_status(context, exc.message, error=True, hint=exc.hint)
        except Exception as exc:  # noqa: BLE001 - an exception would unregister the timer
            traceback.print_exc()
            set_status(context, f"Could not handle the backend's {getattr(msg, 'msg_type', '?')}: {exc}", error=True)
    _check_alive(context)
    _refresh_welcome(context)
    if messages:
        _redraw(context)
    busy = runtime(context).active_job or (_conn.client is not None and _conn.client.fetches_in_flight())
    return TICK_BUSY if busy else TICK_IDLE


def _check_alive(context) -> None:
    """Say so when a launched backend has exited or the heartbeats stop."""
    if _conn.process is not None and not _conn.process.alive():
        code, log_path = _conn.process.stop(), _conn.process.log_path
        _conn.process = None
        disconnect(context, stop_backend=False)
        set_status(
            context,
            f"The backend exited (code {code})",
            error=True,
            hint=f"See its log at {log_path}, then press Connect",
        )
        return
    silent = _conn.client.seconds_since_heartbeat() if _conn.client is not None else None
    if silent is not None and silent > HEARTBEAT_TIMEOUT:
        set_status(
            context,
            f"No heartbeat from the backend for {silent:.0f} s",
            error=True,
            hint="Is it still running? Disconnect and Connect again to restart it",
        )


def handle_message(context, msg) -> None:
    rt = runtime(context)
    kind = getattr(msg, "msg_type", "")
    job_id = getattr(msg, "job_id", "")
    scene = bpy.data.scenes.get(_conn.job_scene.get(job_id, "")) or context.scene
    if kind == "progress":
        rt.stage = msg.stage
        rt.progress = min(1.0, msg.step / msg.total) if msg.total else 0.0
        rt.eta = -1.0 if msg.eta_s is None else float(msg.eta_s)
        if msg.message:
            set_status(context, msg.message)
    elif kind == "preview":
        show_splats(scene, job_id, msg.splats, state="preview")
        rt.previews_received += 1
    elif kind == "job_done":
        if msg.splats is not None:
            _show_final(context, job_id, msg.splats)
        else:  # a backend older than protocol 1.3: ask, and keep ticking until the answer
            rt.stage = "fetching"
            fetch_result(context, job_id)
    elif kind == "result":
        _show_final(context, job_id, msg.splats)
    elif kind == "fetch_failed":
        if rt.active_job == job_id:
            rt.active_job = ""
        set_status(context, f"Job {job_id}: its result could not be fetched: {msg.message}", error=True, hint=msg.hint)
    elif kind == "job_failed":
        if rt.active_job == job_id:
            rt.active_job = ""
        rt.stage = "cancelled" if msg.code == "cancelled" else "failed"
        set_status(context, f"Job {job_id} {rt.stage}: {msg.message}", error=msg.code != "cancelled", hint=msg.hint)


def set_status(context, text: str, *, error: bool = False, hint: str = "") -> None:
    rt = runtime(context)
    rt.status = text
    rt.status_is_error = error
    rt.hint = hint
    if error:
        print(f"PortraitSplat: {text}" + (f" ({hint})" if hint else ""))


def _redraw(context) -> None:
    wm = context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


@bpy.app.handlers.persistent
def on_load_post(*_args) -> None:
    """A newly loaded file brings fresh window-manager properties: show the live connection."""
    try:
        rt = runtime()
    except (AttributeError, IndexError):
        return
    rt.connected = _conn.client is not None
    if _conn.welcome is not None:
        rt.available_pipelines = ",".join(_conn.welcome.pipelines)
        rt.backend_info = f"{_conn.welcome.server_version} on {_conn.welcome.device}"


def shutdown_all() -> None:
    """Called from unregister(): stop the timer, close sockets, stop a launched backend."""
    stop_timer()
    if _conn.client is not None:
        try:
            if _conn.process is not None:
                _conn.client.shutdown(timeout=2.0)
        except Exception:  # noqa: BLE001 - best effort during unregister; the process is killed next
            pass
        _conn.client.close()
    _conn.client = None
    _conn.welcome = None
    _stop_process()
    _conn.job_scene.clear()
