"""Bad input, table-driven: each case is refused with a ValueError whose message names the culprit.

Every case is ``(id, call, error type, substring)``; ``call(ctx)`` gets a context with a shared
tiny model and a temporary folder. Cases are checked at the API; CLI cases (exit code 2, one line,
no traceback) sit beside them with the same shape.
"""
import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from sss import FTL, MEND, EditRequest, SSSRegularizer, load_model
from sss.data import load_requests
from sss.editors import EDITORS, WeightEditHandle, editor_class
from sss.files import read_json, read_jsonl, verify_manifest, weights_fingerprint
from sss.train import TrainConfig

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


def saved_edit(ctx, name="edit"):
    """A saved FT-L edit of the shared model (which is restored at once)."""
    editor = ftl(ctx, lr=5e-2, steps=1, norm_constraint=1.0, early_stop_loss=-1.0)
    with editor.edit(EditRequest(PROMPT, "Rome")) as handle:
        return handle.save(ctx.tmp / name if name else name)


def damaged(path, flip):
    data = bytearray(path.read_bytes())
    if flip:
        data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data if flip else data[:-7]))
    return path


def without_metadata(path):
    path.with_suffix(".json").unlink()
    return path


def edit_meta(path, drop):
    """The saved edit at ``path`` with its base fingerprint removed (``drop``) or set to null."""
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    if drop:
        del meta["base_fingerprint"]
    else:
        meta["base_fingerprint"] = None
    meta_path.write_text(json.dumps(meta))
    return path


def binary_file(ctx, name="data.json"):
    path = ctx.tmp / name
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    return path


def other_weights(ctx):
    """A copy of the shared model with the same shapes and one MLP weight changed a little."""
    other = copy.deepcopy(ctx.tiny[0])
    with torch.no_grad():
        other.get_parameter("transformer.h.0.mlp.c_proj.weight").add_(1e-3)
    return other


def mend_checkpoint(ctx):
    editor = MEND(*ctx.tiny, rank=8, layers=(0,), progress=False)
    editor.init_statistics([EditRequest(PROMPT, "Rome")])
    editor.save(ctx.tmp / "mend")
    return ctx.tmp / "mend"


CASES = [
    # --- load_model: names, dtypes, devices, files (all checked before anything loads)
    ("model: hub id not cached, offline", lambda c: load_model("no-such-model"), ValueError,
     "model 'no-such-model' is not in the hub cache"),
    ("model: neither folder nor hub id", lambda c: load_model("a/b/c"), ValueError,
     "model 'a/b/c' is neither a local folder nor a hub id"),
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
     "absent/model': it does not exist"),
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
    ("editor: unknown name", lambda c: editor_class("romeo"), ValueError, "unknown editor 'romeo'"),
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
    # --- saved edits and checkpoints loaded onto a model
    ("edit file: a flipped byte", lambda c: WeightEditHandle.load(damaged(saved_edit(c), flip=True), c.tiny[0]),
     ValueError, "edit.safetensors has SHA-256"),
    ("edit file: truncated", lambda c: WeightEditHandle.load(damaged(saved_edit(c), flip=False), c.tiny[0]),
     ValueError, "edit.safetensors has"),
    ("edit file: metadata missing", lambda c: WeightEditHandle.load(without_metadata(saved_edit(c)), c.tiny[0]),
     ValueError, "edit.json is missing"),
    ("edit file: same shapes, other weights", lambda c: WeightEditHandle.load(saved_edit(c), other_weights(c)),
     ValueError, "edit.safetensors (differing tensors: transformer.h.0.mlp.c_proj.weight)"),
    ("edit file: base fingerprint removed", lambda c: WeightEditHandle.load(edit_meta(saved_edit(c), drop=True),
                                                                             other_weights(c)),
     ValueError, "records no base_fingerprint"),
    ("edit file: base fingerprint null", lambda c: WeightEditHandle.load(edit_meta(saved_edit(c), drop=False),
                                                                          other_weights(c)),
     ValueError, "records no base_fingerprint"),
    ("edit file: empty name", lambda c: saved_edit(c, name=""),
     ValueError, "a saved edit needs a file name"),
    # --- editors refuse what would silently give wrong results
    ("ftl: float16 weights on a CPU", lambda c: FTL(*load_model("tiny-gpt2", dtype=torch.float16), progress=False),
     ValueError, "FT-L cannot train float16 weights on a CPU"),
    ("sss: target block beyond the depth", lambda c: ftl(c, regularizer=SSSRegularizer(target=99)), ValueError,
     "target block 99 is out of range: the model has 2 blocks"),
    ("train: grad clip nan", lambda c: TrainConfig(grad_clip=float("nan")), ValueError,
     "grad_clip must be a positive finite number"),
    ("train: lr infinite", lambda c: TrainConfig(lr={"network": float("inf")}), ValueError,
     "lr['network'] must be a positive finite number"),
    ("data: not UTF-8", lambda c: load_requests(binary_file(c)), ValueError, "data.json is not a text file (not UTF-8"),
    ("mend checkpoint: same shapes, other weights", lambda c: MEND.load(mend_checkpoint(c), other_weights(c), c.tiny[1]),
     ValueError, "mend was made for base weights with fingerprint"),
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


