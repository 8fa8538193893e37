"""Dataset readers: the real files in ../shared/data, small records written here, and bad input."""
from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from sss.data import (FORMATS, LOCALITY_CATEGORIES, PORTABILITY_CATEGORIES, EditRequest, detect_format,
                      load_requests, parse_source)
from sss.data.probes import edit_sentence

REAL_FILES = {
    "zsre/zsre_mend_train-1k.json": "zsre",
    "counterfact/counterfact-train.json": "counterfact",
    "counterfact/counterfact-val.json": "counterfact",
    "rome/counterfact-rome-sample100.json": "counterfact-rome",
    "knowedit/ZsRE-test-sample200.json": "knowedit",
    "knowedit/wiki_counterfact-train-sample200.json": "knowedit",
}
KNOWEDIT_CATEGORY = {"Relation_Specificity": "unrelated_attribute", "Forgetfulness": "forgetfulness",
                     "Subject_Aliasing": "subject_replace", "Logical_Generalization": "reversed_relation",
                     "Reasoning": "one_hop"}


def write(tmp_path, records, name="data.json", jsonl=False):
    path = tmp_path / name
    text = "\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records)
    path.write_text(text, encoding="utf-8")
    return path


def zsre_record(**overrides):
    record = {"subject": "UniFirst", "src": "What is the product made by UniFirst?", "pred": "uniform",
              "rephrase": "What will be the product of UniFirst?", "alt": "unmanned aircraft",
              "answers": ["uniform", "uniforms"], "loc": "nq question: who wrote hamlet",
              "loc_ans": "William Shakespeare", "cond": "uniform >> unmanned aircraft"}
    return {**record, **overrides}


def counterfact_record(case_id, subject, prompt, truth, new, **overrides):
    record = {"case_id": case_id, "prompt": prompt, "target_new": new, "subject": subject, "ground_truth": truth,
              "rephrase_prompt": f"In other words, {prompt}", "locality_prompt": "John Lennon performs on the",
              "locality_ground_truth": truth}
    return {**record, **overrides}


def rome_record(case_id, subject, template, relation, truth, new, **overrides):
    record = {"case_id": case_id, "pararel_idx": 1,
              "requested_rewrite": {"prompt": template, "relation_id": relation, "subject": subject,
                                    "target_new": {"str": new, "id": "Q1"}, "target_true": {"str": truth, "id": "Q2"}},
              "paraphrase_prompts": [f"Some text. {template.format(subject)}"],
              "neighborhood_prompts": ["Ghana is in", "Kenya is in"],
              "attribute_prompts": ["Ross Island is located in"],
              "generation_prompts": ["Angola is"]}
    return {**record, **overrides}


def knowedit_record(**overrides):
    record = {"subject": "Heidi Blose", "prompt": "The name of the spouse of Heidi Blose is",
              "target_new": "Sachchidananda Vatsyayan", "ground_truth": ["Morgan Margolis", "M. Margolis"],
              "rephrase_prompt": "Heidi Blose is married to",
              "locality": {"Relation_Specificity": [{"prompt": "The gender of Heidi Blose is",
                                                     "ground_truth": ["female"]}],
                           "Forgetfulness": [{"prompt": "The spouse of Heidi Blose, which is not S. V., is",
                                              "ground_truth": "Morgan Margolis"}]},
              "portability": {"Reasoning": [{"prompt": "The place of birth of the spouse of Heidi Blose is",
                                             "ground_truth": "Kushinagar"}],
                              "Subject_Aliasing": [{"prompt": "The name of the spouse of Heide Katrena Blose is",
                                                    "ground_truth": "Sachchidananda Vatsyayan"}],
                              "Logical_Generalization": [{"prompt": "The spouse of Sachchidananda Vatsyayan is",
                                                          "ground_truth": "Heidi Blose"}]}}
    return {**record, **overrides}


def by_category(probes):
    return Counter(probe.category for probe in probes)


# ----------------------------------------------------------------------------------------------
# The real files


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_file_is_detected_and_every_probe_has_a_known_category(shared_data, name):
    requests = load_requests(shared_data / name)
    raw = json.loads((shared_data / name).read_text(encoding="utf-8"))
    assert requests.stats.format == REAL_FILES[name]
    assert requests.stats.records == len(raw)
    assert len(requests) == len(raw) - requests.stats.num_skipped
    assert all(isinstance(request, EditRequest) for request in requests)
    for request in requests:
        assert {p.category for p in request.locality} <= set(LOCALITY_CATEGORIES)
        assert {p.category for p in request.portability} <= set(PORTABILITY_CATEGORIES)


