"""Every neuromorphic chip, one engine: the graph's on-chip part mapped onto a system of
chips, each a mesh of tiles of cores, the rest run on the host cores, everything priced
and timed from the run.  The stages, one module each, each consuming the one before:
extract (graph -> OnChip), place (OnChip -> Placement), topology (where cores sit, what
each element reaches, barrier), record (the run's spikes -> Rasters), schedule
(the detailed step schedule, compiled), account (energy and latency per step), model
(MeshModel: the HardwareModel interface).

Per step and inference:

* energy: synapse, neuron, network (on-chip messages and hops) and chip_links from the
  mapped model's accounting of the recorded spikes; host: the host cores' operations and
  memory (energy.rates with the on-chip nodes left out) plus chip-host transfers; static:
  the chips' static power over the step's latency;
* latency by phase: ``cores`` the detailed schedule of every chip phase (a host round trip
  in a step starts a new phase), ``barrier`` one barrier per phase, ``chip_links`` the
  chip-to-chip link delays on the critical path, ``host`` the host's operations over its
  throughput plus the chip-host transfers.  Host and cores do not overlap: a phase needs
  the host's results of the phase before, and the host the phase's spikes.  A profile with
  a ``tick`` (TrueNorth, SpiNNaker 2) gives every phase at least one tick.
"""
from .account import Accounting, without_link_delay, without_network_load
from .extract import Connection, Group, MappingError, OnChip, extract
from .model import LINEAR, RETIME_SAMPLES, MeshModel
from .place import LayerMapping, Placement, place
from .record import Raster, Recorder, record
from .topology import barrier, chip_distance, core_chip, core_xy, fanout, geometry

__all__ = ["Accounting", "without_link_delay", "without_network_load", "Connection", "Group", "LINEAR", "LayerMapping", "MappingError", "MeshModel", "OnChip",
           "Placement", "RETIME_SAMPLES", "Raster", "Recorder", "barrier", "chip_distance", "core_chip", "core_xy",
           "extract", "fanout", "geometry", "place", "record"]
