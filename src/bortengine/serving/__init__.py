"""Serving a model over HTTP (`bortengine serve`): an OpenAI-compatible /v1/embeddings, /v1/classify,
/v1/tokenize, /v1/models, /health and Prometheus /metrics on Starlette and uvicorn, over one Engine whose dynamic
batching combines the requests' texts into shared forwards. docs/serving.md says how to run it.

Torch-free; it needs the `serve` extra (starlette, uvicorn, prometheus-client). ServeOptions imports none of them,
so the command line can describe the server without the extra; create_app and serve import them when first used.

    from bortengine.serving import ServeOptions, serve
    serve("path/to/model", ServeOptions(port=8080, max_queue=256))
"""
from __future__ import annotations

import importlib
from typing import Any

from bortengine.serving.errors import APIError
from bortengine.serving.options import API_KEY_VARIABLE, LOG_LEVELS, ServeOptions, api_key_from_environment

__all__ = ["ServeOptions", "API_KEY_VARIABLE", "LOG_LEVELS", "api_key_from_environment", "serve", "create_app",
           "listening_socket", "ModelService", "ServerMetrics", "APIError"]

# The names that need the `serve` extra, and their modules: imported on first use (PEP 562).
_NEEDS_THE_EXTRA = {"serve": "server", "listening_socket": "server", "create_app": "app", "ModelService": "app",
                    "ServerMetrics": "metrics"}


def __getattr__(name: str) -> Any:
    if name not in _NEEDS_THE_EXTRA:
        raise AttributeError(f"module 'bortengine.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bortengine.serving.{_NEEDS_THE_EXTRA[name]}"), name)
