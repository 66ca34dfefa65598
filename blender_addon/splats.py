"""Gaussian splats as mesh-proxied Blender objects.

One splat cloud is one mesh whose vertices are the Gaussian centres (head frame = Blender
frame: metres, +Z up, face toward -Y, origin at the head centre). Every Gaussian field is a
point-domain attribute, written with ``foreach_set`` straight from numpy:

    name            type         holds
    f_dc            FLOAT_VECTOR raw SH DC (``SplatArrays.sh0``), lossless
    f_rest_<k>      FLOAT_VECTOR higher SH band coefficient k (RGB), only when present
    opacity_logit   FLOAT        raw pre-sigmoid opacity, lossless
    log_scale       FLOAT_VECTOR raw log standard deviations (metres), lossless
    rotation        QUATERNION   unit wxyz rotation (normalised on the way in)
    rotation_norm   FLOAT        the raw quaternion's length (export multiplies it back)
    color           FLOAT_COLOR  display colour, scene-linear: srgb_to_linear(0.5 + C0 * f_dc)
    opacity         FLOAT        display opacity, sigmoid(opacity_logit)
    scale           FLOAT_VECTOR display standard deviations, exp(log_scale)

The raw fields make PLY export exact; the display fields feed Geometry Nodes and the
materials without per-frame math. A Geometry Nodes modifier (built here, in Python) turns
each vertex into an ellipsoid instance, rotated by ``rotation`` and scaled by ``scale``
times the "Size" input (in standard deviations), or, in point display mode, into a point of
a point cloud (fast for large clouds; Cycles renders points natively). The materials emit
the splat colour and fade from the centre to the rim like a Gaussian footprint, scaled by
opacity, so the result reads the same in EEVEE and Cycles with no lights.

Live previews reuse the same object and the same mesh datablock: ``write_splats`` clears
and re-adds geometry when the count changes. Linked duplicates (Alt+D) share the mesh, so
they follow every update too.
"""

from __future__ import annotations

import bpy
import numpy as np

from .core.frames import head_to_file
from .core.splat_arrays import SplatArrays, sh0_to_rgb, sigmoid

COLLECTION_NAME = "PortraitSplat"
NODE_GROUP_NAME = "PortraitSplat Display"
MATERIAL_ELLIPSOID = "PortraitSplat Ellipsoid"
MATERIAL_POINT = "PortraitSplat Point"
MODIFIER_NAME = "PortraitSplat"
# Bumped whenever the node group or materials change shape, so old files get rebuilt ones.
DISPLAY_VERSION = 1
# Clouds above this many splats start in point display mode.
POINT_MODE_THRESHOLD = 200_000
DEFAULT_SIZE_SIGMAS = 2.0

OBJ_TAG = "portraitsplat"  # custom property on objects we own: job id or source file
STATE_TAG = "portraitsplat_state"  # "preview" | "final" | "imported"
AXES_TAG = "portraitsplat_axes"  # the mesh data's axes: "head" (Blender's) or "ply" (RDF, as imported)

_RAW_ATTRS = ("f_dc", "opacity_logit", "log_scale", "rotation")
_DISPLAY_ATTRS = ("color", "opacity", "scale")
_FOREACH_KEY = {"FLOAT": "value", "QUATERNION": "value", "FLOAT_VECTOR": "vector", "FLOAT_COLOR": "color"}


# --------------------------------------------------------------------------- arrays <-> mesh
def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, np.float32), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _set_attr(mesh: bpy.types.Mesh, name: str, data_type: str, values: np.ndarray) -> None:
    attr = mesh.attributes.get(name)
    if attr is not None and (attr.data_type != data_type or attr.domain != "POINT"):
        mesh.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = mesh.attributes.new(name, data_type, "POINT")
    attr.data.foreach_set(_FOREACH_KEY[data_type], np.ascontiguousarray(values, np.float32).ravel())


def _get_attr(mesh: bpy.types.Mesh, name: str, width: int) -> np.ndarray:
    attr = mesh.attributes.get(name)
    if attr is None:
        raise KeyError(f"mesh '{mesh.name}' has no '{name}' attribute; it is not a PortraitSplat cloud")
    n = len(mesh.vertices)
    out = np.empty(n * width, np.float32)
    attr.data.foreach_get(_FOREACH_KEY[attr.data_type], out)
    return out.reshape(n, width) if width > 1 else out


