"""
Checkpoints: one self-contained file holding the weights, the model config and
the tokenizer (its name for GPT-2, the vocabulary itself for a custom one), plus
whatever train.py needs to resume exactly. Written atomically, read with
torch.load(weights_only=True): plain tensors and containers, never pickled code.
A Hugging Face model folder (config.json, model.safetensors, tokenizer files) reads
as a checkpoint without training state (hf.py converts it), so every script that
takes a checkpoint takes such a folder too.
"""
import argparse
import contextlib
import dataclasses
import glob
import math
import os
import pickle
import re
import zipfile

import torch

import hf
from common import (UserError, atomic_torch_save, data_limited, first_line, is_oom, model_folder_file, nonnegative_int,
                    path_arg, script_command, starts_as_zip, tmp_pattern)
from model import GPT, GPTConfig
from setup_tokenizer import download_hint, tokenizer_from_state, tokenizer_hash, tokenizer_state

FORMAT = 1  # bump when the layout changes incompatibly
NUMBER = (int, float)
# the way out of a checkpoint whose config or weights this model code does not take
NOT_THIS_CODE = "a damaged checkpoint, or one from another version of the code; use another one"


def finite(value):
    """A loss or seconds train.py writes: a number that is not nan or inf (it refuses those before saving). Seconds
    are not held to 0 or more: they are differences of time.time(), which a clock set back can make negative."""
    return isinstance(value, NUMBER) and math.isfinite(value)


# the training state train.py writes, by entry: what each holds, as is_kind reads it (a file edited and saved again
# passes torch.load and the zip checksums, and an entry of another kind would fail deep in a resume, or skew it quietly)
STATE_KINDS = {"step": nonnegative_int, "epoch": nonnegative_int, "epoch_step": nonnegative_int,
               "epoch_windows": nonnegative_int, "tokens": nonnegative_int, "eval_windows": nonnegative_int,
               "evals_since_best": nonnegative_int, "best_val_loss": (finite, type(None)),
               "val_loss": (finite, type(None)), "best_at": ([nonnegative_int, finite], type(None)),
               "loss_since_record": [NUMBER, nonnegative_int], "elapsed": finite, "budget_elapsed": finite,
               "schedule_origin": (finite, type(None)), "budget_done": bool, "stopped_early": bool, "fine_tune": bool,
               "dataset": str, "run": str, "args": dict, "data": dict, "rng": dict, "optimizer": dict, "scaler": dict,
               "order_scheme": int, "save_seconds": NUMBER}


# -----------------------------------------------------------------------------
# the checkpoint argument, and where checkpoints are

CHECKPOINT_HELP = "a .pt file or a Hugging Face model folder (default: the newest .pt in models/ or a folder in it)"


def add_checkpoint_argument(p, help=CHECKPOINT_HELP, shown="first"):
    """Every script's checkpoint, given first (`gen.py x.pt`) or as --checkpoint, as each way is a habit from the
    other scripts. help goes to the way the script shows: first (gen.py, eval.py,
    serve.py, export.py) or, with shown="option", --checkpoint (train.py, where it is optional: a new model without).
    parse_checkpoint merges the two; a script without a default checkpoint says so in help and refuses None itself."""
    p.add_argument("checkpoint", type=path_arg, nargs="?", help=help if shown == "first" else argparse.SUPPRESS)
    p.add_argument("--checkpoint", dest="checkpoint_option", type=path_arg, metavar="CHECKPOINT",
                   help=help if shown == "option" else argparse.SUPPRESS)


def parse_checkpoint(p, args):
    """args with the checkpoint given either way in args.checkpoint (add_checkpoint_argument)."""
    given = vars(args).pop("checkpoint_option")
    if given is not None:
        if args.checkpoint is not None:
            p.error(f"two checkpoints, {args.checkpoint} and --checkpoint {given}: give one")
        args.checkpoint = given
    # nanoGPT's habit, `train.py config/train_shakespeare_char.py`: a config file, not a checkpoint missing or damaged
    if args.checkpoint is not None and args.checkpoint.endswith(".py"):
        p.error(f"{args.checkpoint} is a Python file, not a checkpoint: {p.prog} reads no config file; give its "
                f"settings as options")
    return args


