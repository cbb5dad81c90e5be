"""Running the service under uvicorn: one process, or ``workers`` processes each with its own model.

uvicorn turns SIGTERM/SIGINT into a graceful shutdown: it stops accepting, lets in-flight requests
finish (up to ``GRACEFUL_SECONDS``), then runs the app's shutdown, which drains the batch queue.
"""

from __future__ import annotations

import logging
import os

from simtool.integrations import require
from simtool.serve.config import ServeConfig

log = logging.getLogger(__name__)

GRACEFUL_SECONDS = 30


def serve(config: ServeConfig) -> None:
    """Load the model and serve until SIGTERM or SIGINT (blocks)."""
    config.check()
    uvicorn = require("uvicorn", "serve")
    from simtool.serve.app import CONFIG_ENV, create_app, load_embedder

    common = {
        "host": config.host,
        "port": config.port,
        "timeout_graceful_shutdown": GRACEFUL_SECONDS,
        "log_level": "warning",
        "access_log": False,
    }
    if config.workers > 1:
        os.environ[CONFIG_ENV] = config.to_json()
        uvicorn.run("simtool.serve.app:app_from_env", factory=True, workers=config.workers, **common)
        return
    app = create_app(load_embedder(config), config)
    uvicorn.Server(uvicorn.Config(app, **common)).run()
