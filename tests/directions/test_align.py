"""Weight matching (engine/directions/align.py) and the permutation specs it acts through (permutations.py).

- A randomly permuted copy computes the same function (within 1e-6) for an MLP, a ResNet-8 with BatchNorm (its
  statistics moved too), a torchvision ResNet-18 and VGG-11 and a tiny GPT-2 (residual stream, MLP units, head dims).
- Matching the permuted copy back to the model gives back the inverse permutation (so the composition is the
  identity) and the model's own state bit for bit; the line between the model and its permuted copy has a positive
  barrier before alignment and a zero one after (lerped states evaluated in float64).
- Architectures without a spec are refused in one line naming what is supported.

(The line of two digits MLPs before and after direction.align=weights, through a run: e2e/test_aligned_paths.py.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engine.core.errors import UserError
from engine.directions.align import align_state, match_weights
from engine.directions.permutations import permutation_spec, permute_state, random_perms
from engine.sources.models import MLP, CifarResNet


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


def _with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other.eval()


def _resnet8() -> nn.Module:
    torch.manual_seed(1)
    model = CifarResNet(8, 10, 1, 4, shortcut=True)
    for m in model.modules():  # statistics and affine parameters that differ per channel, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return model


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(2)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0,
                                      eos_token_id=0))


def _torchvision(arch: str) -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    return getattr(torchvision.models, arch)(num_classes=10)


CASES = {
    "mlp": (lambda: MLP(64, [32, 16], 10), lambda: torch.randn(16, 64)),
    "resnet8": (_resnet8, lambda: torch.randn(4, 1, 8, 8)),
    "gpt2": (_gpt2, lambda: torch.randint(0, 50, (2, 12))),
}


@pytest.fixture(scope="module", params=list(CASES))
def permuted(request):
    """A model in eval mode, its probe inputs, its spec, random permutations and the permuted copy's state."""
    build, probe = CASES[request.param]
    model = build().eval()
    spec = permutation_spec(model)
    perms = random_perms(spec, seed=7)
    return model, probe(), spec, perms, permute_state(model.state_dict(), spec, perms)


def test_a_permuted_copy_computes_the_same_function(permuted):
    model, x, _, perms, state = permuted
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms)
    assert any(not torch.equal(state[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(_logits(_with_state(model, state), x), _logits(model, x), rtol=0, atol=1e-6)


def test_matching_a_permuted_copy_gives_back_the_identity_and_the_model(permuted):
    model, _, _, perms, state = permuted
    found = match_weights(model, state)
    for random, back in zip(perms, found.perms):
        assert torch.equal(random[back], torch.arange(len(random)))  # permuted, then matched: the identity
    for name, t in model.state_dict().items():
        assert torch.equal(found.state[name], t), name
    itself = match_weights(model, model.state_dict())
    assert itself.rounds == 1 and itself.moved() == 0.0


def _barrier(model: nn.Module, x: torch.Tensor, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over t of L(t) - ((1 - t) L(0) + t L(1)) on the lerped states in float64, L the mean squared logit
    distance to the model's own logits (zero at both ends here, so the barrier is the line's highest point)."""
    model = copy.deepcopy(model).double()
    x = x.double() if x.is_floating_point() else x
    target = _logits(model, x)
    losses = []
    for t in torch.linspace(0, 1, 5, dtype=torch.float64):
        state = {k: (torch.lerp(v.double(), b[k].double(), t) if v.is_floating_point() else v) for k, v in a.items()}
        losses.append(float(((_logits(_with_state(model, state), x) - target) ** 2).mean()))
    ts = torch.linspace(0, 1, 5).tolist()
    return max(loss - ((1 - t) * losses[0] + t * losses[-1]) for t, loss in zip(ts, losses))


def test_alignment_takes_the_barrier_to_zero(permuted):
    model, x, _, _, state = permuted
    own = model.state_dict()
    assert _barrier(model, x, own, state) > 1e-3
    assert _barrier(model, x, own, align_state(model, state)) == 0.0


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_torchvision_permuted_copies_compute_the_same_function(arch):
    model = _torchvision(arch).eval()
    spec = permutation_spec(model)
    assert len(spec.sizes) == (12 if arch == "resnet18" else 10)  # resnet18: 4 streams, 8 in blocks; vgg11: 8 + 2
    state = permute_state(model.state_dict(), spec, random_perms(spec, seed=1))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(_with_state(model, state), x), _logits(model, x), rtol=0, atol=1e-5)


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], 1))


def test_unsupported_architectures_are_refused_in_one_line():
    for model, culprit in ((_Concat(), "cat"), (nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)), "grouped")):
        with pytest.raises(UserError) as err:
            permutation_spec(model)
        message = str(err.value)
        assert "\n" not in message and culprit in message and "supported: MLPs" in message
