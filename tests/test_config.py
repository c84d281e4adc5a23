"""Scenario loading: defaults, merging, --set, validation messages, round trips."""

import dataclasses
import re
import tomllib
import tracemalloc

import pytest

from migrate import cli
from migrate.config import (
    CLOCKS,
    COMPRESSIONS,
    CONFIGS_DIR,
    COST_CEILINGS_NS,
    DEFAULT_CONFIG,
    KNOWN_STRATEGIES,
    NO_CONVERGENCE_POLICIES,
    ConfigError,
    LinkParams,
    MigrationParams,
    Scenario,
    apply_override,
    host,
    load_scenario,
    scenario_from_dict,
)
from migrate.config import scenario as scenario_module
from migrate.config.host import (
    available_memory_bytes,
    destination_memory_bytes,
    model_memory_bytes,
)
from migrate.config.schema import Choice, Flag, Rate, Text, Time, keys_of
from migrate.config.specs import (
    GUEST_SCHEMA,
    MMU_SCHEMA,
    PARTS_KEY,
    PHASES_KEY,
    WORKLOAD_SCHEMA,
    spec_fields_without_key,
)
from tests.procs import SMALL, precopy
from vmmodel import MMU_SHAPES, STRATEGIES, WORKLOAD_KINDS, CostTable, Vm

MiB, GiB = 1024**2, 1024**3

PHASES = (
    'guest.workload.phases=[{kind="uniform", duration="2s", rate=50000}, '
    '{kind="idle", duration="500ms"}]'
)


def test_default_scenario():
    s = load_scenario(None)
    assert s.seed == 1
    assert s.clock == "virtual"
    assert s.guest.memory_pages == GiB // 4096
    assert s.guest.vcpus == 4
    assert s.guest.vga_pages == 0
    assert s.guest.slice_ns == 1_000_000
    w = s.guest.workload
    assert (w.kind, w.rate, w.prefill, w.hot_writes, w.hot_memory) == (
        "hotspot",
        25000.0,
        True,
        0.9,
        0.05,
    )
    assert w.working_set_pages == s.guest.memory_pages * 3 // 4  # "75%", as an explicit count
    assert w.phases == ()
    assert (s.mmu.shape, s.mmu.strategy, s.mmu.mapped_pages) == ("tdp", "heuristic", 16384)
    assert s.costs.name == "kvm-x86"
    assert s.migration.downtime_limit_ns == 300_000_000
    assert s.migration.max_bandwidth_bps == 128 * MiB
    assert s.migration.max_time_ns == 120 * 10**9
    assert s.link.bandwidth_bps == 10e9 / 8
    assert s.link.latency_ns == 100_000


def test_code_defaults_match_default_toml():
    s = load_scenario(None)
    assert s.migration == MigrationParams()
    assert s.link == LinkParams()
    assert set(tomllib.loads(DEFAULT_CONFIG.read_text())) == set(s.to_dict())


def _choices_in_comment(key: str) -> list[str]:
    """Return the choices that configs/default.toml's comment lists for *key* ("a | b")."""
    for line in DEFAULT_CONFIG.read_text().splitlines():
        if line.split("=")[0].strip() == key and "#" in line:
            comment = line.split("#", 1)[1]
            return [word.split()[0].strip('"') for word in comment.split("|")]
    raise AssertionError(f"no {key} = line with a comment in {DEFAULT_CONFIG}")


def test_strategies_in_default_comment_are_known():
    assert KNOWN_STRATEGIES == tuple(STRATEGIES)
    assert _choices_in_comment("strategy") == list(KNOWN_STRATEGIES)


@pytest.mark.parametrize(("key", "choices"), [
    ("kind", WORKLOAD_KINDS), ("shape", MMU_SHAPES), ("clock", CLOCKS),
    ("on-no-convergence", NO_CONVERGENCE_POLICIES), ("compression", COMPRESSIONS),
])
def test_choices_in_default_comments_are_the_accepted_ones(key, choices):
    assert _choices_in_comment(key) == list(choices)


# --- overrides ----------------------------------------------------------------


def test_set_nested_keys_and_types():
    s = load_scenario(
        None,
        [
            "mmu.strategy=rmap",
            "guest.workload.rate=50000",
            "guest.vga=true",
            "guest.memory=2GiB",
            "migration.downtime-limit=50ms",
            "link.bandwidth=1Gbit/s",
            "seed=7",
        ],
    )
    assert s.mmu.strategy == "rmap"
    assert s.guest.workload.rate == 50000.0
    assert s.guest.vga_pages == 16 * MiB // 4096
    assert s.guest.memory_pages == 2 * GiB // 4096
    assert s.guest.workload.working_set_pages == 2 * GiB // 4096 * 3 // 4  # "75%" of 2 GiB
    assert s.migration.downtime_limit_ns == 50_000_000
    assert s.link.bandwidth_bps == 1.25e8
    assert s.seed == 7


