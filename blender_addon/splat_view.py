"""Splat view: splat objects drawn as real Gaussians with Blender's ``gpu`` module.

The proxy (Geometry Nodes ellipsoids or points, :mod:`.splats`) is what Cycles and EEVEE
render; the splat view is what the backend's renderer shows. With an object's splat view
on, a ``POST_VIEW`` draw handler draws it in every 3D viewport, and
:func:`render_offscreen` draws it from a camera into an image (the "OpenGL" turntable).

How one object is drawn (the CPU half is :mod:`.core.splat_view`, tested without a GPU):

- per view, :class:`.core.splat_view.ViewCache` re-sorts back to front (16-bit depth keys,
  radix sort) and re-evaluates SH 0-3 only when the view turned or moved enough; in the
  viewport that runs on a worker thread, and the previous order is drawn until it is done,
  so orbiting a million splats never waits on a sort;
- the packed rows (:func:`.core.splat_view.pack_instances`, 16 floats a splat) go to the
  GPU as one RGBA32F texture, straight from the numpy array (``gpu.types.Buffer`` over the
  array's memory: no Python lists); Blender's Python API has no per-instance vertex
  buffers, so the vertex shader reads its splat's four texels by ``gl_InstanceID``;
- one instanced quad per splat (a 4-vertex ``GPUVertBuf`` filled from numpy): the vertex
  shader projects the 3D covariance with the object-to-clip matrix's Jacobian (EWA, the
  backend's ``eps2d`` of 0.3 px^2 added), sizes the quad to where the splat stays above
  alpha 1/255 (at most 3.33 sigma), and the fragment shader gives
  ``min(0.99, opacity * exp(-0.5 d^T conic d))`` premultiplied, blended back to front.

Objects are drawn with their own transform, from the depsgraph's object instances, so
duplicates, linked duplicates and collection instances draw too. The splat data are read
from the original mesh once per mesh change (a depsgraph handler drops stale ones).

In background mode (``blender -b``, the ``bpy`` module) Blender starts its GPU backend
only when a render needs it: :func:`ensure_gpu` renders one Workbench pixel to start it.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import bpy
import gpu
import numpy as np
from bpy.props import BoolProperty
from mathutils import Matrix

from . import splats
from .core.splat_arrays import sigmoid
from .core.splat_view import INSTANCE_FLOATS, ViewCache, covariances, view_changed

PROP = "portraitsplat_splat_view"
ROW_SPLATS = 1024  # splats per texture row: 4 RGBA32F texels each, 4096 texels wide
SYNC_SPLATS = 200_000  # the viewport sorts a cloud's first view in the draw itself up to this size
EPS2D = 0.3  # px^2 low-pass added to each 2D covariance (the backend's eps2d)

_VERT = """
void main()
{
  int row_len = int(viewport.z);
  ivec2 base = ivec2((gl_InstanceID % row_len) * 4, gl_InstanceID / row_len);
  vec4 t0 = texelFetch(splats, base, 0);                /* centre xyz, opacity */
  vec4 t1 = texelFetch(splats, base + ivec2(1, 0), 0);  /* cov xx xy xz yy */
  vec4 t2 = texelFetch(splats, base + ivec2(2, 0), 0);  /* cov yz zz, r g */
  vec4 t3 = texelFetch(splats, base + ivec2(3, 0), 0);  /* b */
  vec4 c = mvp * vec4(t0.xyz, 1.0);
  float opacity = t0.w;
  gl_Position = vec4(0.0, 0.0, 2.0, 1.0); /* culled unless set below */
  offset = vec2(0.0);
  conic = vec3(0.0);
  color = vec4(0.0);
  if (c.w <= 1e-6 || opacity < 1.0 / 255.0) {
    return;
  }
  /* Jacobian of the window position (pixels) with respect to the object-space centre */
  vec3 r0 = vec3(mvp[0][0], mvp[1][0], mvp[2][0]);
  vec3 r1 = vec3(mvp[0][1], mvp[1][1], mvp[2][1]);
  vec3 r3 = vec3(mvp[0][3], mvp[1][3], mvp[2][3]);
  float iw2 = 1.0 / (c.w * c.w);
  vec3 j0 = 0.5 * viewport.x * (r0 * c.w - c.x * r3) * iw2;
  vec3 j1 = 0.5 * viewport.y * (r1 * c.w - c.y * r3) * iw2;
  mat3 cov = mat3(t1.x, t1.y, t1.z, t1.y, t1.w, t2.x, t1.z, t2.x, t2.y);
  vec3 cj0 = cov * j0;
  vec3 cj1 = cov * j1;
  float a = dot(j0, cj0) + EPS2D;
  float b = dot(j0, cj1);
  float d = dot(j1, cj1) + EPS2D;
  float det = a * d - b * b;
  if (!(det > 0.0)) {
    return;
  }
  conic = vec3(d, -b, a) / det;
  float k = min(3.33, sqrt(2.0 * log(opacity * 255.0)));
  offset = corner * k * sqrt(vec2(a, d));
  vec2 win = (c.xy / c.w * 0.5 + 0.5) * viewport.xy + offset;
  gl_Position = vec4((win / viewport.xy * 2.0 - 1.0) * c.w, c.z, c.w);
  vec3 rgb = vec3(t2.z, t2.w, t3.x);
  if (viewport.w > 0.5) {
    /* an sRGB framebuffer (the viewport's overlay buffer) encodes what it is given: give it
     * linear light, so that it shows the splats' display colours */
    rgb = mix(rgb / 12.92, pow((rgb + 0.055) / 1.055, vec3(2.4)), step(vec3(0.04045), rgb));
  }
  color = vec4(rgb, opacity);
}
"""

_FRAG = """
void main()
{
  float q = conic.x * offset.x * offset.x + 2.0 * conic.y * offset.x * offset.y + conic.z * offset.y * offset.y;
  float alpha = min(0.99, color.a * exp(-0.5 * q));
  if (alpha < 1.0 / 255.0) {
    discard;
  }
  fragColor = vec4(color.rgb * alpha, alpha);
}
"""

_state: dict = {"shader": None, "quad": None, "handler": None, "executor": None}


# --------------------------------------------------------------------------- GPU objects
def ensure_gpu() -> None:
    """Make sure the ``gpu`` module can draw. In background mode Blender starts its GPU
    backend lazily, for the first render that needs one: render one Workbench pixel in a
    throwaway scene to start it. Raises RuntimeError when no backend starts."""
    try:
        gpu.types.GPUOffScreen(1, 1).free()
        return
    except SystemError:
        if not bpy.app.background:
            raise
    scene = bpy.data.scenes.new("PortraitSplat GPU start")
    cam_data = bpy.data.cameras.new("PortraitSplat GPU start")
    cam = bpy.data.objects.new("PortraitSplat GPU start", cam_data)
    try:
        scene.collection.objects.link(cam)
        scene.camera = cam
        scene.render.engine = "BLENDER_WORKBENCH"
        scene.render.resolution_x = scene.render.resolution_y = 1
        bpy.ops.render.render(scene=scene.name)
    finally:
        bpy.data.objects.remove(cam)
        bpy.data.cameras.remove(cam_data)
        bpy.data.scenes.remove(scene)
    try:
        gpu.types.GPUOffScreen(1, 1).free()
    except SystemError as exc:
        raise RuntimeError(f"no GPU backend started (Workbench render did not start one): {exc}") from exc


def shader() -> gpu.types.GPUShader:
    if _state["shader"] is None:
        iface = gpu.types.GPUStageInterfaceInfo("portraitsplat_splat_iface")
        iface.no_perspective("VEC2", "offset")  # pixels from the splat's centre
        iface.flat("VEC3", "conic")  # inverse 2D covariance xx, xy, yy (pixels^-2)
        iface.flat("VEC4", "color")  # rgb, opacity
        info = gpu.types.GPUShaderCreateInfo()
        info.define("EPS2D", repr(float(EPS2D)))
        info.push_constant("MAT4", "mvp")  # object -> clip
        info.push_constant("VEC4", "viewport")  # width, height (pixels), splats per texture row, sRGB target
        info.sampler(0, "FLOAT_2D", "splats")
        info.vertex_in(0, "VEC2", "corner")
        info.vertex_out(iface)
        info.fragment_out(0, "VEC4", "fragColor")
        info.vertex_source(_VERT)
        info.fragment_source(_FRAG)
        _state["shader"] = gpu.shader.create_from_info(info)
    return _state["shader"]


def quad_batch() -> gpu.types.GPUBatch:
    if _state["quad"] is None:
        fmt = gpu.types.GPUVertFormat()
        fmt.attr_add(id="corner", comp_type="F32", len=2, fetch_mode="FLOAT")
        vbo = gpu.types.GPUVertBuf(fmt, 4)
        vbo.attr_fill("corner", np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], np.float32))
        _state["quad"] = gpu.types.GPUBatch(type="TRI_STRIP", buf=vbo)
    return _state["quad"]


def upload(rows: np.ndarray) -> gpu.types.GPUTexture:
    """Packed rows [N, 16] float32 -> an RGBA32F texture, ROW_SPLATS splats per texture row.
    Rows packed with ``pad_to=ROW_SPLATS`` fill whole texture rows and go up without a copy."""
    n = len(rows)
    height = max(1, -(-n // ROW_SPLATS))
    if n != height * ROW_SPLATS:
        padded = np.zeros((height * ROW_SPLATS, INSTANCE_FLOATS), np.float32)
        padded[:n] = rows
        rows = padded
    rows = np.ascontiguousarray(rows, np.float32)
    buf = gpu.types.Buffer("FLOAT", rows.size, rows)  # a view of the array's memory: no copy, no lists
    return gpu.types.GPUTexture((ROW_SPLATS * 4, height), format="RGBA32F", data=buf)


# --------------------------------------------------------------------------- per-object caches
@dataclass
class _Drawn:
    cache: ViewCache
    texture: gpu.types.GPUTexture | None = None
    count: int = 0
    pending: Future | None = None  # a re-sort running on the worker thread


def _worker() -> ThreadPoolExecutor:
    if _state.get("executor") is None:
        _state["executor"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portraitsplat-sort")
    return _state["executor"]


def _next_rows(entry: _Drawn, obj_to_view: np.ndarray, n: int, wait: bool) -> np.ndarray | None:
    """New rows to upload for this view, or None to keep the texture. With ``wait`` the
    sort runs here; without, a view that needs a re-sort hands it to the worker thread
    (numpy releases the GIL in the long loops) and the old order is drawn meanwhile."""
    rows = None
    if entry.pending is not None and (wait or entry.pending.done()):
        try:
            rows = entry.pending.result()
        finally:
            entry.pending = None
    if wait:
        newer = entry.cache.update(obj_to_view)
        return rows if newer is None else newer
    if entry.pending is None and view_changed(entry.cache.view, obj_to_view):
        if entry.texture is None and rows is None and n <= SYNC_SPLATS:
            return entry.cache.update(obj_to_view)  # small: the first view without a blank frame
        entry.pending = _worker().submit(entry.cache.update, obj_to_view.copy())
        _watch_pending()
    return rows


def _watch_pending() -> None:
    """Redraw the 3D views when the worker's sorts are done (a main-thread timer)."""
    if bpy.app.timers.is_registered(_poll_pending):
        return
    bpy.app.timers.register(_poll_pending, first_interval=0.02)


