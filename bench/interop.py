"""Interop check, run by hand (it needs the package registries; not part of CI): does an ftcli run load where
users take it next?

1. Trains the smoke LoRA run with `output.merge: true` (transformers 5 here).
2. In a transformers 4.57 venv (the line many servers and llama.cpp's converter pin): loads merged/ with
   AutoModelForCausalLM and the adapter dir with peft onto the base, and compares their logits with transformers
   5's; checks the tokenizer's llama.cpp pre-tokenizer hash is the base's.
3. Converts merged/ to GGUF with llama.cpp's converter (its sources come inside PyPI's llama-cpp-python sdist),
   reads the file back with gguf-py and checks architecture, chat template and tensors against merged/.

The builtin tokenizer is made in code, so no published list knows its pre-tokenizer hash; the converter is told
to treat it as GPT-2 byte-level BPE (recorded as `pre_tokenizer_fallback`). A real base's hash still matches
after training because ftcli copies its tokenizer files byte for byte (step 2 checks the hash is unchanged).

Usage: python bench/interop.py [--work DIR]   -> bench/results/interop.json
"""

from __future__ import annotations

import argparse
import json
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
chk = lambda path: hashlib.sha256(str(AutoTokenizer.from_pretrained(path).encode(chktxt)).encode()).hexdigest()
print(json.dumps({
    "transformers": transformers.__version__,
    "tokenizer_class": type(tok).__name__,
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
    with torch.no_grad():
        reference = {
            "merged": AutoModelForCausalLM.from_pretrained(run / "merged").eval()(input_ids=ids).logits[0],
            "adapter": PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run)
            .eval()(input_ids=ids)
            .logits[0],
        }
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
    result = {
        "ftcli_run": "recipes/smoke/sft-lora.yaml, output.merge, 20 steps",
        "transformers_4": old,
        "llama_cpp": {"source": llama.parent.parent.name, **read, "pre_tokenizer_fallback": True},
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


def _converter_probe_text(llama: Path) -> str:
    """The text llama.cpp hashes the tokenization of to recognize a pre-tokenizer."""
    import ast

    source = (llama / "conversion" / "base.py").read_text()
    start = source.index("chktxt = ")
    return ast.literal_eval(source[start + len("chktxt = ") : source.index("\n", start)])


if __name__ == "__main__":
    main()
