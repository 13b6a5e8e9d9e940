"""Vocabulary, padding, loaders (with malformed input), and the real datasets when present."""

import os

import numpy as np
import pytest

import recurrax
from recurrax.data import DataFormatError, Vocab, length_mask, load_conllu, load_tsv, pad_batch, tokenize

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
needs_data = pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data is not beside this checkout")


def test_vocab_matches_the_lectures_ids_and_round_trips():
    corpus = [s.split() for s in ["The first half was very boring .", "Great performance by all the lead actors ."]]
    v = Vocab.build(corpus)
    assert (v.id("<sos>"), v.id("<eos>"), v.id("<pad>"), v.unk_id) == (1, 2, 3, 0)
    assert v.id("The") == v.id("the") == 4  # lower-cased; most frequent word first
    ids = v.encode("The first half was very boring .".split(), add_sos=True, add_eos=True)
    assert ids[0] == v.sos_id and ids[-1] == v.eos_id
    assert v.decode(ids) == "the first half was very boring .".split()
    assert v.decode(ids + [v.pad_id] * 3) == v.decode(ids)  # stops at <eos>
    assert v.decode([v.id("great"), v.eos_id, v.id("the")]) == ["great"]
    assert v.decode(ids, strip=False)[0] == "<sos>"
    assert v.encode(["unseen"]) == [v.unk_id]
    assert len(v) == 4 + len({w.lower() for s in corpus for w in s})


def test_vocab_options_and_errors():
    v = Vocab.build([["a", "b", "b", "c", "c", "c"]], min_freq=2, max_size=1)
    assert v.tokens == ["<unk>", "<sos>", "<eos>", "<pad>", "c"]
    tags = Vocab(["NOUN", "VERB"], lower=False, reserved=False)
    assert tags.encode(["VERB", "NOUN"]) == [1, 0]
    with pytest.raises(KeyError, match="'ADJ' is not in this vocabulary"):
        tags.id("ADJ")
    with pytest.raises(ValueError, match="no reserved tokens"):
        _ = tags.pad_id
    with pytest.raises(ValueError, match="id 7 is outside"):
        tags.decode([7])


def test_tokenize():
    assert tokenize("Don't stop, it's great!") == ["Don't", "stop", ",", "it's", "great", "!"]


def test_pad_batch_tokens_frames_and_masks():
    batch, lengths = pad_batch([[1, 4, 2], [1, 2]], pad_value=3)
    assert batch.tolist() == [[1, 4, 2], [1, 2, 3]] and lengths.tolist() == [3, 2]
    frames = [np.ones((4, 2), np.float32), 2 * np.ones((1, 2), np.float32)]
    fb, fl = pad_batch(frames, max_len=5)
    assert fb.shape == (2, 5, 2) and fb.dtype == np.float32 and fl.tolist() == [4, 1]
    assert (fb[1, 1:] == 0).all() and (fb[1, 0] == 2).all()
    assert np.asarray(length_mask(fl, 5)).tolist() == [[True] * 4 + [False], [True] + [False] * 4]
    with pytest.raises(ValueError, match="does not fit max_len=2"):
        pad_batch([[1, 2, 3]], max_len=2)
    with pytest.raises(ValueError, match="same per-step shape"):
        pad_batch([np.ones((2, 3)), np.ones((2, 4))])


def test_one_hot_batch_is_the_lectures_L_dimensional_binary_vectors():
    v = Vocab.build([["the", "movie", "was", "a", "waste", "of", "time"]])
    batch, lengths = pad_batch([v.encode(["the", "movie"], add_sos=True, add_eos=True)], v.pad_id, max_len=6)
    x = np.asarray(recurrax.one_hot(batch, len(v)))
    assert x.shape == (1, 6, len(v))
    assert (x.sum(-1) == 1).all()  # padding is a word too: <pad>'s own 1-hot vector
    assert x[0, 1].argmax() == v.id("the") and x[0, 5].argmax() == v.pad_id


def test_load_tsv_and_its_errors(tmp_path):
    p = tmp_path / "s.txt"
    p.write_bytes('He said "great\tfilm\t1\nbad \x85 movie\t0\n'.encode())
    assert load_tsv(p) == [('He said "great\tfilm', 1), ("bad \x85 movie", 0)]  # NEL is not a line break
    p.write_text("fine\t1\nno tab here\n")
    with pytest.raises(DataFormatError, match=rf"{p}:2: expected 'sentence<TAB>label'"):
        load_tsv(p)
    p.write_text("fine\t1\nbad label\tx\n")
    with pytest.raises(DataFormatError, match=rf"{p}:2: the label must be an integer"):
        load_tsv(p)


