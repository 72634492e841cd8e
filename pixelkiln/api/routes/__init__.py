"""One router per resource; :func:`pixelkiln.api.app.create_app` mounts them under /api/v1."""
