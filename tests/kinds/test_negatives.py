from pipeline.config import load_config
from pipeline.kinds import negatives as task
from pipeline.records import CaptionRecord, Provenance, RawResult, Rejection
from pipeline.text.edits import Candidate

CFG = load_config(None, {"negatives": {"types": ["swap_obj", "replace_obj"]}})
TPLS = task.templates_for(CFG)
CAPS = [CaptionRecord("1", "A cat sleeps on top of a suitcase."), CaptionRecord("2", "A dog runs on the beach.")]


def _raw(unit, texts, mode="edit"):
    p = Provenance("embedded", "m", unit.prompt_sha, mode, 0.7, 0.95, 40, unit.seed, 10, 5, 0.1)
    return RawResult(
        unit.key, unit.source.id, unit.source.caption, None, unit.task, tuple(texts), ("stop",) * len(texts), p, "0"
    )


def test_one_unit_per_caption_and_task_with_stable_keys():
    units = task.plan_units(CAPS, CFG, TPLS)
    assert [(u.source.id, u.task) for u in units] == [
        ("1", "swap_obj"),
        ("1", "replace_obj"),
        ("1", "paraphrase"),
        ("2", "swap_obj"),
        ("2", "replace_obj"),
        ("2", "paraphrase"),
    ]
    assert len({u.key for u in units}) == 6
    assert [u.key for u in task.plan_units(CAPS, CFG, TPLS)] == [u.key for u in units]


def test_key_changes_with_seed_sampling_caption_and_template():
    base = task.plan_units(CAPS[:1], CFG, TPLS)[0].key
    other_seed = load_config(None, {"negatives": {"types": ["swap_obj", "replace_obj"]}, "sampling": {"seed": 1}})
    other_temp = load_config(
        None, {"negatives": {"types": ["swap_obj", "replace_obj"]}, "sampling": {"temperature": 0.1}}
    )
    assert task.plan_units(CAPS[:1], other_seed, TPLS)[0].key != base
    assert task.plan_units(CAPS[:1], other_temp, TPLS)[0].key != base
    assert task.plan_units([CaptionRecord("1", "A cat naps.")], CFG, TPLS)[0].key != base
    tpl = TPLS["swap_obj"]
    changed = {**TPLS, "swap_obj": type(tpl)(**{**tpl.__dict__, "sha256": "0" * 64})}
    assert task.plan_units(CAPS[:1], CFG, changed)[0].key != base


def test_first_valid_sample_wins_and_rejection_keeps_raw_text():
    unit = task.plan_units(CAPS[:1], CFG, TPLS)[0]
    ok = task.parse_unit(_raw(unit, ["dog <-> cat", "cat <-> suitcase"]), TPLS["swap_obj"])
    assert ok == Candidate("A suitcase sleeps on top of a cat.", "cat <-> suitcase")
    bad = task.parse_unit(_raw(unit, ["dog <-> cat", "nonsense"]), TPLS["swap_obj"])
    assert isinstance(bad, Rejection) and bad.reason == "span_not_found" and "dog <-> cat" in bad.raw
    assert bad.unit_key == unit.key and bad.prompt_sha == unit.prompt_sha


def test_type_mismatch_is_rejected_never_relabelled():
    unit = task.plan_units(CAPS[:1], CFG, TPLS)[0]  # swap_obj, but the model rewrote a word
    out = task.parse_unit(_raw(unit, ["A dog sleeps on top of a suitcase."], mode="rewrite"), TPLS["swap_obj"])
    assert isinstance(out, Rejection) and out.reason == "type_mismatch" and out.task == "swap_obj"


def test_assemble_pairs_negatives_with_their_paraphrase():
    units = task.plan_units(CAPS[:1], CFG, TPLS)
    answers = {
        "swap_obj": ["cat <-> suitcase"],
        "replace_obj": ["sandwich -> hat"],
        "paraphrase": ["On a suitcase, a cat is asleep."],
    }
    rows, rejects = task.assemble(
        [_raw(u, answers[u.task], "rewrite" if u.task == "paraphrase" else "edit") for u in units], TPLS
    )
    assert [r.neg_type for r in rows] == ["swap_obj"]
    assert rows[0].positive == "On a suitcase, a cat is asleep."
    assert [(r.task, r.reason) for r in rejects] == [("replace_obj", "span_not_found")]


def test_wrong_word_class_is_rejected_and_the_next_sample_can_win():
    cfg = load_config(None, {"negatives": {"types": ["swap_att"]}})
    tpls = task.templates_for(cfg)
    cap = CaptionRecord("3", "A boy in a blue shirt holds a red kite.")
    unit = task.plan_units([cap], cfg, tpls)[0]
    nouns, attrs = "boy <-> blue", "blue <-> red"
    rows, rejects = task.assemble([_raw(unit, [nouns])], tpls)
    assert not rows and rejects[0].reason == "wrong_word_class" and "boy" in rejects[0].detail
    rows, rejects = task.assemble([_raw(unit, [nouns, attrs])], tpls)
    assert not rejects and rows[0].negative == "A boy in a red shirt holds a blue kite." and rows[0].edit == attrs
    rows, _ = task.assemble([_raw(unit, [nouns])], tpls, word_class=False)  # the check off: the noun swap stays
    assert rows[0].negative == "A blue in a boy shirt holds a red kite."


def test_the_word_class_setting_decides_rows_so_it_is_part_of_the_release_settings():
    from pipeline.kinds import KINDS
    from pipeline.shards.publish import settings_sha

    def sha(cfg, name: str, columns=()) -> str:
        return settings_sha(cfg, name, columns, KINDS[name].assembly_settings(cfg))

    off = load_config(None, {"negatives": {"word_class": False}})
    assert sha(CFG, "negatives") != sha(off, "negatives")
    assert sha(CFG, "pairs") == sha(off, "pairs")
    assert sha(CFG, "negatives", ["caption", "group"]) != sha(CFG, "negatives", ["caption"])  # a layout
