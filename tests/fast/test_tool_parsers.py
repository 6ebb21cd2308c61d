"""Tool-call parsers: each format's whole-output answer, and the same answer from a stream however
the output is split (every split in two, every single character, random splits of the corpus and
of perturbed corpus texts); call ids present once per call; arguments always valid JSON; the
generic format's grammars (jsonschema and xgrammar) and prompt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jsonschema
import pytest
import xgrammar
from hypothesis import given, settings
from hypothesis import strategies as st
from xgrammar.testing import _is_grammar_accept_string

from server.text.tool_parsers import (
    TOOL_PARSERS,
    ParsedMessage,
    ToolParser,
    detect_tool_parser,
    history_messages,
    merge_deltas,
    parse_forced,
    render_tools_prompt,
    tools_json_schema,
)
from server.text.tool_parsers.formats import ForcedJsonToolParser

PARSERS: dict[str, ToolParser] = {
    "hermes": TOOL_PARSERS["hermes"](),
    "llama3_json": TOOL_PARSERS["llama3_json"](),
    "mistral": TOOL_PARSERS["mistral"](),
    "ise_json": TOOL_PARSERS["ise_json"](),
    "json_required": ForcedJsonToolParser(),
    "json_named": ForcedJsonToolParser("get_weather"),
}

# Arguments that stress the scanner: nesting, escapes, unicode, and markup inside strings.
HARD_ARGS = (
    '{"q": {"a": [1, -2.5e-3, {"b": "c"}], "s": "say \\"hi\\" \\\\ done"}, '
    '"u": "é \\u00e9 \\ud83d\\ude00 😀", "t": "}</tool_call>]};[TOOL_CALLS]", "n": null, "ok": true}'
)
CITY = '{"city": "Paris"}'

Expected = tuple[str | None, list[tuple[str, str]]]
CORPUS: list[tuple[str, str, Expected]] = [
    # hermes
    ("hermes", "Hello there!\nHow are you?", ("Hello there!\nHow are you?", [])),
    (
        "hermes",
        f'<tool_call>\n{{"name": "get_weather", "arguments": {CITY}}}\n</tool_call>',
        (None, [("get_weather", CITY)]),
    ),
    (
        "hermes",
        f'<tool_call>\n{{"name": "a", "arguments": {CITY}}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {"x": [1, 2]}}\n</tool_call>\n',
        (None, [("a", CITY), ("b", '{"x": [1, 2]}')]),
    ),
    (
        "hermes",
        f'Let me check.\n\n<tool_call>\n{{"name": "get_weather", "arguments": {CITY}}}\n</tool_call>',
        ("Let me check.", [("get_weather", CITY)]),
    ),
    ("hermes", f'<tool_call>{{"name": "f", "arguments": {HARD_ARGS}}}</tool_call>', (None, [("f", HARD_ARGS)])),
    ("hermes", '<tool_call>{"name": "ping", "arguments": {}}</tool_call>', (None, [("ping", "{}")])),
    ("hermes", '<tool_call>{"name":"f","arguments":{"x":1}}</tool_call>\nDone.', ("Done.", [("f", '{"x":1}')])),
    ("hermes", "I use <tool and <tool_call without JSON", ("I use <tool and <tool_call without JSON", [])),
    ("hermes", "a <tool_call>not json</tool_call> b", ("a <tool_call>not json</tool_call> b", [])),
    # Arguments before the name: held until the name, content if something else comes, dropped if
    # the output ends first (a cut call).
    (
        "hermes",
        f'<tool_call>{{"arguments": {HARD_ARGS}, "name": "f"}}</tool_call>',
        (None, [("f", HARD_ARGS)]),
    ),
    (
        "hermes",
        '<tool_call>{"arguments": {"a": 1}, "nam": "f"}</tool_call> <tool_call>{"parameters": {"a": }',
        ('<tool_call>{"arguments": {"a": 1}, "nam": "f"}</tool_call> <tool_call>{"parameters": {"a": }', []),
    ),
    ("hermes", '<tool_call>{"arguments": {"a": [1', (None, [])),
    # A call whose arguments break JSON: they end where they were last valid; the rest is content.
    (
        "hermes",
        '<tool_call>\n{"name": "f", "arguments": {"a": 1, "b": }}\n</tool_call>',
        (', "b": }}\n</tool_call>', [("f", '{"a": 1}')]),
    ),
    # The output ends inside a call: its arguments are closed.
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": ["x", "ab', (None, [("f", '{"a": ["x", "ab"]}')])),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"n": 12', (None, [("f", '{"n": 12}')])),
    # llama3_json
    ("llama3_json", "The weather is nice.", ("The weather is nice.", [])),
    (
        "llama3_json",
        f'<|python_tag|>{{"name": "get_weather", "parameters": {CITY}}}',
        (None, [("get_weather", CITY)]),
    ),
    (
        "llama3_json",
        '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {"y": [true, false, null]}}',
        (None, [("a", '{"x": 1}'), ("b", '{"y": [true, false, null]}')]),
    ),
    ("llama3_json", '{"type": "function", "name": "f", "parameters": {}}', (None, [("f", "{}")])),
    ("llama3_json", f'{{"name": "f", "parameters": {HARD_ARGS}}}', (None, [("f", HARD_ARGS)])),
    ("llama3_json", 'Here: {"name": "f", "parameters": {}}', ('Here: {"name": "f", "parameters": {}}', [])),
    ("llama3_json", '{"name": "f", "parameters": [1, 2]}', ('{"name": "f", "parameters": [1, 2]}', [])),
    (
        "llama3_json",
        '{"parameters": {"x": 1}, "name": "a"};{"name": "b", "parameters": {}}',
        (None, [("a", '{"x": 1}'), ("b", "{}")]),
    ),
    ("llama3_json", '{"foo": 1}', ('{"foo": 1}', [])),
    # mistral
    ("mistral", "Just an answer.", ("Just an answer.", [])),
    (
        "mistral",
        f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {CITY}}}]',
        (None, [("get_weather", CITY)]),
    ),
    (
        "mistral",
        f'Sure. [TOOL_CALLS] [{{"name": "a", "arguments": {CITY}}}, {{"name": "b", "arguments": {HARD_ARGS}}}]',
        ("Sure.", [("a", CITY), ("b", HARD_ARGS)]),
    ),
    ("mistral", f"[TOOL_CALLS]get_weather[ARGS]{CITY}", (None, [("get_weather", CITY)])),
    (
        "mistral",
        '[TOOL_CALLS]a[ARGS]{}[TOOL_CALLS]b[ARGS]{"x": "[ARGS]"}',
        (None, [("a", "{}"), ("b", '{"x": "[ARGS]"}')]),
    ),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"parameters": {"b": 2}, "name": "b"}]',
        (None, [("a", "{}"), ("b", '{"b": 2}')]),
    ),
    ("mistral", "[TOOL_CALL] not a tag [TOOL ok", ("[TOOL_CALL] not a tag [TOOL ok", [])),
    ("mistral", "[TOOL_CALLS] oops, no call", ("[TOOL_CALLS] oops, no call", [])),
    # ise_json
    ("ise_json", '{"response": "Hello!"}', ("Hello!", [])),
    (
        "ise_json",
        '{"response": "Line\\nTab\\t quote\\" slash\\\\ \\u00e9\\ud83d\\ude00 \\/ é"}',
        ('Line\nTab\t quote" slash\\ é😀 / é', []),
    ),
    ("ise_json", '{"response": "lone \\ud83d half"}', ("lone \ufffd half", [])),
    (
        "ise_json",
        f'{{"tool_calls": [{{"name": "get_weather", "arguments": {CITY}}}]}}',
        (None, [("get_weather", CITY)]),
    ),
    (
        "ise_json",
        f'\n{{ "tool_calls" : [ {{"name": "a", "arguments": {HARD_ARGS}}},\n'
        '{"name": "ping", "arguments": {}} ] }\n',
        (None, [("a", HARD_ARGS), ("ping", "{}")]),
    ),
    (
        "ise_json",
        '{"tool_calls": [{"arguments": {"x": 1}, "name": "a"}, {"name": "b", "arguments": {}}]}',
        (None, [("a", '{"x": 1}'), ("b", "{}")]),
    ),
    (
        "ise_json",
        '{"tool_calls": [{"name": "a", "arguments": {}}, {"arguments": {}, "name": 5}]}',
        ('}, {"arguments": {}, "name": 5}]}', [("a", "{}")]),
    ),
    ("ise_json", "Plain text, format ignored.", ("Plain text, format ignored.", [])),
    ("ise_json", '{"answer": 42}', ('{"answer": 42}', [])),
    ("ise_json", ' \n{"response": ""}\n', (None, [])),
    ("ise_json", '{"tool_calls": []}', ('{"tool_calls": []}', [])),
    ("ise_json", '{"response": "a"} trailing', ("atrailing", [])),
    ("ise_json", '{"response": "bad \\q escape"}', ('bad \\q escape"}', [])),
    # The output ends (max_tokens) inside call syntax: the cut call is dropped, never content;
    # the one the issue found, as SmolLM2 wrote it under the generic format's grammar, first.
    (
        "ise_json",
        '{"tool_calls": [\n    {\n      "name": "llm_time",\n      "arguments": {}\n    },\n    {\n'
        '      "name": "llm_time",\n      "arguments": {}\n    },\n    {\n      "name": "l',
        (None, [("llm_time", "{}"), ("llm_time", "{}")]),
    ),
    ("ise_json", '{"response": "Caf\\u00', ("Caf", [])),
    ("ise_json", '{"response": "smile \\ud83d', ("smile ", [])),
    ("hermes", "Let me check.\n<tool_ca", ("Let me check.", [])),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1, "b', (None, [("f", '{"a": 1}')])),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": tr', (None, [("f", "{}")])),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": -', (None, [("f", "{}")])),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": "x\\', (None, [("f", '{"a": "x"}')])),
    ("llama3_json", '{"name": "a", "parameters": {"x": 1}}; {"na', (None, [("a", '{"x": 1}')])),
    ("mistral", 'Sure. [TOOL_CALLS][{"name": "a", "arguments": {}}, {"name', ("Sure.", [("a", "{}")])),
    ("mistral", "[TOOL_CALLS] get_wea", (None, [])),
    # json (forced)
    (
        "json_required",
        f'[{{"name": "get_weather", "parameters": {CITY}}}]',
        (None, [("get_weather", CITY)]),
    ),
    (
        "json_required",
        f'[{{"name": "a", "parameters": {HARD_ARGS}}}, {{"name": "b", "parameters": {{}}}}]',
        (None, [("a", HARD_ARGS), ("b", "{}")]),
    ),
    ("json_required", '[{"parameters": {}, "name": "ping"}]', (None, [("ping", "{}")])),
    ("json_named", CITY, (None, [("get_weather", CITY)])),
    ("json_named", f"  {HARD_ARGS} ", (None, [("get_weather", HARD_ARGS)])),
    ("json_required", '[{"name": "a", "parameters": {}}, {"na', (None, [("a", "{}")])),
    ("json_named", '{"city": "Par', (None, [("get_weather", '{"city": "Par"}')])),
]
CORPUS_IDS = [f"{i}-{name}" for i, (name, _, _) in enumerate(CORPUS)]


def streamed(parser: ToolParser, pieces: Sequence[str]) -> ParsedMessage:
    """Stream ``pieces`` and merge the deltas, checking the fragments' ids, names and ``called`` on the way."""
    stream = parser.stream()
    deltas = [stream.push(piece) for piece in pieces]
    deltas.append(stream.finish())
    seen: set[int] = set()
    for delta in deltas:
        for fragment in delta.tool_calls:
            first = fragment.index not in seen
            assert (fragment.id is not None) == first and (fragment.name is not None) == first, fragment
            assert fragment.index == len(seen) - (not first), "calls are numbered in order"
            seen.add(fragment.index)
    assert stream.called == bool(seen)
    message = merge_deltas(deltas)
    ids = [call.id for call in message.tool_calls]
    assert all(i.startswith("call_") and len(i) == 29 and i[5:].isalnum() for i in ids)
    assert len(set(ids)) == len(ids)
    return message


