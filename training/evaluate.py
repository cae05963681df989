"""The seed's evaluation protocols on any BYOLModel, with results written where users look.

    python -m training.evaluate knn       --model runs/x/final --train data/train --val data/val
    python -m training.evaluate linear    --model org/byol-r50-ep200 --train ... --val ... --results out/
    python -m training.evaluate mhead     --model ... --train ... --val ...
    python -m training.evaluate voc07-svm --model ... --voc VOCdevkit/VOC2007 [--low-shot]
    python -m training.evaluate ... --update-card            # merge into the model folder's README.md

Results are JSON files in MODEL_DIR/results/ (or --results DIR for a Hub id), one per protocol + dataset + mode.
Modes (linear, mhead): ``fast`` trains on cached center-crop features; ``faithful`` streams the seed's training
augmentation through the frozen backbone. kNN and the SVMs always use extracted center-crop features.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from hub.errors import HubError
from hub.layers import FEATURE_LAYERS, check_layers
from training.data import DataError

logger = logging.getLogger("training.evaluate")


def _results_dir(args: argparse.Namespace) -> Path:
    if args.results:
        return Path(args.results)
    if Path(args.model).is_dir():
        return Path(args.model)
    raise DataError(f"{args.model} is a Hub id: give --results DIR for the result files")


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return float(np.mean(values)), (float(np.std(values)) if len(values) > 1 else None)


@dataclass
class Outcome:
    """What a protocol measured: the result file's protocol name, dataset and mode, entries, splits and seeds."""

    protocol: str
    dataset: str
    entries: list[dict[str, Any]]
    splits: dict[str, int]
    mode: str = "features"
    seeds: int = 1


def run_knn(args, model) -> Outcome:
    from training.evaluation.data import image_folder
    from training.evaluation.features import extract
    from training.evaluation.knn import weighted_knn
    from training.evaluation.results import measured

    train, val = image_folder(args.train), image_folder(args.val)
    kw = dict(batch_size=args.batch_size, max_cache_gb=args.max_cache_gb, progress=not args.no_progress)
    ftrain = extract(model, train, ("avgpool",), "gap", **kw)["avgpool"]
    fval = extract(model, val, ("avgpool",), "gap", **kw)["avgpool"]
    acc = weighted_knn(ftrain, train.labels, fval, val.labels, ks=tuple(args.k), temperature=args.temperature)
    dataset = args.dataset_name or Path(args.train).parent.name or train.name
    entries = [measured("knn", dataset, "top1", v, layer="avgpool", mode="features", k=k,
                        temperature=args.temperature) for k, v in acc.items()]
    for k, v in acc.items():
        print(f"kNN k={k}: top-1 {v:.2f}%")
    return Outcome("knn", dataset, entries, {"train": len(train.paths), "val": len(val.paths)})


