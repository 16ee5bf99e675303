"""course_lib.data: the fixed-vocabulary tokenizer, the corpora and the batches."""

import hashlib
import sysconfig
import textwrap
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch

from course_lib import data, env

# -- tokenizer ---------------------------------------------------------------------------------


def test_vocabulary_is_fixed_printable_ascii_tab_newline_and_unknown():
    tok = data.CharTokenizer()
    expected = ["\t", "\n"] + [chr(c) for c in range(32, 127)] + [data.UNKNOWN_CHAR]
    assert tok.chars == expected
    assert tok.vocab_size == len(tok) == 98
    assert tok.unknown_id == 97
    assert tok.encode("\t\n A~") == [0, 1, 2, 35, 96]


def test_vocabulary_does_not_depend_on_the_text_encoded():
    a, b = data.CharTokenizer(), data.CharTokenizer()
    a.encode("def f(x):\n\treturn x\n")
    b.encode("To be, or not to be")
    assert a.chars == b.chars
    assert a.encode("zebra") == b.encode("zebra")


def test_every_vocabulary_character_round_trips_without_warning():
    tok = data.CharTokenizer()
    text = "".join(tok.chars)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unknown symbol itself is not "outside" the vocabulary
        ids = tok.encode(text)
    assert ids == list(range(tok.vocab_size))
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text


def test_real_python_source_round_trips():
    tok = data.CharTokenizer()
    source = textwrap.dedent(
        """\
        import os

        def walk(top: str) -> list[str]:
        \t\"\"\"Every file under `top`, sorted.\"\"\"
        \treturn sorted(os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs)  # ~ok
        """
    )
    assert tok.decode(tok.encode(source)) == source
    # a whole file of the standard library too (pure ASCII, so nothing becomes unknown)
    stdlib = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    assert stdlib.isascii()
    assert tok.decode(tok.encode(stdlib)) == stdlib


def test_corpus_round_trips_up_to_the_unknown_symbol():
    tok = data.CharTokenizer()
    text = data.load_corpus("pystdlib").val + "\n# naïve ∑ — ok\n"
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        ids = tok.encode(text)
    expected = "".join(ch if ch in tok.chars else data.UNKNOWN_CHAR for ch in text)
    assert expected.endswith("\n# na\ufffdve \ufffd \ufffd ok\n")
    assert tok.decode(ids) == expected


def test_unknown_characters_map_to_unknown_id_with_one_warning_per_tokenizer():
    tok = data.CharTokenizer()
    with pytest.warns(UserWarning, match="outside the vocabulary") as record:
        ids = tok.encode("café ∑")
    assert len(record) == 1
    assert "é" in str(record[0].message) and "∑" in str(record[0].message)
    assert ids == tok.encode("caf") + [tok.unknown_id, tok.encode(" ")[0], tok.unknown_id]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning from the same tokenizer would fail
        assert tok.encode("naïve") == tok.encode("na") + [tok.unknown_id] + tok.encode("ve")
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        data.CharTokenizer().encode("é")  # a new tokenizer warns again


def test_mask_id_is_one_past_the_vocabulary_and_decodes_as_a_block():
    tok = data.CharTokenizer()
    assert tok.mask_id == tok.vocab_size
    assert tok.decode([tok.encode("a")[0], tok.mask_id, tok.encode("b")[0]]) == (
        "a" + data.MASK_CHAR + "b"
    )
    assert data.MASK_CHAR not in tok.chars
    # the mask is an input only: no character encodes to it
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        ids = tok.encode("".join(chr(c) for c in range(0x3000)))
    assert max(ids) == tok.unknown_id


@pytest.mark.parametrize("bad", [b"bytes", None, ["a", "b"], 7])
def test_encode_rejects_non_strings(bad):
    with pytest.raises(ValueError, match="str"):
        data.CharTokenizer().encode(bad)


@pytest.mark.parametrize("bad", [[0, 99], [-1], torch.tensor([[1, 2]])])
def test_decode_rejects_bad_ids(bad):
    with pytest.raises(ValueError):
        data.CharTokenizer().decode(bad)


