r"""
Export a checkpoint as a Hugging Face model folder, which transformers loads as it is:

    python export.py models/story_best.pt hf/story
    python -c "from transformers import AutoModelForCausalLM, AutoTokenizer as T; \
               m = AutoModelForCausalLM.from_pretrained('hf/story'); t = T.from_pretrained('hf/story')"

The gpt2 variant becomes a GPT2LMHeadModel, the modern variant a LlamaForCausalLM (config.json,
model.safetensors), with the tokenizer (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json with a
ChatML chat template) giving the same ids as ours, ChatML tokens included. The other way round, every script
that takes a checkpoint takes such a folder, e.g. GPT-2 as downloaded from the hub:

    python train.py --init_from ~/gpt2 --dataset chat       # fine-tune it here
    python gen.py ~/gpt2 --prompt "Hello"

The conversion itself is in hf.py.
"""
import common  # first (it is light): Ctrl-C while torch loads then ends in one line, not a traceback from its import
common.mend_standard_streams(__name__)
common.quiet_ctrl_c(__name__)

import argparse
import os
import sys

from checkpoint import add_checkpoint_argument, load_model, parse_checkpoint
from common import (ArgumentParser, DTYPES, check_output, command_words, path_arg, run_main, script_command, shown_path,
                    torch_dtype)
from hf import check_out_dir, export_folder
from train import checkpoint_data


def parse_args(argv=None):
    # the usage line says what is required (argparse's would show the checkpoint optional, as gen.py's is)
    # the docstring, its examples first, as every script's --help gives its own
    p = ArgumentParser("export.py", usage=f"%(prog)s [-h] [--dtype {{{','.join(DTYPES)}}}] CHECKPOINT OUT_DIR",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the checkpoint as gen.py, eval.py and serve.py take it: CHECKPOINT OUT_DIR, or --checkpoint CHECKPOINT OUT_DIR
    add_checkpoint_argument(p, help="a .pt file from train.py (or a Hugging Face folder, to convert it again); or "
                                    "--checkpoint PATH")
    p.add_argument("out_dir", type=path_arg, help="the folder to write; it must not exist yet or be empty")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="weights' precision in model.safetensors (default: float32, as trained; bfloat16 halves "
                        "the size)")
    # intermixed: with the checkpoint optional, parse_args gave `CKPT --dtype bfloat16 OUT_DIR` the first path as
    # OUT_DIR and refused the second ("unrecognized arguments"); all the positionals are matched together instead
    given = command_words(argv)
    args = None if not given else parse_checkpoint(p, p.parse_intermixed_args(given))  # (none: "required: out_dir")
    # no default here: the newest checkpoint is not a thing to export unasked
    if args is None or args.checkpoint is None:
        p.error("give the checkpoint and the folder to write: export.py CHECKPOINT OUT_DIR, or --checkpoint "
                "CHECKPOINT OUT_DIR")
    return args


@common.removing_made_folders()
def main(argv=None):
    args = parse_args(argv)
    # both before the seconds a big checkpoint takes to load: OUT_DIR is new or empty (an export never writes over
    # files), and a new one can be made where it is asked for (its folder is created and must take files; the
    # export is written next to OUT_DIR and renamed into place)
    check_out_dir(args.out_dir)
    if not os.path.isdir(args.out_dir):
        check_output(os.path.normpath(args.out_dir), "OUT_DIR")  # (hf/new/ is a folder's name, not a file's)
    else:  # an empty folder: the export is written next to it, in its parent, which it failed in after the loading
        check_output(os.path.dirname(os.path.abspath(args.out_dir)), "OUT_DIR's folder", folder=True)
    model, enc, ckpt = load_model(args.checkpoint)
    # the training window goes along: eval.py's windows default to it (config.json's gpt_trainer, which hf.py reads);
    # and the peak lr, with whether it was a fine-tune's, which train.py --init_from reckons its lr from
    trained = ckpt.get("args") or {}
    names = export_folder(model, enc, args.out_dir, torch_dtype(args.dtype), trained.get("block_size"),
                          trained.get("lr"), ckpt.get("fine_tune") is True)
    kind = "GPT2LMHeadModel" if model.config.variant == "gpt2" else "LlamaForCausalLM"
    if model.config.variant == "modern" and model.config.dropout:  # (hf.py and so --init_from read it all back)
        print(f"warning: {kind} has attention dropout only: fine-tuning in transformers drops nothing on the "
              f"embeddings or the attention and MLP outputs, where this model trained with dropout "
              f"{model.config.dropout:g} on each (inference is unaffected)", file=sys.stderr)
    print(f"wrote {args.out_dir}: {kind}, {model.config.n_layer} layers x {model.config.n_embd}, {enc.n_vocab:,} token "
          f"ids ({enc.name}), {args.dtype}; files {', '.join(names)}")
    print(f"load it with AutoModelForCausalLM.from_pretrained({args.out_dir!r}) and "
          f"AutoTokenizer.from_pretrained({args.out_dir!r}), or give it to gen.py, eval.py or serve.py as a "
          f"checkpoint: `{try_command(ckpt, args.out_dir)}`")


def try_command(ckpt, out_dir):
    """The command that tries the folder out_dir exported from ckpt: eval.py on the data it was trained on, named, as
    config.json records no dataset (a bare `eval.py OUT_DIR` said "pass --dataset NAME"); gen.py where ckpt names
    none either (weights only, a folder exported again)."""
    trained_on, trained_in = checkpoint_data(ckpt)
    if not trained_on:
        return script_command("gen.py", out_dir)
    # (eval.py's default for a folder, which names no data folder either, is data/)
    where = [] if os.path.abspath(trained_in) == os.path.abspath("data") else ["--data_dir", shown_path(trained_in)]
    return script_command("eval.py", out_dir, "--dataset", trained_on, *where)


if __name__ == "__main__":
    run_main(main)
