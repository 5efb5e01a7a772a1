"""pytest-benchmark set-up: the versions and device that a result file must name."""

from __future__ import annotations

import torch


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    import triton

    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name()
        machine_info["cuda"] = torch.version.cuda
