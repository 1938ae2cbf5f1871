"""The fast step (GraphExecutor's default, runtime/program.py) against the node-by-node
reference (capture=False): its C kernels one by one (the MT rule bit for bit, the ECMs to
rounding), whole random-weight models at 1e-5 of the output scale, observers, and the
fallbacks.  The same programs with torch's eager kernels (ECMT_FAST=torch) are what runs
on CUDA; they are held to the reference here, on the CPU."""
import os
import subprocess
import sys

import pytest
import timm
import torch

import ecmt
from ecmt import ir
from ecmt.runtime import GraphExecutor, native, program
from ecmt.runtime.ecm import NonlinearityECMState
from ecmt.runtime.kernels import ECM_KERNELS, mt_multi_update_coded, mt_update, mt_update_coded
from ecmt.runtime.neuron import MTState
from models import every_kind_graph, randomize

T = 6
needs_native = pytest.mark.skipif(os.environ.get("ECMT_FAST", "1") == "0" or native.library() is None,
                                  reason=f"the fast step's kernels are off here ({native.unavailable()})")


def mt_node(levels: int, k: int, signed: bool, per_element: bool, shape=(3, 40)):
    g = torch.Generator().manual_seed(levels * 10 + k)
    th = (torch.rand(shape, generator=g) + 0.05) if per_element else torch.tensor(0.3)
    return ir.MTNeuron("mt", ("input",), th_pos=th, th_neg=th * 0.7 if signed else None, levels=levels,
                       spikes_per_step=k)


def membranes(th_pos: torch.Tensor, levels: int, batch: int = 64, shape=(3, 40)):
    """Random membranes, and membranes on every level's boundary th 2^j - th / 2 and one float
    either side of it (where a different rounding or comparison would show)."""
    g = torch.Generator().manual_seed(levels)
    th = th_pos.expand(batch, *shape)
    v = torch.randn(batch, *shape, generator=g) * th * 2.0 ** torch.randint(0, levels + 1, (batch, *shape),
                                                                           generator=g)
    j = torch.randint(0, levels, (batch, *shape), generator=g).float()
    boundary = th * 2.0 ** j - th * 0.5
    pick = torch.randint(0, 6, (batch, *shape), generator=g)
    for code, value in enumerate([boundary, torch.nextafter(boundary, boundary * 2),
                                  torch.nextafter(boundary, torch.zeros_like(boundary))]):
        v = torch.where(pick == code, value, v)
    return torch.where(torch.rand(batch, *shape, generator=g) < 0.5, v, -v)


@needs_native
@pytest.mark.parametrize("levels,k", [(1, 1), (4, 1), (8, 1), (32, 1), (8, 3), (12, 4), (13, 13)])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_element", [False, True])
def test_mt_kernel_is_the_reference_bit_for_bit(levels, k, signed, per_element):
    node = mt_node(levels, k, signed, per_element)
    state = MTState(node, (3, 40), compiled=False)
    mt = program._MT(state, (3, 40), "cpu")
    kernels = program.NativeKernels(native.library())
    v0 = membranes(state.th_pos, levels)
    x = membranes(state.th_pos, levels) * 0.5
    x[::3] = 0.0                                         # inactive inputs, for the event codes
    args = (state.th_pos, state.th_neg, levels, *state._k)
    s_ref, v_ref = mt_update.eager(v0, x, *args)
    coded = mt_update_coded if k == 1 else mt_multi_update_coded
    code_ref = coded.eager(v0, x, *args)[2] if levels <= 13 else None
    v, s = v0.clone(), torch.empty_like(v0)
    code = torch.empty(v0.numel(), dtype=torch.uint8 if k == 1 else torch.int16)
    kernels.mt(mt, x, v, s, pair=False, code=code if code_ref is not None else None)
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
    if code_ref is not None:
        assert torch.equal(code, code_ref)
    # pair form: x is the ECM's running output, the state the spike sum C; membrane x - C
    c, s = v0.clone(), torch.empty_like(v0)
    kernels.mt(mt, x, c, s, pair=True)
    s_ref, _ = mt_update.eager(-v0, x, *args)
    assert torch.equal(s, s_ref) and torch.equal(c, v0 + s_ref)


