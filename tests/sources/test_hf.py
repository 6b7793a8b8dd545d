"""engine.sources.hf: tiny local GPT-2 folders load safely (eval, no cache, float32, eager attention), bad folders
are refused in one line, and the loaded LM takes double backward and torch.vmap over functional_call."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call

from engine.config.schema import ModelConfig
from engine.core.errors import UserError
from engine.sources.hf import build_hf_model, check_text_fits
from hf_fixtures import add_auto_map, save_tiny_classifier, save_tiny_lm, tiny_text


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("hf") / "lm", tiny_text(20_000))


@pytest.fixture(scope="module")
def lm(lm_folder: Path) -> torch.nn.Module:
    return build_hf_model(hf_cfg(lm_folder))


def hf_cfg(folder: Path, **keys: Any) -> ModelConfig:
    return ModelConfig(name="hf", path=str(folder), **keys)


def refused(cfg: ModelConfig, match: str) -> str:
    with pytest.raises(UserError, match=match) as err:
        build_hf_model(cfg)
    assert "\n" not in str(err.value)
    return str(err.value)


def block(vocab: int, n: int = 3, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def test_causal_lm_loads_in_eval_float32_without_cache(lm_folder: Path, lm: torch.nn.Module) -> None:
    from transformers import GPT2LMHeadModel

    assert type(lm) is GPT2LMHeadModel and not any(m.training for m in lm.modules())
    assert lm.config.use_cache is False and lm.config._attn_implementation == "eager"
    saved = load_file(lm_folder / "model.safetensors")
    assert all(torch.equal(p, saved[n]) for n, p in lm.named_parameters() if n in saved)
    assert all(p.dtype == torch.float32 for p in lm.parameters())
    ids = block(lm.config.vocab_size)
    with torch.no_grad():
        plain = lm(input_ids=ids, attention_mask=torch.ones_like(ids))
        labelled = lm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    assert plain.logits.shape == (3, 16, lm.config.vocab_size) and plain.past_key_values is None
    assert plain.loss is None and labelled.loss.dim() == 0 and torch.isfinite(labelled.loss)


def test_dtype_float32_by_default_and_from_kwargs(lm_folder: Path, tmp_path: Path) -> None:
    build_hf_model(hf_cfg(lm_folder)).to(torch.bfloat16).save_pretrained(tmp_path)
    assert load_file(tmp_path / "model.safetensors")["transformer.wte.weight"].dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in build_hf_model(hf_cfg(tmp_path)).parameters())
    kept = build_hf_model(hf_cfg(lm_folder, kwargs={"dtype": "bfloat16"}))
    assert all(p.dtype == torch.bfloat16 for p in kept.parameters())


def test_sequence_classification_loads(tmp_path: Path) -> None:
    from transformers import GPT2ForSequenceClassification

    model = build_hf_model(hf_cfg(save_tiny_classifier(tmp_path, tiny_text(5_000), num_labels=3),
                                  task="sequence_classification"))
    assert type(model) is GPT2ForSequenceClassification and not model.training and model.config.use_cache is False
    with torch.no_grad():
        assert model(input_ids=block(model.config.vocab_size)).logits.shape == (3, 3)


def test_task_without_head_refused(lm_folder: Path) -> None:
    line = refused(hf_cfg(lm_folder, task="image_classification"), "model.task=image_classification: the gpt2")
    assert "its tasks: causal_lm, sequence_classification" in line


def test_remote_code_refused_by_default(lm_folder: Path, tmp_path: Path) -> None:
    folder = add_auto_map(Path(shutil.copytree(lm_folder, tmp_path / "remote")))
    refused(hf_cfg(folder), r"needs its own modelling code \(config.json has auto_map\).*model.trust_remote_code=true")
    refused(hf_cfg(lm_folder, kwargs={"trust_remote_code": True, "weights_only": False}),
            "model.kwargs may not set trust_remote_code, weights_only")


def test_folders_without_a_model_refused(lm_folder: Path, tmp_path: Path) -> None:
    refused(hf_cfg(tmp_path / "nowhere"), "nowhere does not exist; give a folder saved with save_pretrained")
    refused(hf_cfg(lm_folder / "config.json"), "config.json is a file, not a folder saved with save_pretrained")
    refused(hf_cfg(tmp_path), "holds no config.json; give a folder saved with save_pretrained")
    shutil.copy(lm_folder / "config.json", tmp_path)
    refused(hf_cfg(tmp_path), r"holds no weights \(\*.safetensors or pytorch_model.bin\)")
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    refused(hf_cfg(tmp_path), "config.json cannot be read")
    with pytest.raises(UserError, match=r"model=hf needs model.path"):
        ModelConfig(name="hf")


def test_transformers_missing_named(lm_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    refused(hf_cfg(lm_folder), r"model=hf needs the transformers package: pip install 'landscape-engine\[hf\]'")


class Planted:
    """An object whose unpickling would create a file (a stand-in for code a pickle can run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickled_weights_load_only_as_tensors(lm_folder: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(lm_folder, tmp_path / "bin"))
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    model = build_hf_model(hf_cfg(folder))
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
    marker = tmp_path / "code-ran"
    torch.save({**weights, "planted": Planted(marker)}, folder / "pytorch_model.bin")
    refused(hf_cfg(folder), "pytorch_model.bin holds objects other than tensors, which are not unpickled")
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype")  # dtype=auto then reads the file once more, on the meta device, to find its dtype
    (folder / "config.json").write_text(json.dumps(config))
    refused(hf_cfg(folder, kwargs={"dtype": "auto"}), "pytorch_model.bin holds objects other than tensors")
    assert not marker.exists()


def hvp_pair(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """u.Hv and v.Hu of the LM loss for seeded u, v, and the size of u.Hu (for a relative tolerance)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(1)
    u, v = ([torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(2))
    hv = torch.autograd.grad(grads, params, v, retain_graph=True)
    hu = torch.autograd.grad(grads, params, u)
    dot = lambda a, b: sum((x * y).sum() for x, y in zip(a, b))  # noqa: E731
    return dot(u, hv), dot(v, hu), float(dot(u, hu).abs())


def test_double_backward_hvp_finite_and_symmetric(lm_folder: Path) -> None:
    model = build_hf_model(hf_cfg(lm_folder)).double()
    uhv, vhu, scale = hvp_pair(model, block(model.config.vocab_size, n=2, length=8))
    assert torch.isfinite(uhv) and torch.isfinite(vhu) and scale > 0
    assert abs(float(uhv - vhu)) <= 1e-4 * max(abs(float(uhv)), scale)


def test_sdpa_attention_has_no_double_backward_on_cpu(lm_folder: Path) -> None:
    """Why build_hf_model loads eager attention: sdpa's fused CPU kernel has no derivative of its backward."""
    model = build_hf_model(hf_cfg(lm_folder, kwargs={"attn_implementation": "sdpa"}))
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match=r"derivative for .*scaled_dot_product.* is not implemented"):
        hvp_pair(model, block(model.config.vocab_size))


def test_vmap_functional_call_matches_plain_calls(lm: torch.nn.Module) -> None:
    ids = block(lm.config.vocab_size)
    mask = torch.ones_like(ids)
    g = torch.Generator().manual_seed(2)
    stacked = {n: torch.stack([p.detach() + 0.05 * k * torch.randn(p.shape, generator=g) for k in range(3)])
               for n, p in lm.named_parameters()}

    def logits(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(lm, params, (), {"input_ids": ids, "attention_mask": mask}).logits

    with torch.no_grad():
        batched = torch.vmap(logits)(stacked)
        plain = torch.stack([logits({n: s[k] for n, s in stacked.items()}) for k in range(3)])
    assert batched.shape == (3, 3, 16, lm.config.vocab_size)
    assert not torch.allclose(plain[0], plain[2])
    torch.testing.assert_close(batched, plain, rtol=1e-5, atol=1e-5)


def test_check_text_fits(lm: torch.nn.Module) -> None:
    check_text_fits(lm, lm.config.vocab_size, 128)
    with pytest.raises(UserError, match=f"tokenizer has {lm.config.vocab_size + 1} tokens but the model's embedding"):
        check_text_fits(lm, lm.config.vocab_size + 1, 16)
    with pytest.raises(UserError, match=r"data.block_size=129 is longer than the model's 128 positions"):
        check_text_fits(lm, lm.config.vocab_size, 129)
