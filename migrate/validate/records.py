"""A recorded real migration, read from one line of a `runs.jsonl` (the reference format).

The format is the harness's of `configs/reference/qemu-7.2-tcg/` (its README
says what each field means): a run's `config`, QEMU's
`migration_parameters` as they were set, the capabilities on, the
`query-migrate` polls as `progress` (`cols` and `rows`), the QMP events, the
summary `result` (with QEMU's final `ram` block) and the guest's own
heartbeats (`guest_src`). Each becomes a typed, frozen view here, the polls
as columns (one numpy array per `query-migrate` field, NaN where a poll had
none, as in setup). Fields this module does not read are ignored, so a
record with more in it reads the same; a field it reads that is missing or
of the wrong type is a `RecordError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NS_PER_MS = 1e6


class RecordError(ValueError):
    """A file that is not run records: one line says where and what."""


class _Fields:
    """Typed access to one JSON object, naming `where` (file:line and the path) on error."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise RecordError(f"{where}: {_kind(data)}, expected an object")
        self.data = data
        self.where = where

    def bad(self, name: str, what: str) -> RecordError:
        return RecordError(f"{self.where}.{name}: {what}")

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str) -> Any:
        if name not in self.data:
            raise self.bad(name, "missing")
        return self.data[name]

    def obj(self, name: str) -> _Fields:
        return _Fields(self.raw(name), f"{self.where}.{name}")

    def text(self, name: str) -> str:
        value = self.raw(name)
        if not isinstance(value, str):
            raise self.bad(name, f"{_kind(value)}, expected a string")
        return value

    def number(self, name: str, *, optional: bool = False, default: float | None = None
               ) -> float | None:
        value = self.data.get(name) if optional else self.raw(name)
        if value is None and optional:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise self.bad(name, f"{_kind(value)}, expected a finite number")
        return float(value)

    def whole(self, name: str, *, optional: bool = False) -> int | None:
        value = self.number(name, optional=optional)
        if value is None:
            return None
        if value != int(value):
            raise self.bad(name, f"{value!r}, expected a whole number")
        return int(value)

    def flag(self, name: str) -> bool:
        value = self.raw(name)
        if not isinstance(value, bool):
            raise self.bad(name, f"{_kind(value)}, expected true or false")
        return value

    def items(self, name: str) -> list[Any]:
        value = self.raw(name)
        if not isinstance(value, list):
            raise self.bad(name, f"{_kind(value)}, expected an array")
        return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(value).__name__})"


# ------------------------------------------------------------------------ the parts


@dataclass(frozen=True)
class RunConfig:
    """What the harness ran: the guest, the dirtier and the migration's settings."""

    mem_mib: float
    smp: int
    dirty_mb: float  # MiB of the guest the dirtier writes
    rate_pages_s: float  # its target rate
    pattern: str  # random | sequential
    max_bandwidth_bytes_s: float
    downtime_limit_ms: float
    auto_converge: bool
    timeout_s: float  # the harness cancels a run still going after this
    poll_ms: float
    maxlag_ms: float  # the most backlog the dirtier catches up (README: 100 ms)

    DEFAULT_MAXLAG_MS = 100.0  # the reference README: "at most 100 ms of backlog"

    @classmethod
    def read(cls, f: _Fields) -> RunConfig:
        pattern = f.text("pattern")
        if pattern not in ("random", "sequential"):
            raise f.bad("pattern", f"{pattern!r}, expected 'random' or 'sequential'")
        smp = f.whole("smp")
        if smp < 1:
            raise f.bad("smp", f"{smp}, expected at least 1")
        values = {
            "mem_mib": f.number("mem_mib"), "smp": smp, "dirty_mb": f.number("dirty_mb"),
            "rate_pages_s": f.number("rate_pages_s"), "pattern": pattern,
            "max_bandwidth_bytes_s": f.number("max_bandwidth_bytes_s"),
            "downtime_limit_ms": f.number("downtime_limit_ms"),
            "auto_converge": f.flag("auto_converge"), "timeout_s": f.number("timeout_s"),
            "poll_ms": f.number("poll_ms"),
            "maxlag_ms": f.number("maxlag_ms", optional=True, default=cls.DEFAULT_MAXLAG_MS),
        }
        for name in ("mem_mib", "dirty_mb", "rate_pages_s", "max_bandwidth_bytes_s",
                     "downtime_limit_ms", "timeout_s", "poll_ms", "maxlag_ms"):
            if values[name] < 0:
                raise f.bad(name, f"{values[name]:g}, expected a non-negative number")
        return cls(**values)


