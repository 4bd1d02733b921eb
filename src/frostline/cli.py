"""``frostline`` on the command line. Each subcommand is one ``add_<name>`` function below; errors in user input
exit with status 2 and a one-line message."""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from ._table import WIDTH
from .errors import FrostlineError

if TYPE_CHECKING:  # for annotations only: each command imports what it needs when it runs
    from pathlib import Path

    from torch import Tensor, nn

__all__ = ["main"]


class UsageError(Exception):
    """A CLI argument is wrong: print the message, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[_Parser]  # what main's parser.add_subparsers returns


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="small_cnn",
                        help="built-in model (seed_cnn, small_cnn, tiny_resnet, minilm), a transformers model "
                             "directory, or your own: package.module:callable, called with no arguments (or "
                             "--kwargs) and returning a torch.nn.Module (default: small_cnn)")
    parser.add_argument("--kwargs", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for the model's callable (repeatable); VALUE is a Python literal "
                             "(8, 0.1, True, (3, 4), 'text') or else taken as a string")
    parser.add_argument("--freeze", action="append", default=[], metavar="SPEC",
                        help="freeze the parameters this glob selects (repeatable; '!glob' excludes)")
    parser.add_argument("--wide", action="store_true",
                        help="one line per row with every detail, however wide (default: fit 120 columns)")


def _kwargs(pairs: list[str]) -> dict[str, Any]:
    """``--kwargs key=value`` pairs: values as Python literals where they parse, else as strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"--kwargs expects key=value, got {pair!r} (e.g. --kwargs num_classes=10)")
        try:
            out[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key.strip()] = text
    return out


