# Two commands for a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# pinned to the build this project is tested with; on PyPI a Linux torch wheel is the CUDA one (GBs): for the
# CPU build elsewhere use TORCH="torch --index-url https://download.pytorch.org/whl/cpu"; TORCH=torch on a GPU machine
TORCH  ?= torch==2.13.0

# offline machines keep the GPT-2 BPE files and a data mirror in ../shared; use them unless told otherwise
ifeq ($(origin TIKTOKEN_CACHE_DIR),undefined)
ifneq ($(wildcard ../shared/tiktoken-cache),)
export TIKTOKEN_CACHE_DIR := $(abspath ../shared/tiktoken-cache)
endif
endif
ifeq ($(origin DATA_MIRROR),undefined)
ifneq ($(wildcard ../shared/data),)
export DATA_MIRROR := $(abspath ../shared/data)
endif
endif

# make demo: minutes of training (--compile: ~1.4x the tokens/s after 25-45 s of compiling on a fresh machine, 5-8 s
# once cached), the tiny preset on a CPU and small on a CUDA GPU (train.py's default); DEMO_MINUTES=10 for a better model
DEMO_MINUTES ?= 5
# stories for the demos: the mirror's 8,621 all; online the first 10,000 of TinyStories' 2.1M (streamed: not 1.9 GB)
DEMO_STORIES ?= 10000
# make chat-demo: minutes of story pretraining, then of fine-tuning on DailyDialog
CHAT_STORY_MINUTES ?= 4
CHAT_TUNE_MINUTES ?= 4
CHAT_SCRIPT := Hi! How are you today?\nWhat did you do at the weekend?\nDo you like music?\nThank you, goodbye!

.PHONY: install demo chat-demo test clean

$(VENV)/.installed: requirements.txt requirements-test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-test.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python prepare.py --dataset story --vocab_size 4096 --limit $(DEMO_STORIES)
	$(BIN)/python train.py --dataset story --time_budget $(DEMO_MINUTES) --compile --overwrite
	$(BIN)/python gen.py models/story_best.pt --prompt "Once upon a time" --num_samples 3 --max_tokens 200 --seed 42

# a story model that learns to chat: its own pretraining on stories (in models/chat-demo, apart from make demo's),
# fine-tuning on dialogue (loss on the assistant's turns only), a scripted chat, then how the two models end their
# replies (eval.py). The dialogue set, in the story model's vocabulary, goes to data/chat-demo: a data/dailydialog
# of the user's own, which checkpoints may be trained on, stays as it is
chat-demo: install
	$(BIN)/python prepare.py --dataset story --vocab_size 4096 --limit $(DEMO_STORIES)
	$(BIN)/python train.py --dataset story --model tiny --time_budget $(CHAT_STORY_MINUTES) --output_checkpoint models/chat-demo/{dataset}.pt --overwrite
	$(BIN)/python prepare.py --dataset dailydialog --tokenizer models/chat-demo/story_best.pt --out_dir data/chat-demo
	$(BIN)/python train.py --dataset dailydialog --data_dir data/chat-demo --checkpoint models/chat-demo/story_best.pt --time_budget $(CHAT_TUNE_MINUTES) --output_checkpoint models/chat-demo/{dataset}.pt --overwrite
	printf '$(CHAT_SCRIPT)\n' | $(BIN)/python gen.py models/chat-demo/dailydialog_best.pt --chat --seed 42 --max_tokens 60
	$(BIN)/python eval.py models/chat-demo/story_best.pt --dataset dailydialog --data_dir data/chat-demo
	$(BIN)/python eval.py models/chat-demo/dailydialog_best.pt

# the suite in TEST_WORKERS processes at once (pytest-xdist); TEST_WORKERS=0 runs it in this one process
TEST_WORKERS ?= 2

test: install
	HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests

clean:
	rm -rf $(VENV) data/*/ models/