@dataclass(frozen=True)
class MigrationParameters:
    """QEMU's `query-migrate-parameters` as set: the ones precopy models."""

    max_bandwidth_bytes_s: float
    downtime_limit_ms: float
    throttle_trigger_threshold: int
    cpu_throttle_initial: int
    cpu_throttle_increment: int
    max_cpu_throttle: int
    cpu_throttle_tailslow: bool
    raw: dict[str, Any]  # all of them, as recorded

    @classmethod
    def read(cls, f: _Fields) -> MigrationParameters:
        return cls(
            max_bandwidth_bytes_s=f.number("max-bandwidth"),
            downtime_limit_ms=f.number("downtime-limit"),
            throttle_trigger_threshold=f.whole("throttle-trigger-threshold"),
            cpu_throttle_initial=f.whole("cpu-throttle-initial"),
            cpu_throttle_increment=f.whole("cpu-throttle-increment"),
            max_cpu_throttle=f.whole("max-cpu-throttle"),
            cpu_throttle_tailslow=f.flag("cpu-throttle-tailslow"),
            raw=dict(f.data),
        )


@dataclass(frozen=True)
class Progress:
    """The `query-migrate` polls, column by column: `t` (s since `migrate`), `status`, and
    one float array per numeric field (NaN where the poll had none)."""

    t: np.ndarray
    status: tuple[str, ...]
    columns: dict[str, np.ndarray]

    REQUIRED = ("t", "status", "transferred", "remaining", "duplicate", "normal",
                "dirty-sync-count", "mbps")

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def active(self) -> np.ndarray:
        """The polls of an active (precopy) migration that carry figures."""
        status = np.array(self.status)
        return (status == "active") & ~np.isnan(self.columns["transferred"])

    @classmethod
    def read(cls, f: _Fields) -> Progress:
        cols = f.items("cols")
        if not all(isinstance(c, str) for c in cols) or len(set(cols)) != len(cols):
            raise f.bad("cols", "expected distinct column names")
        missing = [c for c in cls.REQUIRED if c not in cols]
        if missing:
            raise f.bad("cols", f"no {', '.join(missing)} column")
        rows = f.items("rows")
        if not rows:
            raise f.bad("rows", "no polls")
        table: dict[str, list[Any]] = {c: [] for c in cols}
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(cols):
                raise f.bad(f"rows[{i}]", f"{_kind(row)}, expected {len(cols)} values")
            for name, value in zip(cols, row, strict=True):
                table[name].append(value)
        status = table.pop("status")
        if not all(isinstance(s, str) for s in status):
            raise f.bad("rows", "a status that is not a string")
        columns: dict[str, np.ndarray] = {}
        for name, values in table.items():
            if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                       for v in values):
                if name in cls.REQUIRED:
                    raise f.bad("rows", f"a {name} that is not a number")
                continue  # a column we do not read
            columns[name] = np.array([np.nan if v is None else float(v) for v in values])
        t = columns.pop("t")
        if np.isnan(t).any() or (np.diff(t) < 0).any():
            raise f.bad("rows", "a t that is missing or goes back in time")
        return cls(t=t, status=tuple(status), columns=columns)


@dataclass(frozen=True)
class Event:
    """A QMP event: `MIGRATION` (data.status) or `MIGRATION_PASS` (data.pass)."""

    t: float  # host time the harness received it, s since `migrate`
    t_qemu: float  # QEMU's own timestamp of it, on the same origin
    name: str
    status: str | None = None
    pass_no: int | None = None

    @classmethod
    def read(cls, f: _Fields) -> Event:
        name = f.text("event")
        data = f.obj("data")
        t = f.number("t")
        return cls(t=t, t_qemu=f.number("t_qemu", optional=True, default=t), name=name,
                   status=data.text("status") if name == "MIGRATION" else None,
                   pass_no=data.whole("pass") if name == "MIGRATION_PASS" else None)


