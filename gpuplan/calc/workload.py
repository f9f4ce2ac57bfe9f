"""The workload an estimate is for: how many sequences, how long, how many tokens generated.

One meaning for every engine: ``batch`` sequences (requests) at once, each holding ``seq`` tokens (prompt +
generated), ``new_tokens`` of them generated. Each engine translates it in one place: transformers runs
generate() on it; vLLM and SGLang read ``seq`` as max_model_len and ``batch`` as the concurrency that must
fit; llama.cpp reads ``batch`` as --parallel and gives every slot ``seq`` tokens (--ctx-size = batch x seq).
``seq`` None leaves the length to the engine (transformers: 2,048; serving engines and llama.cpp: the
model's context).
"""


from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bounds that catch typos (an extra zero or three) before they turn into absurd numbers. No engine runs
# a batch of more than a million sequences or a context of more than 2**26 (67M) tokens; the longest
# context windows published are 10M tokens (Llama 4 Scout).
MAX_BATCH = 1_000_000
MAX_SEQ = 2**26


class Workload(BaseModel):
    """``seq`` tokens per sequence are held in the KV cache at the end: the prompt plus ``new_tokens``."""

    model_config = ConfigDict(frozen=True)

    batch: int = Field(default=1, ge=1, le=MAX_BATCH)
    seq: int | None = Field(default=None, ge=1, le=MAX_SEQ)
    new_tokens: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _prompt_not_empty(self) -> "Workload":
        if self.seq is not None and self.new_tokens >= self.seq:
            raise ValueError(
                f"new_tokens ({self.new_tokens}) must be smaller than seq ({self.seq}): seq counts the prompt "
                "plus the generated tokens"
            )
        return self

    @property
    def prompt_tokens(self) -> int:
        if self.seq is None:
            raise ValueError("the workload leaves seq to the engine: resolve it with with_seq() first")
        return self.seq - self.new_tokens

    def with_seq(self, default: int) -> "Workload":
        """This workload with ``seq`` set to ``default`` when it was left to the engine."""
        if self.seq is not None:
            return self
        if self.new_tokens >= default:
            return Workload(batch=self.batch, seq=default, new_tokens=self.new_tokens)  # raises, as it should
        return self.model_copy(update={"seq": default})
