"""Hardware profiles: TOML files of sourced constants.

Every constant is a table {value, unit, source, status} with status one of
silicon / pre-silicon / assumption, so each reported number can be traced to
where its constants came from, and an optional range = [low, high] with
range_source saying where the spread comes from (no range: low = high = value).
Profiles live in hw_sim/profiles/; a user adds one by dropping a file there or
by passing a path.  Everything is checked here, at load, before any work:
finite, >= 0, > 0 where the model divides by it, a positive integer where a
count, low <= value <= high; each error names the file, table and key.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

from ecmt.errors import EcmtError

PROFILE_DIR = Path(__file__).parent / "profiles"
STATUSES = ("silicon", "pre-silicon", "assumption")

# Which constants each kind of profile must define, by section.  A CMOS accelerator is
# priced per operation (hw_sim/engine/cmos.py); a neuromorphic chip is a mesh of tiles of
# cores (hw_sim/engine/mesh.py): [mesh] one chip (topology, per-core limits, energy and
# latency per event, the barrier by tiles in use), [chips] a system of chips (static power,
# how chips are linked, chip-to-chip messages, the barrier across chips), [host] the
# processor cores that do what neuromorphic cores cannot (embedded x86 cores, or off chip).
REQUIRED = {
    "cmos": {"energy": ("mac", "add", "mult", "sram_read_64b", "static_power"),
             "timing": ("clock_hz", "ops_per_cycle")},
    "neuromorphic": {
        "mesh": ("width", "height", "cores_per_tile", "neurons_per_core", "synapse_memory_bits", "synapse_bits",
                 "input_axons", "output_axons", "e_synaptic_event", "t_synaptic_event", "e_neuron_access",
                 "t_neuron_access", "e_neuron_update", "t_neuron_update", "e_spike_out", "t_spike_out",
                 "e_message_out", "t_message_out", "e_message_in", "t_message_in", "e_hop_x", "t_hop_x",
                 "e_hop_y", "t_hop_y", "barrier_1"),
        "chips": ("static_power", "columns", "e_link", "t_link", "barrier_256"),
        "host": ("cores_per_chip", "cores_off_chip", "ops_per_second", "e_mac", "e_add", "e_mult",
                 "e_sram_read_64b", "e_transfer", "t_transfer"),
    },
}
# Constants a section may add (any `barrier_<tiles>` too, in [mesh]).
OPTIONAL = {"mesh": ("tiles", "link_buffer"), "chips": ("count", "tick")}

# The model divides by these: they must be > 0.
POSITIVE = {"timing.clock_hz", "timing.ops_per_cycle", "host.ops_per_second"}
# Counts: positive integers.
COUNTS = {"timing.ops_per_cycle", "mesh.width", "mesh.height", "mesh.tiles", "mesh.cores_per_tile",
          "mesh.neurons_per_core", "mesh.synapse_memory_bits", "mesh.synapse_bits", "mesh.input_axons",
          "mesh.output_axons", "mesh.link_buffer", "chips.columns", "chips.count"}
# Counts that may be zero.
COUNTS_OR_ZERO = {"host.cores_per_chip", "host.cores_off_chip"}


class ProfileError(EcmtError):
    """A malformed hardware profile (names the file and key)."""


@dataclasses.dataclass(frozen=True)
class Constant:
    value: float
    unit: str
    source: str
    status: str
    low: float
    high: float
    range_source: str = ""       # why [low, high]; empty where no range is stated (low = high = value)


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    kind: str                    # "cmos" or "neuromorphic"
    path: str
    spikes: str                  # "binary" or "graded" (neuromorphic); "values" (cmos)
    ann_baseline: str            # profile name for the ANN baseline, or "self"
    host: str
    value_bits: int              # width of values and weights in memory
    constants: dict[str, dict[str, Constant]]
    mt_form: str = "channels"    # binary spikes: "channels" (2n level channels) or "element"
    weight_sharing: bool = False
    deployment: str = "float"    # the number format deployed on it (hw_sim/deployed.py's FORMATS)
    links: tuple[tuple[int, int], ...] | None = None   # chip-to-chip links as listed ([chips] links); None: a grid
    alias_of: str | None = None  # the profile this name stands for (a file with `alias = "..."`)

    def get(self, key: str, default: float | None = None) -> float | None:
        section, name = key.split(".", 1)
        c = self.constants.get(section, {}).get(name)
        return default if c is None else c.value

    def __getitem__(self, key: str) -> float:
        """'section.name' -> value."""
        section, name = key.split(".", 1)
        return self.constants[section][name].value

    def keys(self) -> list[str]:
        """Every constant as 'section.name', in file order."""
        return [f"{s}.{k}" for s, table in self.constants.items() for k in table]

    def with_value(self, key: str, value: float) -> HardwareProfile:
        """A copy with one constant's value replaced (for re-pricing at a range end)."""
        section, name = key.split(".", 1)
        table = {**self.constants[section], name: dataclasses.replace(self.constants[section][name], value=value)}
        return dataclasses.replace(self, constants={**self.constants, section: table})

    def statuses(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for section in self.constants.values():
            for c in section.values():
                out[c.status] += 1
        return out


def _number(path: Path, key: str, field: str, value) -> float:
    """A finite number obeying the key's rule (>= 0; > 0 if divided by; positive integer if a count)."""
    where = f"{path}: key {key}.{field}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(f"{where}: expected a finite number, got {value!r}")
    if key in COUNTS and (value != int(value) or value < 1):
        raise ProfileError(f"{where}: a count, expected a positive integer, got {value!r}")
    if key in COUNTS_OR_ZERO and (value != int(value) or value < 0):
        raise ProfileError(f"{where}: a count, expected an integer >= 0, got {value!r}")
    if key in POSITIVE and value <= 0:
        raise ProfileError(f"{where}: expected a number > 0 (the model divides by it), got {value!r}")
    if value < 0:
        raise ProfileError(f"{where}: expected a number >= 0, got {value!r}")
    return float(value)


def _constant(path: Path, key: str, raw) -> Constant:
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: key {key}: expected a table {{value, unit, source, status}}")
    for field in ("value", "source", "status"):
        if field not in raw:
            raise ProfileError(f"{path}: key {key}: missing '{field}'")
    value = _number(path, key, "value", raw["value"])
    if raw["status"] not in STATUSES:
        raise ProfileError(f"{path}: key {key}.status: {raw['status']!r} is not one of {', '.join(STATUSES)}")
    if not str(raw["source"]).strip():
        raise ProfileError(f"{path}: key {key}.source: every constant needs a source")
    unknown = set(raw) - {"value", "unit", "source", "status", "range", "range_source"}
    if unknown:
        raise ProfileError(f"{path}: key {key}: unknown field(s) {sorted(unknown)}")
    span = raw.get("range")
    if span is None:
        if "range_source" in raw:
            raise ProfileError(f"{path}: key {key}.range_source: given without a range")
        return Constant(value, str(raw.get("unit", "")), str(raw["source"]), raw["status"], value, value)
    if not isinstance(span, list) or len(span) != 2:
        raise ProfileError(f"{path}: key {key}.range: expected [low, high], got {span!r}")
    low, high = (_number(path, key, "range", v) for v in span)
    if not low <= value <= high:
        raise ProfileError(f"{path}: key {key}.range: expected low <= value <= high, got [{low:g}, {high:g}] "
                           f"around {value:g}")
    note = str(raw.get("range_source", "")).strip()
    if low < high and not note:
        raise ProfileError(f"{path}: key {key}.range_source: a range needs its source")
    return Constant(value, str(raw.get("unit", "")), str(raw["source"]), raw["status"], low, high, note)


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ProfileError(f"hardware profile {name_or_path!r} not found ({path})",
                           hint=f"available: {', '.join(available_profiles())}, or a path to a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ProfileError(f"{path}: not valid TOML ({err})") from None
    head = data.get("profile")
    if not isinstance(head, dict):
        raise ProfileError(f"{path}: key profile: missing [profile] table")
    if "alias" in head:
        return _alias(path, head, data)
    for key in ("name", "kind"):
        if not isinstance(head.get(key), str):
            raise ProfileError(f"{path}: key profile.{key}: missing or not a string")
    kind = head["kind"]
    if kind not in REQUIRED:
        raise ProfileError(f"{path}: key profile.kind: {kind!r} is not one of {', '.join(REQUIRED)}")
    spikes = head.get("spikes", "values" if kind == "cmos" else None)
    if kind == "neuromorphic" and spikes not in ("binary", "graded"):
        raise ProfileError(f"{path}: key profile.spikes: must be 'binary' or 'graded'")
    unknown = set(data) - {"profile", *REQUIRED[kind]}
    if unknown:
        raise ProfileError(f"{path}: key {sorted(unknown)[0]}: not a table of a {kind} profile "
                           f"(expected {', '.join(['profile', *REQUIRED[kind]])})")
    constants: dict[str, dict[str, Constant]] = {}
    links = None
    for section, names in REQUIRED[kind].items():
        table = data.get(section)
        if not isinstance(table, dict):
            raise ProfileError(f"{path}: key {section}: missing [{section}] table")
        for name in names:
            if name not in table:
                raise ProfileError(f"{path}: key {section}.{name}: missing")
        table = dict(table)
        if section == "chips" and "links" in table:
            links = _links(path, table.pop("links"))
        for name in table:
            if name not in names and name not in OPTIONAL.get(section, ()) \
                    and not (section == "mesh" and _barrier_tiles(name) is not None):
                raise ProfileError(f"{path}: key {section}.{name}: unknown (expected {', '.join(names)}"
                                   + (f"; optional {', '.join(OPTIONAL[section])}" if section in OPTIONAL else "")
                                   + (", barrier_<tiles>" if section == "mesh" else "") + ")")
        constants[section] = {name: _constant(path, f"{section}.{name}", raw) for name, raw in table.items()}
    if kind == "neuromorphic":
        _check_system(path, constants, links)
    mt_form = head.get("mt_form", "channels")
    if mt_form not in ("channels", "element"):
        raise ProfileError(f"{path}: key profile.mt_form: must be 'channels' or 'element'")
    sharing = head.get("weight_sharing", False)
    if not isinstance(sharing, bool):
        raise ProfileError(f"{path}: key profile.weight_sharing: must be true or false")
    bits = head.get("value_bits", 32)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 64:
        raise ProfileError(f"{path}: key profile.value_bits: expected an integer from 1 to 64, got {bits!r}")
    baseline = head.get("ann_baseline", "self")
    if not isinstance(baseline, str) or not baseline:
        raise ProfileError(f"{path}: key profile.ann_baseline: expected 'self' or a CMOS profile's name")
    if baseline == "self" and kind != "cmos":
        raise ProfileError(f"{path}: key profile.ann_baseline: a {kind} profile needs a CMOS profile as its "
                           "ANN baseline")
    deployment = head.get("deployment", "float")
    from .deployed import FORMATS
    if deployment not in FORMATS:
        raise ProfileError(f"{path}: key profile.deployment: {deployment!r} is not one of {', '.join(FORMATS)}")
    return HardwareProfile(name=head["name"], description=str(head.get("description", "")), kind=kind,
                           path=str(path), spikes=spikes, ann_baseline=baseline,
                           host=str(head.get("host", "")), value_bits=bits,
                           constants=constants, mt_form=mt_form, weight_sharing=sharing, deployment=deployment,
                           links=links)


def _alias(path: Path, head: dict, data: dict) -> HardwareProfile:
    """A file that names another profile (`alias = "loihi"`): that profile under this name."""
    target = head["alias"]
    if set(data) != {"profile"} or set(head) - {"alias", "name", "description"}:
        raise ProfileError(f"{path}: key profile.alias: an alias file holds only [profile] name, alias and "
                           "description")
    if not isinstance(target, str) or not target or Path(target).suffix or target == path.stem:
        raise ProfileError(f"{path}: key profile.alias: expected the name of another shipped profile, got {target!r}")
    try:
        base = load_profile(target)
    except ProfileError as err:
        raise ProfileError(f"{path}: key profile.alias: {err}", hint=err.hint) from None
    if base.alias_of is not None:
        raise ProfileError(f"{path}: key profile.alias: {target!r} is itself an alias")
    name = head.get("name", path.stem)
    return dataclasses.replace(base, name=str(name), alias_of=base.name,
                               description=str(head.get("description", f"{base.description} (alias of {base.name})")))


def _barrier_tiles(name: str) -> int | None:
    """The tile count of a [mesh] barrier table entry `barrier_<tiles>`, or None."""
    head, _, n = name.partition("_")
    return int(n) if head == "barrier" and n.isdigit() and int(n) >= 1 else None


def _links(path: Path, raw) -> tuple[tuple[int, int], ...]:
    """[chips] links = [[a, b], ...]: the chip-to-chip links of a fixed system, by chip number."""
    where = f"{path}: key chips.links"
    if not isinstance(raw, list) or not raw:
        raise ProfileError(f"{where}: expected a non-empty list of [chip, chip] pairs, got {raw!r}")
    out = []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in pair)) or pair[0] == pair[1]:
            raise ProfileError(f"{where}[{i}]: expected a pair of two different chip numbers >= 0, got {pair!r}")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _check_system(path: Path, constants: dict, links) -> None:
    """The chip system is consistent: tiles fit the mesh, the host has a core, listed links
    join every chip of the system (which then has `count` chips)."""
    mesh, chips, host = constants["mesh"], constants["chips"], constants["host"]
    grid = mesh["width"].value * mesh["height"].value
    if "tiles" in mesh and mesh["tiles"].value > grid:
        raise ProfileError(f"{path}: key mesh.tiles: {mesh['tiles'].value:g} tiles do not fit a "
                           f"{mesh['width'].value:g} x {mesh['height'].value:g} mesh")
    if host["cores_per_chip"].value + host["cores_off_chip"].value < 1:
        raise ProfileError(f"{path}: key host.cores_per_chip: the host needs at least one core "
                           "(cores_per_chip or cores_off_chip)")
    if links is None:
        return
    if "count" not in chips:
        raise ProfileError(f"{path}: key chips.count: listed links need the system's chip count")
    n = int(chips["count"].value)
    for i, (a, b) in enumerate(links):
        if max(a, b) >= n:
            raise ProfileError(f"{path}: key chips.links[{i}]: chip {max(a, b)} does not exist "
                               f"(chips.count = {n}: chips 0..{n - 1})")
    joined = reachable(links, n)
    if len(joined) < n:
        apart = sorted(set(range(n)) - joined)
        raise ProfileError(f"{path}: key chips.links: the links do not join every chip: "
                           f"chip(s) {', '.join(map(str, apart[:8]))}{' ...' if len(apart) > 8 else ''} "
                           "cannot be reached from chip 0")


def reachable(links, n: int, start: int = 0) -> set[int]:
    """The chips joined to `start` through `links`."""
    nbr: dict[int, list[int]] = {c: [] for c in range(n)}
    for a, b in links:
        nbr[a].append(b)
        nbr[b].append(a)
    seen, stack = {start}, [start]
    while stack:
        for c in nbr[stack.pop()]:
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
