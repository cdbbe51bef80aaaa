"""Step 2, segment (the paper's IDS): thresholds on the scores cut the data into stages.

:mod:`.run` is ``segment.py``'s job (density plot, Table 1, sensitivity, manifest);
:mod:`.methods` every threshold method (manual, quantile, balanced, GMM, Jenks, KDE
valleys); :mod:`.manifest` the stage manifest (which ids are in which stage, hashed).
"""
