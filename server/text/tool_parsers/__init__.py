"""Tool calls out of model text, whole or streamed, for each output format ise understands.

``TOOL_PARSERS`` maps vLLM's parser names (and ise's own ``ise_json``) to parsers;
``detect_tool_parser`` picks one from a chat template. The formats are described in
``formats.py``, how a stream stays equal to the whole output in ``format_stream.py``, and the prompt
and grammars of ``ise_json`` in ``prompt.py`` and ``schema.py``.
"""

from __future__ import annotations

from server.text.tool_parsers.base import (
    DeltaMessage,
    ParsedMessage,
    ToolCall,
    ToolCallDelta,
    ToolParser,
    ToolStream,
    merge_deltas,
)
from server.text.tool_parsers.formats import (
    HermesToolParser,
    IseJsonToolParser,
    Llama3JsonToolParser,
    MistralToolParser,
    parse_forced,
)
from server.text.tool_parsers.prompt import history_messages, render_tools_prompt
from server.text.tool_parsers.schema import tools_json_schema

# The parsers --tool-call-parser names (vLLM's names, and ise's own ise_json): the one list of them.
TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
    "ise_json": IseJsonToolParser,
}


def detect_tool_parser(chat_template: str | None) -> str:
    """The name of the parser for a chat template's call format, from the markers it writes.

    ``"ise_json"`` when the template shows no known format (or there is no template): ise
    then describes tools in the prompt itself.
    """
    template = chat_template or ""
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or "ipython" in template:
        return "llama3_json"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    return "ise_json"


__all__ = [
    "TOOL_PARSERS",
    "DeltaMessage",
    "ParsedMessage",
    "ToolCall",
    "ToolCallDelta",
    "ToolParser",
    "ToolStream",
    "detect_tool_parser",
    "history_messages",
    "merge_deltas",
    "parse_forced",
    "render_tools_prompt",
    "tools_json_schema",
]
