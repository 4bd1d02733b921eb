"""``frostline`` on the command line. Each subcommand is one ``add_<name>`` function below; errors in user input
exit with status 2 and a one-line message."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import FrostlineError

__all__ = ["main"]


class UsageError(Exception):
    """A CLI argument is wrong: print the message, exit 2."""


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="small_cnn",
                        help="built-in model (seed_cnn, small_cnn, tiny_resnet, minilm) or a transformers model "
                             "directory (default: small_cnn)")
    parser.add_argument("--freeze", action="append", default=[], metavar="SPEC",
                        help="freeze the parameters this glob selects (repeatable; '!glob' excludes)")


def load_and_freeze(args: argparse.Namespace):
    """The model named on the command line, with its ``--freeze`` specs applied."""
    from . import freeze
    from .models import load_model

    try:
        model = load_model(args.model)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if args.freeze:
        positives = [s for s in args.freeze if not s.startswith("!")] or ["*"]
        freeze(model, positives + [s for s in args.freeze if s.startswith("!")])
    return model


def add_summary(sub) -> None:
    parser = sub.add_parser("summary", help="trainable / frozen elements per top-level module")
    _model_argument(parser)

    def run(args: argparse.Namespace) -> int:
        from .summary import summary

        print(summary(load_and_freeze(args)))
        return 0

    parser.set_defaults(run=run)


def add_audit(sub) -> None:
    parser = sub.add_parser("audit", help="what could still move a frozen parameter, or keep a trainable one "
                                          "from training")
    _model_argument(parser)
    parser.add_argument("--optimizer", choices=("all", "trainable"), default="all",
                        help="all: AdamW over every parameter with weight decay 0.01, as a careless user would "
                             "(default); trainable: frostline.optimizer over the trainable ones")
    parser.add_argument("--forward", action="store_true",
                        help="also run one forward pass on a random batch and report trainable parameters that "
                             "get no gradient from it")

    def run(args: argparse.Namespace) -> int:
        import torch

        from .audit import audit
        from .optim import optimizer

        model = load_and_freeze(args).train()
        if args.optimizer == "all":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        else:
            opt = optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
        print(audit(model, opt, _random_batch_loss(model) if args.forward else None))
        return 0

    parser.set_defaults(run=run)


def _random_batch_loss(model):
    """Mean output of ``model`` on a random batch: token ids for a transformers model, else 32x32 RGB images."""
    import torch

    torch.manual_seed(0)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None:
        return model(input_ids=torch.randint(0, vocab, (2, 8)))[0].float().mean()
    try:
        return model(torch.randn(2, 3, 32, 32)).float().mean()
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"--forward feeds 32x32 RGB images or token ids, which this model does not take: {exc}")


def _transformers_dir(path: str | None):
    """``--model``: None (the pretrained all-MiniLM-L6-v2) or a directory holding a transformers ``config.json``."""
    from pathlib import Path

    if path is None or path in ("minilm", "all-MiniLM-L6-v2"):
        return None
    if not (Path(path) / "config.json").is_file():
        raise UsageError(f"--model {path!r} is not a transformers model directory (no config.json there)")
    return Path(path)


def _run_options(parser: argparse.ArgumentParser, quick_help: str) -> None:
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--model", metavar="PATH", default=None,
                        help="a transformers encoder directory (default: the pretrained all-MiniLM-L6-v2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_demo(sub) -> None:
    about = ("fine-tune the pretrained all-MiniLM-L6-v2 three ways (full, 4 layers frozen, encoder frozen + "
             "feature cache) and show what freezing saves")
    parser = sub.add_parser("demo", help=about, description=about)
    _run_options(parser, "a smoke run for CI: an eighth of the training data, one epoch, short sequences "
                         "(seconds)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 4; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the head, dropout and batch order")

    def run(args: argparse.Namespace) -> int:
        from .demo import run as run_demo

        if args.epochs is not None and args.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
        model_path = _transformers_dir(args.model)
        print(run_demo(quick=args.quick, epochs=args.epochs, model_path=model_path, seed=args.seed,
                       progress=not args.quiet))
        return 0

    parser.set_defaults(run=run)


def add_bench(sub) -> None:
    about = ("frostline's freezing against hand-written methods, side by side: step time, exactness, optimizer "
             "state, memory; writes JSON and PNG")
    parser = sub.add_parser("bench", help=about, description=about)
    _run_options(parser, "a smoke run for CI: one round of one step on small inputs (seconds; timings "
                         "meaningless)")
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="run only this case (repeatable): filters, rows, prefix, layers")
    parser.add_argument("--out", default="benchmarks/results", metavar="DIR",
                        help="where bench[-CASE][-quick].json and .png go (default: benchmarks/results)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from . import bench

        names = args.case or list(bench.CASES)
        unknown = [n for n in names if n not in bench.CASES]
        if unknown:
            raise UsageError(f"unknown case {unknown[0]!r}; the cases are: {', '.join(bench.CASES)}")
        model_path = _transformers_dir(args.model)
        results = []
        for name in dict.fromkeys(names):  # print each table as soon as its case is done
            results += bench.run([name], quick=args.quick, model_path=model_path, progress=not args.quiet)
            print(bench.table(results[-1]), end="\n\n", flush=True)
        json_path, png_path = bench.write(results, Path(args.out), quick=args.quick)
        print(f"wrote {json_path} and {png_path}")
        return 0

    parser.set_defaults(run=run)


def add_explain(sub) -> None:
    parser = sub.add_parser("explain", help="per module: forward, dgrad and wgrad FLOPs, kept activations and "
                                            "optimizer state of one training step, against nothing frozen")
    _model_argument(parser)
    parser.add_argument("--batch", type=int, default=8, help="example batch size (default 8)")
    parser.add_argument("--seq-len", type=int, default=128,
                        help="tokens per example for a transformers model (default 128)")
    parser.add_argument("--image-size", type=int, default=32,
                        help="side of the RGB example images for a built-in CNN (default 32)")

    def run(args: argparse.Namespace) -> int:
        import torch

        from .explain import explain

        for flag in ("batch", "seq_len", "image_size"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
        model = load_and_freeze(args).train()
        torch.manual_seed(0)
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None:  # a transformers model: a batch of token ids
            ids = torch.randint(0, vocab, (args.batch, args.seq_len))
            print(explain(model, input_ids=ids, attention_mask=torch.ones_like(ids)))
            return 0
        try:
            print(explain(model, torch.randn(args.batch, 3, args.image_size, args.image_size)))
        except (RuntimeError, TypeError) as exc:
            raise UsageError(f"explain feeds RGB images or token ids, which this model does not take: {exc}")
        return 0

    parser.set_defaults(run=run)


COMMANDS: list[Callable] = [add_summary, add_audit, add_demo, add_bench, add_explain]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frostline", description="Precise, fast and visible parameter freezing.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, FrostlineError) as exc:
        print(f"frostline {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