def run_heads(args, model, protocol: str) -> Outcome:
    from training.evaluation.data import image_folder
    from training.evaluation.features import extract
    from training.evaluation.heads import RECIPES, augmented_batches, cached_batches, top1, train_heads
    from training.evaluation.results import measured

    layers = ("avgpool",) if protocol == "linear" else check_layers(args.layers)
    pooling = "gap" if protocol == "linear" else "mhead"
    recipe = RECIPES[args.recipe if protocol == "linear" else "mhead"].with_overrides(
        epochs=args.epochs, lr=args.lr, batch_size=args.head_batch_size)
    train, val = image_folder(args.train), image_folder(args.val)
    kw = dict(batch_size=args.batch_size, max_cache_gb=args.max_cache_gb, progress=not args.no_progress)
    fval = extract(model, val, layers, pooling, **kw)
    dims = {layer: fval[layer].shape[1] for layer in layers}
    ftrain = extract(model, train, layers, pooling, **kw) if args.mode == "fast" else None
    seeds = args.seeds
    if seeds is None:  # cheap protocols default to 3 seeds
        seeds = 3 if args.mode == "fast" and len(train.paths) <= 20_000 else 1
    scores: dict[str, list[float]] = {layer: [] for layer in layers}
    for seed in range(seeds):
        batches = (cached_batches(ftrain, train.labels, recipe.batch_size, seed) if args.mode == "fast" else
                   augmented_batches(model, train.paths, train.labels, layers, pooling, recipe.batch_size, seed))
        heads = train_heads(dims, len(train.classes), batches, recipe, bn=protocol == "mhead", seed=seed,
                            progress=not args.no_progress)
        for layer, value in top1(heads, fval, val.labels).items():
            scores[layer].append(value)
    dataset = args.dataset_name or Path(args.train).parent.name or train.name
    entries = []
    for layer, values in scores.items():
        mean, std = _mean_std(values)
        print(f"{protocol} {layer}: top-1 {mean:.2f}%" + (f" ± {std:.2f}" if std is not None else "")
              + f" ({args.mode}, {recipe.optimizer} lr {recipe.lr:g}, {recipe.epochs} epochs, {len(values)} seeds)")
        entries.append(measured(protocol, dataset, "top1", mean, layer=layer, mode=args.mode, std=std,
                                recipe=recipe.__dict__))
    return Outcome(protocol, dataset, entries, {"train": len(train.paths), "val": len(val.paths)}, args.mode, seeds)


def run_svm(args, model) -> Outcome:
    from training.evaluation.data import voc
    from training.evaluation.features import extract
    from training.evaluation.results import measured
    from training.evaluation.svm import low_shot_svm, voc07_svm

    layers = check_layers(args.layers)
    trainval, test = voc(args.voc, "trainval"), voc(args.voc, "test")
    kw = dict(batch_size=args.batch_size, max_cache_gb=args.max_cache_gb, progress=not args.no_progress)
    ftr = extract(model, trainval, layers, "mhead", **kw)
    fte = extract(model, test, layers, "mhead", **kw)
    dataset = args.dataset_name or Path(args.voc).name
    entries: list[dict[str, Any]] = []
    best = None
    for layer in layers:
        if args.low_shot:
            out = low_shot_svm(ftr[layer], trainval.labels, fte[layer], test.labels, ks=tuple(args.k), draws=args.draws)
            for k, stats in out["per_k"].items():
                print(f"low-shot SVM {layer} k={k}: mAP {stats['mean']:.2f} ± {stats['std']:.2f} "
                      f"(min {stats['min']:.2f}, max {stats['max']:.2f}, {args.draws} draws)")
                entries.append(measured("voc07-lowshot-svm", dataset, "mAP", stats["mean"], layer=layer,
                                        mode="features", std=stats["std"], k=k, min=stats["min"], max=stats["max"]))
            for k in out["skipped"]:
                print(f"low-shot SVM k={k}: skipped (the data has fewer than {k} positives or {19 * k} negatives "
                      "for some class)")
        else:
            out = voc07_svm(ftr[layer], trainval.labels, fte[layer], test.labels)
            print(f"VOC07 SVM {layer}: mAP {out['mAP']:.2f} (costs per class {out['costs']})")
            entries.append(measured("voc07-svm", dataset, "mAP", out["mAP"], layer=layer, mode="features"))
            if best is None or out["mAP"] > best[1]:
                best = (layer, out["mAP"])
    if best:
        print(f"best layer: {best[0]} (mAP {best[1]:.2f})")
    return Outcome("voc07-lowshot-svm" if args.low_shot else "voc07-svm", dataset, entries,
                   {"trainval": len(trainval.paths), "test": len(test.paths)})


# ----------------------------------------------------------------------------------------------------------------
# The protocols: one table that the command line and the dispatch read


def _knn_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, nargs="+", default=[20, 200], help="neighbors (default 20 200)")
    p.add_argument("--temperature", type=float, default=0.07, help="vote temperature (default 0.07)")


def _linear_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", choices=("sgd", "lars"), default="sgd",
                   help="sgd: the seed's lr 30 / steps 60,80 / 100 epochs; lars: MMSelfSup's lr 1.6, batch 4096, "
                        "cosine, 90 epochs")


