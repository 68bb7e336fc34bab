"""Model FLOPs of encoder train steps: PaLM-style 6N, full attention, head where it runs."""

from dataclasses import dataclass

from jaxpet.models.config import EncoderConfig


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step, split by where they are spent."""

    body: float  # 6 * matmul parameters of the encoder * tokens
    attention: float  # QK^T and AV over the full (non-causal) S x S score matrix, fwd + bwd
    head: float  # MLM/classifier head at the positions where it runs, fwd + bwd

    @property
    def total(self) -> float:
        return self.body + self.attention + self.head


def encoder_matmul_params(config: EncoderConfig) -> int:
    """Weights that multiply every token: attention and MLP kernels of every layer application.

    Embedding lookups cost no FLOPs. ALBERT shares weights across layers but still runs every
    layer, so its count is per layer application, plus the E -> H embedding projection.
    """
    d, f = config.hidden_size, config.intermediate_size
    per_layer = 4 * d * d + 2 * d * f
    projection = config.embedding_size * d if config.is_albert else 0
    return config.num_hidden_layers * per_layer + projection


def mlm_head_matmul_params(config: EncoderConfig) -> int:
    """Weights of the MLM head at one position: transform dense + the vocabulary projection."""
    return config.hidden_size * config.embedding_size + config.embedding_size * config.vocab_size


def train_step_flops(
    config: EncoderConfig, num_sequences: int, seq_len: int, head_positions: int
) -> StepFlops:
    """FLOPs of a forward + backward pass over `num_sequences` x `seq_len` tokens.

    Each matmul weight costs 2 FLOPs per token forward and 4 backward (6N). Attention scores
    and the weighted sum cost 2 * 2 * S * D per token per layer forward, x3 with the backward
    pass (12 L D S). `head_positions` is the total number of positions where the MLM head runs
    over the step (PET: the mask slots plus the MLM targets; the original PET: every position).
    """
    tokens = num_sequences * seq_len
    body = 6.0 * encoder_matmul_params(config) * tokens
    attention = 12.0 * config.num_hidden_layers * config.hidden_size * seq_len * tokens
    head = 6.0 * mlm_head_matmul_params(config) * head_positions
    return StepFlops(body=body, attention=attention, head=head)
