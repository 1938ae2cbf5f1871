"""The MT neuron: the spec's worked cases and the vectorized form vs a literal loop."""
import numpy as np
import pytest
import torch

from ecmt.ir import MTNeuron
from ecmt.runtime.neuron import MTState

from reference import mt_multi_reference, mt_neuron_reference


def run_mt(xs: torch.Tensor, th_pos, th_neg, levels=8) -> torch.Tensor:
    """xs: [T, B, *shape] increments -> spikes of the same shape."""
    node = MTNeuron(name="n", inputs=("x",), th_pos=torch.as_tensor(th_pos, dtype=torch.float32),
                    th_neg=None if th_neg is None else torch.as_tensor(th_neg, dtype=torch.float32),
                    levels=levels)
    state = MTState(node, tuple(xs.shape[2:]))
    return torch.stack([state.step(x) for x in xs])


def test_subthreshold_input_is_silent_and_carries_over():
    s = run_mt(torch.tensor([[[0.4]], [[0.4]]]), 1.0, 1.0)
    assert s.flatten().tolist() == [0.0, 1.0]        # 0.4 silent; 0.8 >= 1 - 0.5 fires 1


def test_fires_highest_crossed_level_and_keeps_remainder():
    node = MTNeuron(name="n", inputs=("x",), th_pos=torch.tensor(1.0), th_neg=torch.tensor(1.0), levels=8)
    state = MTState(node, (1,))
    assert state.step(torch.tensor([[2.9]])).item() == 2.0
    assert state.v.item() == pytest.approx(0.9, abs=1e-6)


def test_large_input_is_capped_and_excess_carries():
    levels = 3                                       # largest level 4, boundary 3.5 for the next
    s = run_mt(torch.tensor([[[10.0]], [[0.0]], [[0.0]]]), 1.0, 1.0, levels)
    assert s.flatten().tolist() == [4.0, 4.0, 2.0]  # 10 -> 6 -> 2 -> 0


def test_negative_levels_mirror_positive_ones():
    s = run_mt(torch.tensor([[[-2.9]], [[0.0]]]), 1.0, 0.5)
    # th_neg = 0.5: levels -0.5 * 2^k; -2.9 <= -(2 - 0.25) fires -2, keeps -0.9 -> fires -1
    assert s.flatten().tolist() == [-2.0, -1.0]


def test_positive_only_neuron_never_spikes_negative():
    s = run_mt(torch.full((5, 1, 1), -3.0), 1.0, None)
    assert s.abs().sum().item() == 0.0


def test_boundaries_are_inclusive_exactly_as_specified():
    th = 0.75
    up = np.float32(th) - np.float32(th) / 2            # v >= th - th/2 fires
    down = -(np.float32(th) - np.float32(th) / 2)       # v <= -(th - th/2) fires
    s = run_mt(torch.tensor([[[float(up), float(down), float(np.nextafter(up, 0, dtype=np.float32)),
                               float(np.nextafter(down, 0, dtype=np.float32))]]]), th, th)
    assert s.flatten().tolist() == [th, -th, 0.0, 0.0]


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("levels", [1, 3, 8])
def test_vectorized_equals_literal_reference(signed, levels):
    gen = torch.Generator().manual_seed(levels)
    T, n = 12, 64
    xs = torch.randn(T, n, generator=gen) * 3.0
    th_pos, th_neg = 0.37, (0.61 if signed else None)
    got = run_mt(xs.view(T, 1, n), th_pos, th_neg, levels).view(T, n)
    for i in range(n):
        expected = mt_neuron_reference(xs[:, i].tolist(), th_pos, th_neg, levels)
        assert got[:, i].tolist() == expected, f"element {i}"


def test_per_channel_thresholds_equal_reference_per_channel():
    gen = torch.Generator().manual_seed(1)
    T, tokens, channels = 10, 5, 4
    xs = torch.randn(T, 2, tokens, channels, generator=gen) * 2
    th_pos = torch.tensor([[0.2, 0.5, 1.0, 1.7]])      # one per channel, shared over tokens
    th_neg = torch.tensor([[0.3, 0.3, 0.9, 0.4]])
    got = run_mt(xs, th_pos, th_neg, levels=4)
    for b in range(2):
        for i in range(tokens):
            for c in range(channels):
                expected = mt_neuron_reference(xs[:, b, i, c].tolist(), th_pos[0, c].item(),
                                               th_neg[0, c].item(), 4)
                assert got[:, b, i, c].tolist() == expected


