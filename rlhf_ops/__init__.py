"""rlhf_ops: a thin, dependable orchestration layer over Hugging Face TRL for online RLHF."""

__version__ = "0.1.0"
