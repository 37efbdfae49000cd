"""The bundled demo world, which needs no download: posts, a hidden oracle that
plays the human, its data and tokenizer (the toy SFT tasks live in data/toy.py)."""