def load_and_freeze(args: argparse.Namespace, check: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """The model named on the command line, with its ``--freeze`` specs applied; ``check(model)`` runs before
    freezing, on the model as its code built it."""
    from . import freeze
    from .models import load_model

    kwargs = _kwargs(args.kwargs)
    if ":" in args.model and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # the console script, unlike python -m, does not see the current directory
    try:
        with _no_loading_bar(args.model):
            model = load_model(args.model, **kwargs)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    if check is not None:
        check(model)
    if args.freeze:
        positives = [s for s in args.freeze if not s.startswith("!")] or ["*"]
        freeze(model, positives + [s for s in args.freeze if s.startswith("!")])
    return model


@contextlib.contextmanager
def _no_loading_bar(name: str) -> Iterator[None]:
    """transformers' "Loading weights" bar off while a transformers directory loads: the CLI's stderr is for its
    one-line errors, and a local directory loads in seconds."""
    if name not in ("minilm", "all-MiniLM-L6-v2") and not os.path.isfile(os.path.join(name, "config.json")):
        yield  # not a transformers directory: no need to import transformers
        return
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _example(model: nn.Module, batch: int, seq_len: int, image_size: int) -> tuple[tuple, dict, str]:
    """A random batch for ``model``: token ids for a model with ``config.vocab_size``, else RGB images; and
    what it is, for messages."""
    import torch

    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    torch.manual_seed(0)
    if vocab is None:
        images = f"{batch} RGB image{'s' if batch > 1 else ''} of {image_size}x{image_size}"
        return (torch.randn(batch, 3, image_size, image_size),), {}, images
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and seq_len > positions:
        raise UsageError(f"--seq-len {seq_len} is beyond the model's {positions} positions "
                         f"(config.max_position_embeddings); use --seq-len {positions} or less")
    ids = torch.randint(0, vocab, (batch, seq_len))
    return (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, f"{batch}x{seq_len} token ids"


def _probe(model: nn.Module, inputs: tuple[tuple, dict, str], who: str) -> None:
    """One forward pass of the model as its code built it (before freezing, no gradients, train mode as the
    step to come), to tell a model that does not take these inputs (a user error: exit 2) from a failure inside
    frostline (a bug: its traceback stays)."""
    import torch

    args, kwargs, what = inputs
    training = model.training
    try:
        with torch.no_grad():
            model.train()(*args, **kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{who} feeds {what}, which this model does not take: {first}") from exc
    finally:
        model.train(training)


def add_summary(sub: _Subparsers) -> None:
    parser = sub.add_parser("summary", help="trainable / frozen elements per top-level module")
    _model_argument(parser)

    def run(args: argparse.Namespace) -> int:
        from .summary import summary

        print(summary(load_and_freeze(args)).table(width=None if args.wide else WIDTH))
        return 0

    parser.set_defaults(run=run)


def add_audit(sub: _Subparsers) -> None:
    parser = sub.add_parser("audit", help="what could still move a frozen parameter, or keep a trainable one "
                                          "from training; exits 1 when it finds an error (0 when clean)")
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

        def check(model: nn.Module) -> None:
            if args.forward:
                _probe(model, _example(model, 2, 8, 32), "--forward")

        model = load_and_freeze(args, check).train()
        if args.optimizer == "all":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        else:
            opt = optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
        loss = None
        if args.forward:
            inputs, kwargs, _ = _example(model, 2, 8, 32)
            loss = _mean_output(model(*inputs, **kwargs))
        found = audit(model, opt, loss)
        print(found.table(width=None if args.wide else WIDTH))
        return 1 if any(f.severity == "error" for f in found) else 0

    parser.set_defaults(run=run)


def _mean_output(output: Any) -> Tensor:
    """The mean of a model's (first) output: a scalar to walk back from."""
    return (output if not isinstance(output, (tuple, list)) and not hasattr(output, "to_tuple")
            else output[0]).float().mean()


def _transformers_dir(path: str | None) -> Path | None:
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


def add_demo(sub: _Subparsers) -> None:
    about = ("fine-tune the pretrained all-MiniLM-L6-v2 three ways (full, 4 layers frozen, encoder frozen + "
             "feature cache) and show what freezing saves")
    parser = sub.add_parser("demo", help=about, description=about)
    _run_options(parser, "a smoke run for CI: 64 training snippets, one epoch, short sequences (seconds)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 3; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the head, dropout and batch order")
    parser.add_argument("--plot", default="out/demo.png", metavar="PATH",
                        help="where the accuracy-against-time PNG goes (default: out/demo.png)")

    def run(args: argparse.Namespace) -> int:
        from .demo import run as run_demo

        if args.epochs is not None and args.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
        model_path = _transformers_dir(args.model)
        print(run_demo(quick=args.quick, epochs=args.epochs, model_path=model_path, seed=args.seed,
                       progress=not args.quiet, plot=args.plot))
        return 0

    parser.set_defaults(run=run)


def add_bench(sub: _Subparsers) -> None:
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


def add_explain(sub: _Subparsers) -> None:
    parser = sub.add_parser("explain", help="per module: forward, dgrad and wgrad FLOPs, kept activations and "
                                            "optimizer state of one training step, against nothing frozen")
    _model_argument(parser)
    parser.add_argument("--batch", type=int, default=8, help="example batch size (default 8)")
    parser.add_argument("--seq-len", type=int, default=128,
                        help="tokens per example for a transformers model (default 128)")
    parser.add_argument("--image-size", type=int, default=32,
                        help="side of the RGB example images for an image model (default 32)")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="also draw the FLOPs and memory per module, frozen beside unfrozen, to PATH (.png, "
                             ".pdf, .svg; needs matplotlib)")

    def run(args: argparse.Namespace) -> int:
        from .explain import explain

        for flag in ("batch", "seq_len", "image_size"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
        if args.plot is not None:
            _can_plot(args.plot)
        sizes = (args.batch, args.seq_len, args.image_size)
        model = load_and_freeze(args, lambda m: _probe(m, _example(m, *sizes), "explain")).train()
        inputs, kwargs, _ = _example(model, *sizes)
        result = explain(model, *inputs, **kwargs)
        print(result.table(width=None if args.wide else WIDTH))
        if args.plot is not None:
            result.plot(args.plot)
            print(f"wrote {args.plot}")
        return 0

    parser.set_defaults(run=run)


def _can_plot(path: str) -> None:
    """Refuse a plot that cannot be written before spending a measurement on it."""
    from pathlib import Path

    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib: pip install matplotlib") from exc
    if not Path(path).parent.is_dir():
        raise UsageError(f"--plot {path}: the directory {Path(path).parent} does not exist")


COMMANDS: list[Callable[[_Subparsers], None]] = [add_summary, add_audit, add_demo, add_bench, add_explain]


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="frostline", description="Precise, fast and visible parameter freezing.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, FrostlineError) as exc:
        print(f"frostline {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
