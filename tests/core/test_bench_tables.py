"""The benchmark's published Markdown tables (bench/report.py): seconds only from a GPU,
ratios measured side by side in the same run otherwise."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
import report  # noqa: E402


def _table_job(device):
    return {"kind": "table", "workload": {"unet_config": {"model_channels": 32}, "latent": 16, "name": "w",
                                          "device": device},
            "rows": [{"method": "floor", "N": 5, "median_s": 2.0, "reps": 5},
                     {"method": "exact", "N": 5, "median_s": 2.5, "reps": 3}]}


def _cells(table, method):
    line = next(l for l in table.splitlines() if l.split("|")[1].strip().strip("*") == method)
    return [c.strip() for c in line.strip("|").split("|")]


def test_method_table_quotes_seconds_only_from_a_gpu():
    cpu = report.markdown_table(report.table_rows([_table_job("cpu")]))
    head = _cells(cpu, "method")
    assert "time s" not in head and "2.500" not in cpu
    assert _cells(cpu, "exact")[head.index("×floor")] == "1.25 (3×)"    # the call count moves to the ratio
    gpu = report.markdown_table(report.table_rows([_table_job("cuda:0")]))
    head = _cells(gpu, "method")
    assert _cells(gpu, "exact")[head.index("time s")] == "2.500 (3×)"
    assert _cells(gpu, "exact")[head.index("×floor")] == "1.25"


def _budget_job(device):
    rows = []
    for m, fast, med in (("plain pass", 1.0, 1.2), ("floor", 3.0, 3.3), ("naive autograd", 2.0, 2.4),
                         ("exact budget 0", 3.3, 3.6), ("exact budget N/4", 3.0, 3.5),
                         ("exact budget N/2", 2.7, 3.0), ("exact budget N", 2.2, 2.5)):
        rows.append({"method": m, "N": 20, "cpu_s": [fast, fast + 0.5], "median_cpu_s": med, "reps": 7,
                     "peak_mb": 10.0, "budget_mb": None if "budget" not in m else 1.0, "kept_steps": None})
    return {"kind": "budget", "workload": {"name": "w", "device": device}, "rows": rows}


def test_budget_table_quotes_cpu_seconds_only_from_a_gpu():
    cpu = report.budget_markdown_table(report.budget_rows([_budget_job("cpu")]))
    head = _cells(cpu, "row")
    assert "CPU s" not in head and "median CPU s" not in head
    # fastest calls' ratio, then the medians' ratio: 2.2/3.0 and 2.5/3.3
    assert _cells(cpu, "exact budget N")[head.index("×floor fastest (median)")] == "0.73 (0.76)"
    gpu = report.budget_markdown_table(report.budget_rows([_budget_job("cuda:0")]))
    head = _cells(gpu, "row")
    assert _cells(gpu, "exact budget N")[head.index("CPU s")] == "2.200"