@pytest.mark.parametrize("editor", sorted(EDITORS))
def test_every_config_field_of_every_editor_refuses_a_value_of_the_wrong_type(editor):
    """A config is checked by type on construction, every field, every registered editor: a value
    of no sensible type is a ValueError that names the field (never a TypeError from deep inside)."""
    config_class = EDITORS[editor].config_class
    fields = [f.name for f in dataclasses.fields(config_class)]
    assert fields, f"{config_class.__name__} has no fields"
    for name in fields:
        for wrong in (object(), [object()]):
            with pytest.raises(ValueError) as raised:
                config_class(**{name: wrong})
            assert name in str(raised.value), f"{config_class.__name__}.{name}={wrong!r}: {raised.value}"
    assert config_class() == config_class(**{f: getattr(config_class(), f) for f in fields})  # defaults pass


# --- the command line: exit code 2, one line naming the culprit, no traceback, no model loaded
from sss import cli  # noqa: E402
from sss.train import write_checkpoint  # noqa: E402


def damaged_checkpoint(ctx):
    folder = write_checkpoint(ctx.tmp / "ck", {"w": torch.zeros(64)}, {"editor": "mend"})
    data = bytearray((folder / "weights.safetensors").read_bytes())
    data[-5] ^= 1
    (folder / "weights.safetensors").write_bytes(bytes(data))
    return folder


def unsigned_checkpoint(ctx):
    folder = write_checkpoint(ctx.tmp / "ck", {"w": torch.zeros(4)}, {"editor": "mend"})
    (folder / "manifest.json").unlink()
    return folder


def lost_latest(ctx):
    (ctx.tmp / "run").mkdir()
    (ctx.tmp / "run" / "progress.json").write_text('{"format": "sss-train-progress/1", "latest_step": 2}')
    return ctx.tmp / "run"


def a_file(ctx, name="taken"):
    return write(ctx, name, "x")


def empty_folder(ctx):
    (ctx.tmp / "empty").mkdir()
    return ctx.tmp / "empty"


def study_file(ctx, name="bad", editors='["ft-l"]', setting="", data=""):
    """A smoke study of the demo set with one setting or data field added (each test's mistake)."""
    path = ctx.tmp / "study.toml"
    path.write_text(f'name = "{name}"\neditors = {editors}\ndatasets = ["demo"]\n'
                    + (f"[data.demo]\neval = \"demo\"\n{data}\n" if data else "")
                    + (f"[scales.smoke]\n{setting}\n" if setting else ""))
    return path


# Study settings of the wrong type or out of range: each would run silently, or fail deep inside.
STUDY_BAD_SETTINGS = [("eval_requests", '"2"'), ("eval_requests", "2.5"), ("eval_requests", "0"),
                      ("eval_requests", "-1"), ("seeds", "[]"), ("seeds", "0"), ("sizes", "[0]"),
                      ("train_steps", "0")]

EVAL = ["eval", "--model", "tiny-gpt2", "--data", "demo", "--no-progress"]
STUDY = ["study", "studies/table1.toml", "--scale", "smoke"]
TRAIN = ["train", "mend", "--model", "tiny-gpt2", "--train", "demo", "--no-progress"]

