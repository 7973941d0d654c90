"""GLUE results over seeds: per-task mean and std, and the average without RTE."""

from headless_megatron.evaluate.glue.results import summarize


def test_average_leaves_rte_out_and_is_taken_per_seed():
    runs = {"cola": [{"score": 50.0}, {"score": 60.0}], "rte": [{"score": 10.0}, {"score": 90.0}],
            "sst2": [{"score": 90.0}, {"score": 80.0}]}
    summary = summarize(runs)
    assert summary["average"]["tasks"] == ["cola", "sst2"] and summary["average"]["excluded"] == ["rte"]
    assert summary["average"]["per_seed"] == [70.0, 70.0] and summary["average"]["std"] == 0.0
    assert summary["tasks"]["rte"]["score"] == 50.0
    assert summarize({"rte": [{"score": 1.0}]})["average"] is None