def shape(message: ParsedMessage) -> Expected:
    """A message without its random ids."""
    return message.content, [(call.name, call.arguments) for call in message.tool_calls]


def assert_valid_arguments(message: ParsedMessage) -> None:
    for call in message.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)


@pytest.mark.parametrize(("name", "text", "expected"), CORPUS, ids=CORPUS_IDS)
def test_whole_output(name: str, text: str, expected: Expected) -> None:
    message = PARSERS[name].parse(text)
    assert shape(message) == expected
    assert_valid_arguments(message)


@pytest.mark.parametrize(("name", "text", "expected"), CORPUS, ids=CORPUS_IDS)
def test_every_split_streams_the_whole_output(name: str, text: str, expected: Expected) -> None:
    parser = PARSERS[name]
    assert shape(streamed(parser, list(text))) == expected
    for cut in range(len(text) + 1):
        assert shape(streamed(parser, [text[:cut], text[cut:]])) == expected, cut


@pytest.mark.parametrize(("name", "text", "expected"), CORPUS, ids=CORPUS_IDS)
def test_an_output_cut_anywhere_leaks_no_call_syntax(name: str, text: str, expected: Expected) -> None:
    """``max_tokens`` may end an output at any character: what the cut output says is a beginning
    of what the whole says. Its content is a prefix of the whole's (trailing whitespace aside), so
    no call syntax reaches it; its calls are the whole's, the last possibly cut short (arguments
    written up to the cut, closed so they parse); streamed as it is parsed whole."""
    parser = PARSERS[name]
    whole_content, whole_calls = expected
    for cut in range(len(text) + 1):
        message = parser.parse(text[:cut])
        assert shape(streamed(parser, list(text[:cut]))) == shape(message), cut
        assert_valid_arguments(message)
        content = (message.content or "").rstrip(" \t\n\r")
        assert (whole_content or "").startswith(content), (cut, content)
        calls = [(call.name, call.arguments) for call in message.tool_calls]
        assert len(calls) <= len(whole_calls), cut
        if calls:
            assert calls[:-1] == whole_calls[: len(calls) - 1], cut
            (last_name, last_arguments), (whole_name, whole_arguments) = calls[-1], whole_calls[len(calls) - 1]
            assert last_name == whole_name and whole_arguments.startswith(last_arguments.rstrip('"]}')), cut


