"""Interop check, run by hand (it needs the package registries; not part of CI): does an ftcli run load where
users take it next?

1. Trains the smoke LoRA run with `output.merge: true` (transformers 5 here).
2. In a transformers 4.57 venv (the line many servers and llama.cpp's converter pin): loads merged/ with
   AutoModelForCausalLM and the adapter dir with peft onto the base, and compares their logits with transformers
   5's; checks the tokenizer's llama.cpp pre-tokenizer hash is the base's.
3. Converts merged/ to GGUF with llama.cpp's converter (its sources come inside PyPI's llama-cpp-python sdist),
   reads the file back with gguf-py and checks architecture, chat template and tensors against merged/.
4. Loads the GGUF in llama.cpp itself (llama-cpp-python, built from that sdist for the CPU) and compares its
   tokenization of a chat prompt, its logits and 32 greedy tokens with transformers on merged/.

The builtin tokenizer is made in code, so no published list knows its pre-tokenizer hash; the converter is told
to treat it as GPT-2 byte-level BPE (recorded as `pre_tokenizer_fallback`). A real base's hash still matches
after training because ftcli copies its tokenizer files byte for byte (step 2 checks the hash is unchanged).

Usage: python bench/interop.py [--work DIR]   -> bench/results/interop.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PACKAGES = [
    "torch==2.13.0",
    "transformers==4.57.6",
    "peft>=0.17,<0.22",
    "numpy~=2.2.6",
    "safetensors",
    "sentencepiece>=0.1.98,<0.3.0",
    "protobuf>=4.21.0,<5.0.0",
    "accelerate",
]
PROBE = "<|im_start|>user\nWhat is the capital of Peru?<|im_end|>\n<|im_start|>assistant\n"

# Runs inside the transformers 4.57 venv: logits of merged/ and base + adapter, tokenizer hashes.
OLD_TRANSFORMERS = """
import hashlib, json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
run, base, probe, reference, chktxt = sys.argv[1:6]
ref = torch.load(reference)
tok = AutoTokenizer.from_pretrained(run)
ids = tok(probe, return_tensors="pt", add_special_tokens=False)["input_ids"]
with torch.no_grad():
    merged = AutoModelForCausalLM.from_pretrained(run + "/merged").eval()(input_ids=ids).logits[0]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run).eval()(input_ids=ids).logits[0]
try:  # what `model.generate(**tok(text))` users do: no token_type_ids may come from the tokenizer
    AutoModelForCausalLM.from_pretrained(run + "/merged").generate(**tok(probe, return_tensors="pt"), max_new_tokens=4)
    generates = True
except ValueError:
    generates = False
