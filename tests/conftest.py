"""Settings and fixtures every test shares.

* Kernels run eagerly (ECMT_COMPILE=0): compiling would dominate this suite's small runs.
  A test of compiled code is marked ``@pytest.mark.compile`` and runs with ECMT_COMPILE=1.
  This is the one switch; set ECMT_COMPILE=1 in the environment to run every test compiled.
* Expensive objects are made once per run (session scope) and must not be modified by a
  test: the trained tiny CNN, the converted demo ViT and CNN, the Fashion-MNIST splits.
* Tests that need Fashion-MNIST take the `fashion_mnist` fixture, which skips them, with
  the reason, where the data set is absent.
"""
import os

import pytest
import torch

os.environ.setdefault("ECMT_COMPILE", "0")      # before any test builds an executor (and in subprocesses)


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: tests torch.compile'd code; runs with ECMT_COMPILE=1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _compile_switch(request, monkeypatch):
    if request.node.get_closest_marker("compile") is not None:
        monkeypatch.setenv("ECMT_COMPILE", "1")


@pytest.fixture(scope="session")
def fashion_mnist():
    """(train, test) Fashion-MNIST splits; skips the test where the data set is absent."""
    from ecmt import data
    try:
        return data.fashion_mnist("train"), data.fashion_mnist("test")
    except data.DataError as err:
        pytest.skip(f"Fashion-MNIST is absent: {err}")


def _convert_demo(name, fashion_mnist):
    import ecmt
    from ecmt.zoo import load_model
    return ecmt.convert(load_model(name), fashion_mnist[0].images[:256], progress=False).graph


@pytest.fixture(scope="session")
def demo_vit_graph(fashion_mnist):
    """The demo ViT converted with the paper's calibration on 256 training images."""
    return _convert_demo("demo", fashion_mnist)


@pytest.fixture(scope="session")
def demo_cnn_graph(fashion_mnist):
    return _convert_demo("demo-cnn", fashion_mnist)


@pytest.fixture(scope="session")
def digits_cnn():
    """A small ReLU CNN trained on scikit-learn's digits (30 Adam steps), in eval mode, and the
    training split."""
    import torch.nn as nn
    from ecmt import data
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
        train = data.digits("train")
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(30):
            loss = nn.functional.cross_entropy(model(train.images), train.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), train
