"""Token-in/token-out rendering (envs.render): the pieces an episode appends (prompt, generated
tokens, turn close, observation) equal the chat template's rendering of the whole conversation,
on the tiny model's saved tokenizer and on other template shapes (SmolLM2's default system
message, a Qwen-style template that takes ``tools=``, one without a tool role, one that breaks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from cli.model.tiny import build_char_tokenizer
from envs.base import ToolCall
from envs.parsers import get_parser
from envs.render import (
    RenderError,
    observation_messages,
    render_observation,
    render_prompt,
    template_uses_tools,
    turn_close,
    with_tool_instructions,
)
from envs.tools import calculator_tool

TOOLS = [calculator_tool()]
PROMPT = [{"role": "user", "content": "What is 123 * 456?"}]
CALL = get_parser("hermes").format_call(ToolCall("calculator", {"expression": "123 * 456"}))

SMOLLM2_TEMPLATE = (  # models/smollm2-135m/chat_template.jinja
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The shape of Qwen2.5's template: tools= into the system turn, tool results as <tool_response> in a user turn.
QWEN_STYLE_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}{{ 'You are Qwen.' }}{% endif %}{{ '\\n\\n# Tools\\n<tools>' }}"
    "{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}{{ '\\n</tools><|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% elif not (tools and m.role == 'system') %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

NO_TOOL_ROLE_TEMPLATE = (
    "{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Conversation roles must be system, user or assistant') }}{% endif %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(template: str | None = None) -> Any:
    tok = build_char_tokenizer()
    if template is not None:
        tok.chat_template = template
    return tok


def _full(tok: Any, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> list[int]:
    return list(tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=False))


def _episode(tok: Any, eos: bool) -> tuple[list[int], list[dict[str, Any]]]:
    """Two turns built by appending, and the same conversation as messages."""
    end = [tok.convert_tokens_to_ids("<|im_end|>")] if eos else []
    ids = render_prompt(tok, PROMPT, TOOLS, "hermes")
    first = tok.encode(CALL, add_special_tokens=False) + end
    observation = [{"role": "tool", "name": "calculator", "content": "56088"}]
    ids += first + turn_close(tok, first) + render_observation(tok, observation)
    second = tok.encode("123 * 456 = 56088. #### 56088", add_special_tokens=False) + end
    ids += second + turn_close(tok, second)
    messages = PROMPT + [{"role": "assistant", "content": CALL}, *observation,
                         {"role": "assistant", "content": "123 * 456 = 56088. #### 56088"}]
    return ids, messages


@pytest.mark.parametrize("eos", [True, False], ids=["stopped-on-eos", "stopped-on-stop-string"])
def test_appended_episode_equals_a_full_render_on_the_tiny_model(tiny_model_dir: Path, eos: bool) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert not template_uses_tools(tok)  # ChatML without tools: instructions go into the system prompt
    ids, messages = _episode(tok, eos)
    assert ids == _full(tok, with_tool_instructions(messages, TOOLS, "hermes"))
    assert tok.decode(turn_close(tok, [5, tok.eos_token_id])) == "\n"
    assert tok.decode(turn_close(tok, [5, 6])) == "<|im_end|>\n"
    assert tok.decode(render_observation(tok, [{"role": "tool", "name": "calculator", "content": "56088"}])) == \
        "<|im_start|>tool\n56088<|im_end|>\n<|im_start|>assistant\n"


def test_smollm2_template_keeps_its_prefixes_and_our_system_prompt_replaces_its_default() -> None:
    tok = _tokenizer(SMOLLM2_TEMPLATE)
    ids, messages = _episode(tok, eos=True)
    assert ids == _full(tok, with_tool_instructions(messages, TOOLS, "hermes"))
    text = tok.decode(render_prompt(tok, PROMPT, TOOLS, "hermes"))
    assert text.startswith("<|im_start|>system\n# Tools\n") and "SmolLM" not in text
    assert "SmolLM" in tok.decode(render_prompt(tok, PROMPT, [], "hermes"))  # no tools: the row as it is


def test_system_prompt_fallback_merges_with_the_rows_system_message() -> None:
    tok = _tokenizer()
    text = tok.decode(render_prompt(tok, [{"role": "system", "content": "Be brief."}] + PROMPT, TOOLS, "llama3"))
    assert text.startswith("<|im_start|>system\nBe brief.\n\nGiven the following functions")
    assert '"parameters": dictionary of argument name' in text and text.endswith("<|im_start|>assistant\n")


def test_template_with_tools_gets_tools_and_renders_tool_results_its_way() -> None:
    tok = _tokenizer(QWEN_STYLE_TEMPLATE)
    assert template_uses_tools(tok)
    text = tok.decode(render_prompt(tok, PROMPT, TOOLS, "hermes"))
    assert '\n\n# Tools\n<tools>\n{"type": "function", "function": {"name": "calculator"' in text
    assert "You may call one or more functions" not in text  # the template's own wording, not ours
    ids, messages = _episode(tok, eos=True)
    assert ids == _full(tok, messages, [t.schema() for t in TOOLS])
    obs = render_observation(tok, [{"role": "tool", "name": "calculator", "content": "1"},
                                   {"role": "tool", "name": "calculator", "content": "2"}])
    assert tok.decode(obs) == ("<|im_start|>user\n<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n"
                               "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_template_without_tool_role_gets_tool_results_as_one_user_message() -> None:
    tok = _tokenizer(NO_TOOL_ROLE_TEMPLATE)
    messages = [{"role": "tool", "name": "calculator", "content": "1"}, {"role": "tool", "name": "python",
                                                                          "content": "2"}]
    assert observation_messages(tok, messages) == [
        {"role": "user", "content": "Tool result (calculator): 1\n\nTool result (python): 2"}]
    assert tok.decode(render_observation(tok, messages)) == (
        "<|im_start|>user\nTool result (calculator): 1\n\nTool result (python): 2<|im_end|>\n<|im_start|>assistant\n")
    chatml = _tokenizer()
    assert observation_messages(chatml, messages) == messages  # ChatML renders any role
    chatml.chat_template = NO_TOOL_ROLE_TEMPLATE  # what is known of a template is recomputed when it changes
    assert observation_messages(chatml, messages) == observation_messages(tok, messages) != messages


def test_templates_that_rewrite_earlier_turns_are_refused() -> None:
    last_differs = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                    "{% if loop.first and messages | length > 2 %} (long chat){% endif %}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(RenderError, match="not a token prefix"):
        render_observation(_tokenizer(last_differs), [{"role": "user", "content": "go on"}])
    prompt_differs = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n<think>{% endif %}")
    with pytest.raises(RenderError, match="generation prompt \\+ reply tokens"):
        turn_close(_tokenizer(prompt_differs), [1])
    with pytest.raises(ValueError, match="at least one message"):
        render_observation(_tokenizer(), [])
