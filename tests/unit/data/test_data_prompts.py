"""PromptDataset: JSONL / JSON / Parquet / save_to_disk rows, the chat template, filtering, errors."""
import json
import logging

import pytest

from megatron_rl.config.errors import ConfigError
from megatron_rl.config.schema import DataConfig
from megatron_rl.data import DataError, PromptDataset, load_tokenizer, make_char_tokenizer

# ids of the demo's character tokenizer (megatron_rl.data.synthetic.CHARACTERS, after 3 specials)
Q, A, COLON, SPACE, NL, PLUS, EQ = 40, 39, 48, 41, 42, 43, 47
ONE, TWO = 4, 5
CHAT_1_PLUS_2 = [Q, COLON, SPACE, ONE, PLUS, TWO, EQ, NL, A, COLON, SPACE]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    make_char_tokenizer(path)
    return load_tokenizer(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    assert isinstance(exc_info.value, ConfigError)
    return msg


def test_jsonl_with_chat_template(tok, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+2=", "answer": "3"}, {"prompt": "2+2=", "answer": 4}])
    ds = PromptDataset.load(path, tok)
    assert len(ds) == 2
    item = ds[0]
    assert item.index == 0
    assert item.prompt_text == "Q: 1+2=\nA: "
    assert item.prompt_ids == CHAT_1_PLUS_2
    assert item.answer == "3"
    assert ds[1].answer == "4"  # numbers become strings
    assert ds[1].index == 1
    assert [it.index for it in ds.get([1, 0])] == [1, 0]


def test_jsonl_without_chat_template(tok, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+2=", "answer": "3"}])
    item = PromptDataset.load(path, tok, apply_chat_template=False)[0]
    assert item.prompt_text == "1+2="
    assert item.prompt_ids == [ONE, PLUS, TWO, EQ]


def test_chat_messages_in_prompt_key(tok, tmp_path):
    messages = [{"role": "system", "content": "add"}, {"role": "user", "content": "1+2="}]
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": messages, "gt": "3"}])
    item = PromptDataset.load(path, tok, prompt_key="question", answer_key="gt")[0]
    assert item.prompt_text == "add\nQ: 1+2=\nA: "
    assert item.prompt_ids == tok("add\n", add_special_tokens=False)["input_ids"] + CHAT_1_PLUS_2
    assert item.answer == "3"


def test_answer_absent_and_metadata_kept(tok, tmp_path, caplog):
    rows = [{"prompt": "1+2=", "source": "gsm", "extra": {"level": 3, "tags": ["a"]}}, {"prompt": "2+2=", "source": "x"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="megatron_rl.data.prompts"):
        ds = PromptDataset.load(path, tok)
    assert [it.answer for it in ds] == [None, None]
    assert ds[0].metadata == {"source": "gsm", "extra": {"level": 3, "tags": ["a"]}}
    assert ds[1].metadata == {"source": "x"}
    assert "no 'answer' field" in caplog.text


def test_parquet_round_trip(tok, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "prompt": ["1+2=", "2+1="],
        "answer": ["3", None],
        "level": [1, 2],
        "messages": [[{"role": "user", "content": "1+2="}], [{"role": "user", "content": "2+1="}]],
    })
    path = tmp_path / "p.parquet"
    pq.write_table(table, path)
    ds = PromptDataset.load(path, tok, max_prompt_len=64)
    assert [it.prompt_text for it in ds] == ["Q: 1+2=\nA: ", "Q: 2+1=\nA: "]
    assert ds[0].prompt_ids == CHAT_1_PLUS_2
    assert [it.answer for it in ds] == ["3", None]
    assert ds[0].metadata["level"] == 1
    assert ds[0].metadata["messages"] == [{"role": "user", "content": "1+2="}]
    # the message-list column as the prompt gives the same ids
    by_messages = PromptDataset.load(path, tok, prompt_key="messages")
    assert [it.prompt_ids for it in by_messages] == [it.prompt_ids for it in ds]


def test_json_array_directory_and_save_to_disk(tok, tmp_path):
    rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "2+2=", "answer": "4"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    assert [it.answer for it in PromptDataset.load(tmp_path / "a.json", tok)] == ["3", "4"]
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "0.jsonl", rows[:1])
    write_jsonl(folder / "1.jsonl", rows[1:])
    assert [it.answer for it in PromptDataset.load(folder, tok)] == ["3", "4"]
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    assert [it.prompt_ids for it in PromptDataset.load(saved, tok)][0] == CHAT_1_PLUS_2


def test_overlong_prompts_dropped_with_one_warning(tok, tmp_path, caplog):
    rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "12345678901234567890+1=", "answer": "x"},
            {"prompt": "2+1=", "answer": "3"}, {"prompt": "99999999999999999999+1=", "answer": "y"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="megatron_rl.data.prompts"):
        ds = PromptDataset.load(path, tok, max_prompt_len=len(CHAT_1_PLUS_2))
    assert [it.answer for it in ds] == ["3", "3"]
    assert [it.index for it in ds] == [0, 1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 2 of 4" in warnings[0].getMessage() and "max_prompt_len=11" in warnings[0].getMessage()


def test_all_prompts_overlong_is_an_error(tok, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+2="}])
    with pytest.raises(DataError) as e:
        PromptDataset.load(path, tok, max_prompt_len=3)
    assert "max_prompt_len" in one_line(e)


def test_missing_file(tok, tmp_path):
    with pytest.raises(DataError) as e:
        PromptDataset.load(tmp_path / "nope.jsonl", tok, key="data.train_path")
    msg = one_line(e)
    assert "nope.jsonl" in msg and "data.train_path" in msg


def test_missing_prompt_key_names_file_line_key_and_keys(tok, tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "1+2="}, {"question": "2+2=", "answer": "4"}])
    with pytest.raises(DataError) as e:
        PromptDataset.load(path, tok)
    msg = one_line(e)
    assert "rows.jsonl" in msg and "line 2" in msg and "'prompt'" in msg
    assert "'question'" in msg and "'answer'" in msg


def test_missing_prompt_key_in_parquet_names_the_row(tok, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"question": ["1+2=", "2+1="]}), path)
    with pytest.raises(DataError) as e:
        PromptDataset.load(path, tok)
    msg = one_line(e)
    assert "rows.parquet" in msg and "row 1" in msg and "'prompt'" in msg and "'question'" in msg