def _poll_pending() -> float | None:
    pending = [e.pending for e in _views.values() if e.pending is not None]
    if pending and not any(f.done() for f in pending):
        return 0.02
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()
    return 0.02 if any(not f.done() for f in pending) else None


_data: dict[int, ViewCache] = {}  # mesh session_uid -> the view-independent arrays (a template ViewCache)
_views: dict[tuple, _Drawn] = {}  # (instance key, view key) -> sort state and texture


def mesh_arrays(mesh: bpy.types.Mesh) -> ViewCache:
    """The view-independent arrays of a splat mesh, read once per mesh change."""
    key = mesh.session_uid
    cached = _data.get(key)
    if cached is None:
        s = splats.read_splats(mesh)
        cached = ViewCache(
            means=np.ascontiguousarray(s.means, np.float32),
            opacity=sigmoid(s.opacity_logits),
            sh0=s.sh0,
            shN=s.shN,
            cov=covariances(s.quats, s.log_scales),
        )
        _data[key] = cached
    return cached


def forget_mesh(uid: int) -> None:
    _data.pop(uid, None)
    for k in [k for k in _views if k[0][0] == uid]:
        del _views[k]


def clear_caches() -> None:
    _data.clear()
    _views.clear()


def is_enabled(obj) -> bool:
    return bool(getattr(obj, PROP, False)) and splats.is_splat_object(obj)


