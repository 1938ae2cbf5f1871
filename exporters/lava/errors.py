"""The Lava exporter's error, in a module of its own: hdf5.py (the file) and
netx.py (the netx layout) both raise it, and hdf5.py uses netx.py, so defining
it in either of them would make the two import each other."""
from ecmt.errors import EcmtError


class LavaExportError(EcmtError):
    """A Lava file cannot be written in the layout asked for, or cannot be read."""
