"""Bad input, table-driven: each case is refused with a ValueError whose message names the culprit.

Every case is ``(id, call, error type, substring)``; ``call(ctx)`` gets a context with a shared
tiny model and a temporary folder. Cases are checked at the API; CLI cases (exit code 2, one line,
no traceback) sit beside them with the same shape.
"""
import json
from types import SimpleNamespace

import pytest
import torch

from sss import FTL, EditRequest, load_model
from sss.data import load_requests
from sss.editors import editor_class
from sss.files import read_json, read_jsonl, verify_manifest, weights_fingerprint

PROMPT = "The capital of France is"


def counterfact(**changes):
    record = {"case_id": 5, "prompt": "X speaks", "target_new": "French", "subject": "X", "ground_truth": "English",
              "rephrase_prompt": "X talks", "locality_prompt": "Y speaks", "locality_ground_truth": "Dutch"}
    return {**record, **changes}


def data_file(ctx, records, name="data.json"):
    path = ctx.tmp / name
    path.write_text(json.dumps(records))
    return path


def model_folder_with_config(ctx, text):
    folder = ctx.tmp / "model"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    return folder


def write(ctx, name, text):
    path = ctx.tmp / name
    path.write_text(text)
    return path


def ftl(ctx, **options):
    return FTL(*ctx.tiny, progress=False, **options)


