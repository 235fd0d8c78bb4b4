import sys, os
from bortengine.engine import tokenization as T
if os.environ.get("PATCH_TOK") == "1":
    orig = T.TextTokenizer.encode
    def encode(self, texts, max_length=None, add_special_tokens=True, pairs=None, offsets=True):
        if len(texts) == 1 and pairs is None:
            tokenizer, texts2, _ = self._inputs(texts, max_length, None, add_special_tokens)
            return [tokenizer.encode(texts2[0], add_special_tokens=add_special_tokens)]
        return orig(self, texts, max_length, add_special_tokens, pairs, offsets)
    T.TextTokenizer.encode = encode
from bortengine.cli import main
sys.exit(main())
