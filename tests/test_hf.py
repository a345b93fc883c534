"""
Hugging Face interop (hf.py, export.py): our checkpoints load in transformers with the same logits and token ids,
HF GPT-2 folders (as a user downloads them) load here with the same logits, train.py --init_from fine-tunes one,
gen.py samples from one, and bad folders are one-line errors. Models are built locally (2 layers x 64, no
downloads); the tests that run transformers skip without it.
"""
import base64
import dataclasses
import errno
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

import common
import eval as eval_py
import export
import gen
import hf
import setup_tokenizer
import train
from checkpoint import load_model, save_checkpoint
from conftest import run_cli
from model import GPT, make_config
from setup_tokenizer import EOT, IM_END, IM_START, get_tokenizer, render_chat, tokenizer_hash, train_bpe
from test_train import one_thread, story_text, write_dataset  # noqa: F401  (one_thread: a fixture)


def transformers_or_skip():
    """transformers for its models, or a skip where it is missing or cannot run them on this torch (transformers 5
    wants torch >= 2.6, and pip, which knows no such bound, installs it beside torch 2.4 all the same: its models then
    raise ImportError)."""
    transformers = pytest.importorskip("transformers")
    if not transformers.is_torch_available():
        pytest.skip(f"transformers {transformers.__version__} runs no models on torch {torch.__version__}")
    return transformers


CPU = ["--device", "cpu", "--dtype", "float32"]
# special tokens inside text, unicode (accents, CJK, emoji with a modifier, a ligature), runs of spaces, tabs and
# newlines (also at the end), contractions, digits: where byte-level BPE implementations could disagree
TEXTS = [
    "Once upon a time there was a little girl named Lily. She's 3 and didn't like the DARK.",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello :)<|im_end|>\n<|endoftext|>next",
    "naïve café — 東京で 🙂👍🏽 résumé ﬁnal Ωμέγα",
    "  leading,   inner \t\t tabs\n\n\n  lines   and trailing   \n  ",
    "x=1234567890; y = 3.14159e-10 ... I'LL we've they're you'd '''",
    "",
]


def hf_noise(model, std=0.1):
    """Random weights everywhere, norms and biases included, so a mapping mistake anywhere shows in the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


# 4 heads in 2 layers: with as many heads as layers, a config that wrote or read one for the other (config.json's
# n_head as n_layer) gave the same model, and the logits passed
def our_model(vocab_size, variant="gpt2", bias=True):
    torch.manual_seed(0)
    config = make_config("tiny", n_layer=2, n_embd=64, n_head=4, block_size=64, vocab_size=vocab_size,
                         variant=variant, bias=bias)
    return hf_noise(GPT(config)).eval()


def ids_of(tok, text):
    return list(tok(text)["input_ids"])


def one_error_line(code, err):
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error:"), (code, err)
    return lines[0]


@pytest.fixture(scope="module")
def enc():
    return get_tokenizer("gpt2")


@pytest.fixture(scope="module")
def custom_enc(tmp_path_factory):
    """A 400-id byte-level BPE vocabulary trained here (rustbpe), stored as this project stores them."""
    path = str(tmp_path_factory.mktemp("vocab") / "v400.tiktoken")
    text = story_text(100_000) + " naïve café 東京 🙂 " * 50
    return train_bpe([text], 400, path)


def gpt2_original_files():
    """GPT-2's own tokenizer files as the hub has them (vocab.json = encoder.json, merges.txt = vocab.bpe), taken
    from tiktoken's cache, which holds exactly these two files for its gpt2 encoding."""
    get_tokenizer("gpt2")  # fills the cache where the machine can download
    cache = (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
             or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    url = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    files = {name: os.path.join(cache, hashlib.sha1((url + src).encode()).hexdigest())
             for name, src in (("vocab.json", "encoder.json"), ("merges.txt", "vocab.bpe"))}
    if not all(os.path.exists(p) for p in files.values()):
        pytest.skip("GPT-2's vocab.bpe / encoder.json are not in tiktoken's cache")
    return files


@pytest.fixture(scope="module")
def hub_gpt2(tmp_path_factory):
    """A folder laid out like GPT-2 downloaded from the hub: a random 2-layer GPT2LMHeadModel with GPT-2's
    50257-id vocabulary, saved by transformers itself, and GPT-2's original vocab.json + merges.txt."""
    transformers = transformers_or_skip()
    folder = tmp_path_factory.mktemp("hub") / "gpt2"
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=50257)
    model = hf_noise(transformers.GPT2LMHeadModel(config)).eval()
    model.save_pretrained(str(folder))
    for name, src in gpt2_original_files().items():
        shutil.copy(src, folder / name)
    return {"folder": str(folder), "model": model}


# -----------------------------------------------------------------------------
# export: our checkpoint -> transformers

@pytest.fixture(scope="module", params=[("gpt2", True), ("gpt2", False), ("modern", False), ("modern", True)],
                ids=["gpt2", "gpt2-nobias", "modern", "modern-bias"])
def exported(request, enc, tmp_path_factory):
    """export.py run on a checkpoint of each variant, with and without biases."""
    variant, bias = request.param
    root = tmp_path_factory.mktemp("export")
    model = our_model(enc.n_vocab, variant, bias)
    ckpt = str(root / "model.pt")
    save_checkpoint(ckpt, model, enc)
    out = str(root / "hf")
    export.main([ckpt, out])
    return {"model": model, "ckpt": ckpt, "out": out}


def test_export_loads_in_transformers_with_the_same_logits(exported, enc):
    transformers = transformers_or_skip()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported["out"]).eval()
    ours = exported["model"]
    kind = "GPT2LMHeadModel" if ours.config.variant == "gpt2" else "LlamaForCausalLM"
    assert type(theirs).__name__ == kind
    assert theirs.config.vocab_size == enc.n_vocab  # the padding rows stay behind
    # <|endoftext|> begins and ends a document, for the tools that read config.json rather than generation_config.json
    assert theirs.config.bos_token_id == theirs.config.eos_token_id == enc.encode_single_token(EOT)
    idx = torch.randint(0, enc.n_vocab, (2, 64), generator=torch.Generator().manual_seed(0))
    idx[0, :3] = torch.tensor([enc.encode_single_token(t) for t in (IM_START, IM_END, EOT)])
    with torch.no_grad():
        a, _ = ours(idx)
        b = theirs(idx).logits
    assert a.shape == b.shape == (2, 64, enc.n_vocab)
    assert b.std() > 0.5  # logits large enough for 1e-4 to be a strict test
    assert (a - b).abs().max() < 1e-4


def test_export_tokenizer_gives_the_same_ids(exported, enc):
    transformers = pytest.importorskip("transformers")  # (its tokenizers need no torch)
    tok = transformers.AutoTokenizer.from_pretrained(exported["out"])
    assert tok.eos_token == EOT  # (fine-tuning scripts end each example with it, and pad with it)
    assert tok.model_max_length == exported["model"].config.block_size  # (what truncation=True cuts to)
    for text in TEXTS:
        ids = enc.encode(text, allowed_special="all")
        assert ids_of(tok, text) == ids, text
        assert tok.decode(ids) == text
    assert tok.decode(enc.encode(TEXTS[1], allowed_special="all"), skip_special_tokens=True) == \
        "user\nHi there!\nassistant\nHello :)\nnext"
    # the ChatML tokens are special tokens to transformers too (all_special_ids: what collators and metrics leave out)
    assert set(tok.all_special_tokens) == {EOT, IM_START, IM_END}
    # the ChatML template renders conversations as render_chat does
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"},
                {"role": "assistant", "content": "Hello. 🙂"}, {"role": "user", "content": "Bye"}]
    ids, _ = render_chat(enc, messages, add_generation_prompt=True)
    assert list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]) == ids
    # the one difference (README): the template tokenizes its text whole, render_chat each part apart, so content
    # starting with line breaks that the vocabulary merges with the role's (GPT-2's "\n\n") gets other ids
    odd = [{"role": "user", "content": "\n\nHi"}]
    whole = list(tok.apply_chat_template(odd, tokenize=True)["input_ids"])
    assert whole == enc.encode("<|im_start|>user\n\n\nHi<|im_end|>\n", allowed_special="all")
    merged = enc.encode_ordinary("user\n\n\nHi") != enc.encode_ordinary("user\n") + enc.encode_ordinary("\n\nHi")
    assert (whole != render_chat(enc, odd)[0]) == merged
    # transformers' generate stops at either, and pads a batch's finished rows with <|endoftext|>
    eot, im_end = enc.encode_single_token(EOT), enc.encode_single_token(IM_END)
    with open(os.path.join(exported["out"], "generation_config.json")) as f:
        assert json.load(f) == {"bos_token_id": eot, "pad_token_id": eot, "eos_token_id": [eot, im_end]}


def test_an_exported_folder_is_a_tokenizer_for_prepare(exported, enc, custom_enc, tmp_path):
    """--tokenizer takes a model folder as it takes a checkpoint: data prepared with it fits the model."""
    assert tokenizer_hash(get_tokenizer(exported["out"])) == tokenizer_hash(enc)
    out = str(tmp_path / "custom")
    hf.export_folder(our_model(custom_enc.n_vocab, "modern", False), custom_enc, out)
    assert tokenizer_hash(get_tokenizer(out)) == tokenizer_hash(custom_enc)
    os.mkdir(tmp_path / "empty")
    with pytest.raises(common.UserError, match=r"empty \(a folder without tokenizer.json or vocab.json\) is "
                                               r"not a .tiktoken"):
        get_tokenizer(str(tmp_path / "empty"))
    # a file of the folder (its vocab.json, as other tools take): "not a .tiktoken vocabulary" named no folder
    for name in ("vocab.json", "tokenizer.json", "config.json"):
        path = os.path.join(out, name)
        with pytest.raises(common.UserError, match=rf"^{re.escape(path)} is a file of the Hugging Face model folder "
                                                   rf"{re.escape(out)}: pass the folder itself$"):
            get_tokenizer(path)


def test_export_round_trips_here(exported, enc):
    # the folder reads back as the same model and tokenizer, through the loader every script uses
    model, enc2, ckpt = load_model(exported["out"])
    assert tokenizer_hash(enc2) == tokenizer_hash(enc) and enc2.name == "gpt2"
    # the same config: a gpt2-variant model without biases has none again (HF's GPT-2 holds zeros), so that
    # train.py --init_from does not train biases that fine-tuning the .pt would not have
    assert model.config == exported["model"].config
    idx = torch.randint(0, enc.n_vocab, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], exported["model"](idx)[0])
        # and the same loss (eval.py on either): the padding rows, which the export leaves behind and the loader fills
        # with the mean row, take no part in it
        assert model.lm_head.weight.size(0) > enc.n_vocab
        targets = torch.roll(idx, -1, 1)
        torch.testing.assert_close(model(idx, targets)[1], exported["model"](idx, targets)[1])
    # every file readable as the umask makes files (safetensors alone wrote its own 0600)
    modes = {name: os.stat(os.path.join(exported["out"], name)).st_mode & 0o777 for name in os.listdir(exported["out"])}
    assert len(set(modes.values())) == 1, modes


