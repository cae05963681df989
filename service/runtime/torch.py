"""PyTorch backend: CPU or CUDA, optional channels_last and half precision."""

from __future__ import annotations

import numpy as np

from hub.hub_io import ResolvedModel
from hub.layers import serving_outputs
from service.runtime.backend import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, resolved: ResolvedModel, *, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = True, threads: int = 0, maps: tuple[str, ...] = ()) -> None:
        import torch

        from hub.model import BYOLModel

        if threads:
            torch.set_num_threads(threads)
        if precision == "int8":
            raise ValueError("int8 is served through the ONNX backend (--backend onnx --precision int8)")
        if precision == "fp16" and not device.startswith("cuda"):
            raise ValueError("fp16 needs a CUDA device; on CPU serve fp32")
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = BYOLModel.from_pretrained(resolved.folder)
        self.model = model.to(self.device, self.dtype, memory_format=self.memory_format).eval()
        self.maps = tuple(maps)
        self._outputs = serving_outputs(model.config.stem, model.config.input_size, self.maps)

    @property
    def outputs(self) -> list[str]:
        return self._outputs

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(pixel_values).to(self.device, self.dtype, memory_format=self.memory_format)
            out = self.model.serving_outputs(x, self.maps)
            return {k: v.float().cpu().numpy() for k, v in out.items()}
