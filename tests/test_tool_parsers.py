"""Tool-call parsers (envs.parsers): golden replies in the Hermes/Qwen and Llama-3 JSON formats,
malformed calls as error strings for the model, and the instructions/call formats they document."""

from __future__ import annotations

import json

import pytest

from envs.base import ToolCall
from envs.parsers import PARSERS, get_parser, to_call
from envs.tools import calculator_tool, python_tool

CALC = ToolCall("calculator", {"expression": "123 * 456"})


def test_hermes_reads_several_calls_with_text_around() -> None:
    reply = ('Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "123 * 456"}}\n'
             '</tool_call>\n<tool_call>{"name": "python", "arguments": {"code": "print(1)"}, "id": "c2"}</tool_call>'
             "\nDone.")
    calls, errors = get_parser("hermes").parse(reply)
    assert calls == [CALC, ToolCall("python", {"code": "print(1)"}, id="c2")] and errors == []


def test_hermes_plain_text_is_no_call_and_unclosed_tag_is_read_to_the_end() -> None:
    assert get_parser("hermes").parse("The answer is 56088. #### 56088") == ([], [])
    calls, errors = get_parser("hermes").parse('<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}')
    assert calls == [ToolCall("calculator", {"expression": "1+1"})] and errors == []


def test_hermes_malformed_calls_become_numbered_errors_and_good_ones_still_count() -> None:
    reply = ('<tool_call>{"name": "calculator", "arguments": {"expression" "1"}}</tool_call>'
             '<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}</tool_call>'
             '<tool_call>{"arguments": {}}</tool_call>'
             '<tool_call>{"name": "calculator", "arguments": [1, 2]}</tool_call>'
             "<tool_call>[1]</tool_call>"
             '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"5\\"}"}</tool_call>'
             '<tool_call>{"name": "calculator", "arguments": "not json"}</tool_call>')
    calls, errors = get_parser("hermes").parse(reply)
    assert calls == [ToolCall("calculator", {"expression": "2*3"}), ToolCall("calculator", {"expression": "5"})]
    assert errors == [
        "tool call 1: invalid JSON at line 1 column 51: Expecting ':' delimiter",
        'tool call 3: missing "name" (a non-empty string naming the tool)',
        'tool call 4 (calculator): "arguments" must be a JSON object, got an array',
        'tool call 5: expected a JSON object {"name": ..., "arguments": {...}}, got an array',
        'tool call 7 (calculator): "arguments" is a string that is not valid JSON: Expecting value',
    ]


def test_llama3_whole_reply_python_tag_and_semicolons() -> None:
    parser = get_parser("llama3")
    assert parser.parse('{"name": "calculator", "parameters": {"expression": "123 * 456"}}') == ([CALC], [])
    assert parser.parse('<|python_tag|>{"name": "calculator", "arguments": {"expression": "123 * 456"}}') == \
        ([CALC], [])
    calls, errors = parser.parse(' {"name": "a", "parameters": {}} ; {"name": "b", "parameters": {"x": 1}}\n')
    assert calls == [ToolCall("a", {}), ToolCall("b", {"x": 1})] and errors == []
    assert parser.parse("I think it is 56088.") == ([], [])  # text first: an answer, not a call


def test_llama3_malformed() -> None:
    parser = get_parser("llama3")
    assert parser.parse('{"name": "calculator", "parameters": {"expression": ') == \
        ([], ["tool call 1: invalid JSON at line 1 column 53: Expecting value"])
    calls, errors = parser.parse('{"name": "a", "parameters": {}} and then some text')
    assert calls == [ToolCall("a", {})]
    assert errors == ["tool call 2: expected ';' or the end of the reply after a call, found 'and then some text'"]
    assert parser.parse('{"parameters": {"x": 1}}') == ([], ['tool call 1: missing "name" (a non-empty string '
                                                              'naming the tool)'])


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_format_call_round_trips_and_instructions_name_every_tool(name: str) -> None:
    parser = get_parser(name)
    call = ToolCall("python", {"code": 'print("héllo")\n', "stdin": ""})
    assert parser.parse(parser.format_call(call)) == ([call], [])
    text = parser.format_instructions([calculator_tool(), python_tool()])
    for tool in (calculator_tool(), python_tool()):
        assert f'"name": "{tool.name}"' in text and tool.description in text
    assert parser.stop_strings == ()  # several calls per reply: the model ends its turn with EOS


def test_hermes_instructions_are_qwen_wording() -> None:
    text = get_parser("hermes").format_instructions([calculator_tool()])
    assert text.startswith("# Tools\n\nYou may call one or more functions to assist with the user query.")
    assert f"<tools>\n{json.dumps(calculator_tool().schema())}\n</tools>" in text
    assert text.endswith('<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def test_unknown_parser_and_bad_objects() -> None:
    with pytest.raises(ValueError, match="unknown tool-call parser 'qwen'; known: hermes, llama3, llama3_json"):
        get_parser("qwen")
    assert to_call({"name": ""}, 2) == 'tool call 2: missing "name" (a non-empty string naming the tool)'
    assert to_call("calculator", 1) == 'tool call 1: expected a JSON object {"name": ..., "arguments": {...}}, ' \
                                       "got a string"
    assert to_call({"name": "f"}, 1) == ToolCall("f", {})  # no arguments: the schema check decides
