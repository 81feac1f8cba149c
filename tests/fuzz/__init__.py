"""Property-based fuzzing (hypothesis) of every cloud's metadata parser and every renderer.

``strategies``: one composite strategy per cloud's document shape (valid shapes, hostile
values) and one for any NicState the model accepts; ``properties``: the properties as plain
functions, shared with ``bench/fuzz.py``; the ``test_*`` modules run them within the time
``make test`` allows. The example database (failures found, replayed first) is
``tests/fuzz/examples``.
"""
