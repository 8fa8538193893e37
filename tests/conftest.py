"""Shared fixtures: the tiny random models, the real SmolLM2, and the shared data folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The suite never reaches a model hub: an id that is not cached fails at once with sss's message
# (set before transformers and huggingface_hub read it at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sss.models import load_model  # noqa: E402

SHARED_DATA = Path(os.environ.get("SSS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ZsRE/CounterFact/KnowEdit files that sit beside the checkout (CI has them too)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is missing (set SSS_SHARED_DATA to point at it)")
    return SHARED_DATA


@pytest.fixture
def tiny_gpt2():
    return load_model("tiny-gpt2", seed=0)


@pytest.fixture
def tiny_llama():
    return load_model("tiny-llama", seed=0)


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"])
def tiny_model(request):
    return load_model(request.param, seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, shared by the whole session; tests must restore their edits."""
    try:
        return load_model("smollm2-135m")
    except ValueError as error:  # the wheel is missing: say how to install it
        pytest.skip(str(error))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test, then the previous count back.

    Tiny tensors gain nothing from a second thread, and on a machine shared by several processes
    the threads of each wait for the others at every operation, which makes small models many
    times slower. Request it by name, or ``@pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
