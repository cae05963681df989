"""Exports of a :class:`hub.BYOLModel` (each module needs torch; import the one you use).

- :mod:`hub.export.onnx`: ``model.onnx``, the serving contract;
- :mod:`hub.export.quantize`: ``model.int8.onnx``, static int8 quantization calibrated on real images;
- :mod:`hub.export.triton`: a Triton Inference Server model repository around the same graph;
- :mod:`hub.export.formats`: ``byol-hub export``'s dispatcher, and the state-dict formats of torchvision, timm,
  detectron2 and mmdet.
"""
