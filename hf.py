"""
Hugging Face interop: our models and tokenizers <-> folders in transformers' layout (config.json,
model.safetensors, tokenizer.json, vocab.json, merges.txt, tokenizer_config.json).

    gpt2 variant   <-> GPT2LMHeadModel   (nanoGPT's names; HF's Conv1D stores each matrix transposed)
    modern variant <-> LlamaForCausalLM  (RoPE in rotate-half layout, RMSNorm, SwiGLU: a renaming plus
                                          splitting the fused q|k|v and gate|up matrices; read back only in the
                                          shape model.py has: no GQA, no scaled RoPE, SiLU, tied embeddings)

Tokenizers: a tiktoken vocabulary (ranks) is byte-level BPE whose merge order is the rank order, so it
becomes vocab.json + merges.txt by recovering each token's merge (BPE on its bytes with the lower ranks
only), and back by reading the ranks off vocab.json. Special tokens keep their ids: <|endoftext|>,
<|im_start|>, <|im_end|> right after the byte-level vocabulary.

Importing a folder that lacks the ChatML tokens (GPT-2 from the hub: 50257 ids) adds them, with new
embedding rows set to the mean of the existing ones. A new token's logit is then the mean of the old
logits, so by Jensen's inequality it gets at most 1/50257 of the probability: the imported model predicts
what it did before, and fine-tuning on chat data teaches it the new rows (tied: input and output at once).
The rows padding the vocabulary to a multiple of 64 get the same mean; export drops them, so config.json's
vocab_size is the real one.

export.py is the command line; checkpoint.load_checkpoint reads a folder through read_folder, so
gen.py, eval.py and train.py --init_from take one where they take a checkpoint.
"""
import base64
import dataclasses
import errno
import functools
import json
import math
import os
import re
import shutil

import torch

from common import VOCAB_FILE, UserError, first_line, remove_stale_tmp, tmp_name
from model import GPT, NORM_EPS, PRESETS, ROPE_THETA, GPTConfig, swiglu_hidden
from setup_tokenizer import (GPT2_PATTERN, MARKS_PATTERN, SPECIAL_TOKENS, file_stamp, get_tokenizer, tokenizer_from_bpe,
                             tokenizer_hash, tokenizer_state, train_command)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # sharded: several safetensors files and a name -> file map
WEIGHTS_BIN = "pytorch_model.bin"  # older downloads: a pickled state dict
TOKENIZER_JSON = "tokenizer.json"
VOCAB_JSON, MERGES_TXT = "vocab.json", "merges.txt"
# setup_tokenizer.MARKS_PATTERN in the tokenizers library's terms: ByteLevel's own regex (GPT-2's, what its use_regex
# applies) with combining marks kept in words, as a Split before a ByteLevel that only maps bytes to characters
MARKS_SPLIT = {"type": "Split", "behavior": "Isolated", "invert": False, "pattern": {
    "Regex": r"'s|'t|'re|'ve|'m|'ll|'d| ?[\p{L}\p{M}]+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"}}
# config.json's key for the training facts transformers has no field for (--block_size, dropout, bias, lr, fine_tune),
# read back by read_folder so that a folder serves as the .pt does; transformers keeps a key it does not know, unused
OWN_CONFIG = "gpt_trainer"
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")  # setup_tokenizer.render_chat's layout; tokenized whole, so GPT-2's vocabulary merges a
# message's leading "\n\n" with the role's "\n", where render_chat encodes the parts apart; and a message that spells
# <|im_end|> gets the control token there (a template cannot escape it), where render_chat keeps it text


def is_hf_folder(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG))


# -----------------------------------------------------------------------------
# tokenizer: tiktoken ranks <-> byte-level BPE vocab + merges

def byte_chars():
    """GPT-2's map of the 256 bytes to printable characters, in which vocab.json and merges.txt spell tokens:
    printable Latin-1 bytes stand for themselves, the others (control bytes, space...) for chr(256 + n) in order."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(others)) for b in range(256)}


def spell(token, chars):
    return "".join(chars[b] for b in token)


def _merge_parts(ranks, token, max_rank):
    """tiktoken's BPE on token's bytes using only ranks below max_rank: the parts it ends with."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = None, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def recover_merges(ranks):
    """The merges of a tiktoken vocabulary, in rank order: each multi-byte token is the merge of the two parts
    BPE reaches on its bytes with the lower ranks (what tiktoken does when it meets those bytes)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _merge_parts(ranks, token, rank)
        if len(parts) != 2:
            raise UserError(f"token {token!r} (id {rank}) is not a merge of two lower-ranked tokens, so the vocabulary "
                            f"has no BPE merges to export; retrain it with `{train_command()}`")
        merges.append((parts[0], parts[1]))
    return merges


def tokenizer_files(enc, model_max_length, llama=False):
    """{file name: text} of the HF tokenizer for a tiktoken Encoding: tokenizer.json, vocab.json + merges.txt
    (GPT-2's original pair) and tokenizer_config.json (class, special tokens, ChatML chat template)."""
    chars = byte_chars()
    ranks = enc._mergeable_ranks
    specials = sorted(enc._special_tokens.items(), key=lambda kv: kv[1])  # [(text, id)]
    vocab = {spell(token, chars): rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab.update(specials)  # GPT-2's vocab.json holds <|endoftext|> too
    merges = [f"{spell(a, chars)} {spell(b, chars)}" for a, b in recover_merges(ranks)]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for t, i in specials]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    # a vocabulary whose pattern keeps combining marks in words: GPT2Tokenizer (vocab.json and merges.txt) would cut
    # its text with GPT-2's regex, other ids, so only tokenizer.json is written, read by the generic fast class
    marks = enc._pat_str == MARKS_PATTERN
    tok_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        # GPT-2's regex (or MARKS_SPLIT's) splits the text, then each piece is BPE'd on its bytes: tiktoken's pipeline
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [MARKS_SPLIT, {**byte_level, "use_regex": False}]}
        if marks else byte_level,
        "post_processor": {**byte_level, "add_prefix_space": True, "trim_offsets": False},
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "vocab": vocab, "merges": merges},
    }
    tok_config = {
        # Llama's own tokenizer class is SentencePiece-style; the generic fast class reads tokenizer.json as it is
        "tokenizer_class": "PreTrainedTokenizerFast" if llama or marks else "GPT2Tokenizer",
        "model_max_length": model_max_length, "add_prefix_space": False, "add_bos_token": False,
        "bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[0], "unk_token": SPECIAL_TOKENS[0],
        "clean_up_tokenization_spaces": False, "errors": "replace",
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    if all(t in enc._special_tokens for t in SPECIAL_TOKENS[1:]):
        tok_config["additional_special_tokens"] = list(SPECIAL_TOKENS[1:])  # skip_special_tokens drops them too
        tok_config["chat_template"] = CHAT_TEMPLATE
    return {
        TOKENIZER_JSON: json.dumps(tok_json, ensure_ascii=False),
        **({} if marks else {VOCAB_JSON: json.dumps(vocab, ensure_ascii=False),
                             MERGES_TXT: "#version: 0.2\n" + "".join(m + "\n" for m in merges)}),
        "tokenizer_config.json": json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n",
    }


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({first_line(e, 100)}): copy the file again from the model's "
                        f"download")


