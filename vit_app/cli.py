"""The `vit-app` entry point: it parses the command line and dispatches; the work happens in the modules it names.

Nothing heavy is imported at start-up: Lightning only for fit / validate / test / predict, torch when a command
needs a model.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from vit_app import __version__
from vit_app.errors import ConfigError, UserError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
METHODS = ("mean-attention", "rollout", "attention", "relevance", "attnlrp", "cp-lrp")  # explain.engine's (no torch)
METHOD_HELP = ("mean-attention (the default, measured best: see the README): the read-out's attention (the class "
               "token's, or the mean patch query's with average pooling) averaged over every block but the first; "
               "rollout: attention rollout; attention: one layer's raw attention (--layer); relevance: class-specific, "
               "gradient-weighted attention (Chefer et al. 2021; grad-rollout is its old name); attnlrp: "
               "class-specific attention-aware LRP; cp-lrp: LRP with the attention held constant")  # fmt: skip

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
  classify       top-k predictions:  vit-app classify img.jpg photos/ "*.png" --ckpt best.ckpt --format jsonl
  attention      attention maps:     vit-app attention img.jpg --ckpt best.ckpt --out maps/ --method rollout
  explain-eval   how right the maps are: vit-app explain-eval --ckpt best.ckpt
  export         deploy:             vit-app export --ckpt best.ckpt --out model.onnx  (--format timm --out DIR)
  serve          HTTP server:        vit-app serve --ckpt best.ckpt --port 8000   (POST /predict, /explain; GET /)
  plot           training curves:    vit-app plot runs/quickstart/version_0
  calibrate      temperature scaling: vit-app calibrate --ckpt best.ckpt --data cifar10:~/data/cifar10

Global options:
  --quiet      no progress bars and no information lines (errors and results only)
  --debug      show full tracebacks for errors in your input (by default: a short message)
  --version    print the version
"""


def build_cli(args: list[str], run: bool = True) -> Any:
    """The LightningCLI for fit / validate / test / predict (see vit_app.train_cli)."""
    from vit_app.train_cli import build_cli as build

    return build(args, run)


class UsageError(UserError):
    """A command line that does not parse: an unknown option, a missing or impossible value."""


class ToolParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) that main() prints like every other user error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it is None or False (nothing worth saying) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser(prog: str, description: str) -> ToolParser:
    return ToolParser(prog=f"vit-app {prog}", description=description, formatter_class=_Defaults)


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    return parse


def _share(text: str) -> float:
    """A share in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser, batch: int = 32) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint written by 'vit-app fit' (best.ckpt or last.ckpt), or "
                   "an exported .safetensors file")  # fmt: skip
    p.add_argument("--batch-size", type=_at_least(1), default=batch, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")


def _load(args: argparse.Namespace) -> Any:
    from vit_app.inference import load_for_inference, resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise ConfigError(f"--device: {e}") from None
    return load_for_inference(args.ckpt, device)


def _output_file(path: str, option: str) -> Path:
    """A file to write: its folder is made if missing; an existing folder in its place is refused."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot create its folder ({e.strerror or e})") from None
    return p


def _summary(prog: str, counts: Any, what: str) -> int:
    skipped = f", {counts.skipped} skipped" if counts.skipped else ""
    print(f"vit-app {prog}: {counts.done} {what}, {counts.failed} failed{skipped}", file=sys.stderr)
    return 1 if counts.failed else 0


