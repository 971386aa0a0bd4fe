"""Building blocks: attention, MLP, transformer blocks and position encodings."""
