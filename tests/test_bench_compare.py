"""``python -m h3r.benchmark.compare``: two reports of one GPU session joined row by row."""
import json

import pytest

from h3r.benchmark import compare


def _row(op, impl, ms, pct, shape=(256, 98, 64, 64), dtype="float32"):
    return {"op": op, "impl": impl, "shape": list(shape), "dtype": dtype, "median_ms": ms, "pct_copy_bandwidth": pct}


def _report(rows, commit, device="NVIDIA H100 80GB HBM3", gbps=3000.0, claim=True):
    return {"facts": {"git_commit": commit, "device_name": device}, "copy_bandwidth": {"gbps": gbps},
            "performance_claim": claim, "rows": rows}


NEW = _report([_row("decode", "triton", 0.1, 60.0), _row("heatmap_loss", "triton", 0.5, 40.0),
               _row("decode", "reference", 3.0, 2.0), _row("encode", "triton", 0.1, 99.0, dtype="bfloat16")], "a" * 40)
BASELINE = _report([_row("heatmap_loss", "triton", 0.75, 26.7), _row("decode", "triton", 0.15, 40.0),
                    _row("encode", "triton", 0.1, 100.0)], "b" * 40, gbps=2990.0)


def test_joins_rows_and_gives_the_speedup():
    result = compare.compare(NEW, BASELINE)
    assert [(r["op"], r["impl"]) for r in result["rows"]] == [("decode", "triton"), ("heatmap_loss", "triton")]
    decode, loss = result["rows"]
    assert decode["speedup"] == pytest.approx(1.5) and loss["speedup"] == pytest.approx(1.5)
    assert (loss["baseline_pct_copy_bandwidth"], loss["pct_copy_bandwidth"]) == (26.7, 40.0)
    assert result["only_new"] == ["encode/triton/256×98×64×64/bfloat16"]  # not the reference: the baseline ran none
    assert result["only_baseline"] == ["encode/triton/256×98×64×64/float32"]
    text = compare.markdown(result)
    assert "| decode | triton | 256×98×64×64 | float32 | 0.15 | 0.1 | 1.50× | 40.0 | 60.0 |" in text
    assert "only in the baseline report: encode/triton" in text
    assert "compare nothing" not in text and "not a performance claim" not in text


def test_says_when_the_runs_cannot_be_compared():
    other_card = _report(BASELINE["rows"], "b" * 40, device="NVIDIA H200", claim=False)
    text = compare.markdown(compare.compare(NEW, other_card))
    assert "different devices: these ratios compare nothing" in text
    assert "not a performance claim" in text


def test_main_writes_both_files(tmp_path, capsys):
    (tmp_path / "new.json").write_text(json.dumps(NEW))
    (tmp_path / "old.json").write_text(json.dumps(BASELINE))
    compare.main([str(tmp_path / "new.json"), str(tmp_path / "old.json"), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["rows"][0]["speedup"] == pytest.approx(1.5)
    assert (tmp_path / "out" / "compare.md").read_text() == capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    (None, r"missing\.json: cannot read the report"),
    ("{\n  nope", r"bad\.json: not JSON \(line 2"),
    (json.dumps({"rows": {}}), r"bad\.json: not a benchmark report \(no 'rows' list\)"),
    (json.dumps({"rows": [{"op": "decode", "impl": "triton"}]}), r"bad\.json: rows\[0\] lacks shape, dtype, median_ms"),
])
def test_bad_report_is_named(tmp_path, content, message):
    path = tmp_path / ("missing.json" if content is None else "bad.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        compare.load_report(path)


def test_no_common_row_is_an_error(tmp_path, capsys):
    (tmp_path / "new.json").write_text(json.dumps(NEW))
    (tmp_path / "old.json").write_text(json.dumps(_report([], "b" * 40)))
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path / "new.json"), str(tmp_path / "old.json")])
    assert exit_info.value.code == 2
    assert "have no row in common" in capsys.readouterr().err