CASES = [
    # --- load_model: names, dtypes, devices, files (all checked before anything loads)
    ("model: unknown name", lambda c: load_model("no-such-model"), ValueError, "unknown model name 'no-such-model'"),
    ("model: empty name", lambda c: load_model(""), ValueError, "needs a model name"),
    ("model: name not text", lambda c: load_model(3), ValueError, "needs a model name or path, got 3"),
    ("model: dtype int8 name", lambda c: load_model("tiny-gpt2", dtype="int8"), ValueError, "unknown dtype 'int8'"),
    ("model: dtype misspelt", lambda c: load_model("tiny-gpt2", dtype="flaot16"), ValueError, "unknown dtype 'flaot16'"),
    ("model: dtype integer", lambda c: load_model("tiny-gpt2", dtype=torch.int64), ValueError,
     "floating-point type, got torch.int64"),
    ("model: dtype number", lambda c: load_model("tiny-gpt2", dtype=16), ValueError, "unknown dtype 16"),
    ("model: device malformed", lambda c: load_model("tiny-gpt2", device="cuda:x"), ValueError,
     "malformed device 'cuda:x'"),
    ("model: device unknown", lambda c: load_model("tiny-gpt2", device="gpu"), ValueError, "malformed device 'gpu'"),
    ("model: device not text", lambda c: load_model("tiny-gpt2", device=1.5), ValueError,
     "device must be a string"),
    ("model: seed not int", lambda c: load_model("tiny-gpt2", seed="0"), ValueError, "seed must be an integer"),
    ("model: missing folder", lambda c: load_model(str(c.tmp / "absent" / "model")), ValueError,
     "could not load a causal LM"),
    ("model: malformed config.json", lambda c: load_model(str(model_folder_with_config(c, '{"model_type": '))),
     ValueError, "config.json is not valid JSON"),
    # --- FT-L options
    ("ftl: layers as a string", lambda c: ftl(c, layers="10"), ValueError, "layers must be a block index"),
    ("ftl: layers of floats", lambda c: ftl(c, layers=[0.7]), ValueError, "got [0.7]"),
    ("ftl: layers a bool", lambda c: ftl(c, layers=True), ValueError, "layers must be a block index or a list"),
    ("ftl: layers with a bool", lambda c: ftl(c, layers=[0, False]), ValueError, "got [0, False]"),
    ("ftl: layers empty", lambda c: ftl(c, layers=[]), ValueError, "layers must name at least one block"),
    ("ftl: layer too large", lambda c: ftl(c, layers=(9,)), ValueError, "layer 9 is out of range"),
    ("ftl: layer too negative", lambda c: ftl(c, layers=(-3,)), ValueError, "layer -3 is out of range"),
    ("ftl: a block twice", lambda c: ftl(c, layers=(1, -1)), ValueError, "names a block more than once"),
    ("ftl: steps zero", lambda c: ftl(c, steps=0), ValueError, "steps must be an integer of at least 1, got 0"),
    ("ftl: steps fractional", lambda c: ftl(c, steps=2.5), ValueError, "steps must be an integer of at least 1, got 2.5"),
    ("ftl: steps text", lambda c: ftl(c, steps="abc"), ValueError, "steps must be an integer of at least 1, got 'abc'"),
    ("ftl: steps bool", lambda c: ftl(c, steps=True), ValueError, "steps must be an integer of at least 1, got True"),
    ("ftl: lr zero", lambda c: ftl(c, lr=0), ValueError, "lr must be a positive number, got 0"),
    ("ftl: lr text", lambda c: ftl(c, lr="0.1"), ValueError, "lr must be a positive number, got '0.1'"),
    ("ftl: lr nan", lambda c: ftl(c, lr=float("nan")), ValueError, "lr must be a positive number, got nan"),
    ("ftl: radius negative", lambda c: ftl(c, norm_constraint=-1e-3), ValueError, "norm_constraint must be a positive"),
    ("ftl: weight decay negative", lambda c: ftl(c, weight_decay=-1.0), ValueError, "weight_decay must be a number >= 0"),
    ("ftl: early stop text", lambda c: ftl(c, early_stop_loss="low"), ValueError, "early_stop_loss must be a finite"),
    ("ftl: unknown objective", lambda c: ftl(c, objective="everything"), ValueError, "unknown FT-L objective 'everything'"),
    ("ftl: objective not text", lambda c: ftl(c, objective=["target_new"]), ValueError, "unknown FT-L objective"),
    ("ftl: unknown option", lambda c: ftl(c, learning_rate=1.0), ValueError, "learning_rate"),
    ("ftl: regularizer by name", lambda c: ftl(c, regularizer="sss"), ValueError, "regularizer must be a SparsityRegularizer"),
    ("editor: unknown name", lambda c: editor_class("rome"), ValueError, "unknown editor 'rome'"),
    # --- requests and edits
    ("request: empty target", lambda c: EditRequest(PROMPT, " "), ValueError, "EditRequest.target_new is empty"),
    ("request: target a dict", lambda c: EditRequest(PROMPT, {"str": "Rome"}), ValueError,
     "EditRequest.target_new must be a string, got dict"),
    ("request: subject not in prompt", lambda c: EditRequest(PROMPT, "Rome", subject="Spain"), ValueError,
     "subject 'Spain' does not occur in its prompt"),
    ("edit: no requests", lambda c: ftl(c).edit([]), ValueError, "at least one EditRequest"),
    ("edit: a string for a request", lambda c: ftl(c).edit(["Rome"]), ValueError, "requests[0] is a str"),
    ("edit: prompt too long", lambda c: ftl(c).edit(EditRequest("word " * 300, "Rome")), ValueError,
     "longer than the model's context"),
    # --- data records
    ("data: target_new a dict", lambda c: load_requests(data_file(c, [counterfact(target_new={"str": "x"})])),
     ValueError, "record 0 (counterfact, case_id 5): target_new must be a string, got dict"),
    ("data: prompt a number", lambda c: load_requests(data_file(c, [counterfact(), counterfact(prompt=7)])),
     ValueError, "record 1 (counterfact, case_id 5): prompt must be a string, got int"),
    ("data: subject a list", lambda c: load_requests(data_file(c, [counterfact(subject=["X"])])),
     ValueError, "subject must be a string, got list"),
    ("data: true target a dict", lambda c: load_requests(data_file(c, [counterfact(ground_truth={"a": 1})])),
     ValueError, "ground_truth must be a string or a list of strings, got dict"),
    ("data: rephrase a number", lambda c: load_requests(data_file(c, [counterfact(rephrase_prompt=[1])])),
     ValueError, "rephrase_prompt[0] must be a string or a list of strings, got int"),
    ("data: missing file", lambda c: load_requests(c.tmp / "absent.json"), ValueError, "no such data file"),
    ("data: unknown format", lambda c: load_requests(data_file(c, [counterfact()]), format="zsr"), ValueError,
     "unknown format 'zsr'"),
    ("data: no format matches", lambda c: load_requests(data_file(c, [{"prompt": "p"}])), ValueError,
     "record 0 matches no known format"),
    # --- files
    ("files: malformed JSON", lambda c: read_json(write(c, "report.json", "{")), ValueError, "report.json is not valid JSON"),
    ("files: missing JSON", lambda c: read_json(c.tmp / "gone.json"), ValueError, "gone.json does not exist"),
    ("files: log damaged in the middle", lambda c: read_jsonl(write(c, "log.jsonl", '{"a": 1}\n{"a"\n{"a": 2}\n')),
     ValueError, "log.jsonl: line 2 is not valid JSON"),
    ("files: no manifest", lambda c: verify_manifest(c.tmp), ValueError, "manifest.json is missing"),
    ("files: fingerprint of an absent tensor", lambda c: weights_fingerprint(c.tiny[0], ["lm_head.bias"]), ValueError,
     "no tensor named lm_head.bias"),
]

if not torch.cuda.is_available():
    CASES.append(("model: cuda without a GPU", lambda c: load_model("tiny-gpt2", device="cuda"), ValueError,
                  "CUDA is not available"))


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt2", seed=0)


@pytest.mark.parametrize("call, error, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_naming_the_culprit(call, error, message, tiny, tmp_path):
    before = {name: p.detach().clone() for name, p in tiny[0].named_parameters()}
    with pytest.raises(error) as raised:
        call(SimpleNamespace(tiny=tiny, tmp=tmp_path))
    assert message in str(raised.value)
    assert all(torch.equal(p, before[name]) for name, p in tiny[0].named_parameters())  # nothing was touched


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({case[0] for case in CASES}) == len(CASES)