def test_real_zsre_maps_fields_and_skips_empty_alts(shared_data):
    path = shared_data / "zsre/zsre_mend_train-1k.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    requests = load_requests(path)
    empty = [i for i, record in enumerate(raw) if not record["alt"].strip()]
    assert empty, "the shared ZsRE file is known to hold records with an empty alt"
    assert requests.stats.skipped == {"empty ZsRE alt": len(empty)}
    assert requests.stats.skipped_indices == empty
    kept = [record for i, record in enumerate(raw) if i not in empty]
    for request, record in zip(requests, kept):
        assert (request.prompt, request.target_new, request.target_true) == (record["src"], record["alt"],
                                                                              record["answers"][0])
        assert request.rephrase_prompts == (record["rephrase"],)
        assert [(p.prompt, p.answer, p.category) for p in request.locality] == [
            (record["loc"], record["loc_ans"], "neighborhood")]
        assert request.subject == record["subject"]


def test_real_counterfact_derives_distract_neighbors_and_unrelated_attributes(shared_data):
    path = shared_data / "counterfact/counterfact-val.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    requests = load_requests(path)
    by_prompt = {}
    for record in raw:
        by_prompt.setdefault((record["subject"], record["prompt"]), record)
    unrelated_seen = 0
    for request, record in zip(requests, raw):
        assert request.case_id == str(record["case_id"])
        assert (request.target_new, request.target_true) == (record["target_new"], record["ground_truth"])
        assert request.rephrase_prompts == (record["rephrase_prompt"],)
        neighborhood = [p for p in request.locality if p.category == "neighborhood"]
        assert [(p.prompt, p.answer) for p in neighborhood] == [(record["locality_prompt"],
                                                                 record["locality_ground_truth"])]
        # The locality prompt is a Pre-Neighbor here (its label is the true object), so it is distracted.
        distract = [p for p in request.locality if p.category == "distract_neighbor"]
        assert [(p.prompt, p.answer) for p in distract] == [
            (f"{record['prompt']} {record['target_new']}. {record['locality_prompt']}", record["ground_truth"])]
        for probe in (p for p in request.locality if p.category == "unrelated_attribute"):
            other = by_prompt[(record["subject"], probe.prompt)]  # another record about the same subject
            assert other is not record and probe.answer == other["ground_truth"]
            unrelated_seen += 1
    assert unrelated_seen > 0


def test_real_rome_fills_the_subject_slot_and_splits_neighbors(shared_data):
    path = shared_data / "rome/counterfact-rome-sample100.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    requests = load_requests(path)
    for request, record in zip(requests, raw):
        rewrite = record["requested_rewrite"]
        assert request.prompt == rewrite["prompt"].replace("{}", rewrite["subject"])
        assert (request.subject, request.target_new, request.target_true) == (
            rewrite["subject"], rewrite["target_new"]["str"], rewrite["target_true"]["str"])
        assert request.rephrase_prompts == tuple(record["paraphrase_prompts"])
        pre = [(p.prompt, p.answer) for p in request.locality if p.category == "pre_neighbor"]
        post = [(p.prompt, p.answer) for p in request.locality if p.category == "post_neighbor"]
        assert pre == [(p, rewrite["target_true"]["str"]) for p in record["neighborhood_prompts"]]
        assert post == [(p, rewrite["target_new"]["str"]) for p in record["attribute_prompts"]]
        assert by_category(request.locality)["distract_neighbor"] == len(pre)
        assert request.metadata["relation_id"] == rewrite["relation_id"]
    # One subject has two records with different relations: each is the other's Unrelated Attribute.
    unrelated = [(r.subject, p.prompt) for r in requests for p in r.locality if p.category == "unrelated_attribute"]
    assert len(unrelated) == 2 and unrelated[0][0] == unrelated[1][0]


@pytest.mark.parametrize("name", ["knowedit/ZsRE-test-sample200.json",
                                  "knowedit/wiki_counterfact-train-sample200.json"])
