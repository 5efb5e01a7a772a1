"""The end-to-end tests' shared tiny run: its folder tree and one finished run of it, made once.

A module may define its own ``tree`` (another shape of set), which then takes precedence there.
"""

import pytest
from oracles import tiny_synthetic_set
from oracles.runs import run_train, tiny_run_argv


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    """4 training identities x 2 cameras, 2 test identities: the tiny run's folder tree."""
    return tiny_synthetic_set(
        tmp_path_factory.mktemp("data"),
        num_train_ids=4,
        num_test_ids=2,
        images_per_id_per_camera=1,
        num_distractors=1,
    )


@pytest.fixture(scope="session")
def finished(tree, tmp_path_factory):
    """A finished tiny run: its folder."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_train(tiny_run_argv(tree, out))[0] == 0
    return out
