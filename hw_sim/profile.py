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

# Which constants each kind of profile must define, by section.
REQUIRED = {
    "cmos": {"energy": ("mac", "add", "mult", "sram_read_64b", "static_power"),
             "timing": ("clock_hz", "ops_per_cycle")},
    "neuromorphic": {
        "energy": ("sop", "neuron_update_active", "neuron_update_inactive", "spike_route",
                   "host_mac", "host_add", "host_mult", "host_sram_read_64b", "static_power"),
        "timing": ("sop", "neuron_update_active", "neuron_update_inactive", "barrier",
                   "host_ops_per_second"),
        "architecture": ("cores", "neurons_per_core", "synapses_per_core"),
    },
}

# The model divides by these: they must be > 0.
POSITIVE = {"timing.clock_hz", "timing.ops_per_cycle", "timing.host_ops_per_second"}
# Counts: positive integers.
COUNTS = {"timing.ops_per_cycle", "architecture.cores", "architecture.neurons_per_core",
          "architecture.synapses_per_core", "mesh.width", "mesh.height", "mesh.cores_per_tile",
          "mesh.synapse_memory_bits", "mesh.synapse_bits", "mesh.input_axons", "mesh.output_axons"}


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

    @property
    def has_mesh(self) -> bool:
        """Priced with the mapped, routed, timed mesh model (hw_sim/mesh.py)."""
        return "mesh" in self.constants

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
    for key in ("name", "kind"):
        if not isinstance(head.get(key), str):
            raise ProfileError(f"{path}: key profile.{key}: missing or not a string")
    kind = head["kind"]
    if kind not in REQUIRED:
        raise ProfileError(f"{path}: key profile.kind: {kind!r} is not one of {', '.join(REQUIRED)}")
    spikes = head.get("spikes", "values" if kind == "cmos" else None)
    if kind == "neuromorphic" and spikes not in ("binary", "graded"):
        raise ProfileError(f"{path}: key profile.spikes: must be 'binary' or 'graded'")
    constants: dict[str, dict[str, Constant]] = {}
    for section, names in REQUIRED[kind].items():
        table = data.get(section)
        if not isinstance(table, dict):
            raise ProfileError(f"{path}: key {section}: missing [{section}] table")
        for name in names:
            if name not in table:
                raise ProfileError(f"{path}: key {section}.{name}: missing")
        constants[section] = {name: _constant(path, f"{section}.{name}", raw) for name, raw in table.items()}
    if "mesh" in data:
        if kind != "neuromorphic" or not isinstance(data["mesh"], dict):
            raise ProfileError(f"{path}: key mesh: a [mesh] table belongs to a neuromorphic profile")
        from .mesh import MESH_REQUIRED
        for name in MESH_REQUIRED:
            if name not in data["mesh"]:
                raise ProfileError(f"{path}: key mesh.{name}: missing")
        constants["mesh"] = {name: _constant(path, f"mesh.{name}", raw) for name, raw in data["mesh"].items()}
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
                           constants=constants, mt_form=mt_form, weight_sharing=sharing, deployment=deployment)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))
