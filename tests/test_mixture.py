"""Mixtures of experts of different architectures and tokenizers (a Llama with a character
vocabulary, a GPT-2 with a byte-level BPE one), all built in-process."""

from __future__ import annotations

import pytest
import torch

from modelswarms.errors import ConfigError, ExpertError
from modelswarms.mixture import MixtureLM, align, token_keys
from modelswarms.mixture.vocab import EOS
from modelswarms.testing import (
    make_byte_bpe_tokenizer,
    make_char_tokenizer,
    make_tiny_gpt2,
    make_tiny_llama,
    make_utility,
)

ITEMS = [
    {"question": "what is two plus two?", "choices": {"A": "four", "B": "five", "C": "two"},
     "answer": "A"},
    {"question": "the capital of france is", "choices": {"A": "rome", "B": "paris"},
     "answer": "B"},
    {"question": "the quick brown fox", "choices": {"A": "jumps", "B": "sleeps", "C": "is",
                                                    "D": "ran"}, "answer": "A"},
]


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("mix")
    out = []
    for name, folder in (("llama", make_tiny_llama(root / "llama")),
                         ("gpt2", make_tiny_gpt2(root / "gpt2"))):
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        out.append((name, model, AutoTokenizer.from_pretrained(folder)))
    return out


def _wordlevel(vocab: list[str], pre: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace() if pre == "sp" else \
        pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_vocabularies_align_on_the_bytes_their_tokens_stand_for():
    # SentencePiece's space marker and byte-fallback tokens, by hand
    sp = _wordlevel(["<pad>", "</s>", "<unk>", "▁the", "<0x41>", "▁", "cat", "A"], "sp")
    keys = token_keys(sp)
    assert keys[:2] == ["<|pad|>", EOS]
    assert keys[3] == b" the" and keys[4] == b"A" and keys[5] == b" " and keys[6] == b"cat"
    assert keys[7] == b"A"
    # byte-level BPE: 'Ġ' is a space, 'Ċ' a newline
    bpe = make_byte_bpe_tokenizer()
    bkeys = token_keys(bpe)
    ids = bpe.convert_tokens_to_ids(["Ġthe", "Ċ"])
    assert bkeys[ids[0]] == b" the" and bkeys[ids[1]] == b"\n"
    union = align([("sp", sp), ("bpe", bpe), ("chars", make_char_tokenizer())])
    sp_v, bpe_v, ch_v = union.experts
    # the same string is one union token whichever vocabulary it came from
    assert sp_v.to_union[3] == union.index[b" the"]
    assert bpe_v.to_union[ids[0]] == union.index[b" the"]
    assert ch_v.to_union[make_char_tokenizer().convert_tokens_to_ids("c")] == union.index[b"c"]
    # every end-of-sequence token is the one shared entry
    assert {int(v.to_union[v.eos_id]) for v in union.experts} == {union.eos}
    # a byte with its own token is fed as that token, not as its earlier '<0xNN>' fallback
    assert sp_v.encode(b"A the") == [7, 3]
    # a string that is one token for one expert is spelled in the other's tokens
    assert ch_v.encode(b" the") == make_char_tokenizer().encode(" the",
                                                               add_special_tokens=False)
    assert b"".join(bytes(union.keys[int(bpe_v.to_union[t])]) for t in bpe_v.encode(
        b"the cat")) == b"the cat"


def test_a_vocabulary_sharing_nothing_or_lacking_an_end_is_refused():
    words = _wordlevel(["<pad>", "</s>", "<unk>", "zzqx"], "ws")
    other = _wordlevel(["<pad>", "</s>", "<unk>", "wvvy"], "ws")
    with pytest.raises(ExpertError, match="shares no token"):
        align([("a", words), ("b", other)])
    words.eos_token = None
    with pytest.raises(ExpertError, match="a: its tokenizer has no end-of-sequence"):
        align([("a", words), ("b", other)])


def test_mixture_probabilities_sum_to_one(experts):
    mix = MixtureLM(experts)
    mix.set_weights([0.3, 0.7])
    probs = mix.next_token_probs([b"the capital of", b"two plus two is"])
    assert torch.allclose(probs.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError, match="non-negative"):
        mix.set_weights([-1.0, 2.0])


@pytest.mark.parametrize("which", [0, 1])
def test_a_one_hot_mixture_scores_and_generates_as_its_expert(experts, which):
    name, model, tok = experts[which]
    mix = MixtureLM(experts)
    mix.set_weights([1.0 if i == which else 0.0 for i in range(2)])
    for mode in ("cloze", "letter"):
        u = make_utility(scoring=mode, chat_template=False, batch_size=4)
        alone, mixed = u.score(model, tok, ITEMS), u.score(mix, mix.tokenizer, ITEMS)
        assert mixed.predictions == alone.predictions and mixed.scores == alone.scores, mode
    em = make_utility(type="exact_match", max_new_tokens=6, chat_template=False, batch_size=4)
    qa = [{"question": it["question"], "answer": "x"} for it in ITEMS]
    assert em.score(mix, mix.tokenizer, qa).predictions == em.score(model, tok, qa).predictions


def test_a_one_hot_sequence_score_is_the_experts_own(experts):
    from modelswarms.evaluation.engine import generation

    _, model, tok = experts[1]
    mix = MixtureLM(experts)
    mix.set_weights([0.0, 1.0])
    prompt, conts = "the capital of france is", [" paris", " rome"]
    own = generation.continuation_logprobs(
        model, [tok.encode(prompt)], [[tok.encode(prompt + c)[len(tok.encode(prompt)):]
                                       for c in conts]], pad_id=tok.pad_token_id,
        batch_size=4)[0][0]
    mixed = mix.continuation_logprobs([prompt.encode()], [[c.encode() for c in conts]])[0]
    assert mixed == pytest.approx(own, abs=1e-5)


def test_mixed_generation_is_the_same_batched_or_alone(experts):
    mix = MixtureLM(experts, batch_size=1)
    mix.set_weights([0.5, 0.5])
    prompts = [b"the quick brown", b"question: what is", b"0123"]
    alone = mix.generate(prompts, max_new_tokens=5)
    # every chosen token but a row's last is fed to both experts; the character-level Llama
    # takes each one of several characters as several of its tokens (re-tokenised)
    fed = [t for row in alone for t in row[:4]]
    assert mix.fed[("llama", "tokens")] == mix.fed[("gpt2", "tokens")] == len(fed) > 0
    assert mix.fed[("llama", "retokenised")] == sum(len(mix.vocab.keys[t]) > 1 for t in fed)
    mix.batch_size = 3
    assert mix.generate(prompts, max_new_tokens=5) == alone
    # and a mixture of two is neither expert alone (the test would be empty if it were)
    mix.set_weights([1.0, 0.0])
    first = mix.generate(prompts, max_new_tokens=5)
    mix.set_weights([0.0, 1.0])
    assert alone != first or alone != mix.generate(prompts, max_new_tokens=5)


def test_experts_without_one_chat_format_refuse_a_chat_prompt(experts):
    mix = MixtureLM(experts)
    assert mix.tokenizer.chat_template is None
    with pytest.raises(ConfigError, match="chat template"):
        mix.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_a_token_swarm_searches_mixing_weights_through_the_evaluator_seam(experts):
    """The loop's scorer and Model Swarms, unchanged, over a mixture evaluator: particles
    start as the experts (one-hot rows) and the search can only improve on them."""
    from modelswarms.mixture.evaluator import MixtureEvaluator, mixing_weights
    from modelswarms.runs.scorer import Scorer
    from modelswarms.search import ModelSwarm
    from modelswarms.search.swarm import SwarmConfig

    mix = MixtureLM(experts)
    utility = make_utility(scoring="cloze", chat_template=False)
    scorer = Scorer(MixtureEvaluator(mix), utility)
    one_hot = torch.eye(2)
    alone = [utility.score(m, t, ITEMS).value for _, m, t in experts]
    assert scorer.utilities(one_hot, ITEMS) == alone
    swarm = ModelSwarm(one_hot, SwarmConfig(particles=4, max_iterations=3), seed=0)
    while not swarm.done:
        swarm.tell(scorer.utilities(swarm.ask(), ITEMS))
    best, value = swarm.best()
    assert value >= max(alone) and mixing_weights(best).sum() == pytest.approx(1.0)
    assert scorer.evaluations == len(one_hot) + swarm.evaluations
    assert scorer.counts["cache_hits"] >= len(one_hot)  # the starting experts, scored before


def test_a_token_swarm_run_folder_and_compare_over_two_architectures(tmp_path, mc_data):
    """`experts.compose: mixture`: a Llama and a GPT-2 searched as a token swarm by the run
    command's loop, exported as mixture.json, and compared with each expert and the uniform
    mixture; merges are skipped with the reason."""
    import json

    import modelswarms as ms

    experts = [make_tiny_llama(tmp_path / "llama"), make_tiny_gpt2(tmp_path / "gpt2")]
    cfg = ms.config(experts={"paths": [str(p) for p in experts], "compose": "mixture"},
                    data=mc_data, utility={"scoring": "cloze", "chat_template": False},
                    budget=12, search={"particles": 4})
    report = ms.search(cfg, run_dir=tmp_path / "run").report
    names = [r["name"] for r in report["rows"]]
    assert names[:2] == ["expert: llama", "expert: gpt2"] and "base model" not in names
    assert report["best_dev"] >= max(r["dev"] for r in report["rows"][:2])
    spec = json.loads((tmp_path / "run" / "best" / "mixture.json").read_text())
    assert [e["name"] for e in spec["experts"]] == ["llama", "gpt2"]
    assert sum(e["weight"] for e in spec["experts"]) == pytest.approx(1.0)
    # the export scores as the search scored it
    assert ms.evaluate(tmp_path / "run" / "best", mc_data, split="dev", utility={
        "scoring": "cloze", "chat_template": False}).value == report["best_dev"]
    assert ms.search(cfg, run_dir=tmp_path / "run", resume=True).best_dev == \
        report["best_dev"]
    table = ms.compare(cfg.model_copy(update={"compare": ms.config(
        experts=experts, compare={"methods": ["experts", "logit_average", "ties", "swarm",
                                              "random"], "seeds": [0], "budget": 8}).compare}),
        out=tmp_path / "cmp")
    rows = {r["name"]: r for r in table["rows"]}
    assert "experts, uniform mixture" in rows and "Model Swarms over mixing weights" in rows
    assert "mixture" in rows["ties"]["skipped"]
    with pytest.raises(ConfigError, match="compose"):
        ms.merge(ms.config(experts={"paths": [str(p) for p in experts], "compose": "mixture"},
                           merge={"method": "linear"}), out=tmp_path / "m")


def test_distilling_a_mixture_moves_the_student_toward_it(tmp_path):
    """A LoRA on one expert (a GPT-2) trained on the mixture's next-token distributions of a
    Llama and that GPT-2: its KL to the mixture falls, and the adapter loads with plain peft."""
    from modelswarms.evaluation.engine.backend import load_standalone
    from modelswarms.mixture.distil import distil, distillation_targets, kl_to_targets

    folders = [make_tiny_llama(tmp_path / "llama"), make_tiny_gpt2(tmp_path / "gpt2")]
    mix = MixtureLM([(f.name, *load_standalone(str(f))) for f in folders])
    mix.set_weights([0.6, 0.4])
    prompts = ["the quick brown", "question: what is two", "the capital of", "answer: four"]
    result = distil(mix, 1, folders[1], prompts, tmp_path / "student", steps=30, lr=2e-2,
                    max_new_tokens=8)
    # a 32-wide GPT-2 cannot reach every distribution: the KL falls to its floor (0.351 ->
    # 0.331 here), not to zero
    assert result["kl_after"] < 0.97 * result["kl_before"]
    student, tok = load_standalone(str(tmp_path / "student"))
    targets = distillation_targets(mix, 1, prompts, 8)
    with torch.no_grad():
        again = float(kl_to_targets(student, targets, tok.pad_token_id))
    assert again == pytest.approx(result["kl_after"], rel=1e-4)


def test_the_distil_command_learns_a_token_swarms_export(tmp_path, mc_data):
    """`distil RUN/best` takes the data and the utility from the run folder's config, trains,
    then scores the student beside the mixture and every expert on dev and test, with the
    student's intervals against the mixture and the best expert."""
    import json

    from click.testing import CliRunner

    import modelswarms as ms
    from modelswarms.cli import main

    experts = [make_tiny_llama(tmp_path / "llama"), make_tiny_gpt2(tmp_path / "gpt2")]
    utility = {"scoring": "cloze", "chat_template": False}
    cfg = ms.config(experts={"paths": [str(p) for p in experts], "compose": "mixture"},
                    data={"path": str(mc_data), "max_dev": 8, "max_test": 8}, utility=utility,
                    budget=8, search={"particles": 4})
    run = ms.search(cfg, run_dir=tmp_path / "run").report
    args = ["distil", str(tmp_path / "run" / "best"), "--student", "gpt2", "--out",
            str(tmp_path / "student"), "--steps", "5", "--max-new-tokens", "4",
            "--max-items", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "KL to the mixture" in result.output and "distilled: gpt2" in result.output
    assert "test gain of the distilled student over the mixture" in result.output
    assert (tmp_path / "student" / "adapter_model.safetensors").is_file()
    report = json.loads((tmp_path / "student" / "distillation.json").read_text())
    assert report["config"] == str(tmp_path / "run" / "config.yaml")
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows)[:2] + list(rows)[3:] == ["expert: llama", "expert: gpt2", "mixture",
                                              "distilled: gpt2"]
    # the experts and the mixture score as the token swarm's report scored them
    for row in run["rows"][:3]:
        assert (rows[row["name"]]["dev"], rows[row["name"]]["test"]) == (row["dev"],
                                                                          row["test"])
    assert (rows["mixture"]["dev"], rows["mixture"]["test"]) == (run["best_dev"],
                                                                 run["best_test"])
    # and the student as `modelswarms eval` scores its adapter folder
    for split in ("dev", "test"):
        assert rows["distilled: gpt2"][split] == ms.evaluate(
            tmp_path / "student", mc_data, split=split, utility=utility, max_items=8).value
    assert set(report["test_gains"]) == {"mixture", "best expert"}
    assert all(g["n"] == 8 for g in report["test_gains"].values())
    bad = CliRunner().invoke(main, [*args[:3], "nobody", args[4], str(tmp_path / "s2"),
                                    *args[6:]])
    assert bad.exit_code == 2 and "not an expert of the mixture" in bad.output
    again = CliRunner().invoke(main, args)  # the first student is never overwritten
    assert again.exit_code == 2 and "exists and is not empty" in again.output


def test_distil_with_data_alone_scores_with_that_data(tmp_path, mc_data):
    """A mixture.json outside any run folder, --data and no config: the prompts and the
    scores come from --data, the utility is the default's (as `modelswarms eval --data`)."""
    import json

    from click.testing import CliRunner

    from modelswarms.cli import main
    from modelswarms.mixture.pool import load_mixture_pool, write_mixture

    experts = [make_tiny_llama(tmp_path / "llama"), make_tiny_gpt2(tmp_path / "gpt2")]
    write_mixture(load_mixture_pool(experts), torch.tensor([0.5, 0.5]), tmp_path / "mix")
    dev_only = tmp_path / "dev.json"
    dev_only.write_text(json.dumps({"dev": json.loads(mc_data.read_text())["dev"][:4]}))
    result = CliRunner().invoke(main, [
        "distil", str(tmp_path / "mix"), "--student", "llama", "--out",
        str(tmp_path / "student"), "--data", str(dev_only), "--steps", "2",
        "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "student" / "distillation.json").read_text())
    assert report["config"] is None and report["utility"] == "multiple_choice"
    assert report["dev_items"] == 4 and report["test_items"] == 0 and not report["test_gains"]
    assert [r["test"] for r in report["rows"]] == [None] * 5
    assert "no test scores" in result.output and "no split 'test'" in report["notes"][0]
    # the Python API is the same function
    import modelswarms as ms

    again = ms.distil(tmp_path / "mix", "llama", tmp_path / "student2", data=dev_only, steps=2,
                      max_new_tokens=3)
    assert again["kl_before"] == report["kl_before"]
    assert [r["name"] for r in again["rows"]] == [r["name"] for r in report["rows"]]
    assert (tmp_path / "student2" / "distillation.json").is_file()


def test_an_embedded_model_is_named_not_located_in_a_mixture_export(tmp_path, monkeypatch):
    """An embedded model (models.EMBEDDED) joins a mixture pool by its name; the export names
    it (not this machine's cache folder), loads back, and a student distilled from it names it
    as its base, as the shipped pool's adapters name smollm2. A tiny Llama stands in for the
    embedded model, already in the cache."""
    import dataclasses
    import json

    from modelswarms.evaluation.engine.backend import load_standalone
    from modelswarms.mixture import load_mixture, load_mixture_pool
    from modelswarms.mixture.distil import distil
    from modelswarms.mixture.pool import write_mixture
    from modelswarms.models import EMBEDDED, SMOLLM2

    monkeypatch.setenv("MODELSWARMS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(EMBEDDED, "tiny", dataclasses.replace(EMBEDDED[SMOLLM2], name="tiny",
                                                              folder="tiny-llama"))
    make_tiny_llama(tmp_path / "cache" / "tiny-llama")
    gpt2 = make_tiny_gpt2(tmp_path / "gpt2")
    pool = load_mixture_pool(["tiny", str(gpt2)])
    assert pool.names == ["tiny", "gpt2"]
    write_mixture(pool, torch.tensor([0.5, 0.5]), tmp_path / "mix")
    spec = json.loads((tmp_path / "mix" / "mixture.json").read_text())
    assert [e["path"] for e in spec["experts"]] == ["tiny", str(gpt2)]
    mix = load_mixture(tmp_path / "mix")
    distil(mix, 0, spec["experts"][0]["path"], ["the quick brown"], tmp_path / "student",
           steps=1, max_new_tokens=3)
    adapter = json.loads((tmp_path / "student" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tiny"
    load_standalone(str(tmp_path / "student"))  # its base resolves through the registry


def _gemma3(folder, window):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelswarms.testing import make_tiny_gemma3

    path = make_tiny_gemma3(folder, sliding_window=window)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_a_sliding_window_model_is_packed_only_within_its_window(tmp_path):
    """Gemma 3's sliding-window layers take the packed mask as it is: the one-forward way
    serves a call whose every prompt + option fits in the window (the window hides nothing
    there) and the two-pass way any longer one, where packing would read past the window."""
    from modelswarms.evaluation.engine import generation

    prompts = [[1, *range(10, 40)], [1, *range(40, 52)]]  # 31 and 13 tokens
    options = [[[60, 61, 62], [63], [64, 65]], [[66, 67], [68, 69, 70, 71]]]
    for window, fits in ((64, True), (16, False)):
        model, tok = _gemma3(tmp_path / str(window), window)
        assert generation.packs(model, 31 + 3) is fits
        ways = {packed: generation.option_logprobs(model, prompts, options, pad_id=0,
                                                   batch_size=4, packed=packed)[0]
                for packed in (None, True, False)}
        flat = {k: torch.tensor([x for row in v for x in row]) for k, v in ways.items()}
        assert torch.allclose(flat[None], flat[False], atol=1e-5)
        # packing past the window would change the long prompt's scores, not the short one's
        assert torch.allclose(flat[True], flat[False], atol=1e-5) is fits
        assert ways[True][1] == pytest.approx(ways[False][1], abs=1e-5)


def test_packing_gemma3_keeps_a_two_architecture_mixtures_scores(tmp_path, experts,
                                                                 monkeypatch):
    """A mixture of a tiny Gemma 3 (packed: one forward per batch, the LM head on read
    columns only) and a tiny GPT-2 scores every item as with both on the two-pass way."""
    from modelswarms.evaluation.engine import generation

    model, tok = _gemma3(tmp_path / "g", 64)
    pool = [("gemma3", model, tok), experts[1]]
    u = make_utility(scoring="cloze", chat_template=False, batch_size=4)
    runs, calls = {}, []
    real = generation.packed_option_logprobs
    monkeypatch.setattr(generation, "packed_option_logprobs",
                        lambda m, *a, **k: calls.append(m) or real(m, *a, **k))
    for way in ("packed", "two passes"):
        if way == "two passes":
            monkeypatch.setattr(generation, "packs", lambda *a, **k: False)
        mix = MixtureLM(pool)
        mix.set_weights([0.6, 0.4])
        scored = u.score(mix, mix.tokenizer, ITEMS)
        mix.set_weights([1.0, 0.0])  # Gemma's own log-likelihoods of two continuations
        runs[way] = scored, mix.continuation_logprobs(
            [b"Question: 2+2?\nAnswer:"], [[b" 4", b" five hundred"]])
    assert calls and all(m is model for m in calls)  # GPT-2 is never packed
    (packed, lp_packed), (slow, lp_slow) = runs["packed"], runs["two passes"]
    assert packed.scores == slow.scores and packed.predictions == slow.predictions
    assert [x for r in lp_packed for x in r] == pytest.approx([x for r in lp_slow for x in r],
                                                            abs=1e-5)