CLI_CASES = [
    ("cli: option not an integer", lambda c: EVAL + ["--option", "steps=abc", "--out", str(c.tmp / "o")],
     "--option steps='abc': steps takes an integer, got str 'abc'"),
    ("cli: option fractional", lambda c: EVAL + ["--option", "steps=2.5", "--out", str(c.tmp / "o")],
     "--option steps=2.5: steps takes an integer, got float 2.5"),
    ("cli: option list of floats", lambda c: EVAL + ["--option", "layers=[0.7]", "--out", str(c.tmp / "o")],
     "--option layers=[0.7]: layers takes a list of integers or null"),
    ("cli: option unknown", lambda c: EVAL + ["--option", "learning_rate=1", "--out", str(c.tmp / "o")],
     "--option learning_rate: FT-L has no option 'learning_rate'"),
    ("cli: option without value", lambda c: EVAL + ["--option", "steps", "--out", str(c.tmp / "o")],
     "--option takes KEY=VALUE, got 'steps'"),
    ("cli: train option wrong type", lambda c: TRAIN + ["--option", "rank=abc", "--out", str(c.tmp / "o")],
     "--option rank='abc': rank takes an integer"),
    ("cli: checkpoint missing", lambda c: EVAL + ["--checkpoint", str(c.tmp / "nothing"), "--out", str(c.tmp / "o")],
     "nothing does not exist"),
    ("cli: checkpoint damaged", lambda c: EVAL + ["--checkpoint", str(damaged_checkpoint(c)), "--out", str(c.tmp / "o")],
     "weights.safetensors has SHA-256"),
    ("cli: checkpoint without manifest", lambda c: EVAL + ["--checkpoint", str(unsigned_checkpoint(c)),
                                                          "--out", str(c.tmp / "o")], "ck/manifest.json is missing"),
    ("cli: mend without checkpoint", lambda c: EVAL + ["--editor", "mend", "--out", str(c.tmp / "o")],
     "--editor mend needs --checkpoint DIR"),
    ("cli: data path missing", lambda c: ["eval", "--model", "tiny-gpt2", "--data", str(c.tmp / "no-such-data"),
                                          "--out", str(c.tmp / "o")], "no-such-data: no such file or folder"),
    ("cli: train data missing", lambda c: ["train", "mend", "--train", str(c.tmp / "gone.json"),
                                           "--out", str(c.tmp / "o")], "--train " + "{tmp}/gone.json: no such file"),
    ("cli: out is a file", lambda c: EVAL + ["--out", str(a_file(c))], "taken is a file, not a folder"),
    ("cli: out under a file", lambda c: EVAL + ["--out", str(a_file(c) / "sub")], "taken is a file, not a folder"),
    ("cli: out unwritable", lambda c: EVAL + ["--out", "/proc/sss-cannot-write-here"],
     "--out /proc/sss-cannot-write-here: cannot write there"),
    ("cli: train out is a file", lambda c: TRAIN + ["--out", str(a_file(c))], "--out {tmp}/taken is a file"),
    ("cli: train latest lost", lambda c: TRAIN + ["--out", str(lost_latest(c))],
     "run/latest is missing, although"),
    ("cli: device unknown", lambda c: EVAL + ["--device", "gpu", "--out", str(c.tmp / "o")],
     "malformed --device 'gpu'"),
    ("cli: limit zero", lambda c: EVAL + ["--limit", "0"], "argument --limit: expected a positive integer, got '0'"),
    ("cli: limit text", lambda c: EVAL + ["--limit", "ten"], "argument --limit: expected a positive integer, got 'ten'"),
    ("cli: train max steps zero", lambda c: TRAIN + ["--max-steps", "0", "--out", str(c.tmp / "o")],
     "argument --max-steps: expected a positive integer"),
    ("cli: unknown editor", lambda c: EVAL + ["--editor", "romeo", "--out", str(c.tmp / "o")], "unknown editor 'romeo'"),
    ("cli: bad sss target", lambda c: EVAL + ["--sss-target", "middle"], "block index, got 'middle'"),
    ("cli: device meta", lambda c: EVAL + ["--device", "meta", "--out", str(c.tmp / "o")],
     "--device 'meta': the meta device holds no values"),
    ("cli: train grad clip nan", lambda c: TRAIN + ["--grad-clip", "nan", "--out", str(c.tmp / "o")],
     "grad_clip must be a positive finite number or None, got nan"),
    ("cli: train lr infinite", lambda c: TRAIN + ["--lr", "network=inf", "--out", str(c.tmp / "o")],
     "lr['network'] must be a positive finite number, got inf"),
    ("cli: train early stop key unknown", lambda c: TRAIN + ["--early-stop-key", "banana", "--out", str(c.tmp / "o")],
     "--early-stop-key 'banana' is not a validation metric of MEND"),
    ("cli: out empty", lambda c: EVAL + ["--out", ""], "argument --out: expected a name or path, got an empty string"),
    ("cli: model empty", lambda c: EVAL + ["--model", "", "--out", str(c.tmp / "o")],
     "argument --model: expected a name or path"),
    ("cli: train out empty", lambda c: TRAIN + ["--out", ""], "argument --out: expected a name or path"),
    ("cli: out name too long", lambda c: EVAL + ["--out", str(c.tmp / ("a" * 300))],
     "a folder name is 300 bytes long; file systems allow 255"),
    ("cli: seed beyond 64 bits", lambda c: EVAL + ["--seed", str(2 ** 70), "--out", str(c.tmp / "o")],
     "argument --seed: expected an integer from 0 to 2**63 - 1"),
    ("cli: data not UTF-8", lambda c: ["eval", "--model", "tiny-gpt2", "--data", str(binary_file(c)),
                                       "--out", str(c.tmp / "o")], "data.json is not a text file (not UTF-8"),
    ("cli: data folder datasets cannot read", lambda c: ["eval", "--model", "tiny-gpt2", "--data", str(empty_folder(c)),
                                                         "--out", str(c.tmp / "o")],
     "a folder that datasets could not read as a dataset"),
    ("cli: unknown flag names its command", lambda c: EVAL + ["--bogus"], "sss eval: error: unrecognized arguments"),
    ("cli: demo sss-c nan", lambda c: ["demo", "--sss-c", "nan", "--out", str(c.tmp / "o")],
     "argument --sss-c: expected a number in [0, 1], got 'nan'"),
    ("cli: batch without a batch size", lambda c: EVAL + ["--mode", "batch", "--out", str(c.tmp / "o")],
     "mode 'batch' needs batch_size"),
    ("cli: checkpoints beyond the requests", lambda c: EVAL + ["--limit", "2", "--mode", "sequential",
                                                               "--checkpoints", "5", "--out", str(c.tmp / "o")],
     "--checkpoints 5: beyond the 2 requests evaluated"),
    ("cli: study out is /dev/null", lambda c: STUDY + ["--out", "/dev/null"], "--out /dev/null is a file"),
    ("cli: study out unwritable", lambda c: STUDY + ["--out", "/proc/sss-cannot-write-here"], "cannot write there"),
    ("cli: study model empty", lambda c: STUDY + ["--model", "", "--out", str(c.tmp / "o")],
     "argument --model: expected a name or path"),
    ("cli: study device meta", lambda c: STUDY + ["--device", "meta", "--out", str(c.tmp / "o")],
     "--device 'meta': the meta device holds no values"),
    ("cli: study file not UTF-8", lambda c: ["study", str(binary_file(c, "s.toml")), "--out", str(c.tmp / "o")],
     "s.toml is not a text file (not UTF-8"),
    ("cli: study name '..'", lambda c: ["study", str(study_file(c, name="..")), "--out", str(c.tmp / "o")],
     "name '..' needs a letter or digit"),
    ("cli: study name '.'", lambda c: ["study", str(study_file(c, name=".")), "--out", str(c.tmp / "o")],
     "name '.' needs a letter or digit"),
    ("cli: study unknown editor", lambda c: ["study", str(study_file(c, editors='["ft-l", "rome2"]')),
                                             "--out", str(c.tmp / "o")], "unknown editor(s) ['rome2']"),
] + [(f"cli: study {key} = {value}", (lambda k, v: lambda c: ["study", str(study_file(c, setting=f"{k} = {v}")),
                                                               "--out", str(c.tmp / "o")])(key, value),
      f"{key} must be") for key, value in STUDY_BAD_SETTINGS] + [
    ("cli: study options of an unknown editor", lambda c: ["study", str(study_file(
        c, setting="[scales.smoke.editors.rome2]\nsteps = 2")), "--out", str(c.tmp / "o")],
     "options for unknown editor 'rome2'"),
    ("cli: study option an editor lacks", lambda c: ["study", str(study_file(
        c, setting="[scales.smoke.editors.ft-l]\nstepz = 2")), "--out", str(c.tmp / "o")],
     "ft-l has no option(s) ['stepz']"),
    ("cli: study eval_slice of text", lambda c: ["study", str(study_file(c, data='eval_slice = ["a", "b"]')),
                                                 "--out", str(c.tmp / "o")], "eval_slice must be [start, stop]"),
]
if not torch.cuda.is_available():
    CLI_CASES.append(("cli: cuda without a GPU", lambda c: EVAL + ["--device", "cuda", "--out", str(c.tmp / "o")],
                      "--device 'cuda': CUDA is not available"))