def test_an_exported_folder_evaluates_in_its_training_windows(enc, tmp_path):
    """eval.py's windows default to the training --block_size, not the context: on the export as on the .pt."""
    data = str(tmp_path / "data")
    write_dataset(data, "story", enc, "gpt2", [d for d in story_text(20_000).split("\n") if d.strip()])
    ckpt = str(tmp_path / "model.pt")
    save_checkpoint(ckpt, our_model(enc.n_vocab), enc, dataset="story", args={"block_size": 16})  # context 64
    folder = str(tmp_path / "hf")
    export.main([ckpt, folder])
    runs = [eval_py.evaluate_checkpoint(p, ["story"], data, samples=0, device="cpu", dtype="float32")
            for p in (ckpt, folder)]
    assert [r["block_size"] for r in runs] == [16, 16]
    assert runs[1]["rows"][0]["loss"] == pytest.approx(runs[0]["rows"][0]["loss"], rel=1e-5)
    # transformers keeps the key it does not know, unused: the folder loads, and saves it again
    transformers = transformers_or_skip()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder)
    theirs.save_pretrained(str(tmp_path / "saved"))
    shutil.copy(os.path.join(folder, "tokenizer.json"), tmp_path / "saved")
    assert load_model(str(tmp_path / "saved"))[2]["args"]["block_size"] == 16


def test_an_exported_folder_is_fine_tuned_at_the_lr_its_checkpoint_would_be(enc, tmp_path):
    """The folder dropped the checkpoint's lr and its fine_tune record: --init_from fine-tuned any export at a third
    of its preset's lr, a fine-tune's too, where the .pt takes a third of its run's lr, or a fine-tune's lr undivided.
    config.json's gpt_trainer carries both; an lr that is not one train.py writes (an edited checkpoint's) is left."""
    model = our_model(enc.n_vocab)
    cases = [({"lr": 1e-2}, {}, (1e-2 / 3, "1/3 of the checkpoint's 0.01")),
             ({"lr": 2e-3}, {"fine_tune": True}, (2e-3, "the fine-tuned checkpoint's, not divided again")),
             ({"lr": "abc"}, {}, None)]
    for i, (args, state, said) in enumerate(cases):
        ckpt = str(tmp_path / f"{i}.pt")
        save_checkpoint(ckpt, model, enc, args=args, **state)
        export.main([ckpt, str(tmp_path / f"hf{i}")])
        pt, folder = (train.fine_tune_lr(load_model(p)[2], None) for p in (ckpt, str(tmp_path / f"hf{i}")))
        assert folder == pt == (said or pt)
        assert said or folder[1].startswith("1/3 of ")  # (no lr recorded: the preset's)


def test_the_command_export_suggests_runs_as_pasted(enc, tmp_path, monkeypatch, capsys):
    """export.py's last line ends with a command that tries the folder: eval.py on the data the checkpoint trained on,
    --dataset (and --data_dir, here datasets/) named, as config.json records neither (a bare `eval.py hf` said "pass
    --dataset NAME"); gen.py for a checkpoint that names no data. Pasted, each runs."""
    monkeypatch.chdir(tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    write_dataset("datasets", "story", enc, "gpt2", [d for d in story_text(20_000).split("\n") if d.strip()])
    model = our_model(enc.n_vocab)
    save_checkpoint("trained.pt", model, enc, dataset="story", args={"block_size": 16, "data_dir": "datasets"})
    save_checkpoint("weights.pt", model, enc)
    cases = [("trained.pt", "hf", "eval.py", ["--dataset", "story", "--data_dir", "datasets"]),
             ("weights.pt", "hf2", "gen.py", [])]
    for ckpt, folder, script, more in cases:
        capsys.readouterr()
        export.main([ckpt, folder])
        command = re.fullmatch(r".*: `(.*)`", capsys.readouterr().out.splitlines()[-1]).group(1)
        pasted = shlex.split(command)
        assert pasted == ["python", os.path.join(root, script), folder, *more], command  # (outside: whole path)
        capsys.readouterr()
        if script == "eval.py":
            eval_py.main(pasted[2:] + ["--samples", "0", "--eval_batches", "1", "--device", "cpu"])
            assert re.search(r"^story +\d+ +\d", capsys.readouterr().out, re.M)
        else:
            gen.main(pasted[2:] + ["--max_tokens", "2", "--device", "cpu", "--seed", "1"])
            assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("variant", ["gpt2", "modern"])
def test_an_exported_models_dropout_reads_back_and_what_llama_lacks_is_said(custom_enc, tmp_path, capsys, variant):
    model = our_model(custom_enc.n_vocab, variant)
    # (not 0.1: GPT-2's own config's dropout, which a config.json written without the model's would hold too)
    model.config = dataclasses.replace(model.config, dropout=0.25)
    ckpt, folder = str(tmp_path / "model.pt"), str(tmp_path / "hf")
    save_checkpoint(ckpt, model, custom_enc)
    code, out, err = run_cli(export.main, [ckpt, folder], capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    if variant == "modern":  # Llama's config has attention dropout only: transformers' fine-tuning would drop less
        assert len(warned) == 1 and "attention dropout only" in warned[0] and "dropout 0.25" in warned[0], err
    else:  # GPT-2's config has all of it (resid_pdrop, embd_pdrop, attn_pdrop)
        assert not warned, err
    # transformers fine-tunes the folder with that dropout, wherever its config has a field for it
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    fields = ("attention_dropout",) if variant == "modern" else ("resid_pdrop", "embd_pdrop", "attn_pdrop")
    assert [config[k] for k in fields] == [0.25] * len(fields)
    # train.py --init_from fine-tunes with the checkpoint config's dropout (unless --dropout), as --checkpoint the .pt
    assert load_model(folder)[2]["config"]["dropout"] == 0.25


def test_biases_trained_since_the_export_are_kept(custom_enc, tmp_path):
    """A gpt2-variant model without biases exports zeros, which read back as none; once transformers has trained
    them (no longer all zero) they are weights of the model, kept."""
    st = pytest.importorskip("safetensors.torch")
    folder = str(tmp_path / "hf")
    hf.export_folder(our_model(custom_enc.n_vocab, "gpt2", bias=False), custom_enc, folder)
    assert not load_model(folder)[0].config.bias
    path = os.path.join(folder, "model.safetensors")
    tensors = st.load_file(path)
    tensors["transformer.h.1.mlp.c_fc.bias"][3] = 0.5
    st.save_file(tensors, path, metadata={"format": "pt"})
    model = load_model(folder)[0]
    assert model.config.bias and model.transformer.h[1].mlp.c_fc.bias[3] == 0.5


def test_export_and_import_need_no_transformers(tmp_path, custom_enc):
    """transformers is a test-only dependency: on a machine with requirements.txt alone export.py writes both layouts
    and the scripts read them back. The modern one with a custom vocabulary, saved here: GPT-2's 50k merges take ~6 s
    to write and read back in pure Python, once is enough."""
    modern = str(tmp_path / "modern.pt")
    save_checkpoint(modern, our_model(custom_enc.n_vocab, "modern"), custom_enc)
    code = ["import sys; sys.modules['transformers'] = None  # any import of it fails",
            "import export; from checkpoint import load_model, save_checkpoint; from model import GPT, make_config",
            "from setup_tokenizer import get_tokenizer; enc = get_tokenizer('gpt2')",
            f"save_checkpoint({str(tmp_path / 'gpt2.pt')!r}, GPT(make_config('tiny', n_layer=1, n_embd=32, n_head=2, "
            f"block_size=32, vocab_size=enc.n_vocab, variant='gpt2')), enc)"]
    for variant in ("gpt2", "modern"):
        ckpt, out = str(tmp_path / f"{variant}.pt"), str(tmp_path / variant)
        code += [f"export.main([{ckpt!r}, {out!r}]); print('read', load_model({out!r})[0].config.variant)"]
    # nor torch._dynamo, whose import was ~2 CPU-s of gen.py's start from a folder (read_folder's shape check on the
    # meta device ran torch's reference code for the init's fills and RoPE's arange)
    code += ["print('imported torch._dynamo:', 'torch._dynamo' in sys.modules)"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", "\n".join(code)], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith("read ")] == ["read gpt2", "read modern"]
    assert "imported torch._dynamo: False" in r.stdout.splitlines()


def test_gpt2_tokenizer_files_are_gpt2s_own(tmp_path, enc):
    # exported for GPT-2's vocabulary, vocab.json and merges.txt are the very files GPT-2 ships, plus ChatML
    files = hf.tokenizer_files(enc, 1024)
    original = gpt2_original_files()
    with open(original["vocab.json"], encoding="utf-8") as f:
        vocab = json.load(f)
    assert json.loads(files["vocab.json"]) == {**vocab, IM_START: 50257, IM_END: 50258}
    with open(original["merges.txt"], encoding="utf-8") as f:
        assert files["merges.txt"].splitlines()[1:] == [line for line in f.read().splitlines()[1:] if line]


def test_custom_vocabulary_exports_with_the_same_ids(custom_enc, tmp_path):
    transformers = pytest.importorskip("transformers")  # (its tokenizers need no torch)
    tokenizers = pytest.importorskip("tokenizers")
    ckpt = str(tmp_path / "custom.pt")
    save_checkpoint(ckpt, our_model(custom_enc.n_vocab, "modern"), custom_enc)
    out = str(tmp_path / "hf")
    export.main([ckpt, out])
    tok = transformers.AutoTokenizer.from_pretrained(out)
    bare = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))  # the tokenizers library alone
    for text in TEXTS:
        ids = custom_enc.encode(text, allowed_special="all")
        assert ids_of(tok, text) == ids, text
        assert bare.encode(text).ids == ids, text
        assert tok.decode(ids) == text
    # and back: the same vocabulary (same ids for every text), under the same name
    enc2, n = hf.read_tokenizer(out)
    assert tokenizer_hash(enc2) == tokenizer_hash(custom_enc) and enc2.name == custom_enc.name \
        and n == custom_enc.n_vocab
    with open(os.path.join(out, "tokenizer.tiktoken"), encoding="utf-8") as f:
        assert f.read() == custom_enc.bpe_text  # for `prepare.py --tokenizer OUT/tokenizer.tiktoken`


def test_a_vocabulary_that_keeps_marks_in_words_exports_with_the_same_ids(tmp_path):
    """A vocabulary trained with setup_tokenizer.MARKS_PATTERN cuts text where GPT-2's regex does not (a Hindi vowel
    sign stays in its word): tokenizer.json splits with that pattern (ByteLevel's own regex would give other ids), and
    only tokenizer.json is written (GPT2Tokenizer's vocab.json and merges.txt are cut with GPT-2's regex)."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    hindi = "मेरा नाम राम है। मैं भारत में रहता हूँ। "
    marks_enc = train_bpe([story_text(20_000) + (hindi + "สวัสดีครับ ภาษาไทย ") * 100], 500,
                          str(tmp_path / "v.tiktoken"))
    assert marks_enc._pat_str == setup_tokenizer.MARKS_PATTERN
    ckpt, out = str(tmp_path / "m.pt"), str(tmp_path / "hf")
    save_checkpoint(ckpt, our_model(marks_enc.n_vocab), marks_enc)
    export.main([ckpt, out])
    assert not {"vocab.json", "merges.txt"} & set(os.listdir(out))
    tok = transformers.AutoTokenizer.from_pretrained(out)
    bare = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    for text in TEXTS + [hindi, "العَرَبِيَّة cafe\u0301 ❤\ufe0f x\u0301\u0302 3\u0301 !\u0301  \u0301a  "
                                "b\n\n c's 'll"]:
        ids = marks_enc.encode(text, allowed_special="all")
        assert ids_of(tok, text) == ids and bare.encode(text).ids == ids, text
    enc2, _ = hf.read_tokenizer(out)
    assert tokenizer_hash(enc2) == tokenizer_hash(marks_enc)
    # without tokenizer_config.json (a download of config.json, model.safetensors and tokenizer.json alone)
    # AutoTokenizer takes GPT2Tokenizer for model_type gpt2, which builds its own pipeline and cuts with GPT-2's regex
    # whatever tokenizer.json says: other ids than the vocabulary's, so the folder is refused, not read with other
    # tokens
    bare_folder = str(tmp_path / "no-tokenizer-config")
    shutil.copytree(out, bare_folder)
    os.remove(os.path.join(bare_folder, "tokenizer_config.json"))
    assert ids_of(transformers.AutoTokenizer.from_pretrained(bare_folder), hindi) != marks_enc.encode(hindi)
    with pytest.raises(common.UserError, match=r"tokenizer.json: transformers' GPT2Tokenizer "
                                               r"\(config.json's model_type "
                                               r"gpt2, with no tokenizer_class in tokenizer_config.json\) "
                                               r"cuts text with "
                                               r"GPT-2's regex, but its tokens are those of combining marks kept"):
        hf.read_tokenizer(bare_folder)
    # a folder whose pre-tokenizer and tokens disagree converts to no vocabulary: other ids than transformers'
    tok_json = json.loads(open(os.path.join(out, "tokenizer.json"), encoding="utf-8").read())
    tok_json["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                 "use_regex": True}
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok_json, f)
    with pytest.raises(common.UserError, match="cuts text with GPT-2's regex, but its tokens are those of "
                                               "combining marks kept"):
        hf.read_tokenizer(out)


# -----------------------------------------------------------------------------
# import: a Hugging Face GPT-2 folder -> here

def test_hub_gpt2_imports_with_the_same_logits(hub_gpt2, enc):
    model, enc2, ckpt = load_model(hub_gpt2["folder"])
    # GPT-2's own files give the gpt2 tokenizer, ChatML tokens added: data prepared with gpt2 fits it
    assert enc2.name == "gpt2" and tokenizer_hash(enc2) == tokenizer_hash(enc)
    assert model.config.vocab_size == 50259 and model.config.block_size == 64
    # and its files (vocab.json + merges.txt, no tokenizer.json) are a --tokenizer for prepare.py: gpt2, its context 64
    assert get_tokenizer(hub_gpt2["folder"]).name == "gpt2" and setup_tokenizer.model_context(hub_gpt2["folder"]) == 64
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(idx)  # (2, 64, 50259)
        theirs = hub_gpt2["model"](idx).logits  # (2, 64, 50257)
    assert theirs.std() > 0.5
    assert (ours[..., :50257] - theirs).abs().max() < 1e-4
    # the two ChatML rows start at the mean embedding: their logit is the mean logit, so they take at most
    # 2/50257 of the probability and the imported model predicts what GPT-2 predicted
    wte = model.transformer.wte.weight
    assert torch.allclose(wte[50257:50259], wte[:50257].mean(0).expand(2, -1), atol=1e-6)
    probs = ours.softmax(-1)
    assert probs[..., 50257:].sum(-1).max() <= 2 / 50257 + 1e-6


def test_hub_gpt2_tokenizer_reads_offline_with_the_same_ids(hub_gpt2, enc, monkeypatch):
    """GPT-2's tokenizer files read as the named gpt2 tokenizer; offline without tiktoken's GPT-2 files (get_tokenizer
    refuses), the folder's own files are the vocabulary, with the same ids: the folder still loads."""
    def offline(name):
        raise common.UserError("cannot load the GPT-2 BPE files (offline?)")
    monkeypatch.setattr(hf, "get_tokenizer", offline)
    own, n_hf = hf.read_tokenizer(hub_gpt2["folder"])
    assert n_hf == 50257 and own.name != "gpt2"
    for text in TEXTS:
        assert own.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all"), text


def test_hub_layout_without_prefix_and_with_mask_buffers(hub_gpt2, tmp_path):
    # GPT-2 on the hub was saved from GPT2Model: names without "transformer.", plus the causal-mask buffers
    # older transformers saved ("h.0.attn.bias", "h.0.attn.masked_bias", as the hub's pytorch_model.bin has); and
    # it has a tokenizer.json besides vocab.json + merges.txt, here as transformers writes one. All of it reads as
    # the same model and the gpt2 tokenizer.
    transformers = transformers_or_skip()
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "gpt2"
    shutil.copytree(hub_gpt2["folder"], folder)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, str(folder / "model.safetensors"))
    transformers.AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    assert (folder / "tokenizer.json").exists()
    a, _, _ = load_model(hub_gpt2["folder"])
    b, enc_b, _ = load_model(str(folder))
    assert enc_b.name == "gpt2"
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_llama_folder_imports_with_the_same_logits(tmp_path, enc):
    # a LlamaForCausalLM made by transformers, in the shape model.py's modern variant has
    transformers = transformers_or_skip()
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4, max_position_embeddings=64, vocab_size=50257,
                                      rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=True, mlp_bias=True)
    theirs = hf_noise(transformers.LlamaForCausalLM(config)).eval()
    folder = str(tmp_path / "llama")
    theirs.save_pretrained(folder)
    for name, src in gpt2_original_files().items():
        shutil.copy(src, os.path.join(folder, name))
    model, _, _ = load_model(folder)
    assert model.config.variant == "modern" and model.config.bias
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(idx)[0][..., :50257] - theirs(idx).logits).abs().max() < 1e-4


