"""Build a tiny random Llama model and byte-level BPE tokenizer offline, for fast unit tests.

    path = build_tiny_model(tmp_path / "tiny")    # ~0.1 s; AutoModelForCausalLM.from_pretrained(path) works

The tokenizer has a chat template in the Gemma turn format and an <end_of_turn> token that ends generation.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.models import GEMMA_CHAT_TEMPLATE as CHAT_TEMPLATE  # the template Distillery gives Gemma

_CORPUS = """the movie was good and the acting was great positive
a dull boring film with bad acting negative
premise hypothesis entailment neutral contradiction answer final
question choices A B C D the answer is 42 step by step
summarize the dialogue person said hello how are you
Text: Classify the text as negative or positive. Reply with the answer only.
0 1 2 3 4 5 6 7 8 9 + - * / = . , : ; ! ? ( ) [ ] { } " '
""" * 20


def build_tiny_model(path: str | Path, vocab_size: int = 512, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([_CORPUS], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    eot = tok.token_to_id("<end_of_turn>")
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.token_to_id("<bos>"), eos_token_id=[tok.token_to_id("<eos>"), eot],
                         pad_token_id=tok.token_to_id("<pad>"), tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [tok.token_to_id("<eos>"), eot]
    model.generation_config.pad_token_id = tok.token_to_id("<pad>")
    model.save_pretrained(path)
    return path
