"""KV cache blocks: who holds which, which are free, and which hold a reusable prefix.

The cache is cut into fixed-size blocks; a request holds a list of them (its block table), so its
context need not be contiguous and memory is taken as it grows, not reserved for the longest
possible request. A block whose every position is computed is registered under the tokens that
fill it and everything before them, so a later request with the same prefix (a shared system
prompt, the earlier turns of a chat) takes the block instead of recomputing it. Blocks nobody
holds stay cached until the space is needed, evicted least recently used first.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

from adapters.cpu.sequence import Sequence

# What identifies a full block's contents: the id of the block chain before it (ROOT for the
# first block) and its own tokens. Comparing the tokens themselves, not a hash of them, means two
# different prefixes can never share a block.
CacheKey = tuple[int, tuple[int, ...]]
ROOT = 0


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    key: CacheKey | None = None
    chain_id: int = ROOT  # unique per registration; the key of the next block refers to it


@dataclass
class PrefixCacheStats:
    queried_tokens: int = 0
    hit_tokens: int = 0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.prefix_caching = prefix_caching
        self._blocks = [Block(i) for i in range(num_blocks)]
        # Blocks nobody holds, oldest release first; those with a key are still findable.
        self._free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self._blocks)
        self._cached: dict[CacheKey, Block] = {}
        self._chain_ids = itertools.count(ROOT + 1)
        self.stats = PrefixCacheStats()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, seq: Sequence) -> list[Block]:
        """The longest run of cached blocks that starts the sequence's tokens.

        The last token is always left to compute: the step that computes it yields the logits
        the next token is sampled from.
        """
        if not self.prefix_caching:
            return []
        tokens = seq.all_token_ids
        hits: list[Block] = []
        parent = ROOT
        usable = (len(tokens) - 1) // self.block_size * self.block_size
        for start in range(0, usable, self.block_size):
            block = self._cached.get((parent, tuple(tokens[start : start + self.block_size])))
            if block is None:
                break
            hits.append(block)
            parent = block.chain_id
        self.stats.queried_tokens += len(tokens)
        self.stats.hit_tokens += len(hits) * self.block_size
        return hits

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, cached: list[Block] | None = None) -> bool:
        """Give the sequence blocks for ``num_new_tokens`` more tokens (after any cached ones).

        Returns False, changing nothing, when too few blocks are free.
        """
        cached = cached or []
        have = len(seq.block_table) + len(cached)
        computed = seq.num_computed_tokens + len(cached) * self.block_size
        need = self.blocks_for(computed + num_new_tokens) - have
        # Cached blocks nobody holds sit in the free list: taking them uses up free space too.
        reclaimed = sum(1 for b in cached if b.ref_count == 0)
        if need + reclaimed > len(self._free):
            return False
        for block in cached:
            if block.ref_count == 0:
                del self._free[block.block_id]
            block.ref_count += 1
            seq.block_table.append(block.block_id)
            seq.chain_ids.append(block.chain_id)
        seq.num_computed_tokens = computed
        for _ in range(need):
            _, block = self._free.popitem(last=False)
            if block.key is not None:  # evicted: its old contents are about to be overwritten
                del self._cached[block.key]
                block.key = None
            block.ref_count = 1
            seq.block_table.append(block.block_id)
        return True

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Make the sequence's newly completed blocks findable by later requests."""
        full = seq.num_computed_tokens // self.block_size
        if not self.prefix_caching or full == len(seq.chain_ids):
            return
        tokens = seq.all_token_ids
        for index in range(len(seq.chain_ids), full):
            parent = seq.chain_ids[-1] if seq.chain_ids else ROOT
            start = index * self.block_size
            key = (parent, tuple(tokens[start : start + self.block_size]))
            existing = self._cached.get(key)
            if existing is not None:
                # Another request computed the same block first; chain on from its copy.
                seq.chain_ids.append(existing.chain_id)
                continue
            block = self._blocks[seq.block_table[index]]
            block.key, block.chain_id = key, next(self._chain_ids)
            self._cached[key] = block
            seq.chain_ids.append(block.chain_id)

    def free(self, seq: Sequence) -> None:
        """Release the sequence's blocks; cached ones stay findable until evicted.

        The last blocks go to the free list first, so they are evicted first: a prefix is more
        likely to be shared than the tail that follows it.
        """
        for block_id in reversed(seq.block_table):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = block
        seq.block_table.clear()
        seq.chain_ids.clear()
        seq.num_computed_tokens = 0
