"""astra.model: the Astra flow transformer (Wan2.1 backbone + action experts + history packing + KV cache)."""

from astra.model.action_experts import ActionInput
from astra.model.attention import KVCache
from astra.model.config import AstraConfig, HistoryBudget
from astra.model.transformer import AstraOutput, AstraTransformer

__all__ = ["ActionInput", "AstraConfig", "AstraOutput", "AstraTransformer", "HistoryBudget", "KVCache"]
