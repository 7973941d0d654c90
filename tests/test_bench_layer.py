"""The layer-fusion benchmark: one row per fusion, its ratio, and differences that tell the fusions that
compute the unfused function from the one that does not (tiny shapes)."""

from headless_megatron.commands.bench import main_for_tool


def test_table_has_every_fusion_with_its_ratio_and_difference(capsys):
    assert main_for_tool("layer", ["--seq-length", "32", "--hidden-size", "64", "--heads", "4", "--vocab-size", "256",
                                   "--iters", "1", "--warmup", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines.index(next(line for line in lines if line.startswith("case ")))
    rows = {}
    for line in lines[header + 2:]:
        case, change, _, _, speed_up, difference = (cell.strip() for cell in line.split(" | "))
        rows[(case.split(",")[0], change)] = (float(speed_up.rstrip("x")), float(difference))
    assert set(rows) == {
        ("SwiGLU MLP (GPT)", "bias_activation_fusion off -> on"),
        ("GeLU MLP + bias (BERT)", "bias_activation_fusion off -> on"),
        ("bias-dropout-add p=0.0 (GPT)", "bias_dropout_fusion off -> on"),
        ("bias-dropout-add p=0.1 (BERT)", "bias_dropout_fusion off -> on"),
        ("LayerNorm", "ops written out -> TorchNorm"),
        ("LayerNorm", "TorchNorm -> torch.compile(TorchNorm)"),
        ("RMSNorm", "ops written out -> TorchNorm"),
        ("RMSNorm", "TorchNorm -> torch.compile(TorchNorm)"),
        ("vocab-parallel CE (vanilla head)", "cross_entropy_loss_fusion off -> on (native)"),
    }
    assert all(speed_up > 0 for speed_up, _ in rows.values())
    assert rows[("SwiGLU MLP (GPT)", "bias_activation_fusion off -> on")][1] < 1e-5
    assert rows[("bias-dropout-add p=0.0 (GPT)", "bias_dropout_fusion off -> on")][1] < 1e-5
    # the tanh approximation of GeLU, and gradients rounded to bf16
    assert rows[("GeLU MLP + bias (BERT)", "bias_activation_fusion off -> on")][1] > 1e-5
    assert rows[("vocab-parallel CE (vanilla head)", "cross_entropy_loss_fusion off -> on (native)")][1] > 1e-4
