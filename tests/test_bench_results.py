"""The bench's results file: --only keeps the other sections' rows; the chart reads the table."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from bench import chart, results
from bench.stats import Figure

OLD = """# dvpn benchmark results

- date: 2026-11-24 10:00 UTC
- command: `sudo .venv/bin/python -m bench`

Values are min / median / max over the runs.

| figure | dvpnd | anchor (same run) | ratio | goal | met | note |
|---|---|---|---|---|---|---|
| cold apply | 1 / 1 / 1 s | wg setconf: 1 | 1.00× | ≤ 1.5× | yes |  |
| iperf3 confidential | 115 / 121 / 132 Mbit/s | by hand: 228 | 0.53× | ≥ 0.9× | **no** |  |
| dvpnd RSS, 3 peers | 52 / 52 / 52 MiB | — | — | ≤ 45 MiB | **no** |  |
| idle spoke bytes | 3644 / 3644 / 3644 bytes/s | one hub: 14 | 264.13× | ≤ 4 KB/s (budget) | yes |  |
| relay RSS | 54.2 / 54.2 / 54.2 MiB | idle: 47.5 | 1.14× | ≤ +30 MiB | yes |  |
| largest ping | 1312 / 1312 / 1312 bytes | — | — | passes | yes |  |
| doc only | 1 / 1 / 1 s | — | — |  | — |  |

## Analysis

Kept as written.
"""


def _fig(name: str, value: float) -> Figure:
    return Figure(name, "Mbit/s", [value], "by hand", [200.0], "≥ 0.9×", value / 200 >= 0.9)


def test_only_replaces_its_rows_in_place_and_keeps_every_other_row() -> None:
    head, rows, analysis = results.split_results(OLD)
    merged = results.merge_rows(rows, [_fig("iperf3 confidential", 190.0), _fig("a new figure", 50.0)])
    names = [results.row_name(r) for r in merged]
    assert names == ["cold apply", "iperf3 confidential", "a new figure", "dvpnd RSS, 3 peers",
                     "idle spoke bytes", "relay RSS", "largest ping", "doc only"]
    assert "190 / 190 / 190 Mbit/s" in merged[1] and "0.95×" in merged[1]
    assert merged[0] == rows[0]  # untouched rows stay byte for byte
    assert analysis.startswith("\n## Analysis") and "Kept as written." in analysis
    assert head[0] == "# dvpn benchmark results" and head[-1].startswith("Values are")


def test_only_with_none_of_its_rows_in_the_table_appends_them() -> None:
    _, rows, _ = results.split_results(OLD)
    merged = results.merge_rows(rows, [_fig("brand new", 10.0)])
    assert [results.row_name(r) for r in merged][-1] == "brand new"
    assert len(merged) == len(rows) + 1


def test_json_merge_keeps_other_figures_and_a_broken_file_is_empty() -> None:
    old = [_fig("a", 1.0).to_json(), _fig("b", 2.0).to_json()]
    got = results.merge_json(results.read_json(json.dumps(old)), [_fig("b", 3.0), _fig("c", 4.0)])
    assert [d["name"] for d in got] == ["a", "b", "c"] and got[1]["values"] == [3.0]
    assert results.read_json("not json") == [] and results.read_json('{"a": 1}') == []


def test_the_chart_reads_each_goal_in_its_own_terms() -> None:
    points, skipped = chart.parse_table(OLD)
    by = {p.name: p for p in points}
    # a ratio goal: the ratio column against the goal's ratio
    assert by["iperf3 confidential"].measure == 0.53 and by["iperf3 confidential"].goal == 0.9
    assert not by["iperf3 confidential"].at_most and not by["iperf3 confidential"].met
    # an absolute goal: the median in the goal's unit
    assert by["dvpnd RSS, 3 peers"].score == pytest.approx(52 / 45)
    # KB/s against bytes/s converted; a goal over the anchor measured as the difference
    assert by["idle spoke bytes"].score == pytest.approx(3644 / 4000)
    assert by["relay RSS"].measure == pytest.approx(54.2 - 47.5)
    # no number in the goal: not drawn, counted
    assert "largest ping" not in by and "doc only" not in by and skipped == 2
    assert by["cold apply"].met and by["cold apply"].at_most


@pytest.mark.process  # (matplotlib runs fc-list to find its fonts)
def test_the_chart_is_a_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))  # its font cache, not in $HOME
    pytest.importorskip("matplotlib")
    with tempfile.TemporaryDirectory() as d:
        out = chart.render_chart(OLD, Path(d) / "RESULTS.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_profile_folds_py_spy_stacks_by_share() -> None:
    from bench.profile import fold

    raw = ("main (dvpnd/daemon/core.py:10);_read_snapshot (dvpnd/daemon/core.py:20);parse_get (uapi.py:5) 6\n"
           "main (dvpnd/daemon/core.py:10);select (selectors.py:468) 4\n"
           "garbage\n")
    out = fold(raw, 4)
    assert out[0] == "10 samples"
    assert out[1] == "100.0 %  main (core.py)"
    assert " 60.0 %  parse_get (uapi.py)" in out and out[out.index("own time:") + 1] == " 60.0 %  parse_get (uapi.py)"
