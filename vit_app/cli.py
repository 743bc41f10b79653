"""The `vit-app` entry point: it parses the command line and dispatches; the work happens in the modules it names.

Nothing heavy is imported at start-up: Lightning only for fit / validate / test / predict, torch when a command
needs a model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from vit_app import __version__
from vit_app.errors import ConfigError, UserError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

TOP_HELP = f"""vit-app {__version__}: train Vision Transformers, classify images, and see why they decided.

usage: vit-app COMMAND [options]      (vit-app COMMAND --help for a command's options)

Training and evaluation (LightningCLI, driven by YAML configs):
  fit          train:            vit-app fit --config configs/quickstart.yaml
  validate     evaluate on the validation split: vit-app validate --config C.yaml --ckpt_path best.ckpt
  test         evaluate on the test split:       vit-app test --config C.yaml --ckpt_path best.ckpt
  predict      predict over a dataset:           vit-app predict --config C.yaml --ckpt_path best.ckpt

  Config files stack (--config a.yaml --config b.yaml), any key can be overridden
  (--model.lr 3e-4 --data.batch_size 64), and --print_config shows the merged result.

Images (any checkpoint from fit; no config needed):
  classify       top-k predictions:  vit-app classify img.jpg photos/ "*.png" --ckpt best.ckpt --format json
  attention      attention maps:     vit-app attention img.jpg --ckpt best.ckpt --out maps/ --method rollout
  explain-eval   how right the maps are: vit-app explain-eval --ckpt best.ckpt
  export         deploy:             vit-app export --ckpt best.ckpt --format onnx --out model.onnx
  plot           training curves:    vit-app plot runs/quickstart/version_0
  calibrate      temperature scaling: vit-app calibrate --ckpt best.ckpt --data cifar10:~/data/cifar10

Global options:
  --debug      show full tracebacks for errors in your input (by default: a short message)
  --version    print the version
"""


def build_cli(args: list[str], run: bool = True) -> Any:
    """The LightningCLI for fit / validate / test / predict (see vit_app.train_cli)."""
    from vit_app.train_cli import build_cli as build

    return build(args, run)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"vit-app {prog}", description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint written by 'vit-app fit' (best.ckpt or last.ckpt)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu or cuda")


def _load(args: argparse.Namespace) -> Any:
    from vit_app.inference import load_for_inference, resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise ConfigError(f"--device: {e}") from None
    return load_for_inference(args.ckpt, device)


def cmd_classify(argv: list[str]) -> int:
    p = _parser("classify", "Top-k predictions for image files, folders (searched recursively) and glob patterns.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    _add_model_args(p)
    p.add_argument("--topk", type=int, default=5, help="how many classes to report per image")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    p.add_argument("--output", help="write the results to this file instead of standard output")
    args = p.parse_args(argv)
    from vit_app.classify import classify

    im = _load(args)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        done, failed = classify(im, args.paths, out, args.format, args.topk, args.batch_size)
    finally:
        if args.output:
            out.close()
    print(f"vit-app classify: {done} classified, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_attention(argv: list[str]) -> int:
    p = _parser(
        "attention",
        "Attention maps: per image an overlay PNG (prediction and probability in the picture) and the raw map "
        "(.npy, grid_h x grid_w), plus index.jsonl listing them.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--method",
        choices=["rollout", "grad-rollout", "attention"],
        default="rollout",
        help="rollout: attention rollout; grad-rollout: class-specific, gradient-weighted rollout; "
        "attention: one layer's raw maps",
    )
    p.add_argument("--head-fusion", choices=["mean", "max", "min"], default="mean", help="how heads are combined")
    p.add_argument("--discard-ratio", type=float, default=0.0, help="drop this share of the lowest attentions")
    p.add_argument("--layer", type=int, default=-1, help="layer for --method attention and --heads-grid")
    p.add_argument("--class", dest="target", help="class (name or index) for grad-rollout; default: the predicted")
    p.add_argument("--layers-grid", action="store_true", help="also write a PNG of the rollout after each layer")
    p.add_argument("--heads-grid", action="store_true", help="also write a PNG of each head's map in --layer")
    p.add_argument("--html", action="store_true", help="also write report.html: inputs, overlays, top-k, side by side")
    args = p.parse_args(argv)
    from vit_app.explain.render import run_attention

    im = _load(args)
    try:
        done, failed = run_attention(
            im, args.paths, args.out, args.method, args.head_fusion, args.discard_ratio, args.layer, args.target,
            args.layers_grid, args.heads_grid, args.batch_size, html=args.html,
        )  # fmt: skip
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"vit-app attention: {done} explained into {args.out}, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_explain_eval(argv: list[str]) -> int:
    p = _parser(
        "explain-eval",
        "Score attention maps against a random baseline: pointing game and map mass inside the object mask on the "
        "synthetic dataset, deletion and insertion curves on any images. Prints a table, writes a PNG and JSON.",
    )
    _add_model_args(p)
    p.add_argument(
        "--data",
        nargs="+",
        default=["synthetic"],
        help="'synthetic' (with masks), 'cifar10:ROOT' / 'cifar100:ROOT' (test split), or image files/folders/globs",
    )
    p.add_argument("--num-images", type=int, default=256, help="how many images to score")
    p.add_argument("--methods", nargs="+", default=["rollout", "grad-rollout", "attention"], help="methods to score")
    p.add_argument("--steps", type=int, default=16, help="points on each deletion/insertion curve")
    p.add_argument("--discard-ratio", type=float, default=0.0, help="rollout discard ratio")
    p.add_argument("--layer", type=int, default=-1, help="the layer whose raw maps --methods attention scores")
    p.add_argument("--out", default="explain_eval", help="folder for explain_eval.png and explain_eval.json")
    args = p.parse_args(argv)
    from vit_app.explain.evaluate import run_explain_eval

    im = _load(args)
    try:
        table = run_explain_eval(
            im,
            args.data,
            args.num_images,
            args.methods,
            args.steps,
            args.discard_ratio,
            args.out,
            args.batch_size,
            args.layer,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(table)
    print(f"vit-app explain-eval: wrote {args.out}/explain_eval.png and {args.out}/explain_eval.json", file=sys.stderr)
    return 0


def cmd_export(argv: list[str]) -> int:
    p = _parser("export", "Export a checkpoint for deployment (ONNX and TorchScript take any batch size).")
    p.add_argument("--ckpt", required=True, help="checkpoint written by 'vit-app fit'")
    p.add_argument("--format", choices=["onnx", "torchscript", "safetensors"], required=True, help="output format")
    p.add_argument("--out", required=True, help="output file (the metadata goes beside it as OUT.json)")
    args = p.parse_args(argv)
    from vit_app.export import export_model
    from vit_app.inference import load_for_inference

    path = export_model(load_for_inference(args.ckpt), args.format, args.out)
    print(f"vit-app export: wrote {path}", file=sys.stderr)
    return 0


def cmd_plot(argv: list[str]) -> int:
    p = _parser("plot", "Plot a run's training curves (loss, accuracy, learning rate) from its CSV log to a PNG.")
    p.add_argument("run_dir", help="a run folder, e.g. runs/quickstart/version_0")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    args = p.parse_args(argv)
    from vit_app.plots import plot_run

    print(f"vit-app plot: wrote {plot_run(args.run_dir, args.out)}", file=sys.stderr)
    return 0


def cmd_calibrate(argv: list[str]) -> int:
    p = _parser(
        "calibrate",
        "Fit a temperature on a validation split so predicted probabilities match accuracy; store it in the "
        "checkpoint (classify and attention then use it); print ECE before and after; draw a reliability diagram.",
    )
    _add_model_args(p)
    p.add_argument("--data", default="synthetic", help="synthetic, cifar10:ROOT, cifar100:ROOT or folder:VAL_DIR")
    p.add_argument("--num-images", type=int, default=10000, help="at most this many validation images")
    p.add_argument("--out", help="write the calibrated checkpoint here instead of updating --ckpt in place")
    p.add_argument("--plot", default="reliability.png", help="reliability diagram PNG")
    args = p.parse_args(argv)
    from vit_app.calibrate import calibrate

    r = calibrate(_load(args), args.ckpt, args.data, args.batch_size, args.num_images, args.plot, args.out)
    print(f"images: {r.images}  accuracy: {r.accuracy:.4f}  temperature: {r.temperature:.4f}")
    print(f"ECE before: {r.ece_before:.4f}  after: {r.ece_after:.4f}")
    print(f"vit-app calibrate: stored T={r.temperature:.4f} in {r.model_file}; diagram: {r.plot}", file=sys.stderr)
    return 0


def _tools() -> dict[str, Callable[[list[str]], int]]:
    return {
        "calibrate": cmd_calibrate,
        "classify": cmd_classify,
        "attention": cmd_attention,
        "explain-eval": cmd_explain_eval,
        "export": cmd_export,
        "plot": cmd_plot,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vit-app` and `python -m vit_app`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help", "help"):
        print(TOP_HELP)
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    tools = _tools()
    try:
        if args[0] in LIGHTNING_COMMANDS:
            from vit_app.train_cli import run

            return run(args)
        if args[0] in tools:
            return tools[args[0]](args[1:])
    except UserError as e:
        if debug:
            raise
        print(f"vit-app: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a diverged run: the message says where and what to try
        if debug:
            raise
        print(f"vit-app: error: {e}", file=sys.stderr)
        return 3
    print(f"vit-app: unknown command {args[0]!r}; run 'vit-app --help' for the list", file=sys.stderr)
    return 2
