"""learner.batch: shapes, mask placement, and padded == unpadded logprobs on a real HF model."""

import pytest
import torch

from learner.algo.logprobs import token_logprobs
from learner.batch import build_batch

PROMPTS = [[1, 2, 3], [4], [5, 6]]
RESPONSES = [[7, 8], [9, 10, 11], []]  # last row: an empty response
BEHAVIOUR = [[-0.1, -0.2], [-0.3, -0.4, -0.5], []]


def test_shapes_and_padding():
    b = build_batch(PROMPTS, RESPONSES, BEHAVIOUR, pad_id=0)
    assert b.input_ids.shape == b.attention_mask.shape == b.position_ids.shape == (3, 5)
    assert b.targets.shape == b.response_mask.shape == b.behaviour_logprobs.shape == (3, 4)
    assert b.input_ids.tolist() == [[1, 2, 3, 7, 8], [4, 9, 10, 11, 0], [5, 6, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 0, 0, 0]]
    assert torch.equal(b.targets, b.input_ids[:, 1:])


def test_mask_and_behaviour_positions():
    b = build_batch(PROMPTS, RESPONSES, BEHAVIOUR, pad_id=0)
    # Position t predicts input_ids[t+1]: the first response token sits at len(prompt)-1.
    assert b.response_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert b.targets[b.response_mask.bool()].tolist() == [7, 8, 9, 10, 11]
    assert torch.allclose(b.behaviour_logprobs, torch.tensor(
        [[0, 0, -0.1, -0.2], [-0.3, -0.4, -0.5, 0], [0, 0, 0, 0]]))
    got = b.gather_response(b.behaviour_logprobs)
    assert [[round(x, 6) for x in row] for row in got] == BEHAVIOUR


def test_all_empty_responses_and_bad_input():
    b = build_batch([[1], [2, 3]], [[], []], [[], []], pad_id=0)
    assert b.response_mask.sum() == 0 and b.gather_response(b.behaviour_logprobs) == [[], []]
    with pytest.raises(ValueError, match="behaviour logprobs"):
        build_batch([[1]], [[2, 3]], [[-1.0]], pad_id=0)
    with pytest.raises(ValueError, match="empty prompt"):
        build_batch([[]], [[2]], [[-1.0]], pad_id=0)


def test_padded_logprobs_equal_unpadded_on_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=128, num_hidden_layers=1, vocab_size=50)
    model = LlamaForCausalLM(cfg).eval()
    prompts = [[3, 4, 5, 6], [7], [8, 9], [10, 11, 12]]
    responses = [[13, 14], [15, 16, 17, 18, 19], [20], []]
    zeros = [[0.0] * len(r) for r in responses]
    b = build_batch(prompts, responses, zeros, pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                       position_ids=b.position_ids).logits[:, :-1]
        padded = b.gather_response(token_logprobs(logits, b.targets))
        for p, r, got in zip(prompts, responses, padded):
            ids = torch.tensor([p + r])
            lp = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:])[0]
            want = lp[len(p) - 1:].tolist()
            assert len(got) == len(want) == len(r)
            assert got == pytest.approx(want, abs=1e-5)


def test_packed_layout_places_samples_back_to_back():
    b = build_batch([[1, 2], [3]], [[4], [5, 6]], [[-0.5], [-1.0, -2.0]], pad_id=0, packed=True, row_tokens=6)
    assert b.packed and b.attention_mask is None
    assert b.input_ids.tolist() == [[1, 2, 4, 3, 5, 6]]
    assert b.position_ids.tolist() == [[0, 1, 2, 0, 1, 2]]
    assert b.offsets.tolist() == [0, 3] and b.rows.tolist() == [0, 0]
    assert b.response_mask.tolist() == [[0, 1, 0, 1, 1]]
    assert b.gather_response(b.behaviour_logprobs) == [[-0.5], [-1.0, -2.0]]
    # rows as long as the longest sample by default: first-fit decreasing
    b = build_batch([[1], [2], [3, 3]], [[4], [5], [6, 6]], [[0.0], [0.0], [0.0, 0.0]], pad_id=9, packed=True)
    assert b.input_ids.tolist() == [[3, 3, 6, 6], [1, 4, 2, 5]]
    assert b.rows.tolist() == [1, 1, 0] and b.offsets.tolist() == [0, 2, 0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_equal_padded_on_tiny_llama(attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128,
                      num_hidden_layers=2, vocab_size=50, attn_implementation=attn)
    model = LlamaForCausalLM(cfg).eval()
    prompts = [[3, 4, 5, 6], [7], [8, 9], [10, 11, 12], [1]]
    responses = [[13, 14], [15, 16, 17, 18, 19], [20], [], [2, 2, 2]]
    zeros = [[0.0] * len(r) for r in responses]
    out = {}
    for packed, row in ((False, None), (True, None), (True, 100)):
        b = build_batch(prompts, responses, zeros, pad_id=0, packed=packed, row_tokens=row)
        with torch.no_grad():
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                           position_ids=b.position_ids, use_cache=False).logits[:, :-1]
        out[packed, row] = b.gather_response(token_logprobs(logits, b.targets))
    assert [len(x) for x in out[True, None]] == [len(r) for r in responses]
    for layout in ((True, None), (True, 100)):
        for a, p in zip(out[False, None], out[layout]):
            assert p == pytest.approx(a, abs=1e-5)
