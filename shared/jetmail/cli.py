"""The ``jetmail`` command line: set up the job streams, run workers, inspect dead letters and schedules.

Settings are read once per command, inside the command, so ``jetmail --help`` works without any. Modules
that are slow to load and serve one command (the templating package with Jinja, aiosmtpd, Powertools) are
imported inside that command, so every other one starts without them.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, NoReturn, TypeVar

import click
from pydantic import BaseModel

from jetmail.bootstrap import bootstrap
from jetmail.commands.audit import audit
from jetmail.commands.campaigns import campaign, scheduler
from jetmail.commands.contacts import contacts, lists
from jetmail.commands.keys import keys
from jetmail.commands.messages import messages
from jetmail.commands.sending import send, sending
from jetmail.commands.suppressions import suppressions
from jetmail.commands.templates import templates
from jetmail.commands.webhooks import webhooks
from jetmail.compliance.audit import bind_actor, cli_actor
from jetmail.config import ConfigError, get_settings
from jetmail.devstack.cli import dev
from jetmail.queue import (
    DeadLetter,
    Queue,
    QueueConfig,
    QueueError,
    ScheduleInfo,
    Worker,
    ensure_streams,
    registry,
)
from jetmail.queue.subjects import PRIORITIES, check_queue
from jetmail.services import QUEUES, Services, queue_config

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

TASKS_MODULE = "jetmail.tasks"


class CliError(click.ClickException):
    """A one-line ``error: ...`` on stderr and exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class SettingsError(CliError):
    """Missing or invalid settings: exit code 2, like other usage errors."""

    exit_code = 2


