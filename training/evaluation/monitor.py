"""The trainer's optional kNN monitor: the evaluation's weighted kNN, run on the online encoder at epoch ends."""

from __future__ import annotations

from pathlib import Path

from hub import BYOLModel


class KnnMonitor:
    """Weighted kNN (k=20, T=0.07) of the online encoder on a labeled folder (train/ and val/ ImageFolders)."""

    def __init__(self, folder: str | Path) -> None:
        from training.evaluation.data import image_folder

        self.train, self.val = image_folder(Path(folder) / "train"), image_folder(Path(folder) / "val")

    def __len__(self) -> int:
        """Images embedded per pass (what a time budget reserves time for)."""
        return len(self.train.paths) + len(self.val.paths)

    def __call__(self, backbone: BYOLModel) -> float:
        from training.evaluation.features import features_of
        from training.evaluation.knn import weighted_knn

        was_training = backbone.training
        backbone.eval()
        try:
            train = features_of(backbone, self.train.paths, ("avgpool",), "gap")["avgpool"]
            val = features_of(backbone, self.val.paths, ("avgpool",), "gap")["avgpool"]
        finally:
            backbone.train(was_training)
        return weighted_knn(train, self.train.labels, val, self.val.labels, ks=(20,))[20]
