"""``finesam serve``: a local browser tool for interactive segmentation (the ``serve`` extra:
FastAPI and uvicorn). :func:`finesam.server.app.create_app` builds the app; the page is
``static/`` (plain JavaScript and a canvas)."""
