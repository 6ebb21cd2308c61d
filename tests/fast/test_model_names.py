"""Several served names and a chat template of one's own, as ``vllm serve`` users pass them."""

from __future__ import annotations

from pathlib import Path

import httpx

from server.endpoints.state import ServerState
from server.runtime.app import create_app
from server.text.tokenization import Tokenization
from tests.fast.fake_engine import FakeEngine
from tests.fast.tiny_model import TinyModel


async def test_every_served_name_is_listed_and_answers(tiny: TinyModel, fake: FakeEngine) -> None:
    state = ServerState(
        engine=fake, tokenization=tiny.tokenization, model_name="main", aliases=("alias",), model_path=str(tiny.path)
    )
    app = create_app(state)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        listed = (await http.get("/v1/models")).json()["data"]
        assert [card["id"] for card in listed] == ["main", "alias"]
        # vLLM's card: every name's root is the model it serves (vllm bench serve loads its tokenizer
        # from there), no parent (no adapters), the context window and one permission entry.
        for card in listed:
            assert (card["root"], card["parent"], card["max_model_len"]) == (str(tiny.path), None, fake.max_model_len)
            [permission] = card["permission"]
            assert permission["object"] == "model_permission" and permission["allow_sampling"] is True
        assert (await http.get("/v1/models/alias")).json()["id"] == "alias"
        body = {"model": "alias", "prompt": "hi", "max_tokens": 3}
        reply = await http.post("/v1/completions", json=body)
        assert reply.status_code == 200 and reply.json()["model"] == "alias"
        assert (await http.post("/v1/completions", json={**body, "model": "other"})).status_code == 404


def test_chat_template_flag_takes_a_file_or_the_template_itself(tiny: TinyModel, tmp_path: Path) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    inline = Tokenization(tiny.path, tiny.info.vocab_size, chat_template=template)
    stored = tmp_path / "template.jinja"
    stored.write_text(template)
    from_file = Tokenization(tiny.path, tiny.info.vocab_size, chat_template=str(stored))
    messages = [{"role": "user", "content": "hi"}]
    expected = inline.encode("[user] hi\n", add_special_tokens=False)
    assert inline.chat_prompt(messages) == expected == from_file.chat_prompt(messages)
    assert tiny.tokenization.chat_prompt(messages) != expected  # the tokenizer's own template differs
