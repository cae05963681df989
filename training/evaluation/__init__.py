"""The seed's evaluation protocols on any ``hub.BYOLModel``: kNN, linear (AvgPool), mhead (Feature1-5),
VOC07 SVM and low-shot SVM. ``python -m training.evaluate --help`` is the entry point."""
