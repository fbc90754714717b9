"""Shared pytest setup: make ``tests/`` importable (``server_harness``), shared fixtures (a trained datastore
made once per session and copied for each test that needs one) and the ``--random-order`` option."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_SEED = pytest.StashKey["int | None"]()

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# This checkout's library, ahead of whichever checkout the venv's editable install points at (a git
# worktree shares the venv of the main checkout), here and in every subprocess a test starts.
_LIB = str(Path(__file__).resolve().parents[1] / "lib")
if sys.path[:1] != [_LIB]:
    sys.path.insert(0, _LIB)
os.environ["PYTHONPATH"] = os.pathsep.join([_LIB, *filter(None, [os.environ.get("PYTHONPATH")])])


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``trained_template(n_studies=3)``: a studies folder of ``n_studies`` synthetic studies (12 slices at 32x32)
    with a tiny model trained and published over them (``trained_datastore.make_trained_datastore``), made
    once per session for each ``n_studies``. Never serve or change it: copy it (``trained_studies``,
    ``trained_datastore.copy_trained_datastore``)."""
    made: dict[int, Path] = {}

    def template(n_studies: int = 3) -> Path:
        if n_studies not in made:
            from trained_datastore import make_trained_datastore

            studies = tmp_path_factory.mktemp(f"trained-template-{n_studies}") / "studies"
            make_trained_datastore(studies, n_studies=n_studies)
            made[n_studies] = studies
        return made[n_studies]

    return template


@pytest.fixture
def trained_studies(tmp_path: Path, trained_template: Callable[[int], Path]) -> Callable[..., Path]:
    """``trained_studies(n_studies=3, dest=tmp_path / "studies")``: this test's own copy of the trained
    template (workspace included), ready to be served by ``server_harness.start_server``."""

    def copy(n_studies: int = 3, dest: Path | None = None) -> Path:
        from trained_datastore import copy_trained_datastore

        return copy_trained_datastore(trained_template(n_studies), dest or tmp_path / "studies")

    return copy


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: on 2 shared cores two threads per test are slower and less repeatable."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- random order (no plugin needed) ---------------------------------------------------------------------
# ``--random-order`` shuffles the test modules and the tests within each module, as pytest-randomly does:
# a module's tests stay together, so its module-scoped fixtures (a server) are set up once. The seed is
# printed in the report header; ``--random-order-seed N`` repeats an order (and implies ``--random-order``).
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("random-order")
    group.addoption("--random-order", action="store_true", default=False,
                    help="run the test modules, and the tests within each module, in a random order")
    group.addoption("--random-order-seed", type=int, default=None, metavar="N",
                    help="seed of --random-order (implies it); a random seed is chosen when not given")


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("--random-order-seed")
    if seed is None and config.getoption("--random-order"):
        seed = random.SystemRandom().randrange(2**31)
    config.stash[_SEED] = seed


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = config.stash.get(_SEED, None)
    if seed is None:
        return None
    return f"random order: seed {seed} (repeat it with --random-order-seed {seed})"


@pytest.hookimpl(tryfirst=True)  # before pytest groups tests by higher-scoped parametrized fixtures
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seed = config.stash.get(_SEED, None)
    if seed is None:
        return
    rng = random.Random(seed)
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:  # grouped by module, in collection order
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    order = list(modules.values())
    rng.shuffle(order)
    for group in order:
        rng.shuffle(group)
    items[:] = [item for group in order for item in group]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    line = pytest_report_header(config)  # also at the end: ``-q`` (scripts/run_tests.sh) hides the header
    if line is not None:
        terminalreporter.write_line(line)