def test_real_knowedit_maps_every_family(shared_data, name):
    raw = json.loads((shared_data / name).read_text(encoding="utf-8"))
    requests = load_requests(shared_data / name)
    for request, record in zip(requests, raw):
        expected = Counter()
        for field in ("locality", "portability"):
            for family, entries in record[field].items():
                expected[KNOWEDIT_CATEGORY[family]] += len(entries)
        assert by_category(request.locality + request.portability) == expected
        truth = record["ground_truth"]
        assert request.target_true == (truth[0] if isinstance(truth, list) else truth)
        assert request.rephrase_prompts == ((record["rephrase_prompt"],) if "rephrase_prompt" in record else ())


# ----------------------------------------------------------------------------------------------
# Small records


def test_zsre_records(tmp_path, caplog):
    records = [zsre_record(), zsre_record(alt="  "), zsre_record(subject="unifirst")]
    with caplog.at_level(logging.WARNING, logger="sss.data.readers"):
        requests = load_requests(write(tmp_path, records))
    assert requests.stats.skipped == {"empty ZsRE alt": 1} and requests.stats.skipped_indices == [1]
    assert "empty ZsRE alt" in caplog.text
    first, third = requests
    assert first.metadata["answers"] == ["uniform", "uniforms"] and first.target_true == "uniform"
    assert third.subject == "UniFirst"  # the prompt's spelling of a subject that differs in case only
    assert [first.case_id, third.case_id] == ["0", "2"]  # positions in the source when records have no id


def test_counterfact_unrelated_attributes_need_another_relation(tmp_path):
    records = [
        counterfact_record(1, "Toko Yasuda", "Toko Yasuda plays the instrument", "guitar", "piano"),
        counterfact_record(2, "Toko Yasuda", "Toko Yasuda is a citizen of", "Japan", "France"),
        counterfact_record(3, "Toko Yasuda", "Toko Yasuda has citizenship from", "Japan", "Italy"),
        counterfact_record(4, "Beirut", "The twin city of Beirut is", "Istanbul", "Florence"),
    ]
    requests = load_requests(write(tmp_path, records, "cf.jsonl", jsonl=True))
    unrelated = [[(p.prompt, p.answer) for p in r.locality if p.category == "unrelated_attribute"] for r in requests]
    assert unrelated[0] == [("Toko Yasuda is a citizen of", "Japan"), ("Toko Yasuda has citizenship from", "Japan")]
    assert unrelated[1] == [("Toko Yasuda plays the instrument", "guitar")]  # not record 3: same relation
    assert unrelated[2] == [("Toko Yasuda plays the instrument", "guitar")]
    assert unrelated[3] == []


def test_counterfact_distracts_only_true_object_neighbors(tmp_path):
    records = [counterfact_record(1, "X", "X speaks", "French", "English", locality_ground_truth="Dutch")]
    request, = load_requests(write(tmp_path, records))
    assert by_category(request.locality) == {"neighborhood": 1}


def test_rome_records(tmp_path):
    records = [
        rome_record(1, "Angola", "{} is located in", "P30", "Africa", "Antarctica",
                    neighborhood_prompts=[{"prompt": "Ghana is in", "target": "Africa"}]),
        rome_record(2, "Angola", "The official language of {} is", "P37", "Portuguese", "French"),
    ]
    first, second = load_requests(write(tmp_path, records))
    assert first.prompt == "Angola is located in"
    assert [(p.prompt, p.answer, p.category) for p in first.locality] == [
        ("Ghana is in", "Africa", "pre_neighbor"),
        ("Ross Island is located in", "Antarctica", "post_neighbor"),
        ("Angola is located in Antarctica. Ghana is in", "Africa", "distract_neighbor"),
        ("The official language of Angola is", "Portuguese", "unrelated_attribute"),
    ]
    assert ("Angola is located in", "Africa", "unrelated_attribute") in [
        (p.prompt, p.answer, p.category) for p in second.locality]


def test_rome_prompt_without_subject_slot_is_an_error(tmp_path):
    records = [rome_record(1, "Angola", "Angola is located in", "P30", "Africa", "Antarctica")]
    with pytest.raises(ValueError, match=r"record 0 .*subject slot"):
        load_requests(write(tmp_path, records))


