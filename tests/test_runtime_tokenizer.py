"""The runtime's tokenizer (a tokenizers file written from open_clip's SimpleTokenizer) gives open_clip's token ids:
on every class name of the benchmarks in every prompt template of the configs, and on texts made to differ."""

import glob
import os
import subprocess
import sys
import unicodedata

import numpy as np
import open_clip
import pytest

from conftest import REPO_ROOT, default_cfg
from esc_net.config import merge_config_file
from esc_net.data.class_names import BENCHMARK_CLASS_FILES, load_class_names
from esc_net_runtime.prompts import prompt_list
from esc_net_runtime.tokenizer import KNOWN_DIFFERENCES, ClipTokenizer, write_tokenizer

ODD_NAMES = [
    "T-shirt",
    "rock'n'roll",
    "children's toy",
    "CHILDREN'S TOY",
    "it's",
    "we'll, they're, I'd, you've, I'm, isn't",
    "R2-D2",
    "3.14159 pies",
    "7-Eleven store",
    "1920s car",
    "a.b.c!!!???",
    "(parentheses) [brackets] {braces}",
    "e-mail @ home #1 $5 %20 ^_^ ~ `tick`",
    "café",
    "cafe\u0301",  # e + combining acute: NFC makes it "café"
    "Ångström unit",
    "\u212b unit",  # ANGSTROM SIGN, which NFC maps to Å
    "naïve façade",
    "straße",
    "ΟΔΟΣ ΣΟΦΙΑΣ",  # capital sigmas, one at the end of each word
    "İstanbul",
    "東京タワー",
    "고양이",
    "пожарная машина",
    "ｆｕｌｌｗｉｄｔｈ　ｃａｔ",  # ftfy turns full-width forms into ASCII
    "ｶﾀｶﾅ",  # half-width katakana: ftfy widens them
    "\ufb01sh \ufb02ower",  # ligatures fi and fl
    "\u2018quoted\u2019 and \u201cdouble\u201d",  # curly quotes: ftfy straightens them
    "dog 🐶 and cat 🐈‍⬛",
    "flag 🇰🇷 and family 👨‍👩‍👧",
    "many     spaces",
    "tab\tand\nnewline",
    "no\u00a0break\u2003em\u3000ideographic",
    "zero\u200bwidth\u200djoiner",
    "soft\u00adhyphen",
    "AT&amp;T",
    "fish &amp; chips",
    "&lt;b&gt;bold&lt;/b&gt;",
    "&quot;quoted&quot; &#39;single&#39; &#x27;hex&#x27;",
    "caf&eacute; &nbsp;table",
    "it&#8217;s",
    "&amp;amp; twice",
    "&amp;amp;amp; three times",
    "&copy 2024 &reg",
    "&EACUTE;CLAIR &NTILDE;",  # ftfy decodes uppercased entities
    "&amp;ampx &notit; &#0; &#x1F600; &#xFF21;",
    "a < b &amp; c",
    "math: 2 < 3 > 1",
    "<start_of_text>",
    "an <end_of_text> inside",
    "ſ long s and K kelvin, it'ſ and it'S",
    "a\u0345b ᾳ",  # COMBINING GREEK YPOGEGRAMMENI, which open_clip's split pattern skips
    "ﬀ ﬃ ﬆ",
    "Ⅻ ① ² ½",
    "\U0001d400\U0001d401 math bold",
    "\U00020000 CJK extension B",
    "right\u200fto\u200eleft",
    "\ufeffbom",
    " leading and trailing ",
]


