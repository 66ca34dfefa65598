"""bpy-free, torch-free core shared by the Blender add-on and the backend.

Nothing in this package may import ``bpy`` or ``torch``: a test enforces it.
"""