def _contiguous(views: list[np.ndarray], rows: int = 4096) -> list[np.ndarray]:
    """Contiguous float32 copies of row-aligned arrays ([N, ...] each).

    Views into one wide table (a PLY file's rows, ``read_ply(copy=False)``) are copied block
    by block, so the table streams through the cache once rather than once per field."""
    if all(v.dtype == np.float32 and v.flags.c_contiguous for v in views):
        return views
    outs = [np.empty(v.shape, np.float32) for v in views]
    for start in range(0, len(views[0]), rows):
        block = slice(start, start + rows)
        for src, dst in zip(views, outs):
            dst[block] = src[block]
    return outs


def write_splats(mesh: bpy.types.Mesh, splats: SplatArrays) -> None:
    """Write ``splats`` into ``mesh`` in place (same datablock, whatever the count).

    Each field is copied once into Blender (``foreach_set`` of a contiguous float32 array).
    """
    n = len(splats)
    if len(mesh.vertices) != n or len(mesh.edges) or len(mesh.polygons):
        mesh.clear_geometry()  # drops custom attributes too; they are re-created below
        mesh.vertices.add(n)
    k = 0 if splats.shN is None else splats.shN.shape[1]
    fields = [splats.means, splats.quats, splats.log_scales, splats.opacity_logits, splats.sh0]
    means, quats, log_scales, opacity_logits, sh0, *rest = _contiguous(
        fields + [splats.shN[:, i, :] for i in range(k)] if splats.shN is not None else fields
    )
    mesh.attributes["position"].data.foreach_set("vector", means.ravel())

    norm = np.sqrt(np.einsum("ij,ij->i", quats, quats))  # [N]
    ok = norm > 1e-12
    unit = np.where(ok[:, None], quats / np.where(ok, norm, 1.0)[:, None], np.array([1, 0, 0, 0], np.float32))
    _set_attr(mesh, "f_dc", "FLOAT_VECTOR", sh0)
    _set_attr(mesh, "opacity_logit", "FLOAT", opacity_logits)
    _set_attr(mesh, "log_scale", "FLOAT_VECTOR", log_scales)
    _set_attr(mesh, "rotation", "QUATERNION", unit)
    # the raw length, so export gives back the file's (unnormalised) quaternions
    _set_attr(mesh, "rotation_norm", "FLOAT", np.where(ok, norm, 0.0))
    rgba = np.ones((n, 4), np.float32)
    rgba[:, :3] = srgb_to_linear(sh0_to_rgb(sh0))
    _set_attr(mesh, "color", "FLOAT_COLOR", rgba)
    _set_attr(mesh, "opacity", "FLOAT", sigmoid(opacity_logits))
    _set_attr(mesh, "scale", "FLOAT_VECTOR", np.exp(log_scales))

    for i, band in enumerate(rest):
        _set_attr(mesh, f"f_rest_{i}", "FLOAT_VECTOR", band)
    stale = [a.name for a in mesh.attributes if a.name.startswith("f_rest_") and int(a.name[7:]) >= k]
    for name in stale:
        mesh.attributes.remove(mesh.attributes[name])
    if "color" in mesh.color_attributes:
        mesh.color_attributes.active_color = mesh.color_attributes["color"]
    mesh.update()


def read_splats(mesh: bpy.types.Mesh) -> SplatArrays:
    """Read the raw Gaussian fields back from a mesh written by :func:`write_splats`."""
    n = len(mesh.vertices)
    means = np.empty(n * 3, np.float32)
    mesh.attributes["position"].data.foreach_get("vector", means)
    k = sum(1 for a in mesh.attributes if a.name.startswith("f_rest_"))
    shN = np.stack([_get_attr(mesh, f"f_rest_{i}", 3) for i in range(k)], axis=1) if k else None
    quats = _get_attr(mesh, "rotation", 4)
    if "rotation_norm" in mesh.attributes:  # absent in files saved before it was kept
        norm = _get_attr(mesh, "rotation_norm", 1)
        quats = np.where((norm > 0)[:, None], quats * norm[:, None], 0.0).astype(np.float32)
    return SplatArrays(
        means=means.reshape(n, 3),
        quats=quats,
        log_scales=_get_attr(mesh, "log_scale", 3),
        opacity_logits=_get_attr(mesh, "opacity_logit", 1),
        sh0=_get_attr(mesh, "f_dc", 3),
        shN=shN,
    )