def test_gen_samples_from_an_hf_folder(hub_gpt2, enc, capsys):
    # greedy: gen.py on the folder writes what transformers' own greedy search generates
    prompt = "Once upon a time"
    code, out, err = run_cli(gen.main, [hub_gpt2["folder"], "--prompt", prompt, "--temp", "0", "--max_tokens", "12",
                                        "--seed", "1", *CPU], capsys)
    assert code == 0, err
    ids = torch.tensor([enc.encode(prompt)])
    with torch.no_grad():
        new = hub_gpt2["model"].generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=50256)[0, ids.size(1):]
    assert out == prompt + enc.decode(new.tolist()) + "\n"


def test_init_from_fine_tunes_a_gpt2_folder(hub_gpt2, enc, tmp_path, capsys):
    data = str(tmp_path / "data")
    text = story_text(60_000)
    docs = [d for d in text.split("\n") if d.strip()]
    write_dataset(data, "story", enc, "gpt2", docs)
    start, _, _ = load_model(hub_gpt2["folder"])
    val = train.Windows(train.load_meta(data, "story"), "val", 64)
    before = train.evaluate(start, val, 8, 4 * 8, torch.device("cpu"), torch.float32)
    out = tmp_path / "models"
    s = train.train(train.parse_args(["--init_from", hub_gpt2["folder"], "--data_dir", data, "--dataset", "story",
                                      "--output_checkpoint", str(out / "{dataset}.pt"), "--max_steps", "15",
                                      "--batch_size", "4", "--eval_batches", "4", "--eval_interval", "0",
                                      "--no-color", *CPU]))
    assert s["run_steps"] == 15
    tuned, enc2, ckpt = load_model(s["checkpoint"])
    assert enc2.name == "gpt2" and ckpt["args"]["init_from"] == hub_gpt2["folder"]
    after = train.evaluate(tuned, val, 8, 4 * 8, torch.device("cpu"), torch.float32)
    assert after < before - 0.5, (before, after)  # (11.06 -> 9.91 here: 4 windows a step)
    # the fine-tuned checkpoint is an ordinary one: gen.py samples from it
    capsys.readouterr()  # train.py's log
    code, out_text, err = run_cli(gen.main, [s["checkpoint"], "--prompt", "Once", "--max_tokens", "5", "--seed", "1",
                                             *CPU], capsys)
    assert code == 0 and out_text.startswith("Once"), err


# -----------------------------------------------------------------------------
# bad input: one line naming the fix

@pytest.fixture(scope="module")
def small_folder(custom_enc, tmp_path_factory):
    """A valid HF folder (our export of a 400-id model) that the error tests copy and break."""
    root = tmp_path_factory.mktemp("bad")
    ckpt = str(root / "model.pt")
    save_checkpoint(ckpt, our_model(custom_enc.n_vocab), custom_enc)
    out = str(root / "hf")
    export.main([ckpt, out])
    return {"ckpt": ckpt, "folder": out}


def test_prepare_pys_train_line_fine_tunes_the_model_folder_its_vocabulary_came_from(small_folder, tmp_path,
                                                                                   monkeypatch, capsys):
    """A set made in a Hugging Face model folder's vocabulary (--tokenizer FOLDER): prepare.py's "train on it:" line
    is the fine-tune of that folder, --init_from (--checkpoint takes .pt files), at the folder's context (64), and
    pasted it trains on that set."""
    import prepare
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text(story_text(20_000), encoding="utf-8")
    prepare.main(["--dataset", "text", "--source", "notes.txt", "--name", "notes",
                  "--tokenizer", small_folder["folder"], "--out_dir", "sets"])
    line = capsys.readouterr().out.splitlines()[-1]
    argv = shlex.split(re.fullmatch(r"  train on it: (.*)", line).group(1))
    assert argv[2:] == ["--dataset", "notes", "--data_dir", "sets", "--init_from", small_folder["folder"]], line
    r = train.train(train.parse_args(argv[2:] + ["--max_steps", "1", "--eval_batches", "1", "--device", "cpu",
                                                 "--output_checkpoint", "models/{dataset}.pt"]))
    assert r["steps"] == 1 and torch.load(r["checkpoint"], weights_only=True)["data"]["folder"] == \
        os.path.join("sets", "notes")


def broken(small_folder, tmp_path, change):
    folder = tmp_path / "broken"
    shutil.copytree(small_folder["folder"], folder)
    change(folder)
    return str(folder)


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_config(**kv):
    def change(folder):
        config = json.loads((folder / "config.json").read_text())
        config.update(kv)
        (folder / "config.json").write_text(json.dumps(config))
    return change


