"""open_clip's CLIP tokenizer as a HuggingFace ``tokenizers`` file, and the torch-free tokenizer that reads it.

:func:`write_tokenizer` (at export time, beside PyTorch) builds the file from the tables of the model's own
``open_clip.SimpleTokenizer``: its vocabulary and BPE merges, its special tokens, its context length and its
split pattern. :class:`ClipTokenizer` (at run time, without PyTorch) encodes prompts with it into the token ids
open_clip gives: [start] + BPE tokens + [end], cut to the context length with the end token kept last, zero-padded.

open_clip cleans a text with ftfy, unescapes HTML entities, collapses whitespace and lowercases it, then splits it
with its pattern. The file's normaliser does the same with ``tokenizers``' own steps: ftfy's fixes of single
characters (curly quotes, ligatures, full-width forms, control characters: a table that ftfy itself makes at export
time), Unicode NFC, Python's whitespace, Python's lowercasing (its final sigma included), and a space for each
character the pattern never matches; its pre-tokeniser splits with open_clip's own pattern. :class:`ClipTokenizer`
decodes the HTML entities before, as ftfy and open_clip decode them (with Python's ``html``). Every class name of
the benchmarks in every template, and every assigned character of Unicode alone, are tokenised as open_clip does
(tests/test_runtime_tokenizer.py); what is not reproduced is listed in :data:`KNOWN_DIFFERENCES`.
"""

import functools
import html
import html.entities
import re
import sys
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["KNOWN_DIFFERENCES", "ClipTokenizer", "write_tokenizer"]

_UPPERCASE_ENTITY = re.compile(r"&[0-9A-Z]{1,24};")

KNOWN_DIFFERENCES = """\
Texts on which ClipTokenizer's ids differ from open_clip's SimpleTokenizer (none occurs in the class names of
esc_net/data/class_names in the project's templates):
- mojibake that ftfy repairs (text decoded with the wrong codec, e.g. "cafÃ©" for "café"): ftfy's guesses depend on
  the whole text and are not reproduced; the text is tokenised as written;
- ANSI terminal escapes (ESC [ ... letter): only the ESC character is removed, not the whole sequence (a class name
  cannot hold ESC: the vocabulary rules refuse control characters);
- HTML entities in a text that also holds "<" and that decode to a character ftfy would change (e.g. "a<b &#8220;"):
  open_clip leaves such a decoded character as it is, ClipTokenizer fixes it."""


def _tokenizers():
    try:
        import tokenizers
    except ImportError as error:
        raise ImportError(
            "the ONNX runtime of ESC-Net needs the tokenizers package: pip install 'esc_net[deploy]'"
        ) from error
    return tokenizers


@functools.lru_cache(maxsize=None)
def _uppercase_entities() -> Dict[str, str]:
    """The uppercased HTML entities that ftfy decodes too ("&NTILDE;" -> "Ñ"): those of lowercase names whose
    uppercase form names no entity of its own."""
    table = {}
    for name, char in html.entities.html5.items():
        upper = "&" + name.upper()
        if name.endswith(";") and name == name.lower() and html.unescape(upper) == upper:
            table[upper] = char.upper()
    return table


def _unescape(text: str) -> str:
    """HTML entities decoded as open_clip's cleaning decodes them: ftfy decodes them (uppercased ones too) until
    none is left, unless the text holds a "<" (it may be markup); then ``html.unescape`` decodes two more levels."""
    if "<" in text:
        return html.unescape(html.unescape(text))
    table = _uppercase_entities()
    while True:
        decoded = html.unescape(_UPPERCASE_ENTITY.sub(lambda m: table.get(m.group(0), m.group(0)), text))
        if decoded == text:
            return text
        text = decoded


@functools.lru_cache(maxsize=None)
def _character_fixes() -> Dict[str, str]:
    """ftfy's fix of each character that it changes on its own (without Unicode normalisation, which the file
    does as a step of its own, nor mojibake repair and HTML entities, which depend on the surrounding text)."""
    import ftfy

    fixes = {}
    # ftfy's character tables (quotes, ligatures, widths, controls) lie in the Basic Multilingual Plane; a scan of
    # all of Unicode finds nothing above it and takes twenty times as long. Surrogates are no characters of a str.
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        fixed = ftfy.fix_text(char, fix_encoding=False, unescape_html=False, normalization=None)
        if fixed != char:
            fixes[char] = fixed
    return fixes


def _char_class(chars: Sequence[str]) -> str:
    """A regular-expression character class of ``chars`` (each written as a \\x{...} escape)."""
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


