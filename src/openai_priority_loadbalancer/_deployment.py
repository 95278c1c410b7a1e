"""Which deployment a request is for: from its path, or on the v1 API from its body's ``model``.

Azure meters, and may lack, each deployment of a resource on its own (DESIGN 10): the balancer needs
the deployment's name to keep what it learns of one apart from the others. It reads the name as the
caller wrote it, cheaply (a prefix test on the path; on the v1 API a byte scan of the body, never a
JSON parse); a backend's ``deployments=`` mapping then gives the name that backend knows it by.

Pure functions: no I/O, no state.
"""

from __future__ import annotations

from typing import Final

__all__ = ["deployment_of"]

_DEPLOYMENTS: Final = b"/openai/deployments/"
_V1_PREFIXES: Final = (b"/openai/v1/", b"/v1/")
_MODEL_KEY: Final = b'"model"'
_JSON_SPACE: Final = b" \t\r\n"
_MAX_NAME: Final = 256


def deployment_of(raw_path: bytes, body: bytes) -> str | None:
    """The deployment named by ``/openai/deployments/{name}/...``, else, for a v1 path, the body's
    top-level-looking ``"model": "name"``; None when neither names one (or the name is escaped)."""
    if raw_path.startswith(_DEPLOYMENTS):
        start = len(_DEPLOYMENTS)
        end = raw_path.find(b"/", start)
        query = raw_path.find(b"?", start)
        if end == -1 or 0 <= query < end:
            end = len(raw_path) if query == -1 else query
        return raw_path[start:end].decode("utf-8", "replace") if 0 < end - start <= _MAX_NAME else None
    if not raw_path.startswith(_V1_PREFIXES) or not body:
        return None
    return _model(body)


def _model(body: bytes) -> str | None:
    """The first ``"model": "<name>"`` of a JSON body whose value is a plain string (no escapes)."""
    n = len(body)
    start = body.find(_MODEL_KEY)
    while start != -1:
        i = start + len(_MODEL_KEY)
        while i < n and body[i] in _JSON_SPACE:
            i += 1
        if i < n and body[i] == 0x3A:  # ":"
            i += 1
            while i < n and body[i] in _JSON_SPACE:
                i += 1
            if i < n and body[i] == 0x22:  # '"'
                end = body.find(b'"', i + 1, i + 2 + _MAX_NAME)
                name = body[i + 1 : end] if end != -1 else b""
                if name and b"\\" not in name:
                    return name.decode("utf-8", "replace")
                return None
        start = body.find(_MODEL_KEY, start + len(_MODEL_KEY))
    return None