def hf_pattern(pre):
    """(the pattern, the ByteLevel step) of a tokenizer.json pre-tokenizer this project reads: ByteLevel with its own
    regex (GPT2_PATTERN), or export's MARKS_SPLIT before a ByteLevel without one (MARKS_PATTERN); (None, None) else."""
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return GPT2_PATTERN, pre
    steps = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0] == MARKS_SPLIT and steps[1].get("type") == "ByteLevel" \
            and not steps[1].get("use_regex", True):
        return MARKS_PATTERN, steps[1]
    return None, None


def _hf_vocab(folder):
    """(vocab {spelled token: id}, merges [(a, b)], added {text: id}, the pattern its text is cut with) from
    tokenizer.json, else vocab.json + merges.txt; anything but GPT-2-style byte-level BPE is a UserError."""
    path = os.path.join(folder, TOKENIZER_JSON)
    if os.path.isfile(path):
        tok = _read_json(path)
        model, pre = tok.get("model") or {}, tok.get("pre_tokenizer") or {}
        pattern, byte_level = hf_pattern(pre)
        if model.get("type", "BPE") != "BPE" or "merges" not in model or pattern is None:
            raise UserError(f"{path} is not GPT-2-style byte-level BPE (model {model.get('type')}, pre-tokenizer "
                            f"{pre.get('type')}); only such tokenizers convert to this project's tiktoken vocabularies")
        refuse_prefix_space(folder, byte_level)
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        added = {a["content"]: a["id"] for a in tok.get("added_tokens", [])}
        refuse_other_steps(folder, tok, added)
        return model["vocab"], merges, added, pattern
    vocab_path, merges_path = os.path.join(folder, VOCAB_JSON), os.path.join(folder, MERGES_TXT)
    if not (os.path.isfile(vocab_path) and os.path.isfile(merges_path)):
        raise UserError(f"{folder} has no tokenizer files ({TOKENIZER_JSON}, or {VOCAB_JSON} + {MERGES_TXT}): copy "
                        f"them from the model's download next to {CONFIG}")
    vocab = _read_json(vocab_path)
    with open(merges_path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    added = {}
    config_path = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(config_path):
        decoder = _read_json(config_path).get("added_tokens_decoder") or {}
        added = {a["content"]: int(i) for i, a in decoder.items()}
    refuse_prefix_space(folder, None)
    refuse_other_steps(folder, {}, added)
    return vocab, merges, added, GPT2_PATTERN


# tokenizer classes of transformers that take tokenizer_config.json's add_prefix_space over tokenizer.json's (5.x)
CONFIG_PREFIX_SPACE = ("GPT2Tokenizer", "CodeGenTokenizer", "GPTNeoXTokenizer", "Qwen2Tokenizer")
# ... and those that read tokenizer.json's alone (Llama's and Bloom's load as the generic backend)
JSON_PREFIX_SPACE = ("PreTrainedTokenizer", "TokenizersBackend", "LlamaTokenizer", "BloomTokenizer")
# the class AutoTokenizer takes for a model type when tokenizer_config.json names none
MODEL_TYPE_TOKENIZER = {"gpt2": "GPT2Tokenizer", "gpt_neox": "GPTNeoXTokenizer", "qwen2": "Qwen2Tokenizer",
                        "codegen": "CodeGenTokenizer", "llama": "LlamaTokenizer", "bloom": "BloomTokenizer"}


# what those GPT-2-like classes cut text with, whatever tokenizer.json says (transformers 5 builds their pipeline from
# the vocabulary alone). None: no tiktoken pipeline (GPTNeoXTokenizer applies NFC; Qwen2Tokenizer has its own regex)
CLASS_PATTERN = {"GPT2Tokenizer": GPT2_PATTERN, "CodeGenTokenizer": GPT2_PATTERN, "GPTNeoXTokenizer": None,
                 "Qwen2Tokenizer": None}
# the way out where such a class overrides a tokenizer.json the model was trained with: the generic fast class
FAST_CLASS_FIX = (f"set tokenizer_class to PreTrainedTokenizerFast in tokenizer_config.json, as export.py writes it, "
                  f"if {TOKENIZER_JSON} is the tokenizer the model was trained with")


def tokenizer_class(folder):
    """(the tokenizer class AutoTokenizer takes for folder, without its Fast suffix, "" where not known; what says so,
    tokenizer_config.json's tokenizer_class or config.json's model_type; tokenizer_config.json as a dict; its path)."""
    config_path = os.path.join(folder, "tokenizer_config.json")
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    model_path = os.path.join(folder, CONFIG)
    model = _read_json(model_path) if os.path.isfile(model_path) else {}
    # (a config.json that is no object is no model config: folder_context's None, not "tokenizer files malformed")
    model_type = model.get("model_type") if isinstance(model, dict) else None
    if config.get("tokenizer_class"):
        said = f"tokenizer_config.json's tokenizer_class {config['tokenizer_class']}"
    else:
        said = f"{CONFIG}'s model_type {model_type}, with no tokenizer_class in tokenizer_config.json"
    cls = (config.get("tokenizer_class") or MODEL_TYPE_TOKENIZER.get(model_type, "")).removesuffix("Fast")
    return cls, said, config, config_path


def applied_pattern(folder, pattern):
    """(the pattern transformers cuts the folder's text with, the class that says so or None) for a tokenizer whose
    files say pattern: theirs, unless AutoTokenizer's class builds its own pipeline (CLASS_PATTERN; None: refused)."""
    cls, said, _, _ = tokenizer_class(folder)
    if cls not in CLASS_PATTERN:
        return pattern, None
    if CLASS_PATTERN[cls] is None:
        has_json = os.path.isfile(os.path.join(folder, TOKENIZER_JSON))
        raise UserError(f"{folder}: transformers reads its tokenizer as {cls} ({said}), which builds a pipeline of its "
                        f"own from the vocabulary, not a tiktoken one, so the ids would differ from transformers'; "
                        + (FAST_CLASS_FIX if has_json else
                           "set tokenizer_class to GPT2Tokenizer if the model was trained with GPT-2's pipeline"))
    return CLASS_PATTERN[cls], f"transformers' {cls} ({said})"


def refuse_prefix_space(folder, pre_tokenizer):
    """Refuse a tokenizer that puts a space before the text, a step tiktoken lacks. Which file's add_prefix_space
    counts is the class's (CONFIG_PREFIX_SPACE, JSON_PREFIX_SPACE); pre_tokenizer: None without tokenizer.json."""
    cls, _, config, config_path = tokenizer_class(folder)
    json_path = os.path.join(folder, TOKENIZER_JSON)
    if pre_tokenizer is None or cls in CONFIG_PREFIX_SPACE:
        path, on = config_path, config.get("add_prefix_space", False)
    elif cls in JSON_PREFIX_SPACE:
        path, on = json_path, pre_tokenizer.get("add_prefix_space", False)
    else:  # a class whose choice is not known here: refused if either file asks for the space
        path, on = ((config_path, True) if config.get("add_prefix_space") else
                    (json_path, pre_tokenizer.get("add_prefix_space", False)))
    if on:
        raise UserError(f"{path}: add_prefix_space is set (a space is put before the text); tiktoken has no such "
                        f"step, so the ids would differ from transformers': set it to false if the model was trained "
                        f"without it, else this tokenizer cannot be used here")


# tokenizer_config.json's keys that name tokens: transformers adds each one its vocabulary lacks as a new id, and reads
# its text as that one id, where tiktoken reads it as text
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def adds_tokens(processor):
    """Whether a tokenizer.json post-processor puts tokens around the text (a BOS, an EOS): export's ByteLevel and a
    template of the text alone add none."""
    kind = (processor or {}).get("type")
    if kind == "Sequence":
        return any(adds_tokens(p) for p in processor.get("processors") or [])
    if kind == "TemplateProcessing":
        return any("Sequence" not in piece for piece in processor.get("single") or [])
    return kind not in (None, "ByteLevel")  # RobertaProcessing, BertProcessing: <s> ... </s>, [CLS] ... [SEP]


def refuse_other_steps(folder, tok, added):
    """Refuse, naming the setting and the way out, a tokenizer whose files ask transformers for a step tiktoken's BPE
    lacks. tok: tokenizer.json ({} without it); added: {text: id}. byte_fallback, fuse_unk and ignore_merges change
    nothing here (every byte is a token; _read_tokenizer checks each merge is the one BPE reaches), so they pass."""
    _, _, config, config_path = tokenizer_class(folder)
    json_path = os.path.join(folder, TOKENIZER_JSON)
    model, decoder = tok.get("model") or {}, config.get("added_tokens_decoder") or {}
    # an added token's flags: tokenizer_config.json's where it has it (transformers takes them over tokenizer.json's)
    flags = {a["content"]: (json_path, a) for a in tok.get("added_tokens", [])}
    flags.update({a["content"]: (config_path, a) for a in decoder.values()})
    strips = {"lstrip": "takes the whitespace before it", "rstrip": "takes the whitespace after it",
              "single_word": "is that token only as a whole word"}
    stripping = [(path, text, k) for text, (path, a) in flags.items() for k in strips if a.get(k)]
    extra = config.get("extra_special_tokens") or []
    named = [config.get(k) for k in NAMED_TOKENS] + list(config.get("additional_special_tokens") or []) + \
        list(extra.values() if isinstance(extra, dict) else extra) + \
        [a.get("content") for a in decoder.values()]
    # the folder's special tokens, and this project's, which read_tokenizer adds after its ids where it lacks them
    own = {*added, *SPECIAL_TOKENS}
    unknown = sorted({t.get("content") if isinstance(t, dict) else t for t in named if t} - own)
    prefix, suffix = model.get("continuing_subword_prefix"), model.get("end_of_word_suffix")
    # (file, what it asks for, the way out, whether it asks for it)
    checks = [
        (json_path, f"its normalizer {(tok.get('normalizer') or {}).get('type')} changes the text before BPE",
         "set normalizer to null if the model was trained without it", tok.get("normalizer")),
        (json_path, f"BPE dropout {model.get('dropout')} merges at random", "set dropout to null (it is for "
         "training, not for the ids a model reads)", model.get("dropout")),
        (json_path, f"continuing_subword_prefix {prefix!r} marks the pieces inside words",
         'set it to "" if the model was trained without it', prefix),
        (json_path, f"end_of_word_suffix {suffix!r} marks the ends of words",
         'set it to "" if the model was trained without it', suffix),
        (json_path, f"its post_processor {(tok.get('post_processor') or {}).get('type')} adds tokens around the text",
         "set post_processor to null if the model was trained without them", adds_tokens(tok.get("post_processor"))),
        *[(path, f"added token {text} has {k} set (transformers' {text} {strips[k]})",
           f"set {k} to false if the model was trained without it", True) for path, text, k in stripping[:1]],
        (config_path, f"it names tokens {unknown[:3]} that are not among the folder's special tokens (transformers "
         f"adds them as new ids)", "remove them if the model was not trained with them", unknown),
    ]
    for path, what, fix, asked in checks:
        if asked:
            raise UserError(f"{path}: {what}, a step tiktoken's BPE lacks, so the ids would differ from "
                            f"transformers': {fix}, else this tokenizer cannot be used here")


def read_tokenizer(folder):
    """(tiktoken Encoding, ids of the folder's own tokenizer) for an HF folder's byte-level BPE tokenizer; the
    ChatML tokens a folder lacks come after its own. GPT-2's files give get_tokenizer("gpt2") itself."""
    try:
        enc, n_hf = _read_tokenizer(folder, file_stamp(folder))
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # JSON of another shape than a tokenizer's
        raise UserError(f"{folder}: the tokenizer files are malformed ({type(e).__name__}: {first_line(e, 80)}); "
                        f"copy them again from the model's download")
    if len(enc._mergeable_ranks) == 50256:  # GPT-2's size: the named tokenizer, so checkpoints and data say gpt2
        try:
            gpt2 = get_tokenizer("gpt2")
            if tokenizer_hash(gpt2) == tokenizer_hash(enc):
                return gpt2, n_hf
        except UserError:  # offline without tiktoken's GPT-2 files: the vocabulary itself gives the same ids
            pass
    return enc, n_hf


@functools.lru_cache(maxsize=4)
def _read_tokenizer(folder, stamp):
    """read_tokenizer's vocabulary of the folder's files, checked; stamp: file_stamp's. Cached: checking GPT-2's 50k
    merges, in Python, takes seconds."""
    vocab, merges, added, pattern = _hf_vocab(folder)
    where = os.path.join(folder, TOKENIZER_JSON if os.path.isfile(os.path.join(folder, TOKENIZER_JSON)) else VOCAB_JSON)
    specials = {t: i for t, i in vocab.items() if t in SPECIAL_TOKENS}
    specials.update(added)
    unknown = sorted(t for t in specials if t not in SPECIAL_TOKENS)
    if unknown:
        raise UserError(f"{where}: added tokens {unknown[:3]} are not among {', '.join(SPECIAL_TOKENS)}, the only "
                        f"special tokens this project's tokenizers have")
    byte_of = {c: b for b, c in byte_chars().items()}
    ranks = {}
    for text, i in vocab.items():
        if text in specials:
            continue
        if not all(c in byte_of for c in text):
            raise UserError(f"{where}: token {text!r} is not spelled in GPT-2's byte alphabet: not a byte-level BPE "
                            f"vocabulary this project can read")
        ranks[bytes(byte_of[c] for c in text)] = int(i)
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)) or not all(bytes([b]) in ranks for b in range(256)):
        raise UserError(f"{where}: the byte-level token ids must be 0..{n - 1} and cover all 256 bytes; this "
                        f"vocabulary cannot become a tiktoken one")
    # tiktoken merges the pair whose result has the lowest id, HF the pair listed first: the same order when the
    # merges are listed in the order of their results' ids, one merge per multi-byte token
    last = -1
    for pair in merges:
        result = vocab.get("".join(pair)) if len(pair) == 2 and all(p in vocab for p in pair) else None
        if result is None or result <= last or "".join(pair) in specials:
            raise UserError(f"{where}: merge {' '.join(pair)!r} is out of id order or makes no token of the "
                            f"vocabulary; only BPE vocabularies whose merge order is their id order convert exactly")
        # HF joins only the pairs its merges list, tiktoken any two parts that make a token: the same ids only when a
        # token's merge is the one BPE reaches on its bytes (abc listed as "a bc" after "a b": HF leaves "ab c")
        parts = [bytes(byte_of[c] for c in p) for p in pair]
        if _merge_parts(ranks, b"".join(parts), result) != parts:
            raise UserError(f"{where}: merge {' '.join(pair)!r} is not the one BPE reaches on its token's bytes, so "
                            f"tiktoken would give other ids than transformers; this vocabulary cannot convert exactly")
        last = result
    if len(merges) != n - 256:
        raise UserError(f"{where}: {len(merges)} merges for {n - 256} multi-byte tokens: not a BPE vocabulary that "
                        f"converts exactly")
    for k, t in enumerate(SPECIAL_TOKENS):
        if t in specials and specials[t] != n + k:
            raise UserError(f"{where}: {t} has id {specials[t]}, but this project's tokenizers put it at {n + k} "
                            f"(the special tokens follow the byte-level vocabulary in the order "
                            f"{', '.join(SPECIAL_TOKENS)})")
        if t not in specials and any(u in specials for u in SPECIAL_TOKENS[k + 1:]):
            raise UserError(f"{where}: {t} is missing while later special tokens are there, so their ids cannot be "
                            f"kept")
    n_hf = n + len(specials)
    text = "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))
    enc = tokenizer_from_bpe(text)
    # (a vocabulary that keeps marks in words, read by GPT2Tokenizer: the README's download of GPT-2's files holds no
    # tokenizer_config.json, and for model_type gpt2 AutoTokenizer then takes that class, which cuts with GPT-2's regex)
    pattern, cls = applied_pattern(folder, pattern)
    if enc._pat_str != pattern:  # (setup_tokenizer.vocabulary_pattern reads a vocabulary's pattern from its tokens)
        how = {GPT2_PATTERN: "GPT-2's regex", MARKS_PATTERN: "combining marks kept in words"}
        raise UserError(f"{where}: {cls or 'its pre-tokenizer'} cuts text with {how[pattern]}, but its tokens are "
                        f"those of {how[enc._pat_str]}: tiktoken would give other ids than transformers; it cannot "
                        f"convert exactly{f' ({FAST_CLASS_FIX})' if cls else ''}")
    return enc, n_hf


