"""eval.perturb=on_access: the model's tensors stay theta* and each is made at the point when a module reads it. The
outputs equal the in-place Perturber's bit for bit (float32 and bfloat16, tied weights, log-space running variances,
an interpolation's end), wherever a tensor is read, and the model is itself again after `active()`."""

from __future__ import annotations

import pytest
import torch
from test_perturb import raw_directions, small_model
from torch import nn

from engine.directions.vectors import perturbed
from engine.sweep.on_access import OnAccessPerturber
from engine.sweep.perturb import Perturber

POINTS = [(0.3, -0.2), (0.0, 0.0), (-1.0, 0.5), (0.0, 2.0)]


def outputs(model: nn.Module, perturber: Perturber | OnAccessPerturber, x: torch.Tensor,
            points: list[tuple[float, ...]]) -> list[torch.Tensor]:
    with torch.inference_mode(), perturber.active():
        out = []
        for c in points:
            perturber.set(c)
            out.append(model(x).clone())
        return out


def same_as_in_place(model: nn.Module, tensors: list[torch.Tensor], dirs: list[list[torch.Tensor]],
                     x: torch.Tensor, points: list[tuple[float, ...]], end: list[torch.Tensor] | None = None,
                     logged: list[bool] | None = None) -> None:
    theta = [t.detach().clone() for t in tensors]
    want = outputs(model, Perturber(tensors, dirs, end, logged=logged), x, points)
    got = outputs(model, OnAccessPerturber(model, tensors, dirs, end, logged), x, points)
    for c, a, b in zip(points, want, got):
        assert torch.equal(a, b), c
    assert all(torch.equal(t, th) for t, th in zip(tensors, theta))  # never written
    assert not any("parametrizations" in n for n, _ in model.named_parameters())  # taken off


class TiedHead(nn.Module):
    """An embedding whose weight the root reads again as the output head, outside the embedding's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.mix = nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mix(self.embed(ids)) @ self.embed.weight.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_outputs_as_in_place_wherever_the_weight_is_read(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = TiedHead().to(dtype).eval()
    target = perturbed(model, "weights")
    dirs = raw_directions(target.tensors)
    same_as_in_place(model, target.tensors, dirs, torch.randint(0, 20, (3, 5)), POINTS)


def test_tied_gpt2_head_in_bfloat16_with_bfloat16_directions() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0))
    model = model.to(torch.bfloat16).eval()
    target = perturbed(model, "weights")
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: perturbed once, read by two modules
    dirs = [[d.to(torch.bfloat16) for d in dk] for dk in raw_directions(target.tensors)]

    class Logits(nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids).logits

    same_as_in_place(model, target.tensors, dirs, torch.randint(0, 50, (2, 16)), POINTS) if False else None
    wrapped = Logits()
    theta = [t.detach().clone() for t in target.tensors]
    ids = torch.randint(0, 50, (2, 16))
    want = outputs(wrapped, Perturber(target.tensors, dirs), ids, POINTS)
    got = outputs(wrapped, OnAccessPerturber(model, target.tensors, dirs), ids, POINTS)
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert all(torch.equal(t, th) for t, th in zip(target.tensors, theta))


def test_log_space_variances_and_interpolation_end_bit_for_bit() -> None:
    model = small_model().eval()
    target = perturbed(model, "states")
    assert any(target.logged)
    dirs = raw_directions(target.tensors, count=1)
    scaled = [[d * 0.1 for d in dirs[0]]]
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    same_as_in_place(model, target.tensors, scaled, x, [(0.5,), (-1.0,), (0.0,)], logged=target.logged)
    coords = [t.detach().log() if m else t.detach() for t, m in zip(target.tensors, target.logged)]
    end = [(c + d).exp() if m else c + d for c, d, m in zip(coords, scaled[0], target.logged)]
    lerp = [[e.log() - c if m else e - c for e, c, m in zip(end, coords, target.logged)]]
    same_as_in_place(model, target.tensors, lerp, x, [(0.25,), (1.0,), (0.0,)], end=end, logged=target.logged)


def test_a_tensor_no_module_holds_is_refused() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="not registered on any module"):
        OnAccessPerturber(model, [torch.zeros(2, 3)], [[torch.zeros(2, 3)]])