def test_arguments_are_the_models_text_sliced_exactly() -> None:
    """The rule both paths share: no re-serialisation, so spacing and escapes survive."""
    message = PARSERS["hermes"].parse(f'<tool_call>{{"name": "f", "arguments": {HARD_ARGS}}}</tool_call>')
    assert message.tool_calls[0].arguments == HARD_ARGS
    assert json.loads(HARD_ARGS)["t"] == "}</tool_call>]};[TOOL_CALLS]"


def test_text_that_only_looks_like_a_tag_is_released() -> None:
    stream = PARSERS["hermes"].stream()
    assert stream.push("Hi <tool").content == "Hi"  # the space could precede a tag
    assert stream.push("x>").content == " <toolx>"
    assert stream.finish().content == ""
    assert not stream.called


def test_arguments_stream_before_the_call_ends() -> None:
    stream = PARSERS["hermes"].stream()
    first = stream.push('<tool_call>{"name": "f", "arguments": {"text": "Hello wor')
    assert stream.called
    (fragment,) = first.tool_calls
    assert (fragment.index, fragment.name, fragment.arguments) == (0, "f", '{"text": "Hello wor')
    assert stream.push('ld"}}</tool_call>').tool_calls[0].arguments == 'ld"}'


def test_response_string_streams_decoded() -> None:
    stream = PARSERS["ise_json"].stream()
    assert stream.push('{"response": "caf\\u00').content == "caf"
    assert stream.push("e9 \\ud83d").content == "é "
    assert stream.push('\\ude00"}').content == "😀"
    assert stream.finish() == stream.finish()


