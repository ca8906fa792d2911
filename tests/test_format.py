import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from personagpt.format import DEFAULT_ACTIONS, SPECIAL_TOKENS, PromptFormat, add_special_tokens
from personagpt.models.load import load_tokenizer

from conftest import GPT2_BPE


def test_special_token_ids_match_published_checkpoint(tokenizer):
    expected = {"<|endoftext|>": 50256, "<|sep|>": 50257, "<|cls|>": 50258, "<|start|>": 50259,
                "<|p1|>": 50260, "<|p2|>": 50261, "<|act|>": 50262}
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    assert len(tokenizer) == 50263
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256


def test_adding_tokens_twice_is_a_noop(tokenizer):
    assert add_special_tokens(tokenizer) == 0
    assert len(tokenizer) == 50263


def test_saved_tokenizer_keeps_ids(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert [again.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(50257, 50263))


def test_persona_prefix_layout(fmt, tokenizer):
    ids = fmt.persona_prefix(["i like dogs.", "i am a nurse."])
    expected = tokenizer.encode("<|p2|>i like dogs.<|endoftext|>i am a nurse.<|endoftext|><|sep|><|start|>")
    assert ids == expected
    assert ids[0] == 50261 and ids[-2:] == [50257, 50259]
    assert fmt.persona_prefix(["x"], speaker=1)[0] == 50260


def test_goal_prefix_matches_original_string_encoding(fmt, tokenizer):
    # the original encodes ''.join(['<|act|> ', act, '<|p1|>', '<|sep|>', '<|start|>'])
    for goal in DEFAULT_ACTIONS:
        original = tokenizer.encode("<|act|> " + goal + "<|p1|><|sep|><|start|>")
        assert fmt.goal_prefix(goal) == original
    with_facts = fmt.goal_prefix("talk about cats.", ["i own a cat."])
    assert with_facts == tokenizer.encode("<|act|> talk about cats.<|p1|>i own a cat.<|endoftext|><|sep|><|start|>")


def test_user_text_cannot_inject_control_tokens(fmt):
    ids = fmt.utterance("hi <|p1|> <|act|> there")
    assert not set(ids[:-1]) & set(fmt.special_ids)
    assert ids[-1] == fmt.eos_id


def test_decode_drops_special_tokens(fmt):
    assert fmt.decode(fmt.persona_prefix(["i like dogs."]) + fmt.utterance("hello")) == "i like dogs.hello"


def test_empty_goal_rejected(fmt):
    with pytest.raises(ValueError):
        fmt.goal_prefix("  ")


def test_same_strings_on_another_tokenizer_family():
    # a word-level tokenizer standing in for a Llama-family one: same token strings, embeddings resized
    vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "dogs": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert add_special_tokens(tok, model) == 6
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [4, 5, 6, 7, 8, 9]
    assert model.get_input_embeddings().weight.shape[0] == 10
    assert tok.pad_token == "</s>"
    fmt = PromptFormat(tok)
    assert fmt.persona_prefix(["hello dogs"]) == [8, 2, 3, 1, 4, 6]


def test_format_requires_tokens():
    from transformers import GPT2Tokenizer

    with pytest.raises(ValueError, match="add_special_tokens"):
        PromptFormat(GPT2Tokenizer.from_pretrained(GPT2_BPE))
