"""The captured step (GraphExecutor(capture=True)): one step of the whole graph
as one function for torch.compile, with the state of some node chains shared.

What a captured step costs beyond an ANN forward is mostly the state it reads
and writes every step (docs/conversion.md), so chains whose state is
redundant keep less of it.  In exact arithmetic:

* ECM -> MT (a nonlinearity ECM whose only consumer is an MT neuron): the
  neuron's membrane is the ECM's running output minus the spikes sent so far,
  v_t = t f(S_t / t) - C_(t-1).  The pair keeps S and C instead of S, the
  running output and v.
* product -> ECM (a direct-form product ECM whose only consumer is a
  nonlinearity ECM): the ECM's input sum is the product's running output,
  S_t = scale A_t B_t / t.  Neither the product's running output nor S is kept.
* MT -> product (an MT neuron of such a pair whose only consumer is a
  direct-form product ECM): the product's running operand is the spike sum C.

The numbers are node-by-node's up to rounding (tests/test_captured_step.py).
"""
from __future__ import annotations

import dataclasses

import torch

from .ecm import NonlinearityECMState, ProductECMState
from .kernels import mt_update
from .neuron import MTState


@dataclasses.dataclass
class Role:
    """How one stateful node runs in the captured step.
    pair: an ECM -> MT pair (on both members); from_total: an ECM whose input is its
    product's running output; total: a product that emits its running output;
    shared: a product's operand positions whose running sum is an MT pair's spike sum."""
    pair: bool = False
    from_total: bool = False
    total: bool = False
    shared: tuple = ()


def plan(steps) -> list[Role]:
    """The role of every step (a default Role where nothing is shared)."""
    consumers: dict[int, list[int]] = {i: [] for i in range(len(steps))}
    for i, step in enumerate(steps):
        for j in step.srcs:
            consumers[j].append(i)
    roles = [Role() for _ in steps]
    live = lambda i: not steps[i].static
    is_ecm = lambda i: type(steps[i].state) is NonlinearityECMState and live(i)
    is_direct = lambda i: (type(steps[i].state) is ProductECMState and steps[i].state.form == "direct"
                           and live(i))
    for i, step in enumerate(steps):
        if is_ecm(i) and len(step.srcs) == 1:
            (src,) = step.srcs
            if is_direct(src) and consumers[src] == [i]:
                roles[i].from_total = roles[src].total = True
            if len(consumers[i]) == 1:
                (m,) = consumers[i]
                if type(steps[m].state) is MTState and steps[m].srcs == [i]:
                    roles[i].pair = roles[m].pair = True
    for m, step in enumerate(steps):
        if roles[m].pair and type(step.state) is MTState and len(consumers[m]) == 1:
            (p,) = consumers[m]
            if is_direct(p) and steps[p].srcs.count(m) == 1:
                roles[p].shared += (steps[p].srcs.index(m),)
    return roles


def _operand_shapes(step, shapes) -> list[list[int]]:
    a, b = (list(shapes[name]) for name in step.node.inputs)
    if step.state.ta:
        a[-2:] = a[-1], a[-2]
    if step.state.tb:
        b[-2:] = b[-1], b[-2]
    return [a, b]


def zero_states(steps, roles, shapes, batch: int, device) -> list:
    """Every stateful node's state before step 1: zeros, in the layout its role keeps
    (None for what a chain shares).  From them the step computes step 1 too."""
    zeros = lambda shape: torch.zeros(batch, *shape, device=device)
    states = []
    for step, role in zip(steps, roles):
        node, state = step.node, step.state
        if state is None or step.static:
            states.append(None)
        elif isinstance(state, MTState):
            states.append((zeros(shapes[node.name]),))          # C for a pair, else v
        elif isinstance(state, ProductECMState):
            a, b = (None if pos in role.shared else zeros(shape)
                    for pos, shape in enumerate(_operand_shapes(step, shapes)))
            out = None if role.total else zeros(shapes[node.name])
            states.append((a, b, out) if state.form == "direct"
                          else (a, b, zeros(shapes[node.name]), out))
        else:
            total = None if role.from_total else zeros(shapes[node.inputs[0]])
            states.append((total, None if role.pair else zeros(shapes[node.name])))
    return states


def step_body(steps, roles, output_index: int, statics: list, states: list, t: torch.Tensor):
    """One step as one pure function, for torch.compile to trace into one graph:
    `statics` are the static nodes' values, `states` the others' states (zero_states
    before step 1), t a float64 0-d tensor; returns (the output's increment, new states).
    Outside the chains each node computes what its `step` computes, with the same
    kernel functions."""
    values = list(statics)
    new_states = list(states)
    spike_sums = {}                     # MT pair index -> C_t
    for i, (step, role) in enumerate(zip(steps, roles)):
        if step.static:
            continue
        xs = [values[j] for j in step.srcs]
        state = step.state
        if state is None:
            values[i] = step.fn(xs, t)
        elif isinstance(state, MTState):
            args = (state.th_pos, state.th_neg, state.levels, *state._k)
            if role.pair:               # xs[0] is the ECM's running output; the state is C
                (spikes_sent,) = states[i]
                s, _ = mt_update.eager(-spikes_sent, xs[0], *args)
                spike_sums[i] = spikes_sent + s
                values[i], new_states[i] = s, (spike_sums[i],)
            else:
                s, v = mt_update.eager(states[i][0], xs[0], *args)
                values[i], new_states[i] = s, (v,)
        elif isinstance(state, ProductECMState):
            if role.total or role.shared:
                values[i], new_states[i] = _product(state, role, states[i], xs, step.srcs, spike_sums, t)
            else:
                values[i], new_states[i] = state.pure_step(states[i], xs[0], xs[1], t)
        elif role.pair or role.from_total:
            values[i], new_states[i] = _ecm(state, role, states[i], xs[0], t)
        else:
            values[i], new_states[i] = state.pure_step(states[i], xs[0], t)
    return values[output_index], new_states


def _product(state: ProductECMState, role: Role, st: tuple, xs, srcs, spike_sums: dict, t):
    """A direct-form product in a chain: operands from the spike sums where shared;
    emits its running output (role.total) or its increment."""
    operands = []
    for pos, (x, flag) in enumerate(zip(xs, (state.ta, state.tb))):
        running = spike_sums[srcs[pos]] if pos in role.shared else st[pos] + (x.transpose(-1, -2) if flag else x)
        if pos in role.shared and flag:
            running = running.transpose(-1, -2)
        operands.append(running)
    new = torch.matmul(*operands) * (state.scale / t).float()
    kept = tuple(None if pos in role.shared else operands[pos] for pos in range(2))
    if role.total:
        return new, kept + (None,)
    return new - st[2], kept + (new,)


def _ecm(state: NonlinearityECMState, role: Role, st: tuple, x: torch.Tensor, t):
    """A nonlinearity ECM in a chain: its input sum is x itself (role.from_total) or
    S + x; emits its running output to its MT pair, or its increment."""
    total = x if role.from_total else st[0] + x
    tf = t.float()
    new = state.f(total / tf, *state.params) * tf
    kept = None if role.from_total else total
    if role.pair:
        return new, (kept, None)
    return new - st[1], (kept, new)
