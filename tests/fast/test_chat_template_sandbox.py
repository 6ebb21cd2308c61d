"""Chat templates come with models from anywhere: they render in Jinja's sandbox.

A template that reaches for Python internals (the classic ``__subclasses__`` escape to
``os.system``) fails to render, and the request gets a 400 naming ``messages``; the server runs on.
"""

from __future__ import annotations

import pytest

from server.protocol.errors import APIError
from server.text.tokenization import Tokenization
from tests.fast.tiny_model import TinyModel

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}{% endfor %}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_a_template_cannot_reach_python_internals(tiny: TinyModel, template: str) -> None:
    tokenization = Tokenization(tiny.path, chat_template=template)
    with pytest.raises(APIError) as raised:
        tokenization.chat_prompt([{"role": "user", "content": "hi"}])
    assert raised.value.status == 400
    assert raised.value.param == "messages"
    assert "unsafe" in raised.value.message  # refused by the sandbox, not by an accident of the template
