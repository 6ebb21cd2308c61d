"""ise's ``Embedder`` over vLLM's pooling runner (``--runner pooling``): vLLM batches and computes.

The same ``AsyncLLM`` as the generating adapter, started with the pooling runner; each input goes
in as token ids (a ``TokensPrompt``) with ``PoolingParams(task="embed")``, and vLLM pools and
normalizes as it reads the model's sentence-transformers files. Lifetime, liveness and
statistics are the generating adapter's.

Import this module only when the vLLM engine is chosen: importing vLLM takes seconds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import numpy as np
from vllm import PoolingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError

from adapters.embedding.config import EmbeddingSpec
from adapters.embedding.engine import Vector
from adapters.engine import EngineDeadError
from adapters.model_info import ModelInfo
from adapters.vllm.engine import VLLMEngine

POOLING_FLAGS = ["--runner", "pooling"]


class VLLMEmbedder(VLLMEngine):
    def __init__(self, engine_args: AsyncEngineArgs, model: ModelInfo, spec: EmbeddingSpec) -> None:
        """``engine_args``: parsed with ``POOLING_FLAGS`` (``vllm_engine_args(..., [*argv, *POOLING_FLAGS])``)
        and its ``max_model_len`` set (the window is known before vLLM starts)."""
        super().__init__(engine_args, model)
        self._spec = spec

    @property
    def spec(self) -> EmbeddingSpec:
        return self._spec

    @property
    def max_model_len(self) -> int:
        """The window given to vLLM (readable before start: the server tells the engine's kind by its attributes)."""
        return int(self.engine_args.max_model_len)

    async def embed(self, inputs: Sequence[list[int]]) -> list[Vector]:
        llm = self._llm
        if llm is None or not self.is_alive:
            raise EngineDeadError("The vLLM engine is not running.")

        async def one(ids: list[int]) -> Vector:
            final = None
            params = PoolingParams(task="embed")
            async for output in llm.encode(TokensPrompt(prompt_token_ids=ids), params, f"embd-{uuid.uuid4().hex}"):
                final = output
            assert final is not None, "vLLM ended an embedding request without an output"
            vector: Vector = final.outputs.data.float().numpy().astype(np.float32)
            return vector

        try:
            return list(await asyncio.gather(*(one(ids) for ids in inputs)))
        except VLLMEngineDeadError as exc:
            raise EngineDeadError(f"The vLLM engine stopped: {exc}") from exc