def test_set_later_wins_and_tables_merge():
    s = load_scenario(
        None, ["mmu.strategy=rmap", "mmu.strategy=walk", "guest.workload={rate=10, kind='uniform'}"]
    )
    assert s.mmu.strategy == "walk"
    assert s.guest.workload.kind == "uniform"
    assert s.guest.workload.rate == 10.0
    assert s.guest.workload.hot_writes == 0.9  # the rest of the table stays


def test_set_phases_array():
    s = load_scenario(None, ["guest.workload.kind=phases", PHASES])
    w = s.guest.workload
    assert w.kind == "phases"
    assert [(p.kind, p.duration_ns, p.rate) for p in w.phases] == [
        ("uniform", 2 * 10**9, 50000.0),
        ("idle", 500_000_000, 25000.0),
    ]
    # a phase inherits nothing from the top table: missing keys take the model's defaults
    assert w.phases[1].working_set_pages == s.guest.memory_pages


def test_set_mix_parts():
    s = load_scenario(
        None,
        [
            "guest.vga=true",
            "guest.workload.kind=mix",
            'guest.workload.parts=[{kind="zipf", working-set="25%"}, {kind="vga", fps=60}]',
        ],
    )
    ram, vga = s.guest.workload.parts
    assert ram.working_set_pages == s.guest.memory_pages // 4
    assert vga.working_set_pages == s.guest.vga_pages  # a share of the framebuffer slot
    assert vga.fps == 60.0


def test_set_value_that_is_not_toml_is_a_string():
    assert apply_override({}, "mmu.costs=kvm-x86") == {"mmu": {"costs": "kvm-x86"}}
    assert apply_override({}, "a.b=1GiB") == {"a": {"b": "1GiB"}}
    assert apply_override({}, "a= 'quoted' ") == {"a": "quoted"}
    assert apply_override({}, "a=1.5") == {"a": 1.5}
    assert apply_override({}, "a=") == {"a": ""}


@pytest.mark.parametrize("override", ["strategy", "=rmap", "mmu..strategy=rmap", "mmu.=x"])
def test_set_malformed(override):
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_scenario(None, [override])


def test_set_through_a_value_that_is_not_a_table():
    with pytest.raises(ConfigError, match=r"--set seed\.x: 'seed' is not a table"):
        load_scenario(None, ["seed.x=1"])


# --- errors name the key and the value ----------------------------------------