def is_splat_object(obj) -> bool:
    return (
        obj is not None and obj.type == "MESH" and "f_dc" in obj.data.attributes and "rotation" in obj.data.attributes
    )


# --------------------------------------------------------------------------- objects
def ensure_collection(scene: bpy.types.Scene) -> bpy.types.Collection:
    coll = bpy.data.collections.get(COLLECTION_NAME)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION_NAME)
    if coll.name not in scene.collection.children:
        scene.collection.children.link(coll)
    return coll


def create_splat_object(
    scene: bpy.types.Scene, name: str, splats: SplatArrays, *, tag: str = "", state: str = "imported"
) -> bpy.types.Object:
    """A new object in the PortraitSplat collection, origin at the head centre (world origin)."""
    mesh = bpy.data.meshes.new(name)
    write_splats(mesh, splats)
    obj = bpy.data.objects.new(name, mesh)
    obj[OBJ_TAG] = tag
    obj[STATE_TAG] = state
    # Splats are radiance, not surfaces: they neither cast nor catch shadows.
    obj.visible_shadow = False
    ensure_collection(scene).objects.link(obj)
    add_display_modifier(obj, points=len(splats) > POINT_MODE_THRESHOLD)
    return obj


def update_splat_object(obj: bpy.types.Object, splats: SplatArrays, *, state: str | None = None) -> None:
    """Replace the cloud shown by ``obj`` in place: same object, same mesh datablock."""
    write_splats(obj.data, splats)
    if state is not None:
        obj[STATE_TAG] = state
    obj.update_tag()


def set_file_axes(obj: bpy.types.Object, frame: str) -> None:
    """Show mesh data kept in a file's axes upright: a PLY-frame (RDF) cloud gets the quarter
    turn about X that takes it to Blender's axes as its rotation; no splat is touched."""
    obj[AXES_TAG] = frame
    obj.rotation_mode = "XYZ"
    obj.rotation_euler = (-np.pi / 2, 0.0, 0.0) if frame == "ply" else (0.0, 0.0, 0.0)


def file_axes_matrix(obj: bpy.types.Object) -> np.ndarray:
    """4x4 from the mesh's own axes to Blender's (identity unless imported in PLY axes)."""
    return np.asarray(head_to_file(str(obj.get(AXES_TAG, "head"))).T)


def find_object(tag: str):
    for obj in bpy.data.objects:
        if obj.get(OBJ_TAG) == tag and obj.type == "MESH":
            return obj
    return None


# --------------------------------------------------------------------------- display
def add_display_modifier(obj: bpy.types.Object, *, points: bool = False, size: float = DEFAULT_SIZE_SIGMAS):
    mod = obj.modifiers.get(MODIFIER_NAME)
    if mod is None:
        mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = ensure_node_group()
    set_display(obj, points=points, size=size)
    return mod


def _input_id(group, name: str) -> str:
    for item in group.interface.items_tree:
        if getattr(item, "in_out", None) == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError(name)


def modifier_input(mod, name: str):
    """(owner, property name) of a Geometry Nodes modifier's input, for ``getattr``/``setattr``
    and ``layout.prop``: Blender 5.2 has typed inputs (``mod.properties.inputs.<id>.value``),
    older ones ID properties (``mod["<id>"]``)."""
    identifier = _input_id(mod.node_group, name)
    inputs = getattr(getattr(mod, "properties", None), "inputs", None)
    if inputs is not None and hasattr(inputs, identifier):
        return getattr(inputs, identifier), "value"
    return mod, f'["{identifier}"]'


def _get_input(mod, name: str):
    owner, prop = modifier_input(mod, name)
    return owner.path_resolve(prop)


def _set_input(mod, name: str, value) -> None:
    owner, prop = modifier_input(mod, name)
    if prop.startswith('["'):
        owner[prop[2:-2]] = value
    else:
        setattr(owner, prop, value)


def set_display(obj: bpy.types.Object, *, points: bool | None = None, size: float | None = None) -> None:
    """Switch between ellipsoids and the fast point display, or change the splat size."""
    mod = obj.modifiers.get(MODIFIER_NAME)
    if mod is None or mod.node_group is None:
        return
    if points is not None:
        _set_input(mod, "Point Display", bool(points))
    if size is not None:
        _set_input(mod, "Size", float(size))
    obj.update_tag()


