"""The demo-guidance benchmark's summary (bench/report.py): medians over seeds, the best loss
known at a wall time, the time to reach a fraction of the start loss and its ratio to exact."""
import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
import report  # noqa: E402


def test_quantile_and_median():
    assert report.median([3.0, 1.0, 2.0]) == 2.0
    assert report.median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert report.quantile([0.0, 10.0], 0.25) == 2.5
    assert report.median([1.0, math.inf, math.inf]) == math.inf
    assert report.median([1.0, 2.0, math.inf]) == 2.0
    assert math.isnan(report.median([]))


def test_best_so_far_and_time_to_reach():
    times, rel = [1.0, 2.0, 3.0], [1.0, 0.6, 0.7]
    assert report.best_so_far(times, rel, 0.5) == 1.0       # nothing known yet: the start
    assert report.best_so_far(times, rel, 2.0) == 0.6
    assert report.best_so_far(times, rel, 9.0) == 0.6       # the best, not the last
    assert report.time_to_reach(times, rel, 0.65) == 2.0
    assert report.time_to_reach(times, rel, 0.5) == math.inf


def _run(times, losses, final=None, peak=10.0):
    return {"time_s": times, "loss": losses, "final_iterate_loss": losses[-1] if final is None else final,
            "cpu_s": times[-1], "peak_mb": peak, "net_counts": {"forwards": 1, "forwards_with_grad": 1, "vjps": 1}}


def test_demo_summary():
    # exact: 2 s per iteration, halves the loss at its second iterate; greedy: 1 s per
    # iteration, halves it at its third on seed 0 and never on seed 1.
    res = {"iterations": 3, "seeds": [0, 1], "methods": ["exact", "greedy"],
           "runs": {"exact": {"0": _run([2.0, 4.0, 6.0], [10.0, 5.0, 4.0]),
                              "1": _run([2.0, 4.0, 6.0], [20.0, 10.0, 8.0])},
                    "greedy": {"0": _run([1.0, 2.0, 3.0], [10.0, 7.0, 5.0], peak=12.0),
                               "1": _run([1.0, 2.0, 3.0], [20.0, 15.0, 12.0], peak=14.0)}},
           "diagnostics": {"0": {"cos_greedy_vs_exact": 0.2, "cos_Jv_v": 0.5, "norm_Jv_over_v": 0.8},
                           "1": {"cos_greedy_vs_exact": 0.4, "cos_Jv_v": 0.7, "norm_Jv_over_v": 1.0}}}
    s = report.demo_summary(res, levels=(0.75, 0.5), fractions=(2 / 3, 1.0))
    assert s["horizon_s"] == 3.0 and s["time_points_s"] == [2.0, 3.0]
    ex, gr = s["methods"]["exact"], s["methods"]["greedy"]
    assert ex["s_per_iteration"] == 2.0 and gr["s_per_iteration"] == 1.0
    assert ex["time_to"]["0.5"] == 4.0 and ex["reached"]["0.5"] == 2
    assert gr["time_to"]["0.5"] == math.inf and gr["reached"]["0.5"] == 1   # median of (3, inf)
    assert math.isnan(gr["ratio_vs_exact"]["0.5"])                          # greedy's median time is inf
    assert gr["ratio_vs_exact_seeds_both_reach"]["0.5"] == {"median": 0.75, "seeds": 1}
    assert gr["ratio_vs_exact"]["0.75"] == pytest.approx(2.0 / 4.0)        # medians of (2, 2) and (4, 4)
    assert gr["rel_at"] == [pytest.approx(0.725), pytest.approx(0.55)]       # medians of (0.7, 0.75), (0.5, 0.6)
    assert ex["rel_at"] == [1.0, 1.0]                                       # its 2nd iterate comes at 4 s
    assert gr["peak_mb"] == 13.0 and gr["cos_vs_exact"] == pytest.approx(0.3)
    assert s["first_to"]["0.5"] == "exact"
    assert s["jacobian"]["cos_Jv_v"] == pytest.approx(0.6)
    # off a GPU the times are in exact iterations (exact: 2 s each): greedy's 0.75·L₀ at 2 s is 1
    assert s["exact_iteration_s"] == 2.0 and s["time_points_exact_iterations"] == [1.0, 1.5]
    assert gr["s_per_iteration_vs_exact"] == 0.5 and gr["time_to_exact_iterations"]["0.75"] == 1.0
    assert ex["time_to_exact_iterations"]["0.5"] == 2.0
    table = report.demo_markdown({**res, "lr": 0.05, "N": 20}, s)
    assert "| **exact** |" in table and "not reached (1/2)" in table
    assert "L/L₀ at 1.5 exact it." in table and "| greedy | 0.50 |" in table and " s / iteration" not in table
    gpu_table = report.demo_markdown({**res, "lr": 0.05, "N": 20, "workload": {"device": "cuda:0"}}, s)
    assert "L/L₀ at 3 s" in gpu_table and "| greedy | 1.00 |" in gpu_table
