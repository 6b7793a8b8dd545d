"""Text data (data=text): a .txt, .json, .jsonl or .parquet file tokenized once and cut into blocks of token ids for
a causal LM (the labels are the inputs, shifted by the loss), or, with data.label_field, one padded example per
record with its class label for a sequence classifier."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch

from engine.config.schema import DataConfig
from engine.core.errors import UserError
from engine.sources.splits import DataBundle, Split, seeded_split

INSTALL = "pip install 'landscape-engine[hf]'"
SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")
# files that hold a tokenizer's vocabulary (a folder with only config.json would load as an empty tokenizer)
VOCAB_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
               "sentencepiece.bpe.model")


def load_text_data(cfg: DataConfig, model_path: str | None) -> DataBundle:
    """cfg.path's documents joined by the tokenizer's eos token, tokenized once, cut into [N, cfg.block_size]
    blocks of input_ids (remainder dropped) and split by cfg.seed and cfg.test_fraction."""
    tokenizer = load_tokenizer(cfg.tokenizer, model_path)
    path = Path(cfg.path or "").expanduser()  # set: DataConfig checks it for text
    if cfg.label_field:
        return labelled_examples(cfg, tokenizer, path, cfg.label_field, model_path)
    documents = read_documents(path, cfg.text_field)
    ids = token_stream(tokenizer, documents)
    blocks = cut_blocks(ids, cfg.block_size, path)
    whole = Split({"input_ids": blocks, "attention_mask": torch.ones_like(blocks)})
    train, test = seeded_split(whole, cfg)
    return DataBundle(train, test, (), None, {"vocab_size": len(tokenizer)})


def labelled_examples(cfg: DataConfig, tokenizer: Any, path: Path, label_field: str,
                      model_path: str | None) -> DataBundle:
    """One example per record: its text tokenized alone, truncated and padded to cfg.block_size, with its label
    (integers as given; strings numbered in sorted order) under "labels"; split by cfg.seed and cfg.test_fraction."""
    if path.suffix.lower() == ".txt":
        raise UserError(f"data.label_field={label_field} needs records: give a .json, .jsonl or .parquet data.path, "
                        f"not {path.name}")
    texts = read_documents(path, cfg.text_field)
    labels = read_field(path, label_field, "data.label_field")
    if len(texts) < 2:
        raise UserError(f"data.path={path} holds {len(texts)} record(s); a train and a test split need at least 2")
    if tokenizer.pad_token_id is None:  # GPT-2-style tokenizers have none: pad as the model's config says
        pad = model_pad_id(model_path)
        tokenizer.pad_token = (tokenizer.convert_ids_to_tokens(pad) if pad is not None else
                               tokenizer.eos_token or tokenizer.unk_token)
    encoded = tokenizer(texts, truncation=True, max_length=cfg.block_size, padding="max_length",
                        return_tensors="pt", verbose=False)
    targets, names = label_ids(labels, path, label_field)
    whole = Split({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": targets})
    train, test = seeded_split(whole, cfg)
    return DataBundle(train, test, (), len(names) if names else int(targets.max()) + 1,
                      {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "label_names": names})


def model_pad_id(model_path: str | None) -> int | None:
    """pad_token_id of the config.json in model_path, if any (a sequence classifier finds each example's last
    token by it)."""
    config = Path(model_path).expanduser() / "config.json" if model_path else None
    if config is None or not config.is_file():
        return None
    try:
        pad = json.loads(config.read_text()).get("pad_token_id")
    except (OSError, json.JSONDecodeError):
        return None
    return pad if isinstance(pad, int) else None


def label_ids(labels: list[Any], path: Path, field: str) -> tuple[torch.Tensor, list[str]]:
    """Class ids of the labels: non-negative integers as they are, or strings numbered in sorted order (their
    names returned); one line for anything else."""
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in labels):
        return torch.tensor(labels, dtype=torch.int64), []
    if all(isinstance(v, str) for v in labels):
        names = sorted(set(labels))
        return torch.tensor([names.index(v) for v in labels], dtype=torch.int64), names
    strings = isinstance(labels[0], str)
    bad = next(v for v in labels
               if isinstance(v, str) != strings or not (strings or (isinstance(v, int) and v >= 0)))
    raise UserError(f"data.path={path}: the {field!r} labels must be all non-negative integers or all strings; "
                    f"found {bad!r}")


def load_tokenizer(tokenizer: str | None, model_path: str | None) -> Any:
    """The tokenizer saved in the folder data.tokenizer, else model.path; one line when neither holds one."""
    key, name = ("data.tokenizer", tokenizer) if tokenizer else ("model.path", model_path)
    if not name:
        raise UserError("data=text needs a tokenizer: set data.tokenizer=<folder saved with save_pretrained> or "
                        "model.path=<an hf model folder that holds its tokenizer>")
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise UserError(f"{key}={name} is not a folder; the tokenizer of data=text is read from a folder saved with "
                        "save_pretrained")
    if not any((folder / f).is_file() for f in VOCAB_FILES):
        raise UserError(f"{key}={name} holds no tokenizer (none of {', '.join(VOCAB_FILES)}); save one there with "
                        "tokenizer.save_pretrained or set data.tokenizer=<its folder>")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError(f"data=text needs the transformers package: {INSTALL}") from None
    try:
        loaded = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # anything transformers raises on a bad folder becomes one line
        lines = str(err).strip().splitlines()
        raise UserError(f"{key}={name}: the tokenizer could not be loaded ({type(err).__name__}: "
                        f"{lines[0] if lines else ''})") from None
    return loaded


def read_documents(path: Path, field: str) -> list[str]:
    """The file's documents: a .txt file whole, or the `field` of each record of a .json (a list of records or
    {"data": [...]}), .jsonl or .parquet file."""
    if path.suffix.lower() == ".txt" and path.is_file():
        return [read_utf8(path)]
    return texts_of(read_field(path, field), path, field)


def read_field(path: Path, field: str, key: str = "data.text_field") -> list[Any]:
    """The values of `field` (the setting `key`) in every record of a .json, .jsonl or .parquet file."""
    if not path.is_file():
        raise UserError(f"data.path={path} is not a file; give a {', '.join(SUFFIXES)} file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"data.path={path}: unknown extension {path.suffix!r}; data=text reads {', '.join(SUFFIXES)}")
    if suffix == ".parquet":
        return parquet_column(path, field, key)
    if suffix == ".jsonl":
        records = [parse_json(line, path, f"line {i}") for i, line in enumerate(read_utf8(path).splitlines(), 1)
                   if line.strip()]
    else:
        loaded = parse_json(read_utf8(path), path, "the file")
        records = loaded["data"] if isinstance(loaded, dict) and "data" in loaded else loaded
        if not isinstance(records, list):
            raise UserError(f"data.path={path} holds a JSON {type(records).__name__}; give a list of records or "
                            '{"data": [records]}')
    for i, record in enumerate(records):
        if not isinstance(record, dict) or field not in record:
            raise UserError(f"data.path={path}: record {i} has no {field!r} field ({key}={field})")
    return [record[field] for record in records]


def read_utf8(path: Path) -> str:
    """The file's text, or one line when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"data.path={path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def parse_json(text: str, path: Path, where: str) -> Any:
    """One JSON value, or one line naming where the file is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"data.path={path}: {where} is not JSON ({err.msg}, line {err.lineno})") from None


def parquet_column(path: Path, field: str, key: str) -> list[Any]:
    """The values of one column of a parquet file, read with pyarrow (which pandas needs for parquet too)."""
    try:  # imported by name: pyarrow is not a dependency and ships no type information
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise UserError(f"data.path={path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    names = pq.read_schema(path).names
    if field not in names:
        raise UserError(f"data.path={path} has no column {field!r} ({key}); its columns: {', '.join(names)}")
    return list(pq.read_table(path, columns=[field]).column(field).to_pylist())


def texts_of(values: list[Any], path: Path, field: str) -> list[str]:
    """The values as documents; one line at the first that is not a string."""
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise UserError(f"data.path={path}: record {i}'s {field!r} is {type(value).__name__}, not text")
    return values


def token_stream(tokenizer: Any, documents: list[str]) -> torch.Tensor:
    """The documents joined by the tokenizer's eos token (else its sep token, else a blank line), tokenized once
    without special tokens added around the whole: int64 [tokens]."""
    separator = tokenizer.eos_token or tokenizer.sep_token or "\n\n"
    encoded = tokenizer(separator.join(documents), add_special_tokens=False, verbose=False)
    return torch.tensor(encoded["input_ids"], dtype=torch.int64)


def cut_blocks(ids: torch.Tensor, block_size: int, path: Path) -> torch.Tensor:
    """The token stream as [N, block_size] blocks, the remainder dropped; at least 2 blocks (train and test)."""
    count = len(ids) // block_size
    if count < 2:
        raise UserError(f"data.path={path} gives {len(ids)} tokens, fewer than 2 blocks of data.block_size="
                        f"{block_size}; give more text or a smaller data.block_size")
    return ids[: count * block_size].view(count, block_size)
