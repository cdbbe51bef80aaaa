"""Step 3, uptrain: supervised fine-tuning stage after stage.

:mod:`.run` is ``train.py``'s recipe, top to bottom; :mod:`.ordering` which stages in which
order; :mod:`.stage` one stage (train, resume, checkpoint) and :mod:`.audit` the check that
it was fed its plan; :mod:`.held_out` the in-run held-out checks; :mod:`.plan`
``plan_only=true``; :mod:`.adapters` LoRA; :mod:`.precision` fp32 master weights;
:mod:`.distributed` ranks from SLURM; :mod:`.tracking` W&B.
"""
