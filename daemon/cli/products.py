"""`cabinet product …` and `cabinet jobs …`"""

from __future__ import annotations

import json

import click

from daemon.cli.state import CliState, pass_state, print_json, print_table
from daemon.scheduler import Scheduler


@click.group("product")
def product() -> None:
    """The QuickBooks and Payroll product catalogue."""


@product.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_(state: CliState, as_json: bool) -> None:
    """List products (ids for `cabinet client add --product`)."""
    items = state.cabinet.onboarding.products()
    if as_json:
        print_json(items)
    else:
        print_table([[p.id, p.kind, p.name] for p in items], ["ID", "KIND", "NAME"])


@click.group("jobs")
def jobs() -> None:
    """Scheduled jobs (deadlines and reminders)."""


@jobs.command("run")
@click.option("--send/--no-send", default=True, show_default=True, help="Also send the emails the jobs queued.")
@pass_state
def run(state: CliState, send: bool) -> None:
    """Run every job that is due now, once, and exit (for cron; `cabinet serve` runs them itself)."""
    import asyncio

    counts = Scheduler(state.cabinet).run_due()
    if send:
        counts["emails_sent"] = asyncio.run(state.cabinet.worker.send_due())
    click.echo(json.dumps(counts, sort_keys=True))


@jobs.command("list")
@click.option("--failed", is_flag=True, help="Rows that failed (waiting for a retry, or parked).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_state
def list_jobs(state: CliState, failed: bool, as_json: bool) -> None:
    """The scheduled jobs, or (--failed) the rows that failed in them."""
    scheduler = Scheduler(state.cabinet)
    if not failed:
        for job in scheduler.jobs:
            click.echo(job.name)
        return
    items = scheduler.failures()
    if as_json:
        print_json(items)
    else:
        print_table(
            [[f.job, str(f.ref_id), "parked" if f.parked else f"retry {f.next_attempt_at:%Y-%m-%d %H:%M}",
              str(f.attempts), f.last_error[:60]] for f in items],
            ["JOB", "ROW", "STATE", "ATTEMPTS", "LAST ERROR"],
        )


@jobs.command("retry")
@click.argument("job")
@click.argument("row", type=int)
@pass_state
def retry_job(state: CliState, job: str, row: int) -> None:
    """Try a failed (e.g. parked) row of JOB again on the next pass, after fixing its cause."""
    Scheduler(state.cabinet).retry(job, row)
    click.echo(f"{job} row {row} will be tried again on the next pass (`cabinet jobs run` runs one now).")


def register(cli: click.Group) -> None:
    cli.add_command(product)
    cli.add_command(jobs)