_KIND_PHASES = "guest.workload.kind=phases"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mmu.stratgy=rmap"], "unknown key 'mmu.stratgy' (did you mean 'mmu.strategy'?)"),
        (["colour=1"], "unknown key 'colour'"),
        (["guest.workload.colour=1"], "unknown key 'guest.workload.colour'"),
        (["guest.workload.duration='1s'"], "unknown key 'guest.workload.duration'"),
        (
            [_KIND_PHASES, "guest.workload.phases=[{kind='idle', duration='1s', fsp=3}]"],
            "unknown key 'guest.workload.phases[0].fsp' "
            "(did you mean 'guest.workload.phases[0].fps'?)",
        ),
        (
            [_KIND_PHASES, "guest.workload.phases=[{kind='idle', duration='1s', phases=[]}]"],
            "unknown key 'guest.workload.phases[0].phases'",
        ),
        (
            ["guest.workload.kind=mix", "guest.workload.parts=[{kind='idle', parts=[]}]"],
            "unknown key 'guest.workload.parts[0].parts'",
        ),
        (
            ["migration.downtime=1s"],
            "unknown key 'migration.downtime' (did you mean 'migration.downtime-limit'?)",
        ),
        (["link.rate=1"], "unknown key 'link.rate'"),
        # within a table, a misspelt key is reported before a bad value
        (
            ["guest.memory=1XB", "guest.memroy=1GiB"],
            "unknown key 'guest.memroy' (did you mean 'guest.memory'?)",
        ),
    ],
)
def test_unknown_keys(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_scenario(None, overrides)
    assert str(err.value) == f"config: {message}"


BAD_VALUES = [
    # override, key named, value named
    ("seed=-1", "seed", "-1"),
    ("seed=1.5", "seed", "1.5"),
    ("seed='one'", "seed", "'one'"),
    ("clock=real", "clock", "'real'"),
    ("guest=5", "guest", "5"),
    ("guest.memory=1001MiB", "guest.memory", "'1001MiB'"),
    ("guest.memory=1XB", "guest.memory", "'1XB'"),
    ("guest.memory=0", "guest.memory", "0"),
    ("guest.memory=true", "guest.memory", "True"),
    ("guest.vcpus=0", "guest.vcpus", "0"),
    ("guest.vcpus=2.0", "guest.vcpus", "2.0"),
    ("guest.vga=1", "guest.vga", "1"),
    ("guest.vga-memory=5000", "guest.vga-memory", "5000"),
    ("guest.slice=5", "guest.slice", "5"),
    ("guest.slice=0s", "guest.slice", "0s"),
    ("guest.workload=idle", "guest.workload", "'idle'"),
    ("guest.workload.kind=busy", "guest.workload.kind", "'busy'"),
    ("guest.workload.kind=vga", "guest.workload.kind", "'vga'"),
    ("guest.workload.rate=-5", "guest.workload.rate", "-5"),
    ("guest.workload.rate=fast", "guest.workload.rate", "'fast'"),
    ("guest.workload.working-set=2GiB", "guest.workload.working-set", "'2GiB'"),
    ("guest.workload.working-set=0%", "guest.workload.working-set", "'0%'"),
    ("guest.workload.working-set=150%", "guest.workload.working-set", "'150%'"),
    ("guest.workload.working-set=5000", "guest.workload.working-set", "5000"),
    ("guest.workload.prefill=yes", "guest.workload.prefill", "'yes'"),
    ("guest.workload.hot-writes=1.5", "guest.workload.hot-writes", "1.5"),
    ("guest.workload.hot-memory=0", "guest.workload.hot-memory", "0"),
    ("guest.workload.region=2", "guest.workload.region", "2"),
    ("guest.workload.fps=0", "guest.workload.fps", "0"),
    ("guest.workload.phases=[{kind='idle', duration='1s'}]", "guest.workload.phases", "'hotspot'"),
    ("guest.workload.phases=3", "guest.workload.phases", "3"),
    ("guest.workload.kind=phases", "guest.workload.phases", "at least one phase"),
    ("guest.workload.kind=mix", "guest.workload.parts", "at least one part"),
    ("mmu=rmap", "mmu", "'rmap'"),
    ("mmu.shape=ept", "mmu.shape", "'ept'"),
    ("mmu.strategy=fast", "mmu.strategy", "'fast'"),
    ("mmu.strategy=1", "mmu.strategy", "1"),
    ("mmu.max-mmu-pages=-1", "mmu.max-mmu-pages", "-1"),
    ("mmu.tlb-entries=0", "mmu.tlb-entries", "0"),
    ("mmu.address-spaces=100", "mmu.address-spaces", "100"),
    ("mmu.mapped-memory=1000", "mmu.mapped-memory", "1000"),
    ("mmu.shared=1.5", "mmu.shared", "1.5"),
    ("mmu.costs=5", "mmu.costs", "5"),
    ("mmu.costs=nosuch", "mmu.costs", "'nosuch'"),
    ("mmu.costs=/nonexistent/costs.toml", "mmu.costs", "/nonexistent/costs.toml"),
    ("mmu.costs={tlb_flush_ns='fast'}", "mmu.costs", "'fast'"),
    ("mmu.costs={tlb_flush_ns=-1}", "mmu.costs", "tlb_flush_ns"),
    ("mmu.costs={tlb_flsh_ns=1}", "mmu.costs", "tlb_flsh_ns"),
    ("migration.downtime-limit=300", "migration.downtime-limit", "300"),
    ("migration.downtime-limit=0ms", "migration.downtime-limit", "0"),
    ("migration.max-bandwidth=0", "migration.max-bandwidth", "0"),
    ("migration.max-bandwidth=1Gb/s", "migration.max-bandwidth", "'1Gb/s'"),
    ("migration.max-iterations=0", "migration.max-iterations", "0"),
    ("migration.max-time=1h", "migration.max-time", "'1h'"),
    ("migration.on-no-convergence=pray", "migration.on-no-convergence", "'pray'"),
    ("migration.batch-pages=0", "migration.batch-pages", "0"),
    ("migration.batch-pages=4097", "migration.batch-pages", "4097"),
    ("link.bandwidth=-1", "link.bandwidth", "-1"),
    ("link.latency=-1us", "link.latency", "'-1us'"),
]


@pytest.mark.parametrize(("override", "key", "value"), BAD_VALUES)
def test_bad_values_name_key_and_value(override, key, value):
    with pytest.raises(ConfigError) as err:
        load_scenario(None, [override])
    message = str(err.value)
    assert message.startswith(f"config: {key}"), message
    assert value in message
    assert "\n" not in message


def test_bad_value_inside_a_phase_names_the_phase():
    with pytest.raises(ConfigError, match=r"^config: guest\.workload\.phases\[1\]\.rate: -1"):
        load_scenario(
            None,
            [
                "guest.workload.kind=phases",
                "guest.workload.phases=[{kind='idle', duration='1s'}, "
                "{kind='uniform', duration='1s', rate=-1}]",
            ],
        )
    with pytest.raises(ConfigError, match=r"^config: guest\.workload\.phases\[0\]\.duration"):
        load_scenario(None, ["guest.workload.kind=phases", "guest.workload.phases=[{kind='idle'}]"])
    with pytest.raises(ConfigError, match=r"^config: guest\.workload\.phases\[0\]\.kind"):
        load_scenario(
            None,
            [
                "guest.workload.kind=phases",
                "guest.workload.phases=[{kind='phases', duration='1s'}]",
            ],
        )


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- files ---------------------------------------------------------------------


def test_user_file_merges_over_default(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(
        '[guest]\nmemory = "64MiB"\n[guest.workload]\nkind = "uniform"\n[mmu]\nstrategy = "walk"\n'
    )
    s = load_scenario(path, ["mmu.strategy=rmap"])
    assert s.guest.memory_pages == 64 * MiB // 4096
    assert s.guest.workload.kind == "uniform"
    assert s.guest.workload.rate == 25000.0  # from default.toml
    assert s.mmu.strategy == "rmap"  # --set wins over the file
    assert load_scenario(str(path)).mmu.strategy == "walk"


def test_user_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read '.*missing\.toml'"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[guest\n")
    with pytest.raises(ConfigError, match=r"^config: [^:]*bad\.toml: ") as err:
        load_scenario(bad)
    assert "config: config:" not in str(err.value)  # one prefix, not two
    typo = tmp_path / "typo.toml"
    typo.write_text("[guest]\nmemroy = '1GiB'\n")
    with pytest.raises(ConfigError, match=r"unknown key 'guest\.memroy'"):
        load_scenario(typo)


def test_costs_by_name():
    s = load_scenario(None, ["mmu.costs=kvm-x86"])
    with open(CONFIGS_DIR / "costs" / "kvm-x86.toml", "rb") as f:
        assert s.costs == CostTable.from_dict(tomllib.load(f))


def test_costs_by_path(tmp_path):
    path = tmp_path / "slow-ipi.toml"
    path.write_text("tlb_flush_ns = 20000\n")
    s = load_scenario(None, [f"mmu.costs={path}"])
    assert s.costs.tlb_flush_ns == 20000.0
    assert s.costs.name == "slow-ipi"  # a file without a name is named after itself
    assert s.costs.spte_visit_ns == CostTable().spte_visit_ns


def test_costs_path_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "costs.toml").write_text('name = "mine"\nrmap_step_ns = 7\n')
    (tmp_path / "scenario.toml").write_text('[mmu]\ncosts = "costs.toml"\n')
    monkeypatch.chdir(CONFIGS_DIR)  # anywhere but tmp_path
    s = load_scenario(tmp_path / "scenario.toml")
    assert (s.costs.name, s.costs.rmap_step_ns) == ("mine", 7.0)