# -- corpora -------------------------------------------------------------------------------------


def test_pystdlib_is_deterministic_and_split_by_file():
    a, b = data.load_corpus("pystdlib"), data.load_corpus()
    assert a.fingerprint == b.fingerprint and a.train == b.train and a.val == b.val
    assert len(a.fingerprint) == 12 and int(a.fingerprint, 16) >= 0
    root = Path(sysconfig.get_paths()["stdlib"])
    for stem in data.PYSTDLIB_FILES:
        text = (root / f"{stem}.py").read_text(encoding="utf-8")
        inside, outside = (a.val, a.train) if stem in data.PYSTDLIB_VAL_FILES else (a.train, a.val)
        assert text in inside, stem
        assert text not in outside, stem
    assert set(data.PYSTDLIB_VAL_FILES) < set(data.PYSTDLIB_FILES)


def test_pystdlib_sizes_are_sensible_and_reported():
    corpus = data.load_corpus("pystdlib")
    assert 1_000_000 < len(corpus.train) < 10_000_000
    assert 50_000 < len(corpus.val) < 1_000_000
    assert 0.03 < len(corpus.val) / (len(corpus.train) + len(corpus.val)) < 0.2
    text = corpus.describe()
    assert corpus.fingerprint in text and f"{len(corpus.train):,}" in text


def _fake_stdlib(tmp_path, monkeypatch, missing: set[str]) -> Path:
    for stem in data.PYSTDLIB_FILES:
        if stem not in missing:
            path = tmp_path / f"{stem}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# {stem}\n")
    monkeypatch.setattr(data.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    return tmp_path


def test_pystdlib_warns_about_a_few_missing_files(tmp_path, monkeypatch):
    _fake_stdlib(tmp_path, monkeypatch, missing={"abc", "csv"})
    with pytest.warns(UserWarning, match="2 corpus file"):
        corpus = data.load_corpus("pystdlib")
    assert "# abc\n" not in corpus.train and "# argparse\n" in corpus.train
    assert "# csv\n" not in corpus.val and "# calendar\n" in corpus.val


def test_pystdlib_refuses_a_python_without_its_standard_library(tmp_path, monkeypatch):
    _fake_stdlib(tmp_path, monkeypatch, missing=set(data.PYSTDLIB_FILES))
    with pytest.raises(FileNotFoundError, match="missing"):
        data.load_corpus("pystdlib")


def test_unknown_corpus_names_the_choices():
    with pytest.raises(ValueError, match="unknown corpus") as info:
        data.load_corpus("wikipedia")
    assert "pystdlib" in str(info.value) and "shakespeare" in str(info.value)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """env.DATA_DIR in tmp_path, and a network that is down: nothing real is touched."""
    monkeypatch.setattr(env, "DATA_DIR", tmp_path)
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path / "cache" / "tinyshakespeare.txt", calls


def test_shakespeare_offline_names_the_embedded_default(offline_cache):
    cached, calls = offline_cache
    with pytest.raises(ValueError, match="offline") as info:
        data.load_corpus("shakespeare")
    assert "load_corpus('pystdlib')" in str(info.value)
    assert calls == [data.SHAKESPEARE_URL]
    assert not cached.exists()


def test_damaged_cached_shakespeare_is_refused(offline_cache):
    cached, calls = offline_cache
    cached.parent.mkdir(parents=True)
    cached.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    with pytest.raises(ValueError, match="damaged"):
        data.load_corpus("shakespeare")
    assert calls == []  # the cache is used, not the network


class _FakeResponse:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def read(self) -> bytes:
        return self.raw

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_shakespeare_is_downloaded_once_verified_and_split(offline_cache, monkeypatch):
    cached, _ = offline_cache
    raw = ("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 50).encode()
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", hashlib.sha256(raw).hexdigest())
    downloads = []
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, **kw: downloads.append(url) or _FakeResponse(raw)
    )
    corpus = data.load_corpus("shakespeare")
    assert cached.read_bytes() == raw
    assert corpus.train + corpus.val == raw.decode()
    assert len(corpus.val) == len(raw) - int(len(raw) * (1 - data.SHAKESPEARE_VAL_FRACTION))
    assert data.load_corpus("shakespeare").fingerprint == corpus.fingerprint
    assert downloads == [data.SHAKESPEARE_URL]  # the second load read the cache


def test_shakespeare_download_with_a_wrong_checksum_saves_nothing(offline_cache, monkeypatch):
    cached, _ = offline_cache
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kw: _FakeResponse(b"<html>"))
    with pytest.raises(ValueError, match="checksum"):
        data.load_corpus("shakespeare")
    assert not cached.exists()


