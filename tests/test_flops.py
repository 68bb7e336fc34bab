"""The FLOP formula against a hand-computed case."""

from jaxpet.engine.flops import encoder_matmul_params, mlm_head_matmul_params, train_step_flops
from jaxpet.models.config import EncoderConfig


def test_train_step_flops_by_hand():
    config = EncoderConfig(
        model_type="bert",
        vocab_size=100,
        hidden_size=8,
        embedding_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    # Per layer: q, k, v, o are 8x8 (256), the MLP 8x32 + 32x8 (512): 768 per layer, 2 layers.
    assert encoder_matmul_params(config) == 1536
    # Head: 8x8 transform + 8x100 vocabulary projection.
    assert mlm_head_matmul_params(config) == 864
    flops = train_step_flops(config, num_sequences=3, seq_len=4, head_positions=5)
    tokens = 12
    assert flops.body == 6 * 1536 * tokens
    assert flops.attention == 12 * 2 * 8 * 4 * tokens
    assert flops.head == 6 * 864 * 5
    assert flops.total == flops.body + flops.attention + flops.head


def test_albert_counts_every_layer_application_and_the_projection():
    config = EncoderConfig(
        model_type="albert",
        vocab_size=50,
        hidden_size=8,
        embedding_size=4,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=16,
        num_hidden_groups=1,
    )
    assert encoder_matmul_params(config) == 3 * (4 * 64 + 2 * 8 * 16) + 4 * 8
    assert mlm_head_matmul_params(config) == 8 * 4 + 4 * 50
