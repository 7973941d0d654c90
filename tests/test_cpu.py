"""The CPU adapter for Megatron-Core: each redirected CUDA assumption, checked in a fresh process."""

from local_ranks import run_on_ranks


def _adapter_effects():
    import logging

    import torch

    from headless_megatron.runtime import cpu

    assert cpu.activate() is True and cpu.activate() is True  # idempotent
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("megatron.core.tensor_parallel.random").addHandler(handler)

    from headless_megatron.runtime.distributed import init_distributed

    init_distributed(seed=123)  # seeds the tracker through model_parallel_cuda_manual_seed
    cpu_state = torch.get_rng_state()
    with get_cuda_rng_tracker().fork():
        inside = torch.cuda.get_rng_state()
    outside = torch.cuda.get_rng_state()
    return {
        "current_device": torch.cuda.current_device(),
        "factory_device": torch.zeros(2, device="cuda").device,
        "int_device": torch.ones(1, device=0).device,
        "to_device": torch.ones(1).to("cuda").device,
        "dot_cuda": torch.ones(1).cuda().device,
        "type": torch.ones(1).type(),
        "type_cast": torch.ones(1).type(torch.float64).dtype,
        "cpu_rng_untouched": torch.equal(cpu_state, torch.get_rng_state()),
        "tracker_state_differs": not torch.equal(inside, outside),
        "tracker_warnings": warnings,
        "synchronize": torch.cuda.synchronize(),
    }


def test_cuda_assumptions_are_redirected_to_cpu():
    (effects,) = run_on_ranks(_adapter_effects, 1)
    cpu = __import__("torch").device("cpu")
    for key in ("current_device", "factory_device", "int_device", "to_device", "dot_cuda"):
        assert effects[key] == cpu, key
    assert effects["type"] == "torch.cuda.FloatTensor"
    assert str(effects["type_cast"]) == "torch.float64"
    assert effects["cpu_rng_untouched"] and effects["tracker_state_differs"]
    assert effects["tracker_warnings"] == []
    assert effects["synchronize"] is None
