"""The multilingual steering benchmark: every ordered language pair, four vector methods, held-out selection."""
