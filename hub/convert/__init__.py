"""Converters from the checkpoints people already have (needs torch; import the module you use).

- :mod:`hub.convert.layouts`: the checkpoint layouts we read (OpenMixup, MMSelfSup, solo-learn, lightly,
  byol-pytorch, DeepMind's pickles, torchvision, timm), told apart by their keys (torch-free);
- :mod:`hub.convert.checkpoint`: ``byol-hub convert`` -> a model folder, weights loaded strictly.
"""