def get_display(obj: bpy.types.Object) -> tuple[bool, float]:
    mod = obj.modifiers.get(MODIFIER_NAME)
    if mod is None or mod.node_group is None:
        return False, DEFAULT_SIZE_SIGMAS
    return bool(_get_input(mod, "Point Display")), float(_get_input(mod, "Size"))


def _link(tree, out_socket, in_socket):
    tree.links.new(out_socket, in_socket)


def _math(tree, op: str, a=None, b=None, *, vector=False):
    node = tree.nodes.new("ShaderNodeVectorMath" if vector else "ShaderNodeMath")
    node.operation = op
    for i, v in enumerate((a, b)):
        if v is None:
            continue
        if isinstance(v, (int, float)):
            node.inputs[i].default_value = v
        else:
            _link(tree, v, node.inputs[i])
    return node.outputs[1 if vector and op in ("DOT_PRODUCT", "LENGTH") else 0]


def ensure_node_group():
    """The shared Geometry Nodes group; rebuilt if an older add-on version made it."""
    group = bpy.data.node_groups.get(NODE_GROUP_NAME)
    if group is not None and group.get("portraitsplat_version") == DISPLAY_VERSION:
        return group
    if group is None:
        group = bpy.data.node_groups.new(NODE_GROUP_NAME, "GeometryNodeTree")
    else:
        group.nodes.clear()
        group.interface.clear()
    group["portraitsplat_version"] = DISPLAY_VERSION
    if hasattr(group, "is_modifier"):
        group.is_modifier = True
    iface = group.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    pts = iface.new_socket("Point Display", in_out="INPUT", socket_type="NodeSocketBool")
    pts.description = "Show each splat as a point: much faster for large clouds"
    size = iface.new_socket("Size", in_out="INPUT", socket_type="NodeSocketFloat")
    size.default_value, size.min_value, size.max_value = DEFAULT_SIZE_SIGMAS, 0.1, 5.0
    size.description = "Element size in standard deviations of each Gaussian"
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    n = group.nodes
    g_in = n.new("NodeGroupInput")
    g_out = n.new("NodeGroupOutput")

    def named(name, data_type):
        node = n.new("GeometryNodeInputNamedAttribute")
        node.data_type = data_type
        node.inputs["Name"].default_value = name
        return node.outputs["Attribute"]

    # The material needs the size (in sigmas) to shape the footprint: store it per point.
    store = n.new("GeometryNodeStoreNamedAttribute")
    store.data_type = "FLOAT"
    store.domain = "POINT"
    store.inputs["Name"].default_value = "splat_size"
    _link(group, g_in.outputs[0], store.inputs["Geometry"])
    _link(group, g_in.outputs["Size"], store.inputs["Value"])

    # Ellipsoids: an ico-sphere per point, rotated and scaled per splat.
    ico = n.new("GeometryNodeMeshIcoSphere")
    ico.inputs["Radius"].default_value = 1.0
    ico.inputs["Subdivisions"].default_value = 2
    smooth = n.new("GeometryNodeSetShadeSmooth")
    _link(group, ico.outputs["Mesh"], smooth.inputs["Geometry"])
    scale = n.new("ShaderNodeVectorMath")
    scale.operation = "SCALE"
    _link(group, named("scale", "FLOAT_VECTOR"), scale.inputs[0])
    _link(group, g_in.outputs["Size"], scale.inputs["Scale"])
    inst = n.new("GeometryNodeInstanceOnPoints")
    _link(group, store.outputs[0], inst.inputs["Points"])
    _link(group, smooth.outputs[0], inst.inputs["Instance"])
    _link(group, named("rotation", "QUATERNION"), inst.inputs["Rotation"])
    _link(group, scale.outputs[0], inst.inputs["Scale"])
    mat_e = n.new("GeometryNodeSetMaterial")
    mat_e.inputs["Material"].default_value = ensure_material(MATERIAL_ELLIPSOID, "INSTANCER")
    _link(group, inst.outputs[0], mat_e.inputs["Geometry"])

    # Points: one point per splat, radius = size * RMS standard deviation.
    length = n.new("ShaderNodeVectorMath")
    length.operation = "LENGTH"
    _link(group, named("scale", "FLOAT_VECTOR"), length.inputs[0])
    radius = n.new("ShaderNodeMath")
    radius.operation = "MULTIPLY"
    _link(group, length.outputs["Value"], radius.inputs[0])
    radius.inputs[1].default_value = 1.0 / np.sqrt(3.0)
    radius2 = n.new("ShaderNodeMath")
    radius2.operation = "MULTIPLY"
    _link(group, radius.outputs[0], radius2.inputs[0])
    _link(group, g_in.outputs["Size"], radius2.inputs[1])
    to_points = n.new("GeometryNodeMeshToPoints")
    _link(group, store.outputs[0], to_points.inputs["Mesh"])
    _link(group, radius2.outputs[0], to_points.inputs["Radius"])
    # Cycles reads 4-float attributes on point clouds as zero: hand it a 3-float copy.
    rgb = n.new("GeometryNodeStoreNamedAttribute")
    rgb.data_type = "FLOAT_VECTOR"
    rgb.domain = "POINT"
    rgb.inputs["Name"].default_value = "splat_rgb"
    _link(group, to_points.outputs[0], rgb.inputs["Geometry"])
    _link(group, named("color", "FLOAT_COLOR"), rgb.inputs["Value"])
    mat_p = n.new("GeometryNodeSetMaterial")
    mat_p.inputs["Material"].default_value = ensure_material(MATERIAL_POINT, "GEOMETRY", color_name="splat_rgb")
    _link(group, rgb.outputs[0], mat_p.inputs["Geometry"])

    switch = n.new("GeometryNodeSwitch")
    switch.input_type = "GEOMETRY"
    _link(group, g_in.outputs["Point Display"], switch.inputs[0])
    _link(group, mat_e.outputs[0], switch.inputs[1])
    _link(group, mat_p.outputs[0], switch.inputs[2])
    _link(group, switch.outputs[0], g_out.inputs[0])
    return group


