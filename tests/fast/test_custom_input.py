"""A custom tool's text read out of its growing JSON arguments: whatever the model's tokens cut
(an escape, a surrogate pair, the closing quote), the text sent so far is always the start of the
whole call's text, so a stream's deltas join up to the whole answer's ``input``."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from server.endpoints.responses.custom_input import final_input, input_so_far


@given(st.text(), st.booleans(), st.sampled_from(["", " ", "\n  "]))
def test_every_prefix_decodes_to_a_start_of_the_text(text: str, ascii_only: bool, space: str) -> None:
    arguments = "{" + space + '"input":' + space + json.dumps(text, ensure_ascii=ascii_only) + space + "}"
    shown = ""
    for end in range(len(arguments) + 1):
        so_far = input_so_far(arguments[:end])
        if so_far is not None:
            assert text.startswith(so_far) and so_far.startswith(shown)
            shown = so_far
    assert final_input(arguments) == text == shown


def test_arguments_in_another_shape_are_read_whole_or_kept_as_written() -> None:
    assert input_so_far('{"path": "a", "input": "b"}') is None
    assert final_input('{"path": "a", "input": "b"}') == "b"
    assert final_input("*** Begin Patch") == "*** Begin Patch"
    assert final_input('{"input": "line one\nline two"}') == "line one\nline two"  # a raw newline, as models write
