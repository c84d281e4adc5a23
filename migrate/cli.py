"""`precopy`: the command line. Each subcommand returns an exit code.

0: completed and verified (or the command did its job); 1: the migration
failed, was cancelled or did not verify; 2: bad usage or bad config, with a
one-line message (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from migrate import units
from migrate.config import ConfigError, Scenario, load_scenario
from migrate.config.host import available_memory_bytes, check_host_memory, run_destination_store
from migrate.dest.server import IDLE_TIMEOUT_S, make_app
from migrate.dest.store import STORES
from migrate.interrupt import cancel_on_signals
from migrate.launch import DestinationProcess, run_destination_args
from migrate.live import LiveLine, is_terminal
from migrate.malloc import raise_malloc_thresholds
from migrate.report import Report, RoundRecord
from migrate.source.engine import migrate
from migrate.summary import progress_line, summary_table
from vmmodel import PAGE_SIZE

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_LISTEN = "127.0.0.1:7450"
DEST_EXIT_GRACE_S = 5.0


class UsageError(Exception):
    """Bad command-line input: one line to stderr, exit 2."""


# ---------------------------------------------------------------- helpers


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen: {text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("PRECOPY_TOKEN") or None


def _load(args: argparse.Namespace) -> Scenario:
    try:
        return load_scenario(args.config, args.set or ())
    except ConfigError as err:
        raise UsageError(str(err)) from None


def _finish(report: Report, args: argparse.Namespace) -> int:
    """Write the report, show it, and exit as the migration went, whatever stdout does."""
    if args.json:
        report.write_json(args.json)
    if not args.quiet:
        _say(summary_table(report))
    if args.json:
        print(f"report written to {args.json}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def _print_progress(record: RoundRecord, live: LiveLine | None = None) -> None:
    """The pass's line, in place of the live line if one is drawn."""
    if live is not None:
        live.clear()
    _say(progress_line(record))


def _live_line(args: argparse.Namespace) -> LiveLine | None:
    """The line within a pass, on a terminal only: anywhere else (a pipe, a file, a CI log,
    --quiet) the output is the per-pass lines alone, as they were before there was one."""
    return None if args.quiet or not is_terminal(sys.stdout) else LiveLine(sys.stdout)


def _say(text: str) -> None:
    """Print *text* to stdout; a reader that left (`| head -1`) does not change the outcome."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    """Nobody reads stdout any more: later writes, and the flush at exit, go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _Stdout:
    """stdout for a long command (a sweep): a reader that leaves ends the output, not the work."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except BrokenPipeError:
            _stdout_to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()

    def isatty(self) -> bool:
        return sys.stdout.isatty()


def _check_json_path(text: str | None) -> None:
    """Refuse a --json FILE that cannot be written before the migration runs, not after.

    Raise `UsageError` for a directory, a missing folder or a path we may not write.
    """
    if not text:
        return
    path = Path(text)
    folder = path.parent
    if path.is_dir():
        raise UsageError(f"--json {text}: is a directory; give a file name")
    if not folder.is_dir():
        raise UsageError(f"--json {text}: no such folder {str(folder)!r}")
    # The report is written as FILE.tmp beside it, then renamed: try exactly that (root's
    # os.access says yes to folders such as /proc that refuse every new file).
    tmp = path.with_name(path.name + ".tmp")
    existed = tmp.exists()
    try:
        with open(tmp, "a"):
            pass
    except OSError as err:
        raise UsageError(f"--json {text}: not writable ({err.strerror})") from None
    if not existed:
        tmp.unlink()


def _check_timeout(seconds: float) -> None:
    if not (seconds > 0 and math.isfinite(seconds)):  # nan is neither
        raise UsageError(f"--timeout: {seconds:g} is not a positive, finite number of seconds")


def _check_dest_url(url: str) -> None:
    """`--dest` is a URL: a bare HOST:PORT would only fail later, as a migration failure."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number, or beyond 65535
        ok = False
    if not ok:
        raise UsageError(f"--dest {url}: expected http://HOST:PORT")


