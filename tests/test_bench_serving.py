"""`manage.py bench_serving`, tiny, on the micro base: it prints every table the issue asks
for and writes the same figures as JSON. (What it measures is `make bench-serving`'s
business; here only that a run is whole and says what it ran.)"""

import json

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("targets, modules", [("all-linear", 14), ("attention", 8)])
def test_a_tiny_run_prints_every_table_and_names_the_adapted_modules(
    micro_base, tmp_path, capsys, targets, modules
):
    report = tmp_path / "bench.json"
    call_command(
        "bench_serving",
        base="micro",
        batch=4,
        adapters=2,
        rank=2,
        new_tokens=3,
        rounds=1,
        loads=2,
        threads=1,
        zipf_requests=2000,
        targets=targets,
        json_path=str(report),
    )

    out = capsys.readouterr().out
    assert f"rank 2 on {modules} linear modules ({targets})" in out
    for line in ("ours / bare base", "ours / PEFT mixed batch", "Adapter cold load", "Belady"):
        assert line in out, line
    assert "ours 4/4" in out  # every row's greedy tokens equal that adapter run alone
    # The compiled CPU kernel serves "ours", and the torch-ops path runs beside it.
    assert "ours serves through the compiled CPU LoRA kernel" in out
    assert "ours with torch ops 4/4" in out and "ours / ours with torch ops only" in out
    figures = json.loads(report.read_text())
    assert figures["conditions"]["targets"] == targets
    assert figures["conditions"]["adapted_modules"] == modules
    assert figures["throughput"]["rows_equal_to_alone"]["ours"] == 4
    assert figures["conditions"]["cpu_kernel"] is True and figures["throughput"]["cpu_kernel"] is True