def _normalizer(tokenizers, split_pattern):
    """ftfy's single-character fixes, NFC, Python's whitespace as single spaces, lowercase, and a space for each
    character that ``split_pattern`` (open_clip's, a compiled ``regex`` pattern) never matches."""
    normalizers, Regex = tokenizers.normalizers, tokenizers.Regex
    by_target: Dict[str, List[str]] = {}
    for char, fixed in _character_fixes().items():
        by_target.setdefault(fixed, []).append(char)
    fixes = [normalizers.Replace(Regex(_char_class(chars)), target) for target, chars in by_target.items()]
    characters = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    whitespace = [c for c in characters if c.isspace()]  # what open_clip's str.split() splits at
    # Python's str.lower() writes a capital sigma that ends a word as a final sigma; tokenizers' Lowercase maps each
    # character alone.
    final_sigma = r"(?<=\p{Cased}\p{Case_Ignorable}*)\x{3a3}(?!\p{Case_Ignorable}*\p{Cased})"
    # Characters that no alternative of open_clip's pattern matches are skipped between its tokens (U+0345, whose
    # case folding is a letter, under the pattern's IGNORECASE); Oniguruma's case folding would take it as a letter.
    unmatched = [c for c in characters if not c.isspace() and not split_pattern.findall(c)]
    steps = [
        *fixes,
        normalizers.NFC(),
        normalizers.Replace(Regex(_char_class(whitespace) + "+"), " "),
        normalizers.Replace(Regex(final_sigma), "\u03c2"),
        normalizers.Lowercase(),
    ]
    if unmatched:
        steps.append(normalizers.Replace(Regex(_char_class(unmatched)), " "))
    return normalizers.Sequence(steps)


def write_tokenizer(open_clip_tokenizer, path: str) -> None:
    """Writes ``open_clip_tokenizer`` (an ``open_clip.SimpleTokenizer``) as a ``tokenizers`` JSON file at ``path``
    that encodes as it does (see the module docstring; :data:`KNOWN_DIFFERENCES`).

    Raises:
        ValueError: the tokenizer is not a SimpleTokenizer, or one that cleans or shortens texts otherwise than
            CLIP's (open_clip's ``clean="lower"``, no ``reduction_mask``).
    """
    from open_clip.tokenizer import SimpleTokenizer

    tok = open_clip_tokenizer
    if not isinstance(tok, SimpleTokenizer):
        raise ValueError(
            f"only open_clip's SimpleTokenizer (CLIP's byte-level BPE) can be written as a tokenizers file; the "
            f"model's tokenizer is a {type(tok).__module__}.{type(tok).__name__}"
        )
    if tok.reduction_fn is not None or tok.clean_fn("Ab.  C") != "ab. c":
        raise ValueError(
            "this SimpleTokenizer cleans or shortens texts otherwise than CLIP's (clean='lower', no reduction_mask); "
            "only CLIP's can be written as a tokenizers file"
        )
    tokenizers = _tokenizers()
    pre_tokenizers = tokenizers.pre_tokenizers
    if set(tok.byte_encoder.values()) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise ValueError("this SimpleTokenizer's byte alphabet is not the byte-level BPE alphabet of tokenizers")
    merges = [pair for pair, _ in sorted(tok.bpe_ranks.items(), key=lambda item: item[1])]
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab=dict(tok.encoder), merges=merges, end_of_word_suffix="</w>", fuse_unk=False)
    )
    special = [tok.decoder[i] for i in tok.all_special_ids]
    # matched in the cleaned text, as open_clip's split pattern matches them
    tokenizer.add_special_tokens([tokenizers.AddedToken(t, normalized=True, special=True) for t in special])
    tokenizer.normalizer = _normalizer(tokenizers, tok.pat)
    flags = "(?i)" if tok.pat.flags & 2 else ""  # re.IGNORECASE == regex.IGNORECASE == 2
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(flags + tok.pat.pattern), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    sot, eot = tok.decoder[tok.sot_token_id], tok.decoder[tok.eot_token_id]
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, tok.sot_token_id), (eot, tok.eot_token_id)]
    )
    # [start] + tokens cut to context_length - 2 + [end], as open_clip's cut then end token last; zeros after
    tokenizer.enable_truncation(max_length=tok.context_length)
    tokenizer.enable_padding(length=tok.context_length, pad_id=0, pad_token=tok.decoder[0])
    tokenizer.save(path)


class ClipTokenizer:
    """Prompts -> CLIP token ids, from a file of :func:`write_tokenizer`, without PyTorch or open_clip.

    Args:
        path: the ``tokenizer.json`` of an ESC-Net export.

    Raises:
        ImportError: the tokenizers package is not installed.
        ValueError: the file is not one that :func:`write_tokenizer` writes (no fixed context length).
    """

    def __init__(self, path: str):
        self._tokenizer = _tokenizers().Tokenizer.from_file(path)
        truncation, padding = self._tokenizer.truncation, self._tokenizer.padding
        if not truncation or not padding or padding.get("length") != truncation["max_length"]:
            raise ValueError(
                f"{path} is not a tokenizer written by esc_net_runtime.tokenizer.write_tokenizer (it does not cut and "
                "pad every text to one context length); export the model again with esc-net-export"
            )
        self.context_length: int = truncation["max_length"]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """P texts -> [P, context_length] int64 token ids, zero-padded."""
        encodings = self._tokenizer.encode_batch([_unescape(text) for text in texts])
        return np.array([encoding.ids for encoding in encodings], dtype=np.int64).reshape(len(texts), -1)
