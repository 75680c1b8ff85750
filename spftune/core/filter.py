"""Placeholder while the core is written (lead engineer owns this file)."""


class SPFFilter:
    def __init__(self, model, tokenizer=None, config=None):
        raise NotImplementedError("SPFFilter is being written")