def _check_source_options(args: argparse.Namespace) -> None:
    _check_timeout(args.timeout)
    _check_json_path(args.json)


async def _run_source(scenario: Scenario, url: str, args: argparse.Namespace) -> Report:
    """Migrate, cancelling cleanly on SIGINT/SIGTERM (the report is still written).

    The signals' handler (`migrate.interrupt`) runs even while the model runs a long
    synchronous stretch, and the model asks it between steps. On a terminal a live
    line shows the pass in flight; the pass's line replaces it.
    """
    live = _live_line(args)
    progress = None if args.quiet else functools.partial(_print_progress, live=live)
    with cancel_on_signals() as stopped, live or contextlib.nullcontext():
        # the live line is cleared on the way out, whatever the way
        return await migrate(scenario, url, token=_token(args), timeout_s=args.timeout,
                             progress=progress,
                             pass_progress=None if live is None else live.show,
                             should_stop=stopped)


# ---------------------------------------------------------------- subcommands


def cmd_source(args: argparse.Namespace) -> int:
    _check_dest_url(args.dest)
    _check_source_options(args)
    scenario = _load(args)
    return _finish(asyncio.run(_run_source(scenario, args.dest, args)), args)


def cmd_run(args: argparse.Namespace) -> int:
    _check_source_options(args)
    scenario = _load(args)
    dest = _start_destination(scenario, _run_store(scenario))
    try:
        report = asyncio.run(_run_source(scenario, dest.url, args))
    finally:
        dest.stop(grace_s=DEST_EXIT_GRACE_S)  # it ends on its own once the migration ends
    return _finish(report, args)


def _run_store(scenario: Scenario) -> str:
    """The destination's store for `run`, once source and destination together fit this host.

    Raise `UsageError` (naming guest.memory) if they do not.
    """
    available = available_memory_bytes()
    store = run_destination_store(scenario.guest, scenario.mmu, available)
    reason = check_host_memory(scenario.guest, scenario.mmu, available, destination=store)
    if reason:
        raise UsageError(f"config: {reason}")
    return store


def _start_destination(scenario: Scenario, store: str) -> DestinationProcess:
    """A `precopy dest --once` child sized for *scenario*; it ignores Ctrl-C (see launch)."""
    total = scenario.guest.memory_pages + scenario.guest.vga_pages
    return DestinationProcess(*run_destination_args(total, store), ignore_sigint=True)


def _one_line(record: logging.LogRecord) -> bool:
    """aiohttp logs a traceback for each malformed request; one line says it (--debug: all)."""
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        record.args, record.exc_info, record.exc_text = None, None, None
    return True


def cmd_dest(args: argparse.Namespace) -> int:
    host, port = _parse_listen(args.listen)
    token = _token(args)
    if not _is_loopback(host) and not token:
        raise UsageError(f"--listen {host}: a token (--token or PRECOPY_TOKEN) is required "
                         "to listen beyond loopback")
    try:
        max_memory = units.parse_size(args.max_memory)
    except ValueError as err:
        raise UsageError(f"--max-memory: {err}") from None
    if not (args.idle_timeout > 0 and math.isfinite(args.idle_timeout)):
        raise UsageError(f"--idle-timeout: {args.idle_timeout:g} is not a positive, finite "
                         "number of seconds")
    if not args.debug:
        logging.getLogger("aiohttp.server").addFilter(_one_line)
    return asyncio.run(_serve(host, port, token, max_memory // PAGE_SIZE, args.once,
                              idle_timeout_s=args.idle_timeout, store=args.store))