chk = lambda path: hashlib.sha256(str(AutoTokenizer.from_pretrained(path).encode(chktxt)).encode()).hexdigest()
print(json.dumps({
    "transformers": transformers.__version__,
    "tokenizer_class": type(tok).__name__,
    "tokenizer_returns": sorted(tok(probe).keys()),
    "generate_from_tokenizer_output": generates,
    "chat_template_kept": tok.chat_template == open(run + "/chat_template.jinja").read(),
    "merged_max_abs_diff": (merged - ref["merged"]).abs().max().item(),
    "adapter_max_abs_diff": (adapted - ref["adapter"]).abs().max().item(),
    "pre_tokenizer_hash_same_as_base": chk(run) == chk(base) == chk(run + "/merged"),
}))
"""

# Runs the converter inside the venv, falling back to GPT-2 byte-level BPE for the unknown builtin tokenizer.
CONVERT = """
import runpy, sys
from pathlib import Path
llama = Path(sys.argv[1])
sys.path[:0] = [str(llama), str(llama / "gguf-py")]
from conversion.base import TextModel
known = TextModel.get_vocab_base_pre
def known_or_gpt2(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        print("pre-tokenizer not in llama.cpp's list: using gpt-2", file=sys.stderr)
        return "gpt-2"
TextModel.get_vocab_base_pre = known_or_gpt2
sys.argv = ["convert_hf_to_gguf.py", sys.argv[2], "--outfile", sys.argv[3], "--outtype", "f32"]
runpy.run_path(str(llama / "convert_hf_to_gguf.py"), run_name="__main__")
"""

READ_GGUF = """
import json, sys
import numpy as np
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[1]) / "gguf-py"))
from gguf import GGUFReader
from safetensors.numpy import load_file
reader = GGUFReader(sys.argv[2])
merged = load_file(sys.argv[3] + "/model.safetensors")
field = lambda name: reader.fields[name].contents()
tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
same = lambda gguf_name, hf_name: bool(np.array_equal(tensors[gguf_name].reshape(-1), merged[hf_name].reshape(-1)))
print(json.dumps({
    "architecture": field("general.architecture"),
    "tensors": len(tensors),
    "hf_tensors": len(merged),
    "chat_template_kept": field("tokenizer.chat_template") == open(sys.argv[3] + "/chat_template.jinja").read(),
    "pre_tokenizer": field("tokenizer.ggml.pre"),
    "embeddings_equal": same("token_embd.weight", "model.embed_tokens.weight"),
    "ffn_down_equal": same("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
    "output_equal": same("output.weight", "lm_head.weight"),
}))
"""

# Runs inside the venv with llama-cpp-python: the GGUF's tokens, logits and greedy continuation of the probe.
LLAMA_CPP = """
import json, sys
import numpy as np
import torch
from llama_cpp import Llama
gguf, probe, reference, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ref = torch.load(reference)
llm = Llama(model_path=gguf, n_ctx=512, logits_all=True, verbose=False, seed=0)
tokens = llm.tokenize(probe.encode(), add_bos=False, special=True)
llm.eval(tokens)
logits = np.asarray(llm.scores[: len(tokens)])
greedy = []
for _ in range(steps):
    greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    llm.eval([greedy[-1]])
text = llm.detokenize(greedy).decode("utf-8", errors="replace")
print(json.dumps({
    "tokens_equal": tokens == ref["probe_ids"],
    "logits_max_abs_diff": float(np.abs(logits - ref["merged"].numpy()).max()),
    "greedy_tokens_equal": greedy == ref["greedy_ids"],
    "greedy_text_equal": text == ref["greedy_text"],
    "greedy_text": text,
}))
"""
GREEDY_STEPS = 32


def sh(*command, **kwargs) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=ROOT, **kwargs)
    if done.returncode:
        sys.exit(f"failed: {' '.join(map(str, command))}\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ftcli-interop"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # this checkout's ftcli, also where another one is installed
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    sh(
        sys.executable,
        "-m",
        "ftcli",
        "train",
        ROOT / "recipes/smoke/sft-lora.yaml",
        f"output.dir={run}",
        "output.merge=true",
        "training.max_steps=20",
        "--overwrite",
    )

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcli.models.builtin import builtin_path

    base = builtin_path("builtin:tiny-llama")
    ids = AutoTokenizer.from_pretrained(run)(PROBE, return_tensors="pt", add_special_tokens=False)[
        "input_ids"
    ]
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    with torch.no_grad():
        reference = {
            "merged": merged(input_ids=ids).logits[0],
            "adapter": PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run)
            .eval()(input_ids=ids)
            .logits[0],
            "probe_ids": ids[0].tolist(),
            "greedy_ids": _greedy(merged, ids, GREEDY_STEPS),
        }
    reference["greedy_text"] = AutoTokenizer.from_pretrained(run).decode(reference["greedy_ids"])
    torch.save(reference, work / "reference.pt")

    venv = work / "venv-transformers-4.57"
    python = venv / "bin" / "python"
    if not python.exists():
        sh(sys.executable, "-m", "venv", venv)
        sh(python, "-m", "pip", "install", "-q", *VENV_PACKAGES)
    llama = _llama_cpp_sources(work)
    sh(python, "-m", "pip", "install", "-q", llama / "gguf-py")
    chktxt = _converter_probe_text(llama)
    old = json.loads(sh(python, "-c", OLD_TRANSFORMERS, run, base, PROBE, work / "reference.pt", chktxt))
    gguf_file = work / "merged.gguf"
    sh(python, "-c", CONVERT, llama, run / "merged", gguf_file)
    read = json.loads(sh(python, "-c", READ_GGUF, llama, gguf_file, run / "merged"))
    sh(python, "-m", "pip", "install", "-q", "--no-deps", _llama_cpp_wheel(work), "diskcache", "jinja2")
    ran = json.loads(sh(python, "-c", LLAMA_CPP, gguf_file, PROBE, work / "reference.pt", GREEDY_STEPS))
    result = {
        "ftcli_run": "recipes/smoke/sft-lora.yaml, output.merge, 20 steps",
        "transformers_4": old,
        "llama_cpp": {"source": llama.parent.parent.name, **read, "pre_tokenizer_fallback": True},
        "llama_cpp_run": {"greedy_tokens": GREEDY_STEPS, **ran},
    }
    out = ROOT / "bench" / "results" / "interop.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _llama_cpp_sources(work: Path) -> Path:
    found = sorted(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if found:
        return found[-1]
    sh(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--no-binary",
        ":all:",
        "llama-cpp-python",
        "-d",
        work,
    )
    sdist = sorted(work.glob("llama_cpp_python-*.tar.gz"))[-1]
    with tarfile.open(sdist) as archive:
        wanted = [
            m
            for m in archive.getmembers()
            if "/vendor/llama.cpp/" in m.name
            and ("convert_hf_to_gguf" in m.name or "/conversion/" in m.name or "/gguf-py/" in m.name)
        ]
        archive.extractall(work, members=wanted, filter="data")
    return sorted(work.glob("llama_cpp_python-*/vendor/llama.cpp"))[-1]


def _greedy(model, ids, steps: int) -> list[int]:
    """Argmax continuation without stopping at EOS: llama.cpp and transformers stop on different token lists."""
    import torch

    out = []
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(input_ids=ids).logits[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[out[-1]]])], dim=1)
    return out


def _llama_cpp_wheel(work: Path) -> Path:
    """llama-cpp-python built for this CPU from PyPI's sdist (PyPI has no wheels); minutes, once per work dir."""
    wheels = work / "wheels"
    if not sorted(wheels.glob("llama_cpp_python-*.whl")):
        sh(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "llama-cpp-python",
            "-w",
            wheels,
            env={**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=OFF"},
        )
    return sorted(wheels.glob("llama_cpp_python-*.whl"))[-1]


def _converter_probe_text(llama: Path) -> str:
    """The text llama.cpp hashes the tokenization of to recognize a pre-tokenizer."""
    import ast

    source = (llama / "conversion" / "base.py").read_text()
    start = source.index("chktxt = ")
    return ast.literal_eval(source[start + len("chktxt = ") : source.index("\n", start)])


if __name__ == "__main__":
    main()