class _Cli(click.Group):
    """Turns every failure into one ``error:`` line: bad input is the user's to fix, not a stack trace."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ConfigError as exc:
            raise SettingsError(str(exc)) from None
        except (QueueError, ValueError, TypeError, LookupError) as exc:
            raise CliError(str(exc)) from None
        except Exception as exc:
            logging.getLogger("jetmail.cli").debug("command failed", exc_info=True)
            # jetmail's own errors say what is wrong in their message (the API's problem detail); others are
            # named by their type as well
            own = type(exc).__module__.startswith("jetmail.")
            raise CliError(str(exc) if own and str(exc) else f"{type(exc).__name__}: {exc}") from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            _fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


# long-running processes act for themselves ("system" in the audit log), not for whoever started them
_SERVICE_COMMANDS = frozenset({"worker", "scheduler", "dev", "smtp-server", "bounce-server", "bounce-mailbox"})


@click.group(cls=_Cli)
@click.pass_context
def main(ctx: click.Context) -> None:
    """jetmail: a self-hostable email platform."""
    if ctx.invoked_subcommand not in _SERVICE_COMMANDS:
        bind_actor(cli_actor())


main.add_command(dev)
main.add_command(keys)
main.add_command(sending)
main.add_command(send)
main.add_command(messages)
main.add_command(suppressions)
main.add_command(campaign)
main.add_command(scheduler)
main.add_command(templates)
main.add_command(contacts)
main.add_command(lists)
main.add_command(audit)
main.add_command(webhooks)


def _config() -> QueueConfig:
    return queue_config(get_settings())


def _with_queue(operation: Callable[[Queue], Awaitable[T]]) -> T:
    config = _config()

    async def run() -> T:
        async with Queue(config) as queue:
            return await operation(queue)

    return asyncio.run(run())


def _echo_rows(rows: Sequence[M], *, as_json: bool, line: Callable[[M], str], empty: str) -> None:
    """``rows`` as one JSON array, or a line each (``empty`` when there are none)."""
    if as_json:
        click.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
    elif not rows:
        click.echo(empty)
    else:
        for row in rows:
            click.echo(line(row))


def _import(name: str) -> ModuleType:
    # like uvicorn and celery, find modules relative to where the command runs
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CliError(f"cannot import {name}: {exc}") from None


# ---- streams and workers
@main.command()
@click.option("--queue", "queues", multiple=True, metavar="QUEUE",
              help="Another queue to create consumers for.")
def init(queues: tuple[str, ...]) -> None:
    """Create what jetmail needs (idempotent): the job streams, the schedules bucket and every KV bucket, the
    consumers of the standard queues and of each --queue, and locally the table."""
    extra = [check_queue(name) for name in dict.fromkeys(queues) if name not in QUEUES]
    settings = get_settings()
    for line in bootstrap(settings):
        click.echo(line)
    if extra:
        ensure_streams(_config(), extra)
        click.echo(f"consumers for {', '.join(extra)}: ready")


@main.command()
@click.argument("queues", nargs=-1, required=True)
@click.option("--concurrency", "-c", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="Jobs run at the same time.")
@click.option("--reserve-high", type=click.IntRange(0), metavar="N",
              help="Slots only high-priority jobs (transactional mail, campaign starts) may take, so they start at "
                   "once while campaign batches fill the rest. Default: a quarter of --concurrency (at least 1) "
                   "when QUEUES include email_transactional and others, else 0.")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty and nothing is running.")
@click.option("--health-port", type=click.IntRange(0, 65_535), help="Serve GET /healthz on this port.")
@click.option("--health-host", default="127.0.0.1", show_default=True,
              help="Address for the health endpoint (0.0.0.0 to expose it outside a container).")
@click.option("--grace-period", type=click.FloatRange(0), default=25.0, show_default=True,
              help="Seconds running jobs get to finish after SIGTERM before they are handed back.")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help=f"Extra module registering tasks (besides {TASKS_MODULE}).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
@click.option("--transactional-process/--no-transactional-process", default=True, show_default=True,
              help="When QUEUES include email_transactional and other queues, run email_transactional in a child "
                   "process of its own (same --concurrency), so campaign work never shares an event loop or the "
                   "interpreter lock with a password reset. The worker restarts the child when it fails and "
                   "stops it when it stops.")
@click.option("--nice", type=click.IntRange(0, 19), envvar="JETMAIL_WORKER_NICE", metavar="N",
              help="Lower the CPU priority of this worker's own jobs by N (Linux nice), so that on a busy machine "
                   "the transactional process and everything else gets the CPU first. Default: 10 when "
                   "email_transactional runs in a child process (which keeps the priority it had), else 0.")
@click.option("--parent-pid", type=int, hidden=True,
              help="Stop when this process is no longer the parent (the child process of --transactional-process).")
def worker(queues: tuple[str, ...], concurrency: int, reserve_high: int | None, burst: bool, health_port: int | None,
           health_host: str, grace_period: float, imports: tuple[str, ...], log_level: str,
           transactional_process: bool, nice: int | None, parent_pid: int | None) -> None:
    """Run the jobs of QUEUES until SIGTERM (or, with --burst, until they are empty)."""
    from jetmail.messaging.messages import TRANSACTIONAL_QUEUE
    from jetmail.queue.child import ChildWorker, lower_priority, watch_parent
    from jetmail.queue.worker import tune_collector

    for name in queues:
        check_queue(name)
    queues = tuple(dict.fromkeys(queues))
    if reserve_high is None:
        # kept for campaign starts too when the transactional queue moves to the child below
        shared = TRANSACTIONAL_QUEUE in queues and len(queues) > 1 and concurrency > 1
        reserve_high = max(1, concurrency // 4) if shared else 0
    elif reserve_high >= concurrency:
        raise CliError(f"--reserve-high must be below --concurrency ({concurrency}), got {reserve_high}")
    child: ChildWorker | None = None
    if transactional_process and TRANSACTIONAL_QUEUE in queues and len(queues) > 1:
        queues = tuple(q for q in queues if q != TRANSACTIONAL_QUEUE)
        argv = [sys.executable, "-m", "jetmail.cli", "worker", TRANSACTIONAL_QUEUE, "--concurrency", str(concurrency),
                "--grace-period", str(grace_period), "--log-level", log_level, "--parent-pid", str(os.getpid()),
                *(arg for name in imports for arg in ("--import", name)), *(["--burst"] if burst else [])]
        child = ChildWorker(argv, name=TRANSACTIONAL_QUEUE, burst=burst,
                            on_clean_exit=lambda: os.kill(os.getpid(), signal.SIGTERM))
    config = _config()
    from jetmail.observability import configure_worker_logging

    configure_worker_logging(log_level)  # JSON lines, each carrying the running job's ids
    tasks_module = _import(TASKS_MODULE)
    for name in imports:
        _import(name)
    runner = Worker(config, queues, registry=registry, concurrency=concurrency, reserve_high=reserve_high, burst=burst,
                    on_startup=getattr(tasks_module, "startup", None),
                    on_shutdown=getattr(tasks_module, "shutdown", None),
                    health_port=health_port, health_host=health_host, grace_period=grace_period,
                    health_check=child.alive if child else None, on_stop=child.terminate if child else None)
    if parent_pid is not None:
        watch_parent(parent_pid)
    if child is not None:
        child.start()
    lower_priority(nice if nice is not None else 10 if child is not None else 0)
    tune_collector()
    try:
        asyncio.run(runner.run())
    finally:
        # with --burst the child ends when its queue is empty, as this worker did; once stopped, it got SIGTERM
        # when this worker began to stop and has the same grace period for its running jobs
        if child is not None and burst and not child.stopping:
            child.wait(timeout=None, terminate=False)
        if child is not None:
            child.wait(timeout=grace_period + 10)


@main.command("smtp-server")
@click.option("--host", help="Address to listen on (default: JETMAIL_SUBMISSION_HOST).")
@click.option("--port", type=click.IntRange(0, 65_535),
              help="STARTTLS submission port, 0 for none (default: JETMAIL_SUBMISSION_PORT, 587).")
@click.option("--tls-port", type=click.IntRange(0, 65_535),
              help="Implicit-TLS submission port, 0 for none (default: JETMAIL_SUBMISSION_TLS_PORT, 465).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def smtp_server(host: str | None, port: int | None, tls_port: int | None, log_level: str) -> None:
    """Accept mail over SMTP (AUTH with an API key) into the transactional pipeline, until SIGTERM."""
    from jetmail.messaging.smtp_server import serve  # aiosmtpd, for this command only

    overrides = {k: v for k, v in {"submission_host": host, "submission_port": port,
                                   "submission_tls_port": tls_port}.items() if v is not None}
    settings = get_settings().model_copy(update=overrides)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command lines
    services = Services(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(services, stop=stop,
                    ready=lambda ports: click.echo(f"SMTP submission on {', '.join(map(str, ports))}", err=True))

    try:
        asyncio.run(run())
    finally:
        services.queue.close()


@main.command("bounce-server")
@click.option("--host", help="Address to listen on (default: JETMAIL_BOUNCE_HOST).")
@click.option("--port", type=click.IntRange(0, 65_535),
              help="Port to listen on, 0 for any free one (default: JETMAIL_BOUNCE_PORT, 25).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def bounce_server(host: str | None, port: int | None, log_level: str) -> None:
    """Receive bounces and complaints for JETMAIL_BOUNCE_DOMAIN (its MX) and apply them, until SIGTERM."""
    from jetmail.deliverability.bounce_server import serve  # aiosmtpd, for this command only

    overrides = {k: v for k, v in {"bounce_host": host, "bounce_port": port}.items() if v is not None}
    settings = get_settings().model_copy(update=overrides)
    if not settings.bounce_domain:
        _fail("JETMAIL_BOUNCE_DOMAIN is not set: the bounce server receives mail for that domain only", 2)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command lines
    services = Services(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(services, stop=stop, ready=lambda bound: click.echo(f"bounce intake on {bound}", err=True))

    try:
        asyncio.run(run())
    finally:
        services.queue.close()


@main.command("bounce-mailbox")
@click.option("--once", is_flag=True, help="Process the mail waiting now, then exit (for cron).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def bounce_mailbox(once: bool, log_level: str) -> None:
    """Read bounces and complaints from an IMAP mailbox (JETMAIL_BOUNCE_IMAP_*) and apply them, until SIGTERM."""
    import threading

    from jetmail.deliverability.bounce_mailbox import (  # imapclient: for this command only
        BounceMailbox,
        MailboxConfig,
        MailboxError,
    )
    from jetmail.deliverability.bounces import BounceIntake

    settings = get_settings()
    try:
        config = MailboxConfig.from_settings(settings)
    except ConfigError as exc:
        _fail(str(exc), 2)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    services = Services(settings)
    mailbox = BounceMailbox(config, intake=BounceIntake.from_services(services))
    try:
        if once:
            try:
                click.echo(f"{mailbox.run_once()} message(s) processed")
            except MailboxError as exc:
                _fail(str(exc), 1)
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        mailbox.run(stop, ready=lambda: click.echo(f"bounce mailbox {config.host}/{config.folder} watched",
                                                   err=True))
    finally:
        services.queue.close()


@main.command()
@click.argument("task")
@click.option("--queue", "-q", required=True)
@click.option("--priority", type=click.Choice(PRIORITIES), default="normal", show_default=True)
@click.option("--payload", "payload_json", default="{}", help="The payload as a JSON object.")
@click.option("--job-id", help="De-duplicates: the same id inside the duplicate window runs once.")
@click.option("--delay", type=click.FloatRange(0), help="Run after this many seconds.")
@click.option("--max-retries", type=click.IntRange(0), default=3, show_default=True)
def enqueue(task: str, queue: str, priority: str, payload_json: str, job_id: str | None, delay: float | None,
            max_retries: int) -> None:
    """Enqueue one job of TASK (validated against the task's model when jetmail.tasks registers it)."""
    try:
        payload = json.loads(payload_json)
    except json.JSONDecodeError as exc:
        raise CliError(f"--payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CliError("--payload must be a JSON object")
    _import(TASKS_MODULE)
    options: dict[str, Any] = {"queue": queue, "priority": priority, "job_id": job_id,
                               "max_retries": max_retries, "payload": payload}
    if delay is not None:
        ref = _with_queue(lambda q: q.enqueue_in(delay, task, **options))
    else:
        ref = _with_queue(lambda q: q.enqueue(task, **options))
    note = " (duplicate: already enqueued)" if ref.duplicate else ""
    click.echo(f"{ref.job_id} seq={ref.seq}{note}")


# ---- dead letters
@main.group()
def dlq() -> None:
    """Inspect, replay and purge jobs that failed for good."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--queue", help="Only this queue's dead letters.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_list(limit: int, queue: str | None, as_json: bool) -> None:
    """List dead letters, oldest first."""
    _echo_rows(_with_queue(lambda q: q.dlq_list(limit, queue=queue)), as_json=as_json, line=_letter_line,
               empty="no dead letters")


@dlq.command("show")
@click.argument("seq", type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_show(seq: int, as_json: bool) -> None:
    """Show one dead letter in full."""
    letter = _with_queue(lambda q: q.dlq_show(seq))
    if as_json:
        click.echo(json.dumps(letter.model_dump(mode="json"), indent=2))
        return
    rows = [("seq", letter.seq), ("failed at", letter.failed_at.isoformat()), ("queue", letter.queue),
            ("subject", letter.subject), ("task", letter.task), ("job id", letter.job_id),
            ("attempts", letter.attempts), ("reason", letter.reason), ("error", letter.error),
            ("where", letter.where)]
    for label, value in rows:
        if value is not None:
            click.echo(f"{label + ':':<11} {value}")
    if letter.envelope is not None:
        click.echo("envelope:")
        click.echo(json.dumps(letter.envelope, indent=2))
    elif letter.raw is not None:
        click.echo("raw message:")
        click.echo(letter.raw)


@dlq.command("replay")
@click.argument("seq", type=click.IntRange(1), required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter that holds a job.")
@click.option("--queue", help="With --all: only this queue's dead letters.")
def dlq_replay(seq: int | None, replay_all: bool, queue: str | None) -> None:
    """Put a dead job (SEQ, or --all) back on its queue as a fresh job, and remove the dead letter."""
    if (seq is None) == (not replay_all):
        raise CliError("give either a SEQ or --all")
    if seq is not None:
        ref = _with_queue(lambda q: q.dlq_replay(seq))
        click.echo(f"replayed {seq}: job {ref.job_id} seq={ref.seq}")
        return

    async def replay(q: Queue) -> tuple[int, int]:
        refs = await q.dlq_replay_all(queue=queue)
        return len(refs), await q.dlq_count(queue=queue)

    replayed, left = _with_queue(replay)
    tail = f"; {left} left that hold no job and cannot be replayed" if left else ""
    click.echo(f"replayed {replayed} dead letter(s){tail}")


@dlq.command("purge")
@click.option("--queue", help="Only this queue's dead letters.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(queue: str | None, yes: bool) -> None:
    """Delete dead letters for good."""
    if not yes:
        scope = f"of queue {queue}" if queue else "of all queues"
        click.confirm(f"Delete every dead letter {scope}?", abort=True)
    purged = _with_queue(lambda q: q.dlq_purge(queue=queue))
    click.echo(f"purged {purged} dead letter(s)")


def _letter_line(letter: DeadLetter) -> str:
    error = letter.error if len(letter.error) <= 100 else letter.error[:97] + "..."
    return (f"{letter.seq:>6}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  {letter.queue or '-'}  "
            f"{letter.task or '?'}  {letter.job_id or '-'}  attempts={letter.attempts}  "
            f"{letter.reason}: {error}")


# ---- schedules
@main.group()
def schedules() -> None:
    """List, pause, resume and cancel recurring schedules."""


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def schedules_list(as_json: bool) -> None:
    """List recurring schedules."""
    _echo_rows(_with_queue(lambda q: q.list_schedules()), as_json=as_json, line=_schedule_line, empty="no schedules")


@schedules.command("pause")
@click.argument("schedule_id")
def schedules_pause(schedule_id: str) -> None:
    """Stop a schedule firing, keeping it for resume."""
    click.echo(_schedule_line(_with_queue(lambda q: q.pause_schedule(schedule_id))))


@schedules.command("resume")
@click.argument("schedule_id")
def schedules_resume(schedule_id: str) -> None:
    """Start a paused schedule firing again."""
    click.echo(_schedule_line(_with_queue(lambda q: q.resume_schedule(schedule_id))))


@schedules.command("cancel")
@click.argument("schedule_id")
def schedules_cancel(schedule_id: str) -> None:
    """Stop a schedule and forget it."""
    if not _with_queue(lambda q: q.cancel_schedule(schedule_id)):
        raise CliError(f"no schedule {schedule_id!r}")
    click.echo(f"cancelled {schedule_id}")


def _schedule_line(item: ScheduleInfo) -> str:
    zone = f" ({item.timezone})" if item.timezone else ""
    state = "paused" if item.paused else "active"
    return f"{item.schedule_id}  {state}  {item.task} -> {item.queue}/{item.priority}  {item.pattern}{zone}"


if __name__ == "__main__":
    main()
