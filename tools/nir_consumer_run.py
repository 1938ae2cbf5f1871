"""Run a NIR file in one of the field's NIR consumer libraries, for T time steps.

Runs INSIDE a consumer env built by tools/nir_consumers.sh (it never imports ecmt):

    $(tools/nir_consumers.sh --python norse) tools/nir_consumer_run.py \\
        --consumer norse --nir model.nir --inputs x.npy -T 8 --out y.npy

The file is loaded with the library's own documented import function, nothing of ours
maps nodes:

    snntorch   snntorch.import_nir.import_from_nir(graph)
    norse      norse.torch.from_nir(graph)
    sinabs     sinabs.from_nir(graph, num_timesteps=T)
    nirtorch   nirtorch.nir_to_torch(graph, node_map), node_map from --node-map
               MODULE:FUNCTION (a function returning the dict; default: {} so only
               nirtorch's default map, which has no neurons)

x ([N, *shape], shape as the NIR Input node declares) is fed unchanged at every one of
the T steps; the state is reset before every batch of --batch-size samples the way the
library documents (sinabs: fewer, where its batch would hold more than 2 GB,
sinabs_batch).  The output at every step is written to --out as float32 [T, N, ...].

With --speck CHIP (sinabs env only; no --inputs / -T / --out) it runs sinabs' own chip-fitness
check for SynSense Speck instead and prints one JSON line {"fits": ..., "stage": ..., "reason": ...}
(see speck_fitness below).

Exit status: 0 runs (or --speck gave a verdict); 2 usage error (bad arguments, missing file, input shape that is not
the Input node's); 3 the consumer fails, with one line on stderr:
    nir_consumer_run: <library> <version>: fails to load|fails to run: <Exception>: <message>
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

CONSUMERS = ("snntorch", "norse", "sinabs", "nirtorch")


class ConsumerFailure(Exception):
    def __init__(self, phase: str, err: BaseException):
        super().__init__(phase)
        self.phase, self.err = phase, err


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _input_shape(graph) -> tuple[int, ...] | None:
    """The per-sample shape the graph's Input node declares (None if not exactly one)."""
    import nir
    shapes = []
    for node in graph.nodes.values():
        if isinstance(node, nir.Input):
            t = node.input_type
            t = t.get("input", next(iter(t.values()), None)) if isinstance(t, dict) else t
            shapes.append(None if t is None else tuple(int(d) for d in list(t)))
    return shapes[0] if len(shapes) == 1 else None


def _load_node_map(spec: str | None):
    if not spec:
        return {}
    module, _, func = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module), func)()


def _first_tensor(out, torch):
    """The step output as a tensor; a library that returns (spikes, membrane) gives spikes."""
    if isinstance(out, torch.Tensor):
        return out, False
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], True
    raise TypeError(f"the module returned {type(out).__name__}, not a tensor")


class Runner:
    """Loads the graph with one library and runs batches for T steps."""

    def __init__(self, consumer: str, graph, T: int, node_map_spec: str | None):
        import torch
        self.torch, self.consumer, self.T = torch, consumer, T
        self.tuple_output = False
        if consumer == "snntorch":
            from snntorch.import_nir import import_from_nir
            self.module = import_from_nir(graph)
        elif consumer == "norse":
            import norse.torch
            self.module = norse.torch.from_nir(graph)
        elif consumer == "sinabs":
            import sinabs
            self.module = sinabs.from_nir(graph, num_timesteps=T)
        elif consumer == "nirtorch":
            import nirtorch
            self.module = nirtorch.nir_to_torch(graph, _load_node_map(node_map_spec))
        else:
            raise ValueError(consumer)
        self.module.eval()

    def reset(self) -> None:
        if self.consumer == "snntorch":
            # snnTorch neurons keep their membrane in the module (init_hidden);
            # snntorch.utils.reset zeroes every Leaky/Synaptic/... instance.
            import snntorch.utils
            snntorch.utils.reset(self.module)
        elif self.consumer == "sinabs":
            import sinabs
            sinabs.reset_states(self.module)
        # norse / nirtorch: the state is what the module returns; a batch starts from None.

    def run(self, x):
        """x: [B, *shape] -> [T, B, ...]."""
        torch, T = self.torch, self.T
        self.reset()
        if self.consumer == "sinabs":
            # sinabs' *Squeeze layers take time folded into the batch axis, [B*T, ...],
            # sample-major (reshape(B, T, ...)); one call runs all T steps.
            B = x.shape[0]
            xt = x.unsqueeze(1).expand(B, T, *x.shape[1:]).reshape(B * T, *x.shape[1:])
            out = self.module(xt)
            if isinstance(out, tuple) and len(out) == 2 and not isinstance(out[1], torch.Tensor):
                out = out[0]          # nirtorch.load's GraphExecutor returns (output, state)
            y, was_tuple = _first_tensor(out, torch)
            self.tuple_output |= was_tuple
            return y.reshape(B, T, *y.shape[1:]).transpose(0, 1)
        state, steps = None, []
        for _ in range(T):
            # snntorch / nirtorch (nirtorch.nir_to_torch) and norse (nirtorch.load's
            # GraphExecutor) modules all step as `output, state = module(x, state)`.
            out, state = self.module(x, state)
            y, was_tuple = _first_tensor(out, torch)
            self.tuple_output |= was_tuple
            steps.append(y)
        return torch.stack(steps)


