"""
Small pieces every script shares, in this order: running a script (UserError, the one line it and the file system's
refusals end in, Ctrl-C, SIGTERM and SIGHUP, torchrun's ranks), command-line arguments, reading text (JSON values, the
error for a file that is not UTF-8), what the user sees (colors, progress, commands to paste), output paths (checked
before the work; the files no output may replace), atomic writes, the lock that keeps a second command off the files
one writes (held_lock: a train.py run's checkpoints, a prepare.py's dataset), reading token files, device and precision
choice.
Checkpoints: checkpoint.py. Nothing model-specific lives here. torch is imported where it is used: prepare.py and
setup_tokenizer.py need it only for the vocabulary of a checkpoint or model folder (importing it takes ~2 s).
"""
import argparse
import contextlib
import ctypes
import difflib
import errno
import glob
import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time

# oneDNN (PyTorch's bf16 matmuls on a CPU) caches a ~1 MB kernel per matrix shape, 1024 by default (ideep's cache,
# LRU_CACHE_CAPACITY, too): serve.py in bf16 builds ~8 per new prompt length and grew toward 1.3 GB. 64 hold a training
# step's 35 shapes. Set before torch.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")


def mend_temporary_directory():
    """With no writable temporary directory (`docker run --read-only`), tempfile's search for one raised at `import
    torch` (dill names it as it loads), even in scripts that write nothing: it is given its first choice unchecked, so
    what does write a temporary file fails where it writes, in its own error."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError:  # (what tempfile raises when none of its choices takes a file)
        tempfile.tempdir = os.environ.get("TMPDIR") or "/tmp"


mend_temporary_directory()  # before torch: importing it is where the search ran


# -----------------------------------------------------------------------------
# running a script: bad input and the file system's refusals in one line, Ctrl-C, SIGTERM and SIGHUP, torchrun

class UserError(Exception):
    """Bad input from the user: printed as one line naming the fix, no traceback. Under torchrun every rank meets the
    same bad input, so one process a machine prints it (local rank 0), unless every_rank: what one rank alone meets."""

    def __init__(self, message, every_rank=False):
        super().__init__(message)
        self.every_rank = every_rank


def mend_standard_streams(name):
    """Called first thing by a script, with its __name__: closed standard streams (`python gen.py >&- 2>&-`) are
    opened on the null device, else the next file opened (a checkpoint) would take descriptor 1 or 2."""
    if name != "__main__":
        return
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # (the lowest free descriptor: fd itself, those below it being open)
    for stream, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, stream) is None:
            setattr(sys, stream, open(os.devnull, mode, encoding="utf-8"))


def quiet_ctrl_c(name):
    """Called first thing, with its __name__, by a script that imports torch (seconds): Ctrl-C before run_main exits at
    once in one line (os._exit: nothing is written yet), not a traceback from inside the import. Not where SIGINT is
    ignored (`python train.py &`: run_main's hand-back to Python would let Ctrl-C end it). In a container's PID 1,
    SIGTERM and SIGHUP too (stopped_while_loading)."""
    if name != "__main__" or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupted_while_loading)
    if os.getpid() == 1:
        for sig in stop_signals():
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, stopped_while_loading)


def interrupted_while_loading(signum, frame):
    """quiet_ctrl_c's SIGINT handler: "interrupted" and exit 130 at once."""
    if speaks_for_machine():  # as run_main's: one line a machine under torchrun
        with contextlib.suppress(OSError, ValueError):
            print("\ninterrupted", file=sys.stderr, flush=True)
    os._exit(130)


def stopped_while_loading(signum, frame):
    """quiet_ctrl_c's SIGTERM (and SIGHUP) handler in PID 1, to which the system delivers no signal it has no handler
    for (a `docker stop` while torch loaded waited 10 s): exit at once with the shell's status (143, 129)."""
    os._exit(128 + signum)


def run_main(main, ranks=False):
    """Run a script's main(): UserError, Ctrl-C and the file system's refusals (OS_FIXES) end in one clear line, a
    reader that stops early (`| head`) in none; SIGTERM and SIGHUP end it through its clean-up (exit_on_sigterm).
    ranks: the script uses torchrun's processes (train.py); the others are refused under it."""
    # (put back on the way out: tests call scripts' mains through here, and pytest's own SIGTERM must still end it)
    before = {sig: signal.signal(sig, exit_on_sigterm) for sig in stop_signals()} \
        if threading.current_thread() is threading.main_thread() else {}
    if signal.getsignal(signal.SIGINT) is interrupted_while_loading:  # (quiet_ctrl_c's, from the imports)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Python's strict default for stdout, until the way out: a terminal that cannot show a character shows "?"; a file
    # or pipe, which "?" would corrupt, gets the one line below; a non-UTF-8 file name (surrogates) is written as bytes
    strict = getattr(sys.stdout, "errors", None) == "strict"
    with contextlib.suppress(AttributeError, ValueError, OSError):
        if strict:
            sys.stdout.reconfigure(errors="replace" if sys.stdout.isatty() else "surrogateescape")
    made_folders.clear()  # (tests run one main after another in a process)
    try:
        if not ranks:
            one_process_only(main)
        with removing_made_folders():
            return main()
    except UnicodeEncodeError as e:
        out, errors = getattr(sys.stdout, "encoding", None), getattr(sys.stdout, "errors", None) or "strict"
        try:  # the output's encoding at fault? (e.encoding is "charmap" for cp1252 and its kind: no name to compare)
            e.object[e.start:e.end].encode(out or "utf-8", errors)
        except UnicodeEncodeError:
            print(f"error: the output's encoding ({out}) cannot write {ascii(e.object[e.start:e.end])}: set "
                  f"PYTHONIOENCODING=utf-8, or a UTF-8 locale", file=sys.stderr)
            sys.exit(1)
        raise  # not the output's: a bug
    except UserError as e:
        exit_with_error(f"error: {e}", e.every_rank)
    except KeyboardInterrupt:
        if speaks_for_machine():  # Ctrl-C reaches every torchrun process: one line a machine
            print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if isinstance(e, BrokenPipeError) or closed_pipe_on_windows(e):
            # the reader went away (`| head`): stdout to /dev/null, or the flush at exit fails again; 141 as SIGPIPE's
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        if e.errno == errno.EIO and silence_gone_output():
            # the terminal hung up and a line was written to it before its SIGHUP came: an end as the SIGHUP's
            sys.exit(128 + HANGUP)
        if e.errno not in OS_FIXES:
            raise
        # "No space left on device: models/x.pt: free some space or write elsewhere", once a machine under torchrun
        where = f": {e.filename}" if e.filename else ""
        exit_with_error(f"error: {e.strerror or e}{where}: {OS_FIXES[e.errno]}")
    finally:
        made_folders.clear()
        for sig, handler in before.items():
            signal.signal(sig, handler)
        with contextlib.suppress(AttributeError, ValueError, OSError):
            if strict:
                sys.stdout.reconfigure(errors="strict")


def exit_on_sigterm(signum, frame):
    """SIGTERM (`kill`, a job scheduler) and SIGHUP end a script as Ctrl-C does, through its clean-up (finally blocks),
    with the shell's status (143, 129), not on the spot. (train.py installs its own, which saves first.)"""
    if signum == HANGUP:
        hung_up()
    raise SystemExit(128 + signum)


# SIGHUP: the terminal (an SSH session) a script was started from went away. Windows has none
HANGUP = getattr(signal, "SIGHUP", None)


def stop_signals():
    """The signals that end a script through its clean-up (train.py: with a save): SIGTERM, and SIGHUP (a dropped SSH
    session) unless the script was started with it ignored (`nohup`), to outlive its terminal."""
    ignored = HANGUP is None or signal.getsignal(HANGUP) is signal.SIG_IGN
    return (signal.SIGTERM,) if ignored else (signal.SIGTERM, HANGUP)


def hung_up():
    """Called on SIGHUP: the rest of the way out neither writes to the terminal gone with it nor stops on the second
    SIGHUP the shell's end sends, which would cut the clean-up (train.py's save) the first began."""
    signal.signal(HANGUP, signal.SIG_IGN)
    silence_gone_output()


def silence_gone_output():
    """Whether stdout or stderr had lost its reader (a terminal hung up, a `| tee` ended), which is now the null device,
    so a line on the way out cannot cut its clean-up short. False where the system cannot tell (Windows: no poll)."""
    gone = False
    for fd in (1, 2):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            poll = select.poll()
            poll.register(fd, select.POLLOUT)
            if any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0)):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
                gone = True
    return gone


def closed_pipe_on_windows(e):
    """Whether e is how Windows says stdout's reader went away (`| head`): EINVAL, not BrokenPipeError (cpython#79935),
    told from another EINVAL by stdout's flush failing again."""
    if sys.platform != "win32" or e.errno != errno.EINVAL or e.filename is not None:
        return False
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        return True
    return False


# what the machine, not the code, got wrong: the file system's answer is the message, with the fix
OS_FIXES = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EACCES: "check its permissions, or use another path",
    errno.EPERM: "check its permissions, or use another path",
    errno.EROFS: "a read-only file system: write elsewhere",
    errno.EISDIR: "give a file's path, not a folder's",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "use a shorter path",
}


def one_process_only(main):
    """A UserError under torchrun (LOCAL_RANK set, WORLD_SIZE > 1) for a script other than train.py, which each process
    would run whole: it names the command that runs it once."""
    if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        script = os.path.basename(sys.modules[main.__module__].__file__)
        raise UserError(f"{script} is not for torchrun, which runs it once in each of its processes (only train.py "
                        f"shares the work between them): run `{script_command(script, *sys.argv[1:])}`")


def speaks_for_machine():
    """False in torchrun's processes other than each machine's first (LOCAL_RANK 0), which say nothing twice."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def exit_with_error(line, every_rank=False):
    """Exit 1 after line ("error: ..."), said once a machine under torchrun (exit_after_the_first); every_rank: by each
    process, for a fault it meets alone (its own GPU)."""
    if speaks_for_machine() or every_rank:
        print(line, file=sys.stderr)
        sys.exit(1)
    exit_after_the_first(1)


LATE_FIRST_S = 30


def exit_after_the_first(code, first=None):
    """Exit with code over a fault every torchrun process meets and one says: its machine's first (first=False in the
    others). The others wait up to LATE_FIRST_S for torchrun's SIGTERM: ending at once, torchrun would stop the first,
    a moment behind, before it said why."""
    if not (speaks_for_machine() if first is None else first):
        with contextlib.suppress(KeyboardInterrupt):  # (Ctrl-C meanwhile: no traceback from a silent process)
            time.sleep(LATE_FIRST_S)
    sys.exit(code)


def first_line(e, width=200):
    """What an exception says, in one line of at most width characters, cut between words; a heading line ending in
    ':' (load_state_dict's) is skipped for the next."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    line = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
    if len(line) <= width:
        return line
    head = line[:width - 3]  # a word the cut ends inside goes ("... by pe" read as a typo); one it ends after stays
    return (head if line[width - 3] == " " else head.rsplit(" ", 1)[0]).rstrip() + "..."


# -----------------------------------------------------------------------------
# command-line arguments

# Other tools' names for options named otherwise here (nanoGPT's, Hugging Face's, minimind's), typed by habit, which
# no close spelling finds (--learning_rate) or finds wrong (--eval_iters): guessed as the first of these the script
# has, else as nothing (--num_workers).
OTHER_TOOLS_OPTIONS = {"--learning_rate": ["--lr"], "--gradient_accumulation_steps": ["--grad_accum"],
                       "--eval_iters": ["--eval_batches"], "--out_dir": ["--output_checkpoint", "--checkpoint"],
                       "--init_from": ["--checkpoint"], "--start": ["--prompt"],
                       # (nanoGPT's saves at evaluations; here every --save_interval, and the best file apart)
                       "--always_save_checkpoint": ["--save_interval"],
                       "--compile": [],  # (sample.py's: gen.py and eval.py do not compile)
                       "--per_device_train_batch_size": ["--batch_size"], "--output_dir": ["--output_checkpoint"],
                       "--max_seq_length": ["--block_size"], "--model_name_or_path": ["--init_from", "--checkpoint"],
                       "--num_return_sequences": ["--num_samples"], "--hidden_size": ["--n_embd"],
                       "--num_attention_heads": ["--n_head"],
                       # minimind's (--max_seq_len: the context, or in its eval_model.py the reply's length)
                       "--max_seq_len": ["--block_size", "--max_tokens"], "--dim": ["--n_embd"],
                       "--accumulation_steps": ["--grad_accum"], "--save_dir": ["--output_checkpoint"],
                       "--from_weight": ["--checkpoint"],
                       # (minimind's --from_resume 1 goes on from the run's newest checkpoint, as train.py's --resume)
                       "--from_resume": ["--resume", "--checkpoint"],
                       "--resume": ["--checkpoint"],  # (in the other scripts: the checkpoint to load)
                       "--model_path": ["--init_from", "--checkpoint"], "--num_workers": [],
                       # eval.py's old name for --prompt_file (in gen.py, --prompt would be its close spelling)
                       "--prompts": ["--prompt_file"],
                       "--model": ["--checkpoint"]}  # (vLLM's and llama.cpp's; train.py's --model is a preset)
# nanoGPT's train.py options whose work another script does here: said with that script's command, not guessed as an
# option (--eval_only's close spelling, --eval_interval, still trains)
OTHER_TOOLS_SCRIPTS = {"--eval_only": ("eval.py", "CHECKPOINT", "evaluates a checkpoint")}


def command_words(argv):
    """A script main's argv as its command line's words; None: sys.argv[1:], but none in a Jupyter kernel (its -f).
    From Python a string is split as a shell splits it (main("--epochs 1")), and a number or a path is its text."""
    if argv is None:
        kernel = "ipykernel" in sys.modules and any(a == "-f" or a.startswith("--f=") for a in sys.argv[1:])
        return [] if kernel else sys.argv[1:]
    if isinstance(argv, str):
        try:
            return shlex.split(argv)
        except ValueError as e:  # (shlex's "No closing quotation")
            raise UserError(f"the options {argv!r} do not split as a shell's words ({e}): give a list of them") \
                from None
    words = []
    for word in argv:
        if isinstance(word, os.PathLike):
            word = os.fspath(word)
        elif isinstance(word, (int, float)):
            word = str(word)
        if not isinstance(word, str):
            raise UserError(f"the options hold {word!r}, a {type(word).__name__}: each is a string, as typed on a "
                            f"command line")
        words.append(word)
    return words


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, with a usage error in one line (not under train.py's 20 lines of usage) that names a close option
    for a misspelt one (--block-size); under torchrun, one process a machine says it (and --help)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # a value that starts as a negative number is a value (`--time_budget -90s`, as Python 3.13 reads it)
        self._negative_number_matcher = re.compile(r"-\.?\d")

    def error(self, message):
        if not speaks_for_machine():
            exit_after_the_first(2)
        script, *command = self.prog.split(" ")  # (a subcommand's: "setup_tokenizer.py train")
        # -host is read as -h (--help) given "ost": the word typed is matched as an unrecognized one is
        after_h = re.fullmatch(r"argument -h/--help: ignored explicit argument '(.+)'", message)
        if message.startswith("unrecognized arguments: ") or after_h:
            words = [f"-h{after_h[1]}"] if after_h else message.split(": ", 1)[1].split()
            # a word after one dash (-temp, a habit from other tools) is read as the long option it may mean: a single
            # letter (-x) or a number (-1, a value) is not
            given = [("-" + a if re.match(r"-[^\W\d_][\w-]", a) else a).split("=", 1)[0]
                     for a in words if re.match(r"--|-[^\W\d_][\w-]", a)]
            # (a subcommand's unknown ones are said by its own parser: parse_args)
            options = [o for o in self._option_string_actions if o.startswith("--")]  # (-h is no guess: -hz, --hz)
            def guess(word):
                if word in OTHER_TOOLS_SCRIPTS:
                    return []
                if word in OTHER_TOOLS_OPTIONS:
                    return [o for o in OTHER_TOOLS_OPTIONS[word] if o in options][:1]
                return difflib.get_close_matches(word, options, n=1)
            # (once each: --temprature and --tempratur both meant --temp)
            close = [*dict.fromkeys(m for a in given for m in guess(a))]
            if close:
                message += f" (did you mean {', '.join(close)}?)"
            for word in dict.fromkeys(a for a in given if a in OTHER_TOOLS_SCRIPTS):
                other, arg, does = OTHER_TOOLS_SCRIPTS[word]
                if other != script:  # (eval.py --eval_only: no "eval.py evaluates" from eval.py itself)
                    message += f" ({word}: `{script_command(other, arg)}` {does})"
        # --compile=False, as nanoGPT's configurator takes it: argparse said "ignored explicit argument 'False'"
        switch = re.fullmatch(r"argument (--[^/]+)\S*: ignored explicit argument '(.*)'", message)
        if switch:
            name = switch[1]
            off = [o for o in (f"--no_{name[2:]}", f"--no-{name[2:]}") if o in self._option_string_actions][:1]
            message = f"{name} is a switch: it takes no value ({switch[2]!r} given); " + \
                (f"{name} turns it on, {off[0]} off" if off else f"give {name} alone, or leave it out")
        self.exit(2, f"{self.prog}: error: {message}; see {script_command(script, *command, '--help')}\n")

    def parse_args(self, args=None, namespace=None):
        # a switch given a value as a word of its own, as nanoGPT's (--bias False), is said as --bias=False is
        args = words = command_words(args)  # (a notebook's string or numbers too)
        for option, word in zip(words, words[1:]):
            action = self._option_string_actions.get(option)
            if option.startswith("--") and action is not None and action.nargs == 0 and \
                    not isinstance(action, argparse._HelpAction) and word.lower() in ("true", "false"):
                self.error(f"argument {'/'.join(action.option_strings)}: ignored explicit argument '{word}'")
        # an unknown option after a subcommand is said by that subcommand's parser, whose --help lists the options
        args, unknown = self.parse_known_args(args, namespace)
        if unknown:
            chosen = [a.choices[getattr(args, a.dest)] for a in self._actions
                      if isinstance(a, argparse._SubParsersAction) and getattr(args, a.dest, None) in a.choices]
            (chosen[0] if chosen else self).error(f"unrecognized arguments: {' '.join(unknown)}")
        return args

    def print_help(self, file=None):
        if speaks_for_machine():
            super().print_help(file)


class Switch(argparse.Action):
    """An on/off option: --NAME turns it on, --no_NAME (or --no-NAME) off; None when neither is given."""

    def __init__(self, option_strings, dest, default=None, help=None):
        name = option_strings[0][2:]
        super().__init__([*option_strings, f"--no_{name}", f"--no-{name}"], dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        # (--no_ or --no-, not --no: a name may start so; the prefix, not the whole string: an abbreviation may come)
        setattr(namespace, self.dest, not option_string.startswith(("--no_", "--no-")))

    def format_usage(self):
        return " | ".join(self.option_strings[:2])


def nonempty(text):
    """argparse type of a path or name: '' (an unset shell variable: --checkpoint "$CKPT") is refused, not taken as the
    option left out."""
    if not text:
        raise argparse.ArgumentTypeError("is empty: give a value")
    return text


def path_arg(text):
    """argparse type of a path: nonempty's, a leading ~ expanded, as the shell leaves it in `--out_dir=~/data` (a
    folder named ~ is one `rm -rf ~` away from the user's home)."""
    return os.path.expanduser(nonempty(text))


def number(text, kind):
    """text as kind (int or float), for an argparse type that checks a range too: no number gets argparse's own line
    ("invalid int value: '1.5'"), not one naming the function."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None


def at_least(minimum):
    """An argparse type: an int of minimum or more ("argument --steps: must be at least 1, got 0"), one wording for
    every script's counts."""
    def parse(text):
        value = number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def require_utf8(text, what):
    """A command-line argument that is UTF-8 text, else a UserError: bytes the locale could not decode are kept by
    Python as lone surrogates, which fail later, in a traceback."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{what} is not UTF-8 text: give it in UTF-8") from None


def expand_pattern(path, option):
    """[path], or where no such path is and it holds a wildcard the shell did not expand (quoted, or Windows'), the
    paths it matches."""
    if os.path.exists(path) or not any(c in path for c in "*?["):
        return [path]
    found = sorted(glob.glob(path, recursive=True))
    if not found:
        raise UserError(f"{option} {path}: no file or folder matches this pattern")
    return found


def file_identity(path):
    """What tells the file at path apart however it is spelled (a link, a hard link): its (device, inode), or its real
    path where the file system gives no inode or nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


# -----------------------------------------------------------------------------
# reading text: JSON values, and the error for a file that is not UTF-8 text

def json_kind(v):
    """What a value read from JSON is, in JSON's words ("an array", not Python's "list"): the user wrote JSON."""
    if isinstance(v, bool):  # (before int: True is an int in Python)
        return "a boolean"
    kinds = ((type(None), "null"), (dict, "an object"), (list, "an array"), (str, "a string"),
             ((int, float), "a number"))
    return next((name for t, name in kinds if isinstance(v, t)), type(v).__name__)


def nonnegative_int(v):
    """Whether v, read from a checkpoint or meta.json, is a count: an int of 0 or more, not a bool."""
    return type(v) is int and v >= 0


def parts_text(content, role="user", types=("text",)):
    """OpenAI's list of content parts, [{"type": "text", "text": "Hi"}, ...], as one string; None when content is no
    such list. types: the parts' types that hold text; an assistant's may also hold refusal parts, as OpenAI's client
    sends its earlier replies back."""
    kinds = types + ("refusal",) if role == "assistant" else types

    def text(p):
        return p.get("refusal" if p["type"] == "refusal" else "text")

    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) and p["type"] in kinds
                                         and isinstance(text(p), str) for p in content):
        return "".join(map(text, content))
    return None


def without_surrogates(x):
    """x (parsed JSON), each lone surrogate (\\ud800) made U+FFFD, as tiktoken reads it: writing one fails."""
    if isinstance(x, str):
        return re.sub("[\ud800-\udfff]", "\ufffd", x)
    if isinstance(x, list):
        return [without_surrogates(v) for v in x]
    if isinstance(x, dict):
        return {k: without_surrogates(v) for k, v in x.items()}
    return x


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # the byte-order marks opening UTF-16 text (Windows' "Unicode")


class NotText(UserError):
    """not_utf8's and holds_nul's error, whose way out a caller may add to (prepare.py's --source folders)."""


def not_utf8(path, what=None, fix=None):
    """The UserError for a file that is not UTF-8 text, naming its first bad byte by line and offset in the file (not
    in a decoder's block), and the likeliest way to convert it."""
    try:
        where = first_bad_utf8(path)
        if fix is None and os.path.isfile(path):
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            fix = utf16_fix(path) if head[:2] in UTF16_BOMS else \
                decompress_fix(path, head) or (binary_fix(path) if b"\0" in head else None)
        if fix is None and where and utf8_around(path, where[1]):
            fix = stray_byte_fix(path)
        if fix is None and where:
            with open(path, "rb") as f:  # (before the first bad byte, bytes beyond ASCII are UTF-8's)
                f.seek(where[1])
                after = f.read(1 << 20)
            fix = encoding_fix(after, path)
    except OSError:
        where = None
    fix = fix or latin1_fix(path)
    # an offset from 0, as dd skip= and xxd -s take it: "line 1, byte 0" read as a count from 1, as the line is
    at = f" (line {where[0]:,}, byte offset {where[1]:,} in the file)" if where else ""
    return NotText(f"{what or path} is not UTF-8 text{at}: {fix}")


def first_bad_utf8(path, block=1 << 20):
    """(line, offset in the file) of the first byte of path that is not UTF-8, lines counted as Python's text files
    count them (\n, \r\n or \r); None when there is none, or when path cannot be read again (a pipe, read already)."""
    if not os.path.isfile(path):
        return None
    lines, base, rest, cr = 1, 0, b"", False  # rest: a character cut at the end of a block; cr: a block ended in \r
    with open(path, "rb") as f:
        while data := f.read(block):
            data = rest + data
            try:
                data.decode("utf-8")
                good, bad = len(data), False
            except UnicodeDecodeError as e:  # not bad: a character cut at the block's end, whole with the next block
                good, bad = e.start, e.end < len(data) or e.reason != "unexpected end of data"
            seen, rest = data[:good], data[good:]
            lines += seen.count(b"\n") + seen.count(b"\r") - seen.count(b"\r\n") - (cr and seen[:1] == b"\n")
            cr = seen[-1:] == b"\r"
            if bad:
                return lines, base + good
            base += len(seen)
    return (lines, base) if rest else None  # the file ends inside a character


def encoding_fix(data, path):
    """The advice for text in data (bytes from the first that is not UTF-8) that names the 8-bit encoding it looks
    like, its command to convert path; None where it looks like none (latin1_fix then)."""
    # (in this order: GBK's two-byte characters can hold a sign between letters, as cp1250 and latin2 text does)
    if letters := letters_encoding(data):
        return letters_fix(path, letters)
    if encoding := two_byte_encoding(data):
        return two_byte_fix(path, encoding)
    if east_asian(data):
        encoding = "euc-jp" if euc_jp(data) else "cp949" if korean(data) else None
        return two_byte_fix(path, encoding) if encoding else gb18030_fix(path)
    if letters := central_european(data):
        return letters_fix(path, letters)
    return cp1252_fix(path) if re.search(rb"[\x80-\x9f]", data) else None  # (C1 bytes: cp1252's, not latin1's)


def latin1_fix(path):
    return f"convert it, e.g. {fix_command('iconv -f latin1 -t utf-8', path)}"


def fix_command(command, path, tag="utf8"):
    """A command to paste that mends path: `command < PATH > OUT`, OUT a new file beside it, tag before its suffix
    (notes.utf8.txt: still a .txt). Not in place: the shell empties `> notes.txt` before iconv reads it. A pipe or
    device gets the bare command."""
    if not os.path.isfile(path):
        return f"`{command}`"
    return f"`{command} < {shlex.quote(path)} > {shlex.quote(mended_path(path, tag))}`"


def mended_path(path, tag="utf8"):
    """Where fix_command's command writes its copy of path: next to it, tag before its suffix."""
    stem, ext = os.path.splitext(path)
    if ext in (".gz", ".xz", ".zst", ".bz2"):  # what it decompresses to is no longer compressed: notes.txt.gz's text
        stem, ext = os.path.splitext(stem)
    return f"{stem}.{tag}{ext}"


# not_utf8's ways out for what is not UTF-8 text, besides converting from latin1 (its default), which garbles these.
# Windows' "Unicode" text (from latin1 it would be UTF-8 with a NUL after each letter):
def utf16_fix(path):
    return f"it is UTF-16: convert it, e.g. {fix_command('iconv -f utf-16 -t utf-8', path)}"


# NUL bytes, without UTF-16's byte-order mark (a token file given for its text: from latin1, nonsense "text"):
def binary_fix(path):
    return ("it holds NUL bytes: not text at all (a token file? give the text it was made from), or UTF-16 without a "
            f"byte-order mark (convert it, e.g. {fix_command('iconv -f utf-16le -t utf-8', path)})")


def holds_nul(path, text=""):
    """The UserError for text that holds NUL, as UTF-16 without a byte-order mark read as UTF-8 does: valid UTF-8,
    "O\\0n\\0c\\0e\\0". text: what was read from its start, whose NUL before the first letter says big-endian."""
    order = "be" if text[:1] == "\0" else "le"
    drop = fix_command("tr -d '\\000'", path)
    return NotText(f"{path} holds NUL bytes, which text does not: UTF-16 without a byte-order mark? convert it, e.g. "
                   f"{fix_command(f'iconv -f utf-16{order} -t utf-8', path)}; stray ones: remove them, e.g. {drop}")


# a compressed file under a text name (a download kept as it came), which holds NUL bytes too but is no token file: the
# tool that decompresses it, by its magic number
DECOMPRESS = {b"\x1f\x8b": "gunzip", b"\xfd7zXZ\x00": "unxz", b"\x28\xb5\x2f\xfd": "unzstd",
              **{b"BZh%d" % n: "bunzip2" for n in range(1, 10)}}


def decompress_fix(path, head):
    """The way out for a file whose first bytes, head, are a compressed file's; None for any other."""
    tool = next((t for magic, t in DECOMPRESS.items() if head.startswith(magic)), None)
    return tool and f"it is compressed: decompress it first, e.g. {fix_command(f'{tool} -c', path, 'decompressed')}"


# UTF-8 text with a stray byte (a chat log with emoji, one line pasted from elsewhere): from latin1, every character
# beyond ASCII would become two or more others ("caf\u00c3\u00a9"), and the file be accepted, garbled
def stray_byte_fix(path):
    return ("the text around it is UTF-8, so a stray byte? drop such bytes, e.g. "
            f"{fix_command('iconv -c -f utf-8 -t utf-8', path)}, or mend that line (converting from latin1 would "
            "garble its other characters)")


# Windows' "ANSI" text, cp1252, which most text that is not UTF-8 is today: its bytes 0x80-0x9F (curly quotes, dashes,
# the euro sign) would become invisible C1 controls converted from latin1, whose text holds none. A file whose 0x81 or
# 0x90 is in neither gets this advice still: iconv -f cp1252 stops on such a byte and says where, where latin1 would say
# nothing (0x8D, 0x8F and 0x9D, also undefined, are cp1250's Ť Ź ť: central_european).
def cp1252_fix(path):
    return ("it looks like Windows-1252 (bytes 0x80-0x9F: curly quotes, dashes, the euro sign): convert it, e.g. "
            f"{fix_command('iconv -f cp1252 -t utf-8', path)}")


def utf8_around(path, at):
    """Whether the 64 KiB of path on either side of offset at are mostly_utf8, as latin1 or cp1252 text hardly ever is:
    the file is UTF-8 but for its byte at. (Not one such character: GBK's make one for every three that are not.)"""
    span = 1 << 16
    with open(path, "rb") as f:
        f.seek(max(0, at - span))
        return mostly_utf8(f.read(at - max(0, at - span) + 1 + span))


def mostly_utf8(data):
    """Whether data holds as many characters beyond ASCII in valid UTF-8 as bytes that are none."""
    text = data.decode("utf-8", "replace")
    return len(re.findall("[\x80-\ufffc\U00010000-\U0010ffff]", text)) >= text.count("\ufffd")


# Chinese Windows' "ANSI" text, GBK (GB18030 is its superset), whose common characters are two bytes from 0xA1 up:
# from cp1252 or latin1 each would become two Western letters. Western text in those holds a byte from 0x80 up before
# a space or a line break, which GB18030 refuses, and its accented letters come one at a time (für, naïve: which
# GB18030 reads, as a character of the letter after); Big5, Shift-JIS and EUC-KR text often decodes as GB18030,
# garbled, so the advice names them too.
def east_asian(data):
    """Whether data (not_utf8's MiB from a file's first bad byte) decodes as GB18030 (whole_lines), nine in ten of its
    bytes beyond ASCII next to another."""
    if (data := whole_lines(data, "gb18030")) is None:
        return False
    runs = [len(run) for run in re.findall(rb"[\x80-\xff]+", data)]
    return sum(n for n in runs if n > 1) >= 0.9 * sum(runs) > 0


# Traditional Chinese Windows' "ANSI" text (Big5 as Microsoft extends it, cp950) and Japanese Windows' (Shift-JIS so,
# cp932): a character is two bytes, the second as often an ASCII letter or sign (0x40-0x7E: 你 is Big5's A7 41, カ
# Shift-JIS's 83 4A) as a byte from 0x80 up. So many of their bytes beyond ASCII stand alone, as Western accented
# letters do, and east_asian does not take them for GB18030, while latin2's or cp1252's advice would garble every
# character.
# Each is told by where its common characters' first bytes lie, where Western letters' bytes (0xC0-0xFF) and cp1252's
# quotes do not: Big5's at 0xA1-0xC6; Shift-JIS's at 0x81-0x9F, hiragana's second bytes from 0x9F up (GBK's common
# characters' second bytes are all from 0xA1 up). A Western capital can be such a character too (SÃO is Big5's C3 4F
# and O): in Chinese and Japanese most characters stand next to another.
# each encoding: (a character's two bytes, its common first bytes, whether the second may be high)
TWO_BYTE_ENCODINGS = {
    "cp950": (rb"[\x81-\xfe][\x40-\x7e\xa1-\xfe]", range(0xA1, 0xC7), False),
    "cp932": (rb"[\x81-\x9f\xe0-\xfc][\x40-\x7e\x80-\xfc]", range(0x81, 0xA0), True)}


def two_byte_encoding(data):
    """"cp950" or "cp932" where data (not_utf8's MiB) decodes so (whole_lines), a tenth of its characters' second bytes
    ASCII (a third from 0x80 up, for cp932), nine in ten of their first bytes (half, for cp932) its common ones, half
    of them next to another; else None."""
    for encoding, (pattern, common_first, high_second) in TWO_BYTE_ENCODINGS.items():
        if (lines := whole_lines(data, encoding)) is None:
            continue
        chars = re.findall(pattern, lines)
        paired = sum(len(run) // 2 for run in re.findall(rb"(?:%s){2,}" % pattern, lines))
        if (sum(c[1] < 0x80 for c in chars) >= 0.1 * len(chars) > 0 and paired >= 0.5 * len(chars)
                and sum(c[0] in common_first for c in chars) >= (0.5 if high_second else 0.9) * len(chars)
                and (not high_second or sum(c[1] >= 0x80 for c in chars) >= len(chars) / 3)):
            return encoding
    return None


TWO_BYTE_NAMES = {"cp950": "Big5, Traditional Chinese Windows' encoding (Hong Kong's Big5-HKSCS: -f big5-hkscs)",
                  "cp932": "Shift-JIS, Japanese Windows' encoding", "euc-jp": "EUC-JP, Japanese Unix encoding",
                  "cp949": "EUC-KR, Korean Windows' encoding"}


def two_byte_fix(path, encoding):
    name, _, other = TWO_BYTE_NAMES[encoding].partition(" (")
    return (f"it looks like {name}: convert it, e.g. {fix_command(f'iconv -f {encoding} -t utf-8', path)} "
            f"({other[:-1] + '; ' if other else ''}check that the copy reads right)")


def whole_lines(data, encoding):
    """data, the MiB not_utf8 reads, to its last line break where it is that MiB (which may cut a character); None
    where that does not decode as encoding (each guess's first test)."""
    data = data[:data.rfind(b"\n") + 1] if len(data) == 1 << 20 else data
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return None
    return data


# Japanese Unix text, EUC-JP: two bytes from 0xA1 up a character, as GBK's, so it passes east_asian, and GBK's kana sit
# where EUC-JP's do (rows 0xA4 and 0xA5, both from JIS X 0208): its hiragana and katakana, a third to a half of
# Japanese text, read right, and its kanji as other Chinese characters. Chinese text writes kana hardly ever.
def euc_jp(data):
    """Whether data (which east_asian took for GB18030) decodes as EUC-JP, a fifth of its characters kana."""
    if (data := whole_lines(data, "euc-jp")) is None:
        return False
    chars = re.findall(rb"[\x81-\xfe][\x40-\xfe]", data)
    return sum(c[0] in (0xA4, 0xA5) for c in chars) >= 0.2 * len(chars) > 0


# Korean Windows' text, cp949 (EUC-KR and the syllables it lacks): two bytes from 0x81 up a character, most of them
# from 0xA1 up, as GBK's, so it passes east_asian, its Hangul read as Chinese characters. Korean writes spaces between
# its words, of a few syllables each (rows 0xB0-0xC8); Chinese writes none between characters, whose rows run on to
# 0xF7. (A line of a word or two, with no space, is still told GBK: that advice names EUC-KR too.)
def korean(data):
    """Whether data (which east_asian took for GB18030) decodes as cp949, nine in ten of its characters Hangul
    syllables' rows, a space between two of them for every ten."""
    if (data := whole_lines(data, "cp949")) is None:
        return False
    chars = re.findall(rb"[\x81-\xfe][\x41-\xfe]", data)
    return (sum(0xB0 <= c[0] <= 0xC8 for c in chars) >= 0.9 * len(chars) > 0
            and len(re.findall(rb"[\x80-\xff] (?=[\x80-\xff])", data)) >= 0.1 * len(chars))


def gb18030_fix(path):
    return ("it looks like GBK/GB18030, Chinese Windows' encoding: convert it, e.g. "
            f"{fix_command('iconv -f gb18030 -t utf-8', path)} (Big5, Shift-JIS or EUC-KR text: -f big5, -f "
            "shift-jis or -f euc-kr; check that the copy reads right)")


# letters' bytes: 0xC0-0xFF, and below them cp1251's Ё ё, Ukrainian's and Belarusian's І і Ї ї Є є Ґ ґ Ў ў (Ј ј
# Serbian's), which hold KOI8-R's Ё ё too (0xA3, 0xB3)
CYRILLIC_BYTES = rb"\xa1-\xa3\xa5\xa8\xaa\xaf\xb2-\xb4\xb8\xba\xbc\xbf\xc0-\xff"


# Russian Windows' "ANSI" text, cp1251 (KOI8-R, older, too), whose letters are bytes 0xC0-0xFF (and CYRILLIC_BYTES'):
# from latin1 or cp1252 each becomes an accented Western letter. Western text has those bytes too, but one at a time
# inside words of ASCII letters (café, für); Cyrillic words are runs of them (two letters at least) that no other byte
# beyond ASCII touches but cp1251's quotes and ellipsis, as GBK's and EUC-KR's runs seldom are. Checked before
# east_asian (Cyrillic words of even length can read as GB18030) and before the cp1252 advice (cp1251 has its dashes
# and quotes).
# Greek's cp1253 is told by its accented ά έ ή ί (0xDC-0xDF: cp1251's capitals Ь Э Ю Я) and its final sigma ς (0xF2)
# ending words, and is told first, as KOI8-R reads Greek's vowels as Russian's; KOI8-R from cp1251 by which reads more
# of Russian's commonest letters (all-capital text is told wrong: KOI8-R's small letters are cp1251's capitals).
def letters_encoding(data):
    """The 8-bit encoding, "cp1251", "koi8-r" or "cp1253", whose words of letters most of the letters' bytes in data
    (not_utf8's: a file's bytes from its first that is not UTF-8) form: runs of them that neither an ASCII letter nor
    another byte beyond ASCII (but a quote or an ellipsis) touches. None where they form no such words."""
    # the bytes beyond ASCII that may not touch a word: all but cp1251's « » „ “ ” and … (as in «книга»…)
    other = rb"A-Za-z\x80-\x83\x86-\x92\x95-\xaa\xac-\xba\xbc-\xff"
    words = re.findall(rb"(?<![%s])[%s]{2,}(?![%s])" % (other, CYRILLIC_BYTES, other), data)
    if not sum(map(len, words)) >= 0.8 * len(re.findall(rb"[%s]" % CYRILLIC_BYTES, data)) > 0:
        return None
    inner = [b for w in words for b in w[1:]]  # a word's letters but its first
    sigmas = [i == len(w) - 1 for w in words for i, b in enumerate(w) if b == 0xF2]  # (whether each 0xF2 ends its word)
    if any(0xDC <= b < 0xE0 for b in inner) and sigmas and sum(sigmas) >= 0.9 * len(sigmas):
        return "cp1253"
    # Russian's and Ukrainian's commonest letters, о е а и і (a third of their text), as each encoding reads the
    # words, in either case; an eighth of random letters (GBK's two-byte characters can make such words: 你好)
    text = b" ".join(words)
    vowels = {enc: sum(map(text.decode(enc).lower().count, "оеаиі")) for enc in ("cp1251", "koi8-r")}
    best = max(vowels, key=vowels.get)
    return best if vowels[best] >= 0.25 * sum(map(len, words)) else None


# Polish, Czech or Slovak Windows' text, cp1250, and the ISO standard before it, latin2: from cp1252 or latin1 their
# ą ł ż (Polish's commonest accented letters) become signs, ¹ ³ ¿ in "by³", inside words, where Western text has none
# (¿ opens a word, ² ends one; · and ´, which Catalan and some keyboards write between letters, are left out). cp1250 is
# told from latin2 by its letters at 0x80-0x9F (ś, ź, š), C1 controls in latin2; its Ť, Ź and ť (0x8D, 0x8F, 0x9D),
# undefined in cp1252, name it alone. Czech, whose ř č ě read as Western letters (ø è ì), is seldom told (cp1252 then).
def central_european(data):
    """"cp1250" or "iso-8859-2" where data (not_utf8's MiB) looks like Central European text in one, else None."""
    signs = re.findall(rb"(?<=[A-Za-z\xc0-\xff])[\xa1-\xac\xae-\xb3\xb5\xb6\xb8-\xbf](?=[A-Za-z\xc0-\xff])", data)
    if re.search(rb"[\x8d\x8f\x9d]", data) or len(signs) >= 0.1 * len(re.findall(rb"[\x80-\xff]", data)) > 0:
        return "cp1250" if re.search(rb"[\x80-\x9f]", data) else "iso-8859-2"
    return None


LETTERS_ENCODINGS = {"cp1251": "Cyrillic in Windows-1251, Russian Windows' encoding", "koi8-r": "Cyrillic in KOI8-R",
                     "cp1253": "Greek in Windows-1253, Greek Windows' encoding",
                     "cp1250": "Central European in Windows-1250 (Polish, Czech, Slovak...)",
                     "iso-8859-2": "Central European in ISO-8859-2 (latin2)"}


def letters_fix(path, encoding):
    return (f"it looks like {LETTERS_ENCODINGS[encoding]}: convert it, e.g. "
            f"{fix_command(f'iconv -f {encoding} -t utf-8', path)} (check that the copy reads right)")


# -----------------------------------------------------------------------------
# what the user sees: colors, progress, commands to paste, questions

def fmt_count(n):
    """A count as every script says it: 1.4M, 33.3k, 512."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def color_ok(stream):
    """Whether stream takes ANSI styling: a terminal, without NO_COLOR set (no-color.org) and not TERM=dumb (Emacs'
    buffers show the codes as ^[[2m), as git and ls decide. Every script's styling asks here."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def draws_a_bar(stream):
    """Whether a progress bar on stream is seen: a terminal with a width and a height (tqdm draws none on one of 0
    columns, as `script -qc CMD /dev/null` makes, or 0 rows)."""
    if not stream.isatty():
        return False
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns > 0 and size.lines > 0
    except (OSError, ValueError):  # no size to ask for: tqdm's own fallback width
        return True


PROGRESS_LINE_S = 60  # progress where no bar is drawn (a log file): a line a minute (ProgressLines)

# how ProgressLines counts each unit: bytes and tokens in millions, windows one by one
PROGRESS_UNITS = {"B": (1e6, " MB"), "tokens": (1e6, "M tokens"), "windows": (1, " windows")}


def progress_bar(desc, total, unit="B"):
    """The progress of a long job in unit (of PROGRESS_UNITS), total of them all or None: a tqdm bar on a terminal,
    else ProgressLines."""
    if draws_a_bar(sys.stderr):
        from tqdm import tqdm  # (here: common.py is imported first, and light)
        return tqdm(desc=desc, total=total, unit=unit if unit == "B" else f" {unit}", unit_scale=True, leave=False)
    return ProgressLines(desc, total, unit)


class ProgressLines:
    """Progress where no bar is drawn (a log): a line on standard error every PROGRESS_LINE_S seconds, what was counted
    and, of a known total, its share and the time left. tqdm's update() and context, no more."""

    def __init__(self, desc, total, unit):
        self.desc, self.total, self.n = desc, total, 0
        self.said = time.monotonic()
        self.scale, self.unit = PROGRESS_UNITS[unit]
        self.first = None  # (time, count) at the first update, where the rate's clock starts

    def update(self, n):
        self.n += n
        now = time.monotonic()
        # the rate from the first update on: a pass before it that counts nothing would make it too low
        self.first = self.first or (now, self.n)
        if now - self.said < PROGRESS_LINE_S or now == self.first[0]:  # (no rate yet: said at the next update)
            return
        self.said, rate = now, (self.n - self.first[1]) / max(now - self.first[0], 1e-9)  # a second
        line = f"{self.desc}: {self.n / self.scale:,.0f}{self.unit}"
        if self.total:
            line += f" of {self.total / self.scale:,.0f}{self.unit} ({min(100 * self.n / self.total, 100):.0f}%)"
            if rate and self.n < self.total:
                line += f", about {math.ceil((self.total - self.n) / rate / 60)} min left"
        print(f"{line}, {rate / self.scale:.2f}{self.unit}/s", file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def python_command():
    """How a command to paste calls Python: `python` or `python3` where that name on PATH is this interpreter (an
    activated venv), else its path (.venv/bin/python, as `make demo` runs it): the system's Python has no torch."""
    if not sys.executable:  # (an embedded interpreter says none)
        return "python"
    return as_called(os.path.abspath(sys.executable), ("python", "python3"))


def torchrun_command():
    """How a command to paste calls torchrun: the one beside this Python, as python_command calls Python, else this
    Python's `-m torch.distributed.run` (a bare `torchrun` outside the venv is another install's, or none)."""
    exe = os.path.abspath(sys.executable) if sys.executable else ""
    beside = os.path.join(os.path.dirname(exe), "torchrun")
    if exe and os.path.isfile(beside):
        return as_called(beside, ("torchrun",))
    return f"{python_command()} -m torch.distributed.run"


def as_called(program, names):
    """program (an absolute path) as the user's shell reaches it: one of names where PATH finds that very program, else
    its path (shown_path)."""
    for name in names:
        found = shutil.which(name)
        # a venv's python is a link to the system's: the same file, but another environment unless the same folder
        if found and os.path.dirname(os.path.abspath(found)) == os.path.dirname(program) and \
                os.path.realpath(found) == os.path.realpath(program):
            return name
    return shlex.quote(shown_path(program))


def shown_path(path):
    """path as a command to paste names it: relative below the working directory, else absolute (not ../../usr)."""
    path = os.path.abspath(path)
    try:
        rel = os.path.relpath(path)
    except ValueError:  # (another drive, on Windows)
        return path
    return path if rel.startswith("..") else rel


def script_command(script, *args):
    """The command line to paste that runs script (train.py, ...) with args: python_command's Python, the script's path
    from the working directory (`python gpt/train.py`), the arguments quoted for a shell."""
    return f"{python_command()} {shlex.join([script_path(script), *args])}"


def script_path(script):
    """The path of script (train.py, ...) from the working directory, as a command to paste names it (shown_path)."""
    return shown_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), script))


def ask(prompt):
    """The user's answer to prompt, stripped; None at the end of input (Ctrl-D), the line then ended."""
    try:
        return input(prompt).strip()
    except EOFError:
        print()
        return None


# -----------------------------------------------------------------------------
# output paths: checked before the work; the files no output may replace

def check_output(path, option, folder=False, inputs=(), checkpoint=False, vocabulary=False):
    """Fail now, with one line naming option, when path cannot be written: before hours of work, not at the end.
    Creates the folder (path itself when folder, else its parent) and writes and removes a probe file there.
    inputs: {option: path(s)} the command reads, which path must not be. Nor may path be a kept_file, unless
    checkpoint (a checkpoint over one, and over no other file) or vocabulary (one retrained in place)."""
    if not path:
        raise UserError(f"{option} is empty: give a path")
    # a folder's path, or one to make ("out/", which an atomic write would take as out/.PID.tmp, failing at the end)
    if not folder and (os.path.isdir(path) or path.endswith(("/", os.sep))):
        raise UserError(f"{option} {path} is a folder: give a file's path")
    for name, given in dict(inputs).items():
        for f in [given] if isinstance(given, str) else given or []:
            # a folder's files too: a model folder's weights replaced by JSON, had the checkpoint been a folder
            inside = [os.path.join(f, e) for e in os.listdir(f)] if os.path.isdir(f) else []
            if os.path.exists(path) and any(os.path.exists(g) and os.path.samefile(g, path) for g in [f, *inside]):
                raise UserError(f"{option} {path} is the {name} it reads: the result would replace it; give another "
                                f"{option}")
    if special_file(path):  # /dev/null, a named pipe: written through (fsync_replace)
        if not os.access(path, os.W_OK):
            raise UserError(f"{option} {path}: cannot write there (permission denied): choose another path")
        return
    if read_only(path):
        raise UserError(f"{option} {path}: cannot write there (the file is read-only): check its permissions, or use "
                        f"another path")
    kept = kept_file(path) if os.path.isfile(path) else None
    if kept and not (checkpoint and kept.startswith("a checkpoint")) and not (vocabulary and kept == "a vocabulary"):
        raise UserError(f"{option} {path} is {kept}: the result would replace it; give another {option}")
    # a checkpoint's or vocabulary's path that holds another file (notes.jsonl, a text meant as one more --input)
    # would lose it; an empty file loses nothing
    if (checkpoint or vocabulary) and not kept and os.path.isfile(path) and os.path.getsize(path) \
            and not (vocabulary and starts_as_vocabulary(path)):
        raise UserError(f"{option} {path} is not a {'checkpoint' if checkpoint else 'vocabulary'}: the result would "
                        f"replace it; give another {option}")
    target = os.path.abspath(link_target(path))  # (the file an atomic write replaces)
    parent = path if folder else os.path.dirname(target)
    # the probe is the very name the atomic write takes (tmp_name): one too long for the system fails here
    probe = tmp_name(os.path.join(parent, ".write-probe") if folder else target)
    try:
        make_folders(parent)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTDIR):  # makedirs met a file on the way
            raise UserError(f"{option} {path}: a part of the path is a file, not a folder") from None
        fix = OS_FIXES.get(e.errno, "choose another path")
        raise UserError(f"{option} {path}: cannot write there ({e.strerror or e}): {fix}") from None


# the folders check_output made, outermost first: a command that fails after its check takes back those still empty
made_folders = []


def make_folders(path):
    """os.makedirs(path, exist_ok=True), the folders it makes recorded in made_folders."""
    new, p = [], os.path.abspath(path)
    while not os.path.lexists(p) and p != os.path.dirname(p):
        new.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    made_folders.extend(reversed(new))


@contextlib.contextmanager
def removing_made_folders():
    """The folders make_folders makes within, those still empty taken back should it fail: a script's main() called
    from Python, which no run_main wraps, left an empty data/ behind. (A decorator too)"""
    start = len(made_folders)
    try:
        yield
    except BaseException:
        while len(made_folders) > start:  # innermost first: one with anything in it stays, and so its parents
            with contextlib.suppress(OSError):
                os.rmdir(made_folders.pop())
        raise


def kept_file(path):
    """What an existing file is that no script's output may replace (but train.py's checkpoints, by its own rules): a
    checkpoint, weights, a prepared dataset's own file, a model folder's config and tokenizer files, a vocabulary (a
    dataset made with --tokenizer FILE reads it again), a run's metrics; None for anything else."""
    folder, name = os.path.split(os.path.realpath(path))
    if (name in ("meta.json", VOCAB_FILE) or name.endswith(".bin")) and is_dataset_folder(folder):
        return f"a file of the dataset in {folder}"
    if path.endswith(".safetensors"):
        return "model weights"
    if name in MODEL_FOLDER_FILES and os.path.isfile(os.path.join(folder, "config.json")):
        return f"a file of the model folder {folder}"  # (bench.py --out over config.json: the folder would not load)
    if name.endswith(".tiktoken"):  # (after a dataset's and a model folder's own, which are theirs, not to retrain)
        return "a vocabulary"
    if name.endswith("_metrics.jsonl") and is_run_metrics(path):  # (gen.py --output over it: the run's history lost)
        return "a training run's metrics"
    try:
        return "a checkpoint (a zip archive)" if starts_as_zip(path) else None
    except OSError:
        return None


# a .tiktoken file's first line: a token in base64, and its rank, 0
FIRST_VOCABULARY_LINE = re.compile(rb"(?:[A-Za-z0-9+/]{4})*"
                                   rb"(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==) 0\r?\n?")


def starts_as_vocabulary(path):
    """The file's first line is a .tiktoken vocabulary's (`base64 0`), not any `word number` ("Chapter 2")."""
    try:
        with open(path, "rb") as f:
            return FIRST_VOCABULARY_LINE.fullmatch(f.readline(200)) is not None
    except OSError:
        return False


def read_meta(folder):
    """The folder's meta.json, None when it has none or one that is no JSON object."""
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


def is_dataset_folder(folder):
    """The folder holds a meta.json that prepare.py wrote (another file of that name, an eval.py --json, is not one)."""
    meta = read_meta(folder) or {}
    return "splits" in meta and "vocab_size" in meta


def refuse_dataset_folder(folder, option):
    """A UserError when folder, given as option (a folder of datasets), is one dataset's own folder (data/story)."""
    if is_dataset_folder(folder):
        parent, name = os.path.split(os.path.normpath(folder))
        raise UserError(f"{option} {folder} is the folder of the dataset {name!r}, not a folder of datasets: give the "
                        f"folder that holds it, {option} {parent or '.'}")


# the file name of a custom vocabulary (.tiktoken text) in a prepared dataset's folder and in export.py's model folder
VOCAB_FILE = "tokenizer.tiktoken"

# what a Hugging Face model folder is made of besides its .safetensors weights (export.py's custom vocabulary too)
MODEL_FOLDER_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                      "merges.txt", "special_tokens_map.json", VOCAB_FILE)


def model_folder_file(path):
    """The error for path, a file of a Hugging Face model folder, given where the folder goes; None for another."""
    folder, name = os.path.split(path)
    folder = folder or "."
    if (name.endswith(".safetensors") or name in MODEL_FOLDER_FILES) and \
            os.path.isfile(os.path.join(folder, "config.json")):
        return UserError(f"{path} is a file of the Hugging Face model folder {folder}: pass the folder itself")
    return None


def is_run_metrics(path):
    """Whether path's first line is a record of train.py's metrics (a run's id, its step and tokens)."""
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="utf-8", errors="replace") as f:
            record = json.loads(f.readline(1 << 16))
        return isinstance(record, dict) and {"run", "step", "tokens"} <= set(record)
    return False


# -----------------------------------------------------------------------------
# atomic writes: a file either keeps its old content or gets the complete new one

def atomic_write_text(path, text):
    """Write text (UTF-8) to path atomically: the file keeps its old content or gets all of the new."""
    path = write_target(path)
    if special_file(path):  # (no temporary file beside /dev/null: written through, as fsync_replace would)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    tmp = tmp_name(path)
    try:
        with naming_full_disk(path):
            with open_for(path, tmp, "w", encoding="utf-8") as f:
                f.write(text)
            fsync_replace(tmp, path)
    finally:
        remove_temporary(tmp)
    # what a killed write of the same file left (gen.py --output, eval.py --json, meta.json, a metrics file)
    remove_stale_tmp(os.path.dirname(os.path.abspath(path)), re.escape(os.path.basename(path)))


def atomic_torch_save(obj, path):
    """torch.save that never leaves a half-written file at path, even on Ctrl-C or a full disk."""
    import torch
    path = write_target(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tmp_name(path)
    try:
        # opened here first: a folder that takes no files is an OSError, one line, not torch's RuntimeError traceback
        open_for(path, tmp, "wb").close()
        try:
            torch.save(obj, tmp)
            full = False
        except RuntimeError as e:  # torch's writer reports a failed write (a full disk) as a RuntimeError
            if not any(sign in str(e) for sign in ("PytorchStreamWriter", "basic_ios", "unexpected pos")):
                raise
            full = True
        if full:
            os.remove(tmp)  # (out of the except: torch's writer in the traceback's frames would still hold it open)
            free = shutil.disk_usage(folder).free
            raise UserError(f"could not write {path} ({free / 1e6:.0f} MB free there): free some space or write "
                            f"elsewhere; the previous file, if any, is untouched")
        with naming_full_disk(path):
            fsync_replace(tmp, path)
    finally:
        remove_temporary(tmp)
    # another checkpoint's (a killed save's may be named otherwise), and train.py's metrics and loss curve
    remove_stale_tmp(folder, r".+\.pt|.+_metrics\.jsonl|.+_loss\.png")


def open_for(path, tmp, mode, **kwargs):
    """open(tmp, mode), the temporary file of an atomic write of path, its OSError naming path, the user's file."""
    try:
        return open(tmp, mode, **kwargs)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def remove_temporary(tmp):
    """Removes an atomic write's temporary file tmp if there: a read-only file system refuses to remove a missing file
    with EROFS, an error that would take the place of the write's."""
    if os.path.lexists(tmp):
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_target(path):
    """The file an atomic write of path replaces (link_target's), a PermissionError (run_main's one line) where it is
    read_only: what every atomic write starts with."""
    target = link_target(path)
    if read_only(target):
        raise PermissionError(errno.EACCES, "Permission denied (the file is read-only)", target)
    return target


def link_target(path):
    """path, or the file a symbolic link at path points to: what an atomic write replaces. Renamed over, the link would
    become a file of its own (on the wrong disk), and a rename from the link's folder fails across file systems."""
    return os.path.realpath(path) if os.path.islink(path) else path


def read_only(path):
    """Whether path is a file this process may not write (chmod a-w), which an atomic write refuses, as a rename would
    replace it all the same. Not on a read-only file system: the write's own error says the fix there (OS_FIXES)."""
    return os.path.isfile(path) and not os.access(path, os.W_OK) and not on_read_only_file_system(path)


def on_read_only_file_system(path):
    """Whether path lies on a file system mounted read-only (False where the system cannot tell: no statvfs)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # (Windows has no statvfs)
        return False


def special_file(path):
    """Whether path is there and neither a regular file nor a folder (/dev/null, a named pipe): written through, never
    renamed over."""
    return os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path)


def tmp_name(path):
    """Temporary sibling of path; ends in .tmp so no reader mistakes it for the real file."""
    return f"{path}.{os.getpid()}.tmp"


def tmp_pattern(names):
    """A regex that fullmatches the tmp_name() of a file whose name the regex names matches, the pid its group 1."""
    return rf"(?:{names})\.(\d+)\.tmp"


def fsync_replace(tmp_path, path):
    """Flush tmp_path to disk and rename it over path (atomic on POSIX); into a special_file, copied through. A file
    replaced keeps its permissions, not the umask's, which would make a private file (chmod 600) readable by all."""
    if special_file(path):  # (renamed over, --json /dev/null run as root would make /dev/null a file of JSON)
        with open(tmp_path, "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(tmp_path)
        return
    with open(tmp_path, "rb+") as f:
        os.fsync(f.fileno())
    with contextlib.suppress(FileNotFoundError):  # (after the fsync: one of 444 is not opened for writing)
        os.chmod(tmp_path, os.stat(path).st_mode & 0o7777)
    os.replace(tmp_path, path)
    # make the rename itself durable
    with contextlib.suppress(OSError):
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def name_full_disk(e, path):
    """Names path in e, the OSError of a write() or fsync() on a full disk, which names no file; not another error's."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and not e.filename:
        e.filename = path


@contextlib.contextmanager
def naming_full_disk(path):
    """name_full_disk for the writes inside."""
    try:
        yield
    except OSError as e:
        name_full_disk(e, path)
        raise


def remove_stale_tmp(folder, names, quiet_s=600):
    """Delete the tmp_name() files, of files whose name the regex names matches, that processes killed mid-write left
    in folder: only ones whose process is gone from this machine and that no one wrote to for quiet_s seconds (a
    write on another machine sharing the disk is left alone)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            m = re.fullmatch(tmp_pattern(names), name)
            if not m or int(m.group(1)) == os.getpid():
                continue
            try:
                if process_runs(int(m.group(1))):
                    continue  # its process still runs (or one under another user)
            except OverflowError:
                continue  # not a pid at all
            old = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.path.islink(old):
                    continue
                # a folder's own mtime stays while a file in it is written (an export on another machine)
                changed = max([os.path.getmtime(old)] + [os.lstat(os.path.join(d, f)).st_mtime
                                                         for d, _, files in os.walk(old) for f in files])
                if time.time() - changed <= quiet_s:
                    continue
                if os.path.isfile(old):
                    os.remove(old)
                elif os.path.isdir(old):  # an export's folder, written whole before its rename
                    shutil.rmtree(old)


def process_runs(pid):
    """Whether process pid runs on this machine (True for one of another user's). Windows asks its exit code: signal 0
    is CTRL_C_EVENT there, which would interrupt the console's programs."""
    if sys.platform == "win32":
        import _winapi
        try:  # PROCESS_QUERY_LIMITED_INFORMATION: what GetExitCodeProcess needs, granted for most processes
            handle = _winapi.OpenProcess(0x1000, False, pid)
        except OSError as e:
            return e.winerror != 87  # ERROR_INVALID_PARAMETER: no such process; access denied: one runs
        try:
            return _winapi.GetExitCodeProcess(handle) == _winapi.STILL_ACTIVE
        finally:
            _winapi.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


# -----------------------------------------------------------------------------
# locks: one command at a time writes a run's checkpoints or a dataset

@contextlib.contextmanager
def held_lock(path, busy):
    """Held while a command writes the files the lock file path guards: another that asks for it meanwhile gets
    UserError(busy). An flock, let go however the process ends (kill -9 too); without fcntl (Windows) an O_EXCL file
    holding the pid. Where the file cannot be made or locked (a read-only folder, NFS without locks): no lock. Yields
    whether it holds one."""
    fcntl = fcntl_module()
    with pid_file_lock(path, busy) if fcntl is None else flock_lock(fcntl, path, busy) as held:
        yield held


@contextlib.contextmanager
def flock_lock(fcntl, path, busy):
    """held_lock by an flock on the file path (made if missing), removed as it is let go."""
    while True:
        try:
            f = open(path, "a")
        except OSError:
            yield False
            return
        try:
            flock_soon(fcntl, f)
        except BlockingIOError:
            f.close()
            raise UserError(busy) from None
        except OSError:
            f.close()
            try:
                yield False
            finally:
                with contextlib.suppress(OSError):
                    os.remove(path)
            return
        try:  # the file still there: not one the holder before removed as this one opened it (then lock the new one)
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        yield True
    finally:
        try:
            with contextlib.suppress(OSError):
                os.remove(path)  # (an flock's while still held): no lock file is left in the folder
        finally:  # (a Ctrl-C in the removal: the flock still goes, not held on by an open file until it is collected)
            f.close()


@contextlib.contextmanager
def pid_file_lock(path, busy):
    """held_lock without fcntl (Windows): the file path made with O_EXCL, holding the pid; taken over once that
    process is gone (lock_holder_runs)."""
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if lock_holder_runs(path):
                raise UserError(busy) from None
            with contextlib.suppress(FileNotFoundError):  # its process is gone: a stale file
                os.remove(path)
        except OSError:
            yield False
            return
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # no lock file is left in the folder


def flock_soon(fcntl, f):
    """held_lock's flock, tried for half a second before BlockingIOError: lock_is_held takes it for an instant, and a
    command taking it in that instant would be refused as if another one ran."""
    deadline = time.monotonic() + 0.5
    while True:
        try:
            return fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def lock_holder_runs(path):
    """Whether the process named in held_lock's O_EXCL file still runs; a file without a pid yet, written this
    instant, counts as held while it is young (10 seconds)."""
    try:
        with open(path, encoding="utf-8") as f:
            pid = f.read().strip()
        if pid.isdigit():
            return process_runs(int(pid))
        return time.time() - os.path.getmtime(path) < 10
    except FileNotFoundError:
        return False
    except (OSError, OverflowError):
        return True


def lock_is_held(path):
    """Whether a held_lock(path) is held now, asked by taking the flock without waiting and letting it go at once
    (flock_soon); without fcntl, whether the O_EXCL file's process runs."""
    fcntl = fcntl_module()
    if fcntl is None:
        return lock_holder_runs(path)
    try:
        f = open(path, "rb")  # (read alone: no file is made, and one in a read-only folder is read)
    except OSError:  # no file: no holder
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # a file system without locks: held_lock holds none there
            return False
        return False  # (let go as the file closes)


def fcntl_module():
    """fcntl, or None where the system has none (Windows): imported at each lock, so that a test can hide it."""
    try:
        import fcntl
    except ImportError:
        return None
    return fcntl


def prepare_lock(out_dir, name):
    """The lock file prepare.py holds while it builds out_dir/name (beside the folder, which a failed build removes)."""
    return os.path.join(out_dir, f".{name}.prepare.lock")


# -----------------------------------------------------------------------------
# reading files: a checkpoint's format, token files without a memmap

def starts_as_zip(file):
    """Whether the file (a path, or a file open in binary mode) begins as a zip does, as every torch.save checkpoint."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return starts_as_zip(f)
    file.seek(0)
    return file.read(4) == b"PK\x03\x04"


READ_AT_LOCK = threading.Lock()  # read_at's, where a seek stands in for pread


def read_at(f, offset, n):
    """n bytes of the open file f from byte offset (fewer at its end), leaving its position as it was: not a memmap,
    whose pages read stay counted in the process's memory (20 GB for a 10B-token train.bin). os.pread, else (Windows) a
    seek and a read under a lock, and back to where a file being written was."""
    if hasattr(os, "pread"):
        return os.pread(f.fileno(), n, offset)
    with READ_AT_LOCK:
        at = f.tell()
        try:
            f.seek(offset)
            return f.read(n)
        finally:
            f.seek(at)


def read_items(f, start, n, dtype):
    """Items [start, start + n) of a file of numpy dtype items open as f, as an array, by read_at, fewer (whole ones) at
    its end. numpy imported here: scripts that never read token files keep without it."""
    import numpy as np
    dtype = np.dtype(dtype)
    data = read_at(f, int(start) * dtype.itemsize, int(n) * dtype.itemsize)
    return np.frombuffer(data[:len(data) - len(data) % dtype.itemsize], dtype)


# -----------------------------------------------------------------------------
# devices, precision and memory

DEVICES = "auto, cpu, cuda, cuda:N or mps"  # --device's values, as its help and errors name them
# what --dtype auto picks (pick_dtype), as every script's help says it
AUTO_DTYPE = ("bf16 where the hardware does it faster than fp32 (GPUs that have it; CPUs with AMX, or AVX-512 BF16 on "
              "AMD), fp16 on older GPUs, else fp32")
DTYPES = ("float32", "bfloat16", "float16")  # --dtype's names: torch_dtype turns one into torch's


def add_device_arguments(p, dtype=True, inherited=False):
    """--device and (dtype) --dtype for every script that runs a model. inherited: train.py's --dtype, None when left
    out, which a continued run takes from its checkpoint."""
    p.add_argument("--device", default="auto", help=f"{DEVICES} (default: auto = CUDA, then MPS, then CPU)")
    if dtype:
        # ("(default: X)", as every default is said, --device's and bench.py's --dtype's "auto = ..." too)
        said = "default: the checkpoint's when continuing a run, else auto:" if inherited else "default: auto ="
        p.add_argument("--dtype", default=None if inherited else "auto", choices=["auto", *DTYPES],
                       help=f"autocast precision ({said} {AUTO_DTYPE})")


def pick_device(name="auto", interactive=None):
    """Resolve --device: a device named is checked (named_device); 'auto' takes CUDA, then MPS, then CPU. With several
    CUDA devices and an interactive terminal, list them and ask (never under torchrun)."""
    import torch
    if name and name != "auto":
        return named_device(name)
    if not torch.cuda.is_available():
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    n = torch.cuda.device_count()
    if "LOCAL_RANK" in os.environ:  # torchrun: each rank owns its local GPU
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if n > 1 and interactive:
        return asked_gpu(n)
    if n > 1:
        print(f"{n} GPUs found, using cuda:0 (pick another with --device cuda:N)")
    return torch.device("cuda:0")


def named_device(name):
    """The torch.device of --device name; a UserError for none, one the scripts do not run on, or one not here."""
    import torch
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device; use {DEVICES}") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # torch knows xpu, meta, ...: the scripts run on none of them
        raise UserError(f"--device {name}: not supported here; use {DEVICES}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {name}: only {n} CUDA device(s); use cuda:0..cuda:{n - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu")
    return dev


def asked_gpu(n):
    """The CUDA device of n the user picks, each listed with its free memory; Enter takes cuda:0."""
    import torch
    for i in range(n):
        free, total = torch.cuda.mem_get_info(i)
        print(f"  cuda:{i}  {torch.cuda.get_device_name(i)}  {free / 2**30:.1f} / {total / 2**30:.1f} GiB free")
    answer = ask(f"which GPU? [0-{n - 1}, default 0] ")
    if answer is None:
        raise UserError("no GPU chosen; pass --device cuda:N")
    answer = answer or "0"
    if not answer.isdigit() or int(answer) >= n:
        raise UserError(f"no GPU {answer!r}; pass --device cuda:N")
    return torch.device(f"cuda:{answer}")


def torch_dtype(name):
    """torch's dtype of a DTYPES name ("bfloat16": torch.bfloat16)."""
    import torch
    return getattr(torch, name)


def pick_dtype(device, name="auto"):
    """Resolve --dtype to the autocast dtype: bf16 where the hardware does it faster than fp32,
    fp16 on older GPUs (train.py adds a GradScaler), fp32 otherwise or on request."""
    if name != "auto":  # (one of DTYPES: every --dtype is argparse's choice, bench.py's parse_list, or inheritable's)
        return torch_dtype(name)
    import torch
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16_is_faster() else torch.float32
    return torch.float32


def cpu_bf16_is_faster():
    """True where a bf16 matmul outruns an fp32 one on this CPU, so --dtype auto takes bf16 (cpu_bf16_verdict)."""
    return cpu_bf16_verdict()[0]


def cpu_bf16_verdict():
    """(whether bf16 outruns fp32 on this CPU, why), the one place --dtype auto's choice on a CPU is made."""
    vendor, flags = cpu_info()
    if "amx_bf16" in flags:
        return True, "AMX"
    if "avx512_bf16" not in flags:  # AVX2 laptops, ARM (whose cpuinfo has no flags): torch emulates bf16
        return False, "no AVX-512 BF16 or AMX here"
    if vendor == "AuthenticAMD":
        return True, "AVX-512 BF16"
    return False, "AVX-512 BF16 without AMX, where bfloat16 is slower"


def dtype_words(device, dtype, name):
    """dtype as a run's line says it, with why --dtype auto took it on a CPU: "float32 (auto: no AVX-512 BF16 or AMX
    here)"."""
    words = str(dtype).removeprefix("torch.")
    if device.type != "cpu" or name != "auto":
        return words
    return f"{words} (auto: {cpu_bf16_verdict()[1]})"


def slow_on_this_cpu(device, dtype, name):
    """The warning for --dtype name (its dtype) where this CPU runs it slower than float32; None on a GPU, or where it
    is no slower."""
    import torch
    if device.type != "cpu":
        return None
    if dtype == torch.float16 or dtype == torch.bfloat16 and not cpu_has_bf16():
        # no matmul instructions for it: converted in software (fp16 on the AVX-512 BF16 EPYC: steps 16x slower)
        return f"--dtype {name} is emulated on this CPU, slower than float32 (float16 many times): use --dtype auto"
    if dtype == torch.bfloat16 and not cpu_bf16_is_faster():
        # instructions but no speed: Intel's AVX-512 BF16 without AMX, 1.5x slower steps than fp32 (BENCHMARKS.md)
        return f"--dtype {name} is slower than float32 on this CPU (AVX-512 BF16 without AMX): use --dtype auto"
    return None


def cpu_has_bf16():
    """True when the CPU has bf16 matmul instructions (AVX-512 BF16 or AMX), without which torch emulates bf16."""
    flags = cpu_info()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_info():
    """The CPU's vendor ("GenuineIntel", "AuthenticAMD", ...) and flags, from /proc/cpuinfo ("" and none elsewhere)."""
    vendor, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return vendor, flags


def autocast(device, dtype):
    """Mixed-precision context for the forward pass; a no-op for fp32."""
    import torch
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seeded_generator(device, seed):
    """A torch.Generator on device started from seed, any integer: taken modulo 2**64, the range manual_seed takes."""
    import torch
    return torch.Generator(device=device).manual_seed(seed % 2**64)


def is_oom(e):
    """Whether e is an allocation that failed for its size: out of host or device memory, or a tensor too large for
    torch to size at all."""
    import torch
    # (torch.OutOfMemoryError, where a torch has it, is this very class)
    return isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or any(
        sign in str(e) for sign in ("out of memory", "can't allocate memory", "not enough memory",  # (Windows')
                                    "Cannot allocate memory",  # (ENOMEM's text: a mapping, an OSError)
                                    "Storage size calculation overflowed"))


def cap_memory():
    """Make an allocation past the memory the process may have (model.physical_memory: RAM and swap, or its cgroup's
    limit) fail at once, as MemoryError or torch's "can't allocate memory", which the scripts turn into a line naming
    a fix, and train.py into a save. Otherwise Linux grants it, and when its pages are touched the kernel kills the
    process without a word (train.py --model gpt2 --batch_size 16 on a CPU wants 15 GB). Linux, without a CUDA GPU,
    whose driver maps host memory of its own; process-wide, so called by a script run as a command. Returns whether
    it applied."""
    if not sys.platform.startswith("linux"):
        return False
    import resource

    import torch
    from model import physical_memory
    have = physical_memory()
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)  # (counts brk and private writable maps: malloc's memory)
    if not have or torch.cuda.is_available() or soft != resource.RLIM_INFINITY and soft <= have:
        return False
    resource.setrlimit(resource.RLIMIT_DATA, (have if hard == resource.RLIM_INFINITY else min(have, hard), hard))
    return True


def data_limited():
    """Whether the process's data has a limit (RLIMIT_DATA: cap_memory's, or a ulimit -d), which counts a private
    mapping of a file whole, its pages never read too."""
    try:
        import resource
    except ImportError:  # (Windows)
        return False
    return resource.getrlimit(resource.RLIMIT_DATA)[0] != resource.RLIM_INFINITY


def retain_freed_memory():
    """Make glibc keep freed memory for reuse: by default each big allocation is a fresh mmap, unmapped on free, and
    page-faulting the logits in again was a third of a small bf16 CPU step (3.55 -> 2.48 CPU-s; max RSS 2.4 -> 3.3
    GB). Linux glibc only; returns whether it applied. Process-wide and permanent: called by a script run as a
    command, not in its importable functions."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another libc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