@pytest.mark.parametrize("argv, message", [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES])
def test_bad_command_line_exits_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    import sss.models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(sss.models, "load_model", no_model)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv(SimpleNamespace(tmp=tmp_path)))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and "Traceback" not in err
    assert len(lines) == 1 and "error: " in lines[0], err
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]
    assert not (tmp_path / "o").exists()  # a failed run leaves no output folder behind


def test_a_failed_eval_removes_the_output_folder_it_created(tmp_path, capsys):
    data = data_file(SimpleNamespace(tmp=tmp_path), [{"prompt": "p"}])  # passes the checks, fails to read
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--model", "tiny-gpt2", "--data", str(data), "--out", str(tmp_path / "new" / "out")])
    assert exit_.value.code == 2 and "matches no known format" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_damaged_file_through_the_cli_subprocess(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    folder = damaged_checkpoint(SimpleNamespace(tmp=tmp_path))
    done = subprocess.run([sys.executable, "-m", "sss", "eval", "--checkpoint", str(folder), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "weights.safetensors has SHA-256" in done.stderr


@pytest.mark.parametrize("field, text", [("steps", "steps=[1]"), ("lr", "lr=\"fast\""), ("layers", "layers={}"),
                                         ("objective", "objective=3")])
def test_a_wrong_typed_option_is_refused_on_the_command_line_before_the_model_loads(tmp_path, capsys, field, text):
    # EVAL names a model that does not exist: reaching the load would fail with another message.
    args = ["eval", "--model", "no/such-model", "--data", "demo", "--option", text, "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and f"--option {field}" in err and "Traceback" not in err
    assert "no/such-model" not in err and not (tmp_path / "o").exists()


def test_stdout_closed_by_its_reader_ends_quietly(tmp_path):
    """``sss study ... | head -0``: the reader is gone before anything is printed."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-m", "sss", "study", "studies/table1.toml", "--status",
                                "--out", str(tmp_path / "o")], cwd=root, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # long before the interpreter has started
    stderr = process.stderr.read()
    process.wait(timeout=120)
    assert process.returncode == 141 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_a_model_folder_whose_pickle_holds_code_is_refused_unrun(tmp_path, capsys):
    model, tokenizer = load_model("tiny-gpt2", seed=0)
    folder = tmp_path / "model"
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save({"x": _RunsCode(tmp_path / "ran")}, folder / "pytorch_model.bin")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "--model", str(folder), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "a pickle that holds more than tensors, which sss refuses to unpickle" in err
    assert not (tmp_path / "ran").exists()


class _RunsCode:
    """Unpickling this would create the file ``target``: the loader must refuse before that."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_an_unreachable_hub_is_one_line_at_once(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def unreachable(self, *args, **kwargs):
        raise ConnectionError("Name or service not known")

    def no_download(*args, **kwargs):
        raise AssertionError("transformers was asked to download (and retry) anyway")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    import transformers

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_download)
    with pytest.raises(SystemExit) as exit_:
        cli.main(EVAL + ["--model", "someone/not-cached", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "'someone/not-cached' is not in the hub cache" in err and "the hub cannot be reached (ConnectionError)" in err


def test_an_sss_target_beyond_the_depth_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(EVAL + ["--limit", "1", "--sss-c", "0.9", "--sss-target", "99", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line] == [
        "sss eval: error: the regularizer's target block 99 is out of range: the model has 2 blocks (0 to 1)"]
