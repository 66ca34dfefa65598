"""Exports beyond the splat file formats: a coloured, watertight triangle mesh (:mod:`.mesh`)."""
