"""Command line: `jaxpet --config FILE.yaml [key=value ...]` runs an experiment (as train.py does);
`jaxpet report OUT_DIR` regenerates summary.md/summary.png of a run and prints its table;
`jaxpet predict RUN_OR_MODEL_DIR --input FILE` labels new text (jaxpet.predict);
`jaxpet petal --config FILE [key=value ...]` finds label words (jaxpet.pipelines.petal)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

# Each command imports what it runs (JAX, transformers, the pipelines) inside its function, so
# that `--help` and a bad argument answer at once and no command loads another's libraries.

# Errors a user causes (config, paths, data, labels, over-long inputs): printed as one message
# with exit status 2 instead of a traceback. Set JAXPET_TRACEBACK=1 to see the traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, NotImplementedError)
EXIT_USER_ERROR = 2


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)


# How a run's settings are put together; shown by `train.py --help` and `jaxpet train --help`.
TRAIN_EPILOG = """\
configs and overrides:
  A run's settings are the defaults of every config key, then the YAML file given with
  --config, then each key=value override, in order. An override is a dotted config key and
  a YAML value; an unknown key or a value of the wrong type stops the run naming the key.

  example:
    python train.py --config configs/demo.yaml pet.max_steps=100 pet.pattern_ids=[0,1] \\
        model.name=roberta-base output_dir=runs/demo_100

  jaxpet config show FILE.yaml [key=value ...]   print the resolved config, defaults included
  jaxpet config keys                              every key with its type, default and meaning
  docs/config.md                                  the same list as a page
"""


def train_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train and evaluate PET / sequence-classifier models.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides applied after the file")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the results of an earlier, different run in output_dir "
                             "instead of stopping (README: Outputs and resuming)")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # One line per warning: the message says what happened; the source line does not help.
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def user_error_status(error: BaseException) -> int:
    """Prints an error the user can fix in one line and returns EXIT_USER_ERROR; with
    JAXPET_TRACEBACK=1 it re-raises instead, traceback and all."""
    if os.environ.get("JAXPET_TRACEBACK"):
        raise error
    print(f"error: {_message(error)}\n(set JAXPET_TRACEBACK=1 to see the traceback)",
          file=sys.stderr)
    return EXIT_USER_ERROR


# How a full disk, a disk quota or a file over the process's size limit (RLIMIT_FSIZE) reads;
# the libraries that write checkpoints and weights pass it on as text only, not as an OSError.
OUT_OF_SPACE = ("No space left on device", "File too large", "Disk quota exceeded")


def out_of_space(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a full disk or a file size limit."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(text in str(error) for text in OUT_OF_SPACE):
            return True
        error = error.__cause__ or error.__context__
    return False


def train_main(argv: Sequence[str], prog: str = "train.py") -> int:
    """Loads the config, runs it, prints the results table; returns the exit status."""
    args = train_parser(prog).parse_args(list(argv))
    if not os.environ.get("JAXPET_TRACEBACK"):
        warnings.showwarning = _show_warning
    try:
        from jaxpet.config import load_config

        config = load_config(args.config, args.overrides)
        from jaxpet.engine.sharding import maybe_initialize_distributed

        maybe_initialize_distributed(config.distributed)
        if config.method == "text2text":
            from jaxpet.text2text.run import run as run_text2text

            run_text2text(config, overwrite=args.overwrite)
            return 0
        from jaxpet.pipelines.pet import run

        run(config, overwrite=args.overwrite)
    except Exception as error:
        if out_of_space(error):
            # results and model folders are written atomically: none is left half-written
            return user_error_status(OSError(
                f"out of disk space (or over the file size limit) writing the run's outputs: "
                f"{_message(error)}. Free space and rerun the same command: finished stages "
                "are reused and training resumes from its last checkpoint"))
        if not isinstance(error, USER_ERRORS):
            raise
        return user_error_status(error)
    except KeyboardInterrupt:
        # Ctrl-C outside training (loading, evaluating, a second Ctrl-C): one line, no
        # traceback; training itself stops at a step and names its checkpoint
        # (jaxpet.engine.training)
        if os.environ.get("JAXPET_TRACEBACK"):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def report_main(argv: Sequence[str]) -> int:
    """`jaxpet report OUT_DIR`: regenerates summary.md and summary.png, prints the table."""
    from jaxpet.runs.report import main as report

    return report(argv)


def petal_main(argv: Sequence[str]) -> int:
    """`jaxpet petal --config FILE [key=value ...]`: finds label words (jaxpet.pipelines.petal),
    writes
    verbalizer.yaml and summary.md, prints the table."""
    parser = argparse.ArgumentParser(
        prog="jaxpet petal", description="Find label words for a task's patterns (PETAL).",
        epilog="Overrides are dotted config keys, e.g. petal.words_per_label=3")
    parser.add_argument("--config", required=True, help="experiment YAML file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides applied after the file")
    args = parser.parse_args(list(argv))
    try:
        from jaxpet.config import load_config
        from jaxpet.pipelines import petal

        config = load_config(args.config, args.overrides)
        result = petal.search(config)
        path = petal.write_outputs(result, petal.output_folder(config))
    except USER_ERRORS as error:
        return user_error_status(error)
    print(petal.summary_markdown(result))
    print(f"verbalizer: {path}  (train with task.verbalizer={path})")
    return 0


def config_main(argv: Sequence[str]) -> int:
    """`jaxpet config show CONFIG [key=value ...]` prints the resolved config as YAML;
    `jaxpet config keys [--markdown]` lists every config key (docs/config.md)."""
    parser = argparse.ArgumentParser(
        prog="jaxpet config", description="Show a resolved config, or list every config key.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print CONFIG with its overrides and every default "
                                            "(YAML, as the run's config.yaml)")
    show.add_argument("config", help="experiment YAML file (configs/*.yaml)")
    show.add_argument("overrides", nargs="*", metavar="key=value",
                      help="config overrides applied after the file")
    keys = commands.add_parser("keys", help="every config key with its type, default and "
                                            "meaning")
    keys.add_argument("--markdown", action="store_true",
                      help="write docs/config.md's Markdown instead of plain text")
    args = parser.parse_args(list(argv))
    from jaxpet import config_docs

    if args.command == "keys":
        sys.stdout.write(config_docs.keys_markdown() if args.markdown else config_docs.keys_text())
        return 0
    try:
        from jaxpet.config import load_config, to_yaml

        sys.stdout.write(to_yaml(load_config(args.config, list(args.overrides))))
    except USER_ERRORS as error:
        print(f"error: {_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def predict_main(argv: Sequence[str]) -> int:
    """`jaxpet predict RUN_DIR_OR_MODEL_DIR --input FILE [--output FILE] [--batch-size N]`:
    labels new text with a saved model or a run's final model (jaxpet.predict)."""
    parser = argparse.ArgumentParser(
        prog="jaxpet predict", description="Label new text with a saved model folder (e.g. "
        "RUN/p0-s0/model) or a run folder's final model (its distilled classifier, else its "
        "members merged as the run merged them). Writes one JSON line per input: id, label, "
        "probs and scores keyed by label name.")
    parser.add_argument("path", metavar="RUN_DIR_OR_MODEL_DIR")
    parser.add_argument("--input", required=True,
                        help="JSONL or CSV (header row) with text_a [, text_b, choices, id]; a "
                             ".txt file or - (stdin) with one text per line; or a file in the "
                             "task's own format")
    parser.add_argument("--output", help="JSONL file to write (default: stdout)")
    parser.add_argument("--batch-size", type=int, help="examples per batch (default: the "
                                                       "run's eval.batch_size)")
    args = parser.parse_args(list(argv))
    if not os.environ.get("JAXPET_TRACEBACK"):
        warnings.showwarning = _show_warning
    try:
        from jaxpet.predict import predict_file

        count = predict_file(args.path, args.input, args.output, args.batch_size)
    except USER_ERRORS as error:
        return user_error_status(error)
    if args.output:
        print(f"{count} predictions: {args.output}", file=sys.stderr)
    return 0