def find_checkpoints(folder="models"):
    """Checkpoint files in folder and one folder down, newest first: make chat-demo writes models/chat-demo/, and the
    newest checkpoint in models/ is looked for there too."""
    found = []
    for path in glob.glob(os.path.join(folder, "*.pt")) + glob.glob(os.path.join(folder, "*", "*.pt")):
        with contextlib.suppress(FileNotFoundError):  # removed since the listing (a train.py --overwrite): not there
            found.append((os.path.getmtime(path), path))
    return [path for _, path in sorted(found, key=lambda mtime_path: mtime_path[0], reverse=True)]


def available_hint(folder="models"):
    """The end of a "checkpoint not found" error: what folder offers instead (the first five, newest checkpoints
    first), or how to train one."""
    # Hugging Face model folders too (export.py's): every script that takes a checkpoint takes one; not the temporary
    # folder (tmp_name's) of an export killed mid-write (its config.json is written first), offered until a later one
    # removes it
    found = find_checkpoints(folder) + sorted(d for d in glob.glob(os.path.join(folder, "*"))
                                              if hf.is_hf_folder(d) and not re.fullmatch(tmp_pattern(".+"), d))
    if not found:
        return f"; no checkpoints in {os.path.join(folder, '')} yet: train one with `{script_command('train.py')}`"
    return "; available: " + ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")


# -----------------------------------------------------------------------------
# saving

