"""``headless-megatron env``: what this machine will run with."""

from __future__ import annotations

import importlib.metadata
import os
import platform


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, str]:
    import torch

    from headless_megatron import __version__
    from headless_megatron.config.megatron import apex_available, kernel_backend

    cuda = torch.cuda.is_available()
    te = _version("transformer-engine")
    if te == "not installed":
        te = _version("transformer_engine")
    return {
        "headless-megatron": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "megatron-core": _version("megatron-core"),
        "transformer-engine": te,
        "apex": "installed" if apex_available() else "not installed",
        "device": f"cuda ({torch.cuda.device_count()} x {torch.cuda.get_device_name(0)})" if cuda else "cpu",
        "distributed backend": "nccl" if cuda else "gloo",
        "layer spec": kernel_backend("auto"),
        "megatron cpu adapter": "off (CUDA)" if cuda else "on",
        "cpu cores": str(os.cpu_count()),
    }


def add_arguments(parser) -> None:
    del parser  # no options


def run(args) -> int:
    del args
    info = describe()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0