@dataclass(frozen=True)
class RunResult:
    """How the run ended, the harness's summary of the last `query-migrate`."""

    status: str  # completed | cancelled | failed
    total_time_ms: float | None
    setup_time_ms: float | None
    downtime_ms: float | None
    cancel_at_s: float | None
    dirty_sync_count: int
    max_cpu_throttle_percentage: int
    ram: dict[str, Any]  # QEMU's final `ram` block ({} when it gave none)

    @classmethod
    def read(cls, f: _Fields) -> RunResult:
        status = f.text("status")
        ram = f.obj("ram") if f.has("ram") else _Fields({}, f"{f.where}.ram")
        for name in ("total", "transferred", "downtime-bytes", "normal", "duplicate"):
            if ram.has(name):
                ram.number(name)
        result = cls(
            status=status,
            total_time_ms=f.number("total_time_ms", optional=True),
            setup_time_ms=f.number("setup_time_ms", optional=True),
            downtime_ms=f.number("downtime_ms", optional=True),
            cancel_at_s=f.number("cancel_at_s", optional=True),
            dirty_sync_count=f.whole("rounds_dirty_sync_count"),
            max_cpu_throttle_percentage=f.whole("max_cpu_throttle_percentage",
                                                optional=True) or 0,
            ram=dict(ram.data),
        )
        if status == "completed":
            for name in ("total_time_ms", "setup_time_ms", "downtime_ms"):
                if getattr(result, name) is None:
                    raise f.bad(name, "missing for a completed run")
            for name in ("transferred", "downtime-bytes"):
                if not ram.has(name):
                    raise ram.bad(name, "missing for a completed run")
        elif status == "cancelled" and result.cancel_at_s is None:
            raise f.bad("cancel_at_s", "missing for a cancelled run")
        return result


@dataclass(frozen=True)
class GuestSource:
    """The guest's own heartbeats at the source: the pages per second it really wrote."""

    rate_before_mean: float  # before the migration (its target, unless it fell behind)
    rate_during_mean: float  # during it: throttled and stalled time included
    rate_during_min: float | None
    dropped_during: float | None  # writes it gave up on (backlog beyond max-lag)
    maxgap_us_during: float | None = None  # its longest stretch without a tick, in us

    @classmethod
    def read(cls, f: _Fields) -> GuestSource:
        return cls(rate_before_mean=f.number("rate_before_mean"),
                   rate_during_mean=f.number("rate_during_mean"),
                   rate_during_min=f.number("rate_during_min", optional=True),
                   dropped_during=f.number("dropped_during", optional=True),
                   maxgap_us_during=f.number("maxgap_us_during", optional=True))


# ------------------------------------------------------------------------ a run


