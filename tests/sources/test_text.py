"""engine.sources.text: .txt, .json, .jsonl and .parquet files become blocks of token ids that concatenate back to
the tokenized documents, split by seed; each bad input is refused in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.config.schema import DataConfig
from engine.core.errors import UserError
from engine.sources.text import cut_blocks, load_text_data, read_documents, token_stream
from hf_fixtures import save_tiny_tokenizer, tiny_text

DOCS = [tiny_text(400 + 150 * i, seed=i) for i in range(5)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_tokenizer(tmp_path_factory.mktemp("text") / "tok", tiny_text(20_000))


def text_cfg(path: Path, tokenizer: Path | None, **keys: Any) -> DataConfig:
    return DataConfig(name="text", path=str(path), tokenizer=None if tokenizer is None else str(tokenizer),
                      **{"block_size": 16, "test_fraction": 0.25, **keys})


def write(folder: Path, kind: str, docs: list[str], field: str = "text") -> Path:
    """The documents in one file of the kind: txt (one document), json, json-data ({"data": [...]}), jsonl, parquet."""
    records = [{field: d, "id": i} for i, d in enumerate(docs)]
    path = folder / f"docs.{kind.split('-')[0]}"
    if kind == "txt":
        path.write_text(docs[0], encoding="utf-8")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    elif kind.startswith("json"):
        path.write_text(json.dumps({"data": records} if kind == "json-data" else records), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({field: docs, "id": list(range(len(docs)))}), path)
    return path


def rows(*splits: Any) -> list[tuple[int, ...]]:
    return sorted(tuple(r) for s in splits for r in s.x["input_ids"].tolist())


def refused(cfg: DataConfig, match: str, model_path: str | None = None) -> None:
    with pytest.raises(UserError, match=match) as err:
        load_text_data(cfg, model_path)
    assert "\n" not in str(err.value)


KINDS = ["txt", "json", "json-data", "jsonl",
         "parquet"]  # pyarrow comes with the [hf] extra


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_concatenate_back_to_the_tokenized_documents(kind: str, tok: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok)
    path = write(tmp_path, kind, DOCS)
    docs = DOCS[:1] if kind == "txt" else DOCS
    joined = "<|endoftext|>".join(docs)
    assert read_documents(path, "text") == docs
    stream = tokenizer(joined, add_special_tokens=False)["input_ids"]
    blocks = cut_blocks(token_stream(tokenizer, docs), 16, path)
    assert blocks.dtype == torch.int64 and blocks.shape == (len(stream) // 16, 16)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert joined.startswith(tokenizer.decode(blocks.flatten()))
    assert len(joined) - len(tokenizer.decode(blocks.flatten())) < 16 * 8  # only the remainder is dropped
    if kind != "txt":
        assert blocks.flatten().tolist().count(tokenizer.eos_token_id) == len(DOCS) - 1
    bundle = load_text_data(text_cfg(path, tok), None)
    for split in (bundle.train, bundle.test):
        assert split.y is None and set(split.x) == {"input_ids", "attention_mask"}
        assert split.x["attention_mask"].dtype == torch.int64 and bool((split.x["attention_mask"] == 1).all())
    assert rows(bundle.train, bundle.test) == sorted(tuple(r) for r in blocks.tolist())
    assert bundle.input_shape == () and bundle.num_classes is None
    assert bundle.extra == {"vocab_size": len(tokenizer)}


def test_seeded_split_disjoint_and_reproducible(tok: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "jsonl", DOCS)
    first, again = (load_text_data(text_cfg(path, tok), None) for _ in range(2))
    other = load_text_data(text_cfg(path, tok, seed=1), None)
    train, test = set(rows(first.train)), set(rows(first.test))
    assert len(train) == len(first.train) and len(test) == len(first.test)  # the blocks are distinct
    assert not train & test and len(first.test) == round(0.25 * (len(first.train) + len(first.test)))
    assert torch.equal(first.train.x["input_ids"], again.train.x["input_ids"])
    assert torch.equal(first.test.x["input_ids"], again.test.x["input_ids"])
    assert set(rows(other.test)) != test


def test_tokenizer_from_model_path(tok: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "txt", DOCS)
    from_model = load_text_data(text_cfg(path, None), str(tok))
    from_data = load_text_data(text_cfg(path, tok), str(tmp_path / "elsewhere"))
    assert torch.equal(from_model.train.x["input_ids"], from_data.train.x["input_ids"])


@pytest.mark.parametrize(("content", "match"), [
    ('{"text": "a"}\n{"body": "b"}\n', r"docs.jsonl: record 1 has no 'text' field \(data.text_field=text\)"),
    ('{"text": "a"}\n{"text": 5}\n', r"docs.jsonl: record 1's 'text' is int, not text"),
    ('{"text": "a"}\n{"text": \n', r"docs.jsonl: line 2 is not JSON \(Expecting value, line 1\)"),
    ('["a", "b"]\n', r"docs.jsonl: record 0 has no 'text' field"),
])
def test_bad_records_refused(content: str, match: str, tok: Path, tmp_path: Path) -> None:
    (tmp_path / "docs.jsonl").write_text(content)
    refused(text_cfg(tmp_path / "docs.jsonl", tok), match)


def test_bad_files_refused(tok: Path, tmp_path: Path) -> None:
    refused(text_cfg(tmp_path / "none.txt", tok), r"data.path=.*none.txt is not a file; give a .txt, .json")
    (tmp_path / "docs.csv").write_text("text\na\n")
    refused(text_cfg(tmp_path / "docs.csv", tok), r"unknown extension '.csv'; data=text reads .txt, .json, .jsonl")
    (tmp_path / "docs.json").write_text('{"rows": []}')
    refused(text_cfg(tmp_path / "docs.json", tok), r"holds a JSON dict; give a list of records or \{\"data\"")
    (tmp_path / "docs.txt").write_bytes(b"caf\xe9 au lait")
    refused(text_cfg(tmp_path / "docs.txt", tok), r"docs.txt is not UTF-8 text \(invalid continuation byte")
    path = write(tmp_path, "txt", DOCS)
    refused(text_cfg(path, tok, block_size=2000), r"gives \d+ tokens, fewer than 2 blocks of data.block_size=2000")


def test_two_blocks_at_least(tok: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path = write(tmp_path, "txt", DOCS)
    tokens = len(AutoTokenizer.from_pretrained(tok)(DOCS[0])["input_ids"])
    refused(text_cfg(path, tok, block_size=tokens // 2 + 1), f"gives {tokens} tokens, fewer than 2 blocks")
    bundle = load_text_data(text_cfg(path, tok, block_size=tokens // 2, test_fraction=0.5), None)
    assert len(bundle.train) == len(bundle.test) == 1


def test_tokenizer_missing_or_empty_refused(tok: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "txt", DOCS)
    refused(text_cfg(path, None), r"data=text needs a tokenizer: set data.tokenizer=.* or model.path=")
    refused(text_cfg(path, tmp_path / "nothing"), r"data.tokenizer=.*nothing is not a folder; the tokenizer")
    refused(text_cfg(path, None), r"model.path=.*docs.txt is not a folder", model_path=str(path))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    refused(text_cfg(path, None), r"model.path=.*model holds no tokenizer \(none of tokenizer.json",
            model_path=str(tmp_path / "model"))
    (tmp_path / "model" / "tokenizer.json").write_text("{broken")
    refused(text_cfg(path, None), r"model.path=.*model: the tokenizer could not be loaded \(",
            model_path=str(tmp_path / "model"))
    monkeypatch.setitem(sys.modules, "transformers", None)
    refused(text_cfg(path, tok), r"data=text needs the transformers package: pip install 'landscape-engine\[hf\]'")


def test_parquet_without_the_column_refused(tok: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "parquet", DOCS, field="body")
    refused(text_cfg(path, tok), r"docs.parquet has no column 'text' \(data.text_field\); its columns: body, id")


def test_parquet_without_pyarrow_named(tok: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "docs.parquet").write_bytes(b"PAR1")
    refused(text_cfg(tmp_path / "docs.parquet", tok), r"reading .parquet needs pyarrow \(pip install pyarrow\)")


def labelled(folder: Path, labels: list[Any], kind: str = "jsonl") -> Path:
    """Records {"text", "label"}: short documents of different lengths (some longer than a block)."""
    texts = [tiny_text(20 + 13 * i, seed=i) for i in range(len(labels))]
    path = folder / f"reviews.{kind}"
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts, "label": labels}), path)
    else:
        path.write_text("\n".join(json.dumps({"text": t, "label": v}) for t, v in zip(texts, labels, strict=True)))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_labelled_records_become_one_padded_example_each(kind: str, tok: Path, tmp_path: Path) -> None:
    """data.label_field: each record tokenized alone, truncated or padded to the block, its attention mask 1 over its
    own tokens only, string labels numbered in sorted order; every record in exactly one split."""
    from transformers import AutoTokenizer

    names = ["pos", "neg", "mixed"]
    labels = [names[i % 3] for i in range(12)]
    path = labelled(tmp_path, labels, kind)
    data = load_text_data(text_cfg(path, tok, label_field="label"), None)
    assert data.num_classes == 3 and data.extra["label_names"] == sorted(names)
    tokenizer = AutoTokenizer.from_pretrained(tok)
    expected = {}
    for i, label in enumerate(labels):
        ids = tokenizer(tiny_text(20 + 13 * i, seed=i))["input_ids"][:16]
        expected[tuple(ids)] = sorted(names).index(label)
    seen = {}
    for split in (data.train, data.test):
        for ids, mask, label in zip(split.x["input_ids"], split.x["attention_mask"], split.x["labels"], strict=True):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any() and (ids[n:] == data.extra["pad_token_id"]).all()
            seen[tuple(ids[:n].tolist())] = int(label)
    assert seen == expected and len(data.test.x["labels"]) == 3


def test_integer_labels_and_bad_labels(tok: Path, tmp_path: Path) -> None:
    data = load_text_data(text_cfg(labelled(tmp_path, [0, 4, 1, 2]), tok, label_field="label"), None)
    assert data.num_classes == 5 and data.extra["label_names"] == []
    refused(text_cfg(labelled(tmp_path, [0, "a", 1, 2]), tok, label_field="label"),
            r"reviews.jsonl: the 'label' labels must be all non-negative integers or all strings; found 'a'")
    refused(text_cfg(labelled(tmp_path, [0, 1]), tok, label_field="stars"),
            r"record 0 has no 'stars' field \(data.label_field=stars\)")
    refused(text_cfg(write(tmp_path, "txt", DOCS), tok, label_field="label"),
            r"data.label_field=label needs records: give a .json, .jsonl or .parquet data.path, not docs.txt")
