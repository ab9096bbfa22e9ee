"""Input readers: files in, :class:`CaptionRecord` or :class:`Rejection` out."""

from pipeline.inputs.readers import read_captions, read_passages, read_questions, read_sentences

__all__ = ["read_captions", "read_passages", "read_questions", "read_sentences"]
