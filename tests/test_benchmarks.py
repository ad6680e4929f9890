"""The benchmarks' bookkeeping that the README tables depend on: merging an earlier run's
rows (bench_lightning / bench_im2win --merge) keeps what this run did not redo and says
where each kept label came from; and bench_im2win run end to end at toy sizes on the CPU
(its figures are not looked at, only its rows)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import common  # noqa: E402


def run(commit, rows, merged=None):
    out = {"bench": "test", "meta": {"commit": commit}, "rows": rows}
    if merged is not None:
        out["merged"] = merged
    return out


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def label(row):
    return row["section"]


def test_merge_keeps_what_this_run_skips(tmp_path):
    earlier = run("a1", [{"section": "fwd", "x": 1}, {"section": "decode", "x": 2}, {"section": "dims", "x": 3}])
    path = write(tmp_path, "old.json", earlier)
    now = run("b2", [{"section": "fwd", "x": 10}])
    common.merge_earlier(now, path, label, ["fwd"])
    assert sorted((r["section"], r["x"]) for r in now["rows"]) == [("decode", 2), ("dims", 3), ("fwd", 10)]
    assert [(m["meta"]["commit"], m["sections"]) for m in now["merged"]] == [("a1", ["decode", "dims"])]


def test_merge_of_a_merged_run_credits_each_label_once(tmp_path):
    # a0 ran decode and accuracy; a1 ran fwd on top of it; b2 redoes decode on top of a1:
    # accuracy still comes from a0 and fwd from a1, but decode is b2's own, named nowhere.
    a0 = run("a0", [{"section": s, "x": 0} for s in ("decode", "accuracy")])
    a1 = run("a1", [{"section": "fwd", "x": 1}])
    common.merge_earlier(a1, write(tmp_path, "a0.json", a0), label, ["fwd"])
    b2 = run("b2", [{"section": "decode", "x": 2}])
    common.merge_earlier(b2, write(tmp_path, "a1.json", a1), label, ["decode"])
    credit = [(s, m["meta"]["commit"]) for m in b2["merged"] for s in m["sections"]]
    assert sorted(credit) == [("accuracy", "a0"), ("fwd", "a1")]
    assert sorted((r["section"], r["x"]) for r in b2["rows"]) == [("accuracy", 0), ("decode", 2), ("fwd", 1)]


def test_merge_by_precision(tmp_path):
    earlier = run("a1", [{"precision": p, "layer": "conv1"} for p in ("fp32", "tf32", "bf16")])
    path = write(tmp_path, "im2win.json", earlier)
    now = run("b2", [{"precision": "fp32", "layer": "conv1", "new": True}])
    common.merge_earlier(now, path, lambda r: r.get("precision"), ["fp32"])
    assert sorted(r["precision"] for r in now["rows"]) == ["bf16", "fp32", "tf32"]
    assert [r for r in now["rows"] if r["precision"] == "fp32"][0].get("new")
    assert now["merged"][0]["sections"] == ["bf16", "tf32"]


def test_im2win_bench_smoke_on_cpu(tmp_path):
    """bench_im2win end to end on the CPU at toy sizes: one layer in a forward and a
    forward + backward column, and the ResNet-50 training-step section (needs torchvision)
    in one mode per kind of step, both impls, the same first loss from the same weights."""
    pytest.importorskip("torchvision")
    import bench_im2win

    bench_im2win.main(["--device", "cpu", "--only", "conv12,r50step", "--precisions",
                       "fp32,bf16_cl_fb", "--paper-batch", "1", "--step-batch", "2",
                       "--step-size", "64", "--step-modes", "fp32,bf16_cl", "--out",
                       str(tmp_path), "--budget-s", "0", "--warmup", "1", "--rep", "1"])
    result = json.loads((tmp_path / "im2win.json").read_text())
    rows = {(r["precision"], r["impl"]): r for r in result["rows"]}
    assert set(rows) == {(p, i) for p in ("fp32", "bf16_cl_fb") for i in ("cudnn", "ours")}
    assert all(r["ms"] and not r["error"] for r in rows.values())
    assert rows["fp32", "ours"]["err_vs_cudnn"] < 1e-5
    assert rows["bf16_cl_fb", "ours"]["gflop"] == 3 * rows["fp32", "ours"]["gflop"]
    step = result["r50step"]
    assert {(r["mode"], r["impl"]) for r in step["rows"]} == {
        (m, i) for m in ("fp32", "bf16_cl") for i in ("cudnn", "ours")}
    assert all(r["ms"] and not r["error"] for r in step["rows"])
    assert set(step["speedup"]) == {"fp32", "bf16_cl"}
    fp32_diff = next(r for r in step["rows"] if r["mode"] == "fp32")["first_loss_rel_diff"]
    assert fp32_diff < 1e-4  # BatchNorm over 2 images amplifies the convolutions' rounding
