"""bench checkpoint: the time a save blocks the loop, at once and in the background, side by side
(tiny, CPU; the figures that matter are in docs/benchmarks.md)."""

from headless_megatron.commands.bench import main_for_tool


def test_sync_and_background_saves_side_by_side(capsys, tmp_path):
    assert main_for_tool("checkpoint", [
        "--saves", "2", "--directory", str(tmp_path), "--",
        "--mock-data", "--vocab-size", "512", "--num-layers", "2",
    ]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, sync, background = ([cell.strip() for cell in lines[i].split("|")] for i in (-4, -2, -1))
    assert header == ["mode", "blocked s", "blocked vs sync", "written s", "written vs sync"]
    assert sync[0] == "sync" and sync[2] == "100%" and float(sync[1]) > 0
    assert background[0] == "async" and float(background[1]) > 0 and float(background[3]) >= float(background[1])
    assert "gpt of " in lines[-5] and "GB per checkpoint, 1 rank(s), median of 2 saves" in lines[-5]
    assert list(tmp_path.iterdir()) == []  # the scratch checkpoints are gone