def as_bin(folder):
    """The folder's weights as older downloads hold them: pytorch_model.bin, no model.safetensors."""
    from safetensors.torch import load_file
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def as_shards(folder):
    """The folder's weights in two shards and their index, as the hub holds a large model's."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {f"model-0000{k + 1}-of-00002.safetensors": names[k::2] for k in range(2)}
    for shard, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {n: shard for shard, part in shards.items() for n in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def special_at(token, i):
    def change(t):
        for added in t["added_tokens"]:
            if added["content"] == token:
                added["id"] = t["model"]["vocab"][token] = i
    return lambda f: edit_json(f / "tokenizer.json", change)


def add_weight(folder, name):
    st = pytest.importorskip("safetensors.torch")
    tensors = st.load_file(str(folder / "model.safetensors"))
    st.save_file({**tensors, name: torch.zeros(2, 64)}, str(folder / "model.safetensors"))


def cut_embedding(folder, rows):
    st = pytest.importorskip("safetensors.torch")
    tensors = st.load_file(str(folder / "model.safetensors"))
    tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][:rows].clone()
    st.save_file(tensors, str(folder / "model.safetensors"))


def merges(change):
    return lambda f: edit_json(f / "tokenizer.json", lambda t: t["model"].update(merges=change(t["model"]["merges"])))


@pytest.mark.parametrize("change, words", [
    # weights and tokenizer without config.json (a download that left it out): the file to copy, not "train one"
    (lambda f: (f / "config.json").unlink(), "broken holds model.safetensors but no config.json, which gives the "
                                             "model's shape: copy config.json from the model's download next to it"),
    (lambda f: (f / "config.json").write_text("{not json"), "not readable JSON"),
    (edit_config(model_type="bert", architectures=["BertForMaskedLM"]), "model_type 'bert'"),
    # architectures as a string (not config.json's list): its name, not "B, e, r, t, ..."
    (edit_config(model_type="bert", architectures="BertForMaskedLM"), "model_type 'bert' (BertForMaskedLM) is not "
                                                                      "supported"),
    (edit_config(model_type="bert", architectures=5), "model_type 'bert' is not supported"),  # (a TypeError traceback)
    (edit_config(activation_function="relu"), "activation_function"),
    # exact GELU: close to model.py's tanh approximation, but other logits (by ~1e-3)
    (edit_config(activation_function="gelu"), "activation_function 'gelu' is not GELU's tanh approximation"),
    (lambda f: (f / "model.safetensors").unlink(), "has no weights"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc"),
     "not a readable safetensors"),
    (edit_config(n_positions=128), "has shape (64, 64) but config.json implies (128, 64); copy the folder again"),
    # shapes past the machine's memory are read on the meta device: the shape line, not model.py's MemoryError
    (edit_config(n_embd=100000), "config.json implies a model that does not fit in memory"),
    (edit_config(n_layer=10**11), "config.json implies a model that does not fit in memory"),  # (it ran for hours)
    (edit_config(n_layer=3), "do not match"),
    (edit_config(vocab_size=300), "the tokenizer has 400 ids but the model only 300 embedding rows (another model's "
                                  "tokenizer files?): copy them again from the model's download"),
    # one row short, config and weights agreeing: the same line, not a traceback where the rows are laid out
    (lambda f: (edit_config(vocab_size=399)(f), cut_embedding(f, 399)), "the tokenizer has 400 ids but the model only "
                                                                       "399 embedding rows"),
    (lambda f: [(f / n).unlink() for n in ("tokenizer.json", "vocab.json", "merges.txt")], "no tokenizer files"),
    # a space put before the text: other ids than transformers' (it was imported without a word). The generic fast
    # class takes tokenizer.json's setting, GPT-2's classes tokenizer_config.json's
    (lambda f: [edit_json(f / "tokenizer.json", lambda t: t["pre_tokenizer"].update(add_prefix_space=True)),
                edit_json(f / "tokenizer_config.json", lambda t: t.update(tokenizer_class="PreTrainedTokenizerFast"))],
     "tokenizer.json: add_prefix_space is set"),
    (lambda f: edit_json(f / "tokenizer_config.json", lambda t: t.update(add_prefix_space=True)),
     "add_prefix_space is set"),
    (lambda f: [(f / "tokenizer.json").unlink(), edit_json(f / "tokenizer_config.json",
                                                           lambda t: t.update(add_prefix_space=True))],
     "add_prefix_space is set"),
    # a shard index that is JSON but not an index (an AttributeError or TypeError traceback)
    (lambda f: [(f / "model.safetensors").unlink(), (f / "model.safetensors.index.json").write_text("[1]")],
     "model.safetensors.index.json has no weight_map of tensor names to file names"),
    (lambda f: [(f / "model.safetensors").unlink(),
                (f / "model.safetensors.index.json").write_text('{"weight_map": {"a": 5}}')],
     "model.safetensors.index.json has no weight_map"),
    # a shard named outside the folder (a stranger's index): not read from elsewhere on the machine
    (lambda f: [as_shards(f), edit_json(f / "model.safetensors.index.json", lambda i: i["weight_map"].update(
        {n: "../model-00002-of-00002.safetensors" for n, s in i["weight_map"].items() if s.startswith("model-00002")}
    ))], "model.safetensors.index.json names a shard outside the folder ('../model-00002-of-00002.safetensors')"),
    (lambda f: [as_shards(f), (f / "model-00002-of-00002.safetensors").unlink()],
     "has no weights (model-00002-of-00002.safetensors, or pytorch_model.bin)"),
    (lambda f: [as_bin(f), (f / "pytorch_model.bin").write_bytes(b"PK\x03\x04 cut short")],
     "pytorch_model.bin is not a readable state dict"),
    (lambda f: [as_bin(f), torch.save([1, 2], f / "pytorch_model.bin")], "pytorch_model.bin holds no state dict"),
    # tokenizers that are not GPT-2's byte-level BPE, or whose ids tiktoken would not give (Llama 2's SentencePiece
    # BPE, a model's own special tokens, SmolLM's <|endoftext|> at id 0): refused, not imported with other ids
    (lambda f: edit_json(f / "tokenizer.json", lambda t: t.update(pre_tokenizer={"type": "Metaspace"})),
     "tokenizer.json is not GPT-2-style byte-level BPE (model BPE, pre-tokenizer Metaspace)"),
    (lambda f: edit_json(f / "tokenizer.json", lambda t: t["model"]["vocab"].update({"\u2581the": 400})),
     "token '\u2581the' is not spelled in GPT-2's byte alphabet"),
    (lambda f: edit_json(f / "tokenizer.json", lambda t: t["added_tokens"].append({"id": 401, "content": "[PAD]"})),
     "added tokens ['[PAD]'] are not among"),
    (special_at("<|endoftext|>", 0), "<|endoftext|> has id 0, but this project's tokenizers put it at"),
    (lambda f: edit_json(f / "tokenizer.json", lambda t: [t.update(added_tokens=t["added_tokens"][1:]),
                                                          t["model"]["vocab"].pop("<|endoftext|>")]),
     "<|endoftext|> is missing while later special tokens are there"),
    (lambda f: edit_json(f / "tokenizer.json", lambda t: t["model"].update(vocab={
        k: v + (v >= 300 and k not in hf.SPECIAL_TOKENS) for k, v in t["model"]["vocab"].items()})),
     "the byte-level token ids must be 0..396 and cover all 256 bytes"),
    (merges(lambda m: [m[1], m[0], *m[2:]]), "is out of id order or makes no token of the vocabulary"),
    (merges(lambda m: m[:-1]), "merges for"),
    (merges(lambda m: 5), "the tokenizer files are malformed (TypeError"),  # JSON of another shape: no traceback
    # export.py's own settings, edited past the context: eval.py's windows would be refused as longer than it
    (edit_config(gpt_trainer={"block_size": 128}), "gpt_trainer's block_size 128 is not what export.py writes (the "
                                                   "context is 64): remove gpt_trainer from it"),
    (edit_config(gpt_trainer=[64]), "config.json: gpt_trainer is not an object: remove gpt_trainer from it"),
    (edit_config(gpt_trainer={"dropout": 1.5}), "gpt_trainer's dropout 1.5 is not what export.py writes"),
    (edit_config(gpt_trainer={"lr": "abc"}), "gpt_trainer's lr 'abc' is not what export.py writes"),
    (edit_config(gpt_trainer={"fine_tune": 1}), "gpt_trainer's fine_tune 1 is not what export.py writes"),
    # JSON, but not an object: an AttributeError traceback at its first .get otherwise
    (lambda f: (f / "config.json").write_text("[1]"), "config.json is not a model config (a JSON object)"),
    # settings model.py refuses (GPTConfig's ValueError): one line naming config.json
    (edit_config(n_head=3), "config.json: n_embd (64) must be divisible by n_head (3)"),
    # a setting of the wrong type: named as config.json names it, with the way out (model.py's check had no way out,
    # and math.isclose's TypeError named no setting: "config.json: must be real number, not str")
    (edit_config(n_layer="2"), "config.json: n_layer must be a positive int, got '2': copy config.json again from the "
                               "model's download"),
    (edit_config(layer_norm_epsilon="1e-5"), "config.json: layer_norm_epsilon must be a number, got '1e-5': copy "
                                             "config.json again"),
    # a Llama config without a setting it must have (it has no default): one line naming it
    (edit_config(model_type="llama", architectures=["LlamaForCausalLM"]), "config.json lacks hidden_size: copy "
                                                                         "config.json again from the model's download"),
    # a tokenizer class whose choice between the two files is not known: tokenizer_config.json's space counts too
    (lambda f: edit_json(f / "tokenizer_config.json", lambda t: t.update(tokenizer_class="SomeOtherTokenizerFast",
                                                                          add_prefix_space=True)),
     "tokenizer_config.json: add_prefix_space is set"),
    # a class that builds its own pipeline from the vocabulary, whatever tokenizer.json says, and not a tiktoken one
    # (GPTNeoXTokenizer composes accents first: "cafe\u0301" got other ids in transformers than here)
    (lambda f: edit_json(f / "tokenizer_config.json", lambda t: t.update(tokenizer_class="GPTNeoXTokenizerFast")),
     "transformers reads its tokenizer as GPTNeoXTokenizer (tokenizer_config.json's tokenizer_class "
     "GPTNeoXTokenizerFast), which builds a pipeline of its own from the vocabulary, not a tiktoken one"),
    # GPT-2 settings model.py lacks: the ones that keep every shape imported without a word, with other logits; the
    # others were refused by a shape, "copy the folder again", where the download is fine
    (edit_config(layer_norm_epsilon=1e-6), "layer_norm_epsilon 1e-06 is not model.py's 1e-05"),
    (edit_config(scale_attn_by_inverse_layer_idx=True), "the attention scaling is not 1/sqrt(head_dim)"),
    (edit_config(scale_attn_weights=False), "the attention scaling is not 1/sqrt(head_dim)"),
    (edit_config(add_cross_attention=True), "it has cross-attention"),
    (edit_config(n_inner=128), "n_inner 128 is not 4 * n_embd"),
    # a classifier saved by transformers (GPT2ForSequenceClassification: GPT-2 and a score head): whole, not damaged,
    # where "copy the folder again from the download" was the way out
    (lambda f: (edit_config(architectures=["GPT2ForSequenceClassification"])(f), add_weight(f, "score.weight")),
     "config.json's architectures is GPT2ForSequenceClassification, not a language model alone (GPT2LMHeadModel, "
     "GPT2Model, LlamaForCausalLM, LlamaModel): its weights ['score.weight'] have no place in this project's models"),
    # weights the config has no place for (a layer more than n_layer): not left behind, a model cut short
    (edit_config(n_layer=1), "unexpected ['transformer.h.1."),
    # a merge listed twice in place of the next one: that token's id never came out of transformers, here it did
    (merges(lambda m: [m[0], m[0], *m[2:]]), "is out of id order or makes no token of the vocabulary"),
], ids=["no-config", "bad-json", "bert", "bert-architectures-string", "bert-architectures-number", "relu",
        "gelu-exact", "no-weights", "corrupt-weights", "shape", "huge", "huge-layers", "layers", "vocab",
        "vocab-one-short", "no-tokenizer", "prefix-space", "prefix-space-config", "prefix-space-vocab", "index-list",
        "index-map", "shard-outside", "shard-missing", "bin-corrupt", "bin-no-dict", "sentencepiece", "not-byte-level",
        "unknown-special", "special-id", "special-missing", "id-gap", "merge-order", "merge-missing",
        "merges-malformed", "own-block", "own-not-object", "own-dropout", "own-lr", "own-fine-tune",
        "config-not-object", "config-refused", "config-text-layers", "config-text-eps", "llama-key-missing",
        "prefix-space-unknown-class", "own-pipeline-class", "layer-norm-eps", "scale-by-layer", "unscaled",
        "cross-attention", "n-inner", "classifier", "weights-beyond-config", "merge-twice"])
def test_bad_folders_are_one_line_errors(small_folder, tmp_path, capsys, change, words):
    folder = broken(small_folder, tmp_path, change)
    line = one_error_line(*run_cli(gen.main, [folder, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)[::2])
    assert words in line, line


def test_without_safetensors_a_folder_and_an_export_say_what_to_install(small_folder, tmp_path, capsys, monkeypatch):
    """safetensors comes with transformers but is not torch's: where it is missing, a model folder and an export are
    one line naming the package, not an ImportError traceback."""
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import safetensors.torch: ImportError
    want = "error: Hugging Face weights need the safetensors package: pip install safetensors (or make install)"
    assert one_error_line(*run_cli(gen.main, [small_folder["folder"], "--prompt", "x", "--max_tokens", "1", *CPU],
                                   capsys)[::2]) == want
    assert one_error_line(*run_cli(export.main, [small_folder["ckpt"], str(tmp_path / "hf")], capsys)[::2]) == want
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("layout", [as_bin, as_shards], ids=["pytorch_model.bin", "shards"])
def test_older_and_sharded_weight_files_read_as_the_same_model(small_folder, tmp_path, layout):
    """A folder as older downloads hold it (pytorch_model.bin, read with weights_only) or as the hub holds a large
    model (shards named by model.safetensors.index.json) reads as the same model as model.safetensors gives."""
    model, _, _ = load_model(small_folder["folder"])
    other, _, _ = load_model(broken(small_folder, tmp_path, layout))
    assert model.state_dict().keys() == other.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k


def test_embedding_rows_no_token_reaches_are_left_behind(small_folder, tmp_path):
    # an embedding padded beyond the tokenizer (nanoGPT's 50304 rows for GPT-2's 50257 ids) reads as the same model:
    # the rows no id reaches are dropped, and this model's padding rows start at the mean of the tokenizer's rows only
    st = pytest.importorskip("safetensors.torch")

    def pad(folder):
        path = str(folder / "model.safetensors")
        tensors = st.load_file(path)
        wte = tensors["transformer.wte.weight"]
        tensors["transformer.wte.weight"] = torch.cat([wte, torch.full((24, wte.size(1)), 100.0)])
        st.save_file(tensors, path, metadata={"format": "pt"})
        edit_config(vocab_size=wte.size(0) + 24)(folder)
    a, b = load_model(small_folder["folder"])[0], load_model(broken(small_folder, tmp_path, pad))[0]
    assert a.config == b.config
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_a_file_of_a_model_folder_given_as_the_checkpoint_names_the_folder(small_folder, tmp_path, capsys, monkeypatch):
    """torch.load reads model.safetensors as a state dict: export.py's weights given for the model said "not a
    checkpoint of this project ...; train one with train.py" (and its config.json "corrupt, or not written by
    torch.save?")."""
    for name in ("model.safetensors", "config.json"):
        path = os.path.join(small_folder["folder"], name)
        line = one_error_line(*run_cli(gen.main, [path, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)[::2])
        assert line == f"error: {path} is a file of the Hugging Face model folder {small_folder['folder']}: pass the " \
                       f"folder itself", line
    # a checkpoint kept in the folder is a checkpoint still; a tokenizer.json away from any config.json is no folder's
    folder = broken(small_folder, tmp_path, lambda f: shutil.copy(small_folder["ckpt"], f / "model.pt"))
    code, out, err = run_cli(gen.main, [os.path.join(folder, "model.pt"), "--prompt", "x", "--max_tokens", "1", *CPU],
                             capsys)
    assert code == 0, err
    (tmp_path / "loose").mkdir()
    shutil.copy(os.path.join(small_folder["folder"], "tokenizer.json"), tmp_path / "loose")
    path = str(tmp_path / "loose" / "tokenizer.json")
    line = one_error_line(*run_cli(gen.main, [path, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)[::2])
    assert line.startswith(f"error: {path} is not a checkpoint"), line
    # weights away from their config.json: torch.load read them with safetensors, whose error was a traceback
    shutil.copy(os.path.join(small_folder["folder"], "model.safetensors"), tmp_path / "loose")
    (tmp_path / "loose" / "cut.safetensors").write_bytes(b"xx")
    for name in ("model.safetensors", "cut.safetensors"):
        path = str(tmp_path / "loose" / name)
        line = one_error_line(*run_cli(gen.main, [path, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)[::2])
        assert line.startswith(f"error: {path} is a safetensors file with no Hugging Face model folder"), line
    # named from inside the folder (gen.py model.safetensors there): the same line, naming the current folder
    monkeypatch.chdir(small_folder["folder"])
    line = one_error_line(*run_cli(gen.main, ["model.safetensors", "--prompt", "x", "--max_tokens", "1", *CPU],
                                   capsys)[::2])
    assert line == "error: model.safetensors is a file of the Hugging Face model folder .: pass the folder itself", line


def test_no_output_replaces_an_exported_vocabulary(small_folder, tmp_path, capsys):
    """export.py writes a custom vocabulary as tokenizer.tiktoken beside config.json (for prepare.py --tokenizer);
    setup_tokenizer.py train --out over it replaced it with another vocabulary, where the README promises that no
    output option writes over a model's files."""
    import setup_tokenizer
    folder = broken(small_folder, tmp_path, lambda f: None)
    vocab = os.path.join(folder, "tokenizer.tiktoken")
    before = open(vocab, encoding="utf-8").read()
    text = tmp_path / "in.txt"
    text.write_text("the cat sat on the mat " * 50)
    line = one_error_line(*run_cli(setup_tokenizer.main, ["train", "--input", str(text), "--vocab_size", "300",
                                                          "--out", vocab], capsys)[::2])
    assert line == f"error: --out {vocab} is a file of the model folder {os.path.realpath(folder)}: the result would " \
                   f"replace it; give another --out", line
    assert open(vocab, encoding="utf-8").read() == before
    # nor a dataset prepared into the model's folder (--out_dir and --name naming it): its vocabulary was replaced
    # by the dataset's own and the token files laid beside the weights
    import prepare
    files = sorted(os.listdir(folder))
    line = one_error_line(*run_cli(prepare.main, ["--dataset", "text", "--source", str(text), "--vocab_size", "300",
                                                  "--out_dir", os.path.dirname(folder), "--name",
                                                  os.path.basename(folder)], capsys)[::2])
    assert line == f"error: {folder} is a Hugging Face model folder (it has a config.json), not a dataset's: pick " \
                   f"another --name or --out_dir", line
    assert open(vocab, encoding="utf-8").read() == before and sorted(os.listdir(folder)) == files


def test_a_prefix_space_that_codegens_config_sets_is_refused(small_folder, tmp_path, capsys):
    """CodeGen's, GPT-NeoX's and Qwen2's classes take tokenizer_config.json's setting as GPT-2's do: accepted
    silently, such a folder gave other ids than transformers'."""
    folder = broken(small_folder, tmp_path, lambda f: edit_json(
        f / "tokenizer_config.json", lambda t: t.update(tokenizer_class="CodeGenTokenizer", add_prefix_space=True)))
    line = one_error_line(*run_cli(gen.main, [folder, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)[::2])
    assert "tokenizer_config.json: add_prefix_space is set" in line, line


def test_a_prefix_space_that_transformers_overrides_is_no_refusal(small_folder, tmp_path, capsys):
    """GPT-2's tokenizer classes take tokenizer_config.json's add_prefix_space (false) over tokenizer.json's:
    transformers puts no space before the text, so neither does the import, and the folder loads."""
    folder = broken(small_folder, tmp_path, lambda f: edit_json(
        f / "tokenizer.json", lambda t: t["pre_tokenizer"].update(add_prefix_space=True)))
    code, out, err = run_cli(gen.main, [folder, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)
    assert code == 0, err
    # Llama's class loads as the generic backend, which reads tokenizer.json's setting alone
    folder = broken(small_folder, tmp_path / "llama", lambda f: edit_json(
        f / "tokenizer_config.json", lambda t: t.update(tokenizer_class="LlamaTokenizerFast", add_prefix_space=True)))
    code, out, err = run_cli(gen.main, [folder, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)
    assert code == 0, err


def test_llama_settings_model_py_lacks_are_refused(small_folder, tmp_path, custom_enc, capsys):
    ckpt = str(tmp_path / "modern.pt")
    save_checkpoint(ckpt, our_model(custom_enc.n_vocab, "modern"), custom_enc)
    export.main([ckpt, str(tmp_path / "llama")])
    folder = tmp_path / "llama"
    # the value found and model.py's (it said "is not 10000" whatever model.py's ROPE_THETA)
    for change, words in ((dict(num_key_value_heads=1), "GQA"),
                          (dict(rope_theta=500000.0), "RoPE's base (rope_theta) 500000.0 is not model.py's 10000"),
                          (dict(rms_norm_eps=1e-6), "rms_norm_eps 1e-06 is not model.py's 1e-05"),
                          (dict(intermediate_size=256), "intermediate_size"),
                          (dict(rope_parameters=[1]), "rope_parameters is not an object"),
                          # scaled RoPE (Llama 3.1's, older configs' rope_scaling), another activation: the same
                          # shapes, so without the check another model, imported without a word
                          (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "it scales RoPE"),
                          (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
                           "it scales RoPE"),
                          (dict(hidden_act="gelu"), "hidden_act 'gelu' is not silu"),
                          # other shapes: the setting named, not "copy the folder again" for a shape
                          (dict(head_dim=32), "head_dim is not hidden_size / num_attention_heads"),
                          (dict(mlp_bias=False), "attention_bias and mlp_bias differ"),
                          # untied with no lm_head.weight: transformers gives the head random values, ours would tie
                          # it, two models (it loaded without a word); a Llama config without the key is untied too
                          (dict(tie_word_embeddings=False), "the embeddings are untied (tie_word_embeddings false)"),
                          (dict(tie_word_embeddings=None), "the embeddings are untied (no tie_word_embeddings, which "
                                                           "for llama means untied)"),
                          # (a ZeroDivisionError traceback)
                          (dict(num_attention_heads=0, num_key_value_heads=None), "num_attention_heads must be a "
                                                                                   "positive int, got 0"),
                          # by config.json's names, not model.py's (it said "n_layer", "block_size"), with the way out
                          (dict(num_hidden_layers="2"), "config.json: num_hidden_layers must be a "
                                                        "positive int, got '2': "
                                                        "copy config.json again from the model's download"),
                          (dict(max_position_embeddings=64.0), "max_position_embeddings must be a positive int, got "
                                                               "64.0: copy config.json again"),
                          (dict(rms_norm_eps="1e-5"), "rms_norm_eps must be a number, got '1e-5': copy config.json "
                                                      "again")):
        config = json.loads((folder / "config.json").read_text())
        changed = {k: v for k, v in {**config, **change}.items() if v is not None}
        (folder / "config.json").write_text(json.dumps(changed))
        line = one_error_line(*run_cli(gen.main, [str(folder), "--prompt", "x", *CPU], capsys)[::2])
        assert words in line, line
        (folder / "config.json").write_text(json.dumps(config))


def test_export_refuses_to_clobber(small_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = one_error_line(*run_cli(export.main, [small_folder["ckpt"], str(out)], capsys)[::2])
    # (check_out_dir's line, before the load: not the rename's, after it, which blames another export)
    assert line == f"error: {out} already exists and is a folder that is not empty: choose a new OUT_DIR or remove " \
                   f"it first", line
    (tmp_path / "file.json").write_text("{}")  # a file was called "not an empty folder"
    line = one_error_line(*run_cli(export.main, [small_folder["ckpt"], str(tmp_path / "file.json")], capsys)[::2])
    assert line == f"error: {tmp_path / 'file.json'} already exists and is a file: choose a new OUT_DIR or remove it " \
                   f"first", line
    os.remove(tmp_path / "file.json")
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    line = one_error_line(*run_cli(export.main, [str(tmp_path / "nope.pt"), str(tmp_path / "x")], capsys)[::2])
    assert "nope.pt" in line and "not found" in line
    # a model folder next to it is one to offer (it said "no checkpoints in hf/ yet" beside an export)
    shutil.copytree(small_folder["folder"], tmp_path / "hf-model")
    # (not the temporary folder an export killed mid-write left, its config.json written first)
    shutil.copytree(small_folder["folder"], tmp_path / "hf-model.4242.tmp")
    line = one_error_line(*run_cli(export.main, [str(tmp_path / "nope"), str(tmp_path / "x")], capsys)[::2])
    assert line.endswith(f"not found; available: {tmp_path / 'hf-model'}"), line
    shutil.rmtree(tmp_path / "hf-model")
    shutil.rmtree(tmp_path / "hf-model.4242.tmp")
    # an empty folder is fine, and no temporary folder is left next to it; so is a new one named with a final /
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out_text, err = run_cli(export.main, [small_folder["ckpt"], str(empty)], capsys)
    assert code == 0 and "config.json" in os.listdir(empty), err
    code, out_text, err = run_cli(export.main, [small_folder["ckpt"], f"{tmp_path}/new/"], capsys)
    assert code == 0 and "config.json" in os.listdir(tmp_path / "new"), err
    code, out_text, err = run_cli(export.main, [small_folder["ckpt"], f"{tmp_path}/dot/."], capsys)  # (a traceback)
    assert code == 0 and "config.json" in os.listdir(tmp_path / "dot"), err
    assert sorted(os.listdir(tmp_path)) == ["dot", "empty", "new", "out"]


def test_export_takes_the_checkpoint_as_gen_py_does(small_folder, tmp_path, capsys, monkeypatch):
    """`export.py --checkpoint CKPT OUT_DIR`, train.py's spelling that gen.py, eval.py and serve.py take too, was
    "unrecognized arguments: --checkpoint"; the positional forms, options anywhere among them, stay."""
    want = ("x.pt", "hf/x", "bfloat16")
    for argv in (["x.pt", "hf/x", "--dtype", "bfloat16"], ["--dtype", "bfloat16", "x.pt", "hf/x"],
                 ["x.pt", "--dtype", "bfloat16", "hf/x"], ["--checkpoint", "x.pt", "hf/x", "--dtype", "bfloat16"],
                 ["hf/x", "--dtype", "bfloat16", "--checkpoint", "x.pt"]):
        args = export.parse_args(argv)
        assert (args.checkpoint, args.out_dir, args.dtype) == want, argv
    # as the script runs it: main() with no argv reads the command line
    monkeypatch.setattr(sys, "argv", ["export.py", "x.pt", "hf/x", "--dtype", "bfloat16"])
    args = export.parse_args()
    assert (args.checkpoint, args.out_dir, args.dtype) == want
    for argv, said in ((["x.pt", "hf/x", "--checkpoint", "y.pt"],
                        "two checkpoints, x.pt and --checkpoint y.pt: give one"),
                       (["hf/x"], "give the checkpoint and the folder to write"),  # no newest-checkpoint default here
                       ([], "give the checkpoint and the folder to write"),
                       (["--checkpoint", "", "hf/x"], "is empty: give a value")):
        with pytest.raises(SystemExit) as e:
            export.parse_args(argv)
        assert e.value.code == 2 and said in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):  # the usage line shows both required (argparse's had "[checkpoint] out_dir")
        export.parse_args(["--help"])
    assert "] CHECKPOINT OUT_DIR\n" in capsys.readouterr().out
    code, out, err = run_cli(export.main, ["--checkpoint", small_folder["ckpt"], str(tmp_path / "hf")], capsys)
    assert code == 0 and "config.json" in os.listdir(tmp_path / "hf"), err


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(small_folder, tmp_path, capsys, monkeypatch):
    """safetensors reports the file system's error as its own SafetensorError, which was a traceback."""
    import safetensors
    import safetensors.torch

    def full(tensors, path, metadata=None):
        open(path, "wb").write(b"half")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    line = one_error_line(*run_cli(export.main, [small_folder["ckpt"], str(tmp_path / "hf")], capsys)[::2])
    assert line == f"error: No space left on device: {tmp_path / 'hf' / 'model.safetensors'}: free some space or " \
                   f"write elsewhere", line
    assert os.listdir(tmp_path) == []  # no half export, under its name or a temporary one
    # safetensors' error of another kind (a bug: no "(os error N)" in it) keeps its traceback, not a disk's line

    def bug(tensors, path, metadata=None):
        raise safetensors.SafetensorError("Error while serializing: a dtype it does not know")
    monkeypatch.setattr(safetensors.torch, "save_file", bug)
    with pytest.raises(safetensors.SafetensorError, match="a dtype it does not know"):
        run_cli(export.main, [small_folder["ckpt"], str(tmp_path / "hf")], capsys)
    assert os.listdir(tmp_path) == []


def test_export_refuses_an_unusable_place_before_loading(tmp_path, capsys, monkeypatch):
    # OUT_DIR through a file (or anywhere that cannot be written): one line naming OUT_DIR, before the load
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(export, "load_model", lambda *a, **k: pytest.fail("loaded before OUT_DIR was checked"))
    out = tmp_path / "file" / "hf"
    line = one_error_line(*run_cli(export.main, [str(tmp_path / "any.pt"), str(out)], capsys)[::2])
    assert line.startswith(f"error: OUT_DIR {out}") and "a part of the path is a file" in line, line
    # the current folder, even empty, cannot be replaced by the export (it is written next to it and renamed)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for here in (".", str(tmp_path / "here")):  # ("": an empty path, refused as every script's: test_common)
        line = one_error_line(*run_cli(export.main, [str(tmp_path / "any.pt"), here], capsys)[::2])
        assert line == f"error: OUT_DIR {here!r} is the current folder: name a new one, as in hf-model", line
    # a single file's name: the export made a folder of that name (hf/story.safetensors/model.safetensors ...)
    for name in ("story.safetensors", "story.pt", "model.BIN"):
        line = one_error_line(*run_cli(export.main, [str(tmp_path / "any.pt"), str(tmp_path / name)], capsys)[::2])
        stem = tmp_path / name.split(".")[0]
        assert line == f"error: OUT_DIR {tmp_path / name} names a file, but the export is a folder (config.json, " \
                       f"model.safetensors and the tokenizer, which from_pretrained loads): name a folder, as in {stem}"
    assert not (tmp_path / "story.pt").exists()
    # a link to an empty folder: the export, renamed into place, failed on the link after the work
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "link")
    for link in (str(tmp_path / "link"), f"{tmp_path}/link/."):
        line = one_error_line(*run_cli(export.main, [str(tmp_path / "any.pt"), link], capsys)[::2])
        assert line == f"error: OUT_DIR {link} is a symbolic link: give the folder it points to, {tmp_path / 'target'}"
    # an empty mount point (a container's volume): os.rmdir failed with EBUSY, in a traceback after the export
    (tmp_path / "volume").mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: os.path.abspath(p) == str(tmp_path / "volume"))
    line = one_error_line(*run_cli(export.main, [str(tmp_path / "any.pt"), str(tmp_path / "volume")], capsys)[::2])
    assert line == f"error: OUT_DIR {tmp_path / 'volume'} is a mount point, which the export (written next to it " \
                   f"and renamed into place) cannot replace: name a new folder in it, as in " \
                   f"{tmp_path / 'volume' / 'hf-model'}", line
    if os.geteuid() != 0:  # an empty OUT_DIR in a folder that takes no files (root may write anywhere)
        (tmp_path / "ro" / "empty").mkdir(parents=True)
        (tmp_path / "ro").chmod(0o500)
        line = one_error_line(*run_cli(export.main, [str(tmp_path / "any.pt"), str(tmp_path / "ro" / "empty")],
                                       capsys)[::2])
        (tmp_path / "ro").chmod(0o700)
        assert line.startswith(f"error: OUT_DIR's folder {tmp_path / 'ro'}: cannot write there"), line


def test_init_from_bad_arguments(small_folder, tmp_path, capsys):
    for argv, words in ((["--init_from", small_folder["ckpt"]], "not a folder"),
                        (["--init_from", str(tmp_path / "typo")],
                         f"--init_from {tmp_path / 'typo'} not found: it takes"),
                        # a folder of checkpoints (or a dataset's): not load_checkpoint's "available:" .pt files, which
                        # --init_from refuses
                        (["--init_from", os.path.dirname(small_folder["ckpt"])],
                         f"--init_from {os.path.dirname(small_folder['ckpt'])} is a folder without config.json: it "
                         f"takes a Hugging Face model folder (config.json, model.safetensors, tokenizer files), as "
                         f"{small_folder['folder']}; a .pt checkpoint goes to --checkpoint"),
                        (["--init_from", small_folder["folder"], "--checkpoint", small_folder["ckpt"]], "pass one"),
                        # a folder names no data, and story (the default) is not prepared: it said to prepare story
                        (["--init_from", small_folder["folder"]], f"error: {small_folder['folder']} does not name the "
                                                                  f"data it was trained on: pass --dataset NAME"),
                        (["--checkpoint", small_folder["folder"]], "does not name the data it was trained on")):
        line = one_error_line(*run_cli(train.main, argv + ["--data_dir", str(tmp_path), "--device", "cpu"],
                                       capsys)[::2])
        assert words in line, line


def test_gpt2_by_name_as_nanogpt_takes_it_names_the_download(tmp_path, monkeypatch, capsys):
    """`--init_from gpt2` (nanoGPT downloads it) said only that a folder is wanted; gen.py's `gpt2` offered the .pt
    files in models/. Both name the command that downloads the folder."""
    monkeypatch.chdir(tmp_path)
    download = ": download it as a folder first, `hf download openai-community/gpt2-xl config.json model.safetensors " \
               "tokenizer.json vocab.json merges.txt --local-dir ~/models/gpt2-xl`, and give ~/models/gpt2-xl"
    line = one_error_line(*run_cli(train.main, ["--init_from", "gpt2-xl", "--data_dir", str(tmp_path), *CPU],
                                   capsys)[::2])
    assert line == "error: --init_from gpt2-xl not found" + download, line
    line = one_error_line(*run_cli(gen.main, ["gpt2-xl", "--prompt", "x", *CPU], capsys)[::2])
    assert line == "error: checkpoint gpt2-xl not found" + download, line
    # GPT-2's name only: a checkpoint named after it is no download (nor a folder of that name there, not "not found")
    line = one_error_line(*run_cli(gen.main, ["gpt2-xl.pt", "--prompt", "x", *CPU], capsys)[::2])
    assert line.startswith("error: checkpoint gpt2-xl.pt not found") and "download" not in line, line
    (tmp_path / "gpt2").mkdir()
    line = one_error_line(*run_cli(train.main, ["--init_from", "gpt2", "--data_dir", str(tmp_path), *CPU], capsys)[::2])
    assert line.startswith("error: --init_from gpt2 is a folder without config.json"), line
    # README's path, ~/models/gpt2, not downloaded yet: it said only that a folder is wanted, and prepare.py's
    # --tokenizer (README's first command) that a tokenizer is: the download, to the path given
    import prepare
    folder = str(tmp_path / "my models" / "gpt2")
    download = ": download it as a folder first, `hf download openai-community/gpt2 config.json model.safetensors " \
               f"tokenizer.json vocab.json merges.txt --local-dir {shlex.quote(folder)}`"
    line = one_error_line(*run_cli(train.main, ["--init_from", folder, "--data_dir", str(tmp_path), *CPU],
                                   capsys)[::2])
    assert line == f"error: --init_from {folder} not found" + download, line
    line = one_error_line(*run_cli(gen.main, [folder, "--prompt", "x", *CPU], capsys)[::2])
    assert line == f"error: checkpoint {folder} not found" + download, line
    line = one_error_line(*run_cli(prepare.main, ["--dataset", "dailydialog", "--tokenizer", folder], capsys)[::2])
    assert line == f"error: tokenizer {folder!r} not found" + download, line


def test_nearest_preset_gives_gpt2_its_learning_rate():
    # train.py picks lr and batch size by preset: GPT-2 124M's shape is the gpt2 preset, tiny shapes are tiny
    assert hf.nearest_preset(make_config("gpt2", vocab_size=50259)) == "gpt2"
    assert hf.nearest_preset(make_config("tiny", n_layer=2, n_embd=64, vocab_size=300)) == "tiny"
    assert hf.nearest_preset(make_config("gpt2", n_layer=24, n_embd=1024, n_head=16, vocab_size=50259)) == "gpt2"


def test_a_folder_of_nan_weights_is_refused(custom_enc, tmp_path, capsys):
    """load_checkpoint's finite check covers Hugging Face folders too (a diverged fine-tune exported elsewhere)."""
    model = our_model(custom_enc.n_vocab)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    folder = str(tmp_path / "nan")
    hf.export_folder(model, custom_enc, folder, torch.float32)  # export.py itself would refuse to load the model
    line = one_error_line(*run_cli(gen.main, [folder, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)[::2])
    assert line.startswith(f"error: {folder} holds weights that are not finite (1 tensor(s) with nan or inf"), line


def test_an_output_inside_the_model_folder_it_reads_is_refused(small_folder, tmp_path, capsys):
    """gen.py --output (eval.py --json alike) naming a file of the HF folder it samples from wrote the completions
    over the weights: refused, as an output that is a .pt checkpoint is."""
    folder = broken(small_folder, tmp_path, lambda f: None)
    (tmp_path / "p.txt").write_text("Hi\n")
    weights = os.path.join(folder, "model.safetensors")
    before = open(weights, "rb").read()
    line = one_error_line(*run_cli(gen.main, [folder, "--prompt_file", str(tmp_path / "p.txt"), "--output", weights,
                                              "--max_tokens", "1", *CPU], capsys)[::2])
    assert "is the checkpoint it reads" in line, line
    assert open(weights, "rb").read() == before


def test_gpt2_config_json_gives_the_context_as_n_ctx_too(enc):
    cfg = make_config("tiny", n_layer=1, n_embd=32, n_head=2, block_size=32, vocab_size=enc.n_vocab, variant="gpt2")
    c = hf.hf_config(cfg, enc, torch.float32)
    assert c["n_positions"] == c["n_ctx"] == cfg.block_size == 32
    # read back, n_positions is the context where both are given (transformers sizes wpe by it), n_ctx without it
    for kv, context in ((dict(n_ctx=1024), 32), (dict(n_positions=None), 32), (dict(n_ctx=None), 32)):
        raw = {k: v for k, v in {**c, **kv}.items() if v is not None}
        assert hf.config_from_hf(raw, "config.json").block_size == context, kv


def test_an_untied_lm_head_is_refused(small_folder, tmp_path):
    import shutil
    import safetensors.torch as st
    from checkpoint import load_checkpoint
    folder = tmp_path / "untied"
    shutil.copytree(small_folder["folder"], folder)
    tensors = st.load_file(str(folder / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1.0
    st.save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(common.UserError, match="not tied"):
        load_checkpoint(str(folder))


@pytest.mark.parametrize("variant, kind", [("gpt2", "GPT2LMHeadModel"), ("modern", "LlamaForCausalLM")])
def test_export_dtype_writes_those_weights_and_names_the_model_class(custom_enc, tmp_path, capsys, variant, kind):
    """`export.py CKPT OUT --dtype bfloat16` writes bf16 weights (half the file), said so in config.json; the line
    printed names the class transformers will load: GPT2LMHeadModel for the gpt2 variant, LlamaForCausalLM for
    modern."""
    model = our_model(custom_enc.n_vocab, variant)
    ckpt = str(tmp_path / "model.pt")
    save_checkpoint(ckpt, model, custom_enc)

    def weights(out):
        path = os.path.join(out, "model.safetensors")
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        header.pop("__metadata__", None)
        with open(os.path.join(out, "config.json")) as f:
            config = json.load(f)
        return {t["dtype"] for t in header.values()}, os.path.getsize(path), config

    sizes = {}
    for dtype, st_dtype in (("float32", "F32"), ("bfloat16", "BF16")):
        out = str(tmp_path / dtype)
        code, stdout, err = run_cli(export.main,
                                    [ckpt, out] + (["--dtype", dtype] if dtype != "float32" else []), capsys)
        assert code == 0 and err == "", err
        # the tokenizer's ids, not the embedding's rows padded to a multiple of 64 (which the export leaves behind)
        assert stdout.startswith(f"wrote {out}: {kind}, 2 layers x 64, {custom_enc.n_vocab} token ids (")
        assert f", {dtype}; files " in stdout and model.config.padded_vocab_size != custom_enc.n_vocab
        found, sizes[dtype], config = weights(out)
        assert found == {st_dtype} and config["torch_dtype"] == dtype and config["architectures"] == [kind]
    assert 0.45 < sizes["bfloat16"] / sizes["float32"] < 0.55
    # and the bf16 folder reads back here as the model rounded to bf16
    back, _, _ = load_model(str(tmp_path / "bfloat16"))
    idx = torch.randint(0, custom_enc.n_vocab, (1, 32), generator=torch.Generator().manual_seed(1))
    rounded = our_model(custom_enc.n_vocab, variant)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        torch.testing.assert_close(back(idx)[0].float(), rounded(idx)[0], atol=1e-4, rtol=1e-4)


def in_tokenizer_json(change, model=None):
    """A change to tokenizer.json (model: settings of its BPE model), read by the generic fast class, which takes
    tokenizer.json as it is (GPT2Tokenizer rebuilds the BPE model from the vocabulary and merges alone)."""
    def edit(f):
        edit_json(f / "tokenizer.json", lambda t: [change(t), t["model"].update(model or {})])
        edit_json(f / "tokenizer_config.json", lambda c: c.update(tokenizer_class="PreTrainedTokenizerFast"))
    return edit


def in_config(change):
    return lambda f: edit_json(f / "tokenizer_config.json", change)


def each_added(where, **kv):
    return lambda t: [a.update(kv) for a in (t["added_tokens"] if where == "json" else
                                             t["added_tokens_decoder"].values())]


BOS_TEMPLATE = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": EOT, "type_id": 0}},
                                                         {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {EOT: {"id": EOT, "ids": [397], "tokens": [EOT]}}}


# tokenizer files that ask transformers for a step tiktoken's BPE lacks: each was imported without a word, and the
# model then read other ids here than in transformers for the same text
@pytest.mark.parametrize("change, words", [
    (in_tokenizer_json(lambda t: t.update(normalizer={"type": "Lowercase"})),
     "tokenizer.json: its normalizer Lowercase changes the text before BPE, a step tiktoken's BPE lacks, so the ids "
     "would differ from transformers': set normalizer to null if the model was trained without it"),
    (in_tokenizer_json(lambda t: None, {"dropout": 0.5}), "tokenizer.json: BPE dropout 0.5 merges at random"),
    (in_tokenizer_json(lambda t: None, {"end_of_word_suffix": "</w>"}), "end_of_word_suffix '</w>' marks the ends"),
    (in_tokenizer_json(lambda t: None, {"continuing_subword_prefix": "##"}), "continuing_subword_prefix '##'"),
    (in_tokenizer_json(lambda t: t.update(post_processor=BOS_TEMPLATE)),
     "tokenizer.json: its post_processor TemplateProcessing adds tokens around the text"),
    # Llama 3's shape: a Sequence of ByteLevel (no tokens) and a template that adds one
    (in_tokenizer_json(lambda t: t.update(post_processor={"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}, BOS_TEMPLATE]})),
     "tokenizer.json: its post_processor Sequence adds tokens around the text"),
    (in_tokenizer_json(lambda t: t.update(post_processor={"type": "RobertaProcessing", "sep": [EOT, 397],
                                                          "cls": [EOT, 397]})), "RobertaProcessing adds tokens"),
    (lambda f: [in_tokenizer_json(each_added("json", rstrip=True))(f), in_config(lambda c: c.pop(
        "added_tokens_decoder"))(f)], "tokenizer.json: added token <|endoftext|> has rstrip set"),
    (in_config(each_added("config", lstrip=True)), "tokenizer_config.json: added token <|endoftext|> has lstrip set"),
    (in_config(each_added("config", single_word=True)), "added token <|endoftext|> has single_word set"),
    (in_config(lambda c: c.update(additional_special_tokens=[IM_START, IM_END, "<|foo|>"])),
     "tokenizer_config.json: it names tokens ['<|foo|>'] that are not among the folder's special tokens "
     "(transformers adds them as new ids)"),
    (in_config(lambda c: c.update(extra_special_tokens={"image_token": "<|foo|>"})), "names tokens ['<|foo|>']"),
    (in_config(lambda c: c.update(pad_token={"__type": "AddedToken", "content": "<|foo|>"})),
     "names tokens ['<|foo|>']"),
    (lambda f: [(f / "tokenizer.json").unlink(), in_config(each_added("config", rstrip=True))(f)],
     "tokenizer_config.json: added token <|endoftext|> has rstrip set"),  # (vocab.json + merges.txt: GPT2Tokenizer)
], ids=["normalizer", "dropout", "suffix", "prefix", "bos-template", "bos-sequence", "roberta", "rstrip",
        "lstrip-config", "single-word-config", "additional-special", "extra-special", "pad-token", "rstrip-vocab-json"])
def test_a_tokenizer_step_tiktoken_lacks_is_refused(small_folder, tmp_path, capsys, change, words):
    folder = broken(small_folder, tmp_path, change)
    line = one_error_line(*run_cli(gen.main, [folder, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)[::2])
    assert words in line and line.endswith("else this tokenizer cannot be used here"), line
    if importlib.util.find_spec("transformers") and "continuing_subword_prefix" not in words:  # (it panics there)
        # no false alarm: transformers reads other ids than the unchanged vocabulary's
        tok = pytest.importorskip("transformers").AutoTokenizer.from_pretrained(folder)
        enc, _ = hf.read_tokenizer(small_folder["folder"])
        assert any(ids_of(tok, t) != enc.encode(t, allowed_special="all") for t in [*TEXTS, "a <|foo|> b"])


def test_tokenizer_settings_that_change_no_ids_are_read(small_folder, custom_enc, tmp_path):
    """byte_fallback, fuse_unk and ignore_merges (Llama 3's tokenizer.json sets it) change nothing for a byte-level
    vocabulary whose merges BPE reaches, nor does dropout 0, a template of the text alone, or tokenizer.json's rstrip
    where tokenizer_config.json's added_tokens_decoder, which transformers takes instead, has none: read as the
    vocabulary."""
    plain = dict(BOS_TEMPLATE, single=BOS_TEMPLATE["single"][1:])
    folder = broken(small_folder, tmp_path, in_tokenizer_json(
        lambda t: [t.update(post_processor=plain), each_added("json", rstrip=True)(t)],
        {"byte_fallback": True, "fuse_unk": True, "ignore_merges": True, "dropout": 0.0}))
    assert tokenizer_hash(hf.read_tokenizer(folder)[0]) == tokenizer_hash(custom_enc)
    if importlib.util.find_spec("transformers"):
        tok = pytest.importorskip("transformers").AutoTokenizer.from_pretrained(folder)
        for text in TEXTS:
            assert ids_of(tok, text) == custom_enc.encode(text, allowed_special="all"), text


def test_a_merge_bpe_would_not_reach_is_refused(small_folder, custom_enc, tmp_path, capsys):
    """transformers joins only the pairs merges.txt lists, tiktoken any two parts that make a token: a token listed as
    another split than BPE reaches on its bytes ("the" as "t he" where "th" comes first) was imported, and the model
    then read "the" as one token here, "th" "e" in transformers."""
    chars, ranks = hf.byte_chars(), custom_enc._mergeable_ranks
    merges = dict(zip(sorted((r for t, r in ranks.items() if len(t) > 1)), hf.recover_merges(ranks)))
    # a token whose bytes also split into two other tokens, both of lower ids
    token, other = next((t, (t[:k], t[k:])) for t, r in ranks.items() for k in range(1, len(t))
                        if len(t) > 2 and (t[:k], t[k:]) != merges[r]
                        and ranks.get(t[:k], r) < r and ranks.get(t[k:], r) < r)
    listed = " ".join(hf.spell(p, chars) for p in merges[ranks[token]])

    def change(folder):
        edit_json(folder / "tokenizer.json", lambda t: t["model"].update(merges=[
            " ".join(hf.spell(p, chars) for p in other) if m == listed else m for m in t["model"]["merges"]]))
    folder = broken(small_folder, tmp_path, change)
    line = one_error_line(*run_cli(gen.main, [folder, "--prompt", "x", "--max_tokens", "1", *CPU], capsys)[::2])
    assert "is not the one BPE reaches on its token's bytes" in line, line


def test_an_export_that_another_one_beat_to_out_dir_is_one_line(small_folder, tmp_path, capsys, monkeypatch):
    """Two exports to one new OUT_DIR, started together: both found it free, the first renamed its folder into place,
    and the second's rename (or rmdir) failed with ENOTEMPTY, in a traceback. The first's export stays whole."""
    out = tmp_path / "hf"
    real_fsync = os.fsync

    def other_export_lands(fd):  # while this export is written: the other one renames its folder into place
        if not out.exists():
            out.mkdir()
            (out / "config.json").write_text("{}")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", other_export_lands)
    line = one_error_line(*run_cli(export.main, [small_folder["ckpt"], str(out)], capsys)[::2])
    assert line.startswith(f"error: {out} already exists and is a folder that is not empty") and "OUT_DIR" in line, line
    assert os.listdir(out) == ["config.json"] and os.listdir(tmp_path) == ["hf"]  # the other's kept; no temporary left


def test_a_file_put_at_out_dir_meanwhile_is_not_called_another_export(small_folder, tmp_path, capsys, monkeypatch):
    """Only a folder another export filled is 'another export to it?': a file put at OUT_DIR while this export ran
    fails the rename (ENOTDIR), which the user acts on otherwise. Nothing of this export is left."""
    out = tmp_path / "hf"
    real_fsync = os.fsync

    def a_file_lands(fd):
        if not out.exists():
            out.write_text("not an export")
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", a_file_lands)
    line = one_error_line(*run_cli(export.main, [small_folder["ckpt"], str(out)], capsys)[::2])
    # the path the user gave, not the temporary folder ("hf.1234.tmp: a part of the path is a file")
    assert line.startswith(f"error: {out} is a file") and ".tmp" not in line and "another export" not in line, line
    assert out.read_text() == "not an export" and os.listdir(tmp_path) == ["hf"]


def test_a_vocabulary_without_bpe_merges_is_refused_by_export(tmp_path, capsys):
    """A .tiktoken vocabulary made elsewhere (or edited) whose token "abc" comes with neither "ab" nor "bc": tiktoken
    reads it, but merges.txt cannot spell it, so transformers would split "abc" where this model reads one token.
    The export is refused in one line naming the token, and nothing is written."""
    ranks = {bytes([b]): b for b in range(256)} | {b"abc": 256}
    text = "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items())
    enc = setup_tokenizer.tokenizer_from_bpe(text)
    ckpt = str(tmp_path / "model.pt")
    save_checkpoint(ckpt, our_model(enc.n_vocab), enc)
    line = one_error_line(*run_cli(export.main, [ckpt, str(tmp_path / "hf")], capsys)[::2])
    assert line == "error: token b'abc' (id 256) is not a merge of two lower-ranked tokens, so the vocabulary has no " \
                   "BPE merges to export; retrain it with `python setup_tokenizer.py train --input FILE --out " \
                   "vocab.tiktoken`", line
    assert os.listdir(tmp_path) == ["model.pt"]


def test_export_run_as_a_command_bad_input_is_one_line(tmp_path):
    """`python export.py ...` from a shell: a missing checkpoint ends in one error line and status 1 (run_main under
    __main__), not a traceback, and no OUT_DIR is made; the tests above call main() in-process, past that block."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "export.py"), "none.pt", "hf"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    script = shlex.quote(os.path.join(root, "train.py"))  # (run from outside the repository: its whole path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "error: checkpoint none.pt not found; no "
                                                         "checkpoints in models/ "
                                                         f"yet: train one with `python {script}`\n")
    assert os.listdir(tmp_path) == []


def test_a_folder_whose_config_is_another_models_is_a_vocabulary_with_no_context(small_folder, tmp_path):
    """prepare.py --tokenizer FOLDER packs chats in the folder's model context; a folder whose config.json is of a
    model this project does not read still gives its tokenizer files as the vocabulary, with the
    default pack, not the config's refusal."""
    import prepare
    assert setup_tokenizer.model_context(small_folder["folder"]) == 64
    assert prepare.default_pack(small_folder["folder"]) == 64
    # (a config.json of JSON but no object: "the tokenizer files are malformed (AttributeError ...)", which named the
    # wrong file, where folder_context takes it for no model config)
    for n, change in enumerate([edit_config(model_type="bert", architectures=["BertForMaskedLM"]),
                                lambda f: (f / "config.json").write_text("[1]")]):
        folder = broken(small_folder, tmp_path / str(n), change)
        enc = setup_tokenizer.get_tokenizer(folder)
        assert enc.encode("the cat") == setup_tokenizer.get_tokenizer(small_folder["folder"]).encode("the cat")
        assert setup_tokenizer.model_context(folder) is None and prepare.default_pack(folder) == prepare.DEFAULT_PACK


def test_a_rename_refused_otherwise_is_not_called_another_export(small_folder, tmp_path, capsys, monkeypatch):
    """Only ENOTEMPTY (EEXIST) at the rename is another export's folder in place: a rename the system refuses for
    another reason (no permission, taken away while this export ran) is said as that, and nothing of this export
    stays."""
    out = tmp_path / "hf"

    def refused(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, None, dst)
    monkeypatch.setattr(os, "rename", refused)
    line = one_error_line(*run_cli(export.main, [small_folder["ckpt"], str(out)], capsys)[::2])
    # said of the path the user gave, not of the temporary folder ("hf.1234.tmp")
    assert "another export" not in line and line.startswith(f"error: Permission denied: {out}: ") \
        and ".tmp" not in line, line
    assert os.listdir(tmp_path) == []


def test_an_export_removes_what_a_killed_export_to_the_same_place_left(small_folder, tmp_path, capsys):
    """An export SIGKILLed mid-write (no finally runs) leaves its hf.PID.tmp folder next to OUT_DIR; the next export to
    that place removes it (and only it), as atomic saves remove a killed save's file."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process has now
    left, other = tmp_path / f"hf.{dead.pid}.tmp", tmp_path / f"other.{dead.pid}.tmp"
    for folder in (left, other):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        for path in (folder / "config.json", folder):
            os.utime(path, (0, 0))
    code, _, err = run_cli(export.main, [small_folder["ckpt"], str(tmp_path / "hf") + os.sep], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["hf", other.name]