@pytest.mark.parametrize("name", ["hermes", "llama3_json", "mistral", "ise_json", "json_required"])
def test_parse_forced_and_registry_agree(name: str) -> None:
    texts = [text for parser, text, _ in CORPUS if parser == name]
    for text in texts:
        assert shape(PARSERS[name].parse(text)) == shape(type(PARSERS[name])().parse(text))
    assert shape(parse_forced(CITY, "get_weather")) == (None, [("get_weather", CITY)])


def random_split(text: str, data: st.DataObject) -> list[str]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_splits_of_the_corpus(data: st.DataObject) -> None:
    name, text, expected = data.draw(st.sampled_from(CORPUS))
    assert shape(streamed(PARSERS[name], random_split(text, data))) == expected


# Characters and fragments that move the machines between states.
NOISE_CHARS = '"\\{}[]:,; \nx1u<é😀\ud83d'
NOISE_MARKUP = ("\\u", "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", '"name": "g", ')
NOISE = st.sampled_from([*NOISE_CHARS, *NOISE_MARKUP, '"arguments": {'])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_perturbed_outputs_stream_like_the_whole(data: st.DataObject) -> None:
    name, text, _ = data.draw(st.sampled_from(CORPUS))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 3))
        text = text[:at] + data.draw(st.one_of(st.just(""), NOISE)) + text[at + cut :]
    parser = PARSERS[name]
    whole = parser.parse(text)
    assert_valid_arguments(whole)
    assert shape(streamed(parser, random_split(text, data))) == shape(whole)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
