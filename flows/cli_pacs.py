"""``cxr pacs``: pull from and write back to the PACS of ``CXR_DICOMWEB_URL`` (issue 23).

The connection is checked (one QIDO-RS request) before Prefect starts: refused credentials or
a PACS that does not answer are one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from cxrmodel.errors import UserError
from flows.cli_support import (
    database_url,
    prepare_flow_command,
    settings,
    workspace,
)

pacs_app = typer.Typer(
    help="The PACS link over DICOMweb (CXR_DICOMWEB_URL): pull new radiographs, write findings back.", no_args_is_help=True
)
HomeOption = Annotated[Path | None, typer.Option("--home", help="State folder (default: $CXR_HOME or .cxr).")]


def _checked(home: Path | None) -> None:
    from cxrmodel.pacs.dicomweb import Pacs, PacsError
    from tasks.pacs import pacs_connection

    connection = pacs_connection(settings(home))
    if connection is None:
        raise UserError("no PACS configured: set CXR_DICOMWEB_URL (and CXR_DICOMWEB_USER/PASSWORD or CXR_DICOMWEB_SECRET)")
    pacs = Pacs(connection)
    try:
        pacs.check()
    except PacsError as exc:
        raise UserError(str(exc)) from None
    finally:
        pacs.close()
    database_url(home)  # the schema is there and current, or one line says what to run
    prepare_flow_command()


def _echo(result) -> None:
    typer.echo(json.dumps(dataclasses.asdict(result), indent=2, default=str))


@pacs_app.command("pull")
def pull(home: HomeOption = None) -> None:
    """Register the new CR/DX frontal radiographs of the PACS as unlabelled studies."""
    _checked(home)
    from flows.pacs import pacs_pull_flow

    _echo(pacs_pull_flow(**workspace(home).flow_parameters()))


@pacs_app.command("push")
def push(home: HomeOption = None) -> None:
    """Send a DICOM SR of each scored PACS study that has none yet (research output, not a diagnosis)."""
    _checked(home)
    from flows.pacs import pacs_push_flow

    _echo(pacs_push_flow(**workspace(home).flow_parameters()))