def cmd_classify(argv: list[str]) -> int:
    p = _parser("classify", "Top-k predictions for image files, folders (searched recursively) and glob patterns.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    _add_model_args(p)
    p.add_argument("--topk", type=_at_least(1), default=5, help="how many classes to report per image")
    p.add_argument("--format", choices=["table", "jsonl", "json", "csv"], default="table",
                   help="output format: jsonl (also spelt json) is one JSON object a line")  # fmt: skip
    p.add_argument("--output", help="write the results to this file instead of standard output")
    p.add_argument("--tta", choices=["none", "flip", "flip_shift"], default="none",
                   help="test-time augmentation: flip averages the logits of each image and of its left-right mirror "
                   "(twice the compute); flip_shift averages 18 views, the image moved by a quarter patch (at least "
                   "1 px) on a 3 x 3 grid, each also mirrored (18x the compute)")  # fmt: skip
    args = p.parse_args(argv)
    from vit_app.classify import classify

    im = _load(args)
    out_path = _output_file(args.output, "--output") if args.output else None
    out = open(out_path, "w", newline="") if out_path else sys.stdout
    try:
        counts = classify(im, args.paths, out, args.format, args.topk, args.batch_size, tta=args.tta)
    finally:
        if out_path:
            out.close()
    if out_path:
        print(f"vit-app classify: results in {out_path}", file=sys.stderr)
    return _summary("classify", counts, "classified")


def cmd_attention(argv: list[str]) -> int:
    p = _parser(
        "attention",
        "Attention maps: per image an overlay PNG (prediction and probability in the picture) and the raw map "
        "(.npy, grid_h x grid_w), plus index.jsonl listing them.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    _add_model_args(p, batch=16)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", choices=[*METHODS, "grad-rollout"], default=None, help=METHOD_HELP)
    p.add_argument("--head-fusion", choices=["mean", "max", "min"], default="mean", help="how heads are combined")
    p.add_argument("--discard-ratio", type=_share, default=0.0, help="drop this share of the lowest attentions")
    p.add_argument("--layer", type=int, default=-1, help="layer for --method attention and --heads-grid (-1: last)")
    p.add_argument("--class", dest="target", help="class (name or index) for the class-specific methods (relevance, "
                   "attnlrp, cp-lrp); default: the predicted one")  # fmt: skip
    p.add_argument("--layers-grid", action="store_true", help="also write a PNG of the rollout after each layer")
    p.add_argument("--heads-grid", action="store_true", help="also write a PNG of each head's map in --layer")
    p.add_argument("--html", action="store_true", help="also write explorer.html (one self-contained page that opens "
                   "offline: method, layer and head switches, where each patch attends, the class-specific map for "
                   "each of the top 5) and report.html (inputs, overlays, top-k, side by side)")  # fmt: skip
    p.add_argument("--html-heads", action="store_true", help="explorer: keep every head's query rows too, not "
                   "only the head-fused ones (a page about 1 + heads times larger)")  # fmt: skip
    p.add_argument("--upsample", choices=["auto", "nearest", "bicubic"], default="auto", help="how the patch grid is "
                   "drawn: nearest shows each patch as the block it is (auto: nearest up to 8 x 8)")  # fmt: skip
    args = p.parse_args(argv)
    from vit_app.explain.engine import DEFAULT_METHOD
    from vit_app.explain.render import run_attention

    im = _load(args)
    counts = run_attention(
        im, args.paths, args.out, args.method or DEFAULT_METHOD, args.head_fusion, args.discard_ratio, args.layer,
        args.target,
        args.layers_grid, args.heads_grid, args.batch_size, html=args.html or args.html_heads, upsample=args.upsample,
        html_heads=args.html_heads,
    )  # fmt: skip
    return _summary("attention", counts, f"explained into {args.out}")


def cmd_explain_eval(argv: list[str]) -> int:
    p = _parser(
        "explain-eval",
        "Score attention maps against a random baseline: pointing game and map mass inside the object mask on the "
        "synthetic dataset, deletion and insertion curves on any images. Prints a table, writes a PNG and JSON.",
    )
    p.add_argument("--ckpt", required=True, nargs="+", help="one or more checkpoints (or exported .safetensors): "
                   "each is scored, and the table pools them (e.g. the same recipe trained with 3 seeds)")  # fmt: skip
    p.add_argument("--batch-size", type=_at_least(1), default=32, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument(
        "--data",
        nargs="+",
        help="synthetic (with masks), cifar10:ROOT / cifar100:ROOT (test split), folder:DIR (or DIR), or image "
        "files and globs (default: the data the first model's card says it was trained on)",
    )
    p.add_argument("--num-images", type=_at_least(1), default=256, help="how many images to score")
    p.add_argument("--methods", nargs="+", choices=[*METHODS, "grad-rollout"], default=list(METHODS),
                   help="methods to score (each against a random map)")  # fmt: skip
    p.add_argument("--steps", type=_at_least(2), default=16, help="points on each deletion/insertion curve")
    p.add_argument("--discard-ratio", type=_share, default=0.0, help="rollout discard ratio")
    p.add_argument("--layer", type=int, default=-1, help="the layer whose raw maps --methods attention scores")
    p.add_argument("--seed", type=int, default=0, help="seed of the random maps and of the bootstrap intervals")
    p.add_argument("--no-pairs", action="store_true", help="synthetic data: skip the two-object (class-specific) split")
    p.add_argument("--out", default="explain_eval", help="folder for explain_eval.png and explain_eval.json")
    args = p.parse_args(argv)
    from vit_app.explain.engine import resolve_method
    from vit_app.explain.evaluate import run_explain_eval
    from vit_app.explain.render import check_layer

    models = [_load(argparse.Namespace(ckpt=c, device=args.device)) for c in args.ckpt]
    for im in models:
        check_layer(args.layer, len(im.model.blocks))
    methods = list(dict.fromkeys(resolve_method(m) for m in args.methods))
    from vit_app.evaldata import data_of

    data = args.data or [data_of(models[0].card)]
    table = run_explain_eval(models, data, args.num_images, methods, args.steps, args.discard_ratio, args.out,
                             args.batch_size, args.layer, pairs=not args.no_pairs, seed=args.seed)  # fmt: skip
    print(table)
    print(f"vit-app explain-eval: wrote {args.out}/explain_eval.png and {args.out}/explain_eval.json", file=sys.stderr)
    return 0


EXPORT_SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pts", ".torchscript"), "safetensors": (".safetensors",),
                   "timm": ("",)}  # fmt: skip
EXPORT_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript", "safetensors": "a safetensors",
                "timm": "a timm-format"}  # fmt: skip


