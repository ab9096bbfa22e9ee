"""Text tools the kinds share: prompt templates (load, hash, render), parsing and checking model answers (edits,
final answers, queries, paraphrase choice, structure and word class) and hard-negative mining rules.

Named ``text``, not ``tasks``: a Prefect task is something else; the generation tasks themselves are declared by
the kinds (:mod:`pipeline.kinds`)."""