def draw_instances(
    instances: list[tuple[bpy.types.Object, np.ndarray, tuple]],
    view_matrix: np.ndarray,
    proj_matrix: np.ndarray,
    width: int,
    height: int,
    view_key,
    *,
    srgb_target: bool = False,
    wait: bool = True,
) -> int:
    """Draw splat objects into the bound framebuffer. ``instances``: (original object,
    4x4 world matrix, instance key); ``view_matrix``/``proj_matrix``: world -> view ->
    clip (Blender's, camera looking down -Z). ``srgb_target``: the framebuffer is sRGB
    encoded (SRGB8_A8, as the 3D viewport's overlay buffer that ``POST_VIEW`` handlers draw
    into): colours are linearised first, and blending happens in linear light there.
    ``wait=False`` (the viewport): a view that needs a re-sort never blocks the draw; the
    sort runs on a worker thread and the previous order is drawn until it is done (an object
    seen for the first time is drawn once its first sort is done, at once when small).
    Returns the number of splats drawn."""
    sh = shader()
    batch = quad_batch()
    view = np.asarray(view_matrix, np.float64)
    proj = np.asarray(proj_matrix, np.float64)
    gpu.state.blend_set("ALPHA_PREMULT")
    gpu.state.depth_test_set("LESS_EQUAL")
    gpu.state.depth_mask_set(False)
    drawn = 0
    try:
        for obj, world, inst_key in instances:
            mesh = obj.data
            base = mesh_arrays(mesh)
            if len(base.means) == 0:
                continue
            key = ((mesh.session_uid, inst_key), view_key)
            entry = _views.get(key)
            if entry is None or entry.cache.means is not base.means:
                cache = ViewCache(base.means, base.opacity, base.sh0, base.shN, base.cov, pad_to=ROW_SPLATS)
                entry = _views[key] = _Drawn(cache)
            obj_to_view = view @ np.asarray(world, np.float64)
            rows = _next_rows(entry, obj_to_view, len(base.means), wait)
            if rows is not None:
                entry.texture, entry.count = upload(rows), len(base.means)
            if entry.texture is None:
                continue  # the first sort is still running
            mvp = proj @ obj_to_view
            sh.bind()
            sh.uniform_float("mvp", Matrix(mvp.tolist()))
            sh.uniform_float("viewport", (float(width), float(height), float(ROW_SPLATS), float(srgb_target)))
            sh.uniform_sampler("splats", entry.texture)
            batch.draw_instanced(sh, instance_start=0, instance_count=entry.count)
            drawn += entry.count
    finally:
        gpu.state.depth_mask_set(True)
        gpu.state.depth_test_set("NONE")
        gpu.state.blend_set("NONE")
    return drawn


