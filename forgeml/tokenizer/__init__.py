"""Tokenizer stage: byte-level BPE training, special tokens, chat template, token-shard packing.

Sits between data curation (Parquet datasets) and training (memory-mapped token shards).
"""

from forgeml.tokenizer.chat import CHAT_TEMPLATE, SPECIAL_TOKENS, render_chat
from forgeml.tokenizer.pack import TokenShards, pack_token_shards, token_dtype
from forgeml.tokenizer.train import load_tokenizer, special_token_ids, train_bpe_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TokenShards",
    "load_tokenizer",
    "pack_token_shards",
    "render_chat",
    "special_token_ids",
    "token_dtype",
    "train_bpe_tokenizer",
]
