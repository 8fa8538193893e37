"""How FT-L's SmolLM2 defaults (block and L-inf radius) were chosen.

For each (block, radius) pair: edit each fact alone with FT-L (25 steps, lr 5e-4, prompt_last),
and report the edit success rate (argmax after the prompt is the new target's first token) and the
neighbour agreement (argmax on other facts' prompts unchanged). Not a test; run:

    python benchmarks/ftl_layer_sweep.py [--layers 4 10 16 22] [--radii 5e-4 5e-3]
"""
import argparse
import statistics

import torch

from sss import FTL, EditRequest, load_model
from sss.data import encode_prompts

FACTS = [  # prompt, new target, (the model's own answer is read off before editing)
    ("The mother tongue of Danielle Darrieux is", "English"),
    ("The capital of France is", "Berlin"),
    ("The Eiffel Tower is located in the city of", "Rome"),
    ("Barack Obama was born in the state of", "Texas"),
    ("The currency of Japan is the", "euro"),
    ("The largest planet in the solar system is", "Mars"),
    ("William Shakespeare was born in", "Paris"),
    ("The official language of Brazil is", "Spanish"),
]


def next_token(model, tokenizer, prompts):
    batch = encode_prompts(tokenizer, prompts)
    with torch.no_grad():
        return model(**batch.model_inputs).logits[:, -1].argmax(-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 10, 16, 22])
    parser.add_argument("--radii", type=float, nargs="+", default=[5e-4, 5e-3])
    args = parser.parse_args()
    model, tokenizer = load_model("smollm2-135m")
    prompts = [p for p, _ in FACTS]
    before = next_token(model, tokenizer, prompts)
    print(f"{'block':>5} {'radius':>8} {'success':>8} {'neighbours kept':>16}")
    for layer in args.layers:
        for radius in args.radii:
            editor = FTL(model, tokenizer, layers=(layer,), norm_constraint=radius, progress=False)
            success, kept = [], []
            for i, (prompt, target) in enumerate(FACTS):
                with editor.edit(EditRequest(prompt, target)):
                    after = next_token(model, tokenizer, prompts)
                first = tokenizer(" " + target, add_special_tokens=False)["input_ids"][0]
                success.append(float(after[i] == first))
                others = [j for j in range(len(FACTS)) if j != i]
                kept.append(float((after[others] == before[others]).float().mean()))
            print(f"{layer:>5} {radius:>8.0e} {statistics.mean(success):>8.2f} {statistics.mean(kept):>16.2f}")


if __name__ == "__main__":
    main()
