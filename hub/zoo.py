"""The seed's model zoo: named entries with their configs, recipe facts and reported results.

Numbers are copied from the seed page (OpenMixup's BYOL model zoo, itself based on MMSelfSup) and
are always labeled as the seed reports them: they were not re-measured by this project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.errors import ConfigError

SEED_SOURCE = "OpenMixup BYOL model zoo (seed-reported, not re-measured)"
CONFIG_URL = "https://github.com/Westlake-AI/openmixup/tree/main/configs/selfsup/byol/imagenet/{}.py"
MHEAD_URL = ("https://github.com/Westlake-AI/openmixup/tree/main/configs/benchmarks/classification/"
             "imagenet/r50_mhead_sz224_4xb64_step_ep90.py")
LOW_SHOT_K = (1, 2, 4, 8, 16, 32, 64, 96)
FEATURES = ("feature1", "feature2", "feature3", "feature4", "feature5")


def result(protocol: str, dataset: str, metric: str, value: float, *, layer: str | None = None,
           task: str = "image-classification", note: str | None = None, **extra: Any) -> dict[str, Any]:
    """One evaluation result in the shape shared by the zoo, the evaluation runs and the card."""
    entry: dict[str, Any] = {"protocol": protocol, "task": task, "dataset": dataset, "metric": metric,
                             "value": float(value), "layer": layer, "source": "seed"}
    if note:
        entry["note"] = note
    entry.update(extra)
    return entry


@dataclass(frozen=True)
class ZooEntry:
    name: str
    config_name: str
    epochs: int
    recipe: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    notes: tuple[str, ...] = ()

    @property
    def config_url(self) -> str:
        return CONFIG_URL.format(self.config_name.removeprefix("byol_"))


def _recipe(epochs: int) -> dict[str, Any]:
    return {
        "architecture": "resnet50", "dataset": "ImageNet-1k (train, labels unused)", "epochs": epochs,
        "batch": "4096 = 64 per GPU x 8 GPUs x 8 accumulation steps", "optimizer": "LARS, momentum 0.9, wd 1e-6",
        "lr": "4.8 (0.3 x batch/256), 10 warmup epochs, cosine to 0", "precision": "fp16 mixed precision",
        "ema": "tau 0.99 -> 1 (cosine over optimizer steps)", "projector": "2048-4096-256 (BN, ReLU)",
        "predictor": "256-4096-256 (BN, ReLU)", "loss": "2 - 2 cos, both directions summed",
    }


def _imagenet_places(f_in: tuple[float, ...], avg: float, f_pl: tuple[float, ...]) -> list[dict[str, Any]]:
    out = [result("mhead", "ImageNet-1k", "top1", v, layer=layer, source_url=MHEAD_URL)
           for layer, v in zip(FEATURES, f_in)]
    out.append(result("linear", "ImageNet-1k", "top1", avg, layer="avgpool"))
    out += [result("mhead", "Places205", "top1", v, layer=layer) for layer, v in zip(FEATURES, f_pl)]
    return out


_EP200_EXTRA = [
    result("voc07-svm", "VOC2007", "mAP", 86.31, layer="feature5", note="best layer"),
    *[result("voc07-lowshot-svm", "VOC2007", "mAP", v, layer="feature5", k=k)
      for k, v in zip(LOW_SHOT_K, (45.37, 56.83, 68.47, 74.12, 78.30, 81.53, 83.56, 84.73))],
    result("detection", "VOC0712", "AP50", 80.35, task="object-detection",
           note="faster_rcnn_r50_c4_mstrain_24k_voc0712"),
    *[result("detection", "COCO2017", metric, v, task="object-detection", note="mask_rcnn_r50_fpn_mstrain_1x_coco")
      for metric, v in (("box mAP", 40.9), ("box AP50", 61.0), ("box AP75", 44.6))],
    *[result("instance-segmentation", "COCO2017", metric, v, task="image-segmentation",
             note="mask_rcnn_r50_fpn_mstrain_1x_coco")
      for metric, v in (("mask mAP", 36.8), ("mask AP50", 58.1), ("mask AP75", 39.5))],
    result("segmentation", "VOC12aug", "mIoU", 67.16, task="image-segmentation",
           note="fcn_r50-d8_512x512_20k_voc12aug"),
]

ZOO: dict[str, ZooEntry] = {
    "byol-r50-ep200": ZooEntry(
        "byol-r50-ep200", "byol_r50_8xb64_accu8_cos_lr4_8_fp16_ep200", 200, _recipe(200),
        _imagenet_places((15.16, 35.26, 47.77, 63.10, 71.21), 71.72, (21.25, 36.55, 43.66, 50.74, 53.82))
        + _EP200_EXTRA,
    ),
    "byol-r50-ep300": ZooEntry(
        "byol-r50-ep300", "byol_r50_8xb64_accu8_cos_lr4_8_fp16_ep300", 300, _recipe(300),
        _imagenet_places((15.41, 35.15, 47.77, 62.59, 71.85), 71.88, (21.18, 36.68, 43.42, 51.04, 54.06)),
        notes=("The seed's ep300 AvgPool 71.88 matches MMSelfSup's 200-epoch batch-4096 run; MMSelfSup's own "
               "300-epoch run reports 72.93. The numbers here are shown exactly as the seed reports them.",),
    ),
}


def zoo_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise ConfigError(f"unknown zoo entry {name!r}; accepted: {', '.join(ZOO)}") from None
