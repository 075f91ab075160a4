import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

if not torch.cuda.is_available():  # Triton kernels run under its interpreter on CPU tensors; it must be set
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is defined

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile("large", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))  # "large": 1000 examples


@pytest.fixture(autouse=True)
def _seed_and_checks():
    torch.manual_seed(0)
    import seglosses

    seglosses.set_input_checks(True)
    seglosses.set_backend("auto")
    yield
    seglosses.set_input_checks(True)
    seglosses.set_backend("auto")


def pytest_generate_tests(metafunc):
    """Parametrise ``entry`` by the ``entries`` of a conformance class."""
    entries = getattr(metafunc.cls, "entries", None)
    if "entry" in metafunc.fixturenames and entries is not None:
        metafunc.parametrize("entry", entries, ids=[entry.name for entry in entries])