# -----------------------------------------------------------------------------
# weights: our state dict <-> HF's

def tensor_map(cfg):
    """[(our name, [HF names], transposed)] for every tensor but the tied lm_head of a GPT2LMHeadModel or a
    LlamaForCausalLM: the HF tensors stack along dim 0 into ours (q|k|v, gate|up); `transposed` marks GPT-2's
    Conv1D matrices, stored (in, out)."""
    rows = []
    if cfg.variant == "gpt2":
        rows += [("transformer.wte.weight", ["transformer.wte.weight"], False),
                 ("transformer.wpe.weight", ["transformer.wpe.weight"], False)]
        for i in range(cfg.n_layer):
            p = f"transformer.h.{i}."
            for name in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
                rows.append((p + name + ".weight", [p + name + ".weight"], not name.startswith("ln")))
                rows.append((p + name + ".bias", [p + name + ".bias"], False))  # HF's GPT-2 always has biases
        rows += [("transformer.ln_f.weight", ["transformer.ln_f.weight"], False),
                 ("transformer.ln_f.bias", ["transformer.ln_f.bias"], False)]
        return rows
    rows.append(("transformer.wte.weight", ["model.embed_tokens.weight"], False))
    for i in range(cfg.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        rows += [(p + "ln_1.weight", [q + "input_layernorm.weight"], False),
                 (p + "ln_2.weight", [q + "post_attention_layernorm.weight"], False)]
        for kind in ("weight", "bias") if cfg.bias else ("weight",):
            rows += [(p + "attn.c_attn." + kind, [q + f"self_attn.{x}_proj." + kind for x in "qkv"], False),
                     (p + "attn.c_proj." + kind, [q + "self_attn.o_proj." + kind], False),
                     (p + "mlp.c_fc." + kind, [q + "mlp.gate_proj." + kind, q + "mlp.up_proj." + kind], False),
                     (p + "mlp.c_proj." + kind, [q + "mlp.down_proj." + kind], False)]
    rows.append(("transformer.ln_f.weight", ["model.norm.weight"], False))
    return rows


def hf_tensors(model):
    """{HF name: tensor} of our model, without the embedding's padding rows; a gpt2-variant model without biases gets
    zero ones (HF's GPT-2 always has them; read_folder drops them again)."""
    cfg = model.config
    sd = model.state_dict()
    out = {}
    for ours, theirs, transposed in tensor_map(cfg):
        t = sd.get(ours)
        if t is None:  # bias=False
            t = torch.zeros(sd[ours[:-len("bias")] + "weight"].size(0), dtype=sd["transformer.wte.weight"].dtype)
        if ours == "transformer.wte.weight":
            t = t[:cfg.vocab_size]  # (vocab_size, C): the padding rows are never used
        for name, part in zip(theirs, t.detach().chunk(len(theirs), dim=0)):
            out[name] = part.t() if transposed else part
    return out


def trained_lr(v):
    """Whether v is a peak lr as train.py records one, a positive finite number (an edited checkpoint's 'abc' is not:
    config.json would be refused)."""
    return type(v) in (int, float) and 0 < v < math.inf


def hf_config(cfg, enc, dtype, block_size=None, lr=None, fine_tune=False):
    """config.json for our GPTConfig: GPT2LMHeadModel's for the gpt2 variant, LlamaForCausalLM's for modern.
    block_size, lr, fine_tune: the checkpoint's run's training window, peak lr and whether it was a fine-tune."""
    eot = enc._special_tokens[SPECIAL_TOKENS[0]]
    own = {"block_size": block_size or cfg.block_size, "dropout": cfg.dropout}
    if cfg.variant == "gpt2":
        own["bias"] = cfg.bias
    if trained_lr(lr):
        own["lr"] = lr
    if fine_tune:
        own["fine_tune"] = True
    shared = {"vocab_size": cfg.vocab_size, "bos_token_id": eot, "eos_token_id": eot, "tie_word_embeddings": True,
              "initializer_range": 0.02, "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": True,
              OWN_CONFIG: own}
    if cfg.variant == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": cfg.block_size,
                "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": None, "activation_function": "gelu_new",  # GELU's tanh approximation, as model.MLP
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "layer_norm_epsilon": NORM_EPS, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, **shared}
    # model.apply_rope rotates channel pairs (i, i + head_dim/2), which is Llama's rotate_half: no permutation
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.n_embd,
            "intermediate_size": swiglu_hidden(cfg.n_embd), "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head, "head_dim": cfg.head_dim,
            "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": NORM_EPS,
            "rope_theta": ROPE_THETA, "rope_scaling": None, "attention_bias": cfg.bias, "mlp_bias": cfg.bias,
            "attention_dropout": cfg.dropout, **shared}