# -- batches ---------------------------------------------------------------------------------


def test_get_batch_draws_windows_of_consecutive_ids():
    ids = torch.arange(100, 200)
    batch = data.get_batch(ids, 64, 10, generator=torch.Generator().manual_seed(0))
    assert batch.shape == (64, 11) and batch.dtype == torch.long
    starts = batch[:, 0]
    assert torch.equal(batch, starts[:, None] + torch.arange(11))
    assert starts.min() >= 100 and starts.max() <= 200 - 11


def test_get_batch_reaches_both_ends_and_is_reproducible():
    ids = torch.arange(6)
    batch = data.get_batch(ids, 200, 4, generator=torch.Generator().manual_seed(0))
    assert set(batch[:, 0].tolist()) == {0, 1}  # the last window [1..5] is drawn too
    assert torch.equal(data.get_batch(torch.arange(5), 3, 4), torch.arange(5).expand(3, 5))
    again = data.get_batch(ids, 200, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)


def test_encode_corpus_gives_both_splits_as_long_tensors():
    corpus = data.Corpus("tiny", train="ab\n", val="é~", source="test")
    ids = data.encode_corpus(corpus)
    assert ids["train"].tolist() == [67, 68, 1] and ids["train"].dtype == torch.long
    assert ids["val"].tolist() == [97, 96]


@pytest.mark.parametrize(
    ("ids", "batch_size", "seq_len", "match"),
    [
        (torch.arange(20).view(4, 5), 2, 3, "1-D"),
        (torch.arange(20), 0, 3, ">= 1"),
        (torch.arange(20), 2, 0, ">= 1"),
        (torch.arange(20), 2, 20, "too short"),
    ],
)
def test_get_batch_rejects_bad_arguments(ids, batch_size, seq_len, match):
    with pytest.raises(ValueError, match=match):
        data.get_batch(ids, batch_size, seq_len)


def test_the_judges_corpus_has_more_training_text_and_never_the_validation_text():
    small, judge = data.load_corpus("pystdlib"), data.load_corpus("pystdlib-all")
    assert judge.val == small.val  # the same held-out text for every model of the course
    assert len(judge.train) > 5 * len(small.train)
    # no stretch of the validation text appears in training (wave.py's chunk reader is also
    # chunk.py's: that file is left out)
    stretches = [small.val[i : i + 200] for i in range(0, len(small.val) - 200, 500)]
    assert not [s for s in stretches if s in judge.train]


def test_an_exported_pystdlib_loads_as_the_same_corpus(tmp_path, monkeypatch):
    """A machine with another Python reads the course's corpus from a copied folder."""
    here = data.load_corpus("pystdlib")
    data.export_pystdlib(tmp_path / "corpus")
    monkeypatch.setenv("COURSE_PYSTDLIB", str(tmp_path / "corpus"))
    there = data.load_corpus("pystdlib")
    assert there.fingerprint == here.fingerprint and "COURSE_PYSTDLIB" in there.source
    (tmp_path / "corpus" / "argparse.py").write_text("# another version\n")
    assert data.load_corpus("pystdlib").fingerprint != here.fingerprint  # it is really read
    monkeypatch.setenv("COURSE_PYSTDLIB", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="COURSE_PYSTDLIB"):
        data.load_corpus("pystdlib")
