"""Atomic writes survive an interruption; logs, manifests and fingerprints detect damage."""
import json
import logging
import os

import pytest
import torch

from sss import files
from sss.files import (append_jsonl, check_fingerprint, read_json, read_jsonl, save_safetensors_atomic,
                       sha256_file, verify_manifest, weights_fingerprint, write_bytes_atomic, write_json_atomic,
                       write_manifest, write_text_atomic)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _raise(error):
    def fail(*args, **kwargs):
        raise error
    return fail


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError("disk full"), RuntimeError("boom")])
@pytest.mark.parametrize("write", [
    lambda path: write_text_atomic(path, "new"),
    lambda path: write_json_atomic(path, {"new": 1}),
    lambda path: write_bytes_atomic(path, b"new"),
    lambda path: save_safetensors_atomic({"w": torch.ones(3)}, path),
])
def test_an_interrupted_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, write, error):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old content")
    monkeypatch.setattr(files.atomic.os, "replace", _raise(error))
    with pytest.raises(type(error)):
        write(target)
    assert target.read_bytes() == b"old content"
    assert leftovers(tmp_path) == []


def test_an_interrupted_safetensors_write_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "w.safetensors"
    save_safetensors_atomic({"w": torch.zeros(4)}, target)

    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 5)  # a partial file, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(KeyboardInterrupt):
        save_safetensors_atomic({"w": torch.ones(4)}, target)
    monkeypatch.undo()
    assert torch.equal(safetensors.torch.load_file(str(target))["w"], torch.zeros(4))
    assert leftovers(tmp_path) == []


def test_an_unserialisable_value_writes_nothing(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert read_json(target) == {"a": 1} and leftovers(tmp_path) == []


def test_atomic_writes_round_trip_and_keep_metadata(tmp_path):
    write_json_atomic(tmp_path / "sub" / "a.json", {"x": [1, 2]})
    assert read_json(tmp_path / "sub" / "a.json") == {"x": [1, 2]}
    tensors = {"a": torch.randn(2, 3, dtype=torch.bfloat16), "b": torch.arange(5)}
    save_safetensors_atomic(tensors, tmp_path / "t.safetensors", metadata={"base": "abc"})
    from safetensors import safe_open
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        assert f.metadata() == {"base": "abc"}
        assert all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())


def test_read_json_names_the_malformed_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"a": 1,')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        read_json(bad)
    with pytest.raises(ValueError, match="missing.json does not exist"):
        read_json(tmp_path / "missing.json")


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    log = tmp_path / "log.jsonl"
    for step in range(3):
        append_jsonl(log, {"step": step})
    with open(log, "ab") as handle:
        handle.write(b'{"step": 3, "lo')  # a kill mid-append
    with caplog.at_level(logging.WARNING, logger="sss.files"):
        assert read_jsonl(log) == [{"step": 0}, {"step": 1}, {"step": 2}]
    assert "log.jsonl: line 4 is torn" in caplog.text


def test_appending_after_a_torn_line_cuts_it_off(tmp_path, caplog):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"step": 0})
    with open(log, "ab") as handle:
        handle.write(b'{"step": 1, "lo')
    with caplog.at_level(logging.WARNING, logger="sss.files"):
        append_jsonl(log, {"step": 1})
    assert "torn" in caplog.text
    assert read_jsonl(log) == [{"step": 0}, {"step": 1}]
    assert log.read_text().count("\n") == 2


def test_a_last_line_without_its_newline_is_torn_even_when_it_parses(tmp_path):
    """Reading and appending agree: the record the next append would cut off is not counted."""
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"step": 0})
    with open(log, "ab") as handle:
        handle.write(b'{"step": 1}')  # killed just before the newline
    assert read_jsonl(log) == [{"step": 0}]
    append_jsonl(log, {"step": 2})
    assert read_jsonl(log) == [{"step": 0}, {"step": 2}]


def test_append_can_keep_non_ascii_text_unescaped(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"city": "Zürich"}, ensure_ascii=False)
    append_jsonl(log, {"city": "Zürich"})
    assert log.read_bytes() == '{"city": "Zürich"}\n{"city": "Z\\u00fcrich"}\n'.encode("utf-8")
    assert read_jsonl(log) == [{"city": "Zürich"}] * 2


def test_damage_in_the_middle_of_a_log_is_an_error_naming_the_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0}\n{"step": 1, "lo\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"log.jsonl: line 2 is not valid JSON"):
        read_jsonl(log)


def test_an_interrupted_append_leaves_the_log_readable(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"step": 0})
    monkeypatch.setattr(files.jsonl.os, "fsync", _raise(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        append_jsonl(log, {"step": 1})
    monkeypatch.undo()
    records = read_jsonl(log)
    assert records in ([{"step": 0}], [{"step": 0}, {"step": 1}])  # whole or absent


def test_sha256_file_matches_hashlib_across_chunks(tmp_path, monkeypatch):
    import hashlib

    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    monkeypatch.setattr(files.manifest, "_CHUNK", 1000)  # several chunks
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.fixture
def folder(tmp_path):
    save_safetensors_atomic({"w": torch.arange(100, dtype=torch.float32)}, tmp_path / "weights.safetensors")
    write_json_atomic(tmp_path / "config.json", {"lr": 0.1})
    write_manifest(tmp_path, ["weights.safetensors", "config.json"], extra={"base_weights": "abc"})
    return tmp_path


def test_a_good_folder_verifies_and_returns_its_extra(folder):
    assert verify_manifest(folder)["extra"] == {"base_weights": "abc"}


def test_a_flipped_byte_is_named(folder):
    path = folder / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"weights.safetensors has SHA-256 .*content changed.*write it again"):
        verify_manifest(folder)


def test_a_truncated_file_is_named(folder):
    path = folder / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"weights.safetensors has \d+ bytes, the manifest says \d+"):
        verify_manifest(folder)