TEMPLATES = [
    ("hermes", '<tool_call>\n{{"name": "f", "arguments": {}}}\n</tool_call>'),
    ("hermes", '<tool_call>\n{{"arguments": {}, "name": "f"}}\n</tool_call>'),
    ("llama3_json", '<|python_tag|>{{"name": "f", "parameters": {}}}'),
    ("mistral", '[TOOL_CALLS][{{"name": "f", "arguments": {}}}]'),
    ("ise_json", '{{"tool_calls": [{{"name": "f", "arguments": {}}}]}}'),
    ("json_required", '[{{"name": "f", "parameters": {}}}]'),
]


@settings(max_examples=80, deadline=None)
@given(st.data(), st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=5), st.booleans(), st.booleans())
def test_any_arguments_object_round_trips(
    data: st.DataObject, arguments: dict[str, Any], ascii_only: bool, compact: bool
) -> None:
    text = json.dumps(arguments, ensure_ascii=ascii_only, separators=(",", ":") if compact else None)
    name, template = data.draw(st.sampled_from(TEMPLATES))
    output = template.format(text)
    whole = PARSERS[name].parse(output)
    assert shape(whole) == (None, [("f", text)])
    assert json.loads(whole.tool_calls[0].arguments) == arguments
    assert shape(streamed(PARSERS[name], random_split(output, data))) == shape(whole)


@settings(max_examples=150, deadline=None)
@given(st.data(), st.text(), st.booleans())
def test_any_response_string_is_decoded(data: st.DataObject, response: str, ascii_only: bool) -> None:
    output = json.dumps({"response": response}, ensure_ascii=ascii_only)
    assert shape(PARSERS["ise_json"].parse(output)) == (response or None, [])
    assert shape(streamed(PARSERS["ise_json"], random_split(output, data))) == (response or None, [])


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% for m in messages %}<tool_call>{{ m }}</tool_call>{% endfor %}", "hermes"),
        ("<|start_header_id|>ipython<|end_header_id|>", "llama3_json"),
        ("{{ '<|python_tag|>' }}", "llama3_json"),
        ("[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", "mistral"),
        ("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}", "ise_json"),
        (None, "ise_json"),
    ],
)
def test_detect_tool_parser(template: str | None, expected: str) -> None:
    assert detect_tool_parser(template) == expected


WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city today.",
        "parameters": WEATHER_PARAMETERS,
    },
}
PING = {"type": "function", "function": {"name": "ping"}}
TOOLS = [WEATHER, PING]
NAMED = {"type": "function", "function": {"name": "get_weather"}}

WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
PING_CALL = {"name": "ping", "arguments": {}}
SCHEMA_CASES: list[tuple[Any, bool, list[Any], list[Any]]] = [
    (
        "auto",
        False,
        [{"tool_calls": [WEATHER_CALL]}, {"tool_calls": [PING_CALL]}, {"response": "Hi"}],
        [
            {"tool_calls": [WEATHER_CALL, PING_CALL]},
            {"tool_calls": []},
            {"tool_calls": [{"name": "other", "arguments": {}}]},
            {"tool_calls": [{"name": "get_weather", "arguments": {}}]},
            {"tool_calls": [{"name": "ping"}]},
            {"response": 1},
            {"response": "Hi", "extra": 1},
            {},
            [WEATHER_CALL],
        ],
    ),
    ("auto", True, [{"tool_calls": [WEATHER_CALL, PING_CALL, PING_CALL]}], [{"tool_calls": []}]),
    (
        "required",
        False,
        [[{"name": "ping", "parameters": {}}], [{"name": "get_weather", "parameters": {"city": "Oslo"}}]],
        [[], [{"name": "ping", "parameters": {}}] * 2, [{"name": "ping", "arguments": {}}], {"response": "x"}],
    ),
    ("required", True, [[{"name": "ping", "parameters": {}}] * 2], [[]]),
    (NAMED, False, [{"city": "Oslo"}], [{}, {"city": 3}, [{"city": "Oslo"}]]),
]


