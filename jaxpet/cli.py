"""Command line: `jaxpet --config FILE.yaml [key=value ...]` runs an experiment (as train.py does);
`jaxpet report OUT_DIR` regenerates summary.md/summary.png of a run and prints its table;
`jaxpet petal --config FILE [key=value ...]` finds label words (jaxpet.petal)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

# Errors a user causes (config, paths, data, labels, over-long inputs): printed as one message
# with exit status 2 instead of a traceback. Set JAXPET_TRACEBACK=1 to see the traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, NotImplementedError)
EXIT_USER_ERROR = 2


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error)


def train_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train and evaluate PET / sequence-classifier models.",
        epilog="Overrides are dotted config keys, e.g. pet.max_steps=100 model.name=roberta-base")
    parser.add_argument("--config", required=True, help="experiment YAML file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides applied after the file")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # One line per warning: the message says what happened; the source line does not help.
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def requested_method(path: str | None, overrides: Sequence[str]) -> str | None:
    """The `method` a config file and its overrides ask for (text2text has its own schema)."""
    method = None
    if path and os.path.isfile(path):
        import yaml

        with open(path) as f:
            loaded = yaml.safe_load(f)
        if isinstance(loaded, dict):
            method = loaded.get("method")
    for item in overrides:
        if item.startswith("method="):
            method = item.split("=", 1)[1]
    return method


def train_main(argv: Sequence[str], prog: str = "train.py") -> int:
    """Loads the config, runs it, prints the results table; returns the exit status."""
    args = train_parser(prog).parse_args(list(argv))
    if not os.environ.get("JAXPET_TRACEBACK"):
        warnings.showwarning = _show_warning
    try:
        if requested_method(args.config, args.overrides) == "text2text":
            from jaxpet.text2text import run as run_text2text
            from jaxpet.text2text_config import load_text2text_config

            run_text2text(load_text2text_config(args.config, list(args.overrides)))
            return 0
        from jaxpet.config import load_config

        config = load_config(args.config, args.overrides)
        from jaxpet.sharding import maybe_initialize_distributed

        maybe_initialize_distributed(config.distributed)
        from jaxpet.pet import run

        run(config)
    except USER_ERRORS as error:
        if os.environ.get("JAXPET_TRACEBACK"):
            raise
        print(f"error: {_message(error)}\n(set JAXPET_TRACEBACK=1 to see the traceback)",
              file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def report_main(argv: Sequence[str]) -> int:
    """`jaxpet report OUT_DIR`: regenerates summary.md and summary.png, prints the table."""
    from jaxpet.report import main as report

    return report(argv)


def petal_main(argv: Sequence[str]) -> int:
    """`jaxpet petal --config FILE [key=value ...]`: finds label words (jaxpet.petal), writes
    verbalizer.yaml and summary.md, prints the table."""
    parser = argparse.ArgumentParser(
        prog="jaxpet petal", description="Find label words for a task's patterns (PETAL).",
        epilog="Overrides are dotted config keys, e.g. petal.words_per_label=3")
    parser.add_argument("--config", required=True, help="experiment YAML file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides applied after the file")
    args = parser.parse_args(list(argv))
    try:
        from jaxpet import petal
        from jaxpet.config import load_config

        config = load_config(args.config, args.overrides)
        result = petal.search(config)
        path = petal.write_outputs(result, petal.output_folder(config))
    except USER_ERRORS as error:
        if os.environ.get("JAXPET_TRACEBACK"):
            raise
        print(f"error: {_message(error)}\n(set JAXPET_TRACEBACK=1 to see the traceback)",
              file=sys.stderr)
        return EXIT_USER_ERROR
    print(petal.summary_markdown(result))
    print(f"verbalizer: {path}  (train with task.verbalizer={path})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jaxpet` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if argv and argv[0] == "petal":
        return petal_main(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    return train_main(argv, prog="jaxpet")


if __name__ == "__main__":
    sys.exit(main())
