"""Unit-test setup: rewrite asserts in the shared helpers so their failures explain themselves."""

import pytest

pytest.register_assert_rewrite("tests.unit.support")