def test_a_missing_file_and_a_missing_manifest_are_named(folder):
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match=r"config.json is missing"):
        verify_manifest(folder, recover="resume from OUT/step_100")
    (folder / "manifest.json").unlink()
    with pytest.raises(ValueError, match=r"manifest.json is missing.*not written completely"):
        verify_manifest(folder)


def test_the_recovery_hint_is_the_callers(folder):
    (folder / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="resume from OUT/step_100"):
        verify_manifest(folder, recover="resume from OUT/step_100")


def test_write_manifest_refuses_a_file_that_is_not_there(tmp_path):
    with pytest.raises(ValueError, match="nothing.bin"):
        write_manifest(tmp_path, ["nothing.bin"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("names", [None, ["b.weight"]])
def test_fingerprint_sees_one_ulp_and_ignores_copies(dtype, names):
    torch.manual_seed(0)
    weights = {"a.weight": torch.randn(8, 8).to(dtype), "b.weight": torch.randn(3, 5).to(dtype)}
    copy = {name: tensor.clone() for name, tensor in weights.items()}
    assert weights_fingerprint(weights, names) == weights_fingerprint(copy, names)
    nudged = {name: tensor.clone() for name, tensor in weights.items()}
    value = nudged["b.weight"][1, 2]
    nudged["b.weight"][1, 2] = torch.nextafter(value.float(), torch.tensor(float("inf"))).to(dtype) \
        if dtype == torch.float32 else (value.view(torch.int16) + 1).view(dtype)
    assert not torch.equal(nudged["b.weight"], weights["b.weight"])
    assert weights_fingerprint(nudged, names) != weights_fingerprint(weights, names)


def test_fingerprint_sees_dtype_shape_and_names():
    w = torch.zeros(4, 4)
    base = weights_fingerprint({"w": w})
    assert weights_fingerprint({"w": w.double()}) != base
    assert weights_fingerprint({"w": w.reshape(2, 8)}) != base
    assert weights_fingerprint({"v": w}) != base


def test_fingerprint_of_a_model_names_only_what_it_was_asked(tiny_gpt2):
    model, _ = tiny_gpt2
    name = "transformer.h.0.mlp.c_proj.weight"
    before_all, before_named = weights_fingerprint(model), weights_fingerprint(model, [name])
    with torch.no_grad():
        model.get_parameter("transformer.h.1.mlp.c_proj.weight")[0, 0] += 1.0
    assert weights_fingerprint(model, [name]) == before_named
    assert weights_fingerprint(model) != before_all
    with pytest.raises(ValueError, match="no tensor named nope"):
        weights_fingerprint(model, ["nope"])


def test_fingerprint_of_a_135m_sized_model_is_fast():
    import time

    # SmolLM2-135M's shapes: the embedding and 30 blocks of attention and MLP projections.
    weights = {"embed": torch.randn(49152, 576)}
    for block in range(30):
        weights.update({f"{block}.q": torch.randn(576, 576), f"{block}.down": torch.randn(576, 1536),
                        f"{block}.up": torch.randn(1536, 576), f"{block}.gate": torch.randn(1536, 576)})
    start = time.perf_counter()
    weights_fingerprint(weights)
    weights_fingerprint(weights, ["10.down"])
    assert time.perf_counter() - start < 0.5


def test_check_fingerprint_names_what_it_refuses():
    check_fingerprint(None, "abc", "x")  # a file from before fingerprints: nothing to compare
    check_fingerprint("abc", "abc", "x")
    with pytest.raises(ValueError, match="the saved edit e.safetensors was made for base weights with fingerprint "
                                         "abc, but this model's are def"):
        check_fingerprint("abc", "def", "the saved edit e.safetensors")


def _rewrite_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest["files"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_that_lists_nothing_verifies_nothing_and_is_refused(folder):
    _rewrite_manifest(folder, dict.clear)
    with pytest.raises(ValueError, match="lists no files"):
        verify_manifest(folder)


def test_a_manifest_entry_outside_its_folder_is_refused(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "hostname"
    outside.write_text("x")
    relative = os.path.relpath(outside, folder)
    _rewrite_manifest(folder, lambda files: files.update({relative: {"size": 1, "sha256": "0"}}))
    with pytest.raises(ValueError, match="a path outside its folder"):
        verify_manifest(folder)


def test_weights_the_manifest_does_not_list_are_refused(folder):
    save_safetensors_atomic({"w": torch.ones(3)}, folder / "replacement.safetensors")
    with pytest.raises(ValueError, match="replacement.safetensors is not listed"):
        verify_manifest(folder)
