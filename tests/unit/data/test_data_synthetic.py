"""The demo's arithmetic task and character tokenizer."""
import json
import re

import pytest

from megatron_rl.data import (
    CHAT_TEMPLATE,
    VOCAB_SIZE,
    PromptDataset,
    load_tokenizer,
    make_arithmetic_dataset,
    make_char_tokenizer,
    prepare_demo_data,
    reward_exact_match,
)
from megatron_rl.data.synthetic import CHARACTERS


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    assert make_char_tokenizer(path) == VOCAB_SIZE == 64
    return load_tokenizer(path)


def test_answers_are_correct_and_splits_disjoint(tmp_path):
    paths = make_arithmetic_dataset(tmp_path, n_train=300, n_eval=50, seed=1, ops=("+", "-", "*"))
    train, evals, sft = (read_jsonl(paths[k]) for k in ("train", "eval", "sft"))
    assert (len(train), len(evals), len(sft)) == (300, 50, 300)
    for row in train + evals:
        a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)=", row["prompt"]).groups()
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99
        assert row["answer"] == str(eval(f"{a}{op}{b}"))
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert len({r["prompt"] for r in train}) == 300
    assert [(r["prompt"], r["answer"]) for r in sft] == [(r["prompt"], r["answer"]) for r in train]
    assert all(r["response"] == r["answer"] for r in sft)
    # deterministic in the seed
    again = make_arithmetic_dataset(tmp_path / "again", n_train=300, n_eval=50, seed=1, ops=("+", "-", "*"))
    assert read_jsonl(again["train"]) == train
    with pytest.raises(ValueError):
        make_arithmetic_dataset(tmp_path, n_train=90, n_eval=20, max_value=9)  # only 100 problems


def test_tokenizer_vocab_and_special_ids(tok):
    assert len(tok) == 64
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<eos>", 1)
    assert tok.unk_token_id == 2
    assert tok.convert_tokens_to_ids(list("0123456789")) == list(range(3, 13))
    # every id decodes to its one character (or its special token): a 64-way model samples no junk
    for i, ch in enumerate(CHARACTERS, start=3):
        assert tok.decode([i]) == ch


def test_tokenizer_round_trip(tok):
    text = "Q: 12+345=\nA: 357<eos>\nhello, world! (a-b)*c/d <x> 'y' \"z\" #%[]_"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) - len("<eos>") + 1  # one token per character, <eos> is one token
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("<eos>", "")
    assert tok("1+2")["input_ids"] == [4, 43, 5]  # adds no BOS/EOS by itself


def test_chat_template(tok):
    assert tok.chat_template == CHAT_TEMPLATE
    user = [{"role": "user", "content": "23+45="}]
    assert tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False) == "Q: 23+45=\nA: "
    full = user + [{"role": "assistant", "content": "68"}]
    assert tok.apply_chat_template(full, tokenize=False) == "Q: 23+45=\nA: 68<eos>\n"
    system = [{"role": "system", "content": "add"}] + user
    assert tok.apply_chat_template(system, add_generation_prompt=True, tokenize=False) == "add\nQ: 23+45=\nA: "


def test_auto_tokenizer_loads_it_offline(tok, tmp_path):
    from transformers import AutoTokenizer

    make_char_tokenizer(tmp_path)
    auto = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert auto("Q: 1+2=")["input_ids"] == tok("Q: 1+2=")["input_ids"]
    assert auto.eos_token_id == 1 and auto.pad_token_id == 0


def test_exported_tokenizer_beside_a_qwen2_config_tokenizes_the_same(tmp_path):
    """An SFT / RM export puts the tokenizer next to a config.json of model_type qwen2; loading that
    directory must give the ids of the source tokenizer (a save_pretrained copy loaded as
    Qwen2Tokenizer and dropped every space and newline)."""
    from megatron_rl.data.prompts import export_tokenizer

    src, out = tmp_path / "tok", tmp_path / "export"
    make_char_tokenizer(src)
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    export_tokenizer(load_tokenizer(src), src, out)
    text = "Q: 12 3\nA: "
    want = [CHARACTERS.index(c) + 3 for c in text]  # ids 3.. follow CHARACTERS
    assert load_tokenizer(src)(text, add_special_tokens=False)["input_ids"] == want
    assert load_tokenizer(out)(text, add_special_tokens=False)["input_ids"] == want