@pytest.mark.parametrize(("choice", "parallel", "valid", "invalid"), SCHEMA_CASES)
def test_tools_json_schema(choice: Any, parallel: bool, valid: list[Any], invalid: list[Any]) -> None:
    schema = tools_json_schema(TOOLS, choice, parallel)
    jsonschema.Draft202012Validator.check_schema(schema)
    grammar = xgrammar.Grammar.from_json_schema(json.dumps(schema))
    for example in valid:
        jsonschema.validate(example, schema)
        assert _is_grammar_accept_string(grammar, json.dumps(example)), example
    for example in invalid:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(example, schema)
        assert not _is_grammar_accept_string(grammar, json.dumps(example)), example


@pytest.mark.parametrize(
    ("choice", "parser"), [("auto", "ise_json"), ("required", "json_required"), (NAMED, "json_named")]
)
def test_what_the_grammar_allows_is_parsed_as_calls(choice: Any, parser: str) -> None:
    """Outputs of each grammar, as a model writes them (name before arguments), are read as calls."""
    schema = tools_json_schema(TOOLS, choice, True)
    grammar = xgrammar.Grammar.from_json_schema(json.dumps(schema))
    output = {
        "auto": json.dumps({"tool_calls": [WEATHER_CALL, PING_CALL]}),
        "required": json.dumps([{"name": "get_weather", "parameters": {"city": "Paris"}}]),
    }.get(choice if isinstance(choice, str) else "", CITY)
    assert _is_grammar_accept_string(grammar, output)
    calls = PARSERS[parser].parse(output).tool_calls
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}


def test_the_grammar_puts_the_name_first() -> None:
    """xgrammar writes properties in schema order: the name comes first, and arguments stream."""
    grammar = xgrammar.Grammar.from_json_schema(json.dumps(tools_json_schema(TOOLS, "auto", True)))
    assert not _is_grammar_accept_string(grammar, '{"tool_calls": [{"arguments": {}, "name": "ping"}]}')


def test_tools_json_schema_refusals() -> None:
    with pytest.raises(ValueError, match="none"):
        tools_json_schema(TOOLS, "none", True)
    with pytest.raises(ValueError, match="missing"):
        tools_json_schema(TOOLS, {"type": "function", "function": {"name": "missing"}}, True)
    assert tools_json_schema(TOOLS, {"type": "function", "function": {"name": "ping"}}, True) == {
        "type": "object",
        "properties": {},
    }


def test_render_tools_prompt() -> None:
    auto = render_tools_prompt(TOOLS, "auto")
    for needle in ["get_weather", "The weather in a city today.", json.dumps(WEATHER_PARAMETERS)]:
        assert needle in auto
    assert "Function: ping" in auto and '{"type": "object", "properties": {}}' in auto
    assert '{"tool_calls": [{"name": "<function name>", "arguments": {' in auto
    assert '{"response": "<your answer>"}' in auto
    assert '"parameters": {' in render_tools_prompt(TOOLS, "required")
    assert "Call the function get_weather" in render_tools_prompt(TOOLS, NAMED)
    assert "Do not call" in render_tools_prompt(TOOLS, "none")


def test_history_messages() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and a ping?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": CITY}},
                {"id": "call_2", "type": "function", "function": {"name": "ping", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "pong"}]},
        {"role": "assistant", "content": "Sunny; pong."},
    ]
    out = history_messages(messages)
    assert out[:2] == messages[:2] and out[-1] == messages[-1]
    assert out[2]["role"] == "assistant"
    assert json.loads(out[2]["content"]) == {"tool_calls": [WEATHER_CALL, PING_CALL]}
    assert PARSERS["ise_json"].parse(out[2]["content"]).tool_calls[1].name == "ping"
    assert out[3] == {
        "role": "user",
        "content": "Result of get_weather (call call_1): Sunny\n\nResult of ping (call call_2): pong",
    }
    assert len(out) == 5
