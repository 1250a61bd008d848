"""bench/gpu.py runs end to end on a CPU with tiny stand-in models (--tiny), so that its
first run on a GPU does not fail on a path nobody ran."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def test_gpu_bench_runs_tiny_on_cpu(tmp_path):
    page = tmp_path / "bench_gpu.md"
    real = BENCH.parents[1] / "docs" / "bench_gpu.md"
    before = real.read_text() if real.exists() else None
    result = runpy.run_path(str(BENCH), run_name="bench_gpu")["main"](
        ["--tiny", "--device", "cpu", "--out", str(page)])
    text = page.read_text()
    assert "Not yet run on a GPU" in text
    assert json.loads(page.with_suffix(".json").read_text())["bases"].keys() == {"135m", "1.5b"}
    for key, base in result["bases"].items():
        mmlu, rows = base["mmlu"], base["gsm8k"]["rows"]
        assert mmlu["one_at_a_time"]["seconds"] > 0 and mmlu["batched"]["seconds"] > 0
        assert mmlu["reference_way"]["seconds_per_iteration"] > 0
        assert 0 <= mmlu["batched"]["non_forward_share"] < 1
        # on a CPU every engine gives the same greedy answers, particle by particle
        for name, row in rows.items():
            if name != "reference way":
                assert row["agreement_with_batched"] == 1.0, (key, name)
        assert rows["all particles batched"]["engine"].get("hf_generate", 0) == 0
        assert rows["reference way"]["seconds_per_iteration"] > 0
    # only a GPU run writes the real page
    assert (real.read_text() if real.exists() else None) == before
