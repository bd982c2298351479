"""Ask a Ray dashboard whether it enforces token authentication (shared by the Ray tests, the
two-node drill and the cluster-launcher drill, which run it inside their own namespaces)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

#: Served to anyone: says which mode the cluster runs in.
MODE_PATH = "/api/authentication_mode"
#: Needs the token when the mode is "token".
GUARDED_PATH = "/api/version"


def _status(url: str, token: str | None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def dashboard_auth(address: str, token_file: Path) -> dict[str, object]:
    """``{"mode": ..., "without_token": status, "with_token": status}`` of the dashboard at
    ``address`` (``host:port``): a token cluster answers 401 without the token, 200 with it."""
    with urllib.request.urlopen(f"http://{address}{MODE_PATH}", timeout=10) as response:
        mode = json.loads(response.read()).get("authentication_mode")
    token = token_file.read_text().strip()
    return {
        "mode": mode,
        "without_token": _status(f"http://{address}{GUARDED_PATH}", None),
        "with_token": _status(f"http://{address}{GUARDED_PATH}", token),
    }