def init_model_main(argv: Sequence[str]) -> int:
    """`jaxpet init-model FAMILY OUT_DIR`: a random tiny checkpoint with a tokenizer."""
    from jaxpet import init_model

    return init_model.main(argv)


# `jaxpet --help`: every subcommand and what it is for.
SUBCOMMANDS = {
    "train": "train and evaluate a config: jaxpet train --config FILE.yaml [key=value ...] "
             "(as python train.py)",
    "predict": "label new text with a saved model or a run folder's final model: jaxpet "
               "predict RUN_OR_MODEL_DIR --input FILE [--output FILE]",
    "report": "regenerate a run folder's summary.md / summary.png and print its results table",
    "petal": "find label words for a task's patterns (PETAL) and write verbalizer.yaml",
    "config": "config show FILE.yaml [key=value ...]: the resolved config; config keys: every "
              "key with its type, default and meaning",
    "init-model": "write a random tiny checkpoint (bert, roberta, xlm-roberta, albert, t5) "
                  "with a tokenizer, for offline runs",
}


def main_help() -> str:
    """The text of `jaxpet --help`."""
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name.ljust(width)}  {meaning}" for name, meaning in SUBCOMMANDS.items())
    return (f"usage: jaxpet COMMAND [options]   (jaxpet COMMAND --help for its options)\n\n"
            f"commands:\n{rows}\n\n"
            "jaxpet --config FILE.yaml [key=value ...] without a command is jaxpet train.\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jaxpet` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(main_help())
        return 0 if argv else EXIT_USER_ERROR
    if argv[0] == "config":
        return config_main(argv[1:])
    if argv[0] == "init-model":
        return init_model_main(argv[1:])
    if argv[0] == "predict":
        return predict_main(argv[1:])
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if argv and argv[0] == "petal":
        return petal_main(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    return train_main(argv, prog="jaxpet")


if __name__ == "__main__":
    sys.exit(main())
