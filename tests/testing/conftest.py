# The kit's pytest fixture, imported here the way a user's conftest.py may import it.
from refattn.testing.pytest_plugin import attention_conformance  # noqa: F401