def test_prepare_demo_data_is_idempotent(tmp_path):
    root = tmp_path / "demo"
    paths = prepare_demo_data(root, n_train=64, n_eval=16)
    assert paths["vocab_size"] == 64
    files = [root / name for name in ("train.jsonl", "eval.jsonl", "sft.jsonl", "tokenizer/tokenizer.json")]
    stamps = [f.stat().st_mtime_ns for f in files]
    assert prepare_demo_data(root, n_train=64, n_eval=16) == paths
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing rewritten

    (root / "eval.jsonl").unlink()  # incomplete: made again
    prepare_demo_data(root, n_train=64, n_eval=16)
    assert len(read_jsonl(root / "eval.jsonl")) == 16
    prepare_demo_data(root, n_train=32, n_eval=16)  # other arguments: made again
    assert len(read_jsonl(root / "train.jsonl")) == 32


def test_demo_prompts_fit_the_demo_config(tmp_path):
    paths = prepare_demo_data(tmp_path, n_train=200, n_eval=20)
    tok = load_tokenizer(paths["tokenizer"])
    ds = PromptDataset.load(paths["train"], tok, max_prompt_len=32)
    assert len(ds) == 200 and ds.max_len <= 13  # "Q: 99+99=\nA: "
    item = ds[0]
    assert item.prompt_text == f"Q: {read_jsonl(paths['train'])[0]['prompt']}\nA: "
    target = tok(item.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert reward_exact_match(tok.decode(target), item.answer) == 1.0


def test_reward_exact_match():
    assert reward_exact_match("68<eos>", "68") == 1.0
    assert reward_exact_match(" 68\nQ: 1+1=", "68") == 1.0
    assert reward_exact_match("681", "68") == 0.0
    assert reward_exact_match("68", None) == 0.0


def test_concurrent_prepare_gives_one_complete_set(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "demo"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: prepare_demo_data(root, n_train=64, n_eval=16), range(4)))
    assert all(r == results[0] for r in results)
    assert sorted(p.name for p in root.iterdir()) == ["demo_data.json", "eval.jsonl", "sft.jsonl", "tokenizer",
                                                      "train.jsonl"]
    assert len(read_jsonl(root / "train.jsonl")) == 64
    assert load_tokenizer(root / "tokenizer").eos_token_id == 1


def test_digit_credit():
    from megatron_rl.data import digit_credit

    assert digit_credit("68<eos>", "68") == 1.0
    assert digit_credit("63", "68") == 0.5  # tens right, ones wrong
    assert digit_credit("168", "68") == 2 / 3  # an extra digit costs its share
    assert digit_credit("8", "68") == 0.5
    assert digit_credit("abc", "68") == 0.0 and digit_credit("", "68") == 0.0
    with pytest.raises(ValueError):
        digit_credit("68", None)


def test_cipher_task(tmp_path):
    from megatron_rl.data.synthetic import cipher_key, make_cipher_dataset

    key = cipher_key(3)
    assert sorted(key) == sorted(key.values()) == list("0123456789") and key != {d: d for d in key}
    paths = make_cipher_dataset(tmp_path, n_train=300, n_eval=50, seed=3, length=4)
    train, evals, sft = (read_jsonl(paths[k]) for k in ("train", "eval", "sft"))
    assert len(train) == len(sft) == 300 and len(evals) == 50
    for row in train + evals:  # every answer digit is its prompt digit through the key
        assert re.fullmatch(r"\d{4}", row["prompt"]) and row["answer"] == "".join(key[c] for c in row["prompt"])
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert [r["response"] for r in sft] == [r["answer"] for r in train]
    with pytest.raises(ValueError, match="distinct prompts"):
        make_cipher_dataset(tmp_path, n_train=90, n_eval=20, length=2)  # only 100 prompts


def test_prepare_demo_data_cipher_is_a_different_set(tmp_path):
    arithmetic = prepare_demo_data(tmp_path, n_train=64, n_eval=16)
    assert read_jsonl(arithmetic["eval"])[0]["prompt"].endswith("=")
    cipher = prepare_demo_data(tmp_path, n_train=64, n_eval=16, task="cipher", length=4)
    assert re.fullmatch(r"\d{4}", read_jsonl(cipher["eval"])[0]["prompt"])
    with pytest.raises(ValueError, match="task must be"):
        prepare_demo_data(tmp_path, task="sorting")


def test_position_credit():
    from megatron_rl.data.synthetic import position_credit

    assert position_credit("8826<eos>", "8826") == 1.0
    assert position_credit("8816", "8826") == 0.75
    assert position_credit("88", "8826") == 0.5
    assert position_credit("88261", "8826") == 0.8
    assert position_credit("6288\n8826", "8826") == 0.0  # only the first line counts
    with pytest.raises(ValueError):
        position_credit("1", None)
