"""The package's exception and warning types. Every error bortengine raises on purpose is a BortEngineError.

InvalidInputError and ModelLoadError also derive from ValueError, so callers that already catch ValueError for
bad arguments keep working. Messages say what is wrong and how to fix it.
"""

__all__ = ["BortEngineError", "InvalidInputError", "TextTooLongError", "ModelLoadError", "UnsupportedModelError",
           "UsageError", "DeadlineExceeded", "RequestCancelled", "ClusterError", "TruncationWarning"]


class BortEngineError(Exception):
    """Base class of every bortengine error."""


class InvalidInputError(BortEngineError, ValueError):
    """An argument of an inference call (ids, mask, texts, options) is malformed."""


class UnknownOptionError(InvalidInputError, TypeError):
    """A call got a keyword argument it does not take (a TypeError, as Python's own): the message says what the
    engine calls that option, when another library's name for it was given (sentence-transformers, transformers'
    pipelines)."""


class TextTooLongError(InvalidInputError):
    """A text (or text pair) has more tokens than max_length and the call passed truncation=False: nothing was
    computed. index: the first such text's place in the call's texts; tokens: its tokens before truncation (special
    tokens and its pair included); max_length: the tokens the call allowed. A server answers it with a 4xx naming
    the text."""

    def __init__(self, message: str, index: int, tokens: int, max_length: int):
        super().__init__(message)
        self.index = index
        self.tokens = tokens
        self.max_length = max_length

    def __reduce__(self):  # pickled whole (to and from a Ray worker), not as the message alone
        return type(self), (str(self), self.index, self.tokens, self.max_length)


class ModelLoadError(BortEngineError, ValueError):
    """A model directory is missing files, or its config and weights are malformed or disagree."""


class UnsupportedModelError(ModelLoadError):
    """A well-formed model that bortengine does not run (another architecture, activation or embedding type)."""


class UsageError(BortEngineError):
    """A command's options are missing, do not go together, or name a path the command cannot use (the command
    line is wrong, not the data it names). `bortengine <command>` reports it on one line, exit code 2."""


class DeadlineExceeded(BortEngineError, TimeoutError):
    """A request's deadline passed while it waited for a forward (Engine.aencode(..., deadline=)); it was not
    computed."""


class RequestCancelled(BortEngineError):
    """A queued request was cancelled before it was computed (its asyncio task was cancelled)."""


class ClusterError(BortEngineError):
    """A Ray cluster cannot be used as asked: Ray is not installed, the address does not answer as a Ray cluster,
    a node cannot run bortengine's workers, or no node has the CPUs a task needs (bortengine.cluster)."""


class TruncationWarning(UserWarning):
    """Texts longer than max_length were cut to it (truncation=True, the default). The engine says so once per
    Engine; warnings.filterwarnings("ignore", category=bortengine.TruncationWarning) silences it."""


class PerformanceWarning(UserWarning):
    """A load asked for something this CPU runs slower than the alternative it names (dtype="bf16" where bf16 GEMMs
    have neither AMX tiles nor vdpbf16ps on a core not Intel's: measured slower than float32). Said once per process
    (Python's default warning filter); warnings.filterwarnings("ignore", category=bortengine.PerformanceWarning) silences it."""


class PromptWarning(UserWarning):
    """A sentence-transformers model names a default prompt (config_sentence_transformers.json default_prompt_name,
    e.g. "query: "), which SentenceTransformer.encode puts before every text and Engine.encode does not: pass texts
    with the prompt to get its embeddings. Said once per process for a model."""
