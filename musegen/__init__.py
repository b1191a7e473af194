"""musegen: symbolic music generation with a relative-attention transformer.

The data flow, one module each: MIDI → ``tokenizer`` → ``corpus``/``data`` → ``model`` →
``train`` → ``checkpoint`` → ``sampling``/``pipeline`` → ``render`` → ``ui``/``cli``.
"""

__version__ = "0.1.0"
