"""The ``viztools`` command: course information, model weights, training GlyphNet, exercises and grading."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import viztools
from viztools import models


def _info(args: argparse.Namespace) -> int:
    print(f"viztools {viztools.__version__}")
    folders = ", ".join(str(p) for p in models._weights_dirs()) or "(not set)"
    print(f"{models.WEIGHTS_DIR_ENV}: {folders}")
    print("Models (weights available offline?):")
    for name, path in models.model_availability():
        status = f"yes  {path}" if path else "no   (download with `viztools download NAME`, or see README)"
        print(f"  {name:<14} {status}")
    auto = next((n for n in models.AUTO_PREFERENCE if models.find_local_weights(n)), "glyphnet")
    print(f"load_model('auto') would use: {auto}")
    return 0


def _download(args: argparse.Namespace) -> int:
    path = models.download_weights(args.model)
    print(f"{args.model}: {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from viztools.training import train_glyphnet

    report = train_glyphnet(
        args.output, train_images=args.images, epochs=args.epochs, seed=args.seed, workers=args.workers
    )
    print(f"Saved {args.output}: held-out accuracy {report.held_out_accuracy:.2%} on {report.held_out_images} "
          f"fresh images, {report.seconds:.0f} s.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viztools", description=__doc__)
    parser.add_argument("--version", action="version", version=f"viztools {viztools.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="list the models and whether their weights are available offline")
    info.set_defaults(run=_info)

    download = commands.add_parser("download", help="download a model's ImageNet weights into the torch hub cache")
    download.add_argument("model", choices=[n for n in models.MODEL_NAMES if n != "glyphnet"])
    download.set_defaults(run=_download)

    train = commands.add_parser("train-glyphnet", help="re-create the built-in GlyphNet weights (deterministic)")
    train.add_argument("--output", default=str(models.GLYPHNET_WEIGHTS), help="where to save (default: the package)")
    train.add_argument("--images", type=int, default=20_000, help="training images (default 20000)")
    train.add_argument("--epochs", type=int, default=4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=2, help="processes that generate images")
    train.set_defaults(run=_train)

    from viztools.grading.cli import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"viztools: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("viztools: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