def test_malformed_jsonl_line(tok, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "1+2="}\n\n{"prompt": "2+2=",\n{"prompt": "3"}\n')
    with pytest.raises(DataError) as e:
        PromptDataset.load(path, tok)
    msg = one_line(e)
    assert "bad.jsonl" in msg and "line 3" in msg


@pytest.mark.parametrize("value", [3, [], [{"role": "user"}], ""])
def test_bad_prompt_values(tok, tmp_path, value):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": value}])
    with pytest.raises(DataError) as e:
        PromptDataset.load(path, tok)
    assert "line 1" in one_line(e)


def test_messages_need_the_chat_template(tok, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": "1+2="}]}])
    with pytest.raises(DataError) as e:
        PromptDataset.load(path, tok, apply_chat_template=False)
    assert "apply_chat_template" in one_line(e)


def test_tokenizer_without_chat_template(tok, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+2="}])
    saved = tok.chat_template
    try:
        tok.chat_template = None
        with pytest.raises(DataError) as e:
            PromptDataset.load(path, tok)
        assert "apply_chat_template=false" in one_line(e)
    finally:
        tok.chat_template = saved


def test_from_config_splits(tok, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"q": "1+2=", "a": "3"}, {"q": "2+2=", "a": "4"}])
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"q": "2+1=", "a": "3"}])
    cfg = DataConfig(train_path=str(train), eval_path=str(evals), prompt_key="q", answer_key="a",
                     max_prompt_len=32, apply_chat_template=False)
    assert len(PromptDataset.from_config(cfg, tok, split="train")) == 2
    ev = PromptDataset.from_config(cfg, tok, split="eval")
    assert ev[0].prompt_text == "2+1=" and ev[0].answer == "3"
    with pytest.raises(DataError) as e:
        PromptDataset.from_config(DataConfig(train_path=str(train)), tok, split="eval")
    assert "data.eval_path" in one_line(e)


def test_load_tokenizer_missing_dir(tmp_path):
    with pytest.raises(DataError) as e:
        load_tokenizer(tmp_path / "no-such-model")
    assert "no-such-model" in one_line(e)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        load_tokenizer(empty)
    assert "empty" in one_line(e)
