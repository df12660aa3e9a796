# Builds a tiny random Qwen2ForCausalLM (bf16 safetensors) + byte-level BPE tokenizer.json.
import os
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM, PreTrainedTokenizerFast
out = sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen2"
os.makedirs(out, exist_ok=True)
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
corpus = ["the quick brown fox jumps over the lazy dog " * 4, "hello world, this is a tiny test model. " * 4,
          "vllm serve health check ok 0123456789 " * 4]
trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(corpus, trainer)
hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 bos_token=None, unk_token=None)
hf_tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
hf_tok.save_pretrained(out)
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                  rope_theta=10000.0, tie_word_embeddings=True, torch_dtype="bfloat16",
                  eos_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"),
                  bos_token_id=hf_tok.convert_tokens_to_ids("<|endoftext|>"))
model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(out, safe_serialization=True)
print(out, sorted(os.listdir(out)), "tokenizer vocab", len(hf_tok))
