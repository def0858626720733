"""The degradation benchmark end to end on a tiny task: plain and residual ResNet-14 trained by
the real trainer on sklearn's 8x8 digits, then the files, the schema and the lesion effect."""
import json
import os

import numpy as np

from benchmarks.course import degradation


def test_degradation_tiny_end_to_end(tmp_path):
    out = str(tmp_path / "degradation")
    degradation.main(["--preset", "tiny", "--depths", "14", "--bn-off-depths", "--out", out])
    for name in ("results.json", "curves.png", "grad_norms.png", "lesion.png", "report.md"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert not os.path.exists(os.path.join(out, "runs"))   # trainer workdirs cleaned up

    runs = json.load(open(os.path.join(out, "results.json")))["runs"]
    assert [(r["depth"], r["residual"]) for r in runs] == [(14, False), (14, True)]
    plain, res = runs
    for r in runs:
        assert r["params"] == plain["params"]              # option A: no extra parameters
        assert len(r["grad_norms_init"]) == len(r["grad_norms_end"]) == 14
        assert len(r["lesion"]) == 6 and r["train_error"] and r["test_error"]
        assert r["train_error"][-1][0] == r["steps"] == 150
        assert 0 <= r["final_train_error"] <= 1 and 0 <= r["final_test_error"] <= 1
    # Both nets learn the task (measured: test error 0.014 residual, 0.022 plain) ...
    assert res["final_test_error"] < 0.06 and plain["final_test_error"] < 0.1
    # ... and deleting one block (Veit et al. 2016) leaves the residual net above 0.7 test accuracy
    # for most blocks (measured 0.72-0.97, 0.34 for the first), while the plain net, whose every
    # block is on the only path, falls to near chance (measured 0.05-0.18).
    assert np.median(res["lesion"]) > 0.7
    assert np.mean(plain["lesion"]) < 0.3
    assert "| ResNet-14 | yes | 43,490 |" in open(os.path.join(out, "report.md")).read()
