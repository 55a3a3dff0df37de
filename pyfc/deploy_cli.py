"""`pyfc deploy`: an application from its descriptor (pyfc.yaml, or a Serverless Devs
s.yaml), or one function from a folder (`pyfc deploy FOLDER --service S --function F`).

Validate the whole file, read what the gateway has, show the plan, apply it (uploads with
progress); a second run with nothing changed says so and changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from pyfc import client
from pyfc.apply import apply, fetch_state
from pyfc.client import EXIT_USAGE, Api, CliError
from pyfc.console import api_command, json_option, run
from pyfc.descriptor import App
from pyfc.plan import Change, plan, resend_secrets

DEFAULT_FILES = ("pyfc.yaml", "pyfc.yml", "s.yaml", "s.yml")
SYMBOLS = {"create": "+", "update": "~", "delete": "-", "publish": "^"}
STYLES = {"create": "green", "update": "yellow", "delete": "red", "publish": "cyan"}


def find_descriptor(given: Path | None) -> Path:
    if given is not None:
        return given
    for name in DEFAULT_FILES:
        if Path(name).is_file():
            return Path(name)
    raise CliError(
        f"no descriptor here ({', '.join(DEFAULT_FILES)}): pass -f FILE, or deploy a folder "
        "with `pyfc deploy FOLDER --service S --function F`",
        EXIT_USAGE,
    )


def load_app(file: Path, variables: dict[str, str]) -> App:
    """The validated App of `file` (pyfc's own format, or Serverless Devs')."""
    from pyfc import descriptor, sdevs, yamldoc

    doc = yamldoc.load(file)
    if not sdevs.is_sdevs(doc.data):
        if variables:
            raise CliError("--var fills {{ NAME }} in an s.yaml; pyfc.yaml has none", EXIT_USAGE)
        return descriptor.validate(doc)
    translated, warnings = sdevs.translate(doc, variables)
    app = descriptor.validate(translated)
    app.warnings = warnings + app.warnings
    return app


@click.command(help="deploy an application from pyfc.yaml or s.yaml, or a function from a folder")
@api_command
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@click.option(
    "-f", "--file", "file", type=click.Path(path_type=Path), help="the descriptor [pyfc.yaml]"
)
@click.option("--dry-run", is_flag=True, help="show the plan; change nothing")
@click.option("--prune", is_flag=True, help="also delete what the file no longer names")
@click.option(
    "--resend-secrets",
    is_flag=True,
    help="re-send trigger configs holding secrets (the API never shows them to compare)",
)
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE", help="{{ NAME }} value")
@click.option("--service", help="FOLDER: the service")
@click.option("--function", help="FOLDER: the function")
@click.option("--handler", default="index.handler", show_default=True, help="FOLDER: handler")
@click.option("--runtime", default="python3.11", show_default=True, help="FOLDER: runtime")
@click.option("--timeout", type=float, help="FOLDER: seconds")
@click.option("--memory", type=int, help="FOLDER: MB")
@click.option("--initializer", help="FOLDER: initializer handler")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="FOLDER: environment variable")
@json_option
def deploy(
    api: Api,
    folder: Path | None,
    file: Path | None,
    dry_run: bool,
    prune: bool,
    resend_secrets: bool,
    variables: tuple[str, ...],
    service: str | None,
    function: str | None,
    handler: str,
    runtime: str,
    timeout: float | None,
    memory: int | None,
    initializer: str | None,
    env: tuple[str, ...],
    as_json: bool,
) -> int:
    if folder is not None:
        if file is not None:
            raise click.UsageError("give a FOLDER or -f FILE, not both")
        if not service or not function:
            raise click.UsageError("deploying a FOLDER needs --service and --function")
        options: dict[str, object] = {"handler": handler, "runtime": runtime}
        for value, key in (
            (timeout, "timeout"),
            (memory, "memorySize"),
            (initializer, "initializer"),
        ):
            if value is not None:
                options[key] = value
        if env:
            if any("=" not in kv for kv in env):
                raise click.UsageError("--env takes KEY=VALUE")
            options["environmentVariables"] = dict(kv.split("=", 1) for kv in env)
        return run(client.deploy(api, folder, service, function, options, as_json))
    if service or function or env:
        raise click.UsageError("--service, --function and --env go with a FOLDER")
    values: dict[str, str] = {}
    for spec in variables:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"--var takes NAME=VALUE, got {spec!r}")
        values[name.strip()] = value
    app = load_app(find_descriptor(file), values)
    return run(_deploy(api, app, dry_run, prune, resend_secrets, as_json))


async def _deploy(
    api: Api, app: App, dry_run: bool, prune: bool, resend: bool, as_json: bool
) -> int:
    out = Console(soft_wrap=True, highlight=False)
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    for warning in app.warnings:
        err.print(f"[yellow]warning:[/] {warning}", markup=True)
    async with aiohttp.ClientSession() as s:
        state = await fetch_state(api, s, app)
        # Deletions of what the file no longer names are planned always, applied on --prune.
        changes = plan(app, state, prune=True)
        if resend:
            changes += resend_secrets(app, state)
        kept = [] if prune else [c for c in changes if _pruned(c)]
        changes = [c for c in changes if c not in kept]
        if as_json and (dry_run or not changes):
            print(json.dumps(_summary(app, changes, kept, dry_run, applied=[])))
            return 0
        if not as_json:
            _print_plan(out, app, api, changes, kept)
            if dry_run and changes:
                out.print("dry run: nothing changed")
            if dry_run or not changes:
                return 0
        applied = await _apply_with_progress(api, s, changes, state, err, as_json)
    if as_json:
        print(json.dumps(_summary(app, changes, kept, dry_run, applied)))
    else:
        counts = _counts(applied)
        out.print(f"deployed {app.source.name}: {counts}")
    return 0


def _pruned(change: Change) -> bool:
    """A deletion of something the file does not name (not a delete-then-create)."""
    return change.action == "delete" and not change.details


async def _apply_with_progress(
    api: Api,
    s: aiohttp.ClientSession,
    changes: list[Change],
    state: Any,
    err: Console,
    quiet: bool,
) -> list[Change]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    ) as bars:

        def upload(change: Change) -> Any:
            task = bars.add_task(f"uploading {change.target}", total=None)

            def advance(sent: int, total: int) -> None:
                bars.update(task, completed=sent, total=total)

            return advance

        def done(change: Change, note: str) -> None:
            if not quiet:
                suffix = f" ({note})" if note else ""
                err.print(f"{_past(change.action)} {change.kind} {change.target}{suffix}")

        return await apply(api, s, changes, state, upload, done)


def _past(action: str) -> str:
    return {"create": "created", "update": "updated", "delete": "deleted"}.get(action, "published")


def _counts(changes: list[Change]) -> str:
    n = {a: sum(1 for c in changes if c.action == a) for a in ("create", "update", "delete")}
    return f"{n['create']} created, {n['update']} changed, {n['delete']} deleted"


def _print_plan(
    out: Console, app: App, api: Api, changes: list[Change], kept: list[Change]
) -> None:
    if not changes:
        out.print(f"{app.source.name}: nothing to change; {api.endpoint} matches it")
    else:
        out.print(f"plan for {app.source.name} on {api.endpoint}:")
        width = max(len(c.kind) for c in changes)
        for c in changes:
            style = STYLES[c.action]
            details = f"  {'; '.join(c.details)}" if c.details else ""
            out.print(
                f"  [{style}]{SYMBOLS[c.action]} {c.kind:<{width}}[/] {c.target}{details}",
                markup=True,
            )
        n = {a: sum(1 for c in changes if c.action == a) for a in SYMBOLS}
        line = f"{n['create']} to create, {n['update']} to change, {n['delete']} to delete"
        out.print(line + (", a version to publish if LATEST changed" if n["publish"] else ""))
    if kept:
        names = ", ".join(f"{c.kind} {c.target}" for c in kept)
        out.print(f"not in the file, kept (--prune deletes them): {names}")


def _summary(
    app: App, changes: list[Change], kept: list[Change], dry_run: bool, applied: list[Change]
) -> dict[str, Any]:
    return {
        "file": str(app.source),
        "dryRun": dry_run,
        "changes": [c.as_json() for c in changes],
        "notInFile": [c.as_json() for c in kept],
        "applied": len(applied),
        "warnings": app.warnings,
    }