def config_from_hf(raw, path):
    """Our GPTConfig for a config.json (a dict); settings model.py cannot reproduce are a UserError."""
    kind = raw.get("model_type")

    def need(ok, what):
        if not ok:
            raise UserError(f"{path}: {what}; this project's models cannot reproduce it exactly")

    # its numbers checked by the names config.json gives them, so an error names the setting and the way out
    def count(key, default=None):  # a size: a positive int (default None: config.json must have it, KeyError below)
        value = raw[key] if default is None else raw.get(key, default)
        if type(value) is not int or value < 1:  # (not bool: JSON's true is no size)
            raise UserError(f"{path}: {key} must be a positive int, got {value!r}: copy config.json again from the "
                            f"model's download")
        return value

    def number(key, default):
        value = raw.get(key, default)
        if type(value) not in (int, float):
            raise UserError(f"{path}: {key} must be a number, got {value!r}: copy config.json again from the model's "
                            f"download")
        return value

    try:
        if kind == "gpt2":
            n_embd = count("n_embd", 768)
            need(raw.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh"),
                 f"activation_function {raw.get('activation_function')!r} is not GELU's tanh approximation")
            need(raw.get("n_inner") in (None, 4 * n_embd), f"n_inner {raw.get('n_inner')} is not 4 * n_embd")
            eps = number("layer_norm_epsilon", 1e-5)  # (transformers' default)
            need(math.isclose(eps, NORM_EPS), f"layer_norm_epsilon {eps} is not model.py's {NORM_EPS}")
            need(raw.get("scale_attn_weights", True) and not raw.get("scale_attn_by_inverse_layer_idx", False),
                 "the attention scaling is not 1/sqrt(head_dim)")
            need(not raw.get("add_cross_attention", False), "it has cross-attention")
            return GPTConfig(block_size=count("n_positions" if "n_positions" in raw else "n_ctx", 1024),
                             vocab_size=count("vocab_size", 50257), n_layer=count("n_layer", 12),
                             n_head=count("n_head", 12), n_embd=n_embd, dropout=0.0, bias=True, variant="gpt2")
        if kind == "llama":
            n_embd, n_head = count("hidden_size"), count("num_attention_heads")  # (before the divisions below)
            rope = raw.get("rope_parameters") or {}
            need(isinstance(rope, dict), "rope_parameters is not an object")
            need(raw.get("hidden_act", "silu") == "silu", f"hidden_act {raw.get('hidden_act')!r} is not silu")
            need(raw.get("num_key_value_heads") in (None, n_head), "it shares keys and values across heads (GQA)")
            need(raw.get("head_dim") in (None, n_embd // n_head), "head_dim is not hidden_size / num_attention_heads")
            need(raw.get("intermediate_size") == swiglu_hidden(n_embd),
                 f"intermediate_size {raw.get('intermediate_size')} is not model.py's {swiglu_hidden(n_embd)} for this "
                 f"width")
            eps = number("rms_norm_eps", 1e-6)  # (transformers' default)
            need(math.isclose(eps, NORM_EPS), f"rms_norm_eps {eps} is not model.py's {NORM_EPS}")
            theta = rope.get("rope_theta", raw.get("rope_theta", ROPE_THETA))
            need(theta == ROPE_THETA, f"RoPE's base (rope_theta) {theta} is not model.py's {ROPE_THETA:g}")
            need(not raw.get("rope_scaling") and rope.get("rope_type", "default") == "default", "it scales RoPE")
            need(bool(raw.get("attention_bias", False)) == bool(raw.get("mlp_bias", False)),
                 "attention_bias and mlp_bias differ")
            return GPTConfig(block_size=count("max_position_embeddings", 2048), vocab_size=count("vocab_size"),
                             n_layer=count("num_hidden_layers"), n_head=n_head, n_embd=n_embd, dropout=0.0,
                             bias=bool(raw.get("attention_bias", False)), variant="modern")
    except KeyError as e:
        raise UserError(f"{path} lacks {e.args[0]}: copy config.json again from the model's download")
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: {e}")
    names = architectures(raw)
    names = f" ({', '.join(names)})" if names else ""
    raise UserError(f"{path}: model_type {kind!r}{names} is not supported; "
                    f"this project reads gpt2 (GPT2LMHeadModel) and llama (LlamaForCausalLM, as export.py writes it)")


# the classes whose weights are a language model's and no more (GPT-2 on the hub was saved from GPT2Model)
LM_CLASSES = ("GPT2LMHeadModel", "GPT2Model", "LlamaForCausalLM", "LlamaModel")


def architectures(raw):
    """config.json's architectures as a list of names: one given as a string is one name, not its letters."""
    names = raw.get("architectures") or []
    names = [names] if isinstance(names, str) else names if isinstance(names, list) else []
    return [str(n) for n in names]


def folder_context(folder):
    """The context in tokens of a Hugging Face model folder, as read_folder reads it from config.json; None when it
    has no config.json of a model this project reads (its tokenizer files may still serve as a vocabulary)."""
    path = os.path.join(folder, CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        raw = _read_json(path)
        return config_from_hf(raw, path).block_size if isinstance(raw, dict) else None
    except UserError:
        return None


def own_config(raw, path, context):
    """config.json's OWN_CONFIG settings (export.py's), {} for a folder from elsewhere; values that are not what
    export.py writes are a UserError."""
    own = raw.get(OWN_CONFIG, {})
    fix = f"remove {OWN_CONFIG} from it (the context then stands for the training --block_size, dropout is 0)"
    if not isinstance(own, dict):
        raise UserError(f"{path}: {OWN_CONFIG} is not an object: {fix}")
    kinds = {"block_size": lambda v: type(v) is int and 1 <= v <= context,
             "dropout": lambda v: type(v) in (int, float) and 0 <= v < 1, "bias": lambda v: type(v) is bool,
             "lr": trained_lr, "fine_tune": lambda v: type(v) is bool}
    for k, v in own.items():
        if k in kinds and not kinds[k](v):
            raise UserError(f"{path}: {OWN_CONFIG}'s {k} {v!r} is not what export.py writes (the context is "
                            f"{context}): {fix}")
    return own


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("Hugging Face weights need the safetensors package: pip install safetensors (or make install)")
    return safetensors.torch


def read_weights(folder):
    """{name: tensor} of a folder's model.safetensors, its shards (model.safetensors.index.json) or, for older
    downloads, pytorch_model.bin (read with weights_only=True)."""
    files = [os.path.join(folder, WEIGHTS)]
    if not os.path.isfile(files[0]) and os.path.isfile(os.path.join(folder, WEIGHTS_INDEX)):
        index = _read_json(os.path.join(folder, WEIGHTS_INDEX))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not (isinstance(weight_map, dict) and weight_map and all(isinstance(f, str) for f in weight_map.values())):
            raise UserError(f"{os.path.join(folder, WEIGHTS_INDEX)} has no weight_map of tensor names to file names: "
                            f"download it again")  # (an AttributeError or TypeError traceback)
        # a shard is a file of the folder, as transformers reads it: not ../x or /x elsewhere on this machine
        outside = next((f for f in weight_map.values() if f in ("", ".", "..") or os.path.basename(f) != f
                        or os.path.isabs(f)), None)
        if outside is not None:
            raise UserError(f"{os.path.join(folder, WEIGHTS_INDEX)} names a shard outside the folder ({outside[:80]!r})"
                            f": download it again")
        files = [os.path.join(folder, f) for f in sorted(set(weight_map.values()))]
    if all(os.path.isfile(f) for f in files):
        st, tensors = _safetensors(), {}
        for f in files:
            try:
                tensors.update(st.load_file(f))
            except Exception as e:  # safetensors' own error type for a truncated or foreign file
                raise UserError(f"{f} is not a readable safetensors file ({first_line(e, 100)}): download it again")
        return tensors
    path = os.path.join(folder, WEIGHTS_BIN)
    if os.path.isfile(path):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, or pickled code weights_only refuses
            raise UserError(f"{path} is not a readable state dict ({first_line(e, 100)}): download it again")
        if not isinstance(state, dict):
            raise UserError(f"{path} holds no state dict: download it again")
        return state
    missing = ", ".join(os.path.basename(f) for f in files if not os.path.isfile(f))
    raise UserError(f"{folder} has no weights ({missing}, or {WEIGHTS_BIN}): copy them from the model's download "
                    f"next to {CONFIG}")


def nearest_preset(cfg):
    """The preset closest in size (layers x width^2), whose learning rate and batch size train.py then uses."""
    size = lambda layers, width: layers * width * width  # noqa: E731
    return min(PRESETS, key=lambda p: abs(math.log(size(PRESETS[p]["n_layer"], PRESETS[p]["n_embd"])
                                                   / size(cfg.n_layer, cfg.n_embd))))


class WithoutInit(torch.overrides.TorchFunctionMode):
    """Leaves torch.nn.init's fills out, for a model whose shapes alone are wanted: on the meta device they import
    torch._dynamo (~2 CPU-s)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]  # (the tensor it fills, as each of them returns)
        return func(*args, **(kwargs or {}))


def read_folder(folder):
    """An HF model folder as a checkpoint dict without training state: model (our state dict), config (a dict),
    tokenizer (its state), args (a size preset for train.py's defaults), hf_folder."""
    path = os.path.join(folder, CONFIG)
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a model config (a JSON object): copy it again from the model's download")
    hf_cfg = config_from_hf(raw, path)  # vocab_size = the HF embedding's rows
    own = own_config(raw, path, hf_cfg.block_size)
    enc, n_hf = read_tokenizer(folder)
    if n_hf > hf_cfg.vocab_size:
        raise UserError(f"{folder}: the tokenizer has {n_hf} ids but the model only {hf_cfg.vocab_size} embedding rows "
                        f"(another model's tokenizer files?): copy them again from the model's download")
    tensors = read_weights(folder)
    if hf_cfg.variant == "gpt2" and not any(k.startswith("transformer.") for k in tensors):
        # GPT-2 on the hub was saved from GPT2Model: the same names without the prefix
        tensors = {k if k.startswith("lm_head.") else "transformer." + k: v for k, v in tensors.items()}
    wte_name = "transformer.wte.weight" if hf_cfg.variant == "gpt2" else "model.embed_tokens.weight"
    lm_head = tensors.pop("lm_head.weight", None)
    if lm_head is not None and wte_name in tensors and not torch.equal(lm_head, tensors[wte_name]):
        raise UserError(f"{folder}: lm_head.weight is not tied to the token embedding; this project's models tie them")
    # untied by its config (Llama's default) and no head saved: transformers starts that head from random values,
    # and tying it here would be another model than theirs
    if lm_head is None and not raw.get("tie_word_embeddings", hf_cfg.variant == "gpt2"):
        said = "tie_word_embeddings false" if "tie_word_embeddings" in raw else \
            f"no tie_word_embeddings, which for {raw.get('model_type')} means untied"
        raise UserError(f"{folder}: {CONFIG} says the embeddings are untied ({said}) but there is no lm_head.weight; "
                        f"this project's models tie them: set tie_word_embeddings to true if the model was trained "
                        f"tied")
    try:
        with torch.device("meta"), WithoutInit():  # the HF names and shapes config.json implies, allocating nothing
            expected = {k: v.shape for k, v in hf_tensors(GPT(hf_cfg)).items()}
    except MemoryError as e:  # GPT's own check (10**11 layers took hours to build, even on the meta device)
        raise UserError(f"{folder}: {CONFIG} implies a model that does not fit in memory ({first_line(e)}): the "
                        f"config is damaged, or the model needs a larger machine") from None
    for k in [k for k in tensors if k.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))]:
        if k not in expected:
            del tensors[k]  # buffers older transformers saved (causal mask, RoPE frequencies): derived, not weights
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    other = [n for n in architectures(raw) if n not in LM_CLASSES]
    if extra and other:  # a classifier's head (GPT2ForSequenceClassification's score): the download is whole
        raise UserError(f"{folder}: {CONFIG}'s architectures is {other[0]}, not a language model alone "
                        f"({', '.join(LM_CLASSES)}): its weights {extra[:2]} have no place in this project's models; "
                        f"use the model's causal-LM folder")
    if missing or extra:
        raise UserError(f"{folder}: the weights do not match {CONFIG} ({len(expected)} tensors expected): "
                        + (f"missing {missing[:2]}" if missing else "") + (" " if missing and extra else "")
                        + (f"unexpected {extra[:2]}" if extra else "") + "; copy the folder again from the download")
    for k, shape in expected.items():
        if tensors[k].shape != shape:
            raise UserError(f"{folder}: weight {k} has shape {tuple(tensors[k].shape)} but {CONFIG} implies "
                            f"{tuple(shape)}; copy the folder again from the download")

    cfg = dataclasses.replace(hf_cfg, vocab_size=enc.n_vocab, dropout=float(own.get("dropout", 0.0)))
    state = {}
    for ours, theirs, transposed in tensor_map(hf_cfg):
        parts = [tensors[name].float() for name in theirs]
        state[ours] = torch.cat([p.t() if transposed else p for p in parts], dim=0).contiguous()
    biases = [k for k in state if k.endswith(".bias")]
    if cfg.variant == "gpt2" and own.get("bias") is False and not any(state[k].any() for k in biases):
        # export.py's zeros for a model without biases: none again, or --init_from would train them (nonzero: kept)
        cfg = dataclasses.replace(cfg, bias=False)
        for k in biases:
            del state[k]
    # embedding rows: the tokenizer's ids keep theirs; added ChatML tokens and padding rows start at the mean
    wte = state["transformer.wte.weight"][:n_hf]  # (n_hf, C)
    rows = wte.mean(dim=0, keepdim=True).expand(cfg.padded_vocab_size, -1).clone()  # (padded_vocab_size, C)
    rows[:n_hf] = wte
    state["transformer.wte.weight"] = state["lm_head.weight"] = rows
    return {"model": state, "config": dataclasses.asdict(cfg), "tokenizer": tokenizer_state(enc),
            "args": {"model": nearest_preset(cfg), **{k: own[k] for k in ("block_size", "lr") if k in own}},
            **({"fine_tune": True} if own.get("fine_tune") else {}), "hf_folder": folder}


# -----------------------------------------------------------------------------
# export

# the names of single-file models, which an export (a folder) is not
WEIGHTS_FILE_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".gguf", ".onnx")


def check_out_dir(out_dir):
    """An export never writes over files: out_dir must not exist yet, or be an empty folder that a sibling renamed
    into place can replace."""
    if os.path.abspath(out_dir) == os.getcwd():
        raise UserError(f"OUT_DIR {out_dir!r} is the current folder: name a new one, as in hf-model")
    if os.path.islink(os.path.normpath(out_dir)):  # the export, renamed into place, would replace the link
        raise UserError(f"OUT_DIR {out_dir} is a symbolic link: give the folder it points to, "
                        f"{os.path.realpath(out_dir)}")
    if os.path.ismount(os.path.normpath(out_dir)):  # (a container's volume, empty: os.rmdir fails with EBUSY)
        raise UserError(f"OUT_DIR {out_dir} is a mount point, which the export (written next to it and renamed into "
                        f"place) cannot replace: name a new folder in it, as in {os.path.join(out_dir, 'hf-model')}")
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        what = "a folder that is not empty" if os.path.isdir(out_dir) else "a file"
        raise UserError(f"{out_dir} already exists and is {what}: choose a new OUT_DIR or remove it first")
    # `export.py x.pt model.safetensors` would make a folder of that name where a file is expected
    stem, ext = os.path.splitext(os.path.normpath(out_dir))
    if ext.lower() in WEIGHTS_FILE_EXTENSIONS and not os.path.isdir(out_dir):
        raise UserError(f"OUT_DIR {out_dir} names a file, but the export is a folder (config.json, model.safetensors "
                        f"and the tokenizer, which from_pretrained loads): name a folder, as in {stem}")


def export_folder(model, enc, out_dir, dtype=torch.float32, block_size=None, lr=None, fine_tune=False):
    """Write model and tokenizer as an HF folder (config.json, generation_config.json, model.safetensors, tokenizer
    files) into a temporary sibling renamed into place, so out_dir never holds half an export. Returns the names."""
    cfg = model.config
    check_out_dir(out_dir)
    out_dir = os.path.normpath(out_dir)  # hf/new/ and hf/new/. name hf/new (os.rmdir refused "hf/new/.")
    st = _safetensors()
    llama = cfg.variant == "modern"
    eot, im_end = enc._special_tokens[SPECIAL_TOKENS[0]], enc._special_tokens.get(SPECIAL_TOKENS[2])
    files = {
        CONFIG: json.dumps(hf_config(cfg, enc, dtype, block_size, lr, fine_tune), indent=2) + "\n",
        "generation_config.json": json.dumps({"bos_token_id": eot, "pad_token_id": eot, "eos_token_id": [eot] + (
            [im_end] if im_end is not None else [])}, indent=2) + "\n",
        **tokenizer_files(enc, cfg.block_size, llama=llama),
    }
    if enc.bpe_text is not None:  # a custom vocabulary as this project stores it: prepare.py --tokenizer takes it
        files[VOCAB_FILE] = enc.bpe_text
    # fresh contiguous copies: safetensors refuses views that share storage (q|k|v chunks, the tied matrix)
    tensors = {k: v.to(dtype=dtype, device="cpu").contiguous().clone() for k, v in hf_tensors(model).items()}
    tmp = tmp_name(out_dir)
    os.makedirs(tmp)
    try:
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        try:
            st.save_file(tensors, os.path.join(tmp, WEIGHTS), metadata={"format": "pt"})
        except Exception as e:  # safetensors' own error for the file system's (a full disk): an OSError again, whose
            io = re.search(r"\(os error (\d+)\)", str(e))  # one line names the fix (common.run_main); else a bug
            if io is None:
                raise
            n = int(io.group(1))
            raise OSError(n, os.strerror(n), os.path.join(out_dir, WEIGHTS)) from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(os.path.join(tmp, WEIGHTS), 0o666 & ~umask)  # safetensors writes 0600; the others follow the umask
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb+") as f:
                os.fsync(f.fileno())
        try:
            if os.path.isdir(out_dir):
                os.rmdir(out_dir)  # empty, checked above
            os.rename(tmp, out_dir)
        except OSError as e:
            # another export to the same OUT_DIR renamed its folder into place while this one was written (ENOTEMPTY,
            # EEXIST on some systems): its folder stays, this one is removed below
            if e.errno == errno.ENOTDIR and os.path.isfile(out_dir):  # (a file put there meanwhile, said of OUT_DIR)
                raise UserError(f"{out_dir} is a file (put there while this export ran): choose a new OUT_DIR or move "
                                f"the file") from None
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # (said of OUT_DIR, not of the temporary folder)
                raise OSError(e.errno, e.strerror, out_dir) from None
            raise UserError(f"{out_dir} already exists and is a folder that is not empty (written while this export "
                            f"ran: another export to it?): choose a new OUT_DIR or remove it first") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # what a killed export to the same place left (SIGKILL: no finally runs)
    out_dir = os.path.abspath(out_dir)
    remove_stale_tmp(os.path.dirname(out_dir), re.escape(os.path.basename(out_dir)))
    return sorted([*files, WEIGHTS])
