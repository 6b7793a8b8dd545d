"""Builders of tiny local Hugging Face folders (a byte-level BPE tokenizer and a 2-layer GPT-2) made offline in
about a second, for the tests of model=hf and data=text (`from hf_fixtures import ...`)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

WORDS = ("the", "loss", "landscape", "of", "a", "small", "network", "is", "swept", "along", "two", "random",
         "directions", "while", "hessian", "tells", "how", "sharp", "minimum", "and", "every", "tile", "grid",
         "written", "once", "curvature", "at", "point")


def tiny_text(n_chars: int, seed: int = 0) -> str:
    """About n_chars of seeded pseudo-English (words from a fixed list, sentences of 5 to 12 words)."""
    rng = random.Random(seed)
    sentences: list[str] = []
    length = 0
    while length < n_chars:
        sentence = " ".join(rng.choices(WORDS, k=rng.randint(5, 12))).capitalize() + "."
        sentences.append(sentence)
        length += len(sentence) + 1
    return " ".join(sentences)


def save_tiny_tokenizer(folder: Path, text: str, vocab: int = 300, max_length: int = 128) -> Path:
    """A byte-level BPE tokenizer trained on text (vocab entries at most), with <|endoftext|> as eos and pad, for
    sequences of max_length tokens, saved to folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([text], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        model_max_length=max_length)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return folder


def gpt2_config(tokenizer_folder: Path, layers: int = 2, width: int = 32, positions: int = 128,
                **extra: Any) -> Any:
    """A GPT2Config (2 heads) sized to the tokenizer saved in tokenizer_folder, its eos token as bos, eos and pad."""
    from transformers import AutoTokenizer, GPT2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
    eos = tokenizer.eos_token_id
    return GPT2Config(n_layer=layers, n_embd=width, n_head=2, n_positions=positions, vocab_size=len(tokenizer),
                      bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **extra)


def save_tiny_lm(folder: Path, text: str, layers: int = 2, width: int = 32, vocab: int = 300,
                 positions: int = 128, seed: int = 0) -> Path:
    """A seeded GPT-2 causal LM (layers x width) and its tokenizer trained on text, saved to folder (safetensors)."""
    from transformers import GPT2LMHeadModel

    save_tiny_tokenizer(folder, text, vocab, positions)
    torch.manual_seed(seed)
    GPT2LMHeadModel(gpt2_config(folder, layers, width, positions)).save_pretrained(folder)
    return folder


def save_tiny_classifier(folder: Path, text: str, num_labels: int = 3, layers: int = 2, width: int = 32,
                         vocab: int = 300, positions: int = 128, seed: int = 0,
                         task: str = "sequence_classification") -> Path:
    """A seeded GPT-2 with a num_labels head for task (sequence_classification, the one text task) and its
    tokenizer, saved to folder."""
    from transformers import GPT2ForSequenceClassification

    if task != "sequence_classification":
        raise ValueError(f"save_tiny_classifier builds sequence_classification only, not {task}")
    save_tiny_tokenizer(folder, text, vocab, positions)
    torch.manual_seed(seed)
    config = gpt2_config(folder, layers, width, positions, num_labels=num_labels)
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    return folder


def add_auto_map(folder: Path) -> Path:
    """Mark a saved folder as needing its own modelling code (an auto_map entry in config.json)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLM"}
    path.write_text(json.dumps(config))
    return folder
