"""Shared fixtures: tiny synthetic data, configs redirected into tmp_path, W&B disabled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BEAUTY_PREPARED = SHARED_DATA / "amazon" / "Beauty" / "prepared"


def tiny_args(tmp_path: Path, backbone: str = "sasrec", *extra: str) -> list[str]:
    """Command-line arguments of a seconds-long run on synthetic data inside ``tmp_path``."""
    return [
        "data=synthetic",
        f"backbone={backbone}",
        "trainer=cpu",
        "logger=none",
        f"data.root={tmp_path / 'data'}",
        f"paths.runs={tmp_path / 'runs'}",
        "data.synthetic_users=120",
        "data.synthetic_items=40",
        "stage.max_epochs=2",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    from lightning_modules.config import compose

    return compose(tiny_args(tmp_path))


@pytest.fixture
def tiny_datamodule(tmp_path: Path):
    from datamodules.datamodule import SeqDataModule
    from lightning_modules.config import compose

    cfg = compose(tiny_args(tmp_path))
    dm = SeqDataModule(cfg.data, input_kind="sequence", num_negatives=2, seed=0)
    dm.prepare_data()
    dm.setup()
    return dm


def make_tiny_llm(folder: Path, arch: str = "llama", init_std: float = 0.02) -> Path:
    """A 2-layer random causal LM with a byte-level tokenizer, saved to ``folder``; no download.

    Byte-level BPE without merges: every UTF-8 byte is a token, so any text round-trips.
    ``init_std``: the weights' initialisation (Llama only). At the usual 0.02 attention and MLPs add
    almost nothing to the residual stream, so no position reads another; 0.3 makes them mix.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")
    torch.manual_seed(0)
    vocab_size = len(tokenizer)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True, initializer_range=init_std,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        )
        model = LlamaForCausalLM(config)
    else:
        config = OPTConfig(
            vocab_size=vocab_size, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=4096, word_embed_proj_dim=32, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        )
        model = OPTForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture(scope="session")
def mixing_llm_dir(tmp_path_factory) -> Path:
    """The tiny LLM initialised at std 0.3, so that its attention carries one position's vector to another."""
    return make_tiny_llm(tmp_path_factory.mktemp("mixing_llm"), init_std=0.3)


def llm_args(tmp_path: Path, llm_dir: Path, *extra: str) -> list[str]:
    """Arguments of the A-LLMRec stages on synthetic data with the tiny LLM and the hashing text encoder."""
    return tiny_args(
        tmp_path,
        "sasrec",
        "text_encoder=hashing",
        f"llm.name_or_path={llm_dir}",
        "llm.name=tiny",
        "llm.gguf_file=''",
        "llm.dtype=float32",
        "data.num_eval_negatives=4",
        "prompt.num_history=3",
        *extra,
    )


WORDS = (
    "the red blue green black white pink gold silver soft dry hair skin face nail oil cream soap brush mask "
    "shampoo lotion color light dark fresh clean natural body hand lip eye care gel spray powder water rose "
    "mint honey plum small large mini bold calm deluxe"
).split()


def make_tiny_word_llm(folder: Path) -> Path:
    """A 2-layer random causal LM whose byte-level BPE has whole-word tokens (``Ġred``) for :data:`WORDS`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<pad>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([" ".join(WORDS)] * 50, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_sentence_encoder(folder: Path, spelled: tuple[str, ...] = ()) -> Path:
    """A random 2-layer BERT sentence-transformer (mean pooling, normalised) with a WordPiece vocabulary
    holding :data:`WORDS`, the synthetic titles' words and punctuation; saved to ``folder``. The words
    ``spelled`` are left out of its vocabulary: it reads them letter by letter."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from datamodules.sources import make_synthetic

    titles = {w.lower() for title, _ in make_synthetic(50, 50, 5, 6, 0).items.values() for w in title.split()}
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ";", ":", ".", *letters, *(f"##{c}" for c in letters)]
    vocab += sorted((set(WORDS) | titles | {"user", "product", "words", "likes", "described", "following"}) - set(vocab) - set(spelled))
    raw = folder / "bert"
    raw.mkdir(parents=True)
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(raw / "vocab.txt")).save_pretrained(raw)  # transformers 5: vocab=, not vocab_file=
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()], device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="session")
def tiny_word_llm_dir(tmp_path_factory) -> Path:
    return make_tiny_word_llm(tmp_path_factory.mktemp("tiny_word_llm"))


@pytest.fixture(scope="session")
def tiny_sentence_encoder_dir(tmp_path_factory) -> Path:
    return make_tiny_sentence_encoder(tmp_path_factory.mktemp("tiny_st"))