def test_knowedit_records(tmp_path, caplog):
    record = knowedit_record()
    record["locality"]["Other_Family"] = [{"prompt": "p", "ground_truth": "a"}]
    with caplog.at_level(logging.WARNING):
        request, = load_requests(write(tmp_path, [record]))
    assert request.target_true == "Morgan Margolis"
    assert request.metadata["ground_truth"] == ["Morgan Margolis", "M. Margolis"]
    assert by_category(request.locality) == {"unrelated_attribute": 1, "forgetfulness": 1}
    assert by_category(request.portability) == {"one_hop": 1, "subject_replace": 1, "reversed_relation": 1}
    assert load_requests(write(tmp_path, [record])).stats.skipped_probes == {
        "knowedit: unknown locality family Other_Family": 1}
    assert "Other_Family" in caplog.text


def test_empty_probes_are_left_out_and_counted(tmp_path):
    record = knowedit_record()
    record["portability"]["Reasoning"].append({"prompt": "Where was the spouse born?", "ground_truth": ""})
    requests = load_requests(write(tmp_path, [record]))
    assert by_category(requests[0].portability)["one_hop"] == 1
    assert sum(requests.stats.skipped_probes.values()) == 1


# ----------------------------------------------------------------------------------------------
# Detection and errors


@pytest.mark.parametrize("record, expected", [
    (zsre_record(), "zsre"),
    (counterfact_record(1, "X", "X speaks", "French", "English"), "counterfact"),
    (rome_record(1, "Angola", "{} is in", "P30", "Africa", "Asia"), "counterfact-rome"),
    (knowedit_record(), "knowedit"),
])
def test_detect_format(record, expected):
    assert detect_format(record) == expected


def test_a_record_of_no_format_names_its_index_and_missing_keys(tmp_path):
    path = write(tmp_path, [{"prompt": "The capital of France is", "target_new": "Rome"}])
    with pytest.raises(ValueError) as error:
        load_requests(path)
    message = str(error.value)
    assert "record 0 matches no known format" in message
    assert "counterfact lacks ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth" in message
    assert "zsre lacks src" in message


def test_a_later_record_missing_keys_names_its_index(tmp_path):
    records = [zsre_record(), zsre_record(), {k: v for k, v in zsre_record().items() if k not in ("loc", "alt")}]
    with pytest.raises(ValueError, match=r"record 2 .*'zsre' record: it lacks alt, loc"):
        load_requests(write(tmp_path, records))
    with pytest.raises(ValueError, match=r"record 0 .*'knowedit' record: it lacks .*locality"):
        load_requests(write(tmp_path, [zsre_record()]), format="knowedit")


def test_an_invalid_field_names_the_record(tmp_path):
    records = [counterfact_record(1, "X", "X speaks", "French", "English"),
               counterfact_record(2, "Y", "Y speaks", "French", " ")]
    with pytest.raises(ValueError, match=r"record 1 \(counterfact, case_id 2\): EditRequest.target_new is empty"):
        load_requests(write(tmp_path, records))


def _set(record, path, value):
    *parents, last = path.split(".")
    inner = record
    for key in parents:
        inner = inner[key]
    inner[last] = value
    return record


@pytest.mark.parametrize("make, path", [
    (lambda: counterfact_record(7, "X", "X speaks", "French", "English"), "target_new"),
    (lambda: counterfact_record(7, "X", "X speaks", "French", "English"), "prompt"),
    (lambda: counterfact_record(7, "X", "X speaks", "French", "English"), "subject"),
    (lambda: counterfact_record(7, "X", "X speaks", "French", "English"), "ground_truth"),
    (lambda: counterfact_record(7, "X", "X speaks", "French", "English"), "rephrase_prompt"),
    (lambda: zsre_record(), "alt"),
    (lambda: zsre_record(), "src"),
    (lambda: zsre_record(), "loc_ans"),
    (lambda: rome_record(7, "Angola", "{} is in", "P30", "Africa", "Asia"), "requested_rewrite.target_new.str"),
    (lambda: rome_record(7, "Angola", "{} is in", "P30", "Africa", "Asia"), "requested_rewrite.subject"),
    (lambda: knowedit_record(), "target_new"),
    (lambda: knowedit_record(), "ground_truth"),
])
@pytest.mark.parametrize("bad", [{"str": "x"}, 3, True])
def test_a_text_field_of_another_type_is_refused_naming_record_and_field(tmp_path, make, path, bad):
    good = make()
    records = [make(), _set(make(), path, bad)]
    load_requests(write(tmp_path, [good], "good.json"))  # the unchanged record reads
    with pytest.raises(ValueError, match=rf"record 1 \(.*\): .*{path.split('.')[-1]}.* must be a string"):
        load_requests(write(tmp_path, records))