SINABS_BATCH_BYTES = 2e9


def sinabs_batch(graph, T: int) -> int:
    """How many samples one sinabs call may take: its layers fold all T steps into the
    batch axis and nirtorch keeps every node's output until the call ends, about 6 float32
    values per IF neuron and step (its input, the sum of its inputs, the steps it stacks,
    its output); a batch stays under SINABS_BATCH_BYTES."""
    import nir
    import numpy as np
    neurons = sum(int(np.size(n.v_threshold)) for n in graph.nodes.values() if isinstance(n, nir.IF))
    return max(1, int(SINABS_BATCH_BYTES // (6 * 4 * T * max(neurons, 1))))


# -- Speck fitness (sinabs' dynapcnn backend) ---------------------------------------------------------
class SamnaAbsent(RuntimeError):
    pass


def _guard_samna() -> bool:
    """The samna wheel on PyPI is a stub whose import downloads SynSense's native
    library from their GitLab with pip; nothing here may do that.  When the installed
    samna is that stub (read from its file, not imported), `import samna` gets an
    inert module instead: sinabs' dynapcnn backend imports samna at module level but
    its layer checks and core mapping never call it; anything that does raises
    SamnaAbsent.  Returns whether the stub was replaced."""
    import importlib.abc
    import importlib.machinery
    import importlib.util
    import types
    spec = importlib.util.find_spec("samna")
    if spec is None or not spec.origin or "install_real_samna" not in open(spec.origin).read():
        return False

    class Absent:
        def __init__(self, name):
            self.name = name

        def __getattr__(self, attr):
            return Absent(f"{self.name}.{attr}")

        def __call__(self, *args, **kwargs):
            raise SamnaAbsent(f"{self.name}: samna's native library is not installed (the PyPI samna is a stub)")

        def __mro_entries__(self, bases):
            return (object,)

    class Module(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return Absent(f"{self.__name__}.{attr}")

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("samna", "samnagui"):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            module = Module(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, Finder())
    return True


def speck_fitness(graph, chip: str) -> dict:
    """sinabs' own check whether the network fits a Speck chip, in its three stages:

    1. ``sinabs.from_nir``: the file as a sinabs network;
    2. ``DynapcnnNetwork(network, input_shape)``: sinabs' dynapcnn backend turns it into
       chip layers (convolution -> IAF neuron -> sum pooling); it raises, naming the
       layer or structure, for what a core cannot compute;
    3. ``ChipFactory(chip).get_config_builder().map_layers_to_cores``: every layer onto
       one of the chip's 9 cores within its kernel, neuron and bias memory (sinabs'
       Speck constraints), or "No valid mapping found".

    The last step of ``DynapcnnNetwork.is_compatible_with`` (samna's
    ``validate_configuration`` of the generated configuration) needs samna's native
    library, which PyPI does not ship; it runs only where that library is installed."""
    stubbed = _guard_samna()          # before sinabs is imported
    import sinabs
    verdict = {"chip": chip, "fits": False, "stage": None, "reason": None, "layers": None, "cores": None,
               "samna_validation": "not run: samna's native library is not installed" if stubbed else None}
    shape = _input_shape(graph)
    try:
        verdict["stage"] = "sinabs.from_nir"
        network = sinabs.from_nir(graph, batch_size=1)
        verdict["stage"] = "DynapcnnNetwork (chip layers)"
        from sinabs.backend.dynapcnn import DynapcnnNetwork
        from sinabs.backend.dynapcnn.chip_factory import ChipFactory
        dynapcnn = DynapcnnNetwork(network, input_shape=shape, batch_size=1, discretize=True)
        layers = dynapcnn.dynapcnn_layers
        verdict["layers"] = len(layers)
        verdict["stage"] = "map_layers_to_cores (core memory)"
        builder = ChipFactory(chip).get_config_builder()
        verdict["cores"] = {str(k): int(v) for k, v in builder.map_layers_to_cores(layers).items()}
        if not stubbed:
            verdict["stage"] = "is_compatible_with (samna)"
            if not dynapcnn.is_compatible_with(chip):
                raise ValueError("samna's validate_configuration rejects the generated configuration")
            verdict["samna_validation"] = "passed"
        verdict["fits"], verdict["stage"] = True, None
    except SamnaAbsent as err:
        verdict["reason"] = f"needs samna: {err}"
    except Exception as err:  # noqa: BLE001 - sinabs' verdict, whatever it raises
        verdict["reason"] = f"{type(err).__name__}: {_one_line(err)}"
    return verdict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--consumer", required=True, choices=CONSUMERS)
    ap.add_argument("--nir", required=True, help="NIR file (HDF5)")
    ap.add_argument("--inputs", help=".npy, [N, *input shape]")
    ap.add_argument("-T", type=int, help="time steps")
    ap.add_argument("--out", help=".npy written with [T, N, ...]")
    ap.add_argument("--speck", metavar="CHIP", help="sinabs only: sinabs' Speck fitness check for CHIP "
                                                     "(speck2f, speck2e, ...) instead of a run")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--node-map", help="nirtorch only: MODULE:FUNCTION returning the node map")
    args = ap.parse_args(argv)
    if args.node_map and (args.consumer != "nirtorch" or not all(args.node_map.partition(":")[::2])):
        ap.error("--node-map MODULE:FUNCTION goes with --consumer nirtorch")
    if args.speck:
        if args.consumer != "sinabs":
            ap.error("--speck goes with --consumer sinabs")
        if not os.path.isfile(args.nir):
            print(f"nir_consumer_run: {args.nir}: no such file", file=sys.stderr)
            return 2
        import json

        import nir
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(sys.stderr):
            verdict = speck_fitness(nir.read(args.nir), args.speck)
        print(json.dumps(verdict))
        return 0
    if args.inputs is None or args.T is None or args.out is None:
        ap.error("--inputs, -T and --out are required (unless --speck)")

    import numpy as np
    if args.T < 1 or args.batch_size < 1:
        print("nir_consumer_run: -T and --batch-size must be positive", file=sys.stderr)
        return 2
    for path in (args.nir, args.inputs):
        if not os.path.isfile(path):
            print(f"nir_consumer_run: {path}: no such file", file=sys.stderr)
            return 2
    x_np = np.load(args.inputs).astype(np.float32)
    if x_np.ndim < 1 or len(x_np) == 0:
        print(f"nir_consumer_run: {args.inputs}: no samples (want [N, *input shape], N >= 1)", file=sys.stderr)
        return 2

    import torch
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    lib = f"{args.consumer} {_version(args.consumer)} (nir {_version('nir')}, nirtorch {_version('nirtorch')})"

    def fail(phase: str, err: BaseException) -> int:
        print(f"nir_consumer_run: {lib}: {phase}: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 3

    import nir
    try:
        graph = nir.read(args.nir)
    except Exception as err:  # noqa: BLE001 - the consumer's nir decides
        return fail("fails to load", err)
    want = _input_shape(graph)
    if want is not None and tuple(x_np.shape[1:]) != want:
        print(f"nir_consumer_run: {args.inputs}: per-sample shape {list(x_np.shape[1:])} is not the "
              f"NIR Input's {list(want)}", file=sys.stderr)
        return 2
    # The libraries print progress to stdout (snnTorch: "replace rnn subgraph ..."); keep
    # stdout for this script's own last line.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            runner = Runner(args.consumer, graph, args.T, args.node_map)
    except Exception as err:  # noqa: BLE001
        return fail("fails to load", err)
    outs, batch = [], args.batch_size
    if args.consumer == "sinabs":
        batch = min(batch, sinabs_batch(graph, args.T))
    try:
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
            for i in range(0, len(x_np), batch):
                outs.append(runner.run(torch.from_numpy(x_np[i:i + batch])).float().cpu())
        y = torch.cat(outs, dim=1).numpy()
    except Exception as err:  # noqa: BLE001
        return fail("fails to run", err)
    if runner.tuple_output:
        print(f"nir_consumer_run: {args.consumer}: the graph output is a tuple (spikes, membrane, ...); "
              "wrote its first element", file=sys.stderr)
    np.save(args.out, y.astype(np.float32))
    print(f"nir_consumer_run: {args.consumer}: runs; wrote {args.out} {list(y.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