def test_spike_values_are_levels():
    xs = torch.randn(20, 3, 7) * 5
    s = run_mt(xs, 0.5, 0.25, levels=5)
    allowed = {0.0} | {0.5 * 2 ** k for k in range(5)} | {-0.25 * 2 ** k for k in range(5)}
    assert set(s.unique().tolist()) <= allowed


def codes_by_path(xs, th_pos, th_neg, levels, compiled):
    node = MTNeuron(name="n", inputs=("x",), th_pos=torch.as_tensor(th_pos, dtype=torch.float32),
                    th_neg=None if th_neg is None else torch.as_tensor(th_neg, dtype=torch.float32), levels=levels)
    state = MTState(node, tuple(xs.shape[2:]), compiled=compiled)
    state.record = True
    spikes, codes = [], []
    for x in xs:
        spikes.append(state.step(x))
        codes.append(state.code.clone())
    return torch.stack(spikes), torch.stack(codes)


@pytest.mark.parametrize("th_pos, th_neg", [(0.37, 0.61), (0.37, None),
                                            (torch.tensor([[0.2, 0.5, 1.0]]), torch.tensor([[0.3, 0.9, 0.4]]))])
@pytest.mark.parametrize("compiled", [True, False])
def test_event_codes_are_level_number_plus_levels_plus_active(th_pos, th_neg, compiled):
    """The code each path records (fused kernel, table lookup, per-channel op by op)
    is the spike's level number + levels, + 2 levels + 1 where the input was non-zero."""
    gen = torch.Generator().manual_seed(3)
    levels = 4
    xs = torch.randn(6, 2, 5, 3, generator=gen) * 2
    xs[:, :, 0] = 0.0                                     # some inactive inputs
    spikes, codes = codes_by_path(xs, th_pos, th_neg, levels, compiled)
    plain = run_mt(xs, th_pos, th_neg, levels)
    assert torch.equal(spikes, plain)                     # recording changes nothing
    th_p = torch.as_tensor(th_pos).expand(xs.shape[2:])
    th_n = torch.as_tensor(th_neg if th_neg is not None else th_pos).expand(xs.shape[2:])
    for t in range(xs.shape[0]):
        for index in np.ndindex(*xs.shape[1:]):
            s, feat = spikes[t][index].item(), index[1:]
            if s > 0:
                number = round(np.log2(s / th_p[feat].item())) + 1
            elif s < 0:
                number = -(round(np.log2(-s / th_n[feat].item())) + 1)
            else:
                number = 0
            active = xs[t][index].item() != 0
            flat = np.ravel_multi_index(index, xs.shape[1:])
            assert codes[t, flat].item() == number + levels + (2 * levels + 1) * active


# -- spikes_per_step k > 1 ------------------------------------------------------------------

def run_multi(xs, th_pos, th_neg, levels, k, compiled):
    node = MTNeuron(name="n", inputs=("x",), th_pos=torch.as_tensor(th_pos, dtype=torch.float32),
                    th_neg=None if th_neg is None else torch.as_tensor(th_neg, dtype=torch.float32),
                    levels=levels, spikes_per_step=k)
    state = MTState(node, tuple(xs.shape[2:]), compiled=compiled)
    return torch.stack([state.step(x) for x in xs])


def test_multi_level_worked_cases():
    # th = 1: 2.9 sends 2 + 1 = 3 with k = 2 and keeps -0.1; with k = 1 it sends 2
    s = run_multi(torch.tensor([[[2.9]], [[0.0]]]), 1.0, 1.0, 8, 2, compiled=False)
    assert s.flatten().tolist() == [3.0, 0.0]
    # 3 levels, k = 3: at most 4 + 2 + 1 = 7 per step, the excess carries
    s = run_multi(torch.tensor([[[10.0]], [[0.0]]]), 1.0, 1.0, 3, 3, compiled=False)
    assert s.flatten().tolist() == [7.0, 3.0]
    # k = 2 keeps the two highest levels of round(v): 7 -> 4 + 2, remainder 1 next step
    s = run_multi(torch.tensor([[[-7.0]], [[0.0]]]), 1.0, 1.0, 4, 2, compiled=False)
    assert s.flatten().tolist() == [-6.0, -1.0]