def enabled_instances(depsgraph) -> list[tuple[bpy.types.Object, np.ndarray, tuple]]:
    """(original object, world matrix, key) of every splat-view object the depsgraph shows,
    duplicates and collection instances included."""
    out = []
    own_mesh: dict[int, int] = {}  # original object -> session_uid of its evaluated mesh
    for inst in depsgraph.object_instances:
        ob = inst.instance_object if inst.is_instance else inst.object
        if ob is None or ob.type != "MESH":
            continue
        orig = ob.original
        if not is_enabled(orig):
            continue
        if inst.is_instance:
            # an instance of the object itself (collection instance, ...), not one of the
            # proxy's Geometry Nodes instances (when its modifier is shown too): those carry
            # other geometry than the object's own evaluated mesh
            uid = own_mesh.setdefault(orig.session_uid, orig.evaluated_get(depsgraph).data.session_uid)
            if inst.object.data is None or inst.object.data.session_uid != uid:
                continue
        key = (orig.session_uid, tuple(inst.persistent_id)) if inst.is_instance else (orig.session_uid,)
        out.append((orig, np.array(inst.matrix_world, np.float64), key))
    return out


# --------------------------------------------------------------------------- viewport
def _draw_handler() -> None:
    context = bpy.context
    rv3d = context.region_data
    region = context.region
    if rv3d is None or region is None:
        return
    if not any(getattr(o, PROP, False) for o in bpy.data.objects):  # also those only instanced
        return  # nothing to draw: skip the depsgraph walk
    instances = enabled_instances(context.evaluated_depsgraph_get())
    if not instances:
        return
    draw_instances(
        instances,
        np.array(rv3d.view_matrix),
        np.array(rv3d.window_matrix),
        region.width,
        region.height,
        rv3d.as_pointer(),
        srgb_target=True,
        wait=False,
    )