def save_checkpoint(path, model, enc, **state):
    """Atomically write model weights, config and tokenizer, plus any extra state
    (optimizer, epoch, RNG, args...): plain tensors, numbers, strings, lists and dicts only."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    model = getattr(model, "module", model)  # unwrap DDP
    ckpt = {
        "format": FORMAT,
        "model": model.state_dict(),
        "config": dataclasses.asdict(model.config),
        "tokenizer": tokenizer_state(enc),
        **state,
    }
    atomic_torch_save(ckpt, path)


def tensor_bytes(state):
    """The bytes of the tensors in state (a state dict: nested dicts, lists and tuples), about what a checkpoint of it
    writes (a tensor held twice, as tied weights are, counts twice)."""
    if isinstance(state, torch.Tensor):
        return state.nbytes
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(v) for v in state)
    return 0  # numbers, strings, None


# -----------------------------------------------------------------------------
# loading: a missing, damaged or foreign checkpoint in one line

def load_checkpoint(path, optimizer=True, copy_model=True):
    """The checkpoint's dict, its tensors on the CPU, or a Hugging Face folder's as one; a missing, truncated, corrupt
    or foreign file is one clear UserError. path: a str or a pathlib.Path (a notebook's). optimizer=False leaves its
    optimizer state out, unread where the file is mapped (read_checkpoint says where): twice the weights (AdamW's),
    which a script that samples or evaluates never uses (gen.py on GPT-2's checkpoint needed 2 GB with it, 1 GB
    without). copy_model=False leaves the weights in the file's mapping (where it is mapped), for load_model alone: it
    copies them into its model and drops them."""
    path = os.fspath(path)
    if not os.path.exists(path):
        folder = os.path.dirname(path)  # what is there, where the user looked (models/ for a bare name)
        raise UserError(f"checkpoint {path} not found"
                        f"{download_hint(path) or available_hint(folder if os.path.isdir(folder) else 'models')}")
    if hf.is_hf_folder(path):
        return refuse_diverged(path, {"format": FORMAT, **hf.read_folder(path)})
    # export.py's weights or config given for the model: the way out is its folder (torch reads a .safetensors file as
    # a plain state dict, which fails below as "train one with train.py", said to a user holding the model)
    error = model_folder_file(path)
    if error:
        raise error
    if path.endswith(".safetensors"):  # torch.load reads it: a state dict, or a damaged file's traceback
        raise UserError(f"{path} is a safetensors file with no Hugging Face model folder around it (no {hf.CONFIG} "
                        f"beside it): not a checkpoint; use a checkpoint written by train.py, or the model's folder")
    if os.path.isdir(path):
        # a download that left config.json out is told what is missing (a folder of checkpoints, models/, is
        # offered its .pt files below)
        weights = sorted(n for n in os.listdir(path) if n.endswith(".safetensors") or n == hf.WEIGHTS_BIN)
        checkpoints = find_checkpoints(path)
        if weights and not checkpoints:
            raise UserError(f"{path} holds {weights[0]} but no {hf.CONFIG}, which gives the model's shape: copy "
                            f"{hf.CONFIG} from the model's download next to it")
        raise UserError(f"{path} is a folder without {hf.CONFIG}: neither a checkpoint file nor a Hugging Face "
                        f"model folder{available_hint(path if checkpoints else 'models')}")
    try:
        # opened once: torch.load and the checksum pass below read the same file, which a train.py saving or
        # --overwrite-ing may replace or remove meanwhile
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} was removed as it was opened (by a train.py writing there?): run this "
                        f"again, or pass another checkpoint") from None
    with f:
        return read_checkpoint(path, f, optimizer, copy_model)


def mapped_path(f):
    """A path torch.load can map the open checkpoint file f by, None where there is none or f is no zip (a legacy
    file, which torch cannot map). Linux's /proc/self/fd names the file f has open, not one a train.py has saved in its
    place since."""
    path = f"/proc/self/fd/{f.fileno()}"
    found = os.path.exists(path) and starts_as_zip(f)
    f.seek(0)
    return path if found else None


def in_memory(value, copies):
    """value (a loaded checkpoint's entry) with each tensor copied out of the file's mapping into memory (tensors
    that shared storage share it again: copies, by storage, offset and shape): a file written over in place later (a
    notebook's torch.save to the path it loaded) would otherwise end its reader in a bus error."""
    if isinstance(value, torch.Tensor):
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), value.dtype, value.shape, value.stride())
        if key not in copies:
            copies[key] = value.clone()
        return copies[key]
    if isinstance(value, dict):
        return {k: in_memory(v, copies) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(in_memory(v, copies) for v in value)
    return value


def out_of_memory_loading(path):
    """The UserError for a checkpoint too large for the memory left to load it (cap_memory's limit counts a mapped
    file whole): a sound file, not a damaged one to pass over or be told to replace."""
    return UserError(f"out of memory loading {path} ({os.path.getsize(path) / 1e6:,.0f} MB): free some memory, or load "
                     f"it on a machine with more")


def read_checkpoint(path, f, optimizer=True, copy_model=True):
    """load_checkpoint's reading and checks of the file f opened at path."""
    # a damaged file's way out: the run's other checkpoints, beside it wherever it is (not "another file from models/")
    another = "use another checkpoint (" + ("an earlier one" if path.endswith("_best.pt") else
                                            "its _best.pt or an earlier one") + ")"
    try:
        # mapped where that saves memory: an entry left out (optimizer) is never read, weights left in the mapping
        # (load_model's) are page cache. Not where all is copied (train.py's: the mapping and its copies, twice the
        # file), nor under a data limit (cap_memory's), which counts the mapping whole: eval.py on a 105 MB
        # checkpoint needed 340 MB of data mapped, 300 MB read
        mapped = mapped_path(f) if not (optimizer and copy_model or data_limited()) else None
        ckpt = torch.load(mapped or f, map_location="cpu", weights_only=True, mmap=mapped is not None)
        if isinstance(ckpt, dict) and not optimizer:
            ckpt.pop("optimizer", None)
        if mapped and isinstance(ckpt, dict):
            ckpt = {k: v if k == "model" and not copy_model else in_memory(v, {}) for k, v in ckpt.items()}
    except (pickle.UnpicklingError, KeyError, IndexError, TypeError, AttributeError) as e:
        # torch's message is a screenful of advice about weights_only=False, which this project never uses; a file
        # that is no zip goes to torch's legacy reader, whose unpickler fails on text ("hello") with the other errors
        global_ = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = (f"holds pickled Python objects ({global_.group(1)}), which are never loaded (weights_only=True)"
                if global_ else "is not a checkpoint (corrupt, or not written by torch.save?)")
        raise UserError(f"{path} {what}; use a checkpoint written by train.py") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, MemoryError) as e:
        if is_oom(e):  # (cap_memory's limit, a ulimit -d, a small machine): the file is fine, "corrupt?" is not
            raise out_of_memory_loading(path) from None
        # torch's own first sentence (miniz's advice after it would be cut off mid-word); none (an empty file's
        # EOFError): the error's name, as first_line gives it, not "str", the name of the empty text's type
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                        f"{first_line(str(e).split('. ')[0] or type(e).__name__, 120)}; {another}")
    if isinstance(ckpt, dict) and {"model", "model_args", "iter_num"} <= set(ckpt) and "tokenizer" not in ckpt:
        # nanoGPT's ckpt.pt (its sample.py's --out_dir, given by habit), which would read as a damaged checkpoint
        raise UserError(f"{path} is nanoGPT's checkpoint, not this project's: it holds no vocabulary (nanoGPT's is "
                        f"GPT-2's or its dataset's meta.pkl) and loads nowhere here; train one with train.py")
    if not isinstance(ckpt, dict) or not {"model", "config", "tokenizer"} <= set(ckpt):
        raise UserError(f"{path} is not a checkpoint of this project (no model/config/tokenizer entries); train one "
                        f"with train.py")
    # torch.load does not check the zip's CRC-32s: a file damaged inside a tensor (a disk, a copy) would load as other
    # weights, silently
    damaged = zip_damage(f)
    if damaged:
        raise UserError(f"{path} is damaged: {damaged}; {another}")
    if ckpt.get("format") != FORMAT:
        raise UserError(f"{path} has checkpoint format {ckpt.get('format')}, this code reads {FORMAT}; use the "
                        f"matching version of the code")
    tok = ckpt["tokenizer"]
    # (weights are floating point: load_state_dict would copy a bool or integer tensor in as 0s and 1s)
    if not (isinstance(ckpt["model"], dict)
            and all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in ckpt["model"].values())
            and isinstance(ckpt["config"], dict) and isinstance(tok, dict) and isinstance(tok.get("name"), str)
            # the vocabulary's text, or None for GPT-2's, which alone is named (get_tokenizer's "gpt2")
            and (isinstance(tok.get("bpe", 0), str) or tok.get("bpe", 0) is None and tok["name"] == "gpt2")):
        raise UserError(f"{path} is a damaged checkpoint (its model, config or tokenizer entry is not what train.py "
                        f"writes); {another}")
    # the vocabulary it stores reads, and is the one whose hash was saved with it: one edited (two tokens' ranks
    # swapped) passes every other check, and every script would then use the wrong ids
    if isinstance(tok["bpe"], str):
        try:
            held = tokenizer_hash(tokenizer_from_state(tok))
        except UserError:
            raise UserError(f"{path} is a damaged checkpoint (the vocabulary it stores does not read as a .tiktoken "
                            f"vocabulary); {another}") from None
        if "hash" in tok and held != tok["hash"]:
            raise UserError(f"{path} is a damaged checkpoint (its vocabulary hashes to {held}, not the {tok['hash']} "
                            f"saved with it); {another}")
    for k, kind in STATE_KINDS.items():
        if k in ckpt and (not is_kind(ckpt[k], kind) or k == "rng" and not cpu_rng_state(ckpt[k].get("cpu"))):
            raise UserError(f"{path} is a damaged checkpoint (its {k} entry, {repr(ckpt[k])[:40]}, is not what "
                            f"train.py writes); {another}")
    return refuse_diverged(path, ckpt)


