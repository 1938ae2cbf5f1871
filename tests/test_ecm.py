"""Expectation compensation: running output sums equal t f(S_t / t) and A_t B_t / t."""
import pytest
import torch
import torch.nn.functional as F

from ecmt.runtime.ecm import NonlinearityECMState, ProductECMState

W, B = torch.linspace(0.5, 1.5, 16), torch.linspace(-1, 1, 16)
FUNCTIONS = {   # name -> (ECM state, the function it compensates)
    "gelu": (lambda: NonlinearityECMState("gelu", "none"), lambda x: F.gelu(x)),
    "softmax": (lambda: NonlinearityECMState("softmax", -1), lambda x: torch.softmax(x, dim=-1)),
    "layernorm": (lambda: NonlinearityECMState("layer_norm", W, B, 1e-5),
                  lambda x: F.layer_norm(x, (16,), W, B, 1e-5)),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_nonlinearity_running_sum_is_t_f_of_mean(name):
    make, f = FUNCTIONS[name]
    ecm = make()
    gen = torch.Generator().manual_seed(3)
    s = torch.zeros(4, 8, 16)
    out_sum = torch.zeros(4, 8, 16)
    for t in range(1, 65):
        x = torch.randn(4, 8, 16, generator=gen) * 2
        s += x
        out_sum += ecm.step(x, t)
        expected = t * f(s / t)
        rel = (out_sum - expected).norm() / expected.norm()
        assert rel < 1e-5, f"t={t}: relative error {rel:.2e}"


@pytest.mark.parametrize("form", ["direct", "incremental"])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False)])
def test_product_running_sum_is_scaled_product_of_sums_over_t(form, ta, tb):
    ecm = ProductECMState(ta, tb, scale=0.25, form=form)
    gen = torch.Generator().manual_seed(4)
    a = torch.zeros(2, 3, 6, 5)
    b = torch.zeros(2, 3, 5, 7)
    out_sum = torch.zeros(2, 3, 6, 7)
    for t in range(1, 65):
        x = torch.randn(2, 3, 6, 5, generator=gen)
        y = torch.randn(2, 3, 5, 7, generator=gen)
        a += x
        b += y
        out_sum += ecm.step(x.transpose(-1, -2) if ta else x, y.transpose(-1, -2) if tb else y, t)
        expected = 0.25 * (a @ b) / t
        rel = (out_sum - expected).norm() / expected.norm()
        assert rel < 1e-5, f"t={t}: relative error {rel:.2e}"


def test_product_forms_agree_and_state_is_not_aliased():
    gen = torch.Generator().manual_seed(5)
    direct, incremental = ProductECMState(False, False, 1.0, "direct"), ProductECMState(False, False, 1.0, "incremental")
    for t in range(1, 9):
        x, y = torch.randn(3, 4, generator=gen), torch.randn(4, 2, generator=gen)
        x_copy, y_copy = x.clone(), y.clone()
        zd, zi = direct.step(x, y, t), incremental.step(x, y, t)
        assert torch.equal(x, x_copy) and torch.equal(y, y_copy)    # inputs untouched
        x.fill_(1e6)                                                # state must not alias inputs
        torch.testing.assert_close(zd, zi, rtol=1e-5, atol=1e-5)


def test_nonlinearity_first_step_is_f():
    x = torch.randn(3, 16)
    make, f = FUNCTIONS["gelu"]
    assert torch.equal(make().step(x, 1), f(x))