def _layers_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", default=",".join(FEATURE_LAYERS), help="layers (default feature1..feature5)")


def _svm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voc", required=True, help="VOCdevkit/VOC2007 folder")
    _layers_argument(p)
    p.add_argument("--low-shot", action="store_true", help="low-shot SVM instead of the full SVM")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 96], help="low-shot positives")
    p.add_argument("--draws", type=int, default=5, help="low-shot seeded draws per k (default 5)")


@dataclass(frozen=True)
class Protocol:
    help: str
    run: Callable[[argparse.Namespace, Any], Outcome]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    parents: tuple[str, ...] = field(default=("labeled",))  # shared option groups: "labeled", "heads"


PROTOCOLS: dict[str, Protocol] = {
    "knn": Protocol("weighted kNN on avgpool features", run_knn, _knn_arguments),
    "linear": Protocol("AvgPool linear protocol", lambda args, model: run_heads(args, model, "linear"),
                       _linear_arguments, ("labeled", "heads")),
    "mhead": Protocol("Feature1-5 multi-head protocol", lambda args, model: run_heads(args, model, "mhead"),
                      _layers_argument, ("labeled", "heads")),
    "voc07-svm": Protocol("VOC07 SVM / low-shot SVM per layer", run_svm, _svm_arguments, ()),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="protocol", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="model folder or Hub repo id")
    common.add_argument("--revision", default=None, help="Hub revision")
    common.add_argument("--batch-size", type=int, default=64, help="images per extraction batch (default 64)")
    common.add_argument("--max-cache-gb", type=float, default=50.0,
                        help="refuse to cache more features than this (default 50 GiB)")
    common.add_argument("--results", default=None, help="folder for results/*.json (default: the model folder)")
    common.add_argument("--update-card", nargs="?", const="", default=None, metavar="DIR",
                        help="merge the results into DIR/README.md (default DIR: the results folder)")
    common.add_argument("--dataset-name", default=None, help="dataset name in results and card")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    labeled = argparse.ArgumentParser(add_help=False)
    labeled.add_argument("--train", required=True, help="ImageFolder tree (root/CLASS/images) for training")
    labeled.add_argument("--val", required=True, help="ImageFolder tree for evaluation")

    heads = argparse.ArgumentParser(add_help=False)
    heads.add_argument("--mode", choices=("fast", "faithful"), default="fast",
                       help="fast: cached center-crop features; faithful: the seed's augmentation, streamed")
    heads.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    heads.add_argument("--lr", type=float, default=None, help="override the recipe's lr")
    heads.add_argument("--head-batch-size", type=int, default=None, help="override the recipe's batch size")
    heads.add_argument("--seeds", type=int, default=None,
                       help="repeat with this many seeds and report mean ± std (default: 3 in fast mode on up to "
                            "20,000 training images, where it is cheap; else 1)")
    groups = {"labeled": labeled, "heads": heads}
    for name, protocol in PROTOCOLS.items():
        p = sub.add_parser(name, parents=[common, *(groups[g] for g in protocol.parents)], help=protocol.help)
        protocol.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from hub.provenance import git_commit
    from training.evaluation.results import save_results, update_card

    try:
        from hub import BYOLModel

        model = BYOLModel.from_pretrained(args.model, revision=args.revision)
        out = _results_dir(args)
        outcome = PROTOCOLS[args.protocol].run(args, model)
        card_dir = None if args.update_card is None else Path(args.update_card or out)
        record = dict(model=model, splits=outcome.splits, seeds=list(range(outcome.seeds)), git_commit=git_commit())
        for folder in dict.fromkeys(f for f in (out, card_dir) if f is not None):
            path = save_results(folder, outcome.protocol, outcome.dataset, outcome.mode, outcome.entries, **record)
            print(f"wrote {path}")
        if card_dir is not None:
            print(f"updated {update_card(card_dir)}")
    except (HubError, DataError, ValueError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
