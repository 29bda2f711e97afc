"""Regenerate the synthetic image set (deterministic). Run: python recipes/data/shapes/generate.py

Small coloured shapes on a light background, 32x32 PNG, with the same images in each layout ftcli reads:
captions as JSONL and as a COCO annotation file, M3IT-like instructions, LLaVA-style conversations, and image
preference pairs (the right colour preferred over another one).
The colour is the learnable rule the tests check (greedy captions of held-out images must name it).
"""

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 50, 170),
}
SHAPES = ["circle", "square", "triangle"]
SIZE = 32


def draw(rng: random.Random, colour: str, shape: str) -> Image.Image:
    grey = rng.randint(225, 250)
    image = Image.new("RGB", (SIZE, SIZE), (grey, grey, grey))
    pen = ImageDraw.Draw(image)
    side = rng.randint(14, 24)
    x, y = rng.randint(1, SIZE - side - 1), rng.randint(1, SIZE - side - 1)
    box = (x, y, x + side, y + side)
    fill = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLOURS[colour])
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(x + side // 2, y), (x, y + side), (x + side, y + side)], fill=fill)
    return image


def write_jsonl(name: str, rows: list[dict]) -> None:
    with (HERE / name).open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    rng = random.Random(0)
    (HERE / "images").mkdir(exist_ok=True)
    splits = {"train": 30, "eval": 5}  # images per colour
    rows = {}
    for split, per_colour in splits.items():
        rows[split] = []
        for i in range(per_colour * len(COLOURS)):
            colour, shape = list(COLOURS)[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
            name = f"images/{split}-{i:03d}.png"
            draw(rng, colour, shape).save(HERE / name, optimize=True)
            rows[split].append({"image": name, "colour": colour, "shape": shape})
    for split, items in rows.items():
        write_jsonl(
            f"{split}.jsonl",
            [{"image": r["image"], "caption": f"a {r['colour']} {r['shape']}"} for r in items],
        )
    train = rows["train"]
    coco = {
        "info": {"description": "ftcli synthetic shapes, COCO-captions layout"},
        "images": [
            {"id": i + 1, "file_name": r["image"], "width": SIZE, "height": SIZE} for i, r in enumerate(train)
        ],
        "annotations": [
            {"id": 2 * i + k + 1, "image_id": i + 1, "caption": caption}
            for i, r in enumerate(train)
            for k, caption in enumerate([f"a {r['colour']} {r['shape']}", f"a {r['shape']} in {r['colour']}"])
        ],
    }
    (HERE / "captions_coco.json").write_text(json.dumps(coco, indent=1) + "\n")
    questions = [("What colour is the shape?", "colour"), ("What shape is in the picture?", "shape")]
    write_jsonl(
        "instructions.jsonl",
        [
            {"image": r["image"], "instruction": q, "input": "", "output": r[field]}
            for i, r in enumerate(train)
            for q, field in [questions[i % 2]]
        ],
    )
    write_jsonl(
        "llava.jsonl",
        [
            {
                "id": f"shape-{i}",
                "image": r["image"],
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the picture."},
                    {"from": "gpt", "value": f"A {r['colour']} {r['shape']} on a light background."},
                ],
            }
            for i, r in enumerate(train)
        ],
    )
    pick = random.Random(1)  # its own stream: the files above stay as they were
    for split, name in (("train", "preferences.jsonl"), ("eval", "preferences_eval.jsonl")):
        write_jsonl(
            name,
            [
                {
                    "image": r["image"],
                    "prompt": "What colour is the shape?",
                    "chosen": r["colour"],
                    "rejected": pick.choice([c for c in COLOURS if c != r["colour"]]),
                }
                for r in rows[split]
            ],
        )


if __name__ == "__main__":
    main()
