"""``run.py`` here is a script (the mutation table), not a test module: never collect it."""

collect_ignore = ["run.py"]
