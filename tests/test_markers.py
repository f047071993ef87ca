"""The marker selection of tests/conftest.py: slow and GPU tests run only when -m names them, so that
`-m 'not integration'` (which replaces any -m of the configuration) still leaves them out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import named_markers

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]

# One test per combination of markers; the test's name lists them.
MARKED = """
import pytest

def test_plain():
    pass

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.gpu
def test_gpu():
    pass

@pytest.mark.integration
def test_integration():
    pass

@pytest.mark.slow
@pytest.mark.gpu
def test_slow_gpu():
    pass

@pytest.mark.integration
class TestMarkedClass:
    @pytest.mark.slow
    def test_slow_integration(self):
        pass
"""


@pytest.mark.parametrize("expression, names", [
    ("", set()), ("slow", {"slow"}), ("not integration", {"integration"}), ("slow or not gpu", {"slow", "gpu"}),
    ("(slow and integration) or not_a_marker", {"slow", "integration", "not_a_marker"}),
])
def test_named_markers(expression, names):
    assert named_markers(expression) == names


@pytest.mark.parametrize("args, selected", [
    ((), {"test_plain", "test_integration"}),
    (("-m", "not integration"), {"test_plain"}),
    (("-m", "integration"), {"test_integration"}),
    (("-m", "slow"), {"test_slow", "test_slow_integration"}),
    (("-m", "gpu"), {"test_gpu"}),
    (("-m", "slow or gpu"), {"test_slow", "test_gpu", "test_slow_gpu", "test_slow_integration"}),
    (("-m", "not slow"), {"test_plain", "test_integration"}),
    (("-m", "slow and not integration"), {"test_slow"}),
    (("-m", "integration", "-m", "not integration"), {"test_plain"}),  # the last -m wins, as in pytest
])
def test_slow_and_gpu_run_only_when_named(pytester, args, selected):
    """The project's own configuration and conftest, on a file with every combination of markers;
    --strict-markers fails the run if pyproject.toml does not register a marker used here."""
    pytester.makepyprojecttoml((ROOT / "pyproject.toml").read_text())
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_marked=MARKED)
    # In this process, so without two plugins: the snapshot plugin's session end removes a folder the outer
    # run still uses, and hypothesis's re-imports hypothesis (1.4 s) after each run has put sys.modules back.
    result = pytester.runpytest("test_marked.py", "--collect-only", "-q", "--strict-markers",
                                "-p", "no:textual-snapshot", "-p", "no:hypothesispytest", *args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), result.stdout.str()
    collected = {line.split("::")[-1] for line in result.outlines if line.startswith("test_marked.py::")}
    assert collected == selected
    assert f"({6 - len(selected)} deselected)" in result.stdout.str()
