"""``byol-hub``: convert, describe, export and publish BYOL model folders.

Examples::

    byol-hub convert byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth models/byol-r50-ep200 --zoo byol-r50-ep200
    byol-hub info models/byol-r50-ep200
    byol-hub export models/byol-r50-ep200 --format detectron2
    byol-hub push models/byol-r50-ep200 org/byol-r50-ep200
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hub.config import EXPORT_FORMATS as FORMATS
from hub.config import INSTANCE_KINDS
from hub.convert.layouts import LAYOUTS, SOURCES
from hub.errors import ExportError, HubError
from hub.zoo import ZOO
from storage.errors import DataLayerError

logger = logging.getLogger("byol-hub")


def _convert(args: argparse.Namespace) -> int:
    from hub.convert.checkpoint import convert_checkpoint

    model = convert_checkpoint(args.checkpoint, source=args.source, prefix=args.prefix, zoo=args.zoo,
                               name=args.name or Path(args.out_dir).name, padding=args.padding)
    prov = model.config.provenance
    print(f"read {args.checkpoint}: layout {prov['source_format']}"
          f"{' (detected)' if prov['detected'] else ''}, {model.config.architecture}, {model.config.stem} stem")
    print(prov["identity"])
    model.save_pretrained(args.out_dir, onnx=args.onnx, transformers=args.transformers)
    extras = (", model.onnx" if args.onnx else "") + (", transformers/" if model.config.transformers else "")
    print(f"wrote {args.out_dir}/ (model.safetensors, config.json, README.md{extras})")
    _print_loaders(model.config)
    return 0


def _print_loaders(cfg) -> None:
    from hub.interop import unsupported_reason

    reason = unsupported_reason(cfg)
    if reason is not None:
        print(f"loaders   byol only: {reason}")
    else:
        print("loaders   byol, timm (hf-hub:/local-dir:), transformers AutoModel"
              + (", transformers ResNetModel (subfolder='transformers')" if cfg.transformers else ""))


def _card(args: argparse.Namespace) -> int:
    from huggingface_hub import ModelCard

    from hub.card import write_card

    path = write_card(args.model_dir)
    ModelCard.load(path)  # proves the front matter parses
    print(f"wrote {path}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from hub.hub_io import upload_folder

    url = upload_folder(args.model_dir, args.repo_id, token=args.token, private=args.private,
                        revision=args.revision, commit_message=args.message)
    print(f"pushed {args.model_dir} to {args.repo_id}: {url}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from hub.hub_io import resolve_model

    resolved = resolve_model(args.model, files=(), optional_files=(), revision=args.revision,
                             local_files_only=args.offline)
    cfg = resolved.config
    if args.json:
        print(json.dumps({"id": resolved.model_id, "revision": resolved.revision, "folder": str(resolved.folder),
                          "config": cfg.to_dict()}, indent=2))
        return 0
    print(f"model     {resolved.model_id} @ {resolved.revision}" + ("  [DEMO MODEL]" if cfg.demo else ""))
    print(f"folder    {resolved.folder}")
    print(f"network   {cfg.architecture}, {cfg.stem} stem, padding {cfg.padding}, input {cfg.input_size}x{cfg.input_size}")
    if cfg.provenance.get("identity"):
        print(f"identity  {cfg.provenance['identity']}")
    print("onnx      " + (f"yes (opset {cfg.onnx.get('opset')})" if cfg.onnx else "no"))
    _print_loaders(cfg)
    print("layer      gap     mhead")
    for layer, dims in cfg.layer_dims().items():
        print(f"{layer:<9}{dims['gap']:>6}{str(dims['mhead'] or 'n/a'):>10}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from hub.export.formats import default_export_path, export
    from hub.model import BYOLModel

    model = BYOLModel.from_pretrained(args.model_dir)
    out = Path(args.output) if args.output else default_export_path(args.model_dir, args.format,
                                                                    model.config.architecture)
    if args.int8 and args.format != "onnx":
        raise ExportError("--int8 applies to --format onnx only")
    if args.int8 and out.parent.resolve() != Path(args.model_dir).resolve():
        raise ExportError("--int8 writes model.int8.onnx beside the folder's own model.onnx; drop --output")
    if args.format == "onnx" and out.parent.resolve() == Path(args.model_dir).resolve():
        # keeps config.json's onnx record in step (and the transformers/ folder as it was)
        model.save_pretrained(args.model_dir, onnx=True, transformers=bool(model.config.transformers))
    elif args.format == "triton":
        out = export(model, "triton", out, name=args.triton_name, max_batch_size=args.max_batch_size,
                     kind=args.instance_kind, count=args.instances)
    else:
        export(model, args.format, out)
    print(f"wrote {out}")
    if args.format == "triton":
        print(f"  config.pbtxt and 1/model.onnx; run: tritonserver --model-repository {out.parent}")
    if args.int8:
        from hub.export.quantize import load_calibration_images, quantize_int8

        print(f"wrote {quantize_int8(args.model_dir, load_calibration_images(args.calibration))}")
    return 0


def _spectrum(args: argparse.Namespace) -> int:
    import re

    from hub.card import write_card
    from hub.layers import check_layers
    from hub.model import BYOLModel
    from hub.spectrum import measure_images
    from hub.zoo import result
    from storage.files import atomic_write_text

    layers = check_layers(args.layers) if args.layers else None
    model = BYOLModel.from_pretrained(args.model)
    summary = measure_images(model, args.images, sample=args.sample, layers=layers, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        skipped = f" ({summary['unreadable']} unreadable)" if summary["unreadable"] else ""
        print(f"{args.model} on {args.images}, {summary['sampled']} images sampled{skipped}, without labels:")
        for layer, v in summary["layers"].items():
            print(f"  {layer:<9} RankMe {v['rankme']:>8.2f} of {min(v['samples'], v['dim'])} "
                  f"({100 * v['rankme_share']:.1f} %)   normalized std {v['std']:.4f} (spread evenly: "
                  f"{v['std_ideal']:.4f}; collapsed: 0)")
    if args.record:
        if not Path(args.model).is_dir():
            raise HubError(f"--record writes into a model folder; {args.model} is not one")
        dataset = args.dataset_name or Path(args.images.rstrip("/")).name
        entries = [result("label-free", dataset, metric, v[key], layer=layer, source="measured", mode="features",
                          samples=v["samples"])
                   for layer, v in summary["layers"].items()
                   for metric, key in (("rankme", "rankme"), ("normalized_std", "std"))]
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", dataset)
        path = Path(args.model) / "results" / f"label-free-{slug}-features.json"
        atomic_write_text(path, json.dumps({"protocol": "label-free", "dataset": dataset, "mode": "features",
                                            "splits": {"sample": summary["sampled"]},
                                            "weights_sha256": model.config.weights_sha256,
                                            "results": entries}, indent=2) + "\n")
        print(f"wrote {path} and {write_card(args.model)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byol-hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="turn an existing checkpoint into a model folder")
    p.add_argument("checkpoint", help="the checkpoint file (.pth, .ckpt, .pkl, .safetensors)")
    p.add_argument("out_dir", help="model folder to write")
    p.add_argument("--source", default="auto", choices=SOURCES,
                   help="checkpoint layout; 'auto' detects it and says what it found (default: auto). Layouts: " +
                   "; ".join(f"{entry.name}: {entry.reads}" for entry in LAYOUTS))
    p.add_argument("--prefix", default=None,
                   help="key prefix of the backbone inside a custom wrapper, e.g. 'net.' or 'encoder.'; with "
                        "--source auto it is stripped first and what is under it is detected (default: per source)")
    p.add_argument("--zoo", default=None, choices=sorted(ZOO),
                   help="seed zoo entry these weights belong to; its reported results go into the card")
    p.add_argument("--name", default=None, help="model id shown in the card (default: the folder name)")
    p.add_argument("--padding", default=None, choices=("torch", "tf_same"),
                   help="convolution padding; DeepMind checkpoints default to tf_same (exact), others to torch")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="also write model.onnx so the service can run without torch (default: on)")
    p.add_argument("--transformers", action=argparse.BooleanOptionalAction, default=True,
                   help="also write the transformers/ subfolder so transformers' own ResNetModel loads the folder "
                        "(doubles its size; timm and AutoModel load it either way) (default: on)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("card", help="(re)write the model card README.md of a model folder")
    p.add_argument("model_dir", help="model folder with config.json")
    p.set_defaults(func=_card)

    p = sub.add_parser("push", help="upload a model folder to the Hugging Face Hub (one commit)")
    p.add_argument("model_dir", help="model folder with config.json and model.safetensors")
    p.add_argument("repo_id", help="target repo, e.g. org/byol-r50-ep200")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    p.add_argument("--message", default="Upload BYOL model", help="commit message")
    p.set_defaults(func=_push)

    p = sub.add_parser("info", help="describe a model folder or Hub repo (no torch needed)")
    p.add_argument("model", help="model folder or Hub repo id")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--offline", action="store_true", help="use the local Hugging Face cache only")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("export", help="export a model folder to another format")
    p.add_argument("model_dir", help="model folder with config.json and model.safetensors")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx: model.onnx in the folder (the serving contract); triton: a Triton model repository "
                        "(config.pbtxt + 1/model.onnx) under --output; torchvision/timm: resnet state "
                        "dicts; detectron2: .pkl with MoCo renaming; mmdet: state_dict with backbone. keys")
    p.add_argument("--output", "--out", default=None,
                   help="where to write (default: MODEL_DIR/model.onnx or MODEL_DIR/exports/...); for triton the "
                        "model repository folder, the model goes into OUTPUT/<name>/")
    p.add_argument("--triton-name", default=None,
                   help="triton: the model's name in the repository (default: the model's name, else byol-<arch>)")
    p.add_argument("--max-batch-size", type=int, default=32, help="triton: max_batch_size (default 32)")
    p.add_argument("--instance-kind", choices=INSTANCE_KINDS, default="cpu",
                   help="triton: instance_group kind, KIND_CPU or KIND_GPU (default cpu)")
    p.add_argument("--instances", type=int, default=1, help="triton: model instances (instance_group count, default 1)")
    p.add_argument("--int8", action="store_true",
                   help="onnx only: also write model.int8.onnx (static QDQ quantization, per-channel weights)")
    p.add_argument("--calibration", default=None,
                   help="folder of sample images to calibrate int8 on (default: scikit-image's photos if installed)")
    p.set_defaults(func=_export)

    p = sub.add_parser("spectrum", help="a model's feature quality on your own images, without labels: RankMe and "
                       "the normalized outputs' spread, per layer",
                       description="Embeds a random sample of IMAGES with MODEL (its own center-crop preprocessing, "
                       "each layer global-average pooled) and reports, per layer, RankMe (the effective rank of the "
                       "features, Garrido et al. 2023: higher is better, at most min(sample, dim)) and the standard "
                       "deviation of the L2-normalized features (1/sqrt(dim) when spread evenly, 0 when collapsed).")
    p.add_argument("model", help="model folder or Hub repo id")
    p.add_argument("images", help="folder of images (recursive), .txt list, .tar shards or Parquet, local or a URL")
    p.add_argument("--sample", type=int, default=1024,
                   help="images drawn at random (RankMe needs at least the layer's dimension) (default 1024)")
    p.add_argument("--layers", default=None,
                   help="comma-separated layers among feature1..feature5, avgpool (default: all six)")
    p.add_argument("--record", action="store_true",
                   help="write the figures into MODEL's results/ and its card (a model folder only)")
    p.add_argument("--dataset-name", default=None, help="the images' name in the card (default: the folder's name)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_spectrum)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (HubError, DataLayerError) as err:
        print(f"byol-hub {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
