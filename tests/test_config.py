"""Scenario loading: defaults, merging, --set, validation messages, round trips."""

import dataclasses
import tomllib

import pytest

from migrate.config import (
    CONFIGS_DIR,
    DEFAULT_CONFIG,
    KNOWN_STRATEGIES,
    ConfigError,
    LinkParams,
    MigrationParams,
    Scenario,
    apply_override,
    load_scenario,
    scenario_from_dict,
)
from tests.records import every_field_set
from vmmodel.costs import CostTable

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


def test_strategies_in_default_comment_are_known():
    assert set(KNOWN_STRATEGIES) == {
        "walk",
        "rmap",
        "heuristic",
        "rmap-noflush",
        "protect-before-take",
    }


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
    ("guest.slice=0s", "guest.slice", "'0s'"),
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
    with pytest.raises(ConfigError, match=r"^config: config: .*bad\.toml: "):
        load_scenario(bad)
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
    assert s.with_overrides([]) == s
    # the resolved dict is plain TOML data: every key it writes is one we read
    assert scenario_from_dict(tomllib.loads(_to_toml(data))) == s


@pytest.mark.parametrize("cls", [MigrationParams, LinkParams])
def test_round_trip_every_dataclass(cls):
    """Every field away from its default (derived from the field types), there and back."""
    params = every_field_set(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        assert getattr(params, f.name) != getattr(default, f.name), f.name
    assert cls.from_dict(tomllib.loads(_to_toml(params.to_dict()))) == params
    assert MigrationParams.from_dict({}) == MigrationParams()
    assert LinkParams.from_dict({}) == LinkParams()


def test_to_dict_uses_toml_spelling():
    data = load_scenario(None).to_dict()
    assert data["migration"]["downtime-limit"] == "300ms"
    assert data["migration"]["max-bandwidth"] == "128MiB/s"
    assert data["link"] == {"bandwidth": "10Gbit/s", "latency": "100us"}
    assert data["guest"]["memory"] == "1GiB"
    assert data["guest"]["workload"]["working-set"] == "768MiB"  # 75 % of 1 GiB, resolved
    assert data["mmu"]["costs"]["name"] == "kvm-x86"


def test_with_overrides():
    base = load_scenario(None, ["guest.workload.working-set=100%"])
    s = base.with_overrides(["guest.memory=2GiB", "mmu.strategy=walk"])
    assert s.guest.memory_pages == 2 * base.guest.memory_pages
    assert s.guest.workload.working_set_pages == s.guest.memory_pages  # "100%" follows memory
    assert s.mmu.strategy == "walk"
    assert base.mmu.strategy == "heuristic"
    assert dataclasses.replace(s, mmu=base.mmu, guest=base.guest) == base


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