CONLLU = """# sent_id = 1
# text = I can't go.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_
2\tca\tcan\tAUX\tMD\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t_\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_

1\tBank\tbank\tNOUN\tNN\t_\t0\troot\t_\t_
"""


def test_load_conllu_and_its_errors(tmp_path):
    p = tmp_path / "t.conllu"
    p.write_text(CONLLU)
    assert load_conllu(p) == [(["I", "ca", "n't", "go"], ["PRON", "AUX", "PART", "VERB"]), (["Bank"], ["NOUN"])]
    assert load_conllu(p, tag="xpos")[0][1] == ["PRP", "MD", "RB", "VB"]
    p.write_text(CONLLU.replace("1\tBank\tbank\tNOUN\tNN\t_\t0\troot\t_\t_", "1\tBank\tNOUN"))
    with pytest.raises(DataFormatError, match=rf"{p}:10: a CoNLL-U word line has 10 tab-separated columns; found 3"):
        load_conllu(p)
    p.write_text(CONLLU.replace("4\tgo", "x4\tgo"))
    with pytest.raises(DataFormatError, match=rf"{p}:8: bad ID 'x4'"):
        load_conllu(p)
    with pytest.raises(ValueError, match='tag must be "upos" or "xpos"'):
        load_conllu(p, tag="deprel")


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_loaders_strip_a_byte_order_mark_and_read_every_line_ending(tmp_path, eol):
    p = tmp_path / "s.txt"
    p.write_bytes(b"\xef\xbb\xbf" + eol.join(["good film\t1", "", "bad\t0", ""]).encode())
    assert load_tsv(p) == [("good film", 1), ("bad", 0)]
    p.write_bytes(b"\xef\xbb\xbf" + CONLLU.replace("\n", eol).encode())
    assert load_conllu(p) == [(["I", "ca", "n't", "go"], ["PRON", "AUX", "PART", "VERB"]), (["Bank"], ["NOUN"])]


def test_loaders_name_the_file_and_line_of_bytes_that_are_not_utf8(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("fine\t1\ncaf\u00e9 au lait\t0\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=rf"{p}:2: not UTF-8 \(byte 0xe9 at byte column 4\).*iconv"):
        load_tsv(p)
    p.write_bytes(CONLLU.replace("Bank", "B\u00e4nk").encode("latin-1"))
    with pytest.raises(DataFormatError, match=rf"{p}:10: not UTF-8 \(byte 0xe4"):
        load_conllu(p)


@pytest.mark.parametrize("text", ["", "\n\n", " \r\n"])
def test_loaders_reject_files_without_records(tmp_path, text):
    p = tmp_path / "empty.txt"
    p.write_text(text)
    with pytest.raises(DataFormatError, match=rf"{p}: no 'sentence<TAB>label' lines"):
        load_tsv(p)
    p.write_text(text + "# sent_id = 1\n")
    with pytest.raises(DataFormatError, match=rf"{p}: no CoNLL-U word lines"):
        load_conllu(p)


def test_loaders_reject_empty_fields_and_loose_labels(tmp_path):
    p = tmp_path / "s.txt"
    for line, error in [("\t1", "the sentence before the tab is empty"),
                        ("fine\t1_0", "the label must be an integer; got '1_0'"),
                        ("fine\t", "the label must be an integer; got ''")]:
        p.write_text(f"ok\t-1\n{line}\n")
        with pytest.raises(DataFormatError, match=rf"{p}:2: {error}"):
            load_tsv(p)
    p.write_text(CONLLU.replace("1\tBank\tbank\tNOUN", "1\tBank\tbank\t"))
    with pytest.raises(DataFormatError, match=rf"{p}:10: column 4 is empty"):
        load_conllu(p)


@needs_data
def test_real_datasets_load_with_the_documented_counts():
    ud = os.path.join(SHARED, "ud_english_ewt")
    dev = load_conllu(os.path.join(ud, "en_ewt-ud-dev.conllu"))
    assert len(dev) == 2001 and sum(len(w) for w, _ in dev) == 25147
    assert {t for _, tags in dev for t in tags} <= set(
        "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split())
    sent = os.path.join(SHARED, "sentiment", "uci_sentiment_labelled_sentences")
    for name in ["amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt"]:
        rows = load_tsv(os.path.join(sent, name))
        assert len(rows) == 1000 and sum(label for _, label in rows) == 500