def cmd_export(argv: list[str]) -> int:
    p = _parser("export", "Export a checkpoint for deployment (ONNX and TorchScript take any batch size).")
    p.add_argument("--ckpt", required=True, help="checkpoint written by 'vit-app fit'")
    p.add_argument("--format", choices=list(EXPORT_SUFFIXES), help="output format (default: from the --out suffix)")
    p.add_argument("--out", required=True, help="output file: .onnx, .pt or .safetensors (ONNX and TorchScript get "
                   "the model card beside them as OUT.json); with --format timm a folder: config.json, "
                   "model.safetensors and README.md, which timm.create_model('local-dir:OUT') loads")  # fmt: skip
    p.add_argument(
        "--push-to-hub",
        metavar="USER/REPO",
        help="--format timm: then upload the folder to this "
        "Hugging Face Hub model repo (needs a network and a token: HF_TOKEN or `huggingface-cli login`)",
    )
    p.add_argument("--private", action="store_true", help="--push-to-hub: create the repo as private")
    args = p.parse_args(argv)
    suffix = Path(args.out).suffix.lower()
    by_suffix = next((f for f, sfx in EXPORT_SUFFIXES.items() if suffix and suffix in sfx), None)
    fmt = args.format or by_suffix
    if fmt is None:
        raise UsageError(f"--out {args.out}: give --format, or a file name ending .onnx, .pt or .safetensors "
                         "(--format timm writes a folder)")  # fmt: skip
    if fmt == "timm":
        if suffix in {s for f, sfx in EXPORT_SUFFIXES.items() if f != "timm" for s in sfx}:
            raise UsageError(f"--out {args.out}: --format timm writes a folder; give a folder name, not a file")
    elif suffix not in EXPORT_SUFFIXES[fmt]:
        ends = " or ".join(EXPORT_SUFFIXES[fmt])
        raise UsageError(f"--out {args.out}: {EXPORT_NAMES[fmt]} file should end {ends} (or choose another --format)")
    if args.push_to_hub and fmt != "timm":
        raise UsageError("--push-to-hub: the Hub takes the timm format; add --format timm (--out is then a folder)")
    if args.push_to_hub and args.push_to_hub.count("/") != 1:
        raise UsageError(f"--push-to-hub {args.push_to_hub}: give the repo as USER/REPO")
    from vit_app.export import export_model
    from vit_app.inference import load_for_inference

    out = Path(args.out) if fmt == "timm" else _output_file(args.out, "--out")
    path = export_model(load_for_inference(args.ckpt), fmt, out)
    checked = " (loads in timm and vit-app with the same logits)" if fmt == "timm" else ""
    print(f"vit-app export: wrote {path}{checked}", file=sys.stderr)
    if args.push_to_hub:
        from vit_app.hub import push_folder

        url = push_folder(path, args.push_to_hub, private=args.private)
        print(f"vit-app export: pushed to {url}; load it with timm.create_model('hf-hub:{args.push_to_hub}', "
              "pretrained=True)", file=sys.stderr)  # fmt: skip
    return 0