def test_a_list_target_is_refused_where_one_string_is_required(tmp_path):
    record = counterfact_record(7, "X", "X speaks", "French", "English")
    record["target_new"] = ["English", "French"]
    with pytest.raises(ValueError, match=r"record 0 \(counterfact, case_id 7\): target_new must be a string, "
                                         r"got list"):
        load_requests(write(tmp_path, [record]))


def test_bad_sources_and_arguments(tmp_path):
    path = write(tmp_path, [zsre_record()])
    with pytest.raises(ValueError, match="unknown format 'zsr'"):
        load_requests(path, format="zsr")
    with pytest.raises(ValueError, match="contradicts"):
        load_requests(f"{path}:counterfact", format="zsre")
    with pytest.raises(ValueError, match="no such data file"):
        load_requests(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="local file"):
        load_requests(path, split="train")
    with pytest.raises(ValueError, match="limit"):
        load_requests(path, limit=0)
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_requests(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="holds no records"):
        load_requests(write(tmp_path, [], "empty.json"))


def test_parse_source(tmp_path):
    path = write(tmp_path, [zsre_record()])
    assert parse_source(f"{path}:zsre") == (str(path), "zsre")
    assert parse_source("user/dataset:counterfact-rome") == ("user/dataset", "counterfact-rome")
    assert parse_source(r"C:\data\cf.json") == (r"C:\data\cf.json", None)
    assert parse_source(str(path)) == (str(path), None)
    with pytest.raises(ValueError, match="unknown format 'zsr'.*known formats: " + ", ".join(FORMATS)):
        parse_source(f"{path}:zsr")
    assert load_requests(f"{path}:zsre").stats.format == "zsre"


# ----------------------------------------------------------------------------------------------
# limit / seed, and datasets sources


def test_limit_picks_a_seeded_nested_subset_in_source_order(tmp_path):
    records = [zsre_record(src=f"What is the product made by UniFirst {i}?") for i in range(40)]
    path = write(tmp_path, records)
    everything = load_requests(path)
    ten, twenty = load_requests(path, limit=10, seed=3), load_requests(path, limit=20, seed=3)
    positions = [int(r.case_id) for r in twenty]
    assert len(ten) == 10 and len(twenty) == 20 and positions == sorted(positions)
    assert set(r.case_id for r in ten) <= set(r.case_id for r in twenty)
    assert ten == load_requests(path, limit=10, seed=3)
    assert ten != load_requests(path, limit=10, seed=4)
    assert ten != everything[:10]  # a sample, not the head of the file
    assert load_requests(path, limit=500) == everything
    assert ten.stats.requests == 10 and ten.stats.records == 40


def test_a_datasets_source_reads_like_the_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    sparse = knowedit_record()
    sparse["locality"] = {"Relation_Specificity": sparse["locality"]["Relation_Specificity"]}
    sparse["portability"] = {"Reasoning": sparse["portability"]["Reasoning"]}
    records = [knowedit_record(), sparse]  # Arrow fills the families the second lacks with None
    path = write(tmp_path, records, "knowedit.jsonl", jsonl=True)
    expected = [r.to_dict() for r in load_requests(path)]
    via_builder = load_requests("json", split="train",
                                dataset_kwargs={"data_files": str(path), "cache_dir": str(tmp_path / "cache")})
    assert [r.to_dict() for r in via_builder] == expected
    via_object = load_requests(datasets.Dataset.from_list(records))
    assert [r.to_dict() for r in via_object] == expected


def test_edit_sentence():
    assert edit_sentence("The capital of France is", "Rome") == "The capital of France is Rome."
    assert edit_sentence("Who is X's father?", "Babur") == "Who is X's father? Babur."
    assert edit_sentence("It is called", "St. Louis.") == "It is called St. Louis."
