"""Bad input to `moe-jax data` (issue 10): exit code 2, one stderr line naming the problem and a valid
alternative, and nothing already in the data directory (or the packaged vocabularies) changes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import pandas as pd
import pytest

from moe_jax.cli import main
from moe_jax.data import config as data_config_module
from moe_jax.data.vocab import VOCAB_DIR
from moe_jax.errors import UserError


def snapshot(directory) -> dict:
    """Every file (its bytes) and directory (None) below `directory`."""
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None for p in sorted(directory.rglob("*"))}


@pytest.fixture
def data_dir(tmp_path):
    """A data directory holding earlier work the failed command must leave as it is."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "notes.txt").write_text("earlier work\n")
    return d


def run_data(capsys, *argv):
    rc = main(["data", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, *fragments):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("moe-jax data: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_vocab_size_too_small(capsys, data_dir):
    before, vocabs = snapshot(data_dir), snapshot(VOCAB_DIR)
    rc, out, err = run_data(capsys, "prepare", "--vocab-size", "10", "--data-dir", data_dir)
    assert_one_line_error(rc, out, err, "--vocab-size 10 is too small", "at least 260", "e.g. 2048 or 8192")
    assert snapshot(data_dir) == before and snapshot(VOCAB_DIR) == vocabs


def test_vocab_size_below_the_corpus_alphabet(tmp_path):
    """Above the static bound but below what the text needs: SentencePiece's refusal becomes one line."""
    from moe_jax.data.vocab import train_sentencepiece

    out = tmp_path / "v.model"
    out.write_bytes(b"an earlier model")
    lines = ["".join(chr(0x4E00 + i + j) for j in range(20)) for i in range(0, 600, 20)]  # 600 distinct CJK chars
    with pytest.raises(UserError, match=r"--vocab-size 300 does not fit this corpus: SentencePiece says .*300 vs"):
        train_sentencepiece(lines, 300, out)
    assert out.read_bytes() == b"an earlier model"


def _not_sentencepiece(tmp_path):
    path = tmp_path / "words.model"
    path.write_text("the\nquick\nbrown fox\n")
    return path, ["is not a SentencePiece model", "a GPT-2 BPE directory or 'bytes'"]


def _bpe_dir(tmp_path, encoder: str, merges: str):
    d = tmp_path / "bpe"
    d.mkdir()
    (d / "encoder.json").write_text(encoder)
    (d / "vocab.bpe").write_text(merges)
    return d


def _bpe_list_encoder(tmp_path):
    return _bpe_dir(tmp_path, "[1, 2]", "#version: 0.2\nh e\n"), ["encoder.json must map each token to an integer id"]


def _bpe_bad_merges(tmp_path):
    encoder = json.dumps({"h": 0, "e": 1, "he": 2, "<|endoftext|>": 3})
    return _bpe_dir(tmp_path, encoder, "#version: 0.2\nh e\nhe\n"), ["vocab.bpe line 3 is 'he'", "two pieces"]


def _text_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("a b c\n")
    return path, ["expected a SentencePiece *.model file"]


@pytest.mark.parametrize("make", [_not_sentencepiece, _bpe_list_encoder, _bpe_bad_merges, _text_file])
@pytest.mark.parametrize("action", ["prepare", "inspect"])
def test_vocab_path_that_is_not_a_vocabulary(capsys, tmp_path, data_dir, make, action):
    path, fragments = make(tmp_path)
    before = snapshot(data_dir)
    rc, out, err = run_data(capsys, action, "--task", "fixture", "--vocab-path", path, "--data-dir", data_dir)
    assert_one_line_error(rc, out, err, f"data.vocab_path={str(path)!r}", *fragments)
    assert snapshot(data_dir) == before


def _parquet(shards):
    pd.DataFrame({"url": ["u"], "content": ["some text"]}).to_parquet(shards / "000.parquet")
    return ["shard", "000.parquet has no 'id' or 'text' column (found url, content)"]


def _jsonl(shards):
    (shards / "000.jsonl").write_text('{"doc_id": "a", "text": "some text"}\n')
    return ["000.jsonl has no 'id' column (found doc_id, text)"]


def _not_json(shards):
    (shards / "000.jsonl").write_text("id,text\na,some text\n")
    return ["cannot read shard", "000.jsonl"]


@pytest.mark.parametrize("write", [_parquet, _jsonl, _not_json])
def test_fineweb_shard_without_id_and_text(capsys, tmp_path, data_dir, write):
    shards = tmp_path / "shards"
    shards.mkdir()
    fragments = write(shards)
    before = snapshot(data_dir)
    rc, out, err = run_data(capsys, "prepare", "--task", "fineweb_edu", "--fineweb-path", shards,
                            "--vocab-path", "bytes", "--data-dir", data_dir)
    assert_one_line_error(rc, out, err, "data.fineweb_path", "FineWeb-Edu shards", "columns id, text", *fragments)
    assert snapshot(data_dir) == before


def test_data_dir_that_is_a_file(capsys, tmp_path):
    path = tmp_path / "data"
    path.write_text("not a directory\n")
    for action, target in (("prepare", path), ("inspect", path), ("inspect", path / "sub")):
        rc, out, err = run_data(capsys, action, "--task", "fixture", "--vocab-path", "bytes", "--data-dir", target)
        where = "is a file" if target == path else f"is under the file {path}"
        assert_one_line_error(rc, out, err, f"data.data_dir {target} {where}", "choose a writable directory")
        assert path.read_text() == "not a directory\n"


@contextlib.contextmanager
def read_only(directory, monkeypatch):
    """Make `directory` and everything below unwritable: directories 0555; as root (which ignores modes) the
    immutable flag, else the OS's answer to an unwritable directory is simulated where the check writes."""
    dirs = [directory, *(p for p in directory.rglob("*") if p.is_dir())]
    for d in dirs:
        os.chmod(d, 0o555)
    immutable = False
    try:
        if os.access(directory, os.W_OK):  # root
            immutable = subprocess.run(["chattr", "-R", "+i", str(directory)], capture_output=True).returncode == 0
            if not immutable:
                def refuse(path):
                    raise PermissionError(13, "Permission denied", str(path))
                monkeypatch.setattr(data_config_module, "_probe_write", refuse)
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-R", "-i", str(directory)], check=True)
        for d in dirs:
            os.chmod(d, 0o755)


@pytest.mark.parametrize("action", ["prepare", "inspect"])
def test_read_only_data_dir(capsys, data_dir, monkeypatch, action):
    before = snapshot(data_dir)
    with read_only(data_dir, monkeypatch):
        rc, out, err = run_data(capsys, action, "--task", "fixture", "--vocab-path", "bytes", "--data-dir", data_dir)
    assert_one_line_error(rc, out, err, f"data.data_dir {data_dir} is not writable", "choose a writable directory")
    assert snapshot(data_dir) == before


def test_read_only_data_dir_still_serves_a_complete_cache(capsys, data_dir, monkeypatch):
    """A prepared, read-only data directory (e.g. a shared mount) is read; only a split that still needs
    building is refused, in one line."""
    args = ["--task", "fixture", "--vocab-path", "bytes", "--data-dir", data_dir, "--seq-len", "32",
            "--batches", "2", "--batch-size", "4", "--json"]
    rc, out, err = run_data(capsys, "inspect", *args)  # builds the train split's cache
    assert rc == 0, err
    before = snapshot(data_dir)
    with read_only(data_dir, monkeypatch):
        rc, out, err = run_data(capsys, "inspect", *args)
        assert rc == 0 and json.loads(out)["split"] == "train", err
        rc, out, err = run_data(capsys, "inspect", *args, "--split", "heldout")
    assert_one_line_error(rc, out, err, f"data.data_dir {data_dir} is not writable")
    assert snapshot(data_dir) == before