def test_costs_inline_table():
    s = load_scenario(None, ["mmu.costs={name='fast-lock', lock_acquire_ns=5}"])
    assert (s.costs.name, s.costs.lock_acquire_ns) == ("fast-lock", 5.0)


def test_costs_file_unknown_constant(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("tlb_flush_ns = 1\ntlb_flsuh_ns = 2\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(None, [f"mmu.costs={path}"])
    message = str(err.value)
    assert message.startswith("config: mmu.costs: ")
    assert str(path) in message
    assert "tlb_flsuh_ns" in message


def test_costs_unknown_name_lists_the_tables():
    with pytest.raises(ConfigError, match=r"'nosuch' is not a cost table .*have: .*kvm-x86"):
        load_scenario(None, ["mmu.costs=nosuch"])


# --- round trips ---------------------------------------------------------------


ROUND_TRIPS = [
    [],
    [
        "guest.vga=true",
        "guest.vga-memory=32MiB",
        "guest.workload.kind=vga",
        "guest.workload.working-set=50%",
    ],
    ["guest.workload.kind=phases", PHASES],
    [
        "guest.vga=true",
        "guest.workload.kind=mix",
        "guest.workload.parts=[{kind='phases', phases=[{kind='zipf', duration='1s'}]}, "
        "{kind='vga'}]",
    ],
    ["guest.workload.working-set=33%", "guest.memory=6MiB", "guest.slice=250us"],
    ["mmu.shape=shadow", "mmu.mapped-memory=12KiB", "mmu.shared=0", "mmu.costs={tlb_flush_ns=1.5}"],
    [
        "migration.max-bandwidth=33333333.333333332",
        "link.bandwidth=1Gbit/s",
        "link.latency=0",
        "migration.max-time=1.5s",
        "migration.on-no-convergence=cancel",
    ],
    ["clock=wall", "seed=123456789", "guest.workload.rate=0.5"],
]


@pytest.mark.parametrize("overrides", ROUND_TRIPS)
def test_round_trip(overrides):
    s = load_scenario(None, overrides)
    data = s.to_dict()
    assert scenario_from_dict(data) == s
    assert Scenario.from_dict(data) == s
    # the resolved dict is plain TOML data: every key it writes is one we read
    assert scenario_from_dict(tomllib.loads(_to_toml(data))) == s


def _not_default(kind, default):
    """Return an in-bounds value of *kind* other than *default*."""
    if isinstance(kind, Choice):
        return next(c for c in kind.choices if c != default)
    if isinstance(kind, Flag):
        return not default
    if isinstance(kind, Rate):
        return default * 2 if default else 1 << 20
    if isinstance(kind, Text):
        return next(c for c in ("qemu-7.2-tcg", "none") if c != default)
    if isinstance(kind, Time):
        return default + 1_000_000 if kind.high is None or default < kind.high else default - 1
    return default + 1 if default < kind.high else default - 1  # Integer


@pytest.mark.parametrize("cls", [MigrationParams, LinkParams])
def test_round_trip_every_dataclass(cls):
    defaults = cls()
    changed = cls(**{f: _not_default(k.kind, getattr(defaults, f)) for f, k in keys_of(cls)})
    assert all(getattr(changed, f) != getattr(defaults, f) for f, _ in keys_of(cls))
    assert cls.from_dict(changed.to_dict()) == changed
    assert cls.from_dict({}) == defaults
    assert [f.name for f in dataclasses.fields(cls)] == [f for f, _ in keys_of(cls)]


def test_every_spec_field_has_one_key():
    assert spec_fields_without_key() == {"WorkloadSpec": set(), "GuestSpec": set(),
                                         "MmuSpec": set()}


def _readme_tables() -> dict[str, dict[str, str]]:
    """Return the README's Configuration key tables: `[table]` -> key -> meaning."""
    text = (CONFIGS_DIR.parent / "README.md").read_text()
    text = text[text.index("## Configuration"):text.index("### `--set`")]
    tables: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        head = re.match(r"^`(\[[a-z.]+\])`", line)
        if head:
            current = head[1]
        row = re.match(r"^\| `([a-z-]+)` \| .*? \| (.*) \|$", line)
        if row and current:
            tables.setdefault(current, {})[row[1]] = row[2]
    return tables


def test_readme_key_tables_are_the_schema():
    schema = {
        "[guest]": {s.key.name: s.key.doc for s in GUEST_SCHEMA if s.key.name != "workload"},
        "[guest.workload]": {s.key.name: s.key.doc
                             for s in (*WORKLOAD_SCHEMA, PHASES_KEY, PARTS_KEY)},
        "[mmu]": {s.key.name: s.key.doc for s in MMU_SCHEMA},
        "[migration]": {k.name: k.doc for _, k in keys_of(MigrationParams)},
        "[link]": {k.name: k.doc for _, k in keys_of(LinkParams)},
    }
    assert _readme_tables() == schema


def test_to_dict_uses_toml_spelling():
    data = load_scenario(None).to_dict()
    assert data["migration"]["downtime-limit"] == "300ms"
    assert data["migration"]["max-bandwidth"] == "128MiB/s"
    assert data["link"] == {"bandwidth": "10Gbit/s", "latency": "100us"}
    assert data["guest"]["memory"] == "1GiB"
    assert data["guest"]["workload"]["working-set"] == "768MiB"  # 75 % of 1 GiB, resolved
    assert data["mmu"]["costs"]["name"] == "kvm-x86"


def test_set_over_a_file_keeps_a_share_a_share(tmp_path):
    """--set applies to what the user wrote, not to the resolved scenario: "50%" stays 50%."""
    path = tmp_path / "half.toml"
    path.write_text('[guest]\nmemory = "64MiB"\n[guest.workload]\nworking-set = "50%"\n')
    s = load_scenario(path, ["guest.memory=128MiB"])
    assert s.guest.workload.working_set_pages == s.guest.memory_pages // 2
    assert load_scenario(path).guest.workload.working_set_pages == s.guest.memory_pages // 4


def _to_toml(data: dict, prefix: str = "") -> str:
    """A minimal TOML writer for the test: scalars, arrays of tables, tables."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v + '"'
        if isinstance(v, list):
            return "[" + ", ".join(inline(x) for x in v) + "]"
        return repr(v)

    def inline(d):
        return (
            "{"
            + ", ".join(
                f'"{k}" = {value(v) if not isinstance(v, dict) else inline(v)}'
                for k, v in d.items()
            )
            + "}"
        )

    lines = [f'"{k}" = {value(v)}' for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{prefix}.{k}" if prefix else k
            lines.append(f"\n[{name}]")
            lines.append(_to_toml(v, name))
    return "\n".join(lines)


@pytest.mark.parametrize("override,key", [
    ("link.bandwidth=1bit/s", "link.bandwidth"),
    ("migration.max-bandwidth=10B/s", "migration.max-bandwidth"),
    ("link.latency=1e30s", "link.latency"),
    ("guest.slice=1ns", "guest.slice"),
    ("guest.workload.rate=1e300", "guest.workload.rate"),
    ("guest.memory=2048TiB", "guest.memory"),
])
def test_bounds_that_keep_a_run_finite(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_scenario(None, [override])


def test_a_phase_without_duration_says_it_is_missing():
    with pytest.raises(ConfigError) as err:
        load_scenario(None, ["guest.workload.kind=phases", "guest.workload.phases=[{kind='idle'}]"])
    assert str(err.value) == ("config: guest.workload.phases[0].duration: missing "
                              "(each phase needs a positive duration)")


# --- inputs that used to hang, crash or exhaust memory (issue 10) --------------


def _one_line_error(*args: str):
    """Run precopy with *args*; return its stderr, asserting exit 2 and one line."""
    proc = precopy(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("name", sorted(COST_CEILINGS_NS))
@pytest.mark.parametrize("value", ["inf", "nan", "1e13", "above"])
def test_every_cost_constant_is_finite_and_under_its_ceiling(name, value):
    text = repr(COST_CEILINGS_NS[name] * 1.5) if value == "above" else value
    with pytest.raises(ConfigError) as err:
        load_scenario(None, [f"mmu.costs={{{name}={text}}}"])
    message = str(err.value)
    assert message.startswith("config: mmu.costs: ") and name in message, message
    assert f"{COST_CEILINGS_NS[name]:,.0f}" in message  # the ceiling, as the README gives it
    at_ceiling = load_scenario(None, [f"mmu.costs={{{name}={COST_CEILINGS_NS[name]!r}}}"])
    assert getattr(at_ceiling.costs, name) == COST_CEILINGS_NS[name]


def test_every_cost_constant_has_a_ceiling_and_shipped_tables_keep_to_them():
    assert set(COST_CEILINGS_NS) == {f.name for f in dataclasses.fields(CostTable)} - {"name"}
    for path in sorted((CONFIGS_DIR / "costs").glob("*.toml")):
        load_scenario(None, [f"mmu.costs={path}"])  # raises if a shipped constant is out


def test_cost_file_with_inf_names_the_file(tmp_path):
    path = tmp_path / "inf.toml"
    path.write_text("tlb_flush_ns = inf\n")
    with pytest.raises(ConfigError, match=r"^config: mmu\.costs: .*inf\.toml: tlb_flush_ns = inf"):
        load_scenario(None, [f"mmu.costs={path}"])


def test_infinite_cost_is_a_usage_error_not_a_hang():
    stderr = _one_line_error("run", str(SMALL), "--set", "mmu.costs={tlb_flush_ns=inf}")
    assert "mmu.costs" in stderr and "tlb_flush_ns = inf" in stderr


VGA = ["guest.vga=true", "guest.workload.kind=vga"]


@pytest.mark.parametrize(("overrides", "key"), [
    ([*VGA, "guest.workload.fps=1e9"], "guest.workload.fps"),
    ([*VGA, "guest.workload.fps=1e300"], "guest.workload.fps"),
    ([*VGA, "guest.workload.fps=inf"], "guest.workload.fps"),
    # each bound alone is fine, but a 4 GiB framebuffer repainted 1000 times a second is not
    ([*VGA, "guest.vga-memory=4GiB", "guest.workload.fps=1000", "guest.workload.region=1"],
     "guest.workload.fps"),
    (["guest.workload.kind=zipf", "guest.workload.exponent=1e308"], "guest.workload.exponent"),
    (["guest.workload.exponent=-1"], "guest.workload.exponent"),
    (["guest.workload.rate=1e400"], "guest.workload.rate"),
    (["guest.workload.rate=inf"], "guest.workload.rate"),
    (["guest.workload.hot-writes=nan"], "guest.workload.hot-writes"),
    (["guest.workload.region=inf"], "guest.workload.region"),
    (["guest.slice=1e30s"], "guest.slice"),
    (["mmu.shared=nan"], "mmu.shared"),
    (["guest.workload.kind=mix", "guest.vga=true",
      "guest.workload.parts=[{kind='vga', fps=1e9}]"], r"guest.workload.parts[0].fps"),
])
def test_rate_like_keys_are_bounded_at_load_time(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_scenario(None, overrides)
    assert str(err.value).startswith(f"config: {key}: "), str(err.value)


def test_vga_at_a_billion_fps_is_a_usage_error_not_a_hang():
    stderr = _one_line_error("run", str(SMALL), *(f"--set={o}" for o in VGA),
                             "--set", "guest.workload.fps=1e9")
    assert "guest.workload.fps" in stderr


def test_config_with_a_bom_is_read_as_without(tmp_path):
    plain = SMALL.read_bytes()
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + plain)
    assert load_scenario(bom) == load_scenario(SMALL)


def test_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("# caf\u00e9\nseed = 3\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"^config: .*latin1\.toml: not UTF-8 text"):
        load_scenario(path)
    stderr = _one_line_error("run", str(path))
    assert "latin1.toml" in stderr and "UTF-8" in stderr
    costs = tmp_path / "costs-latin1.toml"
    costs.write_bytes(b"# \xff\nspte_visit_ns = 1\n")
    with pytest.raises(ConfigError, match=r"^config: mmu\.costs: .*costs-latin1\.toml: not UTF-8"):
        load_scenario(None, [f"mmu.costs={costs}"])


@pytest.mark.parametrize(("override", "key"), [
    ("mmu.tlb-entries=1000000000000", "mmu.tlb-entries"),
    ("mmu.max-mmu-pages=1000000000000", "mmu.max-mmu-pages"),
    ("guest.vcpus=100000", "guest.vcpus"),
])
def test_sizes_the_model_allocates_are_bounded(override, key):
    with pytest.raises(ConfigError, match=f"^config: {re.escape(key)}: "):
        load_scenario(None, [override])


def test_a_guest_the_host_cannot_hold_names_guest_memory(monkeypatch):
    fits = load_scenario(None)
    need = model_memory_bytes(fits.guest, fits.mmu)
    monkeypatch.setattr(scenario_module, "available_memory_bytes", lambda: need)
    assert load_scenario(None) == fits  # exactly enough is enough
    with pytest.raises(ConfigError) as err:
        load_scenario(None, ["guest.memory=2GiB"])
    message = str(err.value)
    assert message.startswith("config: guest.memory: 2GiB needs about "), message
    assert "available" in message
    # a report from a bigger host still reads back: only loading a run to start checks
    assert scenario_from_dict(load_scenario(None, ["guest.memory=4MiB"]).to_dict())


def _need(*overrides: str, destination: str | None = None) -> int:
    s = scenario_from_dict({}, overrides)  # no fit check: these guests need not fit here
    need = model_memory_bytes(s.guest, s.mmu) - host.PROCESS_BASE_BYTES
    if destination:
        need += destination_memory_bytes(s.guest, destination) - host.PROCESS_BASE_BYTES
    return need


def test_memory_need_counts_written_pages_and_per_page_state():
    small, big = _need("guest.memory=64MiB"), _need("guest.memory=128MiB")
    assert big == 2 * small  # stored (auto, under 1 GiB): 4 KiB a written page, state for all
    assert _need("guest.memory=128MiB", "guest.workload.working-set=50%") < big
    assert available_memory_bytes() > 0  # this host's /proc/meminfo reads


def test_memory_need_follows_the_backing():
    """Generated pages hold no bytes: the need does not grow with the pages written."""
    written = ("guest.memory=2GiB", "guest.workload.working-set=100%")
    untouched = ("guest.memory=2GiB", "guest.workload.working-set=2MiB")
    stored = ("guest.memory-backing=stored",)
    assert _need(*written, *stored) - _need(*untouched, *stored) == 2 * GiB - 2 * MiB
    assert _need(*written) == _need(*untouched)  # auto at 2 GiB: generated
    assert _need(*written) < _need(*written, *stored) // 30
    # a 1 TiB generated guest needs about 1/40 of its size, not its size
    assert 20 * GiB < _need("guest.memory=1TiB") < 32 * GiB


@pytest.mark.parametrize(("memory", "backing"), [("1022MiB", "stored"), ("1GiB", "generated")])
def test_the_fit_check_resolves_auto_as_the_model_does(memory, backing):
    s = scenario_from_dict({}, [f"guest.memory={memory}", "guest.workload.prefill=false"])
    assert host.memory_backing(s.guest) == backing
    assert Vm(s.guest, s.mmu, s.costs, s.seed).memory.kind == backing


@pytest.mark.parametrize("overrides", [
    ("guest.memory=1GiB", "guest.memory-backing=generated"),
    ("guest.memory=256MiB", "guest.memory-backing=stored", "guest.workload.working-set=16MiB"),
    ("guest.memory=64MiB", "mmu.shape=shadow", "mmu.mapped-memory=16MiB", "guest.vcpus=8"),
    ("guest.memory=64MiB", "mmu.shape=shadow", "mmu.shared=0", "mmu.address-spaces=2"),
])
def test_the_per_page_constants_cover_what_the_model_allocates(overrides):
    """tracemalloc sees every numpy array: the model built and prefilled holds what the fit
    check counts for it (its migration arrays left out), give or take its fixed part."""
    s = scenario_from_dict({}, overrides)
    tracemalloc.start()
    try:
        vm = Vm(s.guest, s.mmu, s.costs, s.seed)
        vm.prefill()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    if vm.memory.array is not None:  # calloc'd: only the written pages are host memory
        held += host.written_pages(s.guest) * 4096 - vm.memory.array.nbytes
    counted = _need(*overrides) - s.guest.memory_pages * host.SOURCE_MIGRATION_BYTES_PER_PAGE
    fixed = 2 * MiB  # the template pool (256 KiB), TLB rings, module imports while traced
    assert counted * 0.8 < held <= counted + fixed, (held, counted)


def test_a_destination_store_is_counted_for_run():
    image = _need("guest.memory=512MiB", destination="image")
    digests = _need("guest.memory=512MiB", destination="digests")
    source = _need("guest.memory=512MiB")
    assert image - source > 384 * MiB  # the 75 % working set, received
    assert 0 < digests - source < 32 * MiB
    with pytest.raises(ValueError, match="store 'disk'"):
        destination_memory_bytes(load_scenario(None).guest, "disk")


@pytest.mark.parametrize(("memory", "available", "store"), [
    ("512MiB", 64 * GiB, "image"),  # small and fits: the image, as QEMU keeps it
    ("512MiB", 1 * GiB, "digests"),  # small but source and image would take half the host
    ("1GiB", 64 * GiB, "digests"),  # from DIGEST_STORE_FROM_PAGES up, whatever the host
    ("1GiB", None, "digests"),
    ("512MiB", None, "image"),  # the host unknown
])
def test_run_picks_the_digest_store_for_large_guests(memory, available, store):
    s = scenario_from_dict({}, [f"guest.memory={memory}"])
    assert host.run_destination_store(s.guest, s.mmu, available) == store


def test_a_guest_whose_destination_does_not_fit_beside_it_is_refused_by_run(monkeypatch):
    """The source alone fits; with run's destination (digests) it does not: exit 2, one line
    naming guest.memory, before any process starts."""
    s = scenario_from_dict({}, ["guest.memory=1TiB"])
    source = model_memory_bytes(s.guest, s.mmu)
    assert host.check_host_memory(s.guest, s.mmu, source) is None
    reason = host.check_host_memory(s.guest, s.mmu, source, destination="digests")
    assert reason.startswith("guest.memory: 1TiB needs about "), reason
    assert "destination keeping digests" in reason
    monkeypatch.setattr(scenario_module, "available_memory_bytes", lambda: source)
    monkeypatch.setattr(cli, "available_memory_bytes", lambda: source)
    monkeypatch.setattr(cli, "DestinationProcess", None)  # never reached
    assert cli.main(["run", "--set", "guest.memory=1TiB"]) == 2


def test_shadow_mapped_memory_larger_than_the_guest_is_refused():
    with pytest.raises(ConfigError, match=r"^config: mmu\.mapped-memory: '2GiB' is more than "
                                          r"guest\.memory \(1GiB\)"):
        load_scenario(None, ["mmu.shape=shadow", "mmu.mapped-memory=2GiB"])
    # tdp never reads it: the default does not bind a guest smaller than 64 MiB
    assert load_scenario(None, ["guest.memory=32MiB"]).guest.memory_pages == 32 * MiB // 4096


def test_shadow_only_keys_are_marked_in_the_readme():
    mmu = _readme_tables()["[mmu]"]
    for key_name in ("max-mmu-pages", "address-spaces", "mapped-memory", "shared"):
        assert mmu[key_name].startswith("`shadow`: "), key_name
