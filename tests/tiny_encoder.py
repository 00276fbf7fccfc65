"""A tiny randomly initialised BERT checkpoint written to disk, so tests exercise the real loading path in seconds."""
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

WORDS = ("the my flight was late delayed cancelled bag lost thank thanks you great good bad awful help please "
         "sorry hear that i understand how are feeling can we fix this today agent customer refund order").split()
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCTUATION = list(".,!?'@#:;-()")


def tiny_encoder(directory: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a ~110-token vocabulary (every word splits into known pieces), saved as a
    Hugging Face checkpoint directory."""
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = dict.fromkeys(SPECIAL + PUNCTUATION + LETTERS + [f"##{c}" for c in LETTERS] + list(WORDS))
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocabulary)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
