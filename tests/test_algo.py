"""learner.algo.logprobs: log-probs and entropies from logits against plain references."""

import math

import pytest
import torch

from learner.algo.logprobs import entropy_from_logits, token_logprobs


def test_token_logprobs_matches_log_softmax_and_bf16_path():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    got = token_logprobs(logits.float(), targets)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    bf = logits.to(torch.bfloat16)
    ref_bf = torch.log_softmax(bf.double(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(bf, targets).double(), ref_bf, atol=1e-5)


def test_entropy_from_logits():
    assert torch.allclose(entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)))
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits).item() == pytest.approx(expected, abs=1e-6)