async def _serve(host: str, port: int, token: str | None, max_pages: int, once: bool, *,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, store: str = "auto") -> int:
    stop = asyncio.Event()
    outcome: list[bool] = []

    def on_finish(ok: bool) -> None:
        outcome.append(ok)
        if once:
            stop.set()

    app = make_app(max_memory_pages=max_pages, store=store, token=token, on_finish=on_finish,
                   idle_timeout_s=idle_timeout_s)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise UsageError(f"--listen {host}:{port}: {err.strerror or err}") from None
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"precopy dest: listening on http://{shown}:{bound[1]}", flush=True)
    loop = asyncio.get_running_loop()
    # SIGINT ignored at start (the child of `precopy run`) stays ignored, as is the custom.
    interrupt = signal.getsignal(signal.SIGINT) != signal.SIG_IGN
    for sig in (signal.SIGINT, signal.SIGTERM) if interrupt else (signal.SIGTERM,):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    if once:
        return EXIT_OK if outcome and outcome[-1] else EXIT_FAILED
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    options = {}
    if args.what == "mmu":
        from migrate.bench import mmu as bench
    elif args.what == "wire":
        from migrate.bench import wire as bench
    elif args.what == "scale":
        from migrate.bench import scale as bench
    else:
        raise UsageError(f"bench: unknown benchmark {args.what!r}")
    if args.size is not None:
        if args.what != "wire":
            raise UsageError("--size: only for bench wire")
        try:
            options["size"] = bench.parse_size(args.size)
        except ValueError as err:
            raise UsageError(f"--size: {err}") from None
    result = bench.run(quick=args.quick, **options)
    print(json.dumps(result, indent=2) if args.json else bench.format_table(result))
    return bench.exit_code(result)  # 1 when a full run missed a target


def cmd_sweep(args: argparse.Namespace) -> int:
    from migrate.experiments import ExperimentError
    from migrate.experiments.runner import run_sweep

    try:
        return run_sweep(args.sweep, args.out, jobs=args.jobs, limit=args.limit,
                         dry_run=args.dry_run, point_timeout_s=args.point_timeout,
                         stream=_Stdout())
    except (ConfigError, ExperimentError) as err:
        raise UsageError(str(err)) from None


def cmd_report(args: argparse.Namespace) -> int:
    from migrate.experiments import ExperimentError
    from migrate.experiments.report import run_report

    if args.folder.exists() and not args.folder.is_dir():
        raise UsageError(f"report: {args.folder} is a file, not a results folder "
                         "(give the folder `precopy sweep --out` wrote)")
    try:
        return run_report(args.folder, plots=not args.no_plots, x_axis=args.x)
    except ExperimentError as err:
        raise UsageError(str(err)) from None


def cmd_validate(args: argparse.Namespace) -> int:
    from migrate.validate.command import parse_tolerance, run_validate
    from migrate.validate.compare import Interrupted
    from migrate.validate.records import RecordError

    try:
        tolerance = parse_tolerance(args.tolerance)
    except ValueError as err:
        raise UsageError(f"--tolerance: {err}") from None
    try:
        return run_validate(args.runs, tolerance=tolerance, as_json=args.json,
                            plot_dir=args.plot, overrides=args.set or (), say=_say_stderr)
    except RecordError as err:
        raise UsageError(f"validate: {err}") from None
    except Interrupted:
        print("precopy: validate interrupted", file=sys.stderr)
        return EXIT_FAILED