def cmd_plot(argv: list[str]) -> int:
    p = _parser("plot", "Plot a run's training curves (loss, accuracy, learning rate) from its CSV log to a PNG.")
    p.add_argument("run_dir", help="a run folder, e.g. runs/quickstart/version_0 (a folder of runs: the newest)")
    p.add_argument("--out", help="PNG path (default: curves.png in the run folder)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        raise ConfigError(f"{args.run_dir}: no such folder (give a run folder such as runs/quickstart/version_0)")
    from vit_app.plots import find_metrics, plot_run

    out = _output_file(args.out, "--out") if args.out else None
    source = find_metrics(args.run_dir)
    origin = "" if source.parent.samefile(args.run_dir) else f" (the newest run under {args.run_dir}: {source.parent})"
    print(f"vit-app plot: wrote {plot_run(source, out)}{origin}", file=sys.stderr)
    return 0


def cmd_calibrate(argv: list[str]) -> int:
    p = _parser(
        "calibrate",
        "Fit a temperature on labelled images so predicted probabilities match accuracy; write it into a copy of the "
        "checkpoint (classify, attention and predict then use it); print ECE before and after; draw a reliability "
        "diagram.",
    )
    _add_model_args(p)
    p.add_argument(
        "--data", default="synthetic", help="synthetic, cifar10:ROOT, cifar100:ROOT (test split) or folder:DIR"
    )
    p.add_argument("--num-images", type=_at_least(10), default=10000, help="at most this many images")
    p.add_argument("--out", help="the calibrated model file (default: NAME.calibrated.ckpt beside --ckpt)")
    p.add_argument("--in-place", action="store_true", help="write the temperature into --ckpt itself")
    p.add_argument("--plot", help="reliability diagram PNG (default: beside the calibrated file)")
    args = p.parse_args(argv)
    if args.in_place and args.out:
        raise UsageError("give --out or --in-place, not both (see 'vit-app calibrate --help')")
    src = Path(args.ckpt)
    out = src if args.in_place else Path(args.out) if args.out else src.with_name(f"{src.stem}.calibrated{src.suffix}")
    out = _output_file(str(out), "--out")
    plot = _output_file(args.plot, "--plot") if args.plot else out.with_name(f"{out.stem}.reliability.png")
    from vit_app.calibrate import calibrate

    r = calibrate(_load(args), args.ckpt, args.data, args.batch_size, args.num_images, plot, out)
    print(f"images: {r.images}  accuracy: {r.accuracy:.4f}  temperature: {r.temperature:.4f}")
    print(f"ECE before: {r.ece_before:.4f}  after: {r.ece_after:.4f} (cross-fitted: each half of the images scaled "
          "by the temperature fitted on the other)")  # fmt: skip
    print(f"vit-app calibrate: stored T={r.temperature:.4f} in {r.model_file}; diagram: {r.plot}", file=sys.stderr)
    return 0


SERVE_HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the addresses LitServe's run() accepts
PORTS = (1024, 65535)  # LitServe's range: no privileged ports


def _serve_host(text: str) -> str:
    host = "127.0.0.1" if text == "localhost" else text
    if host not in SERVE_HOSTS:
        raise argparse.ArgumentTypeError(f"{text!r}: give one of localhost, {', '.join(SERVE_HOSTS)}")
    return host


def _serve_port(text: str) -> int:
    port = _at_least(PORTS[0])(text)
    if port > PORTS[1]:
        raise argparse.ArgumentTypeError(f"must be {PORTS[1]} or less, got {port}")
    return port


def _check_port_free(host: str, port: int) -> None:
    """Refuse, in one line, a port another program holds (the server would otherwise start its workers first)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); another program may "
                              "hold it: choose another --port") from None  # fmt: skip


def cmd_serve(argv: list[str]) -> int:
    p = _parser(
        "serve",
        "Serve a model over HTTP (LitServe, with request batching): POST /predict and POST /explain take image bytes "
        "or a multipart file; GET /health; GET / is a page to drop an image on. Bad uploads get a 4xx.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint, exported .safetensors file or timm-format folder")
    p.add_argument("--host", type=_serve_host, default="127.0.0.1",
                   help="address to listen on: 127.0.0.1 (or localhost; this machine only), 0.0.0.0 (every IPv4 "
                   "interface) or :: (every interface); LitServe listens on no other")  # fmt: skip
    p.add_argument("--port", type=_serve_port, default=8000, help=f"TCP port, {PORTS[0]}-{PORTS[1]}")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--max-batch-size", type=_at_least(1), default=16, help="requests run together (1: no batching)")
    p.add_argument("--batch-timeout", type=float, default=0.01, help="seconds a batch waits to fill up")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="larger uploads are refused (413)")
    p.add_argument("--max-pixels", type=_at_least(1), default=40_000_000, help="larger images are refused (413)")
    p.add_argument("--topk", type=_at_least(1), default=5, help="classes per answer (a request may ask ?topk=N)")
    args = p.parse_args(argv)
    if not args.batch_timeout >= 0 or not args.max_upload_mb > 0:
        raise UsageError("--batch-timeout must be >= 0 and --max-upload-mb > 0")
    try:
        from vit_app.serve import build_server
    except ImportError as e:
        raise ConfigError(f"serve needs LitServe ({e.name} is missing): pip install 'vit-app[serve]'") from None
    from vit_app.card import read_card_file
    from vit_app.inference import resolve_device

    read_card_file(args.ckpt)  # a bad file is refused here, in one line, before any worker starts
    _check_port_free(args.host, args.port)
    try:
        device = str(resolve_device(args.device))
    except ValueError as e:
        raise ConfigError(f"--device: {e}") from None
    server = build_server(args.ckpt, device, args.max_batch_size, args.batch_timeout, args.max_upload_mb,
                          args.max_pixels, args.topk)  # fmt: skip
    print(f"vit-app serve: http://{args.host}:{args.port}/ (POST /predict, /explain; GET /health)", file=sys.stderr)
    server.run(host=args.host, port=args.port, generate_client_file=False, num_api_servers=1,
               log_level="warning")  # fmt: skip
    return 0


def _tools() -> dict[str, Callable[[list[str]], int]]:
    return {
        "serve": cmd_serve,
        "calibrate": cmd_calibrate,
        "classify": cmd_classify,
        "attention": cmd_attention,
        "explain-eval": cmd_explain_eval,
        "export": cmd_export,
        "plot": cmd_plot,
    }


def _fail(message: str, code: int) -> int:
    from vit_app.progress import say

    say(f"vit-app: error: {message}")
    return code


def _one_line_warnings() -> None:
    """Warnings as 'vit-app: warning: ...' on one line (with --debug: Python's usual form, with the source)."""
    import warnings

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        from vit_app.progress import say

        say(f"vit-app: warning: {' '.join(str(message).split())}", file)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vit-app` and `python -m vit_app`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug, quiet = "--debug" in args, "--quiet" in args
    args = [a for a in args if a not in ("--debug", "--quiet")]
    if not args or args[0] in ("-h", "--help", "help"):
        print(TOP_HELP)
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    tools = _tools()
    if args[0] not in tools and args[0] not in LIGHTNING_COMMANDS:
        close = difflib.get_close_matches(args[0], [*LIGHTNING_COMMANDS, *tools], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return _fail(f"unknown command {args[0]!r}{hint}; run 'vit-app --help' for the list", 2)
    from vit_app.progress import set_quiet

    set_quiet(quiet)
    if not debug:
        _one_line_warnings()
    try:
        if args[0] in LIGHTNING_COMMANDS:
            from vit_app.train_cli import run

            return run(args, quiet=quiet)
        return tools[args[0]](args[1:])
    except SystemExit as e:  # --help, or argparse leaving for another reason
        return e.code if isinstance(e.code, int) else 0
    except UserError as e:
        if debug:
            raise
        return _fail(str(e), 2)
    except FloatingPointError as e:  # a diverged run: the message says where and what to try
        if debug:
            raise
        return _fail(str(e), 3)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