def _pair(context_length, folder):
    reference = open_clip.SimpleTokenizer(context_length=context_length)
    path = str(folder / "tokenizer.json")
    write_tokenizer(reference, path)
    return reference, ClipTokenizer(path)


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory):
    """open_clip's SimpleTokenizer of CLIP's context length (77) and the runtime's tokenizer written from it."""
    return _pair(77, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module", params=[77, 32], ids=["context77", "context32"])
def tokenizers_pair(request, tmp_path_factory):
    """The pair of CLIP's context length, and of the tiny config's (32)."""
    if request.param == 77:
        return request.getfixturevalue("clip_pair")
    return _pair(request.param, tmp_path_factory.mktemp("tokenizer"))


def _assert_same_ids(pair, texts):
    reference, runtime = pair
    expected = reference(list(texts)).numpy()
    got = runtime(list(texts))
    assert got.dtype == np.int64 and got.shape == expected.shape
    differing = [text for text, a, b in zip(texts, got, expected) if not np.array_equal(a, b)]
    assert not differing, f"{len(differing)} texts tokenised otherwise than by open_clip, e.g. {differing[:5]}"


def _templates():
    """The prompt templates of esc_net/config.py's default and of every YAML config."""
    templates = set(default_cfg().MODEL.ESC_NET.PROMPT_TEMPLATES)
    for path in glob.glob(os.path.join(REPO_ROOT, "configs", "*.yaml")):
        cfg = default_cfg()
        merge_config_file(cfg, path)
        templates.update(cfg.MODEL.ESC_NET.PROMPT_TEMPLATES)
    return sorted(templates)


def test_every_benchmark_name_in_every_template(tokenizers_pair):
    templates = _templates()
    assert len(templates) >= 2
    names = [name for benchmark in BENCHMARK_CLASS_FILES for name in load_class_names(benchmark)]
    prompts, _ = prompt_list(names, templates, "average")  # every synonym of every name
    assert len(prompts) > 2 * 1500
    _assert_same_ids(tokenizers_pair, prompts)


def test_punctuation_digits_unicode_spaces_and_html(clip_pair):
    prompts, _ = prompt_list([n.replace(",", ";") for n in ODD_NAMES], ["a photo of a {}."], "first")
    _assert_same_ids(clip_pair, ODD_NAMES + prompts)


def test_the_known_differences_are_those_documented(clip_pair):
    """KNOWN_DIFFERENCES, one example each: mojibake, a terminal escape, an entity of a curly quote beside a "<"."""
    reference, runtime = clip_pair
    for text in ["cafÃ©", "\x1b[31mred", "a<b &#8220;x"]:
        assert not np.array_equal(runtime([text])[0], reference([text]).numpy()[0]), text
    assert "mojibake" in KNOWN_DIFFERENCES and "terminal escapes" in KNOWN_DIFFERENCES and '"<"' in KNOWN_DIFFERENCES


def test_long_names_are_cut_with_the_end_token_last(tokenizers_pair):
    reference, runtime = tokenizers_pair
    words = " ".join(f"word{i}" for i in range(60))
    texts = [words, "ab " * 100, "supercalifragilistic " * 30, "7" * 200]  # each digit is a token
    exact = " ".join(["cat"] * (reference.context_length - 2))  # fills the context exactly
    _assert_same_ids(tokenizers_pair, texts + [exact, exact + " cat"])
    ids = runtime(texts)
    assert (ids[:, -1] == reference.eot_token_id).all() and (ids[:, 0] == reference.sot_token_id).all()


@pytest.mark.slow
def test_every_character_alone(clip_pair):
    """Each assigned code point of Unicode (Python's tables) between two letters, as open_clip tokenises it: the
    normaliser's character fixes, NFC, whitespace, lowercase and the split pattern's character classes."""
    assigned = [c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    _assert_same_ids(clip_pair, [f"a{chr(c)}b" for c in assigned])


def test_only_clip_tokenizers_are_written(tmp_path):
    path = str(tmp_path / "tokenizer.json")
    with pytest.raises(
        ValueError, match="only open_clip's SimpleTokenizer .* the model's tokenizer is a builtins.dict"
    ):
        write_tokenizer({}, path)
    with pytest.raises(ValueError, match="cleans or shortens texts otherwise than CLIP's"):
        write_tokenizer(open_clip.SimpleTokenizer(clean="canonicalize"), path)
    with pytest.raises(ValueError, match="cleans or shortens texts otherwise than CLIP's"):
        write_tokenizer(open_clip.SimpleTokenizer(reduction_mask="simple"), path)
    assert not os.path.exists(path)


def test_a_foreign_tokenizer_file_is_refused(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    path = str(tmp_path / "tokenizer.json")
    tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a")).save(path)
    with pytest.raises(ValueError, match="is not a tokenizer written by esc_net_runtime.tokenizer.write_tokenizer"):
        ClipTokenizer(path)


def test_missing_tokenizers_package_is_named(tmp_path):
    code = (
        "import sys; sys.modules['tokenizers'] = None\n"
        "from esc_net_runtime.tokenizer import ClipTokenizer\n"
        f"ClipTokenizer({str(tmp_path / 'tokenizer.json')!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 1
    assert "ImportError: the ONNX runtime of ESC-Net needs the tokenizers package: pip install 'esc_net[deploy]'" in (
        result.stderr
    )
