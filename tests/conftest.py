import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

# tests never touch the network: GPT-2 BPE files and datasets come from ../shared when it is there
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.path.isdir(os.path.join(SHARED, "tiktoken-cache")):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(SHARED, "tiktoken-cache"))
if os.path.isdir(os.path.join(SHARED, "data")):
    os.environ.setdefault("DATA_MIRROR", os.path.join(SHARED, "data"))
sys.path.insert(0, ROOT)


def run_cli(main, argv, capsys):
    """A script's main(argv) in-process, through run_main as the script runs it: (exit code, stdout, stderr)."""
    from common import run_main
    try:
        run_main(lambda: main(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
