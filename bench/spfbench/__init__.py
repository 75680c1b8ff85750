"""The machinery of ``bench/run.py``, by concept: :mod:`.grid` (what to run), :mod:`.cell` (one run, in its own
process), :mod:`.estimate` (what a grid will cost) and :mod:`.tables` (aggregation over seeds, verdicts, report).

Not part of the installed package: ``bench/run.py`` imports it from its own folder.
"""
