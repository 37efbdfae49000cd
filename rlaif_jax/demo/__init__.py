"""Bundled worlds that need no download: the toy SFT tasks (and, later, the demo world)."""
