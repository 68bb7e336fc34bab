"""A text2text run's records: the data files it reads, the (inputs, targets) strings it renders
and the fixed-length token arrays it encodes them to."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxpet.config import Text2TextConfig
from jaxpet.data.files import DataFileError
from jaxpet.scoring.seq2seq import pad_targets
from jaxpet.text2text import readers as t2t_readers
from jaxpet.text2text import tasks as t2t_tasks


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped), each with an "id" (default: its line
    number); errors name the file and line."""
    records = []
    for line_no, record in t2t_readers.jsonl_records(path):
        record.setdefault("id", str(line_no))
        records.append(record)
    return records


def data_path(section: Text2TextConfig, file_name: str) -> str:
    return os.path.join(section.data_dir, file_name) if section.data_dir else file_name


def check_data_files(section: Text2TextConfig) -> None:
    """Fails before the model loads (or hours of training pass) when a data file is missing;
    the message names the config keys to change."""
    for key in ("train_file", "eval_file"):
        file_name = getattr(section, key)
        if not file_name or section.reader == "hf_dataset":  # split names, read at load time
            continue
        path = data_path(section, file_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: no such data file (config keys text2text.{key}={file_name!r}, "
                f"text2text.data_dir={section.data_dir!r}; the config's header comment says "
                "where the data come from)")


def read_records(section: Text2TextConfig, file_name: str, limit: int = -1
                 ) -> list[dict[str, Any]]:
    """The records of one split through the configured reader (first `limit`; -1 = all)."""
    path = data_path(section, file_name)
    options = dict(section.reader_options)
    if section.reader == "translation":
        records = t2t_readers.read_translation(path, **options)
    elif section.reader == "cnn_dailymail":
        records = t2t_readers.read_cnn_dailymail(path)
    elif section.reader == "glue_tsv":
        records = t2t_readers.read_glue_tsv(path, options["task"])
    elif section.reader == "squad":
        records = t2t_readers.read_squad(path)
    elif section.reader == "hf_dataset":  # file_name is the dataset's split
        records = t2t_readers.read_hf_dataset(options["path"], file_name, options.get("name"))
    else:
        records = read_jsonl(path)
    if not records:
        raise DataFileError(path, "no records")
    return records if limit < 0 else records[:limit]


def format_config(section: Text2TextConfig) -> dict[str, Any]:
    """The jaxpet.text2text.tasks.format_records config of a section."""
    config = {"format": section.format, **dict(section.format_options)}
    if section.format == "template":
        config.update(inputs=section.template_inputs, targets=section.template_targets)
    return config


def render(section: Text2TextConfig, records: Sequence[Mapping[str, Any]], where: str = ""
           ) -> list[t2t_tasks.TextPair]:
    """(inputs, targets) pairs; errors about a record name `where` (the file) and its id."""
    return t2t_tasks.format_records(records, format_config(section), where)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids [N, max_length], mask, number of texts cut); every row ends with EOS (T5 style), a
    text longer than max_length keeps its first max_length - 1 tokens and the EOS."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_lists = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    cut = 0
    rows = []
    for tokens in token_lists:
        if not tokens or tokens[-1] != eos:
            tokens = [*tokens, eos]
        if len(tokens) > max_length:
            tokens = [*tokens[: max_length - 1], eos]
            cut += 1
        rows.append(tokens)
    ids_NxT, mask_NxT = pad_targets(rows, max_length, pad)
    return ids_NxT, mask_NxT, cut


def encode_pairs(tokenizer: Any, pairs: Sequence[t2t_tasks.TextPair], max_input_length: int,
                 max_target_length: int, where: str, with_targets: bool = True
                 ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """input_ids/attention_mask [N, S] (+ target_ids/target_mask [N, T]) and cut counts."""
    ids, mask, cut_inputs = tokenize(tokenizer, [p.inputs for p in pairs], max_input_length)
    arrays = {"input_ids": ids, "attention_mask": mask}
    cut = {"inputs": cut_inputs}
    if with_targets:
        missing = [p.guid for p in pairs if p.targets is None]
        if missing:
            raise ValueError(f"{where}: {len(missing)} example(s) have no target, e.g. id "
                             f"{missing[0]!r}")
        tids, tmask, cut_targets = tokenize(tokenizer, [p.targets for p in pairs],
                                            max_target_length)
        arrays.update(target_ids=tids, target_mask=tmask)
        cut["targets"] = cut_targets
    for kind, count in cut.items():
        if count:
            key = "max_seq_length" if kind == "inputs" else "max_target_length"
            warnings.warn(f"{where}: {count} of {len(pairs)} {kind} are longer than "
                          f"text2text.{key} and were cut", stacklevel=2)
    return arrays, cut


def read_eval_split(section: Text2TextConfig
                    ) -> tuple[list[dict[str, Any]], list[t2t_tasks.TextPair]]:
    """The evaluation records and their pairs (read before training, so that a bad evaluation
    file fails the run at its start rather than after training)."""
    records = read_records(section, section.eval_file, section.eval_examples)
    return records, render(section, records, section.eval_file)
