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


# Per-loss checks that cost seconds each (torch.compile traces the whole loss). The default run (the README's
# command, and CI) keeps one loss per implementation module and input domain; the others carry the `full`
# marker, deselected by default: `python -m pytest -m full` runs them.
BOUNDED_PER_LOSS = {
    "tests/test_conformance.py::TestRegisteredLosses::test_torch_compile_equals_eager",
    "tests/test_reliability_specs.py::test_every_loss_compiles_with_dynamic_shapes",
    "tests/test_fuzz.py::test_dynamic_compile_equals_eager",
}


@pytest.hookimpl(tryfirst=True)  # before the `-m` deselection reads the markers
def pytest_collection_modifyitems(config, items):
    """Mark all but the first loss of each (module, domain) group of a bounded per-loss check ``full``."""
    import seglosses

    registry = {entry.name: entry for entry in seglosses.list_losses(details=True)}
    seen = set()
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        entry = params.get("entry", registry.get(params.get("name")))
        test = item.nodeid.split("[")[0]
        if test not in BOUNDED_PER_LOSS or entry is None:
            continue
        group = (test, entry.module.__module__, entry.domain)
        if group in seen:
            item.add_marker(pytest.mark.full)
        seen.add(group)


def pytest_generate_tests(metafunc):
    """Parametrise ``entry`` by the ``entries`` of a conformance class."""
    entries = getattr(metafunc.cls, "entries", None)
    if "entry" in metafunc.fixturenames and entries is not None:
        metafunc.parametrize("entry", entries, ids=[entry.name for entry in entries])