def test_multi_level_keeps_the_first_levels_sign():
    # th_pos = 1, th_neg = 0.25.  Step 1: 0.6 fires +1; the remainder -0.4 would cross the
    # negative boundary -0.125, but a step's levels share the first one's sign.
    # Step 2: v = -0.4 - 0.5 = -0.9 fires -1 (0.25 * 4, boundary -0.875); the remainder is +0.1.
    s = run_multi(torch.tensor([[[0.6]], [[-0.5]]]), 1.0, 0.25, 4, 4, compiled=False)
    assert s.flatten().tolist() == [1.0, -1.0]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("thresholds", ["tensor", "channel"])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("levels, k", [(1, 1), (4, 1), (4, 2), (8, 3), (8, 8)])
def test_multi_level_kernels_equal_literal_reference(compiled, thresholds, signed, levels, k):
    gen = torch.Generator().manual_seed(levels * 10 + k)
    T, tokens, channels = 8, 6, 4
    xs = torch.randn(T, 1, tokens, channels, generator=gen) * 4.0
    xs[0, 0, 0] = torch.tensor([1e3, -1e3, 2.0 ** levels, -(2.0 ** levels)])   # capped inputs
    if thresholds == "tensor":
        th_pos, th_neg = torch.tensor(0.37), torch.tensor(0.61)
    else:
        th_pos = torch.rand(1, channels, generator=gen) + 0.1
        th_neg = torch.rand(1, channels, generator=gen) + 0.1
    th_neg = th_neg if signed else None
    got = run_multi(xs, th_pos, th_neg, levels, k, compiled)
    for i in range(tokens):
        for c in range(channels):
            tp = th_pos.reshape(-1)[0 if th_pos.numel() == 1 else c].item()
            tn = None if th_neg is None else th_neg.reshape(-1)[0 if th_neg.numel() == 1 else c].item()
            expected = mt_multi_reference(xs[:, 0, i, c].tolist(), tp, tn, levels, k)
            assert got[:, 0, i, c].tolist() == expected, f"element {i, c}"
            if k == 1:
                assert expected == mt_neuron_reference(xs[:, 0, i, c].tolist(), tp, tn, levels)


def test_multi_level_with_all_levels_sends_any_multiple_of_theta():
    xs = torch.linspace(-20, 20, 401).view(1, 1, -1)
    s = run_multi(xs, 1.0, 1.0, 4, 4, compiled=False)
    assert torch.equal(s.flatten(), torch.clamp(torch.floor(xs.abs() + 0.5), max=15).flatten() * xs.sign().flatten())


def test_spikes_per_step_above_levels_is_a_graph_error():
    from ecmt.errors import GraphError
    from ecmt.ir import Input, Output, SpikingGraph
    node = MTNeuron(name="mt", inputs=("x",), th_pos=torch.tensor(1.0), th_neg=None, levels=3, spikes_per_step=4)
    with pytest.raises(GraphError, match="mt.*spikes_per_step"):
        SpikingGraph([Input(name="x", inputs=(), shape=(4,)), node, Output(name="out", inputs=("mt",))])


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("th_pos, th_neg", [(0.37, 0.61), (0.37, None),
                                            (torch.tensor([[0.2, 0.5, 1.0]]), torch.tensor([[0.3, 0.9, 0.4]]))])
