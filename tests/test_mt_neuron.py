"""The MT neuron: the spec's worked cases and the vectorized form vs a literal loop."""
import numpy as np
import pytest
import torch

from ecmt.ir import MTNeuron
from ecmt.runtime.neuron import MTState

from reference import mt_neuron_reference


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