@bpy.app.handlers.persistent
def _on_depsgraph_update(scene, depsgraph) -> None:
    for update in depsgraph.updates:
        data = update.id.original if hasattr(update.id, "original") else update.id
        if isinstance(data, bpy.types.Mesh):
            forget_mesh(data.session_uid)
        elif isinstance(data, bpy.types.Object) and data.type == "MESH" and update.is_updated_geometry:
            forget_mesh(data.data.session_uid)


@bpy.app.handlers.persistent
def _on_load_post(*_args) -> None:
    clear_caches()


def _toggle_proxy(obj, context) -> None:
    """Hide the proxy's Geometry Nodes in the viewport while the splat view draws the object
    (it would occlude the splats); renders keep the proxy."""
    mod = obj.modifiers.get(splats.MODIFIER_NAME)
    if mod is not None:
        mod.show_viewport = not getattr(obj, PROP)
    for area in getattr(context.screen, "areas", ()) if context and context.screen else ():
        if area.type == "VIEW_3D":
            area.tag_redraw()


# --------------------------------------------------------------------------- offscreen
def camera_matrices(scene, camera, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """World -> view and view -> clip matrices of a camera object at a resolution."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    cam = camera.evaluated_get(depsgraph)
    view = np.array(cam.matrix_world.inverted(), np.float64)
    proj = np.array(
        cam.calc_matrix_camera(
            depsgraph, x=width, y=height, scale_x=scene.render.pixel_aspect_x, scale_y=scene.render.pixel_aspect_y
        ),
        np.float64,
    )
    return view, proj


def render_offscreen(
    scene,
    camera,
    width: int,
    height: int,
    *,
    objects=None,
    background: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
) -> np.ndarray:
    """Draw the splat view from ``camera`` into an offscreen buffer: RGBA [H, W, 4] float32,
    top row first, colour premultiplied by alpha over ``background`` (premultiplied too).
    ``objects``: these splat objects (original, own transform), else every object with the
    splat view on that the scene's depsgraph shows."""
    ensure_gpu()
    view, proj = camera_matrices(scene, camera, width, height)
    if objects is None:
        instances = enabled_instances(bpy.context.evaluated_depsgraph_get())
    else:
        instances = [(o, np.array(o.matrix_world, np.float64), (o.session_uid,)) for o in objects]
    offscreen = gpu.types.GPUOffScreen(width, height, format="RGBA32F")
    try:
        with offscreen.bind():
            fb = gpu.state.active_framebuffer_get()
            fb.clear(color=background, depth=1.0)
            gpu.state.viewport_set(0, 0, width, height)
            draw_instances(instances, view, proj, width, height, ("offscreen", camera.name))
            pixels = buffer_to_numpy(fb.read_color(0, 0, width, height, 4, 0, "FLOAT"))
    finally:
        offscreen.free()
    return pixels.reshape(height, width, 4)[::-1].copy()


def buffer_to_numpy(buf: gpu.types.Buffer) -> np.ndarray:
    """A copy of a ``gpu.types.Buffer`` as a flat numpy array, through the buffer protocol
    (no lists). Flattened first: numpy reads a multi-dimensional Buffer with wrong strides."""
    dims = buf.dimensions
    buf.dimensions = int(np.prod(dims))
    return np.array(buf, np.float32)


def save_png(rgba: np.ndarray, path: str) -> str:
    """Write RGBA [H, W, 4] (top row first, premultiplied) as a straight-alpha 8-bit PNG."""
    h, w = rgba.shape[:2]
    straight = rgba.copy()
    a = straight[..., 3:4]
    straight[..., :3] = np.where(a > 1e-6, straight[..., :3] / np.maximum(a, 1e-6), 0.0)
    img = bpy.data.images.new("PortraitSplat OpenGL", w, h, alpha=True, float_buffer=False)
    try:
        img.colorspace_settings.name = "sRGB"  # splat colours are display colours
        img.pixels.foreach_set(np.clip(straight[::-1], 0, 1).ravel())
        img.filepath_raw = path
        img.file_format = "PNG"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        img.save()
    finally:
        bpy.data.images.remove(img)
    return path


# --------------------------------------------------------------------------- operator
class PORTRAITSPLAT_OT_splat_view(bpy.types.Operator):
    """Draw the active splat object as real Gaussians in the viewport (as the backend renders
    it) instead of the Geometry Nodes proxy; renders still use the proxy"""

    bl_idname = "portraitsplat.splat_view"
    bl_label = "Splat View"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return splats.is_splat_object(context.active_object)

    def execute(self, context):
        obj = context.active_object
        setattr(obj, PROP, not getattr(obj, PROP))
        return {"FINISHED"}


classes = (PORTRAITSPLAT_OT_splat_view,)


def register() -> None:
    setattr(
        bpy.types.Object,
        PROP,
        BoolProperty(
            name="Splat View",
            description="Draw this splat object as real Gaussians in the viewport (sorted, SH per view), "
            "as the backend renders it; Cycles and EEVEE still render the proxy",
            default=False,
            update=_toggle_proxy,
        ),
    )
    if not bpy.app.background:
        _state["handler"] = bpy.types.SpaceView3D.draw_handler_add(_draw_handler, (), "WINDOW", "POST_VIEW")
    bpy.app.handlers.depsgraph_update_post.append(_on_depsgraph_update)
    bpy.app.handlers.load_post.append(_on_load_post)


def unregister() -> None:
    if _state["handler"] is not None:
        bpy.types.SpaceView3D.draw_handler_remove(_state["handler"], "WINDOW")
        _state["handler"] = None
    for handlers, fn in (
        (bpy.app.handlers.depsgraph_update_post, _on_depsgraph_update),
        (bpy.app.handlers.load_post, _on_load_post),
    ):
        if fn in handlers:
            handlers.remove(fn)
    if bpy.app.timers.is_registered(_poll_pending):
        bpy.app.timers.unregister(_poll_pending)
    if _state["executor"] is not None:
        _state["executor"].shutdown(wait=True)
        _state["executor"] = None
    clear_caches()
    _state["shader"] = _state["quad"] = None
    if hasattr(bpy.types.Object, PROP):
        delattr(bpy.types.Object, PROP)
