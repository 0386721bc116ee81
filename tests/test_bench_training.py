"""`manage.py bench_training`'s rounds, tiny: they alternate which side goes first and
must train the same adapters every time. (The full command also grades every adapter,
which takes minutes even on the micro base; `make bench-training` is that run.)"""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from adapters_app.management.commands.bench_training import (
    TrainingBench,
    rounds_table,
    same_payloads,
    speedup_of,
)
from workers.engine.report import REPORT_TRAINING
from workers.engine.training import TrainingConfig

pytestmark = pytest.mark.django_db


@pytest.fixture
def bench(micro_base):
    config = TrainingConfig.from_dict({**REPORT_TRAINING, "steps": 2})
    return TrainingBench(micro_base.path, micro_base.digest, 2, config, log=lambda line: None)


def test_rounds_alternate_which_side_goes_first_and_must_train_the_same_adapters(bench):
    rounds = [bench.train_round(index, 2) for index in range(2)]

    assert [list(timings) for timings in rounds] == [["separate", "shared"], ["shared", "separate"]]
    assert all(len(timings[side].payloads) == 2 for timings in rounds for side in timings)
    assert same_payloads(rounds)
    table = rounds_table(rounds)
    assert "not deterministic" not in table
    assert f"{speedup_of(rounds[1]):6.2f}" in table.splitlines()[-1]

    rounds[1]["shared"].payloads[0] = b"another adapter"
    assert not same_payloads(rounds)
    assert "not deterministic" in rounds_table(rounds)


def test_the_training_bench_refuses_zero_rounds(micro_base):
    with pytest.raises(CommandError, match="--rounds must be at least 1"):
        call_command("bench_training", base="micro", rounds=0)