def _say_stderr(text: str) -> None:
    print(f"precopy validate: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="precopy",
        description="Live-migration dirty-tracking emulator (KVM MMU + QEMU precopy).",
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def scenario_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. mmu.strategy=rmap (repeatable)")
        p.add_argument("--json", metavar="FILE", help="write the report as JSON")
        p.add_argument("--quiet", action="store_true", help="no progress lines or table")
        p.add_argument("--token", help="shared token (default: $PRECOPY_TOKEN)")
        p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                       help="give up on a destination that does not answer (default 30)")

    p = sub.add_parser("run", help="launch a destination and migrate to it (both at once)")
    p.add_argument("config", nargs="?", type=Path, help="scenario TOML (default: built-in)")
    scenario_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("source", help="migrate a guest to a running destination")
    p.add_argument("config", nargs="?", type=Path, help="scenario TOML (default: built-in)")
    p.add_argument("--dest", required=True, metavar="URL", help="e.g. http://127.0.0.1:7450")
    scenario_options(p)
    p.set_defaults(func=cmd_source)

    p = sub.add_parser("dest", help="receive migrations")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to listen on; port 0 picks a free one (default {DEFAULT_LISTEN})")
    p.add_argument("--once", action="store_true",
                   help="exit after one migration: 0 only if it completed and verified")
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, metavar="SECONDS",
                   help="discard a migration whose source sends nothing for this long "
                        f"(default {IDLE_TIMEOUT_S:g})")
    p.add_argument("--max-memory", default="64GiB", metavar="SIZE",
                   help="refuse a guest whose store would hold more than this: its image, "
                        "or 12 bytes a page for its digests (default 64GiB)")
    p.add_argument("--store", choices=STORES, default="auto",
                   help="what is kept of each page: its bytes (image), its digest (digests), "
                        "or the image while it fits in --max-memory, else the digests "
                        "(auto, the default)")
    p.add_argument("--token", help="require this token (default: $PRECOPY_TOKEN)")
    p.set_defaults(func=cmd_dest)

    p = sub.add_parser("bench", help="measure the emulator itself",
                       description="Exit status: 0, or 1 when a full run missed a target "
                                   "(a --quick run judges none) or a scale point failed, "
                                   "2 for bad usage.")
    p.add_argument("what", choices=["mmu", "wire", "scale"], help="which benchmark")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    p.add_argument("--size", metavar="SIZE",
                   help="wire: guest memory moved per pass (default 1GiB; --quick 16MiB)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("sweep", help="run many migrations: a grid and/or comparisons (resumable)")
    p.add_argument("sweep", type=Path, help="sweep TOML, e.g. configs/sweeps/dirty-rate.toml")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="results folder (default: results/<sweep name>); a rerun resumes it")
    p.add_argument("--jobs", "-j", type=int, metavar="N",
                   help="points run at once (default: the number of cores)")
    p.add_argument("--limit", type=int, metavar="N", help="run at most N new points, then stop")
    p.add_argument("--dry-run", action="store_true",
                   help="check every point's scenario and list the points; run nothing")
    p.add_argument("--point-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="stop a point that has no result after this long (default 1800)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="tables, summary.csv and plots of a sweep's results")
    p.add_argument("folder", type=Path, help="a sweep's results folder")
    p.add_argument("--no-plots", action="store_true", help="only the table and summary.csv")
    p.add_argument("--x", metavar="AXIS",
                   help="x axis of the downtime plot (default: the workload rate, if varied)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("validate", help="precopy's predictions against recorded QEMU migrations",
                       description="Run precopy like each recorded real QEMU migration and "
                                   "print the figures side by side. Exit status: 0 when every "
                                   "run agrees, 1 otherwise, 2 for bad input.")
    p.add_argument("runs", nargs="*", type=Path, metavar="RUNS.jsonl",
                   help="recorded runs (default: the reference runs shipped in "
                        "configs/reference/qemu-7.2-tcg/)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--tolerance", default="10%", metavar="SHARE",
                   help="time and transferred agree within this (default 10%%)")
    p.add_argument("--plot", type=Path, metavar="DIR",
                   help="write remaining-RUN.png per run: predicted against measured")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key of every run's scenario (a what-if; "
                        "repeatable)")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="precopy %(name)s: %(message)s")
    raise_malloc_thresholds()
    try:
        return args.func(args)
    except UsageError as err:
        print(f"precopy: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before a migration started: nothing to report
        print("precopy: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `report | head` and the like (a migration's exit follows it)
        _stdout_to_devnull()
        return EXIT_OK
    except Exception as err:
        if args.debug:
            raise
        print(f"precopy: error: {err} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED
