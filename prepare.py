"""
Turn stories, dialogues and instruction data into token files for train.py.

    python prepare.py                                  # every dataset it can find
    python prepare.py --dataset story --limit 500      # a quick demo
    python prepare.py --dataset text --source notes/ --name notes
    python prepare.py --dataset chat --source chats.jsonl --tokenizer tokenizers/story4k.tiktoken

Each dataset becomes a folder data/<name>/ with
    train.bin, val.bin              token ids, uint16 when the vocabulary fits, else uint32 (np.memmap them)
    train_mask.bin, val_mask.bin    conversations only: uint8, 1 where the loss counts
                                    (assistant replies and their <|im_end|>), aligned token for token
    meta.json                       written last: a folder is a complete dataset exactly when it has one
Documents are each followed by <|endoftext|>; conversations are ChatML (setup_tokenizer.render_chat).

Sources, first found wins: --source files (.txt, .jsonl, .json, .parquet), the local mirror
in $DATA_MIRROR (see its README.md), then the Hugging Face hub.
"""
import argparse
import contextlib
import functools
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import time
from array import array
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from common import UserError, atomic_write_text, fsync_replace, run_main, tmp_name
from setup_tokenizer import EOT, IM_END, IM_START, get_tokenizer, read_text_chunks, tokenizer_hash, train_bpe

FORMAT = 1   # layout of meta.json and the .bin files
VERSION = 1  # bump when the same inputs would give other tokens, so existing datasets rebuild
DATASETS = ("story", "dailydialog", "chat", "chitchat", "knowledge", "text")
EVERYTHING = ("story", "dailydialog", "chat", "knowledge", "chitchat")  # what a bare `python prepare.py` builds
SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# a batch is what one threaded encode call gets: large enough to keep every core busy,
# small enough that its Python token lists stay a few tens of MB whatever the corpus size
BATCH_DOCS, BATCH_CHARS = 8192, 4 << 20

# files of the local mirror ($DATA_MIRROR/README.md): "main" files give train and, from the
# tail of each, val; "val" files are a source's own validation split; "extra" files are train-only
MIRROR = {
    "story": {"main": ["tinystories/TinyStories-sample.txt"], "extra": ["tinystories/TinyStories-train-head.txt"]},
    "dailydialog": {"main": ["dailydialog/dialogues_train.txt"], "val": ["dailydialog/dialogues_validation.txt"]},
    "chat": {"main": ["alpaca/alpaca_5000.json", "alpaca/alpaca_en_demo.json",
                      "conversations/fastchat_dummy_conversation.json"]},
    "knowledge": {"main": ["gsm8k/train.jsonl"]},
}
# the same data on the hub: (path, config, train split, validation split or None)
HUB = {
    "story": ("roneneldan/TinyStories", None, "train", "validation"),
    "dailydialog": ("li2017dailydialog/daily_dialog", None, "train", "validation"),
    "chat": ("tatsu-lab/alpaca", None, "train", None),
    "knowledge": ("openai/gsm8k", "main", "train", None),
}


class NoSource(UserError):
    """No --source, mirror or hub has the data: a bare `python prepare.py` skips the dataset."""


# -----------------------------------------------------------------------------
# reading documents
# A document is (text, ends) -- ends False for a piece of a long text whose rest follows,
# so a big file streams in bounded memory -- or a conversation [{role, content}].

def text_docs(path):
    """A .txt file: documents separated by the literal <|endoftext|> (TinyStories style), else
    the whole file is one document, streamed in pieces cut after a newline. Elsewhere special-token
    strings stay plain text: they are encoded with encode_ordinary."""
    chunks = read_text_chunks(path)
    first = ""
    for chunk in chunks:  # look at the first 64K characters at least, whatever the chunk size
        first += chunk
        if len(first) >= 1 << 16:
            break
    if not first:
        return
    if EOT not in first:
        # one document; the cuts between pieces can tokenize a newline run differently from the
        # whole text, which changes token counts by a hair and the decoded text not at all
        prev = first
        for chunk in chunks:
            yield prev, False
            prev = chunk
        yield prev, True
        return
    rest = ""
    for chunk in itertools.chain([first], chunks):
        # what follows the last separator waits for the next chunk: a separator cut in two is joined again
        *docs, rest = (rest + chunk).split(EOT)
        yield from ((d.strip(), True) for d in docs if d.strip())
    if rest.strip():
        yield rest.strip(), True


# a single newline between two non-empty lines: TinyStories-train-head's story separator
STORY_BREAK = re.compile(r"(?<!\n)\n(?!\n|\Z)")


def story_line_docs(path):
    """TinyStories-train-head.txt: stories separated by a single newline, paragraphs by a blank
    line (upstream lost the real separators, so the few stories whose paragraphs were single
    newlines come out as several documents)."""
    rest = ""
    for chunk in read_text_chunks(path):
        *docs, rest = STORY_BREAK.split(rest + chunk)  # a newline at the very end waits for the next chunk
        yield from ((d.strip(), True) for d in docs if d.strip())
    if rest.strip():
        yield rest.strip(), True


# each starts with a literal where it can: re scans for that first, which keeps a 6 MB file under a second
DAILYDIALOG_FIXES = [
    (re.compile(r" '(?<=[^\W_] ') ((?i:s|t|m|d|re|ve|ll|clock))\b"), lambda m: "'" + m[1].lower()),  # I ' Ve -> I've; quotes stay
    (re.compile(r" +(?=[.,?!;:%)\]”])"), ""),             # word , -> word,
    (re.compile(r"([(\[“$£]) +"), r"\1"),                # ( word -> (word, $ 5 -> $5
    (re.compile(r"\.(?<=[a-z]\.)(?=[A-Z][a-z])"), ". "),  # right.But -> right. But
]


def tidy_dailydialog(text):
    """DailyDialog is tokenized with spaces around punctuation ("I ’ m here , too ."): undo the common cases."""
    text = " ".join(text.split()).replace("’", "'")
    for pattern, replacement in DAILYDIALOG_FIXES:
        text = pattern.sub(replacement, text)
    return text


def alternate(turns):
    """Turns of a two-person dialogue: the user speaks first."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def dailydialog_docs(path):
    """DailyDialog's original release: one dialogue per line, turns separated by __eou__."""
    for chunk in read_text_chunks(path):
        for line in chunk.split("\n"):
            turns = [t.strip() for t in tidy_dailydialog(line).split("__eou__")]  # a line at a time: fewer calls
            turns = [t for t in turns if t]
            if turns:
                yield alternate(turns)


def json_records(path):
    """(where, record) for each record of a .jsonl, .json or .parquet file; where names file and line."""
    try:
        if path.endswith(".parquet"):
            yield from parquet_records(path)
        elif path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise UserError(f"{path} line {n}: malformed JSON ({e.msg}, column {e.colno})")
                        yield f"{path} line {n}", record
        else:  # .json is parsed whole: use .jsonl for corpora bigger than memory
            with open(path, encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {e.lineno}: malformed JSON ({e.msg}, column {e.colno})")
            for i, record in enumerate(data if isinstance(data, list) else [data], 1):
                yield f"{path} record {i}", record
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start} of a read block): convert it, e.g. `iconv -f latin1 -t utf-8`")
    except FileNotFoundError:
        raise UserError(f"input file {path} not found")


def parquet_records(path):
    import pyarrow.parquet as pq  # comes with datasets
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        n = 0
        for batch in batches:
            for record in batch.to_pylist():
                n += 1
                yield f"{path} row {n}", record
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"{path} is not a readable parquet file ({type(e).__name__}: {str(e).splitlines()[0]})")


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "assistant": "assistant", "system": "system"}


def record_doc(record, where, dataset=None):
    """One record -> a document: conversations as `messages` [{role, content}], ShareGPT
    `conversations` [{from, value}], Alpaca instruction/input/output, question/answer or a
    `dialog` list of turns; a `text` field (or a bare string) is a plain document."""
    if isinstance(record, str):
        return (record.strip(), True) if record.strip() else None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object or a string, got {type(record).__name__}")
    try:
        if "messages" in record:
            messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        elif "conversations" in record:
            messages = [{"role": SHAREGPT_ROLES.get(m["from"], m["from"]), "content": m["value"]}
                        for m in record["conversations"]]
        elif "instruction" in record and "output" in record:
            prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
            messages = alternate([prompt, record["output"]])
        elif "question" in record and "answer" in record:
            answer = record["answer"]
            if dataset == "knowledge" and isinstance(answer, str):
                answer = re.sub(r"<<[^<>]*>>", "", answer)  # GSM8K's calculator annotations: 48/2 = <<48/2=24>>24
            messages = alternate([record["question"], answer])
        elif "dialog" in record:
            turns = [tidy_dailydialog(t) if dataset == "dailydialog" else t for t in record["dialog"]]
            messages = alternate([t for t in turns if t])
        elif "text" in record:
            text = record["text"]
            if not isinstance(text, str):
                raise UserError(f"{where}: `text` must be a string, got {type(text).__name__}")
            return (text.strip(), True) if text.strip() else None
        else:
            raise UserError(f"{where}: no messages, conversations, instruction/output, question/answer or text field")
    except (KeyError, TypeError) as e:
        raise UserError(f"{where}: malformed conversation ({type(e).__name__}: {e})")
    if isinstance(record.get("system"), str) and record["system"] and messages and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": record["system"]})
    for m in messages:
        if m["role"] not in ("system", "user", "assistant"):
            raise UserError(f"{where}: unknown role {m['role']!r}; use system, user or assistant (or ShareGPT's human, gpt)")
        if not isinstance(m["content"], str):
            raise UserError(f"{where}: message content must be text, got {type(m['content']).__name__}")
    return messages or None


def file_docs(path, dataset):
    """Documents of one --source file, read by its suffix."""
    if path.endswith(".txt"):
        yield from (dailydialog_docs if dataset == "dailydialog" else text_docs)(path)
        return
    for where, record in json_records(path):
        doc = record_doc(record, where, dataset)
        if doc:
            yield doc


def load_hub(path, config, split):
    """A split of a Hugging Face hub dataset (arrow-backed: memory-mapped, not held in RAM)."""
    import datasets  # slow to import, and only needed here
    return datasets.load_dataset(path, config, split=split)


def hub_docs(dataset, split):
    path, config = HUB[dataset][:2]
    try:
        rows = load_hub(path, config, split)
    except Exception as e:  # offline, unknown dataset, script datasets no longer supported...
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise NoSource(no_source(dataset, f"the Hugging Face hub failed: {type(e).__name__}: {reason}"))
    for i, row in enumerate(rows, 1):
        doc = record_doc(row, f"{path} {split} row {i}", dataset)
        if doc:
            yield doc


def no_source(dataset, why):
    files = ", ".join(sum(MIRROR[dataset].values(), []))
    return f"no data for --dataset {dataset}: pass --source PATH, or set DATA_MIRROR to a folder holding {files} ({why})"


# -----------------------------------------------------------------------------
# chitchat: small talk generated from templates, so a chat model learns greetings and manners

SYSTEMS = ["You are a friendly assistant. Keep your answers short.", "You are a helpful assistant.",
           "You are a cheerful chat companion.", "You are a polite assistant who answers briefly."]
GREETINGS = [  # (what the user says, how the assistant may answer)
    (["Hi!", "Hello!", "Hey there!", "Hello there.", "Hey!", "Hi there!", "Greetings!"],
     ["Hello! How can I help you today?", "Hi there! What would you like to talk about?",
      "Hey! Nice to hear from you. What's on your mind?", "Hello! It's nice to chat with you.", "Hi! How can I help?"]),
    (["Good morning!", "Morning!"], ["Good morning! I hope you slept well. What can I do for you?", "Good morning! How can I help today?"]),
    (["Good afternoon!"], ["Good afternoon! How is your day going?", "Good afternoon! What can I do for you?"]),
    (["Good evening!"], ["Good evening! How was your day?", "Good evening! What would you like to chat about?"]),
]
HOW_ARE_YOU = ["How are you?", "How are you doing today?", "How's it going?", "How are things?", "What's up?"]
I_AM_FINE = ["I'm doing well, thank you for asking! How about you?", "I'm good, thanks! How are you?",
             "Pretty good! I'm always happy to chat. How is your day going?", "All good here. And you?"]
MOODS = [
    (["I'm good, thanks.", "Great, thanks!", "Not bad at all.", "I'm having a lovely day."],
     ["Glad to hear it!", "That's great to hear!", "Wonderful! What would you like to do today?"]),
    (["A bit tired, to be honest.", "I'm having a rough day.", "Not great, actually.", "I'm a little sad today."],
     ["I'm sorry to hear that. I hope things get better soon.", "Oh no. Do you want to talk about it?",
      "That sounds hard. Be kind to yourself today."]),
]
THANKS = (["Thanks!", "Thank you!", "Thanks a lot.", "Thank you so much for your help.", "Cheers!", "I appreciate it."],
          ["You're welcome!", "Happy to help!", "Anytime!", "No problem at all.", "My pleasure!"])
GOODBYES = [
    (["Bye!", "Goodbye!", "See you later!", "I have to go now. Bye!", "Talk to you later.", "Have a nice day!"],
     ["Goodbye! Have a great day!", "See you later! Take care.", "Bye! It was nice talking to you.", "Take care, and talk soon!"]),
    (["Good night!", "I'm going to bed. Good night."], ["Good night! Sleep well.", "Good night, and sweet dreams!"]),
]
WHO_ARE_YOU = (["What's your name?", "Who are you?", "Do you have a name?", "What should I call you?", "Are you a robot?"],
               ["I'm a small language model, trained from scratch. I don't have a name, but you can call me whatever you like.",
                "I'm a little chat model, a computer program. I don't have a real name, but I'm happy to talk with you.",
                "I'm an AI assistant, a small language model. I don't have a name of my own."])
NAMES = ["Sam", "Alex", "Maria", "Lily", "Tom", "Priya", "Ben", "Mia", "Omar", "Emma", "Leo", "Zoe", "Ana", "Kenji", "Sara", "Noah"]
INTRODUCE = (["My name is {name}.", "I'm {name}.", "Call me {name}.", "Hi, I'm {name}!"],
             ["Nice to meet you, {name}!", "Hello, {name}! It's nice to meet you.", "Great to meet you, {name}. What would you like to talk about?"])
MY_NAME = ["What's my name?", "Do you remember my name?", "Who am I?"]
SMALL_TALK = [
    ("What's your favorite color?", "I can't see colors, but blue sounds lovely. Do you have a favorite?"),
    ("What do you like to do?", "I like chatting and answering questions. What do you like to do?"),
    ("Do you like music?", "I can't hear music, but people say it's wonderful. What kind of music do you like?"),
    ("The weather is nice today.", "That sounds lovely! A sunny day is a good reason to go outside."),
    ("It's raining here.", "Rainy days are perfect for a good book and a warm drink."),
    ("I'm bored.", "We could play a word game, or you could draw something. What sounds fun?"),
    ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field!"),
    ("Can you help me?", "Of course! What do you need help with?"),
    ("What time is it?", "I can't see a clock, so I don't know the time. Your device should show it."),
    ("Are you real?", "I'm a computer program, so not real like a person. But I'm really here to chat!"),
    ("I like cats.", "Cats are great! They are soft, curious and a little bit mysterious."),
    ("I like dogs.", "Dogs are wonderful. They are loyal, playful and always happy to see you."),
    ("What's your favorite food?", "I don't eat, but pizza seems to make a lot of people happy. What's yours?"),
    ("Where do you live?", "I live inside a computer, so I don't have a home like you do."),
    ("How old are you?", "I was trained quite recently, so I'm very young!"),
    ("I had a great day.", "That's wonderful! What made it so great?"),
    ("I'm tired.", "Maybe it's time for a rest. A good sleep helps a lot."),
    ("Do you have friends?", "Everyone I chat with is a bit of a friend. That includes you!"),
    ("What can you do?", "I can chat, answer simple questions and tell short stories. What would you like?"),
    ("Can you tell me a story?", "Once upon a time, a little bird learned to fly. It was scared at first, but it tried again and again, and soon it soared over the trees."),
    ("I'm hungry.", "Maybe it's time for a snack. Fruit or a sandwich is a good choice."),
    ("Do you sleep?", "No, I don't need sleep. I'm ready to chat whenever you are."),
]


def casual(rng, text):
    """People type casually: sometimes all lowercase, without the final punctuation."""
    return text.lower().rstrip(".!") if rng.random() < 0.2 else text


def chitchat_conversation(rng):
    msgs, name = [], None

    def say(user, assistant):
        msgs.extend([{"role": "user", "content": casual(rng, user)}, {"role": "assistant", "content": assistant}])

    if rng.random() < 0.3:
        msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
    if rng.random() < 0.7:
        users, answers = rng.choice(GREETINGS)
        say(rng.choice(users), rng.choice(answers))
    for topic in rng.sample(["how", "who", "intro", "talk", "talk", "recall"], rng.randint(1, 2)):
        if topic == "how":
            say(rng.choice(HOW_ARE_YOU), rng.choice(I_AM_FINE))
            if rng.random() < 0.7:
                users, answers = rng.choice(MOODS)
                say(rng.choice(users), rng.choice(answers))
        elif topic == "who":
            say(rng.choice(WHO_ARE_YOU[0]), rng.choice(WHO_ARE_YOU[1]))
        elif topic == "intro":
            name = rng.choice(NAMES)
            say(rng.choice(INTRODUCE[0]).format(name=name), rng.choice(INTRODUCE[1]).format(name=name))
        elif topic == "recall":
            answer = rng.choice(["Your name is {name}.", "You told me your name is {name}."]).format(name=name) if name \
                else "You haven't told me your name yet. What is it?"
            say(rng.choice(MY_NAME), answer)
        else:
            say(*rng.choice(SMALL_TALK))
    if rng.random() < 0.4:
        say(rng.choice(THANKS[0]), rng.choice(THANKS[1]))
    if rng.random() < 0.5:
        users, answers = rng.choice(GOODBYES)
        say(rng.choice(users), rng.choice(answers))
    return msgs


def chitchat_docs(n=5000, seed=1337):
    rng = random.Random(seed)  # same seed, same conversations: the dataset is reproducible
    for _ in range(n):
        yield chitchat_conversation(rng)


# -----------------------------------------------------------------------------
# where a dataset comes from

def find_source(dataset, source=None, extra=True):
    """Where a dataset's documents come from: {description, files (for the fingerprint), streams};
    each stream is (role, label, make_docs), role "split" (train, its tail to val), "train" or "val"."""
    if dataset == "chitchat":
        if source:
            raise UserError("--dataset chitchat is generated; it takes no --source")
        return {"description": "generated by prepare.py (chitchat templates, seed 1337)", "files": [],
                "streams": [("split", "chitchat", chitchat_docs)]}
    if source:
        files = []
        for path in [source] if isinstance(source, str) else source:
            if os.path.isdir(path):
                found = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(SUFFIXES))
                if not found:
                    raise UserError(f"--source {path}: no {', '.join(SUFFIXES)} files in this folder")
                files += found
            elif not os.path.exists(path):
                raise UserError(f"--source {path}: no such file or folder")
            elif not path.endswith(SUFFIXES):
                raise UserError(f"--source {path}: unsupported file type; use {', '.join(SUFFIXES)}")
            else:
                files.append(path)
        files = [os.path.abspath(f) for f in files]
        return {"description": "--source " + ", ".join(files), "files": files,
                "streams": [("split", f, functools.partial(file_docs, f, dataset)) for f in files]}
    if dataset == "text":
        raise NoSource("--dataset text needs --source PATH (text, JSON lines, JSON or parquet files, or folders of them)")

    mirror = os.environ.get("DATA_MIRROR")
    spec = MIRROR[dataset]
    if mirror:
        found = {role: [os.path.join(mirror, f) for f in spec.get(role, []) if os.path.isfile(os.path.join(mirror, f))]
                 for role in ("main", "val", "extra")}
        if found["main"]:
            docs = {"story": text_docs, "dailydialog": dailydialog_docs}.get(dataset) or functools.partial(file_docs, dataset=dataset)
            main_role = "train" if found["val"] else "split"
            streams = [(main_role, f, functools.partial(docs, f)) for f in found["main"]]
            streams += [("val", f, functools.partial(docs, f)) for f in found["val"]]
            if extra:
                streams += [("train", f, functools.partial(story_line_docs, f)) for f in found["extra"]]
            files = [os.path.abspath(f) for role, f, _ in streams]
            return {"description": f"DATA_MIRROR {os.path.abspath(mirror)}: " + ", ".join(os.path.relpath(f, mirror) for f in files),
                    "files": files, "streams": streams}
    path, config, train_split, val_split = HUB[dataset]
    streams = [("train" if val_split else "split", f"{path} {train_split}", functools.partial(hub_docs, dataset, train_split))]
    if val_split:
        streams.append(("val", f"{path} {val_split}", functools.partial(hub_docs, dataset, val_split)))
    return {"description": f"Hugging Face hub {path}" + (f" ({config})" if config else ""), "files": [], "streams": streams}


def fingerprint(dataset, plan, tokenizer, tok_hash, limit, val_fraction):
    """Changes when anything that decides the tokens does: input files (path, size, mtime), tokenizer, options."""
    files = []
    for f in plan["files"]:
        st = os.stat(f)
        files.append([f, st.st_size, st.st_mtime_ns])
    state = {"format": FORMAT, "version": VERSION, "dataset": dataset, "source": plan["description"],
             "files": files, "tokenizer": tokenizer, "tokenizer_hash": tok_hash, "limit": limit,
             "val_fraction": val_fraction}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


# -----------------------------------------------------------------------------
# tokenizing and writing

class Split:
    """One split being written: token ids (and the loss mask) appended to temporary files,
    renamed into place by commit(), removed by discard()."""

    def __init__(self, folder, name, dtype, has_mask):
        self.dtype = np.dtype(dtype)
        self.paths = [os.path.join(folder, f"{name}.bin")] + ([os.path.join(folder, f"{name}_mask.bin")] if has_mask else [])
        self.files = []
        for p in self.paths:
            self.files.append(open(tmp_name(p), "w+b"))
        self.tokens = self.documents = self.bytes = 0

    def write(self, ids, mask, documents, nbytes):
        self.files[0].write(ids.tobytes())
        if mask is not None:
            self.files[1].write(mask.tobytes())
        self.tokens += len(ids)
        self.documents += documents
        self.bytes += nbytes

    def move_tail(self, keep, documents, other, token_bytes):
        """Move every token after the first `keep` (and the last `documents` document ends) to the end of other."""
        moved_bytes = 0
        for i, (f, g) in enumerate(zip(self.files, other.files)):
            size = self.dtype.itemsize if i == 0 else 1
            f.flush()
            f.seek(keep * size)
            while block := f.read(size << 23):
                g.write(block)
                if i == 0:
                    moved_bytes += int(token_bytes[np.frombuffer(block, self.dtype)].sum())
            f.truncate(keep * size)
            f.seek(0, os.SEEK_END)
        moved = self.tokens - keep
        self.tokens, other.tokens = keep, other.tokens + moved
        self.documents, other.documents = self.documents - documents, other.documents + documents
        self.bytes, other.bytes = self.bytes - moved_bytes, other.bytes + moved_bytes

    def commit(self):
        for f, path in zip(self.files, self.paths):
            f.close()
            fsync_replace(f.name, path)

    def discard(self):
        for f in self.files:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(f.name)


def encode_texts(enc, texts):
    """enc.encode_ordinary of each text, on every core: tiktoken releases the GIL while it encodes.
    One task per thread, not one per text as enc.encode_ordinary_batch does: its per-text
    thread-pool overhead made short chat messages 5x slower to encode than a plain loop."""
    if THREADS == 1 or len(texts) < 2:
        return [enc.encode_ordinary(t) for t in texts]
    step = -(-len(texts) // THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        parts = pool.map(lambda group: [enc.encode_ordinary(t) for t in group],
                         [texts[i:i + step] for i in range(0, len(texts), step)])
        return [ids for part in parts for ids in part]


@functools.lru_cache(maxsize=8)
def token_bytes(enc):
    """UTF-8 length of each token id: a split's byte count is a table lookup, never a second decode."""
    def length(i):
        try:
            return len(enc.decode_single_token_bytes(i))
        except KeyError:
            return 0
    return np.array([length(i) for i in range(enc.n_vocab)], dtype=np.int64)


def encode_batch(enc, batch, kind, dtype):
    """A batch of documents -> (ids, mask or None, offsets where each finished document ends)."""
    eot = enc.eot_token
    if kind == "text":
        lists = encode_texts(enc, [text for text, _ in batch])
        ends, n = [], 0
        for ids, (_, end) in zip(lists, batch):
            if end:
                ids.append(eot)
            n += len(ids)
            if end:
                ends.append(n)
        return np.fromiter(itertools.chain.from_iterable(lists), dtype, n), None, ends
    # conversations: every message body in one threaded call, then laid out exactly as render_chat does
    start, end = enc.encode_single_token(IM_START), enc.encode_single_token(IM_END)
    heads = {role: [start] + enc.encode_ordinary(role + "\n") for role in ("system", "user", "assistant")}
    newline = enc.encode_ordinary("\n")
    bodies = iter(encode_texts(enc, [m["content"] for conv in batch for m in conv]))
    ids, mask, ends = [], bytearray(), []
    for conv in batch:
        for m in conv:
            head, body = heads[m["role"]], next(bodies)
            ids += head
            ids += body
            ids.append(end)
            ids += newline
            mask += bytes(len(head))
            mask += (b"\1" if m["role"] == "assistant" else b"\0") * (len(body) + 1)
            mask += bytes(len(newline))
        ids.append(eot)
        mask.append(0)
        ends.append(len(ids))
    return np.array(ids, dtype), np.frombuffer(bytes(mask), np.uint8), ends


def doc_kind(doc):
    return "chat" if isinstance(doc, list) else "text"


def batches(docs, kind, label):
    batch, chars = [], 0
    for doc in docs:
        if doc_kind(doc) != kind:
            raise UserError(f"{label}: mixes plain text and conversations in one dataset; prepare them separately (--name)")
        batch.append(doc)
        chars += len(doc[0]) if kind == "text" else sum(len(m["content"]) for m in doc)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def limited(docs, budget, role):
    """At most budget[role] documents (None: all); pieces of a document count once, at its end."""
    for doc in docs:
        if budget[role] is not None:
            if budget[role] <= 0:
                return
            if doc_kind(doc) == "chat" or doc[1]:
                budget[role] -= 1
        yield doc


def write_splits(folder, streams, enc, splits, limit, val_fraction, progress):
    """Tokenize every stream into temporary train/val files (added to splits as soon as they exist,
    so the caller can remove them on failure); returns the kind, "text" or "chat"."""
    dtype = np.uint16 if enc.n_vocab <= 1 << 16 else np.uint32
    table = token_bytes(enc)
    # --limit N: the first N documents of each source, and of a source's own validation split
    # the share val_fraction would give it, so a quick demo stays quick
    budget = {"split": limit, "train": limit, "val": limit and max(1, round(limit * val_fraction))}
    # the first document decides whether masks are written; every stream is opened lazily
    kind, opened = None, []
    for role, label, make_docs in streams:
        docs = iter(make_docs())
        if kind is None:
            first = next(docs, None)
            if first is None:
                continue
            kind, docs = doc_kind(first), itertools.chain([first], docs)
        opened.append((role, label, docs))
    if kind is None:
        raise UserError(f"no documents found in {', '.join(label for _, label, _ in streams)}")
    for name in ("train", "val"):
        splits[name] = Split(folder, name, dtype, kind == "chat")

    for role, label, docs in opened:
        out = splits["val" if role == "val" else "train"]
        start, ends = out.tokens, array("q")  # document ends of this stream, for the val cut
        for batch in batches(limited(docs, budget, role), kind, label):
            ids, mask, batch_ends = encode_batch(enc, batch, kind, dtype)
            if role == "split":
                ends.extend(out.tokens + e for e in batch_ends)
            out.write(ids, mask, len(batch_ends), int(table[ids].sum()))
            progress.update(len(batch_ends))
        if role != "split" or val_fraction == 0 or out.tokens == start:
            continue
        # val is the tail of each source, not a random sample: the same documents every run,
        # so validation losses stay comparable across runs and tokenizers
        n = len(ends)
        if n >= 2:
            k = n - min(n - 1, max(1, round(n * val_fraction)))
            out.move_tail(ends[k - 1], n - k, splits["val"], table)
        elif out.tokens - start >= 2:  # a single document (a whole book): cut it by tokens, as nanoGPT does
            keep = start + min(out.tokens - start - 1, max(1, round((out.tokens - start) * (1 - val_fraction))))
            out.move_tail(keep, n, splits["val"], table)
    return kind


def train_vocabulary(plan, vocab_size, path, limit):
    """Train a BPE vocabulary of vocab_size on the dataset's own text (message contents for
    conversations), with the same --limit, and save it as path."""
    budget = {"split": limit, "train": limit, "val": 0}

    def texts():
        for role, _, make_docs in plan["streams"]:
            if role == "val":
                continue  # a source's own validation split stays unseen
            for doc in limited(make_docs(), budget, role):
                if doc_kind(doc) == "text":
                    yield doc[0]
                else:
                    yield from (m["content"] for m in doc)

    t0 = time.time()
    enc = train_bpe(texts(), vocab_size, path)
    print(f"trained a {enc.n_vocab}-token vocabulary on the data in {time.time() - t0:.1f}s")
    return enc


def read_meta(folder):
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(folder, meta):
    """The files meta.json describes are all there, with the sizes it gives."""
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "val"):
            tokens = meta["splits"][split]["tokens"]
            if os.path.getsize(os.path.join(folder, f"{split}.bin")) != tokens * itemsize:
                return False
            if meta["has_mask"] and os.path.getsize(os.path.join(folder, f"{split}_mask.bin")) != tokens:
                return False
        return True
    except (KeyError, TypeError, OSError):
        return False


def prepare(dataset, source=None, tokenizer="gpt2", limit=None, val_fraction=0.1, force=False,
            out_dir="data", name=None, extra=True, vocab_size=None):
    """Build (or find up to date) out_dir/name from dataset's source; returns its meta.json as a dict.
    vocab_size: tokenize with a vocabulary of that size trained on this data (out_dir/name/tokenizer.tiktoken)
    instead of --tokenizer; small vocabularies make small models several times faster."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction {val_fraction}: must be in [0, 1)")
    name = name or dataset
    if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '-' and '_' (it names a folder in {out_dir})")
    plan = find_source(dataset, source, extra)
    folder = os.path.join(out_dir, name)
    old = read_meta(folder)
    if old and not force and old.get("dataset") != dataset:
        raise UserError(f"{folder} holds the {old.get('dataset')!r} dataset: pick another folder with --name, or replace it with --force")
    created = not os.path.isdir(folder)
    new_vocab = None  # a freshly trained vocabulary: a temporary file, renamed into place with the token files
    if vocab_size is not None:
        # the vocabulary is part of the dataset: retrained when asked to rebuild or when its size changes
        tokenizer = os.path.join(folder, "tokenizer.tiktoken")
        if force or not os.path.exists(tokenizer) or get_tokenizer(tokenizer).n_vocab != vocab_size:
            os.makedirs(folder, exist_ok=True)
            new_vocab = tmp_name(tokenizer)
    try:
        enc = train_vocabulary(plan, vocab_size, new_vocab, limit) if new_vocab else get_tokenizer(tokenizer)
        tokenizer = tokenizer if tokenizer == "gpt2" else os.path.abspath(tokenizer)
        tok_hash = tokenizer_hash(enc)
        fp = fingerprint(dataset, plan, tokenizer, tok_hash, limit, val_fraction)
        if old and not force and old.get("fingerprint") == fp and is_complete(folder, old):
            print(f"{folder} is up to date")
            return old
        meta = build(dataset, name, plan, folder, enc, tokenizer, tok_hash, fp, limit, val_fraction, new_vocab)
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)  # a failed first build leaves no folder behind
        raise
    finally:
        if new_vocab:
            with contextlib.suppress(FileNotFoundError):
                os.remove(new_vocab)
    return meta


def build(dataset, name, plan, folder, enc, tokenizer, tok_hash, fp, limit, val_fraction, new_vocab=None):
    """Tokenize plan's streams into folder; the old files stay until everything new is written."""
    os.makedirs(folder, exist_ok=True)
    t0 = time.time()
    splits = {}
    try:
        with tqdm(desc=f"{folder}", unit=" docs", unit_scale=True, disable=None, leave=False) as progress:
            kind = write_splits(folder, plan["streams"], enc, splits, limit, val_fraction, progress)
        has_mask = kind == "chat"
        roles = {role for role, _, _ in plan["streams"]}
        meta = {
            "format": FORMAT, "dataset": dataset, "name": name, "kind": kind,
            "tokenizer": tokenizer, "tokenizer_name": enc.name, "tokenizer_hash": tok_hash,
            "vocab_size": enc.n_vocab, "eot_token": enc.eot_token, "dtype": splits["train"].dtype.name,
            "has_mask": has_mask, "source": plan["description"],
            "val_split": "the source's own validation split" if "val" in roles else
                         f"the last {val_fraction:g} of each source's documents (of its tokens if it is one document)"
                         + ("; train-only extra files excluded" if "train" in roles else ""),
            "limit": limit, "fingerprint": fp,
            "splits": {s: {"tokens": splits[s].tokens, "documents": splits[s].documents, "bytes": splits[s].bytes}
                       for s in ("train", "val")},
        }
        # meta.json goes first and comes back last: a reader never pairs it with half-replaced files
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, "meta.json"))
        for split in splits.values():
            split.commit()
        if new_vocab:
            fsync_replace(new_vocab, tokenizer)
            get_tokenizer.cache_clear()  # the path now holds another vocabulary
        if not has_mask:  # a chat set rebuilt as text must not keep stale masks
            for s in ("train", "val"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, f"{s}_mask.bin"))
        atomic_write_text(os.path.join(folder, "meta.json"), json.dumps(meta, indent=2) + "\n")
    finally:
        for split in splits.values():
            split.discard()  # only temporary files are left to remove; after commit() there are none

    dt = max(time.time() - t0, 1e-9)
    tr, va = meta["splits"]["train"], meta["splits"]["val"]
    tokens, mb = tr["tokens"] + va["tokens"], (tr["bytes"] + va["bytes"]) / 1e6
    print(f"{folder}: {tr['documents'] + va['documents']:,} documents ({tr['documents']:,} train, {va['documents']:,} val), "
          f"{tokens:,} tokens ({tr['tokens']:,} / {va['tokens']:,}), {mb:.1f} MB of text in {dt:.1f}s: "
          f"{mb / dt:.2f} MB/s, {tokens / dt / 1e6:.2f}M tokens/s")
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS,
                   help="story (TinyStories), dailydialog, chat (instructions, conversations), chitchat (generated small talk), "
                        "knowledge (question/answer), text (your --source files); default: every one it finds, or text with --source")
    p.add_argument("--source", nargs="+", metavar="PATH",
                   help=".txt (documents separated by <|endoftext|>, else one per file), .jsonl/.json/.parquet records "
                        "(messages, ShareGPT conversations, Alpaca instruction/input/output, question/answer, text), or folders")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 or the path of a .tiktoken file (setup_tokenizer.py train)")
    p.add_argument("--vocab_size", type=int,
                   help="train a vocabulary of this size on the data itself (saved as data/<name>/tokenizer.tiktoken) "
                        "and use it instead of --tokenizer: e.g. 4096 makes a tiny model several times faster")
    p.add_argument("--limit", type=int, help="use only the first N documents of each source (quick demos); of a source's own validation split, N * val_fraction")
    p.add_argument("--val_fraction", type=float, default=0.1, help="the last fraction of each source's documents kept for validation")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date, and replace a folder holding another dataset")
    p.add_argument("--out_dir", default="data", help="where dataset folders go")
    p.add_argument("--name", help="the dataset's folder name (default: the dataset)")
    p.add_argument("--no_extra", action="store_true", help="story: leave out the train-only extra stories (TinyStories-train-head.txt)")
    args = p.parse_args(argv)

    options = dict(tokenizer=args.tokenizer, limit=args.limit, val_fraction=args.val_fraction, force=args.force,
                   out_dir=args.out_dir, extra=not args.no_extra, vocab_size=args.vocab_size)
    if args.dataset or args.source:
        prepare(args.dataset or "text", source=args.source, name=args.name, **options)
        return
    if args.name:
        raise UserError("--name needs --dataset: it names one dataset's folder")
    for dataset in EVERYTHING:
        try:
            prepare(dataset, **options)
        except NoSource as e:
            print(f"skipping {dataset}: {e}")


if __name__ == "__main__":
    run_main(main)
