"""Deterministic experiments in virtual time: `powlab simulate network|doublespend|selfish`.

Same seed, same output, bit for bit: every random draw comes from one seeded `random.Random`,
and nothing reads the clock.
"""