def zip_damage(file):
    """What of a checkpoint file (a path, or a file open in binary mode) fails the zip's CRC-32s or records, which
    torch.load does not check, in words, or None: one pass over the file (a legacy, not zip, file has no checksums, and
    its tensor bytes may hold what is_zipfile takes for a zip's end)."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return zip_damage(f)
    if not starts_as_zip(file):
        return None
    try:
        with zipfile.ZipFile(file) as z:
            bad = z.testzip()
        # (its part of the file, without the folder torch names entries under: the temporary name it was saved as)
        return bad and f"its part {bad.split('/', 1)[-1]} fails its checksum"
    except Exception as e:  # noqa: BLE001 whatever zipfile chokes on in a file torch read is damage: a bad
        # byte in an entry's name (UnicodeDecodeError), in a version field (NotImplementedError), BadZipFile...
        return f"its zip records do not read ({type(e).__name__})"


def cpu_rng_state(state):
    """Whether state is a CPU generator's state torch takes back (tried on a generator of its own, not the global one):
    a tensor of other bytes, or of another size, was a traceback in the resumed run's torch.set_rng_state."""
    try:
        torch.Generator().set_state(state)
    except (TypeError, RuntimeError):
        return False
    return True


def is_kind(value, kind):
    """Whether value is of kind (STATE_KINDS'): a type (isinstance), a test of its own (nonnegative_int, finite), a
    list of kinds (a list of as many entries, each of its kind) or a tuple of kinds (any one of them)."""
    if isinstance(kind, list):
        return isinstance(value, list) and len(value) == len(kind) and all(map(is_kind, value, kind))
    if isinstance(kind, tuple):
        return any(is_kind(value, k) for k in kind)
    return isinstance(value, kind) if isinstance(kind, type) else kind(value)


