"""``cxr demo`` (every flow command) keeps its runs and reports on the Prefect server that answers
on ``prefect server start``'s default address when PREFECT_API_URL is unset, instead of a
temporary server that is gone when the command ends. Checked in a fresh process (Prefect not yet
imported, as in ``cxr``), with the default address pointed at the session's server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT, free_port

PROBE = """
import json, os, sys
from flows import cli_support
cli_support.DEFAULT_LOCAL_API = sys.argv[1]
found = cli_support.use_running_prefect_server(probe_timeout=5)
from prefect.settings import PREFECT_API_URL
print(json.dumps({"found": found, "setting": PREFECT_API_URL.value(), "env": os.environ.get("PREFECT_API_URL")}))
"""


def _probe(default_api: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")} | {"PYTHONPATH": str(REPO_ROOT)} | extra
    result = subprocess.run(
        [sys.executable, "-c", PROBE, default_api], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_server_on_the_default_address_is_used_when_prefect_api_url_is_unset(prefect_server):
    from prefect.settings import PREFECT_API_URL

    running = PREFECT_API_URL.value()
    # Prefect's settings point at it; the process environment is left alone (issue 21)
    assert _probe(running) == {"found": running, "setting": running, "env": None}
    nothing = f"http://127.0.0.1:{free_port()}/api"
    assert _probe(nothing) == {"found": None, "setting": None, "env": None}  # a temporary server, as before
    chosen = f"http://127.0.0.1:{free_port()}/api"
    assert _probe(running, PREFECT_API_URL=chosen) == {
        "found": chosen,
        "setting": chosen,
        "env": chosen,
    }  # the user's choice wins