def views(x: torch.Tensor):
    """Strided views of x [batch, 2, 3, 4, 5] with 120 elements per sample, each as the
    kernels meet them: a select of a permute, a transposed last pair, a reshape-free merge
    of dims, a narrow, a step over a dim, a broadcast batch (stride 0) and a 7-d view."""
    yield "select of permute", torch.stack([-x, x, 2 * x], dim=1).permute(0, 2, 1, 3, 4, 5).select(2, 1)
    yield "transposed", x.transpose(-1, -2)
    yield "permuted", x.permute(0, 3, 1, 4, 2)
    yield "narrowed", torch.cat([x, x], dim=-1).narrow(-1, 3, 5)
    yield "every other", torch.stack([x, -x], dim=-1)[..., 0]
    yield "broadcast batch", x[:1].expand_as(x)
    yield "seven dims", x.reshape(-1, 1, 2, 1, 3, 2, 2, 5).permute(0, 1, 2, 3, 4, 6, 5, 7)


@needs_native
@pytest.mark.parametrize("k", [1, 3])
def test_mt_kernel_reads_any_strided_view(k):
    """An MT neuron reads its input where it lies (its elements per sample in row-major order):
    every strided view gives the contiguous copy's spikes and membranes bit for bit, and the
    spike sum it keeps for a product is the sum of those spikes."""
    shape = (2, 3, 4, 5)
    node = mt_node(6, k, True, False, shape=shape)
    state = MTState(node, shape, compiled=False)
    mt = program._MT(state, shape, "cpu")
    kernels = program.NativeKernels(native.library())
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(k)) * 2
    for name, view in views(x):
        assert view[0].numel() == 120 and not view.is_contiguous(), name
        flat = view.contiguous().reshape(view.shape[0], *shape)
        v0 = torch.randn(flat.shape, generator=torch.Generator().manual_seed(7))
        v_ref, s_ref = v0.clone(), torch.empty_like(v0)
        kernels.mt(mt, flat, v_ref, s_ref, pair=False)
        v, c = v0.clone(), torch.full_like(v0, 0.25)
        kernels.mt(mt, view, v, None, pair=False, spike_sum=c)     # spikes not written, only summed
        assert torch.equal(v, v_ref) and torch.equal(c, s_ref + 0.25), name
        assert s_ref.abs().sum() > 0, name
    # more axes than the kernels take (7 that no stride merges): copied first, the same numbers
    wide = torch.randn(3, *(2,) * 7, generator=torch.Generator().manual_seed(5)).permute(0, *range(7, 0, -1))
    assert native.strided(wide) is None and not wide.is_contiguous()
    shape = (128,)
    mt = program._MT(MTState(mt_node(6, k, True, False, shape=shape), shape, compiled=False), shape, "cpu")
    v, v_ref, s, s_ref = (torch.zeros(3, 128) for _ in range(4))
    kernels.mt(mt, wide, v, s, pair=False)
    kernels.mt(mt, wide.contiguous().reshape(3, 128), v_ref, s_ref, pair=False)
    assert torch.equal(v, v_ref) and torch.equal(s, s_ref) and s.abs().sum() > 0



