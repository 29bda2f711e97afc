"""Regenerate the small shipped datasets (deterministic). Run: python recipes/data/generate.py

Every set has a learnable rule, so a tiny model's loss falls clearly within a few dozen steps:
facts about made-up objects, each always answered the same way.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "heart", "ring"]
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Egypt": "Cairo",
    "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Chile": "Santiago", "India": "New Delhi",
    "Canada": "Ottawa", "Greece": "Athens", "Poland": "Warsaw", "Cuba": "Havana", "Iran": "Tehran",
}  # fmt: skip
QUESTIONS = ["What is the capital of {c}?", "Name the capital of {c}.", "Which city is the capital of {c}?"]


def fact(rng):
    country = rng.choice(list(CAPITALS))
    return rng.choice(QUESTIONS).format(c=country), f"The capital of {country} is {CAPITALS[country]}."


def colour_fact(rng):
    colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
    return f"Describe a {colour} {shape}.", f"It is a {shape} and its colour is {colour}."


def write(name, rows):
    with (HERE / name).open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main():
    rng = random.Random(0)
    chat = []
    for i in range(300):
        q, a = fact(rng) if i % 2 else colour_fact(rng)
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 5 == 0:
            messages.insert(0, {"role": "system", "content": "You answer in one short sentence."})
        if i % 7 == 0:
            q2, a2 = fact(rng)
            messages += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
        chat.append({"messages": messages})
    write("chat.jsonl", chat)

    sharegpt = []
    for i in range(200):
        q, a = fact(rng) if i % 2 else colour_fact(rng)
        sharegpt.append(
            {"id": f"sg-{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        )
    write("sharegpt.jsonl", sharegpt)

    alpaca = []
    for i in range(300):
        if i % 3 == 0:
            country = rng.choice(list(CAPITALS))
            alpaca.append(
                {
                    "instruction": "Give the capital of the country.",
                    "input": country,
                    "output": f"The capital of {country} is {CAPITALS[country]}.",
                }
            )
        else:
            q, a = colour_fact(rng) if i % 3 == 1 else fact(rng)
            alpaca.append({"instruction": q, "input": "", "output": a})
    write("alpaca.jsonl", alpaca)

    completion = []
    for _ in range(200):
        country = rng.choice(list(CAPITALS))
        completion.append({"prompt": f"Country: {country}\nCapital:", "completion": f" {CAPITALS[country]}"})
    write("completion.jsonl", completion)

    text = []
    for _ in range(200):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            q, a = fact(rng) if rng.random() < 0.5 else colour_fact(rng)
            sentences.append(a)
        text.append({"text": " ".join(sentences)})
    write("text.jsonl", text)

    preference = []
    for _ in range(300):
        country = rng.choice(list(CAPITALS))
        wrong = rng.choice([c for k, c in CAPITALS.items() if k != country])
        q = rng.choice(QUESTIONS).format(c=country)
        preference.append(
            {
                "prompt": q,
                "chosen": f"The capital of {country} is {CAPITALS[country]}.",
                "rejected": f"The capital of {country} is {wrong}.",
            }
        )
    write("preference.jsonl", preference)

    # The same preference rule in the two other shapes real datasets use (appended after the existing sets so
    # those stay byte-identical). UltraFeedback-binarized: chosen/rejected are whole conversations repeating the
    # prompt turn. Anthropic HH: no prompt column, two transcripts that share everything up to the last answer.
    ultrafeedback, hh = [], []
    for _ in range(120):
        country = rng.choice(list(CAPITALS))
        wrong = rng.choice([c for k, c in CAPITALS.items() if k != country])
        q = rng.choice(QUESTIONS).format(c=country)
        right_answer, wrong_answer = f"The capital of {country} is {CAPITALS[country]}.", f"It is {wrong}."
        user = {"role": "user", "content": q}
        ultrafeedback.append(
            {
                "prompt": q,
                "chosen": [user, {"role": "assistant", "content": right_answer}],
                "rejected": [user, {"role": "assistant", "content": wrong_answer}],
                "score_chosen": 9.0,
                "score_rejected": 2.0,
            }
        )
        opener = "\n\nHuman: Hi, I have a geography question.\n\nAssistant: Sure, go ahead."
        hh.append(
            {
                "chosen": f"{opener}\n\nHuman: {q}\n\nAssistant: {right_answer}",
                "rejected": f"{opener}\n\nHuman: {q}\n\nAssistant: {wrong_answer}",
            }
        )
    write("preference_ultrafeedback.jsonl", ultrafeedback)
    write("preference_hh.jsonl", hh)


if __name__ == "__main__":
    main()
