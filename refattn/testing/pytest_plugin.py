"""A pytest fixture for the conformance kit.

Enable it in your ``conftest.py``::

    pytest_plugins = ["refattn.testing.pytest_plugin"]

then::

    def test_my_kernel(attention_conformance):
        attention_conformance(my_attention, capabilities=Capabilities(lse=False))

``--attention-max-examples N`` on the pytest command line changes the default budget.
(Importing the fixture into a ``conftest.py`` also works; the option then keeps its default.)
"""

import pytest

from refattn.testing.check import DEFAULT_MAX_EXAMPLES, assert_conforms


def pytest_addoption(parser):
    parser.addoption("--attention-max-examples", type=int, default=DEFAULT_MAX_EXAMPLES,
                     help="examples per refattn.testing conformance check")


@pytest.fixture
def attention_conformance(request):
    """``check(fn, **kwargs)``: :func:`refattn.testing.assert_conforms` with the command line's example budget."""
    budget = request.config.getoption("--attention-max-examples", default=DEFAULT_MAX_EXAMPLES)

    def check(fn, **kwargs):
        kwargs.setdefault("max_examples", budget)
        return assert_conforms(fn, **kwargs)

    return check