@needs_native
@pytest.mark.parametrize("levels", [1, 3, 8, 15, 16, 40])
def test_kernel_counts_are_the_histogram_of_the_event_codes(levels):
    """Count mode's per-sample counts (native.c count_levels: per level -n..n, the elements that
    fired it, then the active updates) are the histogram of the event codes the same kernel call
    writes: in the MT kernel (rows of 120: a tail past the vector lanes) and in an ECM -> MT pair
    along rows (two groups of rows per sample, added to from two threads), for levels counted in
    vector words (levels <= 15) and one element at a time (more)."""
    kernels = program.NativeKernels(native.library())
    values, batch = 2 * levels + 1, 256

    def from_codes(code):
        per = torch.bincount(code.long() + torch.arange(batch).repeat_interleave(code.numel() // batch) * 2 * values,
                             minlength=batch * 2 * values).view(batch, 2, values)
        return torch.cat([per.sum(1), per[:, 1].sum(1, keepdim=True)], dim=1)

    g = torch.Generator().manual_seed(levels)
    for shape, paired in (((3, 40), False), ((40, 40), True)):
        state = MTState(mt_node(levels, 1, True, False, shape), shape, compiled=False)
        mt = program._MT(state, shape, "cpu")
        x = membranes(state.th_pos, levels, batch, shape) * 0.5
        x[torch.rand(x.shape, generator=g) < 0.3] = 0.0          # inactive updates
        v, out = membranes(state.th_pos, levels, batch, shape), torch.empty(batch, *shape)
        code = torch.empty(v.numel(), dtype=torch.uint8)
        counts = torch.zeros(batch, values + 1, dtype=torch.int64)
        if paired:
            spec = program._ECMSpec("softmax", None, (), rows=True, len=shape[-1])
            running = torch.zeros_like(v)
            kernels.ecm(spec, x * 40, torch.zeros_like(v), None, running, out, mt, v, code, counts)
        else:
            kernels.mt(mt, x, v, out, pair=False, code=code, counts=counts)
        expected = from_codes(code)
        assert torch.equal(counts, expected), (paired, (counts - expected).abs().sum())
        assert (expected[:, :-1].sum(1) == shape[0] * shape[1]).all()
        assert expected[:, :levels].sum() > 0 and expected[:, levels + 1:-1].sum() > 0   # spikes of both signs

ECMS = {
    "gelu": ir.GELUECM("ecm", ("input",)),
    "gelu_tanh": ir.GELUECM("ecm", ("input",), approximate="tanh"),
    "relu": ir.ReLUECM("ecm", ("input",)),
    "silu": ir.ElementwiseECM("ecm", ("input",), function="silu"),
    "sigmoid": ir.ElementwiseECM("ecm", ("input",), function="sigmoid"),
    "hardswish": ir.ElementwiseECM("ecm", ("input",), function="hardswish"),
    "softmax": ir.SoftmaxECM("ecm", ("input",), axis=-1),
    "layer_norm": ir.LayerNormECM("ecm", ("input",), weight=torch.rand(40) + 0.5, bias=torch.randn(40), eps=1e-5,
                                  features=40),
}


def ecm_graph(name: str, mt: ir.MTNeuron | None = None) -> ir.SpikingGraph:
    """input -> MT neuron (a stream that changes every step) -> the ECM [-> mt] -> output."""
    ecm = ECMS[name]
    ecm.inputs = ("pre",)
    nodes = [ir.Input("input", (), shape=(3, 40)),
             ir.MTNeuron("pre", ("input",), th_pos=torch.tensor(0.01), th_neg=torch.tensor(0.01), levels=12), ecm]
    if mt is not None:
        mt.inputs = ("ecm",)
        nodes.append(mt)
    return ir.SpikingGraph(nodes + [ir.Output("output", (nodes[-1].name,))])


@needs_native
@pytest.mark.parametrize("name", sorted(ECMS))
def test_ecm_kernels_follow_the_reference(name):
    """Each ECM's native step against its eager update over T steps, alone (increments, to
    float rounding: the C library's exp / erf / tanh are not torch's) and fused with an MT
    neuron (the spikes: exactly the neuron's rule on the fused running output)."""
    x = torch.randn(16, 3, 40, generator=torch.Generator().manual_seed(3)) * 3
    alone = ecm_graph(name)
    fast, ref = GraphExecutor(alone), GraphExecutor(alone, capture=False)
    for t_ in (1, T):
        torch.testing.assert_close(fast.run(x, t_), ref.run(x, t_), rtol=2e-6, atol=2e-6)
    paired = ecm_graph(name, ir.MTNeuron("mt", ("ecm",), th_pos=torch.tensor(0.05), th_neg=torch.tensor(0.04),
                                         levels=8))
    ex = GraphExecutor(paired)
    out = ex.run(x, T)
    assert ex._program.roles[2].pair            # ECM -> MT ran fused
    ref = GraphExecutor(paired, capture=False).run(x, T)
    # a float's rounding can move a membrane across a boundary: one level, rarely
    flips = ((out - ref).abs() > 1e-5).sum().item()
    assert flips <= out.numel() // 1000, flips


def with_biases(model: torch.nn.Module) -> torch.nn.Module:
    """Random biases too (randomize leaves timm's zero biases, under which an error in where the
    fast step adds a linear layer's bias would not show)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and not name.startswith(("norm", "fc_norm")) and ".norm" not in name:
                p.normal_(0.0, 0.2)
    return model


def vit_graph(levels: int, k: int) -> ir.SpikingGraph:
    torch.manual_seed(0)
    model = randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4,
                                        in_chans=1, num_classes=10, depth=2, embed_dim=32, num_heads=2))
    return ecmt.convert(with_biases(model), torch.randn(32, 1, 16, 16), levels=levels, spikes_per_step=k,
                        progress=False).graph


def cnn_graph(levels: int, k: int) -> ir.SpikingGraph:
    from ecmt.zoo import build_demo_cnn
    torch.manual_seed(0)
    return ecmt.convert(with_biases(randomize(build_demo_cnn())), torch.randn(32, 1, 28, 28), levels=levels,
                        spikes_per_step=k, progress=False).graph


@pytest.fixture(scope="module")
def graphs():
    return {(name, k): build(levels, k) for name, build in (("vit", vit_graph), ("cnn", cnn_graph))
            for levels, k in ((8, 1), (12, 4))}


@pytest.mark.parametrize("name", ["vit", "cnn"])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_fast_step_matches_node_by_node(graphs, name, k, kernels, monkeypatch):
    """A random-weight ViT and CNN, k = 1 and k = 4: the fast step is the node-by-node
    executor to 1e-5 of the output scale at every t (native kernels; torch's eager kernels,
    what CUDA runs)."""
    if kernels == "native" and (os.environ.get("ECMT_FAST", "1") == "0" or native.library() is None):
        pytest.skip(f"the fast step's kernels are off here ({native.unavailable()})")
    if kernels == "torch":
        monkeypatch.setenv("ECMT_FAST", "torch")
    graph = graphs[(name, k)]
    shape = graph.input.shape
    x = torch.randn(12, *shape, generator=torch.Generator().manual_seed(1))
    ref = GraphExecutor(graph, capture=False).run(x, T)
    ex = GraphExecutor(graph)
    assert ex.fast()
    out = ex.run(x, T)
    kind = program.NativeKernels if kernels == "native" else program.TorchKernels
    assert isinstance(ex._program.kernels, kind)
    if name == "vit":       # the shared chains are in use
        roles = ex._program.roles
        assert any(r.pair for r in roles) and any(r.total for r in roles) and any(r.shared for r in roles)
        if kernels == "native":     # product -> views -> MT in the pair form; biases added by the kernels
            assert any(r.from_product is not None for r in roles) and ex._program.unbiased
    scale = ref.abs().max()
    assert (out - ref).abs().max() <= 1e-5 * scale, float((out - ref).abs().max() / scale)
    # a second batch size, and the first again: one program at a time, the same numbers; a new
    # executor takes the released buffers from the pool (dirty): the same numbers again
    torch.testing.assert_close(ex.run(x[:5], T), ref[:, :5], rtol=0, atol=1e-5 * float(scale))
    assert torch.equal(ex.run(x, T), out)
    del ex
    assert torch.equal(GraphExecutor(graph).run(x, T), out)


def test_every_kind_and_observers():
    """Every node kind, with and without an observer: an observer sees every node at every
    step, with the inputs and outputs it sees node by node, and the event codes.  It keeps
    what it is given, uncopied (as NeuroBench's hooks do): the values stay those of their step."""
    graph = every_kind_graph()
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    ref_ex = GraphExecutor(graph, capture=False, record_levels=True)
    fast_ex = GraphExecutor(graph, record_levels=True)
    seen = {"ref": [], "fast": []}

    def watcher(key, ex):
        def observe(node, inputs, out, t):
            code = ex.state(node.name).code if isinstance(node, ir.MTNeuron) else None
            seen[key].append((node.name, t, list(inputs), out,
                              None if code is None else code.clone()))
        return observe
    ref = ref_ex.run(x, T, observer=watcher("ref", ref_ex))
    out = fast_ex.run(x, T, observer=watcher("fast", fast_ex))
    assert fast_ex.fast() == (os.environ.get("ECMT_FAST", "1") != "0" and native.library() is not None)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert [s[:2] for s in seen["fast"]] == [s[:2] for s in seen["ref"]] == [
        (n, t) for t in range(1, T + 1) for n in graph.nodes]
    for a, b in zip(seen["fast"], seen["ref"]):      # to float rounding (libm's exp is not torch's)
        torch.testing.assert_close(a[3], b[3], rtol=1e-5, atol=1e-5, msg=a[0])
        for i, j in zip(a[2], b[2]):
            torch.testing.assert_close(i.expand_as(j), j, rtol=1e-5, atol=1e-5, msg=a[0])
        if a[4] is not None:
            assert torch.equal(a[4], b[4]), a[0]
    # without an observer: the same estimates; PPN neurons too
    torch.testing.assert_close(GraphExecutor(graph).run(x, T), ref, rtol=0, atol=1e-5)
    ppn = ir.expand_ppn(graph)
    torch.testing.assert_close(GraphExecutor(ppn).run(x, T), GraphExecutor(ppn, capture=False).run(x, T),
                               rtol=0, atol=1e-5)


def test_static_ecms_and_incremental_products():
    """ECMs on the constant input are computed once; products in the incremental form."""
    g = torch.Generator().manual_seed(2)
    graph = ir.SpikingGraph([
        ir.Input("input", (), shape=(5, 4)),
        ir.LayerNormECM("ln", ("input",), weight=torch.rand(4, generator=g) + 0.5,
                        bias=torch.randn(4, generator=g), eps=1e-5, features=4),
        ir.MTNeuron("mt", ("ln",), th_pos=torch.tensor(0.25), th_neg=torch.tensor(0.25), levels=6),
        ir.Linear("fc", ("mt",), weight=torch.randn(4, 4, generator=g), bias=None),
        ir.ProductECM("qk", ("fc", "mt"), transpose_b=True, scale=0.3),
        ir.SoftmaxECM("sm", ("qk",), axis=-1),
        ir.Output("output", ("sm",)),
    ])
    x = torch.randn(3, 5, 4, generator=g)
    for form in ("direct", "incremental"):
        fast = GraphExecutor(graph, product_form=form)
        assert fast.steps[1].static and not fast.steps[5].static
        torch.testing.assert_close(fast.run(x, T), GraphExecutor(graph, product_form=form, capture=False).run(x, T),
                                   rtol=0, atol=1e-5)


@needs_native
def test_hw_sim_counts_the_same_on_both_paths():
    """hw_sim's Counter observes the fast step: every count equals node by node's but active
    updates, which count the MT inputs that are not exactly zero: where f (GELU far below
    zero) rounds to zero in one implementation and to a tiny value in the other, one input
    differs (within 0.1%)."""
    import hw_sim
    graph = vit_graph(8, 1)
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    counts = {}
    for capture in (True, False):
        ex = GraphExecutor(graph, record_levels=True, capture=capture)
        counter = hw_sim.counting.Counter(ex, 3)
        ex.run(x, 3, observer=counter)
        counts[capture] = hw_sim.counting.to_lists(counter.result())
    for name, fields in counts[False].items():
        for field, reference in fields.items():
            got = counts[True][name][field]
            if field == "active_updates":
                assert all(abs(a - b) <= 1e-3 * b for a, b in zip(got, reference)), (name, got, reference)
            else:
                assert got == reference, (name, field)


def test_without_a_compiler_one_line_and_node_by_node(tmp_path):
    """A machine that cannot build the kernels: one line on stderr, then node by node."""
    code = ("import torch, sys; sys.path.insert(0, 'tests'); from models import small_graph; "
            "from ecmt.runtime import GraphExecutor; g = small_graph(); x = torch.randn(4, 6); "
            "ex = GraphExecutor(g); a = ex.run(x, 3); b = ex.run(x, 3); "
            "assert not ex.fast() and torch.equal(a, GraphExecutor(g, capture=False).run(x, 3))")
    env = {**os.environ, "CC": "no-such-cc", "ECMT_CACHE": str(tmp_path), "ECMT_FAST": "1",
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "ecmt" in line]
    assert lines == ["ecmt: the fast step's kernels are unavailable (building ecmt/runtime/native.c needs a C "
                     "compiler, and 'no-such-cc' is not on PATH); running node by node (slower)"], r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["vit", "cnn"])
def test_cuda_graph_step_matches_the_cpu(graphs, name):
    graph = graphs[(name, 1)]
    x = torch.randn(12, *graph.input.shape, generator=torch.Generator().manual_seed(1))
    ref = GraphExecutor(graph, capture=False).run(x, T)
    ex = GraphExecutor(graph, "cuda")
    out = ex.run(x, T).cpu()
    assert ex._program.graph not in (None, False)     # replayed as a CUDA graph
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    torch.testing.assert_close(ex.run(x, T).cpu(), out, rtol=0, atol=0)