def refuse_diverged(path, ckpt):
    """ckpt, unless a weight is nan or inf: sampling would fail deep inside torch.multinomial (or repeat one token,
    greedy), and training would go on with nan. One pass over weights already in memory."""
    diverged = nonfinite(ckpt["model"].items())
    if diverged:
        raise UserError(f"{path} holds weights that are not finite ({len(diverged)} tensor(s) with nan or inf, "
                        f"{diverged[0]} first): its run diverged; use an earlier checkpoint, and a lower --lr")
    return ckpt


def nonfinite(named_tensors):
    """The names of the floating-point tensors that hold a nan or inf: weights whose run diverged."""
    return [k for k, v in named_tensors if v.is_floating_point() and not torch.isfinite(v).all()]


# -----------------------------------------------------------------------------
# the model a checkpoint holds

def load_model(path_or_ckpt, device="cpu", name=None):
    """(model in eval mode on device, tokenizer, checkpoint dict) from a path (a pathlib.Path too) or an already loaded
    dict (name: its path, for messages)."""
    if isinstance(path_or_ckpt, os.PathLike):
        path_or_ckpt = os.fspath(path_or_ckpt)
    # a file's weights straight from its mapping into the model: one copy of them in memory, not two
    ckpt = load_checkpoint(path_or_ckpt, optimizer=False, copy_model=False) if isinstance(path_or_ckpt, str) \
        else path_or_ckpt
    name = name or (path_or_ckpt if isinstance(path_or_ckpt, str) else "the checkpoint")
    config = checkpoint_config(ckpt, name)
    try:
        model = GPT(config)
    except (RuntimeError, MemoryError) as e:  # a config edited to a context of 10**9: a 64 GB table of RoPE angles
        if not is_oom(e):
            raise
        c = ckpt["config"]
        raise UserError(f"{name}: its model (context {c.get('block_size')}, {c.get('n_layer')} "
                        f"layers x {c.get('n_embd')}) does not fit in memory ({first_line(e, 80)}): its "
                        f"config is damaged, or the model needs a larger machine") from None
    load_weights(model, ckpt["model"], name)
    model = model.to(device)
    if isinstance(path_or_ckpt, str):  # the weights the caller gets: the model's, the file no longer mapped (taken
        ckpt["model"] = model.state_dict()  # on device: before, a GPU's serve.py held a CPU copy as long as it ran)
    enc = tokenizer_from_state(ckpt["tokenizer"])
    # a tokenizer with more ids than the model's embedding: an IndexError at the first such token (gen.py's traceback,
    # serve.py's 500 to every request); fewer: ids the tokenizer cannot decode
    if model.config.vocab_size != enc.n_vocab:
        raise UserError(f"{name}: the model has {model.config.vocab_size} token ids but its tokenizer {enc.n_vocab}: "
                        f"a damaged or edited checkpoint; use another one")
    return model.eval(), enc, ckpt


def checkpoint_config(ckpt, name):
    """The GPTConfig a loaded checkpoint holds; damage to it (or a config of another version of the code) is one line
    naming the file, not "bad model options" the user never gave."""
    try:
        return GPTConfig(**ckpt["config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{name} does not match this model code (its config: {first_line(e)}): "
                        f"{NOT_THIS_CODE}") from None


def load_weights(model, state_dict, name="the checkpoint"):
    """model.load_state_dict, with a mismatch as one line saying what differs (name: the checkpoint's path)."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise UserError(f"{name} does not match this model code ({first_line(e)}): {NOT_THIS_CODE}") from None
