"""The host-overhead section of the benchmark report (``--host-overhead``): it runs, its numbers
are sane, the profile adds up, and it lands in report.json and report.md."""
import json
import math

import pytest
import torch

from h3r.benchmark import cli, host_overhead


@pytest.fixture(scope="module")
def section_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("host")
    argv = ["--device", "cpu", "--host-overhead", "--skip-throughput", "--host-calls", "20", "--host-rounds", "2",
            "--copy-mib", "1", "--commit", "abc123", "--out", str(out)]
    return out, cli.main(argv)


def test_section_rows_are_sane(section_report):
    _, report = section_report
    section = report["host_overhead"]
    assert report["rows"] == [] and report["settings"]["host_overhead"] is True
    assert section["device"] == "cpu" and section["shape"] == list(host_overhead.DEFAULT_SHAPE)
    rows = {(row["call"], row["impl"]): row for row in section["rows"]}
    for key in [("heatmap_loss fwd+bwd", "auto"), ("heatmap_loss fwd+bwd", host_overhead.REGISTERED),
                ("decode fwd", host_overhead.REGISTERED), ("heatmap_loss fwd+bwd", "reference"),
                ("heatmap_loss fwd+bwd", "reference, direct"), ("heatmap_loss fwd+bwd", "reference, autograd.Function"),
                ("heatmap_loss fwd+bwd", "reference, torch.ops.h3r (no api.py)"), ("decode fwd", "auto"),
                ("decode fwd", "reference, direct"), ("bce fwd+bwd", "plain PyTorch")]:
        assert key in rows, key
    for row in section["rows"]:
        assert row["note"] == "", row
        # tiny inputs: microseconds to a few tens of milliseconds on a loaded 2-core CI machine
        assert 1e-4 < row["cpu_ms"] < 100 and 1e-4 < row["wall_ms"] < 1000, row
        assert 0 < row["cpu_ms_min"] <= row["cpu_ms"]
        assert row["x_bce"] == pytest.approx(row["cpu_ms"] / rows[("bce fwd+bwd", "plain PyTorch")]["cpu_ms"])
    # the op does strictly more than plain BCE and than its own backend called directly (generous margins: noise)
    loss = rows[("heatmap_loss fwd+bwd", "auto")]["cpu_ms"]
    assert loss > rows[("bce fwd+bwd", "plain PyTorch")]["cpu_ms"]
    assert loss > 0.8 * rows[("heatmap_loss fwd+bwd", "reference, direct")]["cpu_ms"]


def test_profiles_add_up(section_report):
    _, report = section_report
    profiles = report["host_overhead"]["profiles"]
    registered = f"heatmap_loss fwd+bwd ({host_overhead.REGISTERED})"
    assert set(profiles) == {"heatmap_loss fwd+bwd (auto)", registered, "decode fwd (auto)", "bce fwd+bwd (plain PyTorch)"}
    known = {name for name, _ in host_overhead.CATEGORIES} | {host_overhead.OTHER}
    for name, profile in profiles.items():
        shares = [entry["share"] for entry in profile["categories"]]
        assert math.isclose(sum(shares), 1.0, rel_tol=1e-6), name
        assert all(entry["category"] in known for entry in profile["categories"])
        assert profile["top_functions"] and profile["torch_profiler"]
        assert profile["python_function_calls_per_call"] > 0
    dispatch = "torch.library dispatch (torch/_library, torch/_ops.py)"
    loss = {entry["category"]: entry for entry in profiles["heatmap_loss fwd+bwd (auto)"]["categories"]}
    # the op layer shows up where it should: the fast path never enters torch.library, the registered op does
    assert "input checks (h3r_kernels/checks.py)" in loss
    assert dispatch not in loss
    assert dispatch in {entry["category"] for entry in profiles[registered]["categories"]}
    for name in ("heatmap_loss fwd+bwd (auto)", registered):  # both named after the op in torch.profiler
        assert "h3r::heatmap_loss" in {row["op"] for row in profiles[name]["torch_profiler"]}, name


def test_section_in_json_and_markdown(section_report):
    out, report = section_report
    written = json.loads((out / "report.json").read_text())
    assert written["host_overhead"]["rows"] == json.loads(json.dumps(report["host_overhead"]["rows"]))
    page = (out / "report.md").read_text()
    assert "## Host overhead" in page and "### Where the time goes: heatmap_loss fwd+bwd (auto)" in page
    table = [line for line in page.splitlines() if line.startswith("| heatmap_loss fwd+bwd | auto |")]
    assert len(table) == 1 and table[0].count("|") == 8


def test_categorise():
    assert host_overhead.categorise("/x/h3r_kernels/checks.py").startswith("input checks")
    for name in ("api", "eager", "ops", "dispatch"):
        assert host_overhead.categorise(f"/x/h3r_kernels/{name}.py").startswith("op layer"), name
    assert host_overhead.categorise("/x/site-packages/torch/_library/custom_ops.py").startswith("torch.library")
    assert host_overhead.categorise("/x/site-packages/torch/autograd/function.py").startswith("autograd")
    assert host_overhead.categorise("~").startswith("C++")
    assert host_overhead.categorise("/x/h3r/benchmark/host_overhead.py") == host_overhead.OTHER


def test_time_per_call_counts_calls():
    counter = []
    timing = host_overhead.time_per_call(lambda: counter.append(1), torch.device("cpu"), calls=7, rounds=3, warmup=2)
    assert len(counter) == 2 + 7 * 3
    assert timing["cpu_ms"] >= 0 and timing["wall_ms"] > 0


def test_restores_threads_and_rejects_bad_arguments(capsys):
    threads = torch.get_num_threads()
    host_overhead.measure_host_overhead(torch.device("cpu"), (1, 1, 3, 3), calls=2, rounds=1, profile_calls=2,
                                        log=lambda message: None)
    assert torch.get_num_threads() == threads
    with pytest.raises(SystemExit):
        cli.parse_settings(["--device", "cpu", "--skip-throughput"])
    assert "nothing left to measure" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_settings(["--device", "cpu", "--host-shape", "1x2x3x4,1x2x3x4"])
    assert "one shape" in capsys.readouterr().err
