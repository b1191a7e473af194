"""musegen: symbolic music generation with a relative-attention transformer.

The data flow, one subpackage per stage: MIDI → ``tokenizer`` → ``data`` → ``model`` →
``training`` → ``checkpoint`` → ``pipeline`` (with ``generation``) → ``render`` → ``app``/``cli``
(map: README's "How the code is laid out").
"""

__version__ = "0.1.0"