@dataclass(frozen=True)
class RunRecord:
    """One recorded migration (see the module docstring)."""

    run_id: str
    source: str  # file:line it was read from
    qemu: str  # `qemu --version`'s line
    config: RunConfig
    parameters: MigrationParameters
    capabilities: tuple[str, ...]
    progress: Progress
    events: tuple[Event, ...]
    result: RunResult
    guest_src: GuestSource

    @property
    def name(self) -> str:
        """The run's short name: its id less the timestamp and harness pid prefix
        (`20261124T221839-9058-r20000-bw100` -> `r20000-bw100`)."""
        parts = self.run_id.split("-", 2)
        if len(parts) == 3 and parts[0][:8].isdigit() and parts[1].isdigit():
            return parts[2]
        return self.run_id

    @property
    def qemu_version(self) -> str:
        """`major.minor` of the QEMU that ran (`QEMU emulator version 7.2.22 (...)` -> 7.2)."""
        for word in self.qemu.split():
            numbers = word.split(".")
            if len(numbers) >= 2 and numbers[0].isdigit() and numbers[1].isdigit():
                return f"{int(numbers[0])}.{int(numbers[1])}"
        raise RecordError(f"{self.source}: versions.qemu: no version in {self.qemu!r}")

    @property
    def auto_converge(self) -> bool:
        return "auto-converge" in self.capabilities

    @property
    def completed(self) -> bool:
        return self.result.status == "completed"

    @property
    def ram_total_bytes(self) -> int:
        """QEMU's `ram.total`: every migratable RAMBlock (RAM and ROMs)."""
        total = self.result.ram.get("total")
        if total is None:
            column = self.progress["total"] if "total" in self.progress.columns else None
            seen = column[~np.isnan(column)] if column is not None else []
            if not len(seen):
                raise RecordError(f"{self.source}: no ram.total in the result or the polls")
            total = seen[-1]
        return int(total)

    def passes(self) -> list[Event]:
        """The MIGRATION_PASS events (one per dirty-bitmap sync), in order."""
        return [e for e in self.events if e.name == "MIGRATION_PASS"]

    def status_at(self, status: str) -> float | None:
        """QEMU's time of the first MIGRATION event to *status* (s), None if none."""
        for e in self.events:
            if e.name == "MIGRATION" and e.status == status:
                return e.t_qemu
        return None

    @property
    def setup_ms(self) -> float:
        """QEMU's setup time: the result's, else until the MIGRATION event to `active`."""
        if self.result.setup_time_ms is not None:
            return self.result.setup_time_ms
        active = self.status_at("active")
        if active is None:
            raise RecordError(f"{self.source}: no setup time (no result.setup_time_ms and "
                              "no MIGRATION event to 'active')")
        return active * 1e3

    @property
    def end_ms(self) -> float:
        """Since `migrate`: the end of a completed run (total-time), the cancel of a
        cancelled one (the harness's `migrate_cancel`)."""
        if self.completed:
            return self.result.total_time_ms
        if self.result.cancel_at_s is not None:
            return self.result.cancel_at_s * 1e3
        return float(self.progress.t[-1]) * 1e3

    @property
    def transferred_bytes(self) -> int:
        """Bytes sent: the final `ram.transferred`, else (a cancelled run, which has no
        final answer) the last poll's, at most one poll before the cancel."""
        if "transferred" in self.result.ram:
            return int(self.result.ram["transferred"])
        column = self.progress["transferred"]
        seen = column[~np.isnan(column)]
        return int(seen[-1]) if len(seen) else 0

    @classmethod
    def read(cls, data: object, source: str) -> RunRecord:
        f = _Fields(data, source)
        run_id = f.text("run_id")
        versions = f.obj("versions")
        capabilities = f.items("capabilities_on")
        if not all(isinstance(c, str) for c in capabilities):
            raise f.bad("capabilities_on", "expected an array of names")
        events = tuple(Event.read(_Fields(e, f"{source}.events[{i}]"))
                       for i, e in enumerate(f.items("events")))
        record = cls(
            run_id=run_id, source=source, qemu=versions.text("qemu"),
            config=RunConfig.read(f.obj("config")),
            parameters=MigrationParameters.read(f.obj("migration_parameters")),
            capabilities=tuple(capabilities), progress=Progress.read(f.obj("progress")),
            events=events, result=RunResult.read(f.obj("result")),
            guest_src=GuestSource.read(f.obj("guest_src")),
        )
        if not record.passes():
            raise RecordError(f"{source}.events: no MIGRATION_PASS event")
        record.qemu_version  # noqa: B018 (checked now, not when first used)
        record.ram_total_bytes  # noqa: B018
        return record


def iter_records(path: Path) -> Iterator[RunRecord]:
    """The records of one runs.jsonl, in file order (blank lines skipped).

    Raise `RecordError` for a file that cannot be read, a line that is not
    JSON, or a record whose fields are missing or of the wrong type.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RecordError(f"{path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise RecordError(f"{path}: not UTF-8 text (a runs.jsonl is JSON lines)") from None
    found = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordError(f"{where}: not JSON ({err.msg}, column {err.colno})") from None
        found = True
        yield RunRecord.read(data, where)
    if not found:
        raise RecordError(f"{path}: no run records (an empty file)")


def read_records(paths: Sequence[Path]) -> list[RunRecord]:
    """Every record of every file, in order. Raise `RecordError` (see `iter_records`),
    also for two runs with the same id."""
    records = [r for path in paths for r in iter_records(Path(path))]
    seen: dict[str, str] = {}
    for r in records:
        if r.run_id in seen:
            raise RecordError(f"{r.source}: run {r.run_id} is already at {seen[r.run_id]}")
        seen[r.run_id] = r.source
    return records