def ensure_material(name: str, attribute_type: str, color_name: str = "color"):
    """Emission of the splat colour, alpha = opacity * Gaussian footprint, back faces clear.

    The footprint uses the angle between the normal and the view ray: on a sphere of radius
    R = size * sigma, a pixel at projected distance r has r/R = sqrt(1 - (N.I)^2), so
    alpha = opacity * exp(-0.5 * size^2 * (1 - (N.I)^2)).
    """
    mat = bpy.data.materials.get(name)
    if mat is not None and mat.get("portraitsplat_version") == DISPLAY_VERSION:
        return mat
    if mat is None:
        mat = bpy.data.materials.new(name)
    mat["portraitsplat_version"] = DISPLAY_VERSION
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True
    if hasattr(mat, "surface_render_method"):
        mat.surface_render_method = "DITHERED"  # EEVEE (4.2+): order-independent transparency
    tree = mat.node_tree
    tree.nodes.clear()

    def attr(attr_name):
        node = tree.nodes.new("ShaderNodeAttribute")
        node.attribute_type = attribute_type
        node.attribute_name = attr_name
        return node

    color, opacity, size = attr(color_name), attr("opacity"), attr("splat_size")
    geo = tree.nodes.new("ShaderNodeNewGeometry")
    cos = _math(tree, "DOT_PRODUCT", geo.outputs["Normal"], geo.outputs["Incoming"], vector=True)
    sin2 = _math(tree, "SUBTRACT", 1.0, _math(tree, "MULTIPLY", cos, cos))
    k2 = _math(tree, "MULTIPLY", size.outputs["Fac"], size.outputs["Fac"])
    falloff = _math(tree, "EXPONENT", _math(tree, "MULTIPLY", _math(tree, "MULTIPLY", sin2, k2), -0.5))
    front = _math(tree, "SUBTRACT", 1.0, geo.outputs["Backfacing"])
    alpha = _math(tree, "MULTIPLY", _math(tree, "MULTIPLY", opacity.outputs["Fac"], falloff), front)

    emit = tree.nodes.new("ShaderNodeEmission")
    _link(tree, color.outputs["Vector" if color_name != "color" else "Color"], emit.inputs["Color"])
    emit.inputs["Strength"].default_value = 1.0
    clear = tree.nodes.new("ShaderNodeBsdfTransparent")
    mix = tree.nodes.new("ShaderNodeMixShader")
    _link(tree, alpha, mix.inputs["Fac"])
    _link(tree, clear.outputs[0], mix.inputs[1])
    _link(tree, emit.outputs[0], mix.inputs[2])
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    _link(tree, mix.outputs[0], out.inputs["Surface"])
    mat.diffuse_color = (0.8, 0.6, 0.5, 1.0)  # solid-mode viewport colour
    return mat