@pytest.mark.parametrize("levels, k", [(4, 2), (6, 6), (13, 3)])
def test_k_level_event_codes_are_signed_fired_levels_plus_active(th_pos, th_neg, levels, k, compiled):
    """A k > 1 neuron records int16 codes sign * m + 2^levels - 1 (m's binary digits: the levels
    fired, read here from the spike by a greedy decomposition), + 2^(levels+1) - 1 where the
    input was non-zero; recording leaves the spikes alone."""
    gen = torch.Generator().manual_seed(levels + k)
    xs = torch.randn(6, 2, 5, 3, generator=gen) * 3
    xs[:, :, 0] = 0.0
    node = MTNeuron(name="n", inputs=("x",), th_pos=torch.as_tensor(th_pos, dtype=torch.float32),
                    th_neg=None if th_neg is None else torch.as_tensor(th_neg, dtype=torch.float32),
                    levels=levels, spikes_per_step=k)
    state = MTState(node, (5, 3), compiled=compiled)
    state.record = True
    spikes, codes = [], []
    for x in xs:
        spikes.append(state.step(x))
        codes.append(state.code.clone())
    assert codes[0].dtype == torch.int16
    assert torch.equal(torch.stack(spikes), run_multi(xs, th_pos, th_neg, levels, k, compiled))
    th_p = torch.as_tensor(th_pos, dtype=torch.float32).expand(5, 3)
    th_n = torch.as_tensor(th_neg if th_neg is not None else th_pos, dtype=torch.float32).expand(5, 3)
    span = 2 ** levels - 1
    for t in range(6):
        for index in np.ndindex(2, 5, 3):
            s = spikes[t][index].item()
            th = th_p[index[1:]].item() if s >= 0 else th_n[index[1:]].item()
            rest, m = abs(s), 0
            for j in range(levels - 1, -1, -1):
                if rest >= th * 2 ** j * (1 - 1e-5):
                    rest, m = rest - th * 2 ** j, m + 2 ** j
            assert rest <= 1e-5 * abs(s) and bin(m).count("1") <= k
            active = xs[t][index].item() != 0
            flat = np.ravel_multi_index(index, (2, 5, 3))
            assert codes[t][flat].item() == (m if s >= 0 else -m) + span + (2 * span + 1) * active


def test_k_level_event_codes_need_at_most_13_levels():
    from ecmt.errors import GraphError
    node = MTNeuron(name="mt", inputs=("x",), th_pos=torch.tensor(1.0), th_neg=None, levels=14, spikes_per_step=2)
    state = MTState(node, (4,))
    with pytest.raises(GraphError, match="node 'mt' \\(mt_neuron\\): field levels: 14 levels with spikes_per_step 2"):
        state.record = True
    MTState(MTNeuron(name="mt", inputs=("x",), th_pos=torch.tensor(1.0), th_neg=None, levels=14), (4,)).record = True


def test_executor_records_event_codes_of_k_level_graphs():
    """hw_sim counts from record_levels codes: a k > 1 graph records them, with the same output."""
    from ecmt.ir import Input, Output, SpikingGraph
    from ecmt.runtime.executor import GraphExecutor
    graph = SpikingGraph([Input(name="x", inputs=(), shape=(4,)),
                          MTNeuron(name="mt", inputs=("x",), th_pos=torch.tensor(0.3), th_neg=None, levels=3,
                                   spikes_per_step=2),
                          Output(name="out", inputs=("mt",))])
    x = torch.tensor([[0.3, 0.9, 1.5, 2.1]])
    recording = GraphExecutor(graph, record_levels=True)
    codes = []
    out = recording.run(x, 3, observer=lambda node, inputs, y, t: node.name == "mt" and codes.append(
        recording.state("mt").code.clone()))
    assert torch.equal(out, GraphExecutor(graph).run(x, 3))
    # step 1: 0.3 -> 1 (m = 1), 0.9 -> 3 (2 + 1), 1.5 -> 5 (4 + 1), 2.1 -> 6 (4 + 2: k = 2 of 4 + 2 + 1);
    # every input non-zero: + 2 (2^3 - 1) + 1 = 15, and the code's offset 2^3 - 1 = 7
    assert codes[0].tolist() == [m + 7 + 15 for m in (1, 3, 5, 6)]


def test_convert_checks_spikes_per_step_against_levels():
    import ecmt
    from ecmt.errors import EcmtError
    with pytest.raises(EcmtError, match="spikes_per_step must be in 1..levels = 2, got 3"):
        ecmt.convert(torch.nn.ReLU(), torch.zeros(4, 3), levels=2, spikes_per_step=3, progress=False)
    graph = ecmt.convert(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
                         torch.randn(16, 3), levels=4, spikes_per_step=4, progress=False).graph
    assert [n.spikes_per_step for n in graph.of_kind(MTNeuron)] == [4]


def test_inspect_shows_each_neurons_k():
    import ecmt
    from models import relu_mlp
    graph = ecmt.convert(relu_mlp(), torch.randn(32, 1, 8, 8), spikes_per_step=3, progress=False).graph
    rows = ecmt.summarize(graph).split("MT neurons")[1].splitlines()[2:]
    assert len(rows) == 2 and all(row.split()[2:4] == ["8", "3"] for row in rows), rows
